//! The interception settings as the kernel programs and the iptables chain see them, typed
//! once from the `sockmesh.intercept` section.
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// What the interception policy and the agent's identity look like to the kernel programs.
#[derive(Clone, Debug)]
pub struct InterceptSettings {
    /// bpffs directory for our pins (default /sys/fs/bpf/sockmesh).
    pub pin_dir: PathBuf,
    /// Transparent listener the connect hook rewrites IPv4 connects to (native IPv6 connects go
    /// to [`InterceptSettings::listen6`], the same port on ::1).
    pub listen: SocketAddrV4,
    /// Socket mark on the agent's own sockets (self-exclusion).
    pub mark: u32,
    /// Loopback ports the agent serves itself; never intercepted.
    pub agent_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    pub include_cidrs: Vec<Cidr>,
    pub exclude_cidrs: Vec<Cidr>,
    /// aya-log level compiled into the programs (0 off .. 5 trace).
    pub bpf_log_level: u8,
    /// Connects go direct when the agent's heartbeat is older than this; zero = never.
    pub liveness_timeout: Duration,
    /// Ports whose local legs go into the sockhash (`sockmesh.sockmap` on an export: its export
    /// port and its provider's port), sorted, no duplicates.
    pub local_ports: Vec<u16>,
}

impl InterceptSettings {
    /// The transparent listener for native IPv6 connects: ::1, same port.
    pub fn listen6(&self) -> SocketAddrV6 {
        SocketAddrV6::new(Ipv6Addr::LOCALHOST, self.listen.port(), 0, 0)
    }

    /// Both transparent listener addresses, IPv4 first.
    pub fn listeners(&self) -> [SocketAddr; 2] {
        [self.listen.into(), self.listen6().into()]
    }
}

/// An IPv4 or IPv6 prefix such as `10.0.0.0/8` or `fd00::/8` (a bare address is a host prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The prefix's address with the host bits cleared (`10.1.2.3/8` -> `10.0.0.0`): the form
    /// the policy maps hold, so that one prefix is one key however it was written.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 CIDR (like 10.0.0.0/8 or fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..{max}"))?,
        };
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The iptables chain name check (`sockmesh.intercept.iptables_chain`): iptables takes at most
/// 28 characters, and the name goes into command lines.
pub fn check_chain_name(chain: &str) -> Result<(), String> {
    if chain.is_empty()
        || chain.len() > 28
        || !chain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "iptables chain name {chain:?} must be 1-28 characters of [A-Za-z0-9_-]"
        ));
    }
    Ok(())
}

/// How often the agent refreshes its heartbeat in the kernel (`SM_HEARTBEAT`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Bounds of a non-zero `sockmesh.intercept.liveness_timeout_ms`: at least three heartbeats, so
/// that one late timer tick does not send apps direct; at most ten minutes.
pub const LIVENESS_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 300..=600_000;

/// Upper bound of `sockmesh.intercept.max_netns_listeners` (a thread and a socket each).
pub const MAX_NETNS_LISTENERS: usize = 4096;

/// A list going into a kernel map must fit it: `len` entries in a map of `capacity`.
pub fn check_capacity(len: usize, capacity: u32) -> Result<(), String> {
    if len > capacity as usize {
        return Err(format!("{len} entries, the kernel map holds at most {capacity}"));
    }
    Ok(())
}
