//! An HTTP provider's settings (spec 4.12), typed once from its service URL: `config validate`
//! reports exactly the errors `sockmesh run` would meet, and the provider is built from the
//! result without parsing again.
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderValue, Method};

use super::sections::SettingError;
use crate::url::{UNIX_SOCK_PREFIX, Url, parse_go_bool};

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
}

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_millis(5000);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 10 << 20;

/// What an HTTP provider needs, checked.
#[derive(Clone, Debug)]
pub struct HttpProviderSpec {
    /// `proxyAddress` (`host:port`).
    pub upstream: Authority,
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
}

impl HttpProviderSpec {
    /// Read the provider's settings from its service URL. `has_locations` tells whether
    /// `http-locations` rules exist for the service's domain (rewriting is not supported yet,
    /// so a service that would rewrite is refused rather than served differently).
    pub fn from_url(service: &Url, has_locations: bool) -> Result<HttpProviderSpec, SettingError> {
        let upstream = match service.param(keys::PROXY_ADDRESS) {
            Some(addr) => parse_proxy_address(addr).map_err(|m| SettingError::new(keys::PROXY_ADDRESS, m))?,
            None if service.param(keys::URL_FORMAT).is_some() => {
                return Err(SettingError::new(
                    keys::URL_FORMAT,
                    "URL_FORMAT providers are not supported by sockmesh yet; set proxyAddress (host:port)",
                ));
            }
            None => {
                return Err(SettingError::new(
                    keys::PROXY_ADDRESS,
                    "an http provider needs proxyAddress (host:port)",
                ));
            }
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
            Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| {
                SettingError::new(keys::HTTP_REQUEST_METHOD, format!("{m:?} is not an HTTP method"))
            })?,
        };
        // motan-go rewrites by default; without rules for the domain there is nothing to
        // rewrite and M_m is the path, which is what the provider does.
        if bool_param(service, keys::ENABLE_REWRITE, true)? && has_locations {
            return Err(SettingError::new(
                keys::ENABLE_REWRITE,
                "http-locations rewriting is not supported by sockmesh yet; set enableRewrite: false to use M_m as the path",
            ));
        }
        let keepalive = match service.param(keys::KEEPALIVE_TIMEOUT) {
            None => 0,
            Some(_) => u64_param(service, keys::KEEPALIVE_TIMEOUT)?,
        };
        Ok(HttpProviderSpec {
            upstream,
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
        })
    }
}

/// `host:port` with a non-zero port; a unix socket or a URL is refused.
fn parse_proxy_address(addr: &str) -> Result<Authority, String> {
    if addr.starts_with(UNIX_SOCK_PREFIX) {
        return Err(format!(
            "{addr:?}: unix sockets are not supported by sockmesh yet (use host:port)"
        ));
    }
    let bad = || format!("{addr:?} is not host:port");
    if addr.contains(['/', '@', '?', '#']) || addr.contains(char::is_whitespace) {
        return Err(bad());
    }
    let authority: Authority = addr.parse().map_err(|_| bad())?;
    match authority.port_u16() {
        Some(port) if port != 0 && !authority.host().is_empty() => Ok(authority),
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
        let mut u = Url::new("motan2", "", 0, "com.example.Hello", "g");
        for (k, v) in params {
            u = u.with_param(k, v);
        }
        u
    }

    /// (service parameters, http-locations exist, the key the refusal names)
    type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a str);

    #[test]
    fn every_refusal_names_its_key() {
        let cases: &[Case] = &[
            (&[], false, keys::PROXY_ADDRESS),
            (&[("URL_FORMAT", "http://x/{path}")], false, keys::URL_FORMAT),
            (
                &[("proxyAddress", "unix:///run/app.sock")],
                false,
                keys::PROXY_ADDRESS,
            ),
            (&[("proxyAddress", "127.0.0.1:0")], false, keys::PROXY_ADDRESS),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("proxySchema", "https")],
                false,
                keys::PROXY_SCHEMA,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("HTTP_REQUEST_METHOD", "G ET")],
                false,
                keys::HTTP_REQUEST_METHOD,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("requestTimeout", "0")],
                false,
                keys::REQUEST_TIMEOUT,
            ),
            (
                &[("proxyAddress", "127.0.0.1:80"), ("enableHttpException", "maybe")],
                false,
                keys::ENABLE_HTTP_EXCEPTION,
            ),
            (&[("proxyAddress", "127.0.0.1:80")], true, keys::ENABLE_REWRITE),
        ];
        for (params, locations, key) in cases {
            let e = HttpProviderSpec::from_url(&service(params), *locations).unwrap_err();
            assert_eq!(e.key, *key, "{params:?}: {e}");
        }
    }

    #[test]
    fn defaults_and_accepted_values() {
        let s = HttpProviderSpec::from_url(&service(&[("proxyAddress", "127.0.0.1:8080")]), false).unwrap();
        assert_eq!(s.upstream.as_str(), "127.0.0.1:8080");
        assert_eq!(s.default_method, Method::GET);
        assert_eq!(s.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let s = HttpProviderSpec::from_url(
            &service(&[
                ("proxyAddress", "localhost:81"),
                ("HTTP_REQUEST_METHOD", "POST"),
                ("enableRewrite", "false"),
                ("keepaliveTimeout", "3000"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(s.default_method, Method::POST);
        assert!(s.keepalive_timeout_ignored);
    }

    #[test]
    fn new_rejects_bad_keys_naming_them() {
        let base =
            Url::new("motan2", "", 0, "api.hello.com", "g").with_param("proxyAddress", "127.0.0.1:8080");
        assert!(HttpProviderSpec::from_url(&base, false).is_ok());
        let err = |key: &str, value: &str| {
            HttpProviderSpec::from_url(&base.clone().with_param(key, value), false)
                .err()
                .unwrap_or_else(|| panic!("{key}={value} accepted"))
                .to_string()
        };
        let e = err("proxyAddress", "unix:///run/app.sock");
        assert!(
            e.starts_with("key proxyAddress: ") && e.contains("not supported"),
            "{e}"
        );
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
        assert!(err("proxySchema", "https").starts_with("key proxySchema: "));
        assert!(err("requestTimeout", "2s").starts_with("key requestTimeout: "));
        assert!(err("requestTimeout", "0").starts_with("key requestTimeout: "));
        assert!(err("idleConnectionTimeout", "-1").starts_with("key idleConnectionTimeout: "));
        assert!(err("maxConnections", "0").starts_with("key maxConnections: "));
        assert!(err("maxContentLength", "big").starts_with("key maxContentLength: "));
        assert!(err("enableHttpException", "yes").starts_with("key enableHttpException: "));
        assert!(err("enableRewrite", "maybe").starts_with("key enableRewrite: "));
        assert!(err("keepaliveTimeout", "x").starts_with("key keepaliveTimeout: "));
        assert!(err("HTTP_REQUEST_METHOD", "G T").starts_with("key HTTP_REQUEST_METHOD: "));
        assert!(err("domain", "a\nb").starts_with("key domain: "));
        // Accepted: IPv6 literal, named host, explicit http schema, rewrite flag (warned).
        for (k, v) in [
            ("proxyAddress", "[::1]:8080"),
            ("proxyAddress", "localhost:8080"),
            ("proxySchema", "http"),
            ("enableRewrite", "true"),
            ("keepaliveTimeout", "0"),
        ] {
            assert!(
                HttpProviderSpec::from_url(&base.clone().with_param(k, v), false).is_ok(),
                "{k}={v}"
            );
        }
    }
}
