//! sk_msg (attached to `SM_SOCKS`): data sent on one end of an app<->agent connection or of a
//! local leg goes straight into the other end's receive queue, skipping the loopback TCP stack.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use sockmesh_common::{SockKey, Stat};

use crate::maps::{SM_SOCKS, count, sock_ip};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sk_msg]
pub fn sm_skmsg(ctx: SkMsgContext) -> u32 {
    let md = unsafe { &*ctx.msg };
    if md.family != AF_INET && md.family != AF_INET6 {
        return SK_PASS;
    }
    // Addresses in their IPv6 form (IPv4 mapped), as `sockops` stored them.
    let local = sock_ip(md.family, md.local_ip4, &raw const md.local_ip6);
    let remote = sock_ip(md.family, md.remote_ip4, &raw const md.remote_ip6);
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
    if SM_SOCKS.redirect_msg(&ctx, peer, BPF_F_INGRESS as u64) == SK_PASS as _ {
        count(Stat::MsgRedirected, 1);
        count(Stat::BytesRedirected, md.size as u64);
    } else {
        count(Stat::MsgPassed, 1);
    }
    SK_PASS
}
