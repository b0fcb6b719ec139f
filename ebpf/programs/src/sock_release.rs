//! cgroup/sock_release: forget an app socket's original-destination record when it closes.
//! (The tuple record the agent reads lives until the agent's side closes; see `sockops`.)
use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext};

use crate::maps::SM_ORIG_DST;

#[cgroup_sock(sock_release)]
pub fn sm_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SM_ORIG_DST.remove(&cookie);
    1
}
