//! cgroup/getsockopt (attached at the cgroup v2 root, so it runs for every getsockopt on the
//! host): answer the original-destination options on the agent's accepted sockets from the
//! record `sockops` published, exactly as conntrack answers them under iptables REDIRECT:
//! `getsockopt(SOL_IP, SO_ORIGINAL_DST)` with a `sockaddr_in` for IPv4 (and IPv4-mapped)
//! connections, `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` with a `sockaddr_in6` for native
//! IPv6 ones.
//!
//! Only the agent's sockets get an answer (they carry the agent's mark, inherited from its
//! listeners): no other process learns where an app was going. Every other call keeps the
//! kernel's answer untouched, including its buffer when optval is larger than a page.
use aya_ebpf::{
    EbpfContext, bindings::bpf_sockopt, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use sockmesh_common::{EndpointKey, IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, is_v4_mapped};

use crate::maps::{SM_PEER_ORIG, config, is_agent_socket, sock_ip};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// The program sees at most one page of optval. x86_64 and most arm64 kernels use 4 KiB pages;
/// on a kernel with larger pages, treating 4 KiB as the limit only means that some calls take
/// the (equally correct) kernel-buffer path below.
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(getsockopt)]
pub fn sm_getsockopt(ctx: SockoptContext) -> i32 {
    if try_getsockopt(&ctx).is_none() {
        pass_through(unsafe { &mut *ctx.sockopt });
    }
    1
}

/// Leave the kernel's answer as it is. When optval is larger than a page the program only had a
/// copy of its first page: optlen 0 tells the kernel to keep the caller's buffer and length
/// as its own getsockopt left them. Kernels before 6.5 return EFAULT otherwise (an
/// `iptables-legacy -S` with a large ruleset, for instance); later ones ignore the copy anyway.
#[inline(always)]
fn pass_through(so: &mut bpf_sockopt) {
    if so.optlen > PAGE_SIZE {
        unsafe { core::ptr::write_volatile(&mut so.optlen, 0) };
    }
}

fn try_getsockopt(ctx: &SockoptContext) -> Option<()> {
    let so = unsafe { &mut *ctx.sockopt };
    let v6 = match (so.level, so.optname) {
        (SOL_IP, SO_ORIGINAL_DST) => false,
        (SOL_IPV6, IP6T_SO_ORIGINAL_DST) => true,
        _ => return None,
    };
    let sk = unsafe { so.__bindgen_anon_1.sk };
    let cfg = config()?;
    if !is_agent_socket(sk, cfg) {
        return None;
    }
    let peer = unsafe { sock_ip((*sk).family, (*sk).dst_ip4, &raw const (*sk).dst_ip6) };
    let key = EndpointKey {
        addr: peer,
        port: u16::from_be(unsafe { (*sk).dst_port }) as u32,
        _pad: 0,
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    };
    let orig = unsafe { *SM_PEER_ORIG.get_ptr(&key)? };
    // Each option answers its own family only, as conntrack does.
    if is_v4_mapped(&orig.addr) == v6 {
        return None;
    }
    let optval = unsafe { so.__bindgen_anon_2.optval } as *mut u8;
    let optval_end = unsafe { so.__bindgen_anon_3.optval_end } as *mut u8;
    let len: usize = if v6 { 28 } else { 16 };
    if optval.is_null() || unsafe { optval.add(len) } > optval_end {
        return None;
    }
    let port = (orig.port as u16).to_be();
    unsafe {
        if v6 {
            // struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo; u8 addr[16]; u32 scope_id; }
            core::ptr::write_unaligned(optval as *mut u16, AF_INET6);
            core::ptr::write_unaligned(optval.add(2) as *mut u16, port);
            core::ptr::write_unaligned(optval.add(4) as *mut u32, 0);
            let mut i = 0;
            while i < 4 {
                core::ptr::write_unaligned(optval.add(8 + 4 * i) as *mut u32, orig.addr[i]);
                i += 1;
            }
            core::ptr::write_unaligned(optval.add(24) as *mut u32, 0);
        } else {
            // struct sockaddr_in { u16 family; be16 port; be32 addr; u8 zero[8]; }
            core::ptr::write_unaligned(optval as *mut u16, AF_INET);
            core::ptr::write_unaligned(optval.add(2) as *mut u16, port);
            core::ptr::write_unaligned(optval.add(4) as *mut u32, orig.addr[3]);
            core::ptr::write_unaligned(optval.add(8) as *mut u64, 0);
        }
        // Two separate 32-bit stores: LLVM would merge them into one 8-byte store, which the
        // verifier rejects ("invalid bpf_context access off=32 size=8").
        core::ptr::write_volatile(&mut so.optlen, len as i32);
        core::ptr::write_volatile(&mut so.retval, 0);
    }
    Some(())
}
