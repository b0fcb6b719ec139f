//! cgroup/getsockopt: answer `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the agent's accepted socket
//! from the record `sockops` published, so the agent (and any other tool) reads the original
//! destination exactly as under iptables REDIRECT. Every other option keeps the kernel's answer.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext,
};
use sockmesh_common::{EndpointKey, SO_ORIGINAL_DST, SOL_IP};

use crate::maps::SM_PEER_ORIG;

const AF_INET: u16 = 2;

#[cgroup_sockopt(getsockopt)]
pub fn sm_getsockopt(ctx: SockoptContext) -> i32 {
    let _ = try_getsockopt(&ctx);
    1
}

fn try_getsockopt(ctx: &SockoptContext) -> Option<()> {
    let so = unsafe { &mut *ctx.sockopt };
    if so.level != SOL_IP || so.optname != SO_ORIGINAL_DST {
        return None;
    }
    let sk = unsafe { so.__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let peer = EndpointKey {
        ip4: unsafe { (*sk).dst_ip4 },
        port: u16::from_be(unsafe { (*sk).dst_port }) as u32,
        netns,
    };
    let orig = SM_PEER_ORIG.get_ptr(&peer)?;
    let optval = unsafe { so.__bindgen_anon_2.optval } as *mut u8;
    let optval_end = unsafe { so.__bindgen_anon_3.optval_end } as *mut u8;
    if optval.is_null() || unsafe { optval.add(16) } > optval_end {
        return None;
    }
    // struct sockaddr_in { sa_family_t family; be16 port; be32 addr; u8 zero[8]; }
    unsafe {
        core::ptr::write_unaligned(optval as *mut u16, AF_INET);
        core::ptr::write_unaligned(optval.add(2) as *mut u16, ((*orig).port as u16).to_be());
        core::ptr::write_unaligned(optval.add(4) as *mut u32, (*orig).ip4);
        core::ptr::write_unaligned(optval.add(8) as *mut u64, 0);
        // Two separate 32-bit stores: LLVM would merge them into one 8-byte store, which the
        // verifier rejects ("invalid bpf_context access off=32 size=8").
        core::ptr::write_volatile(&mut so.optlen, 16);
        core::ptr::write_volatile(&mut so.retval, 0);
    }
    Some(())
}
