//! A service the server role exports, typed once from its `motan-service` entry: the export
//! port, the provider behind it and (for HTTP providers) all their settings. Validation and
//! the running exporter both use [`ServiceSpec::from_url`].
use std::net::SocketAddr;

use super::http::{HttpMode, HttpProviderSpec, HttpSections, ProxyAddress};
use super::refer::{PerMethod, TimeoutSettings};
use super::sections::SettingError;
use crate::url::{Url, keys, parse_go_bool};

/// Export protocols the server role speaks.
pub const EXPORT_PROTOCOLS: [&str; 2] = ["motan2", "motan"];
/// Providers the server role can call.
pub const PROVIDERS: [&str; 3] = ["motan2", "motan", "http"];
/// motan-go's default export.
pub const DEFAULT_EXPORT: &str = "motan2:9982";

#[derive(Clone, Debug)]
pub enum ProviderSpec {
    /// A local Motan2 backend (`proxy: motan2:<port>`, `proxy.host` default 127.0.0.1).
    Motan2 {
        backend: SocketAddr,
    },
    Http(HttpProviderSpec),
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// The service URL as registered (group, path and parameters).
    pub url: Url,
    pub export_port: u16,
    pub provider: ProviderSpec,
    /// Per-method call timeouts of the provider (`requestTimeout` and its method overrides).
    pub timeouts: PerMethod<TimeoutSettings>,
    /// `sockmesh.sockmap` (default false): the local legs of this export (an agent on this host
    /// dialling the export port, the export dialling a provider on this host) go into the
    /// sockhash, so sk_msg moves their data without the loopback TCP stack.
    pub sockmap: bool,
}

impl ServiceSpec {
    /// `http`: the sections an HTTP provider reads (`http-locations`, `http-service`).
    pub fn from_url(url: &Url, http: &HttpSections) -> Result<ServiceSpec, SettingError> {
        let (proto, export_port) = parse_protocol_port(url.get_str(keys::EXPORT, DEFAULT_EXPORT))
            .map_err(|m| SettingError::new(keys::EXPORT, m))?;
        if !EXPORT_PROTOCOLS.contains(&proto.as_str()) {
            return Err(SettingError::new(
                keys::EXPORT,
                format!(
                    "unsupported export protocol {proto:?} (expected {})",
                    EXPORT_PROTOCOLS.join(", ")
                ),
            ));
        }
        let proxy = url
            .param(keys::PROXY)
            .map(|p| parse_protocol_port(p).map_err(|m| SettingError::new(keys::PROXY, m)))
            .transpose()?;
        // `provider`, else the protocol part of `proxy`, else upstream's in-process `default`
        // (which sockmesh cannot have).
        let (provider, key) = match (url.param(keys::PROVIDER).filter(|p| !p.is_empty()), &proxy) {
            (Some(p), _) => (p.to_string(), keys::PROVIDER),
            (None, Some((proto, _))) => (proto.clone(), keys::PROXY),
            (None, None) => ("default".to_string(), keys::PROVIDER),
        };
        let provider = match provider.as_str() {
            "motan2" | "motan" => {
                let Some((_, port)) = proxy else {
                    return Err(SettingError::new(
                        keys::PROXY,
                        format!("provider {provider} needs proxy: \"[protocol:]port\" of the local backend"),
                    ));
                };
                let host = url.get_str("proxy.host", "127.0.0.1");
                let backend = format!("{host}:{port}")
                    .parse::<SocketAddr>()
                    .map_err(|_| SettingError::new("proxy.host", format!("{host:?} is not an IP address")))?;
                ProviderSpec::Motan2 { backend }
            }
            "http" => ProviderSpec::Http(HttpProviderSpec::from_url(url, http)?),
            other => {
                return Err(SettingError::new(
                    key,
                    format!(
                        "unsupported provider {other:?} (expected {}; set provider or proxy)",
                        PROVIDERS.join(", ")
                    ),
                ));
            }
        };
        let sockmap = match url.param(keys::SOCKMAP) {
            None => false,
            Some(v) => parse_go_bool(v).ok_or_else(|| {
                SettingError::new(keys::SOCKMAP, format!("{v:?} is not a boolean (true or false)"))
            })?,
        };
        Ok(ServiceSpec {
            url: url.clone(),
            export_port,
            provider,
            timeouts: TimeoutSettings::per_method(url),
            sockmap,
        })
    }

    /// The ports whose local legs `sockmesh.sockmap` short-circuits: the export port and the
    /// provider's port (a Motan2 backend, an HTTP provider's TCP `proxyAddress`). The kernel
    /// program only takes connections the agent dials to an address of this host.
    pub fn sockmap_ports(&self) -> Vec<u16> {
        if !self.sockmap {
            return Vec::new();
        }
        let mut ports = vec![self.export_port];
        match &self.provider {
            ProviderSpec::Motan2 { backend } => ports.push(backend.port()),
            ProviderSpec::Http(h) => {
                if let HttpMode::Proxy {
                    address: ProxyAddress::Tcp(a),
                    ..
                } = &h.mode
                {
                    ports.push(a.port_u16().unwrap_or(80));
                }
            }
        }
        ports
    }

    /// Services on one export port are told apart by group and path.
    pub fn export_key(&self) -> (u16, &str, &str) {
        (self.export_port, &self.url.group, &self.url.path)
    }
}

/// `[protocol:]port` (export, proxy): protocol defaults to motan2.
pub fn parse_protocol_port(v: &str) -> Result<(String, u16), String> {
    let (proto, port) = match v.rsplit_once(':') {
        Some((proto, port)) => (proto.trim(), port.trim()),
        None => ("motan2", v.trim()),
    };
    if proto.is_empty() {
        return Err(format!("{v:?} is not [protocol:]port (empty protocol)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((proto.to_string(), p)),
        _ => Err(format!("{v:?} is not [protocol:]port (port must be 1..65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(params: &[(&str, &str)]) -> Url {
        let mut u = Url::new("motan2", "", 0, "com.example.Hello", "g");
        for (k, v) in params {
            u = u.with_param(k, v);
        }
        u
    }

    #[test]
    fn providers_and_their_keys() {
        let s = ServiceSpec::from_url(
            &url(&[("export", "motan2:8100"), ("proxy", "motan2:9100")]),
            &HttpSections::default(),
        )
        .unwrap();
        assert_eq!(s.export_port, 8100);
        assert!(matches!(s.provider, ProviderSpec::Motan2 { backend } if backend.port() == 9100));
        assert!(!s.sockmap && s.sockmap_ports().is_empty());
        let on = ServiceSpec::from_url(
            &url(&[
                ("export", "motan2:8100"),
                ("proxy", "motan2:9100"),
                ("sockmesh.sockmap", "true"),
            ]),
            &HttpSections::default(),
        )
        .unwrap();
        assert_eq!(on.sockmap_ports(), vec![8100, 9100]);
        let s = ServiceSpec::from_url(
            &url(&[("provider", "http"), ("proxyAddress", "127.0.0.1:80")]),
            &HttpSections::default(),
        )
        .unwrap();
        assert_eq!(s.export_port, 9982);
        assert!(matches!(s.provider, ProviderSpec::Http(_)));
        for (params, key) in [
            (&[][..], keys::PROVIDER),
            (&[("provider", "motan2")][..], keys::PROXY),
            (&[("proxy", "grpc:9100")][..], keys::PROXY),
            (
                &[("proxy", "motan2:9100"), ("proxy.host", "localhost")][..],
                "proxy.host",
            ),
            (&[("export", "http:80"), ("proxy", "9100")][..], keys::EXPORT),
            (&[("export", "motan2:0"), ("proxy", "9100")][..], keys::EXPORT),
            (
                &[("proxy", "9100"), ("sockmesh.sockmap", "yes")][..],
                keys::SOCKMAP,
            ),
        ] {
            let e = ServiceSpec::from_url(&url(params), &HttpSections::default()).unwrap_err();
            assert_eq!(e.key, key, "{params:?}: {e}");
        }
    }
}
