//! Types shared by the sockmesh BPF programs (kernel side) and the agent (user side).
//!
//! Every type here is `#[repr(C)]`, has no padding holes the verifier could trip over, and is
//! `Copy`. Byte-order conventions are stated per field: addresses are kept in network order
//! exactly as the kernel hands them over, ports are kept in host order.
//!
//! Addresses of connections ([`OrigDst`], [`EndpointKey`], [`SockKey`]) are IPv6-sized, 4 words
//! in network order ([`Ip6`]); an IPv4 address is kept IPv4-mapped (`::ffff:a.b.c.d`, see
//! [`v4_mapped`]). So one record serves an IPv4 socket, a dual-stack socket on an IPv4-mapped
//! connection (both see the same mapped address) and a native IPv6 one.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where the maps, programs and links are pinned (bpffs).
pub const PIN_ROOT: &str = "/sys/fs/bpf/sockmesh";

/// Default transparent listener the connect hook rewrites to.
pub const DEFAULT_TRANSPARENT_PORT: u16 = 15001;

/// Default socket mark the agent puts on its own outbound sockets (self-exclusion).
pub const DEFAULT_AGENT_MARK: u32 = 0x5e5e_0001;

/// `SOL_IP` / `SO_ORIGINAL_DST` as netfilter defines them.
pub const SOL_IP: i32 = 0;
pub const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IPV6` / `IP6T_SO_ORIGINAL_DST`: the IPv6 original destination, as ip6tables REDIRECT
/// answers it (a `sockaddr_in6`).
pub const SOL_IPV6: i32 = 41;
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;

/// An address as the programs keep it: IPv6, or IPv4-mapped IPv6; 4 words, network order.
pub type Ip6 = [u32; 4];

/// `::ffff:a.b.c.d` for an IPv4 address in network order.
#[inline(always)]
pub const fn v4_mapped(ip4: u32) -> Ip6 {
    [0, 0, 0x0000_ffff_u32.to_be(), ip4]
}

/// Whether `a` is an IPv4-mapped address (then `a[3]` is the IPv4 address, network order).
#[inline(always)]
pub const fn is_v4_mapped(a: &Ip6) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0x0000_ffff_u32.to_be()
}

/// The programs' form of an address (IPv4 becomes IPv4-mapped).
pub fn ip6_of(ip: IpAddr) -> Ip6 {
    let o = match ip {
        IpAddr::V4(v4) => return v4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6.octets(),
    };
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The address an [`Ip6`] stands for: IPv4 when it is IPv4-mapped.
pub fn ip_of(a: &Ip6) -> IpAddr {
    if is_v4_mapped(a) {
        return IpAddr::V4(Ipv4Addr::from(a[3].to_ne_bytes()));
    }
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o))
}

/// How many agent-owned loopback ports the connect hook leaves alone.
pub const MAX_AGENT_PORTS: usize = 8;

/// Version of the pinned map layout: the maps live in `<pin dir>/maps-v<N>` (before versioning:
/// `maps`, layout 1). Bump it whenever a pinned map changes its name, type, key, value (also the
/// meaning of a field), size or flags: an agent refuses to run its programs on maps pinned by
/// another layout. The agent's unit test `map_layout_is_versioned` fails until it is bumped.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// Capacity (max_entries) of `SM_CGROUPS`: how many cgroups can be intercepted at once.
pub const MAX_CGROUPS: u32 = 1024;
/// Capacity of `SM_INCLUDE_V4`; the IPv4 prefixes of `sockmesh.intercept.include_cidrs` are
/// checked against it.
pub const MAX_INCLUDE_CIDRS: u32 = 256;
/// Capacity of `SM_EXCLUDE_V4`; the IPv4 prefixes of `sockmesh.intercept.exclude_cidrs` are
/// checked against it.
pub const MAX_EXCLUDE_CIDRS: u32 = 256;
/// Capacity of `SM_INCLUDE_V6`; the IPv6 prefixes of `sockmesh.intercept.include_cidrs` are
/// checked against it.
pub const MAX_INCLUDE_CIDRS_V6: u32 = 256;
/// Capacity of `SM_EXCLUDE_V6`; the IPv6 prefixes of `sockmesh.intercept.exclude_cidrs` are
/// checked against it.
pub const MAX_EXCLUDE_CIDRS_V6: u32 = 256;
/// Capacity of `SM_EXCLUDE_PORTS`; `sockmesh.intercept.exclude_ports` is checked against it.
pub const MAX_EXCLUDE_PORTS: u32 = 256;

/// Capacity of `SM_LOCAL_PORTS`: how many ports (export ports and local providers' ports of
/// the exports with `sockmesh.sockmap: true`) have their local legs short-circuited.
pub const MAX_LOCAL_PORTS: u32 = 256;
/// Capacity of `SM_LOCAL_DIALS` (LRU): agent-dialled local legs whose server end has not been
/// established yet; on loopback the server end follows within the handshake.
pub const MAX_LOCAL_DIALS: u32 = 4096;

/// Counters of the sockhash programs, indexes into `SM_STATS` (a per-CPU array): the agent sums
/// the CPUs (`intercept status`, metrics).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Sockets of app<->agent connections (ebpf-sockmap cgroups) put into `SM_SOCKS`.
    AppLegSocks = 0,
    /// Sockets of local legs (agent -> export port or local provider opted in) put into
    /// `SM_SOCKS`, both ends counted.
    LocalLegSocks = 1,
    /// `sk_msg` messages redirected into the peer socket (no TCP).
    MsgRedirected = 2,
    /// Bytes in those messages.
    BytesRedirected = 3,
    /// `sk_msg` messages left to TCP: the peer socket is not (yet) in `SM_SOCKS`.
    MsgPassed = 4,
    /// `bpf_sock_hash_update` failures (the socket stays on the TCP path).
    InsertFailed = 5,
}

/// Number of `SM_STATS` entries.
pub const STAT_COUNT: u32 = 6;

/// How deep the connect hook looks for an enabled ancestor cgroup.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Interception mode of one enabled cgroup, as stored in [`CgroupPolicy::mode`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Present in the map but switched off (kept for its counters).
    Off = 0,
    /// cgroup/connect4 rewrite only; data goes through the loopback TCP stack.
    Connect = 1,
    /// connect rewrite plus sock_ops/sk_msg short-circuit between app and agent sockets.
    Sockmap = 2,
}

impl Mode {
    pub fn from_u32(v: u32) -> Mode {
        match v {
            1 => Mode::Connect,
            2 => Mode::Sockmap,
            _ => Mode::Off,
        }
    }
}

/// Global settings, one entry in `SM_CONFIG` (array). Written by the agent at start-up, read by
/// every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalConfig {
    /// Transparent listener address, network order (e.g. 127.0.0.1).
    pub listen_ip4: u32,
    /// Transparent listener port, host order.
    pub listen_port: u32,
    /// Socket mark of the agent's own sockets; 0 disables mark-based exclusion.
    pub agent_mark: u32,
    /// Set to 1 once the agent filled the policy maps; 0 means "intercept nothing".
    pub enabled: u32,
    /// Loopback ports the agent itself serves (9981, 9982, 8002, ...), host order, 0 = unused.
    pub agent_ports: [u32; MAX_AGENT_PORTS],
    /// Transparent listener for native IPv6 connects (::1), network order; same port.
    pub listen_ip6: Ip6,
    /// Stuck-agent fail-open: connects go direct when the agent's heartbeat (`SM_HEARTBEAT`)
    /// is older than this many nanoseconds; 0 = never (`sockmesh.intercept.liveness_timeout_ms`).
    pub liveness_timeout_ns: u64,
}

/// The agent's heartbeat, one entry in `SM_HEARTBEAT` (array): `CLOCK_MONOTONIC` nanoseconds
/// (what `bpf_ktime_get_ns` returns) of the agent's last proof of life; 0 = none yet.
pub type Heartbeat = u64;

/// Per enabled cgroup, keyed by cgroup id in `SM_CGROUPS`. The agent writes `mode`; the
/// programs bump the counters atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupPolicy {
    pub mode: u32,
    pub _pad: u32,
    /// connect() calls rewritten to the agent.
    pub redirected: u64,
    /// connect() calls left alone by policy (excluded port/CIDR, agent port, not TCP).
    pub passed: u64,
    /// connect() calls left alone because no agent listener was alive or the agent's heartbeat
    /// was stale (fail-open, all reasons).
    pub fail_open: u64,
    /// The part of `fail_open` due to a stale heartbeat: the agent's listener was there but the
    /// agent had stopped refreshing `SM_HEARTBEAT` (stuck: stopped, stalled, not accepting).
    pub fail_open_stalled: u64,
}

/// Original destination of an intercepted connection. Value of `SM_ORIG_DST` (keyed by the app
/// socket's cookie) and of `SM_PEER_ORIG` (keyed by the app socket's tuple, for the agent side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv6 or IPv4-mapped ([`Ip6`]).
    pub addr: Ip6,
    /// Host order.
    pub port: u32,
    /// [`Mode`] of the cgroup that made the connection.
    pub mode: u32,
    /// Enabled cgroup that matched.
    pub cgroup_id: u64,
}

/// One endpoint of a TCP connection in a given network namespace: key of `SM_PEER_ORIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// IPv6 or IPv4-mapped ([`Ip6`]).
    pub addr: Ip6,
    /// Host order.
    pub port: u32,
    pub _pad: u32,
    /// Network-namespace cookie, so identical loopback tuples in two namespaces differ.
    pub netns: u64,
}

/// Key of the `SM_SOCKS` sockhash: a socket by its own view of the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// IPv6 or IPv4-mapped ([`Ip6`]).
    pub local_ip: Ip6,
    /// IPv6 or IPv4-mapped ([`Ip6`]).
    pub remote_ip: Ip6,
    /// Host order.
    pub local_port: u32,
    /// Host order.
    pub remote_port: u32,
    pub netns: u64,
}

impl SockKey {
    /// The key under which the other end of this connection is stored.
    pub fn peer(&self) -> SockKey {
        SockKey {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
            netns: self.netns,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and contain only integers with explicit padding.
    unsafe impl aya::Pod for GlobalConfig {}
    unsafe impl aya::Pod for CgroupPolicy {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<GlobalConfig>(), 40 + 4 * MAX_AGENT_PORTS);
        assert_eq!(core::mem::size_of::<CgroupPolicy>(), 40);
        assert_eq!(core::mem::size_of::<OrigDst>(), 32);
        assert_eq!(core::mem::size_of::<EndpointKey>(), 32);
        assert_eq!(core::mem::size_of::<SockKey>(), 48);
    }

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let a = ip6_of(v4);
        assert!(is_v4_mapped(&a));
        assert_eq!(a, v4_mapped(u32::from_ne_bytes([10, 1, 2, 3])));
        assert_eq!(ip_of(&a), v4);
        let v6: IpAddr = "fd00:213:1::2".parse().unwrap();
        let b = ip6_of(v6);
        assert!(!is_v4_mapped(&b));
        assert_eq!(ip_of(&b), v6);
        // Network order: the first word holds the first two groups as they appear on the wire.
        assert_eq!(b[0].to_ne_bytes(), [0xfd, 0x00, 0x02, 0x13]);
        assert_eq!(
            ip_of(&ip6_of(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            Ipv6Addr::LOCALHOST
        );
    }

    #[test]
    fn peer_key_swaps_ends() {
        let k = SockKey {
            local_ip: [1; 4],
            remote_ip: [2; 4],
            local_port: 3,
            remote_port: 4,
            netns: 9,
        };
        let p = k.peer();
        assert_eq!(
            (p.local_ip, p.remote_ip, p.local_port, p.remote_port),
            ([2; 4], [1; 4], 4, 3)
        );
        assert_eq!(p.peer(), k);
        assert_eq!(Mode::from_u32(2), Mode::Sockmap);
        assert_eq!(Mode::from_u32(7), Mode::Off);
    }
}
