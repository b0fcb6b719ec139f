//! cgroup/connect4: rewrite an app's TCP connect to the agent's transparent listener.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_sk_lookup_tcp,
        bpf_sk_release,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use sockmesh_common::{CgroupPolicy, GlobalConfig, Mode, OrigDst, MAX_AGENT_PORTS, MAX_CGROUP_DEPTH};

use crate::maps::{
    config, SM_CGROUPS, SM_EXCLUDE_PORTS, SM_EXCLUDE_V4, SM_INCLUDE_V4, SM_ORIG_DST,
};

const IPPROTO_TCP: u32 = 6;
const LOOPBACK_NET: u32 = 0x7f00_0000;

/// Always allow the connect (return 1): interception must never make a connect fail.
#[cgroup_sock_addr(connect4)]
pub fn sm_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    1
}

enum Verdict {
    Redirected,
    Passed,
    FailOpen,
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), i64> {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return Ok(());
    }
    let Some(cfg) = config() else { return Ok(()) };
    // Self-exclusion: the agent marks its own sockets.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && cfg.agent_mark != 0 && unsafe { (*sk).mark } == cfg.agent_mark {
        return Ok(());
    }
    let Some((cgroup_id, policy)) = enabled_ancestor() else { return Ok(()) };
    let mode = unsafe { (*policy).mode };
    if mode == Mode::Off as u32 {
        return Ok(());
    }
    let dst_ip = sa.user_ip4; // network order
    let dst_port = u16::from_be(sa.user_port as u16) as u32;

    let verdict = if !policy_allows(cfg, dst_ip, dst_port) {
        Verdict::Passed
    } else if !listener_alive(ctx, cfg) {
        Verdict::FailOpen
    } else {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let orig = OrigDst { ip4: dst_ip, port: dst_port, mode, _pad: 0, cgroup_id };
        if SM_ORIG_DST.insert(&cookie, &orig, 0).is_err() {
            warn!(ctx, "sockmesh: cannot record original destination; not intercepting");
            Verdict::FailOpen
        } else {
            sa.user_ip4 = cfg.listen_ip4;
            sa.user_port = ((cfg.listen_port as u16).to_be()) as u32;
            debug!(ctx, "sockmesh: redirected connect to {:i}:{} (cgroup {})",
                u32::from_be(dst_ip), dst_port, cgroup_id);
            Verdict::Redirected
        }
    };
    let counter = unsafe {
        match verdict {
            Verdict::Redirected => &raw mut (*policy).redirected,
            Verdict::Passed => &raw mut (*policy).passed,
            Verdict::FailOpen => &raw mut (*policy).fail_open,
        }
    };
    // A BPF atomic add (BPF_XADD): several CPUs may count for the same cgroup at once.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    Ok(())
}

/// The deepest enabled cgroup among the current task's ancestors (itself included).
#[inline(always)]
fn enabled_ancestor() -> Option<(u64, *mut CgroupPolicy)> {
    let mut found: Option<(u64, *mut CgroupPolicy)> = None;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        if let Some(p) = SM_CGROUPS.get_ptr_mut(&id) {
            found = Some((id, p));
        }
        level += 1;
    }
    found
}

/// Interception policy: agent's own loopback ports and the listener itself are never
/// intercepted; then excluded ports, excluded prefixes, and the include list (empty = all).
#[inline(always)]
fn policy_allows(cfg: &GlobalConfig, dst_ip: u32, dst_port: u32) -> bool {
    let host_ip = u32::from_be(dst_ip);
    if host_ip & 0xff00_0000 == LOOPBACK_NET {
        if dst_port == cfg.listen_port {
            return false;
        }
        let mut i = 0;
        while i < MAX_AGENT_PORTS {
            if cfg.agent_ports[i] == dst_port {
                return false;
            }
            i += 1;
        }
    }
    if SM_EXCLUDE_PORTS.get_ptr(&dst_port).is_some() {
        return false;
    }
    let key = Key::new(32, dst_ip);
    if SM_EXCLUDE_V4.get(&key).is_some() {
        return false;
    }
    // An include entry 0.0.0.0/0 means "everything"; the agent always writes at least one entry.
    SM_INCLUDE_V4.get(&key).is_some()
}

/// Fail-open: only redirect when the agent's transparent listener exists in this socket's
/// network namespace. A dead agent has no listening socket, so apps connect directly.
#[inline(always)]
fn listener_alive(ctx: &SockAddrContext, cfg: &GlobalConfig) -> bool {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.daddr = cfg.listen_ip4;
    tuple.__bindgen_anon_1.ipv4.dport = (cfg.listen_port as u16).to_be();
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    let _ = unsafe { bpf_sk_release(sk as *mut _) };
    true
}
