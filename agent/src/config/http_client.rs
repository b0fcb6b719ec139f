//! The client side of HTTP in the mesh (spec 4.13), typed once: `http-client` clusters (an
//! HTTP domain whose paths, by the domain's `http-locations`, are served over Motan2 by the
//! location's `upstream` service) and the hport forward proxy's `motan-agent` keys.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::http::{HttpProviderSpec, HttpSections};
use super::http_locations::{HttpLocations, LocationMatcher};
use super::sections::SettingError;
use crate::url::{Url, parse_go_bool, split_list};

/// `motan-agent` keys of the forward proxy (motan-go's names).
pub mod keys {
    pub const HPORT: &str = "hport";
    pub const ENABLE: &str = "httpProxyEnable";
    pub const KEEPALIVE: &str = "httpProxyKeepalive";
    pub const KEEPALIVE_TIMEOUT: &str = "httpProxyKeepaliveTimeout";
    pub const TIMEOUT: &str = "httpProxyTimeout";
    pub const MAX_REQUEST_BODY_SIZE: &str = "httpProxyMaxRequestBodySize";
    pub const DEFAULT_DOMAIN: &str = "httpProxyDefaultDomain";
    pub const UNIX_SOCK: &str = "httpProxyUnixSock";
    /// `http-client` entry key: services whose clusters are made at start.
    pub const PRELOAD: &str = "preload";
}

pub const DEFAULT_HPORT: u16 = 9983;
/// motan-go's `httpProxyTimeout` and `httpProxyKeepaliveTimeout` defaults.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PROXY_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// motan-go allows 2 GiB request bodies; a bound that fits in memory many times over is kept
/// unless `httpProxyMaxRequestBodySize` says otherwise.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 10 << 20;
/// Responses of plain HTTP proxying are read whole, up to this.
pub const MAX_RESPONSE_BODY: usize = 64 << 20;

/// The hport forward proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProxySpec {
    /// `httpProxyEnable` (default false, as motan-go): the listener exists only when set.
    pub enabled: bool,
    pub port: u16,
    /// `httpProxyKeepalive`: keep client connections open between requests.
    pub keepalive: bool,
    /// Idle time of client connections and of pooled upstream connections.
    pub keepalive_timeout: Duration,
    /// One request's whole exchange, RPC or plain HTTP.
    pub timeout: Duration,
    pub max_request_body: usize,
    /// `httpProxyDefaultDomain`: the http-client domain for hosts no cluster serves.
    pub default_domain: Option<String>,
}

impl Default for HttpProxySpec {
    fn default() -> Self {
        HttpProxySpec {
            enabled: false,
            port: DEFAULT_HPORT,
            keepalive: true,
            keepalive_timeout: DEFAULT_PROXY_KEEPALIVE_TIMEOUT,
            timeout: DEFAULT_PROXY_TIMEOUT,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            default_domain: None,
        }
    }
}

impl HttpProxySpec {
    /// From the `motan-agent` section's keys; every bad key is reported.
    pub fn from_agent(agent: &BTreeMap<String, Value>) -> (HttpProxySpec, Vec<SettingError>) {
        let mut errors = Vec::new();
        let mut spec = HttpProxySpec::default();
        let text = |k: &str| -> Option<String> {
            match agent.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => Some(String::new()),
            }
        };
        let mut number = |k: &'static str, min: u64, max: u64| -> Option<u64> {
            let v = text(k)?;
            match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    errors.push(SettingError::new(
                        k,
                        format!("{v:?} is not an integer in {min}..{max}"),
                    ));
                    None
                }
            }
        };
        if let Some(p) = number(keys::HPORT, 1, u16::MAX as u64) {
            spec.port = p as u16;
        }
        if let Some(ms) = number(keys::KEEPALIVE_TIMEOUT, 1, u32::MAX as u64) {
            spec.keepalive_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = number(keys::TIMEOUT, 1, u32::MAX as u64) {
            spec.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = number(keys::MAX_REQUEST_BODY_SIZE, 1, i32::MAX as u64) {
            spec.max_request_body = n as usize;
        }
        for (key, slot) in [
            (keys::ENABLE, &mut spec.enabled),
            (keys::KEEPALIVE, &mut spec.keepalive),
        ] {
            if let Some(v) = text(key) {
                match parse_go_bool(&v) {
                    Some(b) => *slot = b,
                    None => errors.push(SettingError::new(
                        key,
                        format!("{v:?} is not a boolean (true or false)"),
                    )),
                }
            }
        }
        spec.default_domain = text(keys::DEFAULT_DOMAIN).filter(|d| !d.is_empty());
        if text(keys::UNIX_SOCK).is_some_and(|s| !s.is_empty()) {
            errors.push(SettingError::new(
                keys::UNIX_SOCK,
                "the forward proxy on a unix socket is not supported by sockmesh (it listens on hport)",
            ));
        }
        (spec, errors)
    }
}

/// One `http-client` entry, ready to build its clusters.
#[derive(Clone, Debug)]
pub struct HttpClientSpec {
    pub conf_id: String,
    pub domain: String,
    /// The refer template: a service's cluster is this URL with `path` = the service.
    pub refer: Url,
    /// The domain's locations (empty: every request goes as plain HTTP, as in motan-go).
    pub locations: Arc<LocationMatcher>,
    /// Services that get a cluster: every `upstream` of the domain's locations, then `preload`.
    pub services: Vec<String>,
    /// RPCs for the domain that no service serves go as plain HTTP to `domain:80` through an
    /// HTTP provider with these settings (proxy mode, the entry's `requestTimeout`).
    pub plain: HttpProviderSpec,
}

impl HttpClientSpec {
    /// `refer` is the finished entry (template inherited, defaults filled); its `domain` is
    /// checked to exist by the refer checks.
    pub fn new(
        conf_id: &str,
        refer: &Url,
        locations: &HttpLocations,
    ) -> Result<HttpClientSpec, SettingError> {
        let domain = refer
            .param(super::http::keys::DOMAIN)
            .unwrap_or_default()
            .to_string();
        let mut plain = refer.clone();
        plain
            .params
            .insert(super::http::keys::PROXY_ADDRESS.into(), format!("{domain}:80"));
        plain
            .params
            .insert(super::http::keys::ENABLE_REWRITE.into(), "false".into());
        let plain = HttpProviderSpec::from_url(&plain, &HttpSections::default()).map_err(|e| {
            if e.key == super::http::keys::PROXY_ADDRESS {
                SettingError::new(
                    super::http::keys::DOMAIN,
                    format!("{domain:?} is not a host name"),
                )
            } else {
                e
            }
        })?;
        let locations = locations.0.get(&domain).cloned().unwrap_or_default();
        let mut services: Vec<String> = locations.upstreams().into_iter().map(String::from).collect();
        for s in split_list(refer.param(keys::PRELOAD).unwrap_or_default()) {
            if !services.iter().any(|x| x == s) {
                services.push(s.to_string());
            }
        }
        Ok(HttpClientSpec {
            conf_id: conf_id.to_string(),
            domain,
            refer: refer.clone(),
            locations,
            services,
            plain,
        })
    }

    /// The refer of one service's cluster.
    pub fn service_refer(&self, service: &str) -> Url {
        let mut u = self.refer.clone();
        u.path = service.to_string();
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(yaml: &str) -> (HttpProxySpec, Vec<String>) {
        let m: BTreeMap<String, Value> = serde_yaml_ng::from_str(yaml).unwrap();
        let (s, e) = HttpProxySpec::from_agent(&m);
        (s, e.into_iter().map(|e| e.key).collect())
    }

    #[test]
    fn proxy_keys_defaults_and_errors() {
        let (s, e) = agent("port: 9981\n");
        assert!(e.is_empty());
        assert_eq!(s, HttpProxySpec::default());
        assert_eq!((s.port, s.enabled, s.keepalive), (9983, false, true));
        let (s, e) = agent(
            "hport: 19983\nhttpProxyEnable: true\nhttpProxyKeepalive: \"false\"\nhttpProxyTimeout: 700\nhttpProxyMaxRequestBodySize: 1024\nhttpProxyDefaultDomain: api.x.com\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!((s.port, s.enabled, s.keepalive), (19983, true, false));
        assert_eq!(
            (s.timeout, s.max_request_body),
            (Duration::from_millis(700), 1024)
        );
        assert_eq!(s.default_domain.as_deref(), Some("api.x.com"));
        let (_, e) = agent(
            "hport: 0\nhttpProxyEnable: yes\nhttpProxyTimeout: -1\nhttpProxyMaxRequestBodySize: 1e12\nhttpProxyUnixSock: /run/h.sock\n",
        );
        assert_eq!(
            e,
            [
                keys::HPORT,
                keys::TIMEOUT,
                keys::MAX_REQUEST_BODY_SIZE,
                keys::ENABLE,
                keys::UNIX_SOCK
            ]
        );
    }

    #[test]
    fn services_are_the_location_upstreams_then_preload() {
        let (locs, _) = HttpLocations::from_section(Some(
            &serde_yaml_ng::from_str(
                "api.x.com:\n  - {match: /a, upstream: svc.a}\n  - {match: /b, upstream: svc.b}\n",
            )
            .unwrap(),
        ));
        let refer = Url::new("motan2", "", 0, "", "g")
            .with_param("domain", "api.x.com")
            .with_param("preload", "svc.b, svc.c");
        let c = HttpClientSpec::new("web", &refer, &locs).unwrap();
        assert_eq!(c.services, ["svc.a", "svc.b", "svc.c"]);
        assert_eq!(c.service_refer("svc.a").path, "svc.a");
        assert_eq!(c.service_refer("svc.a").group, "g");
        let other = Url::new("motan2", "", 0, "", "g").with_param("domain", "none.com");
        assert!(
            HttpClientSpec::new("x", &other, &locs)
                .unwrap()
                .services
                .is_empty()
        );
        let bad = Url::new("motan2", "", 0, "", "g").with_param("domain", "a b");
        assert_eq!(HttpClientSpec::new("x", &bad, &locs).unwrap_err().key, "domain");
    }
}
