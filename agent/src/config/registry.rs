//! A `motan-registry` entry typed once: which registry it is and the settings it runs with.
//! `config validate` reports on [`RegistrySpec::from_url`] and the registries are built from
//! what it returns, so a registry the check accepts is one the agent can start.
use std::path::PathBuf;
use std::time::Duration;

use super::sections::SettingError;
use crate::url::{UNIX_SOCK_PREFIX, Url, keys};

/// Registry protocols the agent has.
pub const PROTOCOLS: [&str; 2] = ["direct", "zookeeper"];
/// Registry URL parameter: directory of the registry snapshot (zookeeper).
pub const SNAPSHOT_DIR: &str = "snapshot_dir";
/// Registry URL parameter: ZooKeeper session timeout in seconds (motan-go's unit).
pub const SESSION_TIMEOUT: &str = "registrySessionTimeout";

pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

const NEEDS_SERVERS: &str = "needs host and port, or address";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrySpec {
    Direct(DirectSpec),
    Zookeeper(ZookeeperSpec),
}

/// The `direct` registry: a static server list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectSpec {
    pub servers: Vec<ServerAddr>,
}

/// One server of an address list. A unix socket has the whole `unix://path` entry as host and
/// port 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

/// The `zookeeper` registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZookeeperSpec {
    /// The connect string `host:port,host:port` (it also names the snapshot file).
    pub servers: String,
    /// `registrySessionTimeout`, in seconds as in motan-go, clamped to
    /// `MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT`; absent: `DEFAULT_SESSION_TIMEOUT`.
    pub session_timeout: Duration,
    /// `snapshot_dir`, if the entry has one.
    pub snapshot_dir: Option<PathBuf>,
}

impl RegistrySpec {
    /// The spec of a `motan-registry` entry, by its protocol; the error names the key.
    pub fn from_url(url: &Url) -> Result<RegistrySpec, SettingError> {
        match url.protocol.as_str() {
            "direct" => DirectSpec::from_url(url).map(RegistrySpec::Direct),
            "zookeeper" => ZookeeperSpec::from_url(url).map(RegistrySpec::Zookeeper),
            "" => Err(SettingError::new("protocol", "missing (direct or zookeeper)")),
            other => Err(SettingError::new(
                "protocol",
                format!(
                    "unsupported registry {other:?} (expected {})",
                    PROTOCOLS.join(", ")
                ),
            )),
        }
    }
}

impl DirectSpec {
    /// `host`+`port` when both are set, else the `address` list. Every entry must parse
    /// (upstream skips bad ones silently; a typo in a static list is better reported).
    pub fn from_url(url: &Url) -> Result<DirectSpec, SettingError> {
        if let Some(server) = host_and_port(url) {
            return Ok(DirectSpec {
                servers: vec![server],
            });
        }
        let servers = address_list(url, true)?;
        if servers.is_empty() {
            let key = if url.host.is_empty() {
                keys::ADDRESS
            } else {
                "host"
            };
            return Err(SettingError::new(
                key,
                format!("{NEEDS_SERVERS}: \"host:port,host:port\""),
            ));
        }
        Ok(DirectSpec { servers })
    }
}

impl ZookeeperSpec {
    pub fn from_url(url: &Url) -> Result<ZookeeperSpec, SettingError> {
        Ok(ZookeeperSpec {
            servers: connect_string(url)?,
            session_timeout: session_timeout(url)?,
            snapshot_dir: url.param(SNAPSHOT_DIR).map(PathBuf::from),
        })
    }
}

/// The servers of a ZooKeeper registry URL as a connect string: `host` and `port` when both are
/// set, else the `address` list (upstream's rule), whose entries must all be `host:port`.
fn connect_string(url: &Url) -> Result<String, SettingError> {
    if let Some(s) = host_and_port(url) {
        return Ok(format!("{}:{}", s.host, s.port));
    }
    if address_list(url, false)?.is_empty() {
        let key = if url.param(keys::ADDRESS).is_some() {
            keys::ADDRESS
        } else {
            "host"
        };
        return Err(SettingError::new(
            key,
            format!("{NEEDS_SERVERS} (\"host:port,host:port\")"),
        ));
    }
    // The entries as written (trimmed): the connect string names the snapshot file.
    Ok(url.get_list(keys::ADDRESS).join(","))
}

/// `registrySessionTimeout`: seconds, clamped; absent (or empty) means the default.
fn session_timeout(url: &Url) -> Result<Duration, SettingError> {
    let Some(v) = url.param(SESSION_TIMEOUT) else {
        return Ok(DEFAULT_SESSION_TIMEOUT);
    };
    let secs = v
        .parse::<u64>()
        .map_err(|_| SettingError::new(SESSION_TIMEOUT, format!("{v:?} is not an integer ≥ 0 (seconds)")))?;
    Ok(Duration::from_secs(secs).clamp(MIN_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT))
}

fn host_and_port(url: &Url) -> Option<ServerAddr> {
    (!url.host.is_empty() && url.port > 0).then(|| ServerAddr {
        host: url.host.clone(),
        port: url.port,
    })
}

/// Every entry of `address`, parsed (empty when there is none); `unix`: whether `unix://path`
/// entries are allowed.
fn address_list(url: &Url, unix: bool) -> Result<Vec<ServerAddr>, SettingError> {
    url.get_list(keys::ADDRESS)
        .into_iter()
        .map(|entry| match parse_address(entry) {
            Ok((_, 0)) if !unix => Err(format!("address entry {entry:?} is not host:port")),
            Ok((host, port)) => Ok(ServerAddr { host, port }),
            Err(m) => Err(m),
        })
        .map(|r| r.map_err(|m| SettingError::new(keys::ADDRESS, m)))
        .collect()
}

/// One `host:port` or `unix://path` entry of an address list, as (host, port); a unix socket
/// has the whole entry as host and port 0.
pub fn parse_address(entry: &str) -> Result<(String, u16), String> {
    if entry.starts_with(UNIX_SOCK_PREFIX) {
        return Ok((entry.to_string(), 0));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.trim().is_empty() => match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok((host.trim().to_string(), p)),
            _ => Err(format!(
                "address entry {entry:?}: port must be a number in 1..65535"
            )),
        },
        _ => Err(format!("address entry {entry:?} is not host:port or unix://path")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zk(params: &[(&str, &str)]) -> Url {
        params
            .iter()
            .fold(Url::new("zookeeper", "", 0, "", ""), |u, (k, v)| {
                u.with_param(k, v)
            })
    }

    #[test]
    fn by_protocol() {
        let direct = Url::new("direct", "127.0.0.9", 8100, "", "");
        assert_eq!(
            RegistrySpec::from_url(&direct).unwrap(),
            RegistrySpec::Direct(DirectSpec {
                servers: vec![ServerAddr {
                    host: "127.0.0.9".into(),
                    port: 8100
                }]
            })
        );
        let e = RegistrySpec::from_url(&Url::new("", "h", 1, "", "")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            ("protocol", "missing (direct or zookeeper)")
        );
        let e = RegistrySpec::from_url(&Url::new("consul", "h", 1, "", "")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "key protocol: unsupported registry \"consul\" (expected direct, zookeeper)"
        );
    }

    #[test]
    fn direct_address_list() {
        let u = Url::new("direct", "", 0, "", "").with_param("address", "127.0.0.5:9982, unix:///run/x.sock");
        let spec = DirectSpec::from_url(&u).unwrap();
        assert_eq!(
            spec.servers[0],
            ServerAddr {
                host: "127.0.0.5".into(),
                port: 9982
            }
        );
        assert_eq!(
            spec.servers[1],
            ServerAddr {
                host: "unix:///run/x.sock".into(),
                port: 0
            }
        );
        let err = |u: Url| DirectSpec::from_url(&u).unwrap_err();
        let e = err(Url::new("direct", "", 0, "", ""));
        assert_eq!(e.key, "address");
        assert!(e.reason.starts_with("needs host and port"), "{e}");
        assert_eq!(err(Url::new("direct", "h", 0, "", "")).key, "host");
        let e = err(Url::new("direct", "h", 0, "", "").with_param("address", "127.0.0.1:0"));
        assert_eq!(e.key, "address");
        assert!(e.reason.contains("port must be"), "{e}");
    }

    #[test]
    fn zookeeper_servers() {
        let spec = ZookeeperSpec::from_url(&Url::new("zookeeper", "127.0.0.1", 2181, "", "")).unwrap();
        assert_eq!(spec.servers, "127.0.0.1:2181");
        assert_eq!(spec.snapshot_dir, None);
        let spec = ZookeeperSpec::from_url(&zk(&[
            ("address", "127.0.0.1:2181, 127.0.0.2:2181"),
            (SNAPSHOT_DIR, "/tmp/s"),
        ]))
        .unwrap();
        assert_eq!(spec.servers, "127.0.0.1:2181,127.0.0.2:2181");
        assert_eq!(spec.snapshot_dir, Some(PathBuf::from("/tmp/s")));
        let err = |u: Url| ZookeeperSpec::from_url(&u).unwrap_err();
        assert_eq!(err(zk(&[])).key, "host");
        assert!(err(zk(&[])).reason.starts_with("needs host and port, or address"));
        let e = err(zk(&[("address", "127.0.0.1:x")]));
        assert_eq!(e.key, "address");
        assert!(e.reason.contains("port must be"), "{e}");
        let e = err(zk(&[("address", "unix:///a")]));
        assert_eq!(
            e.to_string(),
            "key address: address entry \"unix:///a\" is not host:port"
        );
    }

    #[test]
    fn session_timeout_is_seconds_clamped() {
        let t = |v: &str| {
            ZookeeperSpec::from_url(&zk(&[("address", "h:1"), (SESSION_TIMEOUT, v)]))
                .map(|s| s.session_timeout)
        };
        assert_eq!(t("10").unwrap(), Duration::from_secs(10));
        assert_eq!(t("1000").unwrap(), MAX_SESSION_TIMEOUT);
        assert_eq!(t("10000").unwrap(), MAX_SESSION_TIMEOUT);
        assert_eq!(t("1").unwrap(), MIN_SESSION_TIMEOUT);
        assert_eq!(t("").unwrap(), DEFAULT_SESSION_TIMEOUT);
        let e = t("x").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            (SESSION_TIMEOUT, "\"x\" is not an integer ≥ 0 (seconds)")
        );
        assert!(t("-1").is_err());
        assert_eq!(
            ZookeeperSpec::from_url(&Url::new("zookeeper", "h", 1, "", ""))
                .unwrap()
                .session_timeout,
            DEFAULT_SESSION_TIMEOUT
        );
    }
}
