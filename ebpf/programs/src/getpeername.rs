//! cgroup/getpeername4 and getpeername6: an intercepted app sees its original destination as its
//! peer, as it would under iptables REDIRECT.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::maps::SM_ORIG_DST;

#[cgroup_sock_addr(getpeername4)]
pub fn sm_getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) {
        let sa = unsafe { &mut *ctx.sock_addr };
        unsafe {
            sa.user_ip4 = (*orig).ip4;
            sa.user_port = (((*orig).port as u16).to_be()) as u32;
        }
    }
    1
}

/// Dual-stack sockets redirected by `sm_connect6` (IPv4-mapped destinations).
#[cgroup_sock_addr(getpeername6)]
pub fn sm_getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) {
        let sa = unsafe { &mut *ctx.sock_addr };
        unsafe {
            sa.user_ip6[3] = (*orig).ip4;
            sa.user_port = (((*orig).port as u16).to_be()) as u32;
        }
    }
    1
}
