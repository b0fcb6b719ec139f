//! cgroup/getpeername4 and getpeername6: an intercepted app sees its original destination as its
//! peer, as it would under iptables REDIRECT.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use sockmesh_common::is_v4_mapped;

use crate::maps::SM_ORIG_DST;

#[cgroup_sock_addr(getpeername4)]
pub fn sm_getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) {
        let orig = unsafe { &*orig };
        if is_v4_mapped(&orig.addr) {
            let sa = unsafe { &mut *ctx.sock_addr };
            sa.user_ip4 = orig.addr[3];
            sa.user_port = ((orig.port as u16).to_be()) as u32;
        }
    }
    1
}

/// Native IPv6 connections, and dual-stack sockets on IPv4-mapped ones (the record keeps the
/// mapped form, which is what such a socket reports).
#[cgroup_sock_addr(getpeername6)]
pub fn sm_getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) {
        let orig = unsafe { &*orig };
        let sa = ctx.sock_addr;
        // Word by word (see `sm_connect6`).
        unsafe {
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], orig.addr[0]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], orig.addr[1]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], orig.addr[2]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], orig.addr[3]);
            (*sa).user_port = ((orig.port as u16).to_be()) as u32;
        }
    }
    1
}
