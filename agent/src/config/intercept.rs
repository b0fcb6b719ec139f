//! The interception settings as the kernel programs and the iptables chain see them, typed
//! once from the `sockmesh.intercept` section.
use std::net::SocketAddrV4;
use std::path::PathBuf;

use serde::Serialize;

/// What the interception policy and the agent's identity look like to the kernel programs.
#[derive(Clone, Debug)]
pub struct InterceptSettings {
    /// bpffs directory for our pins (default /sys/fs/bpf/sockmesh).
    pub pin_dir: PathBuf,
    /// Transparent listener the connect hook rewrites to.
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
}

/// An IPv4 prefix such as `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: std::net::Ipv4Addr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR (like 10.0.0.0/8)"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("{s:?}: prefix length must be 0..32"))?;
        if len > 32 {
            return Err(format!("{s:?}: prefix length must be 0..32"));
        }
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

/// Upper bound of `sockmesh.intercept.max_netns_listeners` (a thread and a socket each).
pub const MAX_NETNS_LISTENERS: usize = 4096;

/// A list going into a kernel map must fit it: `len` entries in a map of `capacity`.
pub fn check_capacity(len: usize, capacity: u32) -> Result<(), String> {
    if len > capacity as usize {
        return Err(format!("{len} entries, the kernel map holds at most {capacity}"));
    }
    Ok(())
}
