//! Configuration: motan-go's YAML layout (`motan-agent`, `motan-refer`, ...) plus a `sockmesh`
//! section for what motan-go does not have (interception). An embedded default runs with no
//! file. Validation reports every problem at once, each naming file, section and key.
pub mod admin;
pub mod filters;
pub mod http;
pub mod http_client;
pub mod http_locations;
pub mod intercept;
pub mod launch;
pub mod motan;
pub mod observe;
pub mod refer;
pub mod registry;
pub mod sections;
pub mod service;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use self::launch::{LaunchOptions, ProcessSettings};

use serde_yaml_ng::Value;

use sockmesh_common::{
    MAX_AGENT_PORTS, MAX_EXCLUDE_CIDRS, MAX_EXCLUDE_CIDRS_V6, MAX_EXCLUDE_PORTS, MAX_INCLUDE_CIDRS,
    MAX_INCLUDE_CIDRS_V6, MAX_LOCAL_PORTS,
};

use self::intercept::{
    Cidr, HEARTBEAT_INTERVAL, InterceptSettings, LIVENESS_TIMEOUT_MS, MAX_NETNS_LISTENERS, check_capacity,
    check_chain_name,
};
use self::motan::{MotanConfig, MotanEnv};
use self::registry::RegistrySpec;
use self::sections::bpf_log_level;
pub use self::sections::{
    AdminSection, AgentSection, ConfigErrors, InterceptSection, RequestedMode, SettingError, SockmeshSection,
};
use crate::url::{Url, keys, parse_go_bool};

/// The configuration `sockmesh run` uses when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from ("<embedded default>" or the file path), for messages.
    pub source: String,
    pub agent: AgentSection,
    pub sockmesh: SockmeshSection,
    /// The motan sections the agent core reads (motan-registry, motan-refer, ...), kept as parsed.
    pub motan: BTreeMap<String, Value>,
    /// The same sections typed and checked, once: what `sockmesh run` builds the mesh from and
    /// what `sockmesh config validate` reports on.
    pub mesh: MotanConfig,
    /// The `metrics` section and the access-log keys of `motan-agent`, typed.
    pub observe: observe::ObserveSpec,
    /// The whole document as read, every section (motan-go's `GetOriginMap`, for `/getConfig`).
    pub origin: Value,
    /// The command-line flags it was loaded with (a reload applies them again).
    pub launch: LaunchOptions,
    /// The agent process's own settings (pidfile, status recovery, init wait).
    pub process: ProcessSettings,
}

impl Config {
    pub fn embedded() -> Result<Config, ConfigErrors> {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::launch(&LaunchOptions {
            config: Some(path.to_path_buf()),
            ..Default::default()
        })
    }

    /// The configuration `sockmesh run` starts with these flags: `-c` a file, or a directory
    /// (pool mode, also with `-pool` alone: the working directory), else the embedded default;
    /// the flags written over the `motan-agent` keys.
    pub fn launch(o: &LaunchOptions) -> Result<Config, ConfigErrors> {
        let mut o = o.clone();
        if o.mport.is_none() {
            // motan-go: the `mport` environment variable comes between the flag and the key.
            o.mport = std::env::var(launch::MPORT_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        let path = match (&o.config, &o.pool) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(_)) => Some(std::path::PathBuf::from("./")),
            (None, None) => None,
        };
        let (mut map, source) = match &path {
            None => (
                Self::root(EMBEDDED_DEFAULT, "<embedded default>")?,
                "<embedded default>".to_string(),
            ),
            Some(p) if p.is_dir() => {
                let pool = launch::load_pool(p, o.application.as_deref(), o.pool.as_deref())?;
                let files: Vec<String> = pool.files.iter().map(|f| f.display().to_string()).collect();
                (
                    pool.root,
                    format!(
                        "{} (pool {:?}: {})",
                        p.display(),
                        o.pool.as_deref().unwrap_or(""),
                        files.join(", ")
                    ),
                )
            }
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", p.display())]))?;
                let source = p.display().to_string();
                (Self::root(&text, &source)?, source)
            }
        };
        let pool_errors = launch::resolve_pool_params(&mut map, o.pool.as_deref().unwrap_or(""));
        if !pool_errors.is_empty() {
            return Err(ConfigErrors(
                pool_errors
                    .into_iter()
                    .map(|e| format!("{source}: {e}"))
                    .collect(),
            ));
        }
        launch::apply_flags(&mut map, &o);
        Config::from_mapping(map, &source, o)
    }

    fn root(text: &str, source: &str) -> Result<serde_yaml_ng::Mapping, ConfigErrors> {
        match serde_yaml_ng::from_str(text) {
            Ok(Value::Null) => Ok(Default::default()),
            Ok(Value::Mapping(m)) => Ok(m),
            Ok(_) => Err(ConfigErrors(vec![format!(
                "{source}: the top level must be a mapping of sections"
            )])),
            Err(e) => Err(ConfigErrors(vec![format!("{source}: not valid YAML: {e}")])),
        }
    }

    /// Parse and validate; every section is checked so that all problems are reported together.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        Config::from_mapping(Self::root(text, source)?, source, LaunchOptions::default())
    }

    fn from_mapping(
        map: serde_yaml_ng::Mapping,
        source: &str,
        launch: LaunchOptions,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let origin = Value::Mapping(map.clone());
        let mut agent = AgentSection::default();
        let mut sockmesh = SockmeshSection::default();
        let mut motan = BTreeMap::new();
        for (k, v) in map {
            let Some(key) = k.as_str().map(str::to_string) else {
                errors.push(format!("{source}: section names must be strings, found {k:?}"));
                continue;
            };
            match key.as_str() {
                "motan-agent" => match typed_section::<AgentSection>(v) {
                    Ok(a) => agent = a,
                    Err(e) => errors.push(format!("{source}: section motan-agent{e}")),
                },
                "sockmesh" => match typed_section::<SockmeshSection>(v) {
                    Ok(s) => sockmesh = s,
                    Err(e) => errors.push(format!("{source}: section sockmesh{e}")),
                },
                _ => {
                    motan.insert(key, v);
                }
            }
        }
        let mut env = MotanEnv::from_process();
        env.idc = launch.idc.clone().unwrap_or_default();
        let (mut mesh, mesh_errors) = MotanConfig::build(source, &agent, &motan, &env);
        let aids = observe::SockmeshAids {
            rotate_interval_ms: sockmesh.log.rotate_interval_ms,
            status_period_ms: sockmesh.metrics.status_period_ms,
        };
        let (observe, found) = observe::ObserveSpec::build(source, motan.get("metrics"), &agent.other, aids);
        mesh.warnings.extend(found.warnings);
        if !sockmesh.intercept.enabled {
            for (id, spec) in &mesh.exports {
                if spec.sockmap {
                    mesh.warnings.push(format!(
                        "{source}: section motan-service, entry {id}, key sockmesh.sockmap: no effect while sockmesh.intercept.enabled is false (the sk_msg programs are not loaded)"
                    ));
                }
            }
        }
        let (process, process_errors) = ProcessSettings::from_agent(&agent.other, &launch);
        for e in process_errors {
            errors.push(format!(
                "{source}: section motan-agent, key {}: {}",
                e.key, e.reason
            ));
        }
        let cfg = Config {
            source: source.to_string(),
            agent,
            sockmesh,
            motan,
            mesh,
            observe,
            origin,
            launch,
            process,
        };
        errors.extend(cfg.validate());
        errors.extend(mesh_errors);
        errors.extend(found.errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// This configuration with extra `motan-service` and `motan-refer` entries (the dynamic
    /// registrations of the admin API). The motan sections are checked again as a whole, so
    /// such an entry is held to the rules of a configured one; errors name its entry id. An id
    /// the configuration already uses is an error.
    pub fn with_entries(
        &self,
        services: &[(String, Url)],
        refers: &[(String, Url)],
    ) -> Result<Config, ConfigErrors> {
        if services.is_empty() && refers.is_empty() {
            return Ok(self.clone());
        }
        let mut sections = self.motan.clone();
        for (section, entries) in [(motan::SERVICE_SECTION, services), (motan::REFER_SECTION, refers)] {
            let v = sections
                .entry(section.to_string())
                .or_insert(Value::Mapping(Default::default()));
            if v.is_null() {
                *v = Value::Mapping(Default::default());
            }
            let Value::Mapping(m) = v else {
                return Err(ConfigErrors(vec![format!(
                    "{}: section {section} must be a mapping of entry id → settings",
                    self.source
                )]));
            };
            for (id, u) in entries {
                let key = Value::String(id.clone());
                if m.contains_key(&key) {
                    return Err(ConfigErrors(vec![format!(
                        "{}: section {section} already has an entry {id:?}",
                        self.source
                    )]));
                }
                m.insert(key, Value::Mapping(entry_mapping(u)));
            }
        }
        let mut env = MotanEnv::from_process();
        env.idc = self.launch.idc.clone().unwrap_or_default();
        let (mesh, errors) = MotanConfig::build(&self.source, &self.agent, &sections, &env);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            motan: sections,
            mesh,
            ..self.clone()
        })
    }

    fn validate(&self) -> Vec<String> {
        let src = &self.source;
        let mut e = Vec::new();
        let a = &self.agent;
        for (key, port) in [("port", a.port), ("mport", a.mport), ("eport", a.eport)] {
            if port == 0 {
                e.push(format!(
                    "{src}: section motan-agent, key {key}: port 0 is not allowed"
                ));
            }
        }
        for err in self.sockmesh.limits.check() {
            e.push(format!("{src}: section sockmesh.limits, {err}"));
        }
        let i = &self.sockmesh.intercept;
        let mut ports = vec![
            ("motan-agent.port", a.port),
            ("motan-agent.mport", a.mport),
            ("motan-agent.eport", a.eport),
            ("sockmesh.intercept.transparent_port", i.transparent_port),
        ];
        if self.mesh.http_proxy.enabled {
            ports.push(("motan-agent.hport", self.mesh.http_proxy.port));
        }
        for (n, (k1, p1)) in ports.iter().enumerate() {
            for (k2, p2) in &ports[n + 1..] {
                if p1 == p2 {
                    e.push(format!(
                        "{src}: {k1} and {k2} are both {p1}; each listener needs its own port"
                    ));
                }
            }
        }
        if i.transparent_port == 0 {
            e.push(format!(
                "{src}: section sockmesh.intercept, key transparent_port: port 0 is not allowed"
            ));
        }
        if i.mark == 0 {
            e.push(format!(
                "{src}: section sockmesh.intercept, key mark: 0 is not allowed: the mark is how the kernel programs tell the agent's sockets (its listeners, its upstream connections) from every other process's"
            ));
        }
        if let Err(m) = i.default_mode.parse::<RequestedMode>() {
            e.push(format!(
                "{src}: section sockmesh.intercept, key default_mode: {m}"
            ));
        }
        for (key, list) in [
            ("include_cidrs", &i.include_cidrs),
            ("exclude_cidrs", &i.exclude_cidrs),
        ] {
            for c in list {
                if let Err(m) = c.parse::<Cidr>() {
                    e.push(format!("{src}: section sockmesh.intercept, key {key}: {m}"));
                }
            }
        }
        if i.include_cidrs.is_empty() {
            e.push(format!("{src}: section sockmesh.intercept, key include_cidrs: empty list would intercept nothing (use [\"0.0.0.0/0\", \"::/0\"] for everything)"));
        }
        if bpf_log_level(&i.bpf_log_level).is_none() {
            e.push(format!("{src}: section sockmesh.intercept, key bpf_log_level: {:?} is not one of off, error, warn, info, debug, trace", i.bpf_log_level));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.sockmesh.log_level).is_err() {
            e.push(format!(
                "{src}: section sockmesh, key log_level: {:?} is not a valid level or filter",
                self.sockmesh.log_level
            ));
        }
        if let Err(m) = check_chain_name(&i.iptables_chain) {
            e.push(format!(
                "{src}: section sockmesh.intercept, key iptables_chain: {m}"
            ));
        }
        for m in self.sockmesh.admin.problems() {
            e.push(format!("{src}: section sockmesh.admin, {m}"));
        }
        if !i.pin_dir.is_absolute() {
            e.push(format!(
                "{src}: section sockmesh.intercept, key pin_dir: must be an absolute path on a bpffs"
            ));
        }
        if let Err(m) = check_capacity(i.exclude_ports.len(), MAX_EXCLUDE_PORTS) {
            e.push(format!(
                "{src}: section sockmesh.intercept, key exclude_ports: {m}"
            ));
        }
        // Each family of prefixes goes into its own map (SM_*_V4, SM_*_V6).
        for (key, list, v4_capacity, v6_capacity) in [
            (
                "include_cidrs",
                &i.include_cidrs,
                MAX_INCLUDE_CIDRS,
                MAX_INCLUDE_CIDRS_V6,
            ),
            (
                "exclude_cidrs",
                &i.exclude_cidrs,
                MAX_EXCLUDE_CIDRS,
                MAX_EXCLUDE_CIDRS_V6,
            ),
        ] {
            let cidrs: Vec<Cidr> = list.iter().filter_map(|c| c.parse().ok()).collect();
            let v4 = cidrs.iter().filter(|c| c.is_v4()).count();
            for (family, len, capacity) in
                [("IPv4", v4, v4_capacity), ("IPv6", cidrs.len() - v4, v6_capacity)]
            {
                if let Err(m) = check_capacity(len, capacity) {
                    e.push(format!(
                        "{src}: section sockmesh.intercept, key {key}: {family} prefixes: {m}"
                    ));
                }
            }
        }
        if let Err(m) = check_capacity(
            self.intercept_settings().agent_ports.len(),
            MAX_AGENT_PORTS as u32,
        ) {
            e.push(format!(
                "{src}: section motan-agent, keys port, eport, mport (the agent ports the programs never intercept): {m}"
            ));
        }
        if let Err(m) = check_capacity(self.local_sockmap_ports().len(), MAX_LOCAL_PORTS) {
            e.push(format!(
                "{src}: section motan-service, key sockmesh.sockmap (export and provider ports of the exports that set it): {m}"
            ));
        }
        if !(1..=MAX_NETNS_LISTENERS).contains(&i.max_netns_listeners) {
            e.push(format!(
                "{src}: section sockmesh.intercept, key max_netns_listeners: {} is not in 1..={MAX_NETNS_LISTENERS} (each is a thread and a socket)",
                i.max_netns_listeners
            ));
        }
        if i.liveness_timeout_ms != 0 && !LIVENESS_TIMEOUT_MS.contains(&i.liveness_timeout_ms) {
            e.push(format!(
                "{src}: section sockmesh.intercept, key liveness_timeout_ms: {} is neither 0 (off) nor in {}..={} (the agent refreshes its heartbeat every {} ms)",
                i.liveness_timeout_ms,
                LIVENESS_TIMEOUT_MS.start(),
                LIVENESS_TIMEOUT_MS.end(),
                HEARTBEAT_INTERVAL.as_millis()
            ));
        }
        e
    }

    pub fn agent_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.sockmesh.agent_bind, self.agent.port)
    }

    pub fn export_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.sockmesh.export_bind, port)
    }

    /// The hport forward proxy's address (on the agent port's address: local apps only).
    pub fn http_proxy_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.sockmesh.agent_bind, self.mesh.http_proxy.port)
    }

    pub fn admin_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.sockmesh.admin_bind, self.agent.mport)
    }

    pub fn transparent_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.sockmesh.intercept.transparent_port)
    }

    /// The kernel-side view of this configuration (call only on a validated config).
    pub fn intercept_settings(&self) -> InterceptSettings {
        let i = &self.sockmesh.intercept;
        InterceptSettings {
            pin_dir: i.pin_dir.clone(),
            listen: self.transparent_addr(),
            mark: i.mark,
            agent_ports: {
                let mut ports = vec![self.agent.port, self.agent.eport, self.agent.mport];
                if self.mesh.http_proxy.enabled {
                    ports.push(self.mesh.http_proxy.port);
                }
                ports
            },
            exclude_ports: i.exclude_ports.clone(),
            include_cidrs: i.include_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            exclude_cidrs: i.exclude_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            bpf_log_level: bpf_log_level(&i.bpf_log_level).unwrap_or(3),
            liveness_timeout: std::time::Duration::from_millis(i.liveness_timeout_ms),
            local_ports: self.local_sockmap_ports(),
        }
    }

    /// The ports of every `sockmesh.sockmap` local leg, sorted, no duplicates: each opted-in
    /// export's export and provider ports, and each opted-in refer's endpoints on loopback in
    /// its direct registries (a ZooKeeper registry's endpoints are not known here).
    pub fn local_sockmap_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .mesh
            .exports
            .values()
            .flat_map(|s| s.sockmap_ports())
            .collect();
        let loopback = |h: &str| {
            h == "localhost"
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        for refer in self.mesh.refers.values() {
            if !refer
                .param(keys::SOCKMAP)
                .and_then(parse_go_bool)
                .unwrap_or(false)
            {
                continue;
            }
            for id in refer.get_list(keys::REGISTRY) {
                if let Some(Ok(RegistrySpec::Direct(d))) =
                    self.mesh.registries.get(id).map(RegistrySpec::from_url)
                {
                    ports.extend(
                        d.servers
                            .iter()
                            .filter(|s| s.port != 0 && loopback(&s.host))
                            .map(|s| s.port),
                    );
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// A configuration entry (as YAML) for `u`: protocol, path, group and every parameter; host and
/// port are not entry settings of a service or refer.
fn entry_mapping(u: &Url) -> serde_yaml_ng::Mapping {
    let mut m = serde_yaml_ng::Mapping::new();
    let mut put = |k: &str, v: &str| {
        m.insert(Value::String(k.to_string()), Value::String(v.to_string()));
    };
    for (k, v) in &u.params {
        put(k, v);
    }
    if !u.protocol.is_empty() {
        put("protocol", &u.protocol);
    }
    put("path", &u.path);
    put("group", &u.group);
    m
}

/// A typed section, or what is wrong with it as the tail of "section NAME...": ", key
/// intercept.pin_dir: invalid type ..." when the error is inside one key (serde alone would not
/// say which), ": ..." when it is about the section as a whole.
fn typed_section<T: serde::de::DeserializeOwned>(v: serde_yaml_ng::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!(": {}", e.inner())
        } else {
            format!(", key {path}: {}", e.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.agent.port, 9981);
        assert_eq!(c.admin_addr().to_string(), "127.0.0.1:8002");
        assert_eq!(c.transparent_addr().port(), 15001);
    }

    #[test]
    fn reports_every_problem_with_section_and_key() {
        let text = "motan-agent:\n  port: 8002\n  mport: 8002\nsockmesh:\n  intercept:\n    default_mode: turbo\n    include_cidrs: [\"10.0.0.0/99\"]\n";
        let err = Config::parse(text, "bad.yaml").unwrap_err();
        let all = err.to_string();
        assert!(err.0.len() >= 3, "{all}");
        assert!(
            all.contains("bad.yaml: motan-agent.port and motan-agent.mport are both 8002"),
            "{all}"
        );
        assert!(all.contains("key default_mode"), "{all}");
        assert!(all.contains("key include_cidrs"), "{all}");
    }

    #[test]
    fn a_wrong_type_names_its_key() {
        let err = Config::parse("sockmesh:\n  shards: maybe\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "s.yaml: section sockmesh, key shards: invalid type: string \"maybe\", expected a boolean"
            ),
            "{err}"
        );
        let err = Config::parse(
            "sockmesh:\n  intercept:\n    liveness_timeout_ms: soon\n",
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("section sockmesh, key intercept.liveness_timeout_ms: invalid type"),
            "{err}"
        );
        let err = Config::parse("motan-agent:\n  port: high\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("section motan-agent, key port: invalid type"),
            "{err}"
        );
        let c = Config::parse("sockmesh:\n  shards: false\n", "s.yaml").unwrap();
        assert!(!c.sockmesh.shards);
        assert!(Config::embedded().unwrap().sockmesh.shards);
    }

    #[test]
    fn limits_are_checked_by_key() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.sockmesh.limits, sections::LimitsSection::default());
        let err = Config::parse(
            "sockmesh:\n  limits:\n    requests: 0\n    connection_bytes: 1000\n",
            "l.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("section sockmesh.limits, key requests: 0 is not allowed"),
            "{err}"
        );
        assert!(
            err.contains("section sockmesh.limits, key connection_bytes: below 65536"),
            "{err}"
        );
        let err = Config::parse("sockmesh:\n  limits:\n    max_things: 3\n", "l.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_things"), "{err}");
    }

    #[test]
    fn lists_longer_than_their_maps_are_refused_with_key_and_capacity() {
        let ports: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
        let cidrs: Vec<String> = (0..=256)
            .map(|n| format!("\"10.{}.{}.0/24\"", n / 256, n % 256))
            .collect();
        let cidrs6: Vec<String> = (0..=256).map(|n| format!("\"fd00:{n:x}::/32\"")).collect();
        // 256 IPv4 and 256 IPv6 prefixes fit: each family has its own map.
        let include: Vec<String> = cidrs[..256].iter().chain(&cidrs6[..256]).cloned().collect();
        let text = format!(
            "sockmesh:\n  intercept:\n    exclude_ports: [{}]\n    exclude_cidrs: [{}]\n    include_cidrs: [{}]\n    max_netns_listeners: 0\n",
            ports.join(", "),
            cidrs
                .iter()
                .chain(&cidrs6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            include.join(", ")
        );
        let all = Config::parse(&text, "big.yaml").unwrap_err().to_string();
        assert!(
            all.contains("key exclude_ports: 300 entries, the kernel map holds at most 256"),
            "{all}"
        );
        assert!(
            all.contains("key exclude_cidrs: IPv4 prefixes: 257 entries, the kernel map holds at most 256"),
            "{all}"
        );
        assert!(
            all.contains("key exclude_cidrs: IPv6 prefixes: 257 entries, the kernel map holds at most 256"),
            "{all}"
        );
        assert!(all.contains("key max_netns_listeners"), "{all}");
        assert!(!all.contains("include_cidrs"), "{all}");
    }

    #[test]
    fn liveness_timeout_is_off_or_in_range() {
        let parse = |v: &str| {
            Config::parse(
                &format!("sockmesh:\n  intercept:\n    liveness_timeout_ms: {v}\n"),
                "l.yaml",
            )
        };
        assert_eq!(
            parse("0").unwrap().intercept_settings().liveness_timeout,
            std::time::Duration::ZERO
        );
        assert_eq!(
            parse("500").unwrap().intercept_settings().liveness_timeout,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            Config::embedded().unwrap().intercept_settings().liveness_timeout,
            std::time::Duration::from_secs(2)
        );
        for bad in ["50", "600001"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("l.yaml: section sockmesh.intercept, key liveness_timeout_ms: ")
                    && err.contains("neither 0 (off) nor in 300..=600000"),
                "{err}"
            );
        }
        assert!(parse("-1").is_err());
    }

    #[test]
    fn mark_zero_and_ipv6_prefixes() {
        let err = Config::parse("sockmesh:\n  intercept:\n    mark: 0\n", "m.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key mark: 0 is not allowed"), "{err}");
        let c = Config::parse(
            "sockmesh:\n  intercept:\n    include_cidrs: [\"10.0.0.0/8\", \"fd00::/8\"]\n    exclude_cidrs: [\"fd00:1::/32\"]\n",
            "v6.yaml",
        )
        .unwrap();
        let s = c.intercept_settings();
        assert_eq!(s.include_cidrs.iter().filter(|c| !c.is_v4()).count(), 1);
        assert_eq!(s.listen6().to_string(), format!("[::1]:{}", s.listen.port()));
        assert!(
            Config::embedded()
                .unwrap()
                .sockmesh
                .intercept
                .include_cidrs
                .contains(&"::/0".to_string())
        );
    }

    #[test]
    fn unknown_sockmesh_keys_and_garbage_are_named() {
        let err = Config::parse("sockmesh:\n  intercpt: {}\n", "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("section sockmesh") && err.contains("intercpt"),
            "{err}"
        );
        let err = Config::parse("- just\n- a list\n", "y.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("top level must be a mapping"), "{err}");
        let err = Config::parse("motan-agent: {port: [1]", "z.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn admin_keys_are_typed_and_checked() {
        let c = Config::parse(
            "sockmesh:\n  admin:\n    tcp_mutations: [\"/200\", \"/503\"]\n    token: abc\n",
            "a.yaml",
        )
        .unwrap();
        use self::admin::Mutation;
        assert_eq!(
            c.sockmesh.admin.tcp_mutations,
            [Mutation::Online, Mutation::Offline]
        );
        let err = Config::parse(
            "sockmesh:\n  admin:\n    tcp_mutations: [\"/shutdown\"]\n    control_socket: rel.sock\n",
            "b.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("b.yaml: section sockmesh.admin, key tcp_mutations: /shutdown is served only on the control socket"),
            "{err}"
        );
        assert!(
            err.contains("key control_socket: must be an absolute path"),
            "{err}"
        );
        let err = Config::parse("sockmesh:\n  admin:\n    tcp_mutations: [\"/nope\"]\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tcp_mutations") && err.contains("\"/nope\" is not an admin mutation"),
            "{err}"
        );
    }

    #[test]
    fn sockmap_exports_give_the_local_leg_ports() {
        let svc = |id: &str, eport: u16, proxy: u16, extra: &str| {
            format!(
                "  {id}:\n    path: com.weibo.{id}\n    group: g\n    export: \"motan2:{eport}\"\n    proxy: \"motan2:{proxy}\"\n{extra}"
            )
        };
        let text = |intercept: &str, extra: &str| {
            format!(
                "sockmesh:\n  intercept:\n    enabled: {intercept}\nmotan-service:\n{}{}",
                svc("a", 8100, 9100, extra),
                svc("b", 8100, 9200, "")
            )
        };
        let c = Config::parse(&text("true", "    sockmesh.sockmap: true\n"), "s.yaml").unwrap();
        assert_eq!(c.intercept_settings().local_ports, vec![8100, 9100]);
        assert!(c.mesh.warnings.iter().all(|w| !w.contains("sockmesh.sockmap")));
        let off = Config::parse(&text("false", "    sockmesh.sockmap: true\n"), "s.yaml").unwrap();
        assert!(
            off.mesh
                .warnings
                .iter()
                .any(|w| w.contains("entry a, key sockmesh.sockmap")),
            "{:?}",
            off.mesh.warnings
        );
        let none = Config::parse(&text("true", ""), "s.yaml").unwrap();
        assert!(none.intercept_settings().local_ports.is_empty());
        let bad = Config::parse(&text("true", "    sockmesh.sockmap: maybe\n"), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("sockmesh.sockmap") && bad.contains("maybe"), "{bad}");
    }

    #[test]
    fn sockmap_refers_give_their_loopback_direct_endpoints() {
        let text = |v: &str| {
            format!(
                "motan-registry:\n  local:\n    protocol: direct\n    address: \"127.0.0.1:9300,10.0.0.5:9400,[::1]:9500\"\n\
                 motan-refer:\n  r:\n    path: com.weibo.R\n    group: g\n    registry: local\n    sockmesh.sockmap: {v}\n"
            )
        };
        let c = Config::parse(&text("true"), "r.yaml").unwrap();
        assert_eq!(c.intercept_settings().local_ports, vec![9300, 9500]);
        let c = Config::parse(&text("false"), "r.yaml").unwrap();
        assert!(c.intercept_settings().local_ports.is_empty());
        let bad = Config::parse(&text("often"), "r.yaml").unwrap_err().to_string();
        assert!(
            bad.contains("entry r") && bad.contains("sockmesh.sockmap"),
            "{bad}"
        );
    }

    #[test]
    fn keeps_motan_sections_for_the_agent_core() {
        let c = Config::parse(
            "motan-refer:\n  hello:\n    path: com.weibo.HelloService\n",
            "r.yaml",
        )
        .unwrap();
        assert!(c.motan.contains_key("motan-refer"));
    }
}
