//! The Motan2 mesh: client role (route → cluster → pooled upstreams) and server role (export
//! listeners → local providers), built from the motan sections of the configuration. A reload
//! builds a new `Mesh` (adopting the old one's live connections) and swaps it in; requests in
//! flight finish on the one they started with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use super::http_route::HttpRouter;
use super::inbound::{self, Exporter};
use super::outbound::{Refer, Router};
use super::serve::{Handler, RequestContext};
use crate::cluster::{Cluster, EndpointList, discovery};
use crate::config::motan::MotanConfig;
use crate::config::registry::RegistrySpec;
use crate::filter::{FilterChain, FilterShared};
use crate::locks::Locked;
use crate::protocol::motan2::{DecodeLimits, Frame, keys};
use crate::registry::{self, Registry};
use crate::upstream::channel::Transport;

/// Agent-wide settings the mesh needs besides the motan sections.
#[derive(Clone)]
pub struct MeshOptions {
    pub transport: Transport,
    /// The IP this agent registers its exports with and route rules match (`motan-agent`
    /// `localIP`, else the address that reaches the first ZooKeeper, else 127.0.0.1).
    pub local_ip: String,
    pub application: String,
    /// Registry snapshots (`motan-agent` `snapshot_dir`).
    pub snapshot_dir: std::path::PathBuf,
    pub filters: Arc<FilterShared>,
    /// The agent's own node (`/motan/agent/<application>/node/<ip:port>`) goes into these
    /// registries (`motan-agent` `registry`), with the agent port.
    pub agent_registries: Vec<String>,
    pub agent_port: u16,
    pub overrides: Arc<std::sync::Mutex<crate::registry::command::SwitcherOverrides>>,
    /// `-idc` (empty without): resolves `${idc}` in refer groups when clusters start.
    pub idc: String,
    /// The local short-cut (`sockmesh.local_shortcut`): `None` when off.
    pub local: Option<Arc<LocalShortcut>>,
}

/// The local short-cut (issue #17): a refer's endpoint that is one of this agent's own export
/// listeners is served in-process by the current mesh's server role ([`Exporter::handle`], as
/// [`ServerHandler`] would) instead of over a TCP connection to itself. One per agent, kept
/// across reloads. The listeners are those of the first mesh built (the ones bound at start);
/// calls are served once [`LocalShortcut::attach`]ed to the running mesh.
pub struct LocalShortcut {
    /// The export listeners' address and the default export port (bound even when unused).
    bind: std::net::Ipv4Addr,
    eport: u16,
    ports: std::sync::OnceLock<std::collections::BTreeSet<u16>>,
    mesh: std::sync::OnceLock<std::sync::Weak<ArcSwap<Mesh>>>,
    /// Hosts already checked: whether they are addresses of this host.
    hosts: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

impl LocalShortcut {
    pub fn new(bind: std::net::Ipv4Addr, eport: u16) -> LocalShortcut {
        LocalShortcut {
            bind,
            eport,
            ports: Default::default(),
            mesh: Default::default(),
            hosts: Default::default(),
        }
    }

    /// The export ports of the first mesh built: the listeners bound at start.
    fn listen_on(&self, exporter: &Exporter) {
        self.ports.get_or_init(|| {
            let mut ports = exporter.ports().clone();
            ports.insert(self.eport);
            ports
        });
    }

    /// Serve calls through `mesh` (the running mesh, whichever a reload swapped in).
    pub fn attach(&self, mesh: &MeshHandle) {
        let _ = self.mesh.set(Arc::downgrade(mesh));
    }

    /// Whether a TCP connect to `host` would reach a listener bound at `bind`: the bind
    /// address itself, or, for a wildcard bind, any address of this host (one that a socket
    /// can bind to; checked once per host).
    fn reaches(&self, host: &str, bind: std::net::Ipv4Addr) -> bool {
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return host == "localhost" && (bind.is_unspecified() || bind.is_loopback());
        };
        if !bind.is_unspecified() {
            return ip == std::net::IpAddr::V4(bind);
        }
        if ip.is_loopback() {
            return true;
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        let mut hosts = crate::locks::Locked::locked(&self.hosts);
        *hosts
            .entry(host.to_string())
            .or_insert_with(|| std::net::UdpSocket::bind((ip, 0)).is_ok())
    }
}

impl crate::cluster::local::LocalExports for LocalShortcut {
    fn is_local(&self, endpoint: &crate::url::Url) -> bool {
        let Some(ports) = self.ports.get() else {
            return false;
        };
        ports.contains(&endpoint.port) && self.reaches(&endpoint.host, self.bind)
    }

    fn call(
        &self,
        port: u16,
        req: Frame,
        peer_ip: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = Frame> + Send>> {
        let mesh = self.mesh.get().and_then(|m| m.upgrade()).map(|m| m.load_full());
        Box::pin(async move {
            match mesh {
                Some(m) => {
                    m.exporter
                        .handle(port, req, &peer_ip, std::time::Instant::now())
                        .await
                }
                None => {
                    let e = crate::protocol::motan2::call::CallError::service(503, "agent is not serving");
                    crate::protocol::motan2::call::error_frame(req.header.request_id, &e)
                }
            }
        })
    }
}

pub struct Mesh {
    pub router: Router,
    /// `http-client` domains (HTTP over Motan2, hport and intercepted HTTP).
    pub http: HttpRouter,
    pub exporter: Exporter,
    pub registries: BTreeMap<String, Arc<dyn Registry>>,
    /// Server role: (registry, URL registered there) of every export.
    pub registrations: Vec<(Arc<dyn Registry>, crate::url::Url)>,
    /// The agent's own node per registry (`motan-agent` `registry`).
    pub agent_nodes: Vec<(Arc<dyn Registry>, crate::url::Url)>,
    pub limits: DecodeLimits,
    /// The outcome of the last registry call for each of `registrations` (same order), for
    /// motan-go's `/registry/status`.
    pub registration_status: Vec<std::sync::Mutex<RegistrationStatus>>,
}

/// Where one registration stands after the agent's last call to its registry, in motan-go's
/// words (core/constants.go: `register-success`, `register-failed`, `unregister-success`,
/// `unregister-failed`, `not-register`) with the error of a failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub status: &'static str,
    pub error: String,
}

impl Default for RegistrationStatus {
    fn default() -> RegistrationStatus {
        RegistrationStatus {
            status: NOT_REGISTER,
            error: String::new(),
        }
    }
}

pub const REGISTER_SUCCESS: &str = "register-success";
pub const REGISTER_FAILED: &str = "register-failed";
pub const UNREGISTER_SUCCESS: &str = "unregister-success";
pub const UNREGISTER_FAILED: &str = "unregister-failed";
pub const NOT_REGISTER: &str = "not-register";

pub type MeshHandle = Arc<ArcSwap<Mesh>>;

impl Mesh {
    /// Build from the typed motan configuration and start following the registries. Errors
    /// name the section, entry and key. `previous` lends its live connections (reload).
    pub fn build(mc: &MotanConfig, opts: &MeshOptions, previous: Option<&Mesh>) -> Result<Mesh, Vec<String>> {
        let (transport, filters) = (opts.transport.clone(), &opts.filters);
        let mut errors = Vec::new();
        let mut registries: BTreeMap<String, Arc<dyn Registry>> = BTreeMap::new();
        for (id, url) in &mc.registries {
            // A registry whose URL did not change is kept (a ZooKeeper session and its
            // ephemeral nodes survive the reload).
            if let Some(old) = previous
                .and_then(|p| p.registries.get(id))
                .filter(|r| r.url() == url)
            {
                registries.insert(id.clone(), old.clone());
                continue;
            }
            // Built from the spec `config validate` checked. A ZooKeeper registry keeps its
            // snapshot in the agent's directory unless the entry names its own.
            let made = RegistrySpec::from_url(url)
                .map_err(|e| e.to_string())
                .and_then(|mut spec| {
                    if let RegistrySpec::Zookeeper(z) = &mut spec {
                        z.snapshot_dir.get_or_insert_with(|| opts.snapshot_dir.clone());
                    }
                    let zk = registry::ZkOptions {
                        snapshot_dir: None,
                        local_ip: Some(opts.local_ip.clone()),
                        ..Default::default()
                    };
                    registry::build(url, spec, zk).map_err(|e| e.to_string())
                });
            match made {
                Ok(r) => {
                    registries.insert(id.clone(), r);
                }
                Err(e) => errors.push(format!("section motan-registry, entry {id}: {e}")),
            }
        }
        let mut refers = Vec::new();
        for (id, refer) in &mc.refers {
            let old = previous.and_then(|p| p.router.clusters().find(|c| &c.conf_id == id));
            let chain = FilterChain::build_refer(refer, filters).map_err(|e| format!("key filter: {e}"));
            let cluster = Cluster::new(
                id,
                refer.clone(),
                transport.clone(),
                old.map(|c| c.as_ref()),
                &filters.breakers,
            );
            match chain.and_then(|chain| {
                Ok(Refer {
                    cluster: cluster?,
                    chain,
                })
            }) {
                Ok(r) => refers.push(r),
                Err(m) => errors.push(format!("section motan-refer, entry {id}: {m}")),
            }
        }
        let http =
            HttpRouter::build(mc, &transport, filters, previous.map(|p| &p.http)).unwrap_or_else(|es| {
                errors.extend(es);
                HttpRouter::default()
            });
        let exporter = match Exporter::new(&mc.exports, &transport, filters) {
            Ok(e) => Some(e),
            Err(es) => {
                errors.extend(es);
                None
            }
        };
        let exporter = exporter.unwrap_or_default();
        let mut registrations = Vec::new();
        for e in exporter.exports() {
            let ids = e.service.get_list(crate::url::keys::REGISTRY);
            for id in ids {
                match registries.get(id) {
                    Some(r) => registrations.push((r.clone(), e.registration_url(&opts.local_ip))),
                    None => errors.push(format!(
                        "section motan-service, entry {}, key registry: no motan-registry entry {id:?}",
                        e.conf_id
                    )),
                }
            }
        }
        let mut agent_nodes = Vec::new();
        for id in &opts.agent_registries {
            match registries.get(id) {
                Some(r) => {
                    let url = crate::url::Url::new("motan2", &opts.local_ip, opts.agent_port, "", "")
                        .with_param(crate::url::keys::APPLICATION, &opts.application)
                        .with_param("nodeType", "agent");
                    agent_nodes.push((r.clone(), url));
                }
                None => errors.push(format!(
                    "section motan-agent, key registry: no motan-registry entry {id:?}"
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Everything checked: only now do clusters start following their registries.
        let ctx = discovery::DiscoveryContext {
            local_ip: opts.local_ip.clone(),
            application: opts.application.clone(),
            switchers: filters.switchers.clone(),
            overrides: opts.overrides.clone(),
            idc: opts.idc.clone(),
            ping: crate::cluster::idc::icmp_ping(),
        };
        // Sockets made in another namespace do not reach this agent's listeners.
        if let Some(l) = opts
            .local
            .as_ref()
            .filter(|_| !transport.sockets.in_other_namespace())
        {
            l.listen_on(&exporter);
            for r in &refers {
                r.cluster.set_local(l.clone());
            }
        }
        for c in refers.iter().map(|r| &r.cluster).chain(http.clusters()) {
            if let Err(m) = discovery::start(c, &registries, &ctx) {
                errors.push(format!("section motan-refer, entry {}: {m}", c.conf_id));
            }
        }
        if !errors.is_empty() {
            for c in refers.iter().map(|r| &r.cluster).chain(http.clusters()) {
                c.stop();
            }
            return Err(errors);
        }
        Ok(Mesh {
            agent_nodes,
            router: Router::new(refers),
            http,
            exporter,
            registries,
            registration_status: registrations.iter().map(|_| Default::default()).collect(),
            registrations,
            limits: transport.limits,
        })
    }

    /// Server role: register every export in its registries (as unavailable), then make them
    /// available when the agent is online (4.9, 4.15). Failures are logged; a ZooKeeper
    /// registry retries by itself.
    pub async fn register(&self, online: bool) {
        for (r, url) in &self.agent_nodes {
            if let Err(e) = r.register_agent(url).await {
                tracing::warn!("agent node registration failed: {e}");
            }
        }
        for (i, (r, url)) in self.registrations.iter().enumerate() {
            // Registered as unavailable is "unregistered" for callers (motan-go's meaning).
            let mut st = match r.register(url).await {
                Ok(()) => (UNREGISTER_SUCCESS, String::new()),
                Err(e) => {
                    tracing::warn!(service = %url.path, "register failed: {e}");
                    let s = if online { REGISTER_FAILED } else { NOT_REGISTER };
                    (s, e.to_string())
                }
            };
            if online && st.0 == UNREGISTER_SUCCESS {
                st = match r.available(Some(url)).await {
                    Ok(()) => (REGISTER_SUCCESS, String::new()),
                    Err(e) => {
                        tracing::warn!(service = %url.path, "available failed: {e}");
                        (REGISTER_FAILED, e.to_string())
                    }
                };
            }
            self.set_registration_status(i, st);
        }
    }

    fn set_registration_status(&self, i: usize, (status, error): (&'static str, String)) {
        if let Some(m) = self.registration_status.get(i) {
            *m.locked() = RegistrationStatus { status, error };
        }
    }

    /// Each registration with the outcome of the last registry call for it.
    pub fn registrations_with_status(&self) -> Vec<(&crate::url::Url, RegistrationStatus)> {
        self.registrations
            .iter()
            .zip(&self.registration_status)
            .map(|((_, u), s)| (u, s.locked().clone()))
            .collect()
    }

    /// `/200` and `/503`: every registered export becomes available or unavailable.
    pub async fn set_online(&self, online: bool) {
        for (i, (r, url)) in self.registrations.iter().enumerate() {
            let res = if online {
                r.available(Some(url)).await
            } else {
                r.unavailable(Some(url)).await
            };
            let st = match (res, online) {
                (Ok(()), true) => (REGISTER_SUCCESS, String::new()),
                (Ok(()), false) => (UNREGISTER_SUCCESS, String::new()),
                (Err(e), _) => {
                    tracing::warn!(service = %url.path, online, "registry update failed: {e}");
                    let s = if online {
                        REGISTER_FAILED
                    } else {
                        UNREGISTER_FAILED
                    };
                    (s, e.to_string())
                }
            };
            self.set_registration_status(i, st);
        }
    }

    /// Remove registrations this mesh has and `next` does not (reload), or all (`None`, shutdown).
    pub async fn unregister(&self, next: Option<&Mesh>) {
        for (r, url) in &self.registrations {
            let kept = next.is_some_and(|n| {
                n.registrations
                    .iter()
                    .any(|(r2, u2)| Arc::ptr_eq(r, r2) && u2.identity() == url.identity())
            });
            if !kept && let Err(e) = r.unregister(url).await {
                tracing::warn!(service = %url.path, "unregister failed: {e}");
            }
        }
    }

    /// Each registry's own status, with the id it has in `motan-registry`.
    fn registries_json(&self) -> Vec<Value> {
        self.registries
            .iter()
            .map(|(id, r)| {
                let mut s = r.status();
                if let Some(o) = s.as_object_mut() {
                    o.insert("name".into(), json!(id));
                }
                s
            })
            .collect()
    }

    pub fn registry_json(&self) -> Value {
        json!({
            "registries": self.registries_json(),
            "registrations": self.registrations.iter().map(|(r, u)| json!({
                "registry": r.url().identity(), "service": u.path, "group": u.group, "address": u.address(),
            })).collect::<Vec<_>>(),
            "subscriptions": self.router.clusters().map(|c| json!({
                "cluster": c.conf_id, "service": c.refer().path, "group": c.refer().group,
                "registries": c.refer().get_list(crate::url::keys::REGISTRY),
                "endpoints": c.endpoint_count(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Wait (at most `timeout`, motan-agent `initClusterTimeout`) until every cluster has its
    /// first endpoints connected.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for c in self.router.clusters().chain(self.http.clusters()) {
            if !c.wait_ready(deadline).await {
                tracing::warn!(cluster = %c.conf_id, "cluster not fully connected after {timeout:?}; serving with what is available");
            }
        }
    }

    /// Stop following registries (a replaced mesh); connections close with their last user.
    pub fn stop(&self) {
        for c in self.router.clusters().chain(self.http.clusters()) {
            c.stop();
        }
    }

    /// The mesh's status with every endpoint of every cluster (`/metrics`).
    /// Every cluster's endpoint health (name, service, health) for `/metrics`, with at most
    /// `max_rows` endpoint rows in all ([`crate::cluster::Cluster::health`]).
    pub fn endpoint_health(&self, max_rows: usize) -> Vec<(String, String, crate::cluster::ClusterHealth)> {
        let mut budget = max_rows;
        self.router
            .refers()
            .iter()
            .map(|r| {
                let h = r.cluster.health(budget);
                budget -= h.listed.len();
                (r.cluster.conf_id.clone(), r.cluster.refer().path.clone(), h)
            })
            .collect()
    }

    pub fn status_json(&self) -> Value {
        self.status_json_view(&StatusView::All)
            .unwrap_or_else(|e| json!({ "error": e }))
    }

    /// The mesh's status with the clusters' endpoints `view` asks for; `Err` names a cluster
    /// that does not exist.
    pub fn status_json_view(&self, view: &StatusView) -> Result<Value, String> {
        let refers = self.router.refers();
        let clusters: Vec<Value> = match view {
            StatusView::Cluster { name, offset, limit } => {
                let r = refers
                    .iter()
                    .find(|r| r.cluster.conf_id == *name)
                    .ok_or_else(|| format!("no cluster named {name:?}"))?;
                let list = EndpointList::Page {
                    offset: *offset,
                    limit: *limit,
                };
                let mut s = r.cluster.status_json_with(list);
                s["filters"] = json!(r.chain.names());
                vec![s]
            }
            StatusView::All | StatusView::Summary => {
                let mut budget = STATUS_ENDPOINT_BUDGET;
                refers
                    .iter()
                    .map(|r| {
                        let list = match view {
                            StatusView::All => EndpointList::All,
                            _ => EndpointList::Summary { max: budget },
                        };
                        let mut s = r.cluster.status_json_with(list);
                        let n = s["endpoints"].as_array().map_or(0, Vec::len);
                        budget = budget.saturating_sub(n);
                        s["filters"] = json!(r.chain.names());
                        s
                    })
                    .collect()
            }
        };
        Ok(json!({
            "clusters": clusters,
            "exports": self.exporter.exports().map(|e| json!({
                "name": e.conf_id,
                "service": e.service.path,
                "group": e.service.group,
                "port": e.port,
                "filters": e.chain.names(),
                "provider": match &e.provider {
                    inbound::Provider::Motan2 { pool } => {
                        let (channels, in_flight) = pool.usage();
                        json!({"type": "motan2", "address": pool.address(), "channels": channels, "in_flight": in_flight})
                    },
                    inbound::Provider::Http(_) => json!({"type": "http", "address": e.service.param("proxyAddress").or(e.service.param("URL_FORMAT")).or(e.service.param("HTTP_URL")).unwrap_or("")}),
                },
            })).collect::<Vec<_>>(),
            "registries": self.registries_json(),
            "http_clients": self.http.status_json(),
        }))
    }
}

/// At most this many endpoints, over all clusters, in the summary `/status`.
pub const STATUS_ENDPOINT_BUDGET: usize = 1000;

/// Which endpoints `/status` lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusView {
    /// Every endpoint of every cluster.
    All,
    /// Small clusters in full, larger ones by their unavailable endpoints (capped), at most
    /// [`STATUS_ENDPOINT_BUDGET`] in all (see [`EndpointList::Summary`]).
    Summary,
    /// One cluster, with a page of its endpoints in address order.
    Cluster {
        name: String,
        offset: usize,
        limit: usize,
    },
}

/// The agent port (and intercepted Motan2 connections): client role.
pub struct ClientHandler(pub MeshHandle);

impl Handler for ClientHandler {
    fn handle(&self, req: Frame, ctx: RequestContext) -> impl Future<Output = Frame> + Send + 'static {
        let mesh = self.0.load_full();
        async move {
            // An `M_p` that no refer serves but an http-client domain is (4.13).
            if !mesh.http.is_empty()
                && let Some(domain) = req.meta.get(keys::SERVICE).and_then(|s| mesh.http.domain(s))
                && !mesh.router.routes(&req)
            {
                return domain.call(req, &ctx.peer_ip).await;
            }
            mesh.router.handle(req, &ctx.peer_ip).await
        }
    }
}

/// An export port: server role.
pub struct ServerHandler {
    pub mesh: MeshHandle,
    pub port: u16,
}

impl Handler for ServerHandler {
    fn handle(&self, req: Frame, ctx: RequestContext) -> impl Future<Output = Frame> + Send + 'static {
        let mesh = self.mesh.load_full();
        let port = self.port;
        async move { mesh.exporter.handle(port, req, &ctx.peer_ip, ctx.received).await }
    }
}
