//! Configuration: motan-go's YAML layout (`motan-agent`, `motan-refer`, ...) plus a `sockmesh`
//! section for what motan-go does not have (interception). An embedded default runs with no
//! file. Validation reports every problem at once, each naming file, section and key.
pub mod filters;
pub mod http;
pub mod http_client;
pub mod http_locations;
pub mod intercept;
pub mod motan;
pub mod refer;
pub mod registry;
pub mod sections;
pub mod service;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use serde_yaml_ng::Value;

use self::intercept::{Cidr, InterceptSettings, check_chain_name};
use self::motan::{MotanConfig, MotanEnv};
use self::sections::bpf_log_level;
pub use self::sections::{
    AgentSection, ConfigErrors, InterceptSection, RequestedMode, SettingError, SockmeshSection,
};

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
}

impl Config {
    pub fn embedded() -> Result<Config, ConfigErrors> {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse and validate; every section is checked so that all problems are reported together.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let root: Value = match serde_yaml_ng::from_str(text) {
            Ok(Value::Null) => Value::Mapping(Default::default()),
            Ok(v @ Value::Mapping(_)) => v,
            Ok(_) => {
                return Err(ConfigErrors(vec![format!(
                    "{source}: the top level must be a mapping of sections"
                )]));
            }
            Err(e) => return Err(ConfigErrors(vec![format!("{source}: not valid YAML: {e}")])),
        };
        let Value::Mapping(map) = root else { unreachable!() };
        let mut agent = AgentSection::default();
        let mut sockmesh = SockmeshSection::default();
        let mut motan = BTreeMap::new();
        for (k, v) in map {
            let Some(key) = k.as_str().map(str::to_string) else {
                errors.push(format!("{source}: section names must be strings, found {k:?}"));
                continue;
            };
            match key.as_str() {
                "motan-agent" => match serde_yaml_ng::from_value::<AgentSection>(v) {
                    Ok(a) => agent = a,
                    Err(e) => errors.push(format!("{source}: section motan-agent: {e}")),
                },
                "sockmesh" => match serde_yaml_ng::from_value::<SockmeshSection>(v) {
                    Ok(s) => sockmesh = s,
                    Err(e) => errors.push(format!("{source}: section sockmesh: {e}")),
                },
                _ => {
                    motan.insert(key, v);
                }
            }
        }
        let (mesh, mesh_errors) = MotanConfig::build(source, &agent, &motan, &MotanEnv::from_process());
        let cfg = Config {
            source: source.to_string(),
            agent,
            sockmesh,
            motan,
            mesh,
        };
        errors.extend(cfg.validate());
        errors.extend(mesh_errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
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
            e.push(format!("{src}: section sockmesh.intercept, key include_cidrs: empty list would intercept nothing (use [\"0.0.0.0/0\"] for everything)"));
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
        if !i.pin_dir.is_absolute() {
            e.push(format!(
                "{src}: section sockmesh.intercept, key pin_dir: must be an absolute path on a bpffs"
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
        }
    }
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
    fn keeps_motan_sections_for_the_agent_core() {
        let c = Config::parse(
            "motan-refer:\n  hello:\n    path: com.weibo.HelloService\n",
            "r.yaml",
        )
        .unwrap();
        assert!(c.motan.contains_key("motan-refer"));
    }
}
