//! The motan URL: how motan-go describes a registry, a refer (client side), a service (server
//! side) and a discovered server node. Fields `protocol://host:port/path?group=G` plus string
//! parameters; the typed getters mirror motan-go's core/url.go (a value that does not parse
//! falls back to the default, an empty string counts as absent).
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Parameter keys used across the agent core (motan-go core/constants.go).
pub mod keys {
    pub const APPLICATION: &str = "application";
    pub const VERSION: &str = "version";
    pub const FILTER: &str = "filter";
    pub const REGISTRY: &str = "registry";
    pub const SERIALIZATION: &str = "serialization";
    pub const ADDRESS: &str = "address";
    pub const CONF_ID: &str = "conf-id";
    pub const REQUEST_TIMEOUT: &str = "requestTimeout";
    pub const MIN_REQUEST_TIMEOUT: &str = "minRequestTimeout";
    pub const MAX_REQUEST_TIMEOUT: &str = "maxRequestTimeout";
    pub const RETRIES: &str = "retries";
    pub const HA_STRATEGY: &str = "haStrategy";
    pub const LOADBALANCE: &str = "loadbalance";
    pub const ERROR_COUNT_THRESHOLD: &str = "errorCountThreshold";
    pub const KEEPALIVE_INTERVAL: &str = "keepaliveInterval";
    pub const EXPORT: &str = "export";
    pub const PROVIDER: &str = "provider";
    pub const PROXY: &str = "proxy";
    pub const DOMAIN: &str = "domain";
    /// sockmesh extension on a service entry: short-circuit its local legs with sk_msg.
    pub const SOCKMAP: &str = "sockmesh.sockmap";
}

/// Protocol value of a unix-socket host (`unix://path`, port 0).
pub const UNIX_SOCK_PREFIX: &str = "unix://";
/// Version assumed when a URL has none; `0.1` is accepted as its equal (4.4 `CanServe`).
pub const DEFAULT_VERSION: &str = "1.0";
const LEGACY_VERSION: &str = "0.1";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Url {
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub group: String,
    #[serde(rename = "parameters")]
    pub params: Params,
}

/// A URL's parameters: a map sorted by key, used as one (`Deref`/`DerefMut` to the
/// `BTreeMap`), shared copy-on-write. The providers of one service mostly carry the same
/// parameters: a registry shares one map between them ([`ParamsPool`]), so a fleet's server
/// lists cost a map per distinct parameter set instead of one per server. Empty costs nothing.
#[derive(Clone, Default)]
pub struct Params(Option<std::sync::Arc<BTreeMap<String, String>>>);

static NO_PARAMS: BTreeMap<String, String> = BTreeMap::new();

impl std::ops::Deref for Params {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &BTreeMap<String, String> {
        self.0.as_deref().unwrap_or(&NO_PARAMS)
    }
}

impl std::ops::DerefMut for Params {
    /// Copies the map first when it is shared.
    fn deref_mut(&mut self) -> &mut BTreeMap<String, String> {
        std::sync::Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }
}

impl Params {
    /// Whether both are the same shared map (then they are equal without comparing).
    pub fn shares(&self, other: &Params) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.shares(other) || **self == **other
    }
}

impl Eq for Params {}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl From<BTreeMap<String, String>> for Params {
    fn from(m: BTreeMap<String, String>) -> Params {
        Params((!m.is_empty()).then(|| std::sync::Arc::new(m)))
    }
}

impl FromIterator<(String, String)> for Params {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Params {
        Params::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        (**self).iter()
    }
}

impl Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Params, D::Error> {
        BTreeMap::deserialize(d).map(Params::from)
    }
}

/// Shares equal parameter maps between URLs (a registry's server lists): a URL whose
/// parameters equal one already pooled gets that map. Holds a few recent distinct maps, so a
/// list whose servers all differ costs a bounded comparison per server.
#[derive(Debug, Default)]
pub struct ParamsPool {
    recent: std::collections::VecDeque<Params>,
}

impl ParamsPool {
    const KEEP: usize = 8;

    /// Give `url` the pooled map equal to its own, or pool its own.
    pub fn share(&mut self, url: &mut Url) {
        if url.params.0.is_none() {
            return;
        }
        match self.recent.iter().position(|p| *p == url.params) {
            Some(i) => {
                url.params = self.recent[i].clone();
                if i > 0 {
                    let p = self.recent.remove(i).unwrap();
                    self.recent.push_front(p);
                }
            }
            None => {
                self.recent.push_front(url.params.clone());
                self.recent.truncate(Self::KEEP);
            }
        }
    }
}

/// A registry node string that could not be read as a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node URL {text:?}: {reason}")]
pub struct UrlParseError {
    pub text: String,
    pub reason: &'static str,
}

impl Url {
    pub fn new(protocol: &str, host: &str, port: u16, path: &str, group: &str) -> Url {
        Url {
            protocol: protocol.into(),
            host: host.into(),
            port,
            path: path.into(),
            group: group.into(),
            params: Params::default(),
        }
    }

    /// Builder-style parameter setter (mostly for tests and construction code).
    pub fn with_param(mut self, key: &str, value: &str) -> Url {
        self.params.insert(key.into(), value.into());
        self
    }

    /// `protocol://host:port/path?group=G`; a direct registry also carries its address, so two
    /// direct registries with different address lists are different registries (as upstream).
    pub fn identity(&self) -> String {
        let mut id = format!(
            "{}://{}:{}/{}?group={}",
            self.protocol, self.host, self.port, self.path, self.group
        );
        if self.protocol == "direct" {
            id.push_str("&address=");
            id.push_str(self.get_str(keys::ADDRESS, ""));
        }
        id
    }

    /// `host:port`, or the host alone for a unix socket (`unix://path`).
    pub fn address(&self) -> String {
        if self.host.starts_with(UNIX_SOCK_PREFIX) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The agent's cluster key `group_version_protocol_path` (`/getReferService`), version
    /// defaulting to 1.0 and protocol `cedrus` normalised to `motan2`.
    pub fn cluster_key(&self) -> String {
        let protocol = if self.protocol == "cedrus" {
            "motan2"
        } else {
            &self.protocol
        };
        format!(
            "{}_{}_{}_{}",
            self.group,
            self.get_str(keys::VERSION, DEFAULT_VERSION),
            protocol,
            self.path
        )
    }

    /// The registry node form (4.9): `protocol://host:port/path?group=g&k=v...`, parameters
    /// sorted by key, nothing percent-encoded.
    pub fn to_node_string(&self) -> String {
        let mut s = format!(
            "{}://{}:{}/{}?group={}",
            self.protocol, self.host, self.port, self.path, self.group
        );
        for (k, v) in &self.params {
            s.push('&');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// Parse the registry node form. Like motan-go's `FromExtInfo`: split on `?`, `&` and `=`;
    /// a parameter that is not exactly `key=value` (its value contains `=`, or has no `=`) is
    /// dropped; `group` moves from the parameters to the field. Unlike upstream, the path is
    /// everything after the first `/` (upstream keeps only the first segment) and a port that is
    /// not a number is an error instead of 0.
    pub fn parse_node(text: &str) -> Result<Url, UrlParseError> {
        let err = |reason| UrlParseError {
            text: text.to_string(),
            reason,
        };
        let (head, query) = match text.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (text, None),
        };
        let (protocol, rest) = head.split_once("://").ok_or_else(|| err("no \"://\""))?;
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = hostport.split_once(':').ok_or_else(|| err("no \":port\""))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err("port is not a number in 0..65535"))?;
        let mut url = Url::new(protocol, host, port, path, "");
        if let Some(query) = query {
            for pair in query.split('&') {
                let mut parts = pair.split('=');
                if let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) {
                    url.params.insert(k.to_string(), v.to_string());
                }
            }
        }
        url.group = url.params.remove("group").unwrap_or_default();
        Ok(url)
    }

    /// Text of a registry node's data. Java clients write nodes through an ObjectOutputStream:
    /// `AC ED` magic, then a TC_STRING (`0x74` at offset 4, text from offset 7) or TC_LONGSTRING
    /// (`0x7C`, text from offset 13). Anything else is taken as the text itself.
    pub fn node_data_text(data: &[u8]) -> String {
        let body = if data.len() > 7 && data[0] == 0xAC && data[1] == 0xED {
            match data[4] {
                0x74 => &data[7..],
                0x7C if data.len() > 13 => &data[13..],
                _ => data,
            }
        } else {
            data
        };
        String::from_utf8_lossy(body).into_owned()
    }

    /// A parameter; an empty value counts as absent (as upstream's `GetParam`).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn get_str<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.param(key).unwrap_or(default)
    }

    /// Integer parameter; absent or not an integer → `default`.
    pub fn get_int(&self, key: &str, default: i64) -> i64 {
        self.param(key).and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// Like `get_int`, but a value < 1 also yields `default` (upstream `GetPositiveIntValue`).
    pub fn get_positive_int(&self, key: &str, default: i64) -> i64 {
        match self.get_int(key, default) {
            v if v < 1 => default,
            v => v,
        }
    }

    /// Boolean with Go's `strconv.ParseBool` spellings; anything else → `default`.
    pub fn get_bool(&self, key: &str, default: bool) -> bool {
        self.param(key).and_then(parse_go_bool).unwrap_or(default)
    }

    /// Milliseconds parameter as a duration; absent, negative or not an integer → `default`.
    pub fn get_duration_ms(&self, key: &str, default: Duration) -> Duration {
        match self.param(key).and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => Duration::from_millis(ms),
            None => default,
        }
    }

    /// `<method>(<desc>).<key>` if set, else `<key>` (4.2.2 method-level overrides).
    pub fn method_param(&self, method: &str, desc: &str, key: &str) -> Option<&str> {
        if !method.is_empty()
            && let Some(v) = with_method_key(method, desc, key, |mk| self.param(mk))
        {
            return Some(v);
        }
        self.param(key)
    }

    /// Method-level integer: the override if it parses, else the plain key, else `default`
    /// (upstream `GetMethodIntValue`: an override that does not parse falls through).
    pub fn get_method_int(&self, method: &str, desc: &str, key: &str, default: i64) -> i64 {
        with_method_key(method, desc, key, |mk| {
            self.param(mk).and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| self.get_int(key, default))
    }

    /// Method-level integer where a value < 1 yields `default`.
    pub fn get_method_positive_int(&self, method: &str, desc: &str, key: &str, default: i64) -> i64 {
        match self.get_method_int(method, desc, key, default) {
            v if v < 1 => default,
            v => v,
        }
    }

    /// Method-level milliseconds (positive) as a duration.
    pub fn get_method_duration_ms(&self, method: &str, desc: &str, key: &str, default: Duration) -> Duration {
        let default_ms = i64::try_from(default.as_millis()).unwrap_or(i64::MAX);
        Duration::from_millis(self.get_method_positive_int(method, desc, key, default_ms) as u64)
    }

    /// Comma list parameter, trimmed, empty items dropped.
    pub fn get_list(&self, key: &str) -> Vec<&str> {
        split_list(self.get_str(key, ""))
    }

    /// Whether this (server) URL can serve `refer` (upstream `CanServe`, 4.4): same path; same
    /// protocol, or refer `motan` served by `motan2`, or a `local` server; a non-motan2 server
    /// must have the same serialization; versions equal, absent counting as `0.1` or `1.0`.
    pub fn can_serve(&self, refer: &Url) -> bool {
        let protocol_ok = (refer.protocol == "motan" && self.protocol == "motan2")
            || self.protocol == refer.protocol
            || self.protocol == "local";
        if !protocol_ok || self.path != refer.path {
            return false;
        }
        let raw = |u: &'_ Url, key: &str, default: &'static str| -> String {
            u.params.get(key).cloned().unwrap_or_else(|| default.to_string())
        };
        if self.protocol != "motan2"
            && raw(self, keys::SERIALIZATION, "") != raw(refer, keys::SERIALIZATION, "")
        {
            return false;
        }
        raw(self, keys::VERSION, LEGACY_VERSION) == raw(refer, keys::VERSION, LEGACY_VERSION)
            || raw(self, keys::VERSION, DEFAULT_VERSION) == raw(refer, keys::VERSION, DEFAULT_VERSION)
    }

    /// Whether this refer matches a request's service/group/protocol/version (upstream `IsMatch`,
    /// 4.3 step 2). Empty `group`/`protocol` match anything; the version is only compared when
    /// both the request and the refer have one.
    pub fn is_match(&self, service: &str, group: &str, protocol: &str, version: &str) -> bool {
        if self.path != service || (!group.is_empty() && self.group != group) {
            return false;
        }
        if !protocol.is_empty() {
            let ok = if self.protocol == "motan2" {
                protocol == "motan2" || protocol == "motan"
            } else {
                self.protocol == protocol
            };
            if !ok {
                return false;
            }
        }
        match (version, self.param(keys::VERSION)) {
            ("", _) | (_, None) => true,
            (v, Some(mine)) => v == mine,
        }
    }

    /// Copy `other`'s parameters into this URL, `other` winning.
    pub fn merge_params(&mut self, other: &BTreeMap<String, String>) {
        for (k, v) in other {
            self.params.insert(k.clone(), v.clone());
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_node_string())
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `f` of the method-level key `method(desc).key`, composed on the stack: these look-ups run
/// on every request, and method names and descriptors are short (a heap copy only beyond
/// 256 bytes).
fn with_method_key<T>(method: &str, desc: &str, key: &str, f: impl FnOnce(&str) -> T) -> T {
    let parts = [method, "(", desc, ").", key];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = [0u8; 256];
    if len > buf.len() {
        return f(&parts.concat());
    }
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p.as_bytes());
        at += p.len();
    }
    // Whole strs joined: still UTF-8.
    f(std::str::from_utf8(&buf[..len]).unwrap_or_default())
}

/// Split a comma list, trimming items and dropping empty ones.
pub fn split_list(s: &str) -> Vec<&str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer() -> Url {
        Url::new("motan2", "", 0, "com.weibo.HelloService", "g")
    }

    #[test]
    fn identity_and_address() {
        let u = Url::new("motan2", "10.0.0.1", 8002, "com.weibo.Hello", "g1").with_param("x", "y");
        assert_eq!(u.identity(), "motan2://10.0.0.1:8002/com.weibo.Hello?group=g1");
        assert_eq!(u.address(), "10.0.0.1:8002");
        let d = Url::new("direct", "", 0, "", "").with_param("address", "a:1,b:2");
        assert_eq!(d.identity(), "direct://:0/?group=&address=a:1,b:2");
        let s = Url::new("motan2", "unix:///tmp/a.sock", 0, "p", "g");
        assert_eq!(s.address(), "unix:///tmp/a.sock");
    }

    #[test]
    fn cluster_key_defaults_version_and_normalises_cedrus() {
        let u = Url::new("cedrus", "", 0, "p", "g");
        assert_eq!(u.cluster_key(), "g_1.0_motan2_p");
        let u = Url::new("motan", "", 0, "p", "g").with_param("version", "2.0");
        assert_eq!(u.cluster_key(), "g_2.0_motan_p");
    }

    #[test]
    fn node_string_round_trip_sorted_unencoded() {
        let u = Url::new("motan2", "10.0.0.1", 9982, "com.weibo.Hello", "g")
            .with_param("zeta", "1")
            .with_param("alpha", "a b/c")
            .with_param("nodeType", "service");
        let s = u.to_node_string();
        assert_eq!(
            s,
            "motan2://10.0.0.1:9982/com.weibo.Hello?group=g&alpha=a b/c&nodeType=service&zeta=1"
        );
        assert_eq!(Url::parse_node(&s).unwrap(), u);
        assert_eq!(u.to_string(), s);
    }

    #[test]
    fn parse_node_drops_params_with_equals_and_bare_keys() {
        let u = Url::parse_node("motan2://h:1/p?group=g&a=1&b=x=y&c&d=").unwrap();
        assert_eq!(u.group, "g");
        assert_eq!(u.params.get("a").map(String::as_str), Some("1"));
        assert!(!u.params.contains_key("b"));
        assert!(!u.params.contains_key("c"));
        assert_eq!(u.params.get("d").map(String::as_str), Some(""));
        assert!(!u.params.contains_key("group"));
    }

    #[test]
    fn parse_node_errors_and_tolerance() {
        assert!(Url::parse_node("h:1/p?group=g").is_err());
        assert!(Url::parse_node("motan2://h/p").is_err());
        assert!(Url::parse_node("motan2://h:99999/p").is_err());
        let u = Url::parse_node("motan2://h:7/a.b.C").unwrap();
        assert_eq!((u.port, u.path.as_str(), u.group.as_str()), (7, "a.b.C", ""));
        let u = Url::parse_node("motan2://h:7/a/b?group=g").unwrap();
        assert_eq!(u.path, "a/b");
    }

    #[test]
    fn java_serialized_node_data() {
        let text = "motan2://h:1/p?group=g";
        let mut short = vec![0xAC, 0xED, 0x00, 0x05, 0x74, 0x00, text.len() as u8];
        short.extend_from_slice(text.as_bytes());
        assert_eq!(Url::node_data_text(&short), text);
        let mut long = vec![
            0xAC,
            0xED,
            0x00,
            0x05,
            0x7C,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            text.len() as u8,
        ];
        long.extend_from_slice(text.as_bytes());
        assert_eq!(Url::node_data_text(&long), text);
        assert_eq!(Url::node_data_text(text.as_bytes()), text);
        // Magic but another type byte: taken as is.
        let odd = [0xAC, 0xED, 0, 5, 0x70, 1, 2, 3, 4];
        assert_eq!(
            Url::node_data_text(&odd).len(),
            String::from_utf8_lossy(&odd).len()
        );
        // Too short for the long form: taken as is.
        let short_long = [0xAC, 0xED, 0, 5, 0x7C, 0, 0, 0, b'x'];
        assert_eq!(
            Url::node_data_text(&short_long),
            String::from_utf8_lossy(&short_long)
        );
    }

    #[test]
    fn typed_getters_with_defaults() {
        let u = refer()
            .with_param("n", "42")
            .with_param("neg", "-3")
            .with_param("bad", "4x")
            .with_param("empty", "")
            .with_param("b1", "T")
            .with_param("b2", "yes")
            .with_param("ms", "250");
        assert_eq!(u.get_int("n", 1), 42);
        assert_eq!(u.get_int("bad", 1), 1);
        assert_eq!(u.get_int("missing", 7), 7);
        assert_eq!(u.get_int("empty", 7), 7);
        assert_eq!(u.get_positive_int("neg", 5), 5);
        assert_eq!(u.get_int("neg", 5), -3);
        assert!(u.get_bool("b1", false));
        assert!(u.get_bool("b2", true));
        assert!(!u.get_bool("b2", false));
        assert_eq!(
            u.get_duration_ms("ms", Duration::ZERO),
            Duration::from_millis(250)
        );
        assert_eq!(
            u.get_duration_ms("neg", Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(u.get_str("empty", "dflt"), "dflt");
        assert_eq!(u.param("empty"), None);
    }

    #[test]
    fn method_level_overrides() {
        let u = refer()
            .with_param("requestTimeout", "1000")
            .with_param("hello(java.lang.String).requestTimeout", "300")
            .with_param("broken().requestTimeout", "x");
        assert_eq!(
            u.get_method_int("hello", "java.lang.String", "requestTimeout", 1),
            300
        );
        assert_eq!(u.get_method_int("hello", "", "requestTimeout", 1), 1000);
        assert_eq!(u.get_method_int("broken", "", "requestTimeout", 1), 1000);
        // Keys longer than the stack buffer are looked up all the same.
        let long = "m".repeat(300);
        let u = u.with_param(&format!("{long}(d).requestTimeout"), "7");
        assert_eq!(u.get_method_int(&long, "d", "requestTimeout", 1), 7);
        assert_eq!(u.method_param(&long, "d", "requestTimeout"), Some("7"));
        assert_eq!(
            u.method_param("hello", "java.lang.String", "requestTimeout"),
            Some("300")
        );
        assert_eq!(
            u.get_method_duration_ms("hello", "java.lang.String", "requestTimeout", Duration::ZERO),
            Duration::from_millis(300)
        );
        assert_eq!(u.get_method_positive_int("x", "", "retries", 2), 2);
    }

    #[test]
    fn can_serve_rules() {
        let r = refer();
        let s = |proto: &str| Url::new(proto, "h", 1, "com.weibo.HelloService", "g");
        assert!(s("motan2").can_serve(&r));
        assert!(s("local").can_serve(&r));
        assert!(!s("motan").can_serve(&r));
        let mut r1 = r.clone();
        r1.protocol = "motan".into();
        assert!(s("motan2").can_serve(&r1));
        assert!(s("motan").can_serve(&r1));
        // path
        let mut other = s("motan2");
        other.path = "x".into();
        assert!(!other.can_serve(&r));
        // serialization only matters for non-motan2 servers
        let r_pb = r1.clone().with_param("serialization", "pb");
        assert!(!s("motan").can_serve(&r_pb));
        assert!(s("motan").with_param("serialization", "pb").can_serve(&r_pb));
        assert!(s("motan2").can_serve(&r.clone().with_param("serialization", "pb")));
        // version: missing equals 0.1 and 1.0
        assert!(s("motan2").with_param("version", "1.0").can_serve(&r));
        assert!(s("motan2").with_param("version", "0.1").can_serve(&r));
        assert!(!s("motan2").with_param("version", "2.0").can_serve(&r));
        assert!(
            s("motan2")
                .with_param("version", "2.0")
                .can_serve(&r.clone().with_param("version", "2.0"))
        );
    }

    #[test]
    fn is_match_rules() {
        let r = refer().with_param("version", "1.0");
        assert!(r.is_match("com.weibo.HelloService", "g", "", ""));
        assert!(r.is_match("com.weibo.HelloService", "", "motan", "1.0"));
        assert!(!r.is_match("com.weibo.HelloService", "h", "", ""));
        assert!(!r.is_match("com.weibo.HelloService", "g", "grpc", ""));
        assert!(!r.is_match("com.weibo.HelloService", "g", "", "2.0"));
        assert!(!r.is_match("other", "g", "", ""));
        assert!(refer().is_match("com.weibo.HelloService", "g", "motan2", "9.9"));
        let mut grpc = refer();
        grpc.protocol = "grpc".into();
        assert!(grpc.is_match("com.weibo.HelloService", "g", "grpc", ""));
        assert!(!grpc.is_match("com.weibo.HelloService", "g", "motan2", ""));
    }

    #[test]
    fn params_are_shared_copy_on_write() {
        let mut pool = ParamsPool::default();
        let mut a = Url::new("motan2", "10.0.0.1", 1, "p", "g").with_param("nodeType", "service");
        let mut b = Url::new("motan2", "10.0.0.2", 1, "p", "g").with_param("nodeType", "service");
        let mut c = Url::new("motan2", "10.0.0.3", 1, "p", "g").with_param("nodeType", "other");
        for u in [&mut a, &mut b, &mut c] {
            pool.share(u);
        }
        assert!(a.params.shares(&b.params), "equal maps are one");
        assert!(!a.params.shares(&c.params));
        // A change copies: the other URL keeps its value.
        b.params.insert("weight".into(), "3".into());
        assert_eq!(a.param("weight"), None);
        assert_eq!(b.param("weight"), Some("3"));
        // Empty is empty however it came to be, and costs no map.
        let mut d = Url::new("motan2", "h", 1, "p", "g").with_param("x", "1");
        d.params.remove("x");
        assert_eq!(d.params, Params::default());
        assert_eq!(Url::new("motan2", "h", 1, "p", "g"), d);
        // (De)serialised as the map.
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["parameters"], serde_json::json!({"nodeType": "service"}));
        assert_eq!(serde_json::from_value::<Url>(json).unwrap(), a);
    }

    #[test]
    fn json_shape_of_registry_register() {
        let u: Url = serde_json::from_str(
            r#"{"protocol":"motan2","host":"127.0.0.1","port":8100,"path":"p","group":"g","parameters":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(u.port, 8100);
        assert_eq!(u.params["a"], "b");
        let back = serde_json::to_value(&u).unwrap();
        assert_eq!(back["parameters"]["a"], "b");
    }

    #[test]
    fn lists_and_bools() {
        assert_eq!(split_list(" a, ,b ,,c"), vec!["a", "b", "c"]);
        assert_eq!(parse_go_bool("False"), Some(false));
        assert_eq!(parse_go_bool("no"), None);
        let u = refer().with_param("filter", "accessLog, metrics");
        assert_eq!(u.get_list("filter"), vec!["accessLog", "metrics"]);
    }
}
