//! An HTTP provider's settings (spec 4.12), typed once from its service URL and the
//! `http-locations` / `http-service` sections: `config validate` reports exactly the errors
//! `sockmesh run` would meet, and the provider is built from the result without parsing again.
//!
//! Two modes, as motan-go: `proxyAddress` (`host:port` or `unix://path`: the RPC request is
//! mapped to an HTTP request to that address, its path rewritten by the domain's
//! `http-locations` when `enableRewrite` is on) and "URL format" (`URL_FORMAT`, with per-method
//! overrides in `http-service`). `HTTP_URL` is the early motan-go name of `URL_FORMAT` (a URL
//! without `%s`) and is read as an alias, so the Weibo Mesh article's configuration runs as is.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use http::{HeaderValue, Method};
use serde_yaml_ng::Value;

use super::http_locations::{HttpLocations, LocationMatcher};
use super::sections::SettingError;
use crate::url::{UNIX_SOCK_PREFIX, Url, keys as url_keys, parse_go_bool};

/// Service URL keys read by the provider.
pub mod keys {
    pub const PROXY_ADDRESS: &str = "proxyAddress";
    pub const PROXY_SCHEMA: &str = "proxySchema";
    pub const DOMAIN: &str = "domain";
    pub const REQUEST_TIMEOUT: &str = "requestTimeout";
    pub const KEEPALIVE_TIMEOUT: &str = "keepaliveTimeout";
    pub const IDLE_CONNECTION_TIMEOUT: &str = "idleConnectionTimeout";
    pub const MAX_CONNECTIONS: &str = "maxConnections";
    pub const MAX_CONTENT_LENGTH: &str = "maxContentLength";
    pub const ENABLE_REWRITE: &str = "enableRewrite";
    pub const ENABLE_HTTP_EXCEPTION: &str = "enableHttpException";
    pub const HTTP_REQUEST_METHOD: &str = "HTTP_REQUEST_METHOD";
    pub const URL_FORMAT: &str = "URL_FORMAT";
    /// The early motan-go provider's name for a fixed URL (today's `URL_FORMAT`).
    pub const HTTP_URL: &str = "HTTP_URL";
}

/// `http-service` entry used for a method without one of its own (motan-go's name).
pub const DEFAULT_METHOD_CONF: &str = "http_default_motan_method";
pub const HTTP_SERVICE_SECTION: &str = "http-service";

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_millis(5000);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 10 << 20;

/// Where a `proxyAddress` provider's application listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyAddress {
    Tcp(Authority),
    Unix(PathBuf),
}

impl std::fmt::Display for ProxyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyAddress::Tcp(a) => write!(f, "{a}"),
            ProxyAddress::Unix(p) => write!(f, "{UNIX_SOCK_PREFIX}{}", p.display()),
        }
    }
}

/// A `URL_FORMAT`: an `http://` URL with at most one `%s`, replaced by `M_m`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlFormat {
    before: String,
    /// The text after `%s`; `None` when there is no `%s` (the URL is used as is).
    after: Option<String>,
}

impl UrlFormat {
    pub fn parse(format: &str) -> Result<UrlFormat, String> {
        let (before, after) = match format.split_once("%s") {
            Some((_, rest)) if rest.contains("%s") => {
                return Err(format!("{format:?} has more than one %s"));
            }
            Some((b, a)) => (b.to_string(), Some(a.to_string())),
            None => (format.to_string(), None),
        };
        let f = UrlFormat { before, after };
        let sample: Uri = f
            .url("m")
            .parse()
            .map_err(|e| format!("{format:?} is not a URL: {e}"))?;
        if sample.scheme() == Some(&Scheme::HTTPS) {
            return Err(format!(
                "{format:?}: https is not supported by sockmesh (no TLS client; use http://)"
            ));
        }
        if sample.scheme() != Some(&Scheme::HTTP) || sample.authority().is_none() {
            return Err(format!("{format:?} is not an http://host[:port]/path URL"));
        }
        Ok(f)
    }

    /// The URL for one method (`M_m`, already escaped for a path).
    pub fn url(&self, method: &str) -> String {
        match &self.after {
            Some(after) => format!("{}{method}{after}", self.before),
            None => self.before.clone(),
        }
    }
}

/// One `http-service` method entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodFormat {
    pub url: Option<UrlFormat>,
    pub method: Option<Method>,
}

/// The `http-service` section: conf-id → method → URL and HTTP method.
#[derive(Clone, Debug, Default)]
pub struct HttpServiceFormats(pub BTreeMap<String, HashMap<String, MethodFormat>>);

impl HttpServiceFormats {
    /// Errors name the conf-id (the entry) and the method key.
    pub fn from_section(section: Option<&Value>) -> (HttpServiceFormats, Vec<(String, SettingError)>) {
        let mut out = HttpServiceFormats::default();
        let mut errors = Vec::new();
        let Some(Value::Mapping(entries)) = section else {
            if section.is_some_and(|s| !s.is_null()) {
                errors.push((
                    String::new(),
                    SettingError::new("", "must be a mapping of conf-id → method → settings"),
                ));
            }
            return (out, errors);
        };
        for (id, methods) in entries {
            let id = id
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{id:?}"));
            let mut per_method = HashMap::new();
            match methods {
                Value::Null => {}
                Value::Mapping(methods) => {
                    for (names, conf) in methods {
                        let names = names.as_str().unwrap_or_default();
                        match method_format(conf) {
                            Ok(f) => {
                                for m in names.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                                    per_method.insert(m.to_string(), f.clone());
                                }
                            }
                            Err(e) => errors.push((
                                id.clone(),
                                SettingError::new(format!("{names}.{}", e.key), e.reason),
                            )),
                        }
                    }
                }
                _ => errors.push((
                    id.clone(),
                    SettingError::new("", "must be a mapping of method → settings"),
                )),
            }
            out.0.insert(id, per_method);
        }
        (out, errors)
    }
}

fn method_format(conf: &Value) -> Result<MethodFormat, SettingError> {
    let Value::Mapping(map) = conf else {
        return Err(SettingError::new(
            "",
            "must be a mapping {URL_FORMAT, HTTP_REQUEST_METHOD}",
        ));
    };
    let text = |k: &'static str| -> Result<Option<&str>, SettingError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(SettingError::new(k, format!("{other:?} is not a string"))),
        }
    };
    Ok(MethodFormat {
        url: text(keys::URL_FORMAT)?
            .map(UrlFormat::parse)
            .transpose()
            .map_err(|m| SettingError::new(keys::URL_FORMAT, m))?,
        method: text(keys::HTTP_REQUEST_METHOD)?
            .map(|m| parse_method(keys::HTTP_REQUEST_METHOD, m))
            .transpose()?,
    })
}

/// The sections an HTTP provider reads besides its own service URL.
#[derive(Clone, Debug, Default)]
pub struct HttpSections {
    pub locations: HttpLocations,
    pub formats: HttpServiceFormats,
}

/// How the provider reaches its application.
#[derive(Clone, Debug)]
pub enum HttpMode {
    /// `proxyAddress`; `rewrite`: the domain's locations when `enableRewrite` is on and the
    /// domain has rules.
    Proxy {
        address: ProxyAddress,
        rewrite: Option<Arc<LocationMatcher>>,
    },
    /// `URL_FORMAT` (or `HTTP_URL`) and the service's `http-service` entries.
    UrlFormat {
        url: Option<UrlFormat>,
        methods: HashMap<String, MethodFormat>,
    },
}

/// What an HTTP provider needs, checked.
#[derive(Clone, Debug)]
pub struct HttpProviderSpec {
    pub mode: HttpMode,
    /// `domain`: the Host header when the request sets none.
    pub domain: Option<HeaderValue>,
    /// `HTTP_REQUEST_METHOD`, default GET.
    pub default_method: Method,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_content_length: usize,
    pub enable_http_exception: bool,
    /// `keepaliveTimeout` (maximum connection age) was set: not supported, the provider warns.
    pub keepalive_timeout_ignored: bool,
    /// `enableRewrite` is on (motan-go's default) but the domain has no `http-locations`
    /// rules: `M_m` is the path, where motan-go answers every call 404 (warned at start).
    pub rewrite_without_rules: bool,
}

impl HttpProviderSpec {
    /// Read the provider's settings from its service URL and the HTTP sections.
    pub fn from_url(service: &Url, sections: &HttpSections) -> Result<HttpProviderSpec, SettingError> {
        let domain_name = service.param(keys::DOMAIN).unwrap_or_default();
        let domain = service
            .param(keys::DOMAIN)
            .map(|d| {
                HeaderValue::from_str(d).map_err(|_| {
                    SettingError::new(keys::DOMAIN, format!("{d:?} is not a valid Host header value"))
                })
            })
            .transpose()?;
        let default_method = match service.param(keys::HTTP_REQUEST_METHOD) {
            None => Method::GET,
            Some(m) => parse_method(keys::HTTP_REQUEST_METHOD, m)?,
        };
        let enable_rewrite = bool_param(service, keys::ENABLE_REWRITE, true)?;
        let mut rewrite_without_rules = false;
        let mode = match service.param(keys::PROXY_ADDRESS) {
            Some(addr) => {
                let address =
                    parse_proxy_address(addr).map_err(|m| SettingError::new(keys::PROXY_ADDRESS, m))?;
                let rules = sections.locations.rules(domain_name).cloned();
                rewrite_without_rules = enable_rewrite && rules.is_none();
                HttpMode::Proxy {
                    address,
                    rewrite: rules.filter(|_| enable_rewrite),
                }
            }
            None => url_format_mode(service, sections)?,
        };
        match service.param(keys::PROXY_SCHEMA) {
            None | Some("http") => {}
            Some(other) => {
                return Err(SettingError::new(
                    keys::PROXY_SCHEMA,
                    format!("{other:?} is not supported by sockmesh (only \"http\")"),
                ));
            }
        }
        let keepalive = match service.param(keys::KEEPALIVE_TIMEOUT) {
            None => 0,
            Some(_) => u64_param(service, keys::KEEPALIVE_TIMEOUT)?,
        };
        Ok(HttpProviderSpec {
            mode,
            domain,
            default_method,
            request_timeout: positive_ms(service, keys::REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)?,
            idle_timeout: positive_ms(
                service,
                keys::IDLE_CONNECTION_TIMEOUT,
                DEFAULT_IDLE_CONNECTION_TIMEOUT,
            )?,
            max_connections: positive_int(service, keys::MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)?,
            max_content_length: positive_int(service, keys::MAX_CONTENT_LENGTH, DEFAULT_MAX_CONTENT_LENGTH)?,
            enable_http_exception: bool_param(service, keys::ENABLE_HTTP_EXCEPTION, false)?,
            keepalive_timeout_ignored: keepalive > 0,
            rewrite_without_rules,
        })
    }
}

/// URL-format mode: `URL_FORMAT` (or its early alias `HTTP_URL`) and/or `http-service`
/// entries under the service's conf-id; at least one URL must exist.
fn url_format_mode(service: &Url, sections: &HttpSections) -> Result<HttpMode, SettingError> {
    let format = match (service.param(keys::URL_FORMAT), service.param(keys::HTTP_URL)) {
        (Some(a), Some(b)) if a != b => {
            return Err(SettingError::new(
                keys::HTTP_URL,
                format!(
                    "{b:?} differs from URL_FORMAT {a:?} (HTTP_URL is the early name of URL_FORMAT; set one)"
                ),
            ));
        }
        (Some(f), _) => Some((keys::URL_FORMAT, f)),
        (None, Some(f)) => Some((keys::HTTP_URL, f)),
        (None, None) => None,
    };
    let url = format
        .map(|(key, f)| UrlFormat::parse(f).map_err(|m| SettingError::new(key, m)))
        .transpose()?;
    let conf_id = service.param(url_keys::CONF_ID).unwrap_or_default();
    let methods = sections.formats.0.get(conf_id).cloned().unwrap_or_default();
    if url.is_none() && !methods.values().any(|m| m.url.is_some()) {
        return Err(SettingError::new(
            keys::PROXY_ADDRESS,
            "an http provider needs proxyAddress (host:port or unix://path) or URL_FORMAT (an http:// URL, early name HTTP_URL)",
        ));
    }
    Ok(HttpMode::UrlFormat { url, methods })
}

fn parse_method(key: &'static str, m: &str) -> Result<Method, SettingError> {
    Method::from_bytes(m.as_bytes())
        .map_err(|_| SettingError::new(key, format!("{m:?} is not an HTTP method")))
}

/// `host:port` with a non-zero port, or `unix://path`; a URL is refused.
fn parse_proxy_address(addr: &str) -> Result<ProxyAddress, String> {
    if let Some(path) = addr.strip_prefix(UNIX_SOCK_PREFIX) {
        if path.is_empty() {
            return Err(format!("{addr:?}: no socket path after unix://"));
        }
        return Ok(ProxyAddress::Unix(PathBuf::from(path)));
    }
    let bad = || format!("{addr:?} is not host:port or unix://path");
    if addr.contains(['/', '@', '?', '#']) || addr.contains(char::is_whitespace) {
        return Err(bad());
    }
    let authority: Authority = addr.parse().map_err(|_| bad())?;
    match authority.port_u16() {
        Some(port) if port != 0 && !authority.host().is_empty() => Ok(ProxyAddress::Tcp(authority)),
        _ => Err(bad()),
    }
}

fn u64_param(service: &Url, key: &'static str) -> Result<u64, SettingError> {
    let v = service.param(key).unwrap_or_default();
    v.parse()
        .map_err(|_| SettingError::new(key, format!("{v:?} is not a non-negative integer")))
}

/// A positive integer parameter, `default` when absent.
fn positive_int(service: &Url, key: &'static str, default: usize) -> Result<usize, SettingError> {
    if service.param(key).is_none() {
        return Ok(default);
    }
    match u64_param(service, key)? {
        0 => Err(SettingError::new(key, "must be greater than 0")),
        n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

/// A positive milliseconds parameter, `default` when absent.
fn positive_ms(service: &Url, key: &'static str, default: Duration) -> Result<Duration, SettingError> {
    if service.param(key).is_none() {
        return Ok(default);
    }
    match u64_param(service, key)? {
        0 => Err(SettingError::new(key, "must be greater than 0 (milliseconds)")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

fn bool_param(service: &Url, key: &'static str, default: bool) -> Result<bool, SettingError> {
    match service.param(key) {
        None => Ok(default),
        Some(v) => parse_go_bool(v).ok_or_else(|| SettingError::new(key, format!("{v:?} is not a boolean"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(params: &[(&str, &str)]) -> Url {
        let mut u = Url::new("motan2", "", 0, "com.example.Hello", "g").with_param("conf-id", "svc");
        for (k, v) in params {
            u = u.with_param(k, v);
        }
        u
    }

    fn sections(yaml: &str) -> HttpSections {
        let root: BTreeMap<String, Value> = serde_yaml_ng::from_str(yaml).unwrap();
        let (locations, e1) = HttpLocations::from_section(root.get("http-locations"));
        let (formats, e2) = HttpServiceFormats::from_section(root.get(HTTP_SERVICE_SECTION));
        assert!(e1.is_empty() && e2.is_empty(), "{e1:?} {e2:?}");
        HttpSections { locations, formats }
    }

    fn spec(params: &[(&str, &str)], s: &HttpSections) -> Result<HttpProviderSpec, SettingError> {
        HttpProviderSpec::from_url(&service(params), s)
    }

    #[test]
    fn every_refusal_names_its_key() {
        let none = HttpSections::default();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], keys::PROXY_ADDRESS),
            (&[("URL_FORMAT", "http://x/%s/%s")], keys::URL_FORMAT),
            (&[("URL_FORMAT", "https://x/%s")], keys::URL_FORMAT),
            (&[("URL_FORMAT", "/relative/%s")], keys::URL_FORMAT),
            (&[("HTTP_URL", "ftp://x/")], keys::HTTP_URL),
            (
                &[("HTTP_URL", "http://a/"), ("URL_FORMAT", "http://b/")],
                keys::HTTP_URL,
            ),
            (&[("proxyAddress", "unix://")], keys::PROXY_ADDRESS),
            (&[("proxyAddress", "127.0.0.1:0")], keys::PROXY_ADDRESS),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("proxySchema", "https")],
                keys::PROXY_SCHEMA,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("HTTP_REQUEST_METHOD", "G ET")],
                keys::HTTP_REQUEST_METHOD,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("requestTimeout", "0")],
                keys::REQUEST_TIMEOUT,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("enableHttpException", "maybe")],
                keys::ENABLE_HTTP_EXCEPTION,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("enableRewrite", "maybe")],
                keys::ENABLE_REWRITE,
            ),
        ];
        for (params, key) in cases {
            let e = spec(params, &none).unwrap_err();
            assert_eq!(e.key, *key, "{params:?}: {e}");
        }
    }

    #[test]
    fn proxy_mode_tcp_unix_and_rewrite() {
        let s = sections("http-locations:\n  api.x.com:\n    - {match: /, upstream: api}\n  bare.com: []\n");
        let p = spec(&[("proxyAddress", "127.0.0.1:8080")], &s).unwrap();
        assert!(
            matches!(&p.mode, HttpMode::Proxy { address: ProxyAddress::Tcp(a), rewrite: None } if a.as_str() == "127.0.0.1:8080")
        );
        assert!(
            p.rewrite_without_rules,
            "motan-go's default enableRewrite without rules"
        );
        assert_eq!(p.default_method, Method::GET);
        assert_eq!(p.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let p = spec(
            &[("proxyAddress", "unix:///run/app.sock"), ("domain", "api.x.com")],
            &s,
        )
        .unwrap();
        match &p.mode {
            HttpMode::Proxy { address, rewrite } => {
                assert_eq!(address, &ProxyAddress::Unix("/run/app.sock".into()));
                assert!(rewrite.is_some(), "the domain's rules, enableRewrite by default");
            }
            other => panic!("{other:?}"),
        }
        assert!(!p.rewrite_without_rules);
        let p = spec(
            &[
                ("proxyAddress", "[::1]:81"),
                ("domain", "api.x.com"),
                ("enableRewrite", "false"),
                ("keepaliveTimeout", "3000"),
            ],
            &s,
        )
        .unwrap();
        assert!(matches!(&p.mode, HttpMode::Proxy { rewrite: None, .. }));
        assert!(p.keepalive_timeout_ignored && !p.rewrite_without_rules);
        // A domain listed without rules rewrites nothing.
        let p = spec(&[("proxyAddress", "localhost:81"), ("domain", "bare.com")], &s).unwrap();
        assert!(p.rewrite_without_rules);
    }

    #[test]
    fn url_format_mode_and_the_early_alias() {
        let s = sections(
            "http-service:\n  svc:\n    \"a, b\": {URL_FORMAT: \"http://127.0.0.1:9/ab/%s\", HTTP_REQUEST_METHOD: POST}\n    http_default_motan_method: {HTTP_REQUEST_METHOD: PUT}\n",
        );
        let p = spec(
            &[
                ("HTTP_URL", "http://10.211.55.3:9900/http_server"),
                ("HTTP_REQUEST_METHOD", "POST"),
            ],
            &HttpSections::default(),
        )
        .unwrap();
        match &p.mode {
            HttpMode::UrlFormat {
                url: Some(u),
                methods,
            } => {
                assert_eq!(u.url("/ignored"), "http://10.211.55.3:9900/http_server");
                assert!(methods.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.default_method, Method::POST);
        let p = spec(
            &[
                ("URL_FORMAT", "http://h:1%s?x=1"),
                ("HTTP_URL", "http://h:1%s?x=1"),
            ],
            &s,
        )
        .unwrap();
        let HttpMode::UrlFormat {
            url: Some(u),
            methods,
        } = &p.mode
        else {
            panic!()
        };
        assert_eq!(u.url("/m"), "http://h:1/m?x=1");
        assert_eq!(
            methods["a"].url.as_ref().unwrap().url("a"),
            "http://127.0.0.1:9/ab/a"
        );
        assert_eq!(methods["b"].method, Some(Method::POST));
        assert_eq!(methods[DEFAULT_METHOD_CONF].method, Some(Method::PUT));
        // http-service alone is enough when it has a URL.
        assert!(spec(&[], &s).is_ok());
        // ...but not without one.
        let s = sections("http-service:\n  svc:\n    a: {HTTP_REQUEST_METHOD: POST}\n");
        assert_eq!(spec(&[], &s).unwrap_err().key, keys::PROXY_ADDRESS);
    }

    #[test]
    fn http_service_errors_name_conf_id_and_method() {
        let root: BTreeMap<String, Value> = serde_yaml_ng::from_str(
            "http-service:\n  s1:\n    m: {URL_FORMAT: \"http://x/%s%s\"}\n  s2:\n    n: {HTTP_REQUEST_METHOD: \"G T\"}\n  s3: [1]\n",
        )
        .unwrap();
        let (_, errors) = HttpServiceFormats::from_section(root.get(HTTP_SERVICE_SECTION));
        let got: Vec<String> = errors.iter().map(|(id, e)| format!("{id} {}", e.key)).collect();
        assert_eq!(got, ["s1 m.URL_FORMAT", "s2 n.HTTP_REQUEST_METHOD", "s3 "]);
    }

    #[test]
    fn bad_values_name_their_keys() {
        let none = HttpSections::default();
        let err = |key: &str, value: &str| {
            spec(&[("proxyAddress", "127.0.0.1:8080"), (key, value)], &none)
                .err()
                .unwrap_or_else(|| panic!("{key}={value} accepted"))
                .to_string()
        };
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "http://127.0.0.1:80",
            "127.0.0.1:80/x",
            ":80",
            "a b:80",
        ] {
            assert!(
                err("proxyAddress", bad).starts_with("key proxyAddress: "),
                "{bad}"
            );
        }
        assert!(err("requestTimeout", "2s").starts_with("key requestTimeout: "));
        assert!(err("idleConnectionTimeout", "-1").starts_with("key idleConnectionTimeout: "));
        assert!(err("maxConnections", "0").starts_with("key maxConnections: "));
        assert!(err("maxContentLength", "big").starts_with("key maxContentLength: "));
        assert!(err("keepaliveTimeout", "x").starts_with("key keepaliveTimeout: "));
        assert!(err("domain", "a\nb").starts_with("key domain: "));
    }
}
