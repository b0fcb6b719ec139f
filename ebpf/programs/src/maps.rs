//! Every map the programs share, pinned by name under `/sys/fs/bpf/sockmesh/maps-v<N>` (N =
//! `MAP_LAYOUT_VERSION`: bump it when a map here changes) so that interception survives an agent
//! restart. Who writes and who reads is stated per map.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, SockHash},
};
use sockmesh_common::{
    CgroupPolicy, EndpointKey, GlobalConfig, MAX_CGROUPS, MAX_EXCLUDE_CIDRS, MAX_EXCLUDE_PORTS,
    MAX_INCLUDE_CIDRS, OrigDst, SockKey,
};

/// Global settings (listener, agent mark, agent ports). Written by the agent; read by all programs.
#[map(name = "SM_CONFIG")]
pub static SM_CONFIG: Array<GlobalConfig> = Array::pinned(1, 0);

/// Enabled cgroups by cgroup id: mode plus counters. Mode written by the agent, counters bumped by
/// `connect4`, read by the agent (`intercept status`).
#[map(name = "SM_CGROUPS")]
pub static SM_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::pinned(MAX_CGROUPS, 0);

/// Destination prefixes to intercept (empty = everything). Written by the agent; read by `connect4`.
#[map(name = "SM_INCLUDE_V4")]
pub static SM_INCLUDE_V4: LpmTrie<u32, u8> =
    LpmTrie::pinned(MAX_INCLUDE_CIDRS, 1 /* BPF_F_NO_PREALLOC */);

/// Destination prefixes never to intercept. Written by the agent; read by `connect4`.
#[map(name = "SM_EXCLUDE_V4")]
pub static SM_EXCLUDE_V4: LpmTrie<u32, u8> =
    LpmTrie::pinned(MAX_EXCLUDE_CIDRS, 1 /* BPF_F_NO_PREALLOC */);

/// Destination ports never to intercept (e.g. 22). Written by the agent; read by `connect4`.
#[map(name = "SM_EXCLUDE_PORTS")]
pub static SM_EXCLUDE_PORTS: HashMap<u32, u8> = HashMap::pinned(MAX_EXCLUDE_PORTS, 0);

/// Original destination by app socket cookie. Written by `connect4`, read by `getpeername4` and
/// `sockops`, deleted by `sock_release`. LRU so that it cannot grow without bound even if a
/// release is missed.
#[map(name = "SM_ORIG_DST")]
pub static SM_ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65536, 0);

/// Original destination by the app socket's (ip, port, netns): the agent's accepted socket sees
/// that endpoint as its peer. Written by `sockops` (app side, active established), read by
/// `getsockopt`/`sockops` (agent side) and by the agent, deleted by `sock_release`.
#[map(name = "SM_PEER_ORIG")]
pub static SM_PEER_ORIG: LruHashMap<EndpointKey, OrigDst> = LruHashMap::pinned(65536, 0);

/// Both ends of every sockmap-mode app<->agent connection, keyed by their own view of the tuple.
/// Filled by `sockops`; the kernel removes sockets when they close; read by `skmsg`.
#[map(name = "SM_SOCKS")]
pub static SM_SOCKS: SockHash<SockKey> = SockHash::pinned(65536, 0);

/// The single global settings entry, if the agent wrote one.
#[inline(always)]
pub fn config() -> Option<&'static GlobalConfig> {
    let cfg = SM_CONFIG.get(0)?;
    if cfg.enabled == 0 { None } else { Some(cfg) }
}
