//! sock_ops (attached at the cgroup v2 root so it sees both the app's and the agent's sockets):
//! - app side, active established: publish the original destination under the app's own
//!   (ip, port, netns), which is what the agent's accepted socket sees as its peer, and in
//!   sockmap mode put the socket into `SM_SOCKS`;
//! - agent side, passive established on the transparent listener: in sockmap mode put the
//!   accepted socket into `SM_SOCKS`, and ask for a state callback so the record is dropped
//!   when the agent's socket closes.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use sockmesh_common::{EndpointKey, GlobalConfig, Mode, SockKey};

use crate::maps::{SM_ORIG_DST, SM_PEER_ORIG, SM_SOCKS, config};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn sm_sockops(ctx: SockOpsContext) -> u32 {
    // IPv4, or a dual-stack socket on an IPv4-mapped connection (its v4 fields are filled).
    let family = ctx.family();
    if family != AF_INET && !(family == AF_INET6 && ctx.remote_ip4() != 0) {
        return 1;
    }
    let Some(cfg) = config() else { return 1 };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => app_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => agent_established(&ctx, cfg),
        BPF_SOCK_OPS_STATE_CB => agent_state(&ctx, cfg),
        _ => {}
    }
    1
}

#[inline(always)]
fn sock_key(ctx: &SockOpsContext, netns: u64) -> SockKey {
    SockKey {
        local_ip4: ctx.local_ip4(),
        remote_ip4: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: u32::from_be(ctx.remote_port()),
        netns,
    }
}

#[inline(always)]
fn is_listener(ctx: &SockOpsContext, cfg: &GlobalConfig) -> bool {
    ctx.local_port() == cfg.listen_port && ctx.local_ip4() == cfg.listen_ip4
}

fn app_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) else {
        return;
    };
    let orig = unsafe { *orig };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let me = EndpointKey {
        ip4: ctx.local_ip4(),
        port: ctx.local_port(),
        netns,
    };
    if SM_PEER_ORIG.insert(&me, &orig, BPF_ANY as u64).is_err() {
        warn!(
            ctx,
            "sockmesh: cannot publish original destination for port {}", me.port
        );
        return;
    }
    if orig.mode == Mode::Sockmap as u32 {
        let key = sock_key(ctx, netns);
        if SM_SOCKS
            .update(key, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
            .is_err()
        {
            warn!(
                ctx,
                "sockmesh: sockhash insert failed (app side); data takes the TCP path"
            );
        }
    }
}

fn agent_established(ctx: &SockOpsContext, cfg: &GlobalConfig) {
    if !is_listener(ctx, cfg) {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let peer = EndpointKey {
        ip4: ctx.remote_ip4(),
        port: u32::from_be(ctx.remote_port()),
        netns,
    };
    let Some(orig) = SM_PEER_ORIG.get_ptr(&peer) else {
        return;
    };
    // Drop the record when this (agent-side) socket closes.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    if unsafe { (*orig).mode } == Mode::Sockmap as u32 {
        let key = sock_key(ctx, netns);
        if SM_SOCKS
            .update(key, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
            .is_err()
        {
            warn!(
                ctx,
                "sockmesh: sockhash insert failed (agent side); data takes the TCP path"
            );
        }
    }
}

fn agent_state(ctx: &SockOpsContext, cfg: &GlobalConfig) {
    if ctx.arg(1) != TCP_CLOSE || !is_listener(ctx, cfg) {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let peer = EndpointKey {
        ip4: ctx.remote_ip4(),
        port: u32::from_be(ctx.remote_port()),
        netns,
    };
    let _ = SM_PEER_ORIG.remove(&peer);
}
