//! cgroup/connect4 and cgroup/connect6: rewrite an app's TCP connect to the agent's transparent
//! listener. connect6 handles IPv4-mapped destinations (`::ffff:a.b.c.d`), which is how
//! dual-stack sockets (Java's default, for instance) reach IPv4 services.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_sk_lookup_tcp, bpf_sk_release},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use sockmesh_common::{CgroupPolicy, GlobalConfig, MAX_AGENT_PORTS, MAX_CGROUP_DEPTH, Mode, OrigDst};

use crate::maps::{SM_CGROUPS, SM_EXCLUDE_PORTS, SM_EXCLUDE_V4, SM_INCLUDE_V4, SM_ORIG_DST, config};

const IPPROTO_TCP: u32 = 6;
const LOOPBACK_NET: u32 = 0x7f00_0000;

/// Always allow the connect (return 1): interception must never make a connect fail.
#[cgroup_sock_addr(connect4)]
pub fn sm_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst_ip = sa.user_ip4;
    if let Some(to) = try_connect(&ctx, dst_ip) {
        sa.user_ip4 = to.0;
        sa.user_port = to.1;
    }
    1
}

const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, 0x0000_ffff_u32.to_be()];

#[cgroup_sock_addr(connect6)]
pub fn sm_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip6 = sa.user_ip6;
    if ip6[0] != V4_MAPPED_PREFIX[0] || ip6[1] != V4_MAPPED_PREFIX[1] || ip6[2] != V4_MAPPED_PREFIX[2] {
        return 1; // native IPv6 destinations are not intercepted yet
    }
    if let Some(to) = try_connect(&ctx, ip6[3]) {
        sa.user_ip6[3] = to.0;
        sa.user_port = to.1;
    }
    1
}

enum Verdict {
    Redirected,
    Passed,
    FailOpen,
}

/// Decide for a TCP connect to `dst_ip` (network order); returns the address and port (both as
/// the context stores them) to rewrite to, or None to leave the connect alone.
fn try_connect(ctx: &SockAddrContext, dst_ip: u32) -> Option<(u32, u32)> {
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return None;
    }
    let cfg = config()?;
    // Self-exclusion: the agent marks its own sockets.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && cfg.agent_mark != 0 && unsafe { (*sk).mark } == cfg.agent_mark {
        return None;
    }
    let (cgroup_id, policy) = enabled_ancestor()?;
    let mode = unsafe { (*policy).mode };
    if mode == Mode::Off as u32 {
        return None;
    }
    let dst_port = u16::from_be(sa.user_port as u16) as u32;

    let mut rewrite = None;
    let verdict = if !policy_allows(cfg, dst_ip, dst_port) {
        Verdict::Passed
    } else if !listener_alive(ctx, cfg) {
        Verdict::FailOpen
    } else {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let orig = OrigDst {
            ip4: dst_ip,
            port: dst_port,
            mode,
            _pad: 0,
            cgroup_id,
        };
        if SM_ORIG_DST.insert(&cookie, &orig, 0).is_err() {
            warn!(
                ctx,
                "sockmesh: cannot record original destination; not intercepting"
            );
            Verdict::FailOpen
        } else {
            rewrite = Some((cfg.listen_ip4, ((cfg.listen_port as u16).to_be()) as u32));
            debug!(
                ctx,
                "sockmesh: redirected connect to {:i}:{} (cgroup {})",
                u32::from_be(dst_ip),
                dst_port,
                cgroup_id
            );
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
    rewrite
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
