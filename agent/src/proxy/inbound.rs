//! The server role (4.11): export listeners hand requests to local providers, keyed by
//! `group_path`. A `motan2` provider is a reverse proxy to a local Motan2 server (the original
//! frame is forwarded, proxy bit set); an `http` provider maps the call to HTTP (4.12).
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cluster::oneway_answer;
use crate::config::refer::{PerMethod, TimeoutSettings};
use crate::config::service::{ProviderSpec, ServiceSpec};
use crate::filter::{CallInfo, FilterChain, FilterShared, Role};
use crate::meta;
use crate::protocol::motan2::breeze::encode_string_map;
use crate::protocol::motan2::call::{CallError, error_frame, host, mark_proxied};
use crate::protocol::motan2::frame::{FLAG_PROXY, serialization};
use crate::protocol::motan2::{Frame, keys};
use crate::provider::http::HttpProvider;
use crate::upstream::Deadline;
use crate::upstream::channel::Transport;
use crate::upstream::pool::Pool;
use crate::url::Url;

/// Connections from the server agent to one local backend.
const BACKEND_CONNECTIONS: usize = 3;

pub enum Provider {
    Motan2 { pool: Arc<Pool> },
    Http(Arc<crate::provider::http::HttpProvider>),
}

pub struct Export {
    pub conf_id: String,
    /// The service's filters, around the provider call.
    pub chain: FilterChain,
    pub service: Arc<Url>,
    pub port: u16,
    pub provider: Provider,
    /// Call timeouts per method, resolved once.
    timeouts: PerMethod<TimeoutSettings>,
}

impl Export {
    /// The URL registered for this export: this agent's IP and export port (4.11 step 1).
    pub fn registration_url(&self, local_ip: &str) -> Url {
        let mut u = (*self.service).clone();
        u.protocol = "motan2".into();
        u.host = local_ip.to_string();
        u.port = self.port;
        u.params.insert("nodeType".into(), "service".into());
        u
    }
}

#[derive(Default)]
pub struct Exporter {
    /// (export port, `group_path`) → export.
    by_key: HashMap<(u16, String), Arc<Export>>,
    ports: BTreeSet<u16>,
}

fn service_key(group: &str, path: &str) -> String {
    format!("{group}_{path}")
}

impl Exporter {
    /// One export per service spec (checked by the configuration: unique per port, group and
    /// path); errors name the entry and key.
    pub fn new(
        services: &std::collections::BTreeMap<String, ServiceSpec>,
        transport: &Transport,
        filters: &Arc<FilterShared>,
    ) -> Result<Exporter, Vec<String>> {
        let mut e = Exporter::default();
        let mut errors = Vec::new();
        for (id, spec) in services {
            match Self::export(id, spec, transport, filters) {
                Ok(x) => {
                    e.ports.insert(x.port);
                    let key = (x.port, service_key(&spec.url.group, &spec.url.path));
                    e.by_key.insert(key, Arc::new(x));
                }
                Err(m) => errors.push(format!("section motan-service, entry {id}: {m}")),
            }
        }
        if errors.is_empty() { Ok(e) } else { Err(errors) }
    }

    fn export(
        id: &str,
        spec: &ServiceSpec,
        transport: &Transport,
        filters: &Arc<FilterShared>,
    ) -> Result<Export, String> {
        let chain = FilterChain::build(&spec.url, filters).map_err(|e| format!("key filter: {e}"))?;
        let provider = match &spec.provider {
            ProviderSpec::Motan2 { backend } => Provider::Motan2 {
                pool: Arc::new(Pool::new(
                    backend.to_string(),
                    BACKEND_CONNECTIONS,
                    transport.clone(),
                )),
            },
            ProviderSpec::Http(http) => Provider::Http(Arc::new(HttpProvider::new(
                &spec.url.path,
                http,
                &transport.sockets,
                transport.values,
            ))),
        };
        Ok(Export {
            conf_id: id.to_string(),
            chain,
            service: Arc::new(spec.url.clone()),
            port: spec.export_port,
            provider,
            timeouts: spec.timeouts.clone(),
        })
    }

    pub fn ports(&self) -> &BTreeSet<u16> {
        &self.ports
    }

    pub fn exports(&self) -> impl Iterator<Item = &Arc<Export>> {
        self.by_key.values()
    }

    /// Dispatch one request that arrived on export `port` (heartbeats never get here).
    pub async fn handle(&self, port: u16, mut req: Frame, peer_ip: &Bytes, received: Instant) -> Frame {
        let id = req.header.request_id;
        if req.meta.get_non_empty(keys::FRAMEWORK_SERVICE).is_some() {
            if req.meta.get(keys::SERVICE) == Some(meta::META_SERVICE) {
                return meta_response(&req, received);
            }
            // 501 so that callers do not trip circuit breakers (4.11).
            return error_frame(id, &CallError::service(501, meta::SERVICE_NOT_SUPPORT));
        }
        let group = req
            .meta
            .get_non_empty(keys::GROUP)
            .or_else(|| req.meta.get_non_empty("group"))
            .unwrap_or("");
        let key = (
            port,
            service_key(group, req.meta.get(keys::SERVICE).unwrap_or("")),
        );
        let Some(export) = self.by_key.get(&key).cloned() else {
            let e = CallError::service(404, format!("provider not exist serviceKey={}", key.1));
            return error_frame(id, &e);
        };
        mark_proxied(&mut req, peer_ip);
        let mut resp = if export.chain.is_empty() {
            Self::provide(&export, req, peer_ip, received).await
        } else {
            let info = CallInfo::from_request(Role::ServerAgent, &req, export.service.clone(), host(&req));
            let terminal = |r: Frame| Self::provide(&export, r, peer_ip, received);
            export.chain.call(req, &info, terminal).await
        };
        resp.header.set_flag(FLAG_PROXY, true);
        resp.set_process_time_if_absent(received.elapsed());
        resp
    }

    /// The provider call itself (inside the filters).
    async fn provide(export: &Export, mut req: Frame, peer_ip: &Bytes, received: Instant) -> Frame {
        let id = req.header.request_id;
        match &export.provider {
            Provider::Http(h) => h.call(&req, received).await,
            Provider::Motan2 { pool } => {
                if !req.meta.contains("x-forwarded-for") && !req.meta.contains("X-Forwarded-For") {
                    req.meta.insert("x-forwarded-for", peer_ip.clone());
                }
                let m = &req.meta;
                let timeout = export
                    .timeouts
                    .get(
                        m.get(keys::METHOD).unwrap_or(""),
                        m.get(keys::METHOD_DESC).unwrap_or(""),
                    )
                    .for_request(m.get(keys::TIMEOUT));
                let deadline = Deadline::after(timeout.max(Duration::from_millis(1)));
                let r = if req.header.is_oneway() {
                    pool.send_oneway(&req, deadline)
                        .await
                        .map(|()| oneway_answer(&req))
                } else {
                    pool.call(&req, deadline).await
                };
                r.unwrap_or_else(|e| error_frame(id, &e))
            }
        }
    }
}

/// motan-go's MetaProvider: the dynamic meta as a Breeze `map[string]string` (serialization 8),
/// whatever the method, past the services' filters.
fn meta_response(req: &Frame, received: Instant) -> Frame {
    let mut resp = Frame::response_to(req, encode_string_map(&meta::all()));
    resp.header.set_serialization(serialization::BREEZE);
    resp.header.set_flag(FLAG_PROXY, true);
    resp.set_process_time_if_absent(received.elapsed());
    resp
}
