//! Every map the programs share, pinned by name under `/sys/fs/bpf/sockmesh/maps-v<N>` (N =
//! `MAP_LAYOUT_VERSION`: bump it when a map here changes) so that interception survives an agent
//! restart. Who writes and who reads is stated per map.
use aya_ebpf::{
    bindings::bpf_sock,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use sockmesh_common::{
    CgroupPolicy, EndpointKey, GlobalConfig, Heartbeat, Ip6, MAX_CGROUPS, MAX_EXCLUDE_CIDRS,
    MAX_EXCLUDE_CIDRS_V6, MAX_EXCLUDE_PORTS, MAX_INCLUDE_CIDRS, MAX_INCLUDE_CIDRS_V6, MAX_LOCAL_DIALS,
    MAX_LOCAL_PORTS, OrigDst, STAT_COUNT, SockKey, Stat,
};

/// Global settings (listeners, agent mark, agent ports, liveness timeout). Written by the agent;
/// read by all programs.
#[map(name = "SM_CONFIG")]
pub static SM_CONFIG: Array<GlobalConfig> = Array::pinned(1, 0);

/// The agent's heartbeat (`CLOCK_MONOTONIC` ns, as `bpf_ktime_get_ns`), 0 = none yet. Written
/// by the agent every 100 ms from its runtime; read by `connect4`/`connect6`, which send apps
/// direct when it is older than `GlobalConfig::liveness_timeout_ns` (a stuck agent).
#[map(name = "SM_HEARTBEAT")]
pub static SM_HEARTBEAT: Array<Heartbeat> = Array::pinned(1, 0);

/// Enabled cgroups by cgroup id: mode plus counters. Mode written by the agent, counters bumped by
/// `connect4`, read by the agent (`intercept status`).
#[map(name = "SM_CGROUPS")]
pub static SM_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::pinned(MAX_CGROUPS, 0);

/// IPv4 destination prefixes to intercept (nothing when empty). Written by the agent; read by
/// `connect4` and by `connect6` for IPv4-mapped destinations.
#[map(name = "SM_INCLUDE_V4")]
pub static SM_INCLUDE_V4: LpmTrie<u32, u8> =
    LpmTrie::pinned(MAX_INCLUDE_CIDRS, 1 /* BPF_F_NO_PREALLOC */);

/// IPv4 destination prefixes never to intercept. Written by the agent; read by `connect4`/`connect6`.
#[map(name = "SM_EXCLUDE_V4")]
pub static SM_EXCLUDE_V4: LpmTrie<u32, u8> =
    LpmTrie::pinned(MAX_EXCLUDE_CIDRS, 1 /* BPF_F_NO_PREALLOC */);

/// Native IPv6 destination prefixes to intercept (nothing when empty), network-order words.
/// Written by the agent; read by `connect6`.
#[map(name = "SM_INCLUDE_V6")]
pub static SM_INCLUDE_V6: LpmTrie<Ip6, u8> =
    LpmTrie::pinned(MAX_INCLUDE_CIDRS_V6, 1 /* BPF_F_NO_PREALLOC */);

/// Native IPv6 destination prefixes never to intercept. Written by the agent; read by `connect6`.
#[map(name = "SM_EXCLUDE_V6")]
pub static SM_EXCLUDE_V6: LpmTrie<Ip6, u8> =
    LpmTrie::pinned(MAX_EXCLUDE_CIDRS_V6, 1 /* BPF_F_NO_PREALLOC */);

/// Destination ports never to intercept (e.g. 22). Written by the agent; read by `connect4`.
#[map(name = "SM_EXCLUDE_PORTS")]
pub static SM_EXCLUDE_PORTS: HashMap<u32, u8> = HashMap::pinned(MAX_EXCLUDE_PORTS, 0);

/// Original destination by app socket cookie. Written by `connect4`/`connect6`, read by
/// `getpeername4`/`getpeername6` and `sockops`, deleted by `sock_release`. LRU so that it cannot grow without bound even if a
/// release is missed.
#[map(name = "SM_ORIG_DST")]
pub static SM_ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65536, 0);

/// Original destination by the app socket's (ip, port, netns): the agent's accepted socket sees
/// that endpoint as its peer. Written by `sockops` (app side, active established), read by
/// `getsockopt` (for the agent's sockets only) and `sockops` (agent side), deleted by `sockops`
/// when the agent's socket closes.
#[map(name = "SM_PEER_ORIG")]
pub static SM_PEER_ORIG: LruHashMap<EndpointKey, OrigDst> = LruHashMap::pinned(65536, 0);

/// Both ends of every sockmap-mode app<->agent connection and of every opted-in local leg, keyed
/// by their own view of the tuple. Filled by `sockops`; the kernel removes sockets when they
/// close; read by `skmsg`.
#[map(name = "SM_SOCKS")]
pub static SM_SOCKS: SockHash<SockKey> = SockHash::pinned(65536, 0);

/// Local legs to short-circuit: destination ports (host order) of the export ports and local
/// providers whose export says `sockmesh.sockmap: true`, and of the loopback endpoints of refers
/// that say it. Written by the agent (policy); read by
/// `sockops`, which puts both ends of an agent-dialled connection to such a port on this host
/// into `SM_SOCKS`.
#[map(name = "SM_LOCAL_PORTS")]
pub static SM_LOCAL_PORTS: HashMap<u32, u8> = HashMap::pinned(MAX_LOCAL_PORTS, 0);

/// Agent-dialled local legs waiting for their server end, keyed by the tuple as the server end
/// sees it. Written by `sockops` on the agent's active established, taken (deleted) by `sockops`
/// on the server end's passive established, which then joins `SM_SOCKS`. LRU: an entry whose
/// server end never comes (a reset handshake) cannot pile up.
#[map(name = "SM_LOCAL_DIALS")]
pub static SM_LOCAL_DIALS: LruHashMap<SockKey, u8> = LruHashMap::pinned(MAX_LOCAL_DIALS, 0);

/// Counters of `sockops` (sockhash inserts) and `skmsg` (redirects), indexed by [`Stat`]; per
/// CPU, so counting costs no atomic. Bumped by the programs, summed by the agent.
#[map(name = "SM_STATS")]
pub static SM_STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// Add `n` to counter `s` (this CPU's slot; programs do not migrate while they run).
#[inline(always)]
pub fn count(s: Stat, n: u64) {
    if let Some(p) = SM_STATS.get_ptr_mut(s as u32) {
        unsafe { *p += n };
    }
}

/// The single global settings entry, if the agent wrote one.
#[inline(always)]
pub fn config() -> Option<&'static GlobalConfig> {
    let cfg = SM_CONFIG.get(0)?;
    if cfg.enabled == 0 { None } else { Some(cfg) }
}

/// Whether the agent is stuck: a liveness timeout is set, the agent has sent a heartbeat, and
/// the last one is older than the timeout. No heartbeat yet (0) is not stuck: then the listener
/// check alone decides, as before heartbeats existed. A heartbeat not older than `now` is
/// fresh (checked first, so the subtraction cannot wrap).
#[inline(always)]
pub fn agent_stalled(cfg: &GlobalConfig) -> bool {
    if cfg.liveness_timeout_ns == 0 {
        return false;
    }
    let beat = match SM_HEARTBEAT.get(0) {
        Some(b) => *b,
        None => return false,
    };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    beat != 0 && now > beat && now - beat > cfg.liveness_timeout_ns
}

/// Whether `sk` is one of the agent's sockets: its listeners carry the agent's mark, and sockets
/// accepted from them inherit it (`inet_csk_clone_lock` copies the listener's `sk_mark`). Only
/// CAP_NET_ADMIN/CAP_NET_RAW can set a mark, so an unprivileged process never passes this.
#[inline(always)]
pub fn is_agent_socket(sk: *const bpf_sock, cfg: &GlobalConfig) -> bool {
    !sk.is_null() && cfg.agent_mark != 0 && unsafe { (*sk).mark } == cfg.agent_mark
}

/// A socket's address as the maps keep it: IPv4 (`family` AF_INET) mapped, IPv6 as it is.
#[inline(always)]
pub fn sock_ip(family: u32, ip4: u32, ip6: *const [u32; 4]) -> Ip6 {
    const AF_INET: u32 = 2;
    if family == AF_INET {
        sockmesh_common::v4_mapped(ip4)
    } else {
        read_ip6(ip6)
    }
}

/// Read a 4-word address out of a context or socket with four 32-bit loads: the verifier only
/// allows 4-byte reads of `bpf_sock_ops`/`sk_msg_md`/`bpf_sock` IPv6 fields, and LLVM would
/// otherwise merge them into 8-byte loads.
#[inline(always)]
fn read_ip6(p: *const [u32; 4]) -> Ip6 {
    let p = p as *const u32;
    unsafe {
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}
