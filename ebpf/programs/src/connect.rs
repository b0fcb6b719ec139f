//! cgroup/connect4 and cgroup/connect6: rewrite an app's TCP connect to the agent's transparent
//! listener. IPv4 destinations, also IPv4-mapped ones on dual-stack sockets (`::ffff:a.b.c.d`,
//! how Java reaches IPv4 services by default), go to the IPv4 listener (127.0.0.1); native IPv6
//! destinations go to the IPv6 listener (::1) on the same port.
//!
//! Only a listener of the agent counts: the listening socket found at the transparent address
//! must carry the agent's socket mark. Any other listener there (a process that bound the
//! address while the agent was down) gets nothing: the app connects directly (fail-open).
//! A stuck agent (stopped, stalled runtime) keeps its listener, so the agent's heartbeat counts
//! too: when it is older than the liveness timeout the app connects directly as well.
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
use sockmesh_common::{
    CgroupPolicy, GlobalConfig, Ip6, MAX_AGENT_PORTS, MAX_CGROUP_DEPTH, Mode, OrigDst, is_v4_mapped,
    v4_mapped,
};

use crate::maps::{
    SM_CGROUPS, SM_EXCLUDE_PORTS, SM_EXCLUDE_V4, SM_EXCLUDE_V6, SM_INCLUDE_V4, SM_INCLUDE_V6, SM_ORIG_DST,
    agent_stalled, config, is_agent_socket,
};

const IPPROTO_TCP: u32 = 6;
const LOOPBACK_NET: u32 = 0x7f00_0000;
const IP6_LOOPBACK: Ip6 = [0, 0, 0, 1u32.to_be()];

/// Always allow the connect (return 1): interception must never make a connect fail.
#[cgroup_sock_addr(connect4)]
pub fn sm_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some((to, port)) = try_connect(&ctx, v4_mapped(sa.user_ip4)) {
        sa.user_ip4 = to[3];
        sa.user_port = port;
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sm_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // Word by word: the verifier refuses context accesses through a derived pointer, which is
    // what LLVM makes of an array copy.
    let dst = unsafe {
        [
            core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
            core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
        ]
    };
    if let Some((to, port)) = try_connect(&ctx, dst) {
        // An IPv4-mapped destination goes to the IPv4 listener, IPv4-mapped again.
        unsafe {
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], to[0]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], to[1]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], to[2]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], to[3]);
            (*sa).user_port = port;
        }
    }
    1
}

enum Verdict {
    Redirected,
    Passed,
    FailOpen,
    /// Fail-open because the agent's heartbeat is stale (counted in `fail_open` too).
    Stalled,
}

/// Decide for a TCP connect to `dst` (IPv6 or IPv4-mapped); returns the listener address (in
/// the same form) and port (as the context stores it) to rewrite to, or None to leave it alone.
fn try_connect(ctx: &SockAddrContext, dst: Ip6) -> Option<(Ip6, u32)> {
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return None;
    }
    let cfg = config()?;
    // Self-exclusion: the agent marks its own sockets.
    if is_agent_socket(unsafe { sa.__bindgen_anon_1.sk }, cfg) {
        return None;
    }
    let (cgroup_id, policy) = enabled_ancestor()?;
    let mode = unsafe { (*policy).mode };
    if mode == Mode::Off as u32 {
        return None;
    }
    let dst_port = u16::from_be(sa.user_port as u16) as u32;
    let v4 = is_v4_mapped(&dst);

    let mut rewrite = None;
    let verdict = if !policy_allows(cfg, &dst, v4, dst_port) {
        Verdict::Passed
    } else if !agent_listening(ctx, cfg, v4) {
        Verdict::FailOpen
    } else if agent_stalled(cfg) {
        // Listening but stuck (after the listener check, so that a dead agent's stale heartbeat
        // counts as the plain fail-open it is).
        Verdict::Stalled
    } else {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let orig = OrigDst {
            addr: dst,
            port: dst_port,
            mode,
            cgroup_id,
        };
        if SM_ORIG_DST.insert(&cookie, &orig, 0).is_err() {
            warn!(
                ctx,
                "sockmesh: cannot record original destination; not intercepting"
            );
            Verdict::FailOpen
        } else {
            let listen = if v4 {
                v4_mapped(cfg.listen_ip4)
            } else {
                cfg.listen_ip6
            };
            rewrite = Some((listen, ((cfg.listen_port as u16).to_be()) as u32));
            log_redirect(ctx, &dst, v4, dst_port, cgroup_id);
            Verdict::Redirected
        }
    };
    let counter = unsafe {
        match verdict {
            Verdict::Redirected => &raw mut (*policy).redirected,
            Verdict::Passed => &raw mut (*policy).passed,
            Verdict::FailOpen => &raw mut (*policy).fail_open,
            Verdict::Stalled => {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*policy).fail_open_stalled, 1);
                &raw mut (*policy).fail_open
            }
        }
    };
    // A BPF atomic add (BPF_XADD): several CPUs may count for the same cgroup at once.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    rewrite
}

#[inline(always)]
fn log_redirect(ctx: &SockAddrContext, dst: &Ip6, v4: bool, port: u32, cgroup_id: u64) {
    if v4 {
        debug!(
            ctx,
            "sockmesh: redirected connect to {:i}:{} (cgroup {})",
            u32::from_be(dst[3]),
            port,
            cgroup_id
        );
    } else {
        // Network-order words are the address bytes in memory order.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(*dst) };
        debug!(
            ctx,
            "sockmesh: redirected connect to [{:i}]:{} (cgroup {})", bytes, port, cgroup_id
        );
    }
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

/// Interception policy: the agent's own loopback ports and the listener itself are never
/// intercepted, nor IPv6 link-local destinations (their scope id is not visible here, so the
/// agent could not dial them); then excluded ports, excluded prefixes, and the include list of
/// the destination's family (empty = nothing).
#[inline(always)]
fn policy_allows(cfg: &GlobalConfig, dst: &Ip6, v4: bool, dst_port: u32) -> bool {
    let loopback = if v4 {
        u32::from_be(dst[3]) & 0xff00_0000 == LOOPBACK_NET
    } else {
        dst[0] == IP6_LOOPBACK[0]
            && dst[1] == IP6_LOOPBACK[1]
            && dst[2] == IP6_LOOPBACK[2]
            && dst[3] == IP6_LOOPBACK[3]
    };
    if loopback {
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
    if v4 {
        let key = Key::new(32, dst[3]);
        if SM_EXCLUDE_V4.get(&key).is_some() {
            return false;
        }
        // An include entry 0.0.0.0/0 means "every IPv4 destination".
        return SM_INCLUDE_V4.get(&key).is_some();
    }
    if u32::from_be(dst[0]) & 0xffc0_0000 == 0xfe80_0000 {
        return false;
    }
    let key = Key::new(128, *dst);
    if SM_EXCLUDE_V6.get(&key).is_some() {
        return false;
    }
    // An include entry ::/0 means "every IPv6 destination".
    SM_INCLUDE_V6.get(&key).is_some()
}

/// Fail-open and trust: only redirect when the listening socket at the transparent address of
/// this family, in this socket's network namespace, is the agent's (carries its mark). A dead
/// agent has no listening socket, and any other process's listener there does not count.
#[inline(always)]
fn agent_listening(ctx: &SockAddrContext, cfg: &GlobalConfig, v4: bool) -> bool {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let port = (cfg.listen_port as u16).to_be();
    let size = if v4 {
        tuple.__bindgen_anon_1.ipv4.daddr = cfg.listen_ip4;
        tuple.__bindgen_anon_1.ipv4.dport = port;
        core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        tuple.__bindgen_anon_1.ipv6.daddr = cfg.listen_ip6;
        tuple.__bindgen_anon_1.ipv6.dport = port;
        core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    let ours = is_agent_socket(sk, cfg);
    let _ = unsafe { bpf_sk_release(sk as *mut _) };
    ours
}
