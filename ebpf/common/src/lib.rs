//! Types shared by the sockmesh BPF programs (kernel side) and the agent (user side).
//!
//! Every type here is `#[repr(C)]`, has no padding holes the verifier could trip over, and is
//! `Copy`. Byte-order conventions are stated per field: IPv4 addresses are kept in network order
//! exactly as the kernel hands them over, ports are kept in host order.
#![no_std]

/// Where the maps, programs and links are pinned (bpffs).
pub const PIN_ROOT: &str = "/sys/fs/bpf/sockmesh";

/// Default transparent listener the connect hook rewrites to.
pub const DEFAULT_TRANSPARENT_PORT: u16 = 15001;

/// Default socket mark the agent puts on its own outbound sockets (self-exclusion).
pub const DEFAULT_AGENT_MARK: u32 = 0x5e5e_0001;

/// `SOL_IP` / `SO_ORIGINAL_DST` as netfilter defines them.
pub const SOL_IP: i32 = 0;
pub const SO_ORIGINAL_DST: i32 = 80;

/// How many agent-owned loopback ports the connect hook leaves alone.
pub const MAX_AGENT_PORTS: usize = 8;

/// Version of the pinned map layout: the maps live in `<pin dir>/maps-v<N>` (before versioning:
/// `maps`, layout 1). Bump it whenever a pinned map changes its name, type, key, value (also the
/// meaning of a field), size or flags: an agent refuses to run its programs on maps pinned by
/// another layout. The agent's unit test `map_layout_is_versioned` fails until it is bumped.
pub const MAP_LAYOUT_VERSION: u32 = 2;

/// Capacity (max_entries) of `SM_CGROUPS`: how many cgroups can be intercepted at once.
pub const MAX_CGROUPS: u32 = 1024;
/// Capacity of `SM_INCLUDE_V4`; `sockmesh.intercept.include_cidrs` is checked against it.
pub const MAX_INCLUDE_CIDRS: u32 = 256;
/// Capacity of `SM_EXCLUDE_V4`; `sockmesh.intercept.exclude_cidrs` is checked against it.
pub const MAX_EXCLUDE_CIDRS: u32 = 256;
/// Capacity of `SM_EXCLUDE_PORTS`; `sockmesh.intercept.exclude_ports` is checked against it.
pub const MAX_EXCLUDE_PORTS: u32 = 256;

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
}

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
    /// connect() calls left alone because no agent listener was alive (fail-open).
    pub fail_open: u64,
}

/// Original destination of an intercepted connection. Value of `SM_ORIG_DST` (keyed by the app
/// socket's cookie) and of `SM_PEER_ORIG` (keyed by the app socket's tuple, for the agent side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network order.
    pub ip4: u32,
    /// Host order.
    pub port: u32,
    /// [`Mode`] of the cgroup that made the connection.
    pub mode: u32,
    pub _pad: u32,
    /// Enabled cgroup that matched.
    pub cgroup_id: u64,
}

/// One endpoint of a TCP connection in a given network namespace: key of `SM_PEER_ORIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Network order.
    pub ip4: u32,
    /// Host order.
    pub port: u32,
    /// Network-namespace cookie, so identical loopback tuples in two namespaces differ.
    pub netns: u64,
}

/// Key of the `SM_SOCKS` sockhash: a socket by its own view of the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network order.
    pub local_ip4: u32,
    /// Network order.
    pub remote_ip4: u32,
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
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
            netns: self.netns,
        }
    }
}

/// LPM trie key for IPv4 prefixes (`SM_INCLUDE_V4`, `SM_EXCLUDE_V4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub prefix_len: u32,
    /// Network order.
    pub ip4: u32,
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
    unsafe impl aya::Pod for Ipv4Prefix {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<GlobalConfig>(), 16 + 4 * MAX_AGENT_PORTS);
        assert_eq!(core::mem::size_of::<CgroupPolicy>(), 32);
        assert_eq!(core::mem::size_of::<OrigDst>(), 24);
        assert_eq!(core::mem::size_of::<EndpointKey>(), 16);
        assert_eq!(core::mem::size_of::<SockKey>(), 24);
        assert_eq!(core::mem::size_of::<Ipv4Prefix>(), 8);
    }

    #[test]
    fn peer_key_swaps_ends() {
        let k = SockKey {
            local_ip4: 1,
            remote_ip4: 2,
            local_port: 3,
            remote_port: 4,
            netns: 9,
        };
        let p = k.peer();
        assert_eq!(
            (p.local_ip4, p.remote_ip4, p.local_port, p.remote_port),
            (2, 1, 4, 3)
        );
        assert_eq!(p.peer(), k);
        assert_eq!(Mode::from_u32(2), Mode::Sockmap);
        assert_eq!(Mode::from_u32(7), Mode::Off);
    }
}
