//! The sections of the configuration file as they are written: `motan-agent` (motan-go's keys),
//! `sockmesh` (what motan-go does not have), and the error list every check reports into.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml_ng::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AgentSection {
    /// Agent port apps call on purpose (client role).
    pub port: u16,
    /// Management (admin) port.
    pub mport: u16,
    /// Default export port (server role).
    pub eport: u16,
    pub application: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            port: 9981,
            mport: 8002,
            eport: 9982,
            application: "sockmesh".into(),
            other: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SockmeshSection {
    /// Address the admin API binds to (port = motan-agent.mport). Loopback by default: the
    /// admin API can switch interception and has no authentication.
    pub admin_bind: Ipv4Addr,
    /// Address of the agent port (client role). Loopback: only local apps call it.
    pub agent_bind: Ipv4Addr,
    /// Address of the export ports (server role): other hosts' agents call them.
    pub export_bind: Ipv4Addr,
    /// How long an intercepted connection may stay silent before it is treated as not Motan2
    /// and passed through (only when clusters are configured; server-first protocols wait
    /// this long once per connection).
    pub sniff_timeout_ms: u64,
    pub log_level: String,
    /// Runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
    pub intercept: InterceptSection,
}

impl Default for SockmeshSection {
    fn default() -> Self {
        SockmeshSection {
            admin_bind: Ipv4Addr::LOCALHOST,
            agent_bind: Ipv4Addr::LOCALHOST,
            export_bind: Ipv4Addr::UNSPECIFIED,
            sniff_timeout_ms: 200,
            log_level: "info".into(),
            worker_threads: 0,
            intercept: InterceptSection::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterceptSection {
    /// Load the BPF programs at start-up (needs root / CAP_BPF + CAP_NET_ADMIN).
    pub enabled: bool,
    /// Transparent listener port on 127.0.0.1.
    pub transparent_port: u16,
    /// Socket mark of the agent's own outbound sockets.
    pub mark: u32,
    /// Mode `intercept enable` uses when none is given: auto, ebpf-connect, ebpf-sockmap.
    pub default_mode: String,
    /// Let `auto` choose ebpf-sockmap when the kernel self-test passes. Off by default: on
    /// 6.18 a blocking reader on a redirected socket was seen to get a spurious EAGAIN while
    /// another thread wrote (see ARCHITECTURE.md), which the self-test cannot yet provoke.
    pub auto_sockmap: bool,
    pub exclude_ports: Vec<u16>,
    pub include_cidrs: Vec<String>,
    pub exclude_cidrs: Vec<String>,
    pub pin_dir: PathBuf,
    /// nat chain of the iptables mode (`--mode iptables`).
    pub iptables_chain: String,
    /// Level of the kernel programs' own log records: off, error, warn, info, debug, trace.
    pub bpf_log_level: String,
    /// At most this many network namespaces (containers) get a transparent listener (a thread
    /// and a socket each); intercepted apps in further namespaces connect directly.
    pub max_netns_listeners: usize,
}

impl Default for InterceptSection {
    fn default() -> Self {
        InterceptSection {
            enabled: true,
            transparent_port: sockmesh_common::DEFAULT_TRANSPARENT_PORT,
            mark: sockmesh_common::DEFAULT_AGENT_MARK,
            default_mode: "auto".into(),
            auto_sockmap: false,
            exclude_ports: vec![22],
            include_cidrs: vec!["0.0.0.0/0".into(), "::/0".into()],
            exclude_cidrs: vec![],
            pin_dir: PathBuf::from(sockmesh_common::PIN_ROOT),
            iptables_chain: "SOCKMESH".into(),
            bpf_log_level: "info".into(),
            max_netns_listeners: 256,
        }
    }
}

/// Interception modes an operator can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedMode {
    Auto,
    Connect,
    Sockmap,
    Iptables,
}

impl RequestedMode {
    pub fn name(self) -> &'static str {
        match self {
            RequestedMode::Auto => "auto",
            RequestedMode::Connect => "ebpf-connect",
            RequestedMode::Sockmap => "ebpf-sockmap",
            RequestedMode::Iptables => "iptables",
        }
    }
}

impl std::str::FromStr for RequestedMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RequestedMode::Auto),
            "ebpf-connect" | "connect" => Ok(RequestedMode::Connect),
            "ebpf-sockmap" | "sockmap" => Ok(RequestedMode::Sockmap),
            "iptables" => Ok(RequestedMode::Iptables),
            other => Err(format!(
                "unknown mode {other:?} (expected auto, ebpf-connect, ebpf-sockmap or iptables)"
            )),
        }
    }
}

/// All problems found in one configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub fn bpf_log_level(s: &str) -> Option<u8> {
    Some(match s {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

/// One setting that cannot be used: its key and why. Callers add the section and entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key {key}: {reason}")]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

impl SettingError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> SettingError {
        SettingError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
