//! The Motan2 mesh: client role (route → cluster → pooled upstreams) and server role (export
//! listeners → local providers), built from the motan sections of the configuration. A reload
//! builds a new `Mesh` (adopting the old one's live connections) and swaps it in; requests in
//! flight finish on the one they started with.
pub mod channel;
pub mod cluster;
pub mod exporter;
pub mod http_provider;
pub mod router;
pub mod serve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use self::channel::Transport;
use self::cluster::Cluster;
use self::exporter::Exporter;
use self::router::Router;
use self::serve::{Handler, HandlerFuture, RequestContext};
use crate::config::motan::MotanConfig;
use crate::filter::FilterShared;
use crate::protocol::motan2::{DecodeLimits, Frame};
use crate::registry::{self, Registry};

/// How long start-up and reload wait for clusters to connect (motan-go `initClusterTimeout`
/// defaults to 10 s; loopback and LAN connects take milliseconds, so a shorter cap keeps a
/// reload with an unreachable endpoint from stalling).
pub const INIT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Mesh {
    pub router: Router,
    pub exporter: Exporter,
    pub registries: BTreeMap<String, Arc<dyn Registry>>,
    pub limits: DecodeLimits,
}

pub type MeshHandle = Arc<ArcSwap<Mesh>>;

impl Mesh {
    /// Build from the typed motan configuration and start following the registries. Errors
    /// name the section, entry and key. `previous` lends its live connections (reload).
    pub fn build(
        mc: &MotanConfig,
        transport: Transport,
        previous: Option<&Mesh>,
        filters: &Arc<FilterShared>,
    ) -> Result<Mesh, Vec<String>> {
        let mut errors = Vec::new();
        let mut registries: BTreeMap<String, Arc<dyn Registry>> = BTreeMap::new();
        for (id, url) in &mc.registries {
            match registry::from_url(url) {
                Ok(r) => {
                    registries.insert(id.clone(), r);
                }
                Err(e) => errors.push(format!("section motan-registry, entry {id}: {e}")),
            }
        }
        let mut clusters = Vec::new();
        for (id, refer) in &mc.refers {
            let old = previous.and_then(|p| p.router.clusters().iter().find(|c| &c.conf_id == id));
            match Cluster::new(
                id,
                refer.clone(),
                transport.clone(),
                old.map(|c| c.as_ref()),
                filters,
            ) {
                Ok(c) => clusters.push(c),
                Err(m) => errors.push(format!("section motan-refer, entry {id}: {m}")),
            }
        }
        let exporter = match Exporter::new(&mc.services, &transport, filters) {
            Ok(e) => Some(e),
            Err(es) => {
                errors.extend(es);
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        for c in &clusters {
            if let Err(m) = c.start(&registries) {
                errors.push(format!("section motan-refer, entry {}: {m}", c.conf_id));
            }
        }
        if !errors.is_empty() {
            for c in &clusters {
                c.stop();
            }
            return Err(errors);
        }
        Ok(Mesh {
            router: Router::new(clusters),
            exporter: exporter.unwrap_or_default(),
            registries,
            limits: transport.limits,
        })
    }

    /// Wait (bounded) until every cluster has its first endpoints connected.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + INIT_CLUSTER_TIMEOUT;
        for c in self.router.clusters() {
            if !c.wait_ready(deadline).await {
                tracing::warn!(cluster = %c.conf_id, "cluster not fully connected after {INIT_CLUSTER_TIMEOUT:?}; serving with what is available");
            }
        }
    }

    /// Stop following registries (a replaced mesh); connections close with their last user.
    pub fn stop(&self) {
        for c in self.router.clusters() {
            c.stop();
        }
    }

    pub fn status_json(&self) -> Value {
        json!({
            "clusters": self.router.clusters().iter().map(|c| c.status_json()).collect::<Vec<_>>(),
            "exports": self.exporter.exports().map(|e| json!({
                "name": e.conf_id,
                "service": e.service.path,
                "group": e.service.group,
                "port": e.port,
                "filters": e.chain.names(),
                "provider": match &e.provider {
                    exporter::Provider::Motan2 { pool } => json!({"type": "motan2", "address": pool.address(), "channels": pool.usage().0}),
                    exporter::Provider::Http(_) => json!({"type": "http", "address": e.service.param("proxyAddress").unwrap_or("")}),
                },
            })).collect::<Vec<_>>(),
            "registries": self.registries.iter().map(|(id, r)| json!({"name": id, "protocol": r.url().protocol})).collect::<Vec<_>>(),
        })
    }
}

fn peer_ip(ctx: &RequestContext) -> String {
    ctx.peer.ip().to_string()
}

/// The agent port (and intercepted Motan2 connections): client role.
pub struct ClientHandler(pub MeshHandle);

impl Handler for ClientHandler {
    fn handle(&self, req: Frame, ctx: RequestContext) -> HandlerFuture {
        let mesh = self.0.load_full();
        Box::pin(async move { Some(mesh.router.handle(req, &peer_ip(&ctx)).await) })
    }
}

/// An export port: server role.
pub struct ServerHandler {
    pub mesh: MeshHandle,
    pub port: u16,
}

impl Handler for ServerHandler {
    fn handle(&self, req: Frame, ctx: RequestContext) -> HandlerFuture {
        let mesh = self.mesh.load_full();
        let port = self.port;
        Box::pin(async move {
            Some(
                mesh.exporter
                    .handle(port, req, &peer_ip(&ctx), ctx.received)
                    .await,
            )
        })
    }
}
