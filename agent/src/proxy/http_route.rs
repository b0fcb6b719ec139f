//! The HTTP side of the client role (spec 4.13): `http-client` clusters. Each entry serves one
//! HTTP domain; a request path is matched against the domain's `http-locations` and the
//! location's `upstream` names the RPC service whose cluster carries the request (a cluster
//! per service, the entry's settings with `path` = the service, made at start for every
//! upstream of the domain and every `preload` service). A path no location matches, or whose
//! cluster has no endpoints, is not served here: the caller sends it as plain HTTP.
//!
//! An RPC on the agent port whose `M_p` is such a domain (and no refer's path) is served the
//! same way (motan-go's agent httpCall): `M_m` is the path; a served path goes to the service's
//! cluster as the RPC it is, anything else is mapped to plain HTTP to the domain (port 80) by
//! an HTTP provider of the domain (proxy mode, GET by default).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::outbound::Refer;
use crate::cluster::Cluster;
use crate::config::http_client::{HttpClientSpec, HttpProxySpec};
use crate::config::motan::MotanConfig;
use crate::filter::{FilterChain, FilterShared};
use crate::protocol::motan2::call::{E_NO_ENDPOINTS, mark_proxied};
use crate::protocol::motan2::{Frame, keys};
use crate::provider::http::HttpProvider;
use crate::upstream::channel::Transport;

/// One `http-client` entry, running.
pub struct HttpDomain {
    pub spec: HttpClientSpec,
    /// Service → its refer (filters around its cluster).
    services: HashMap<String, Refer>,
    /// Plain HTTP to the domain for RPCs no service serves.
    fallback: HttpProvider,
}

impl HttpDomain {
    /// The service and refer that serve `path`, when a location matches and the service's
    /// cluster has endpoints (motan-go falls back to plain HTTP on "no endpoints" too).
    pub fn route(&self, path: &str) -> Option<(&str, &Refer)> {
        let service = self.spec.locations.find(path)?.upstream.as_str();
        let refer = self.services.get(service)?;
        (refer.cluster.endpoint_count() > 0).then_some((service, refer))
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.services.values().map(|r| &r.cluster)
    }

    /// An RPC from the agent port for this domain (`M_p`): the service's cluster when `M_m`
    /// is a served path and it has endpoints, else plain HTTP to the domain.
    pub async fn call(&self, mut req: Frame, peer_ip: &Bytes) -> Frame {
        let started = Instant::now();
        mark_proxied(&mut req, peer_ip);
        let path = req.meta.get(keys::METHOD).unwrap_or_default().to_string();
        if let Some((service, refer)) = self.route(&path) {
            let mut rpc = req.clone();
            rpc.meta
                .insert(keys::SERVICE, Bytes::copy_from_slice(service.as_bytes()));
            let resp = refer.call(rpc).await;
            let no_endpoints = resp
                .as_response()
                .and_then(|r| r.exception())
                .is_some_and(|e| e.errcode == i64::from(E_NO_ENDPOINTS));
            if !no_endpoints {
                return resp;
            }
        }
        self.fallback.call(&req, started).await
    }
}

/// Every `http-client` domain, and the forward proxy's settings.
#[derive(Default)]
pub struct HttpRouter {
    domains: HashMap<String, HttpDomain>,
    pub proxy: HttpProxySpec,
}

impl HttpRouter {
    /// The clusters of every entry (not yet following their registries: the mesh starts
    /// discovery once everything is built). `previous` lends its live connections (reload).
    pub fn build(
        mc: &MotanConfig,
        transport: &Transport,
        filters: &Arc<FilterShared>,
        previous: Option<&HttpRouter>,
    ) -> Result<HttpRouter, Vec<String>> {
        let mut errors = Vec::new();
        let mut domains = HashMap::new();
        for (id, spec) in &mc.http_routes {
            let mut services = HashMap::new();
            for service in &spec.services {
                let name = format!("{id}/{service}");
                let refer = spec.service_refer(service);
                let old = previous
                    .and_then(|p| p.clusters().find(|c| c.conf_id == name))
                    .map(|c| c.as_ref());
                let made = FilterChain::build_refer(&refer, filters)
                    .map_err(|e| format!("key filter: {e}"))
                    .and_then(|chain| {
                        Ok(Refer {
                            cluster: Cluster::new(&name, refer, transport.clone(), old, &filters.breakers)?,
                            chain,
                        })
                    });
                match made {
                    Ok(r) => {
                        services.insert(service.clone(), r);
                    }
                    Err(m) => errors.push(format!("section http-client, entry {id}, service {service}: {m}")),
                }
            }
            let fallback = HttpProvider::new(&spec.domain, &spec.plain, &transport.sockets, transport.values);
            domains.insert(
                spec.domain.clone(),
                HttpDomain {
                    spec: spec.clone(),
                    services,
                    fallback,
                },
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(HttpRouter {
            domains,
            proxy: mc.http_proxy.clone(),
        })
    }

    pub fn domain(&self, host: &str) -> Option<&HttpDomain> {
        self.domains.get(host)
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.domains.values().flat_map(HttpDomain::clusters)
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.domains
                .values()
                .map(|d| {
                    serde_json::json!({
                        "name": d.spec.conf_id,
                        "domain": d.spec.domain,
                        "services": d.services.iter().map(|(s, r)| serde_json::json!({
                            "service": s,
                            "endpoints": r.cluster.endpoint_count(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}
