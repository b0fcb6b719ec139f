//! sk_msg (attached to `SM_SOCKS`): data sent on one end of an app<->agent connection goes
//! straight into the other end's receive queue, skipping the loopback TCP stack.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use sockmesh_common::{SockKey, v4_mapped};

use crate::maps::{SM_SOCKS, read_ip6};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sk_msg]
pub fn sm_skmsg(ctx: SkMsgContext) -> u32 {
    let md = unsafe { &*ctx.msg };
    // Addresses in their IPv6 form (IPv4 mapped), as `sockops` stored them.
    let (local, remote) = match md.family {
        AF_INET => (v4_mapped(md.local_ip4), v4_mapped(md.remote_ip4)),
        AF_INET6 => (
            read_ip6(&raw const md.local_ip6),
            read_ip6(&raw const md.remote_ip6),
        ),
        _ => return SK_PASS,
    };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // The peer socket stored its own view: our remote is its local.
    let peer = SockKey {
        local_ip: remote,
        remote_ip: local,
        local_port: u32::from_be(md.remote_port),
        remote_port: md.local_port,
        netns,
    };
    // A missing peer makes the helper return SK_DROP; pass instead so data takes the TCP path.
    let _ = SM_SOCKS.redirect_msg(&ctx, peer, BPF_F_INGRESS as u64);
    SK_PASS
}
