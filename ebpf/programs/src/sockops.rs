//! sock_ops (attached at the cgroup v2 root so it sees both the app's and the agent's sockets):
//! - app side, active established: publish the original destination under the app's own
//!   (address, port, netns), which is what the agent's accepted socket sees as its peer, and in
//!   sockmap mode put the socket into `SM_SOCKS`;
//! - agent side, passive established on a transparent listener (the agent's mark, inherited
//!   from the listener, and the listener's address): in sockmap mode put the accepted socket
//!   into `SM_SOCKS`, and ask for a state callback so the record is dropped when the agent's
//!   socket closes;
//! - local legs (`SM_LOCAL_PORTS`, the exports with `sockmesh.sockmap: true`): an agent socket
//!   (the agent's mark) that connects to such a port on this host (loopback, or its own
//!   address) goes into `SM_SOCKS` and leaves a record in `SM_LOCAL_DIALS`; the server end's
//!   passive established (the provider's or the export's accepted socket) finds the record and
//!   joins it, so both directions skip the TCP stack. Nothing else on such a port is touched.
//!
//! IPv4 sockets, dual-stack sockets on IPv4-mapped connections and native IPv6 sockets alike:
//! addresses are compared in their IPv6 form (IPv4 mapped), so an app's dual-stack socket and
//! the agent's IPv4 socket name the same endpoint the same way.
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
use sockmesh_common::{EndpointKey, GlobalConfig, Ip6, Mode, SockKey, Stat, is_v4_mapped, v4_mapped};

use crate::maps::{
    SM_LOCAL_DIALS, SM_LOCAL_PORTS, SM_ORIG_DST, SM_PEER_ORIG, SM_SOCKS, config, count, is_agent_socket,
    sock_ip,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn sm_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return 1;
    }
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return 1;
    }
    let Some(cfg) = config() else { return 1 };
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            app_established(&ctx);
            local_dialled(&ctx, cfg);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            agent_established(&ctx, cfg);
            local_accepted(&ctx);
        }
        _ => agent_state(&ctx, cfg),
    }
    1
}

/// This socket's own address (IPv4 mapped).
#[inline(always)]
fn local_ip(ctx: &SockOpsContext) -> Ip6 {
    sock_ip(ctx.family(), ctx.local_ip4(), unsafe {
        &raw const (*ctx.ops).local_ip6
    })
}

/// The peer's address (IPv4 mapped).
#[inline(always)]
fn remote_ip(ctx: &SockOpsContext) -> Ip6 {
    sock_ip(ctx.family(), ctx.remote_ip4(), unsafe {
        &raw const (*ctx.ops).remote_ip6
    })
}

#[inline(always)]
fn sock_key(ctx: &SockOpsContext, netns: u64) -> SockKey {
    SockKey {
        local_ip: local_ip(ctx),
        remote_ip: remote_ip(ctx),
        local_port: ctx.local_port(),
        remote_port: u32::from_be(ctx.remote_port()),
        netns,
    }
}

#[inline(always)]
fn peer_key(ctx: &SockOpsContext, netns: u64) -> EndpointKey {
    EndpointKey {
        addr: remote_ip(ctx),
        port: u32::from_be(ctx.remote_port()),
        _pad: 0,
        netns,
    }
}

/// An agent socket accepted from a transparent listener: the agent's mark and a local end at
/// one of the listener addresses.
#[inline(always)]
fn on_agent_listener(ctx: &SockOpsContext, cfg: &GlobalConfig) -> bool {
    if ctx.local_port() != cfg.listen_port {
        return false;
    }
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if !is_agent_socket(sk, cfg) {
        return false;
    }
    let me = local_ip(ctx);
    let v4 = v4_mapped(cfg.listen_ip4);
    let v6 = cfg.listen_ip6;
    (me[0] == v4[0] && me[1] == v4[1] && me[2] == v4[2] && me[3] == v4[3])
        || (me[0] == v6[0] && me[1] == v6[1] && me[2] == v6[2] && me[3] == v6[3])
}

fn app_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = SM_ORIG_DST.get_ptr(&cookie) else {
        return;
    };
    let orig = unsafe { *orig };
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let me = EndpointKey {
        addr: local_ip(ctx),
        port: ctx.local_port(),
        _pad: 0,
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
        insert(ctx, sock_key(ctx, netns), Stat::AppLegSocks);
    }
}

fn agent_established(ctx: &SockOpsContext, cfg: &GlobalConfig) {
    if !on_agent_listener(ctx, cfg) {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(orig) = SM_PEER_ORIG.get_ptr(&peer_key(ctx, netns)) else {
        return;
    };
    // Drop the record when this (agent-side) socket closes.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    if unsafe { (*orig).mode } == Mode::Sockmap as u32 {
        insert(ctx, sock_key(ctx, netns), Stat::AppLegSocks);
    }
}

/// Put this socket into `SM_SOCKS` under `key`, counted as `what`.
#[inline(always)]
fn insert(ctx: &SockOpsContext, key: SockKey, what: Stat) {
    if SM_SOCKS
        .update(key, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
        .is_err()
    {
        count(Stat::InsertFailed, 1);
        warn!(
            ctx,
            "sockmesh: sockhash insert failed (port {}); data takes the TCP path", key.local_port
        );
    } else {
        count(what, 1);
    }
}

/// Whether a connection from `me` to `peer` stays on this host: a loopback peer (127/8, ::1)
/// or the socket's own address (a dial to the host's own IP goes through loopback too).
#[inline(always)]
fn on_this_host(me: &Ip6, peer: &Ip6) -> bool {
    let loopback = if is_v4_mapped(peer) {
        u32::from_be(peer[3]) >> 24 == 127
    } else {
        peer[0] == 0 && peer[1] == 0 && peer[2] == 0 && peer[3] == 1u32.to_be()
    };
    loopback || (me[0] == peer[0] && me[1] == peer[1] && me[2] == peer[2] && me[3] == peer[3])
}

/// Active established: an agent socket dialling an opted-in port on this host joins
/// `SM_SOCKS` and announces itself to the server end (`SM_LOCAL_DIALS`).
fn local_dialled(ctx: &SockOpsContext, cfg: &GlobalConfig) {
    let port = u32::from_be(ctx.remote_port());
    if SM_LOCAL_PORTS.get_ptr(&port).is_none() {
        return;
    }
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if !is_agent_socket(sk, cfg) || !on_this_host(&local_ip(ctx), &remote_ip(ctx)) {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = sock_key(ctx, netns);
    if SM_LOCAL_DIALS.insert(&key.peer(), &1, BPF_ANY as u64).is_err() {
        return;
    }
    insert(ctx, key, Stat::LocalLegSocks);
}

/// Passive established on an opted-in port: the server end of a connection the agent dialled
/// (its record in `SM_LOCAL_DIALS`) joins `SM_SOCKS`. On loopback the dialler's active
/// established runs before its final ACK leaves, so the record is there.
fn local_accepted(ctx: &SockOpsContext) {
    if SM_LOCAL_PORTS.get_ptr(&ctx.local_port()).is_none() {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = sock_key(ctx, netns);
    if SM_LOCAL_DIALS.get_ptr(&key).is_none() {
        return;
    }
    let _ = SM_LOCAL_DIALS.remove(&key);
    insert(ctx, key, Stat::LocalLegSocks);
}

fn agent_state(ctx: &SockOpsContext, cfg: &GlobalConfig) {
    if ctx.arg(1) != TCP_CLOSE || !on_agent_listener(ctx, cfg) {
        return;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let _ = SM_PEER_ORIG.remove(&peer_key(ctx, netns));
}
