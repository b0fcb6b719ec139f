//! The sections of the configuration file as they are written: `motan-agent` (motan-go's keys),
//! `sockmesh` (what motan-go does not have), and the error list every check reports into.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::admin::{DEFAULT_CONTROL_SOCKET, MAX_SOCKET_PATH, Mutation, resolve_group};
use crate::protocol::motan2::simple::ValueLimits;

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
    /// Address the TCP admin port binds to (port = motan-agent.mport). Loopback by default; it
    /// serves reads and only the mutations `admin.tcp_mutations` allows.
    pub admin_bind: Ipv4Addr,
    /// Address of the agent port (client role). Loopback: only local apps call it.
    pub agent_bind: Ipv4Addr,
    /// Address of the export ports (server role): other hosts' agents call them.
    pub export_bind: Ipv4Addr,
    /// How long an intercepted connection may stay silent before it is treated as not Motan2
    /// and passed through (only when clusters are configured; server-first protocols wait
    /// this long once per connection).
    pub sniff_timeout_ms: u64,
    /// Call a refer's endpoint that is one of this agent's own export listeners in-process
    /// (server role, filters and all) instead of over TCP to itself.
    pub local_shortcut: bool,
    pub log_level: String,
    /// Runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
    /// Serve connections on one current-thread runtime per worker thread (shard.rs), each with
    /// its own share of every upstream pool, instead of on the multi-threaded runtime.
    pub shards: bool,
    /// The scheduling policy of the shards' threads (`normal` or `batch`, see [`ShardPolicy`]).
    pub shard_policy: ShardPolicy,
    pub intercept: InterceptSection,
    pub limits: LimitsSection,
    pub admin: AdminSection,
    /// Test/ops aids for the access-log files (config/observe.rs).
    pub log: LogAidsSection,
    /// Test/ops aids for the Graphite status samples (config/observe.rs).
    pub metrics: MetricsAidsSection,
}

/// `sockmesh.shard_policy`: how the kernel schedules the data-plane shards' threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardPolicy {
    /// SCHED_OTHER, as every other process: a shard woken by a request may preempt the task
    /// that woke it.
    #[default]
    Normal,
    /// SCHED_BATCH (same share of the CPU, no preemption on wake-up): a shard woken by an app's
    /// request runs once that app waits, which saves context switches on an idle or lightly
    /// loaded host (README, "Data-plane shards": about half the CPU per request at 1k req/s,
    /// 13% less at 5k) but can delay requests by up to a scheduler slice when the host's CPUs
    /// are busy (p50 about 1 ms instead of 0.1 ms in some runs with both cores saturated, not in
    /// others: it depends on where the busy tasks run). Opt-in.
    Batch,
}

/// `sockmesh.log`: rotate the access-log files every `rotate_interval_ms` (0: by
/// `motan-agent.rotate_per_hour`, as motan-go). A test and operations aid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogAidsSection {
    pub rotate_interval_ms: u64,
}

/// `sockmesh.metrics`: sample the runtime status every `status_period_ms` (0: motan-go's 30 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsAidsSection {
    pub status_period_ms: u64,
}

impl Default for SockmeshSection {
    fn default() -> Self {
        SockmeshSection {
            admin_bind: Ipv4Addr::LOCALHOST,
            agent_bind: Ipv4Addr::LOCALHOST,
            export_bind: Ipv4Addr::UNSPECIFIED,
            sniff_timeout_ms: 200,
            local_shortcut: true,
            log_level: "info".into(),
            worker_threads: 0,
            shards: true,
            shard_policy: ShardPolicy::Normal,
            intercept: InterceptSection::default(),
            limits: LimitsSection::default(),
            admin: AdminSection::default(),
            log: LogAidsSection::default(),
            metrics: MetricsAidsSection::default(),
        }
    }
}

/// Who may change the daemon (checked in config/admin.rs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Unix socket serving the whole admin API to root and `control_group`; the CLI's default.
    pub control_socket: PathBuf,
    /// A group (name or gid) whose members may use the control socket too (socket 0660,
    /// directory 0750 when sockmesh creates it); root only when unset (0600, 0700).
    pub control_group: Option<String>,
    /// Mutations the loopback TCP port accepts, e.g. ["/200", "/503"] for motan-go's deploy
    /// scripts; /200, /503, /switcher/set, /ratelimit/set and /logConfig/set may be listed.
    #[serde(deserialize_with = "mutation_list")]
    pub tcp_mutations: Vec<Mutation>,
    /// When set, TCP mutations must carry it: `Authorization: Bearer <token>` or `token=`.
    pub token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            control_group: None,
            tcp_mutations: Vec::new(),
            token: None,
        }
    }
}

/// serde stops at the first bad entry and would not say which key it was in.
fn mutation_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Mutation>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|p| {
            Mutation::try_from(p).map_err(|e| serde::de::Error::custom(format!("admin.tcp_mutations: {e}")))
        })
        .collect()
}

impl AdminSection {
    /// Every problem of the `sockmesh.admin` keys.
    pub fn problems(&self) -> Vec<SettingError> {
        let mut e = Vec::new();
        let socket = &self.control_socket;
        if !socket.is_absolute() {
            e.push(SettingError::new("control_socket", "must be an absolute path"));
        } else if socket.parent().is_none_or(|d| d == Path::new("/")) || socket.file_name().is_none() {
            e.push(SettingError::new(
                "control_socket",
                "must be a file in a directory of its own, such as /run/sockmesh/control.sock",
            ));
        }
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            e.push(SettingError::new(
                "control_socket",
                format!("longer than {MAX_SOCKET_PATH} bytes (a Unix socket path is at most 107)"),
            ));
        }
        if let Some(g) = &self.control_group
            && let Err(m) = resolve_group(g)
        {
            e.push(SettingError::new("control_group", m));
        }
        for m in self.tcp_mutations.iter().filter(|m| m.socket_only()) {
            e.push(SettingError::new(
                "tcp_mutations",
                format!(
                    "{} is served only on the control socket (root and sockmesh.admin.control_group)",
                    m.path()
                ),
            ));
        }
        if let Some(t) = &self.token
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            e.push(SettingError::new(
                "token",
                "must be non-empty printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        e
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
    /// Stuck-agent fail-open (eBPF modes): apps connect directly while the agent's heartbeat
    /// in the kernel is older than this; 0 = off (only a missing listener fails open).
    pub liveness_timeout_ms: u64,
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
            liveness_timeout_ms: 2000,
        }
    }
}

/// `sockmesh.limits`: what one peer, and all peers together, can make the agent hold.
///
/// Request bytes are a request's meta and body as decoded, plus its body once inflated; response
/// bytes count until they are written to the peer. A connection over its share is not read
/// from (TCP back-pressure); a request beyond the agent's budget is answered with a 503
/// exception frame at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests in flight on one connection.
    pub connection_requests: u32,
    /// Request and response bytes held for one connection.
    pub connection_bytes: u32,
    /// Requests in flight in the whole agent.
    pub requests: u64,
    /// Request and response bytes held in the whole agent.
    pub bytes: u64,
    /// Open connections per listener (agent port, each export port, each transparent
    /// listener); beyond it the listener stops accepting and new connections wait in the
    /// kernel's backlog.
    pub listener_connections: u32,
    /// A client connection with nothing in flight that sends nothing for this long is closed
    /// (0: never).
    pub client_idle_timeout_ms: u64,
    /// A passed-through connection with no data either way for this long is closed (0: never).
    pub passthrough_idle_timeout_ms: u64,
    /// Largest argument (encoded bytes) the HTTP provider decodes.
    pub decoded_value_bytes: u32,
    /// Open connections on each admin door (the TCP admin port, the control socket); beyond
    /// it the door stops accepting and new connections wait in the kernel's backlog.
    pub admin_connections: u32,
    /// An admin connection that sends no complete request head for this long is closed (idle
    /// keep-alive connections and slow senders alike).
    pub admin_idle_timeout_ms: u64,
    /// Most values built from one body (each nested value, map entry and array item counts)
    /// by the HTTP provider and hport's `/proxy_to_rpc` answers.
    pub decoded_values: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            connection_requests: 1024,
            connection_bytes: 8 << 20,
            requests: 65536,
            bytes: 256 << 20,
            listener_connections: 16384,
            client_idle_timeout_ms: 30 * 60 * 1000,
            passthrough_idle_timeout_ms: 60 * 60 * 1000,
            decoded_value_bytes: 10 << 20,
            decoded_values: 65536,
            admin_connections: 256,
            admin_idle_timeout_ms: 30_000,
        }
    }
}

impl LimitsSection {
    /// What decoding one request body may build.
    pub fn values(&self) -> ValueLimits {
        ValueLimits {
            max_values: self.decoded_values as usize,
            max_value_bytes: self.decoded_value_bytes as usize,
        }
    }

    /// Every unusable key, named as it is written.
    pub fn check(&self) -> Vec<SettingError> {
        let mut e = Vec::new();
        let positive = [
            ("connection_requests", u64::from(self.connection_requests)),
            ("connection_bytes", u64::from(self.connection_bytes)),
            ("requests", self.requests),
            ("bytes", self.bytes),
            ("listener_connections", u64::from(self.listener_connections)),
            ("decoded_value_bytes", u64::from(self.decoded_value_bytes)),
            ("decoded_values", u64::from(self.decoded_values)),
            ("admin_connections", u64::from(self.admin_connections)),
            ("admin_idle_timeout_ms", self.admin_idle_timeout_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                e.push(SettingError::new(
                    key,
                    "0 is not allowed (no request could ever be served)",
                ));
            }
        }
        if u64::from(self.connection_bytes) > self.bytes {
            e.push(SettingError::new(
                "connection_bytes",
                format!(
                    "{} is more than bytes ({}), the whole agent's budget",
                    self.connection_bytes, self.bytes
                ),
            ));
        }
        if u64::from(self.connection_requests) > self.requests {
            e.push(SettingError::new(
                "connection_requests",
                format!(
                    "{} is more than requests ({})",
                    self.connection_requests, self.requests
                ),
            ));
        }
        // A budget below one largest frame (meta + body, 10 MiB each) would refuse it forever.
        if self.connection_bytes < 64 << 10 {
            e.push(SettingError::new("connection_bytes", "below 65536 bytes"));
        }
        e
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_problems_name_the_key() {
        let a = AdminSection {
            control_socket: "relative.sock".into(),
            control_group: Some("no-such-group-sockmesh".into()),
            tcp_mutations: vec![Mutation::Online, Mutation::Shutdown],
            token: Some("two words".into()),
        };
        let keys: Vec<_> = a.problems().into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            ["control_socket", "control_group", "tcp_mutations", "token"]
        );
        let a = AdminSection {
            control_socket: "/control.sock".into(),
            control_group: Some("0".into()),
            ..AdminSection::default()
        };
        let e = a.problems();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].reason.contains("directory of its own"), "{e:?}");
        assert!(AdminSection::default().problems().is_empty());
    }
}
