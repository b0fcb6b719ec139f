//! Dynamic registration (motan-go dynamicConfig.go): services a local provider registers
//! through the admin API (`/registry/register`, as Weibo Mesh providers do at start-up) and
//! refers subscribed the same way (`/registry/subscribe`). [`DynamicSet`] is what was asked,
//! kept in the snapshot file `registry.snap` (motan-go's name and JSON layout), so that a
//! restarted agent registers and subscribes them again; the running mesh serves them as
//! `motan-service` / `motan-refer` entries of their own (the configuration checks them like
//! configured ones).
//!
//! What is stored is motan-go's: a registered service as the URL this agent registers (its IP
//! and export port, with `proxy` = the provider's local port, `export` and `registry`), a
//! subscription as the refer URL (no host or port, with `registry`).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::url::{Url, keys};

/// The snapshot's file name, in the agent's runtime directory (motan-go `registry.snap`).
pub const SNAPSHOT_FILE: &str = "registry.snap";

/// The parameter a mesh client names its registry with: `<protocol>://<host>:<port>`.
pub const PROXY_REGISTRY: &str = "proxyRegistry";
/// Or the registry's whole URL, query-escaped (motan-go `proxyRegistryUrlString`).
pub const PROXY_REGISTRY_URL: &str = "proxyRegistryUrlString";

/// Filters a provider asks of the agent carry this prefix; the others are its own (motan-go
/// `dynamicConfigFilterPrefix`).
const AGENT_FILTER_PREFIX: &str = "af_";

/// Parameters of the request that describe the request itself, not the service.
const REQUEST_PARAMS: [&str; 6] = [
    PROXY_REGISTRY,
    PROXY_REGISTRY_URL,
    "nodeType",
    keys::CONF_ID,
    "group",
    "token",
];

/// What was registered and subscribed dynamically; serialized as motan-go's snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicSet {
    #[serde(rename = "register_nodes", default, deserialize_with = "null_as_empty")]
    pub registers: Vec<Url>,
    #[serde(rename = "subscribe_nodes", default, deserialize_with = "null_as_empty")]
    pub subscribes: Vec<Url>,
}

/// Go marshals a nil slice as `null`.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Url>, D::Error> {
    Ok(Option::<Vec<Url>>::deserialize(d)?.unwrap_or_default())
}

/// A registered service or a subscription is one per (registry, group, path).
fn same(a: &Url, b: &Url) -> bool {
    (a.param(keys::REGISTRY), &a.group, &a.path) == (b.param(keys::REGISTRY), &b.group, &b.path)
}

/// The configuration entry id of a dynamic service or refer.
fn entry_id(u: &Url) -> String {
    format!(
        "dynamic:{}:{}:{}",
        u.param(keys::REGISTRY).unwrap_or(""),
        u.group,
        u.path
    )
}

impl DynamicSet {
    /// Register `service` (a URL from [`service_url`]); a registration of the same registry,
    /// group and path is replaced (a provider that came back on another port).
    /// Whether anything changed.
    pub fn register(&mut self, service: Url) -> bool {
        if self.registers.contains(&service) {
            return false;
        }
        self.registers.retain(|u| !same(u, &service));
        self.registers.push(service);
        true
    }

    /// Forget the registration of the same registry, group and path; whether there was one.
    pub fn unregister(&mut self, service: &Url) -> bool {
        let before = self.registers.len();
        self.registers.retain(|u| !same(u, service));
        before != self.registers.len()
    }

    /// Subscribe `refer` (a URL from [`refer_url`]); the same one again changes nothing.
    /// Whether anything changed.
    pub fn subscribe(&mut self, refer: Url) -> bool {
        if self.subscribes.iter().any(|u| same(u, &refer)) {
            return false;
        }
        self.subscribes.push(refer);
        true
    }

    /// The `motan-service` entries (id, URL) the mesh serves the registrations with.
    pub fn service_entries(&self) -> Vec<(String, Url)> {
        self.registers.iter().map(|u| (entry_id(u), u.clone())).collect()
    }

    /// The `motan-refer` entries (id, URL) of the subscriptions.
    pub fn refer_entries(&self) -> Vec<(String, Url)> {
        self.subscribes.iter().map(|u| (entry_id(u), u.clone())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.registers.is_empty() && self.subscribes.is_empty()
    }

    /// Read a snapshot; no file is an empty set.
    pub fn load(path: &Path) -> Result<DynamicSet, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a registry snapshot: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DynamicSet::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write the snapshot atomically: a temporary file in the same directory, fsync, rename
    /// (a crash leaves the old snapshot or the new one, never half of one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp: PathBuf = dir.join(format!(".{SNAPSHOT_FILE}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // The rename itself reaches the disk with the directory.
            std::fs::File::open(dir)?.sync_all()
        };
        let r = write();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

/// The `motan-registry` entry a request means: the one whose `<protocol>://<host>:<port>` is
/// its `proxyRegistry` (what motan-go's mesh registry sends), or the registry in its
/// `proxyRegistryUrlString`, or (sockmesh) the entry its `registry` parameter names.
pub fn resolve_registry(req: &Url, registries: &BTreeMap<String, Url>) -> Result<String, String> {
    let addr = |u: &Url| format!("{}://{}:{}", u.protocol, u.host, u.port);
    if let Some(p) = req.param(PROXY_REGISTRY).filter(|p| !p.is_empty())
        && let Some((id, _)) = registries.iter().find(|(_, u)| addr(u) == p)
    {
        return Ok(id.clone());
    }
    if let Some(s) = req.param(PROXY_REGISTRY_URL).filter(|p| !p.is_empty()) {
        // Query-escaped (motan-go QueryUnescape: `+` is a space); taken as is when it is not.
        let text = if s.contains("://") {
            s.to_string()
        } else {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        if let Ok(u) = Url::parse_node(&text)
            && let Some((id, _)) = registries
                .iter()
                .find(|(_, r)| (&r.protocol, &r.host, r.port) == (&u.protocol, &u.host, u.port))
        {
            return Ok(id.clone());
        }
    }
    if let Some(id) = req.param(keys::REGISTRY)
        && registries.contains_key(id)
    {
        return Ok(id.to_string());
    }
    let known: Vec<String> = registries
        .iter()
        .map(|(id, u)| format!("{id} = {}", addr(u)))
        .collect();
    Err(format!(
        "registry not found: give proxyRegistry=<protocol>://<host>:<port> of a motan-registry entry, or \
         registry=<entry id> (configured: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

/// The request's parameters that belong to the service: without the request's own, and of
/// its `filter` only the agent's (`af_x` → `x`), as motan-go keeps them.
fn service_params(req: &Url, registry: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = req
        .params
        .iter()
        .filter(|(k, _)| !REQUEST_PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let filters: Vec<&str> = crate::url::split_list(req.param(keys::FILTER).unwrap_or(""))
        .into_iter()
        .filter_map(|f| f.strip_prefix(AGENT_FILTER_PREFIX))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if filters.is_empty() {
        params.remove(keys::FILTER);
    } else {
        params.insert(keys::FILTER.into(), filters.join(","));
    }
    params.insert(keys::REGISTRY.into(), registry.to_string());
    params
}

fn protocol(req: &Url) -> &str {
    if req.protocol.is_empty() {
        "motan2"
    } else {
        &req.protocol
    }
}

/// What a `/registry/register` request (the provider's URL: its protocol and local port,
/// path, group) registers: the service exported on this agent's `eport`, registered with
/// `local_ip` and that port, calls going to the provider's port on this host (`proxy`).
pub fn service_url(req: &Url, registry: &str, eport: u16, local_ip: &str, application: &str) -> Url {
    let proto = protocol(req);
    let mut params = service_params(req, registry);
    params.insert(keys::PROXY.into(), format!("{proto}:{}", req.port));
    params.insert(keys::EXPORT.into(), format!("{proto}:{eport}"));
    if params.get(keys::APPLICATION).is_none_or(|a| a.is_empty()) && !application.is_empty() {
        params.insert(keys::APPLICATION.into(), application.to_string());
    }
    Url {
        protocol: proto.to_string(),
        host: local_ip.to_string(),
        port: eport,
        path: req.path.clone(),
        group: req.group.clone(),
        params: params.into(),
    }
}

/// What a `/registry/subscribe` request subscribes: a refer of the path and group (no host or
/// port) in `registry`.
pub fn refer_url(req: &Url, registry: &str) -> Url {
    Url {
        protocol: protocol(req).to_string(),
        host: String::new(),
        port: 0,
        path: req.path.clone(),
        group: req.group.clone(),
        params: service_params(req, registry).into(),
    }
}

/// A path or group must be usable as one ZooKeeper node name (`/motan/<group>/<path>/...`).
pub fn check_name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("missing parameter {what}"));
    }
    if v == "."
        || v == ".."
        || v.len() > 255
        || v.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} {v:?} is not usable as a registry node name (no '/', spaces or control characters, at most 255 bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registries() -> BTreeMap<String, Url> {
        let mut m = BTreeMap::new();
        m.insert("zk".to_string(), Url::new("zookeeper", "127.0.0.1", 2181, "", ""));
        m.insert("d".to_string(), Url::new("direct", "", 0, "", ""));
        m
    }

    #[test]
    fn registry_by_proxy_registry_url_string_or_name() {
        let r = registries();
        let req = |k: &str, v: &str| Url::new("motan2", "", 0, "S", "g").with_param(k, v);
        assert_eq!(
            resolve_registry(&req(PROXY_REGISTRY, "zookeeper://127.0.0.1:2181"), &r).unwrap(),
            "zk"
        );
        let escaped = "zookeeper%3A%2F%2F127.0.0.1%3A2181%2Fcom.weibo.api.motan.registry.RegistryService%3Fgroup%3Ddefault_rpc";
        assert_eq!(
            resolve_registry(&req(PROXY_REGISTRY_URL, escaped), &r).unwrap(),
            "zk"
        );
        assert_eq!(resolve_registry(&req("registry", "zk"), &r).unwrap(), "zk");
        let e = resolve_registry(&req(PROXY_REGISTRY, "zookeeper://10.0.0.1:2181"), &r).unwrap_err();
        assert!(
            e.contains("registry not found") && e.contains("zk = zookeeper://127.0.0.1:2181"),
            "{e}"
        );
    }

    #[test]
    fn service_and_refer_urls_are_motan_go_s() {
        let req = Url::new("motan2", "10.0.0.5", 8100, "com.weibo.Hello", "g")
            .with_param(PROXY_REGISTRY, "zookeeper://127.0.0.1:2181")
            .with_param("filter", "accessLog,af_metrics, af_trace")
            .with_param("serialization", "breeze");
        let s = service_url(&req, "zk", 9982, "192.0.2.1", "app");
        assert_eq!((s.host.as_str(), s.port), ("192.0.2.1", 9982));
        assert_eq!(s.param("proxy"), Some("motan2:8100"));
        assert_eq!(s.param("export"), Some("motan2:9982"));
        assert_eq!(s.param("registry"), Some("zk"));
        assert_eq!(s.param("filter"), Some("metrics,trace"));
        assert_eq!(s.param("application"), Some("app"));
        assert_eq!(s.param("serialization"), Some("breeze"));
        assert_eq!(s.param(PROXY_REGISTRY), None);
        let r = refer_url(&req.clone().with_param("filter", "x"), "zk");
        assert_eq!((r.host.as_str(), r.port), ("", 0));
        assert_eq!(r.param("filter"), None);
        assert_eq!(r.param("registry"), Some("zk"));
    }

    #[test]
    fn set_replaces_same_service_and_snapshot_round_trips() {
        let dir = std::env::temp_dir().join(format!("sockmesh-dynset-{}", std::process::id()));
        let path = dir.join(SNAPSHOT_FILE);
        let req = Url::new("motan2", "", 8100, "S", "g");
        let mut set = DynamicSet::default();
        assert!(set.register(service_url(&req, "zk", 9982, "127.0.0.1", "")));
        assert!(!set.register(service_url(&req, "zk", 9982, "127.0.0.1", "")));
        assert!(set.register(service_url(
            &Url {
                port: 8200,
                ..req.clone()
            },
            "zk",
            9982,
            "127.0.0.1",
            ""
        )));
        assert_eq!(set.registers.len(), 1);
        assert_eq!(set.registers[0].param("proxy"), Some("motan2:8200"));
        assert!(set.subscribe(refer_url(&req, "zk")));
        assert!(!set.subscribe(refer_url(&req, "zk")));
        assert_eq!(set.subscribes.len(), 1);
        assert_eq!(set.service_entries()[0].0, "dynamic:zk:g:S");
        assert_eq!(DynamicSet::load(&path).unwrap(), DynamicSet::default());
        set.save(&path).unwrap();
        assert_eq!(DynamicSet::load(&path).unwrap(), set);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(r#"{"register_nodes":[{"protocol":"motan2""#),
            "{text}"
        );
        // motan-go writes a nil slice as null.
        std::fs::write(&path, r#"{"register_nodes":null,"subscribe_nodes":null}"#).unwrap();
        assert!(DynamicSet::load(&path).unwrap().is_empty());
        std::fs::write(&path, "{").unwrap();
        assert!(
            DynamicSet::load(&path)
                .unwrap_err()
                .contains("not a registry snapshot")
        );
        assert!(set.unregister(&set.registers[0].clone()));
        assert!(set.registers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_must_be_node_names() {
        assert!(check_name("path", "com.weibo.Hello").is_ok());
        for bad in ["", "a/b", "..", "a b"] {
            assert!(check_name("path", bad).is_err(), "{bad:?}");
        }
    }
}
