//! A running cluster: one refer's endpoints as the registries report them, a balancer over
//! them, a connection pool per endpoint, and the HA strategy that drives a call (4.4–4.8).
//! The pure decisions live in `crate::cluster`; this file only connects them to sockets.
pub mod circuit;
pub mod discovery;
pub mod endpoint;
pub mod endpoints;
pub mod ha;
pub mod idc;
pub mod lb;
pub mod local;
pub mod route;
mod weights;

use crate::locks::{Locked, Unpoisoned};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::circuit::{Breakers, EndpointFilters};
use self::endpoint::Endpoint;
use self::endpoint::{KeepaliveKind, KeepaliveRequest, MethodLatencies};
use self::endpoints::EndpointSet;
use self::ha::{BackupRequestBudget, Failover, HaKind, call_with_backup, call_with_failover};
use self::lb::{Balancer, LbConfig, LbRequest};
use self::local::LocalExports;
use crate::config::refer::{CallSettings, HashKeySource};
use crate::protocol::motan2::call::{CallError, degraded_error, error_of};
use crate::protocol::motan2::frame::FLAG_PROXY;
use crate::protocol::motan2::{Frame, keys};
use crate::upstream::Deadline;
use crate::upstream::channel::Transport;
use crate::upstream::pool::Pool;
use crate::url::Url;

/// Removed endpoints keep their pool this long, so calls already routed to them finish (4.4).
const REMOVE_DELAY: Duration = Duration::from_secs(2);
const DEFAULT_CLIENT_CONNECTIONS: i64 = 3;
const DEFAULT_CONNECT_RETRY: Duration = Duration::from_millis(60_000);
/// Refer parameter: how many endpoints per cluster are connected ahead of traffic (the rest
/// get their pool from the first call that needs it, as motan-go's `lazyInit`, Envoy and
/// ztunnel do). `lazyInit: true` means none.
pub const WARM_ENDPOINTS: &str = "warmEndpoints";
const DEFAULT_WARM_ENDPOINTS: i64 = 3;
/// Refer parameter (ms): a pool without requests for this long is closed (made again on
/// demand).
pub const POOL_IDLE_TIMEOUT: &str = "poolIdleTimeout";
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A warm endpoint that keeps failing to connect is logged at most once per this interval.
const CONNECT_LOG_INTERVAL: Duration = Duration::from_secs(60);
pub struct Cluster {
    pub conf_id: String,
    /// The refer; its group is the resolved one once discovery resolved `${idc}` (`idc.rs`).
    refer: ArcSwap<Url>,
    /// The group as configured (it may hold `${idc}`).
    configured_group: String,
    /// How `${idc}` was resolved (for the status), once it was.
    idc: Mutex<Option<Value>>,
    ha: HaKind,
    hash_key: HashKeySource,
    /// Per-method timeouts, retries and backupRequest settings, resolved once.
    calls: CallSettings,
    balancer: ArcSwap<Balancer>,
    endpoints: Mutex<EndpointSet>,
    /// By endpoint identity; looked up on every call, so hashed with foldhash (seeded per
    /// process) rather than SipHash.
    pools: RwLock<HashMap<String, Arc<Pool>, foldhash::fast::RandomState>>,
    budget: BackupRequestBudget,
    latencies: MethodLatencies,
    transport: Transport,
    client_connections: usize,
    connect_retry: Duration,
    /// Endpoints connected ahead of traffic (`warmEndpoints`, 0 with `lazyInit`), and how
    /// many are now.
    warm: usize,
    warm_ids: Mutex<std::collections::HashSet<String>>,
    pool_idle: Duration,
    mingz_size: usize,
    degraded: AtomicBool,
    /// Traffic-control group weights in force.
    group_weights: Mutex<Option<String>>,
    stop: CancellationToken,
    /// Per-endpoint circuits and failfast (the refer's endpoint filters).
    endpoint_filters: EndpointFilters,
    /// The idle-pool sweeper is running.
    sweeping: AtomicBool,
    /// The wrr weight refresher (`weights.rs`) is running.
    refreshing_weights: AtomicBool,
    /// Pools of the cluster this one replaces (reload): endpoints it knew keep their
    /// connections and are available at once.
    adopt: HashMap<String, Arc<Pool>, foldhash::fast::RandomState>,
    /// Registries that delivered their first list, and first connects still running: the
    /// cluster is ready when all registries answered and no first connect is pending.
    registries_seen: std::sync::atomic::AtomicUsize,
    registries_total: std::sync::atomic::AtomicUsize,
    connects_pending: std::sync::atomic::AtomicUsize,
    /// This agent's own server role, when the local short-cut is on: endpoints that are its
    /// export listeners are called in-process.
    local: std::sync::OnceLock<Arc<dyn LocalExports>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("conf_id", &self.conf_id).finish()
    }
}

impl Cluster {
    /// Checks the refer's HA and balancer settings (errors name the key). Endpoint circuits
    /// and failfast statuses live in `breakers` (the agent's, so the admin API lists them and
    /// they survive a reload).
    pub fn new(
        conf_id: &str,
        refer: Url,
        transport: Transport,
        previous: Option<&Cluster>,
        breakers: &Arc<Breakers>,
    ) -> Result<Arc<Cluster>, String> {
        let ha = HaKind::from_url(&refer).map_err(|e| e.to_string())?;
        let lb = LbConfig::from_url(&refer).map_err(|e| e.to_string())?;
        let hash_key = HashKeySource::from_url(&refer).map_err(|e| e.to_string())?;
        Ok(Arc::new(Cluster {
            conf_id: conf_id.to_string(),
            ha,
            hash_key,
            calls: CallSettings::from_url(&refer, ha),
            // A replaced cluster's balancer lends its state (the consistent-hash partition
            // count), so keys stay where they were across a reload.
            balancer: ArcSwap::from_pointee(match previous {
                Some(p) if p.balancer.load().config().kind == lb.kind => {
                    p.balancer.load().rebuild(Vec::new(), None)
                }
                _ => Balancer::new(lb, Vec::new(), None),
            }),
            endpoints: Mutex::new(EndpointSet::new()),
            pools: RwLock::default(),
            budget: BackupRequestBudget::new(),
            latencies: MethodLatencies::new(),
            transport,
            client_connections: refer.get_positive_int("clientConnection", DEFAULT_CLIENT_CONNECTIONS)
                as usize,
            connect_retry: refer.get_duration_ms("connectRetryInterval", DEFAULT_CONNECT_RETRY),
            warm: match refer.get_bool("lazyInit", false) {
                true => 0,
                false => refer.get_int(WARM_ENDPOINTS, DEFAULT_WARM_ENDPOINTS).max(0) as usize,
            },
            warm_ids: Default::default(),
            pool_idle: refer.get_duration_ms(POOL_IDLE_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT),
            mingz_size: refer.get_int("mingzSize", 0).max(0) as usize,
            degraded: AtomicBool::new(false),
            group_weights: Mutex::new(None),
            stop: CancellationToken::new(),
            endpoint_filters: EndpointFilters::from_refer(&refer, breakers.clone()),
            sweeping: AtomicBool::new(false),
            refreshing_weights: AtomicBool::new(false),
            adopt: previous
                .map(|p| p.pools.read_unpoisoned().clone())
                .unwrap_or_default(),
            registries_seen: Default::default(),
            registries_total: Default::default(),
            connects_pending: Default::default(),
            local: Default::default(),
            configured_group: refer.group.clone(),
            idc: Mutex::new(None),
            refer: ArcSwap::from_pointee(refer),
        }))
    }

    /// Call endpoints that are this agent's own export listeners in-process (set once, before
    /// the cluster follows its registries).
    pub fn set_local(&self, local: Arc<dyn LocalExports>) {
        let _ = self.local.set(local);
    }

    fn local_for(&self, ep: &Endpoint) -> Option<&Arc<dyn LocalExports>> {
        self.local.get().filter(|l| l.is_local(ep.url()))
    }

    /// The refer, with the group requests go to (resolved, once `${idc}` was).
    pub fn refer(&self) -> Arc<Url> {
        self.refer.load_full()
    }

    /// The group as configured (it may hold `${idc}`).
    pub fn configured_group(&self) -> &str {
        &self.configured_group
    }

    /// Discovery resolved `${idc}`: requests go to `group` from now on; `how` is shown in the
    /// status.
    pub(super) fn set_resolved_group(&self, group: &str, how: Value) {
        let mut u = (*self.refer.load_full()).clone();
        u.group = group.to_string();
        self.refer.store(Arc::new(u));
        *self.idc.locked() = Some(how);
    }

    /// Registries the cluster follows (set by discovery when it starts).
    pub(super) fn set_registry_count(&self, n: usize) {
        self.registries_total.store(n, Ordering::Relaxed);
    }

    pub(super) fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// A registry delivered the first list of the refer's own group.
    pub(super) fn registry_seen(&self) {
        self.registries_seen.fetch_add(1, Ordering::Relaxed);
    }

    /// Apply one registry's server list: new endpoints get a pool (connected in the
    /// background; the endpoint becomes available once connected), removed ones are dropped
    /// after `REMOVE_DELAY`, and the balancer is rebuilt.
    /// `group_weights` are the traffic-control weights (`g1:3,g2:1`) or `None`.
    pub fn apply(
        self: &Arc<Self>,
        registry_id: &str,
        registry_count: usize,
        servers: &[Url],
        group_weights: Option<&str>,
    ) {
        let (outcome, all) = {
            let mut set = self.endpoints.locked();
            let outcome = set.notify(registry_id, &self.refer.load(), registry_count, servers);
            (outcome, set.shuffled())
        };
        let weights_changed = {
            let mut w = self.group_weights.locked();
            let changed = w.as_deref() != group_weights;
            *w = group_weights.map(str::to_string);
            changed
        };
        if !outcome.changed && !weights_changed {
            return;
        }
        for ep in &outcome.added {
            if let Some(g) = self.endpoint_filters.guard(ep.identity(), ep.address()) {
                ep.set_guard(g);
            }
            if self.local_for(ep).is_some() {
                // Served in-process: no connection to make.
                ep.set_available(true);
                continue;
            }
            let id = ep.identity().to_string();
            if let Some(pool) = self.adopt.get(&id).filter(|p| p.usage().0 > 0) {
                self.pools.write_unpoisoned().insert(id, pool.clone());
                ep.set_available(true);
                continue;
            }
            let warm = {
                let mut w = self.warm_ids.locked();
                w.len() < self.warm && w.insert(id.clone())
            };
            if !warm {
                // On demand: available now, its pool made by the first call that picks it.
                ep.set_available(true);
                continue;
            }
            let pool = self.new_pool(ep);
            self.pools.write_unpoisoned().insert(id, pool.clone());
            let (me, ep) = (self.clone(), ep.clone());
            self.connects_pending.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move { me.connect_endpoint(ep, pool).await });
        }
        if self.pool_idle > Duration::ZERO && !self.sweeping.swap(true, Ordering::Relaxed) {
            let me = Arc::downgrade(self);
            let stop = self.stop.clone();
            let every = (self.pool_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let Some(me) = me.upgrade() else { return };
                    me.close_idle_pools();
                }
            });
        }
        let balancer = self.balancer.load().rebuild(all, group_weights);
        self.balancer.store(Arc::new(balancer));
        self.start_weight_refresher();
        tracing::info!(
            cluster = %self.conf_id, registry = registry_id,
            added = outcome.added.len(), removed = outcome.removed.len(),
            "endpoints changed"
        );
        if !outcome.removed.is_empty() {
            {
                let mut w = self.warm_ids.locked();
                for e in &outcome.removed {
                    w.remove(e.identity());
                }
            }
            let me = self.clone();
            // The pools as they are now: an endpoint added back within REMOVE_DELAY gets a new
            // pool under the same identity, which must survive this removal.
            let gone: Vec<(String, Arc<Pool>)> = {
                let pools = self.pools.read_unpoisoned();
                outcome
                    .removed
                    .iter()
                    .filter_map(|e| Some((e.identity().to_string(), pools.get(e.identity())?.clone())))
                    .collect()
            };
            tokio::spawn(async move {
                tokio::time::sleep(REMOVE_DELAY).await;
                let mut pools = me.pools.write_unpoisoned();
                for (id, pool) in gone {
                    if pools.get(&id).is_some_and(|p| Arc::ptr_eq(p, &pool)) {
                        pools.remove(&id);
                    }
                }
            });
        }
    }

    fn new_pool(&self, ep: &Endpoint) -> Arc<Pool> {
        Arc::new(Pool::new(
            ep.address().to_string(),
            self.client_connections,
            self.transport.clone(),
        ))
    }

    /// The endpoint's pool, made now if it has none (an on-demand endpoint's first call, or
    /// after its idle pool was closed).
    fn pool_for(&self, ep: &Endpoint) -> Arc<Pool> {
        if let Some(p) = self.pools.read_unpoisoned().get(ep.identity()) {
            return p.clone();
        }
        let mut pools = self.pools.write_unpoisoned();
        pools
            .entry(ep.identity().to_string())
            .or_insert_with(|| self.new_pool(ep))
            .clone()
    }

    /// Drop the pools of current endpoints that carried no request for `pool_idle` (their
    /// connections close with them).
    fn close_idle_pools(&self) {
        let mut pools = self.pools.write_unpoisoned();
        let before = pools.len();
        pools.retain(|_, p| p.idle_for() < self.pool_idle || p.usage().1 > 0);
        let closed = before - pools.len();
        if closed > 0 {
            tracing::debug!(cluster = %self.conf_id, closed, "idle pools closed");
        }
    }

    /// Warm the endpoint's pool; retry with back-off (jittered, up to
    /// `connectRetryInterval`) until it works, the endpoint is removed, or the cluster stops.
    /// Failures are logged at most once per endpoint per `CONNECT_LOG_INTERVAL`.
    async fn connect_endpoint(self: Arc<Self>, ep: Arc<Endpoint>, pool: Arc<Pool>) {
        let mut first = true;
        let mut attempt = 0u32;
        let mut logged: Option<tokio::time::Instant> = None;
        let mut unlogged = 0u64;
        loop {
            // Every slot the first time; afterwards one probe connect, and the other slots
            // only once it works (a dead endpoint costs one connect per retry).
            let r = match attempt {
                0 => pool.warm_up().await,
                _ => match pool.get(Deadline::after(self.transport.connect_timeout)).await {
                    Ok(_) => pool.warm_up().await,
                    Err(e) => Err(e),
                },
            };
            if std::mem::take(&mut first) {
                self.connects_pending.fetch_sub(1, Ordering::Relaxed);
            }
            match r {
                Ok(()) => {
                    ep.set_available(true);
                    if logged.is_some() {
                        tracing::info!(cluster = %self.conf_id, endpoint = ep.address(), "connected after {} failed attempts", attempt);
                    }
                    return;
                }
                Err(e) => {
                    unlogged += 1;
                    if logged.is_none_or(|t| t.elapsed() >= CONNECT_LOG_INTERVAL) {
                        tracing::warn!(cluster = %self.conf_id, endpoint = ep.address(), failures = unlogged, "cannot connect: {e}; retrying with back-off");
                        logged = Some(tokio::time::Instant::now());
                        unlogged = 0;
                    }
                }
            }
            // Quick retries first (a provider starting at the same time), then up to
            // connectRetryInterval; jittered so that endpoints that failed together do not
            // retry together.
            let base = self
                .connect_retry
                .min(Duration::from_millis(100) * (1 << attempt.min(10)));
            let wait = base.mul_f64(0.5 + fastrand::f64());
            attempt += 1;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !self.has_pool(&ep, &pool) {
                return;
            }
        }
    }

    fn has_pool(&self, ep: &Endpoint, pool: &Arc<Pool>) -> bool {
        self.pools
            .read_unpoisoned()
            .get(ep.identity())
            .is_some_and(|p| Arc::ptr_eq(p, pool))
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.locked().len()
    }

    /// Every registry delivered its first list, and every first connect finished or some
    /// endpoint is available (start-up does not wait for endpoints that cannot connect).
    pub fn is_ready(&self) -> bool {
        self.registries_seen.load(Ordering::Relaxed) >= self.registries_total.load(Ordering::Relaxed)
            && (self.connects_pending.load(Ordering::Relaxed) == 0
                || self
                    .balancer
                    .load()
                    .endpoints()
                    .iter()
                    .any(|e| e.status_available()))
    }

    /// Wait until ready or `deadline` (motan-go waits `initClusterTimeout` for refers at start).
    pub async fn wait_ready(&self, deadline: tokio::time::Instant) -> bool {
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    pub fn set_degraded(&self, on: bool) {
        self.degraded.store(on, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Call the cluster with `req` (already carrying the caller's meta): HA over the balancer.
    /// Ok is the upstream response (its request id is the channel's; the caller restores its
    /// own); Err is an error the agent answers with. The request's timeout bounds the whole
    /// call, every attempt and connect included. A oneway request is answered as soon as it is
    /// written (see [`oneway_answer`]); written requests are never retried.
    pub async fn call(self: &Arc<Self>, req: Frame) -> Result<Frame, CallError> {
        if self.degraded.load(Ordering::Relaxed) {
            return Err(degraded_error());
        }
        let balancer = self.balancer.load_full();
        let method = req.meta.get(keys::METHOD).unwrap_or("");
        let desc = req.meta.get(keys::METHOD_DESC).unwrap_or("");
        let timeout = self
            .calls
            .timeouts
            .get(method, desc)
            .for_request(req.meta.get(keys::TIMEOUT));
        let deadline = Deadline::after(timeout);
        let key = self.hash_key.key(&req);
        let lb_req = LbRequest {
            hash_key: key.as_deref(),
        };
        // A oneway request is written once (failover only over endpoints it could not be
        // written to): backups would deliver it twice.
        let failover = self.ha != HaKind::BackupRequest || req.header.is_oneway();
        let r = match failover {
            true => {
                let policy = Failover::with_retries(*self.calls.retries.get(method, desc));
                call_with_failover(
                    policy,
                    deadline,
                    &balancer,
                    &lb_req,
                    |ep| self.call_endpoint(ep, &req, deadline, method),
                    error_of,
                    || {
                        ha::failover_no_endpoint_error(
                            req.header.request_id,
                            req.meta.iter().filter_map(|(k, v)| {
                                Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
                            }),
                        )
                    },
                )
                .await
            }
            false => {
                let mut cfg = self.calls.backup.get(method, desc).clone();
                // The request's own deadline (its `M_tmo`) may come first.
                cfg.request_timeout = cfg.request_timeout.min(deadline.remaining());
                let observed = self.latencies.get(method).percentile(f64::from(cfg.delay_ratio));
                let delay = cfg.delay(observed);
                call_with_backup(
                    &cfg,
                    delay,
                    &self.budget,
                    &balancer,
                    &lb_req,
                    |ep| Box::pin(self.call_endpoint(ep, &req, deadline, method)),
                    error_of,
                )
                .await
            }
        };
        r.and_then(|inner| inner)
    }

    async fn call_endpoint(
        self: &Arc<Self>,
        ep: Arc<Endpoint>,
        req: &Frame,
        deadline: Deadline,
        method: &str,
    ) -> Result<Frame, CallError> {
        if deadline.expired() {
            // Not an attempt on this endpoint: its health is not at stake.
            return Err(CallError::service(
                400,
                format!(
                    "request timed out after {} ms before {} was tried",
                    deadline.timeout().as_millis(),
                    ep.address()
                ),
            ));
        }
        if let Some(local) = self.local_for(&ep) {
            return self.call_local(local.clone(), ep, req, deadline, method).await;
        }
        let pool = self.pool_for(&ep);
        // The endpoint's group wins (traffic control may route to other groups, 4.3 step 4).
        // The request is copied only when this attempt has to change it.
        let group = &ep.url().group;
        let regroup = !group.is_empty() && req.meta.get(keys::GROUP) != Some(group.as_str());
        let changed;
        let req = if regroup || !req.header.is_proxy() || req.wants_gzip(self.mingz_size) {
            let mut r = req.clone();
            if regroup {
                r.meta
                    .insert(keys::GROUP, Bytes::copy_from_slice(group.as_bytes()));
            }
            r.header.set_flag(FLAG_PROXY, true);
            r.gzip_if_larger(self.mingz_size);
            changed = r;
            &changed
        } else {
            req
        };
        // The endpoint's own circuit (motan-go's endpoint filter `circuitBreaker`): an open
        // circuit answers at once, without counting against the endpoint's health; failover
        // then tries another endpoint.
        let circuit_slot = match ep.guard().and_then(|g| g.circuit.as_ref()) {
            Some(c) => match c.enter() {
                Ok(slot) => Some(slot),
                Err(text) => return Err(CallError::service(400, text)),
            },
            None => None,
        };
        let oneway = req.header.is_oneway();
        // Only backupRequest reads per-method latencies (its delay): other strategies skip the
        // clock and the bookkeeping on every call.
        let started = (self.ha == HaKind::BackupRequest).then(Instant::now);
        let guard = ep.begin();
        let mut r = if oneway {
            pool.send_oneway(req, deadline).await.map(|()| oneway_answer(req))
        } else {
            pool.call(req, deadline).await
        };
        if let (Ok(resp), false) = (&mut r, oneway) {
            if resp.header.is_gzip()
                && let Err(e) = resp.gunzip(self.transport.limits.max_body)
            {
                tracing::warn!(endpoint = ep.address(), "cannot decompress a response: {e}");
            }
            resp.meta.insert("x-forwarded-for", ep.address_bytes());
        }
        let error = error_of(&r);
        if let Some(g) = ep.guard() {
            g.record(error.as_ref());
        }
        drop(circuit_slot);
        // A oneway request's "latency" is the time to queue it: not recorded.
        let keepalive = if oneway {
            drop(guard);
            ep.record(error.as_ref())
        } else {
            guard.finish(error.as_ref())
        };
        if let Some(k) = keepalive {
            tracing::warn!(cluster = %self.conf_id, endpoint = ep.address(), "endpoint disabled after consecutive errors (last: {})", error.as_ref().map(|e| e.to_string()).unwrap_or_default());
            let me = self.clone();
            tokio::spawn(async move { me.keepalive(ep, pool, k).await });
        }
        if let (None, false, Some(started)) = (&error, oneway, started) {
            self.latencies.get(method).record(started.elapsed());
        }
        r
    }

    /// [`Cluster::call_endpoint`] for an endpoint that is this agent's own export listener:
    /// the server role is called in-process with what would have gone over the wire (group
    /// and proxy flag set; not gzipped, as that would be undone at once), under the same
    /// deadline and with the same endpoint bookkeeping. A oneway request is answered at once
    /// and served in the background, as a written one would be.
    async fn call_local(
        self: &Arc<Self>,
        local: Arc<dyn LocalExports>,
        ep: Arc<Endpoint>,
        req: &Frame,
        deadline: Deadline,
        method: &str,
    ) -> Result<Frame, CallError> {
        crate::metrics::LOCAL_SHORTCUTS.fetch_add(1, Ordering::Relaxed);
        let mut r = req.clone();
        let group = &ep.url().group;
        if !group.is_empty() && r.meta.get(keys::GROUP) != Some(group.as_str()) {
            r.meta
                .insert(keys::GROUP, Bytes::copy_from_slice(group.as_bytes()));
        }
        r.header.set_flag(FLAG_PROXY, true);
        // The source address a loopback connect to the endpoint would have.
        let peer_ip = Bytes::copy_from_slice(ep.url().host.as_bytes());
        let port = ep.url().port;
        if r.header.is_oneway() {
            let answer = oneway_answer(&r);
            let served = local.call(port, r, peer_ip);
            tokio::spawn(async move {
                let _ = tokio::time::timeout_at(deadline.at(), served).await;
            });
            return Ok(answer);
        }
        let started = Instant::now();
        let guard = ep.begin();
        let r = match tokio::time::timeout_at(deadline.at(), local.call(port, r, peer_ip)).await {
            Ok(mut resp) => {
                if resp.header.is_gzip()
                    && let Err(e) = resp.gunzip(self.transport.limits.max_body)
                {
                    tracing::warn!(endpoint = ep.address(), "cannot decompress a response: {e}");
                }
                resp.meta.insert("x-forwarded-for", ep.address_bytes());
                Ok(resp)
            }
            Err(_) => Err(CallError::service(
                400,
                format!(
                    "channel call error: request timed out after {} ms waiting for {} (in-process)",
                    deadline.timeout().as_millis(),
                    ep.address()
                ),
            )),
        };
        let error = error_of(&r);
        if let Some(k) = guard.finish(error.as_ref()) {
            // Probed like any endpoint (heartbeats over TCP to the export listener).
            tracing::warn!(cluster = %self.conf_id, endpoint = ep.address(), "endpoint disabled after consecutive errors (last: {})", error.as_ref().map(|e| e.to_string()).unwrap_or_default());
            let (me, pool) = (self.clone(), self.pool_for(&ep));
            tokio::spawn(async move { me.keepalive(ep, pool, k).await });
        }
        if error.is_none() && self.ha == HaKind::BackupRequest {
            self.latencies.get(method).record(started.elapsed());
        }
        r
    }

    /// Probe a disabled endpoint until it answers a heartbeat (then it is available again), it
    /// is removed, or the cluster stops (4.8).
    async fn keepalive(self: Arc<Self>, ep: Arc<Endpoint>, pool: Arc<Pool>, k: KeepaliveRequest) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(k.interval) => {}
            }
            if !self.has_pool(&ep, &pool) {
                break;
            }
            if k.kind == KeepaliveKind::Heartbeat
                && pool
                    .heartbeat(k.interval.max(Duration::from_millis(500)))
                    .await
                    .is_ok()
            {
                tracing::info!(cluster = %self.conf_id, endpoint = ep.address(), "endpoint answers heartbeats again: enabled");
                ep.keepalive_succeeded();
                return;
            }
        }
        ep.keepalive_finished();
    }

    /// Whether some endpoint is available (motan-go's `MotanCluster.IsAvailable`).
    pub fn is_available(&self) -> bool {
        self.balancer.load().endpoints().iter().any(|e| e.is_available())
    }

    /// The endpoints in motan-go's `/runtime/info` shape (cluster/motanCluster.go
    /// `GetRuntimeInfo`, endpoint/motanCommonEndpoint.go): `{available: {..}, unavailable: {..}}`
    /// keyed `<index>-<identity>`, each `{name, errorCount, keepaliveRunning, keepaliveType}`.
    pub fn referers_runtime_info(&self) -> (usize, Value) {
        let balancer = self.balancer.load();
        let (mut available, mut unavailable) = (serde_json::Map::new(), serde_json::Map::new());
        for (i, ep) in balancer.endpoints().iter().enumerate() {
            let info = json!({
                "name": "motan2",
                "errorCount": ep.consecutive_errors(),
                "keepaliveRunning": ep.keepalive_running(),
                "keepaliveType": 0,
            });
            let key = format!("{i}-{}", ep.identity());
            if ep.is_available() {
                available.insert(key, info);
            } else {
                unavailable.insert(key, info);
            }
        }
        (
            balancer.endpoints().len(),
            json!({ "available": available, "unavailable": unavailable }),
        )
    }

    /// The cluster's status with every endpoint listed (small clusters, tests).
    pub fn status_json(&self) -> Value {
        self.status_json_with(EndpointList::All)
    }

    /// The cluster's status with the endpoints `list` asks for; the counts always cover all
    /// of them (`endpoint_count`, `available_endpoints`), `endpoints_listed` says which are
    /// in `endpoints`, and `endpoints_omitted` how many are not.
    pub fn status_json_with(&self, list: EndpointList) -> Value {
        let balancer = self.balancer.load();
        let pools = self.pools.read_unpoisoned();
        let all = balancer.endpoints();
        let total = all.len();
        let available = all.iter().filter(|e| e.status_available()).count();
        let row = |ep: &Arc<Endpoint>| {
            let (channels, in_flight) = pools.get(ep.identity()).map(|p| p.usage()).unwrap_or((0, 0));
            json!({
                "address": ep.address(),
                "group": ep.url().group,
                "available": ep.status_available(),
                "circuit_open": ep.guard().and_then(|g| g.circuit.as_ref()).map(|c| c.is_open()),
                "consecutive_errors": ep.consecutive_errors(),
                "active": ep.active(),
                "weight": ep.weight(),
                "channels": channels,
                "in_flight": in_flight,
            })
        };
        let mut page = None;
        let (listed, picked): (&str, Vec<&Arc<Endpoint>>) = match list {
            EndpointList::All => ("all", all.iter().collect()),
            EndpointList::Summary { max } if total <= SMALL_CLUSTER.min(max) => ("all", all.iter().collect()),
            EndpointList::Summary { max } => (
                "unavailable",
                all.iter()
                    .filter(|e| !e.status_available())
                    .take(max.min(UNAVAILABLE_LISTED))
                    .collect(),
            ),
            EndpointList::Page { offset, limit } => {
                // By address, so pages are stable while the list does not change.
                let mut sorted: Vec<&Arc<Endpoint>> = all.iter().collect();
                sorted.sort_unstable_by(|a, b| a.identity().cmp(b.identity()));
                let end = offset.saturating_add(limit).min(total);
                let picked = sorted.get(offset.min(total)..end).unwrap_or_default().to_vec();
                page = Some(json!({
                    "offset": offset,
                    "limit": limit,
                    "next_offset": (end < total).then_some(end),
                }));
                ("page", picked)
            }
        };
        let endpoints: Vec<Value> = picked.iter().map(|ep| row(ep)).collect();
        let refer = self.refer.load();
        let mut v = json!({
            "name": self.conf_id,
            "service": refer.path,
            "group": refer.group,
            "ha": refer.get_str(crate::url::keys::HA_STRATEGY, "failover"),
            "loadbalance": balancer.config().kind.name(),
            "degraded": self.degraded.load(Ordering::Relaxed),
            "group_weights": self.group_weights.locked().clone(),
            "endpoint_count": total,
            "available_endpoints": available,
            "endpoints_listed": listed,
            "endpoints_omitted": total - endpoints.len(),
            "endpoints": endpoints,
        });
        if let Some(p) = page {
            v["page"] = p;
        }
        if let Some(idc) = self.idc.locked().clone() {
            v["configured_group"] = json!(self.configured_group);
            v["idc"] = idc;
        }
        v
    }
}

/// One endpoint's health as `/metrics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub address: String,
    pub available: bool,
    pub active: usize,
    pub consecutive_errors: u32,
    /// Open connections of its pool (0: no pool).
    pub channels: usize,
}

/// A cluster's endpoint health for `/metrics`: totals over every endpoint, and the endpoints
/// that get a row of their own ([`Cluster::health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    pub endpoints: usize,
    pub available: usize,
    pub active: usize,
    pub channels: usize,
    pub listed: Vec<EndpointHealth>,
}

impl Cluster {
    /// Totals over every endpoint, and rows for: every endpoint of a cluster of at most
    /// [`SMALL_CLUSTER`]; of a larger one, those with something to say (unavailable, calls
    /// in flight, consecutive errors, open connections). At most `max` rows.
    pub fn health(&self, max: usize) -> ClusterHealth {
        let balancer = self.balancer.load();
        let pools = self.pools.read_unpoisoned();
        let all = balancer.endpoints();
        let small = all.len() <= SMALL_CLUSTER;
        let mut h = ClusterHealth {
            endpoints: all.len(),
            ..ClusterHealth::default()
        };
        for ep in all {
            let row = EndpointHealth {
                address: String::new(),
                available: ep.status_available(),
                active: ep.active(),
                consecutive_errors: ep.consecutive_errors(),
                channels: pools.get(ep.identity()).map_or(0, |p| p.usage().0),
            };
            h.available += usize::from(row.available);
            h.active += row.active;
            h.channels += row.channels;
            let notable = !row.available || row.active > 0 || row.consecutive_errors > 0 || row.channels > 0;
            if (small || notable) && h.listed.len() < max {
                h.listed.push(EndpointHealth {
                    address: ep.address().to_string(),
                    ..row
                });
            }
        }
        h
    }
}

/// Clusters this small are listed in full in the summary view.
pub const SMALL_CLUSTER: usize = 32;
/// At most this many unavailable endpoints per larger cluster in the summary view.
pub const UNAVAILABLE_LISTED: usize = 10;

/// Which endpoints [`Cluster::status_json_with`] lists. At 100 providers per service and a
/// thousand services, listing every endpoint makes `/status` megabytes, so the admin API
/// summarises by default and pages on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointList {
    /// Every endpoint.
    All,
    /// Every endpoint of a cluster of at most [`SMALL_CLUSTER`]; of a larger one, its
    /// unavailable endpoints, at most [`UNAVAILABLE_LISTED`]. Never more than `max` either way.
    Summary { max: usize },
    /// Endpoints `offset..offset + limit` in address order.
    Page { offset: usize, limit: usize },
}

/// What a caller gets for a oneway request once it is written: an empty success response.
/// motan-go has no oneway path: its servers answer every request (server/motanserver.go,
/// `processV2`, never reads the flag) and its clients wait for that answer even for oneway
/// requests (endpoint/motanCommonEndpoint.go, `Channel.Call` → `stream.Recv`). So callers
/// expect an answer; the agent gives it at once instead of holding the request until a
/// provider's answer that need not come (spec 1.8: replies to oneway requests are harmless).
pub fn oneway_answer(req: &Frame) -> Frame {
    Frame::response_to(req, Bytes::new())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: std::net::SocketAddr) -> Url {
        Url::new("motan2", "127.0.0.1", addr.port(), "s", "g")
    }

    #[tokio::test]
    async fn an_endpoint_added_back_within_the_remove_delay_keeps_its_new_pool() {
        let addr = crate::upstream::channel::tests::upstream().await;
        let refer = Url::new("motan2", "", 0, "s", "g");
        let c = Cluster::new("c", refer, Transport::default(), None, &Arc::default()).unwrap();
        // Two registries, so an empty list really removes this registry's endpoints.
        c.apply("r1", 2, &[server(addr)], None);
        let call = |c: Arc<Cluster>| async move {
            let req = Frame::request(1, "s", "m", Bytes::from_static(b"\x00ab"));
            c.call(req).await
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(c.wait_ready(deadline).await);
        assert!(call(c.clone()).await.is_ok());
        c.apply("r1", 2, &[], None);
        c.apply("r1", 2, &[server(addr)], None);
        assert!(c.wait_ready(deadline).await);
        // Past the removed endpoint's delay: the re-added one still has its pool.
        tokio::time::sleep(REMOVE_DELAY + Duration::from_millis(200)).await;
        let r = call(c.clone()).await;
        assert!(r.is_ok(), "{:?}", r.err());
        c.stop();
    }

    /// Poll until `n` endpoints of `c` are available.
    async fn available(c: &Cluster, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while c
            .balancer
            .load()
            .endpoints()
            .iter()
            .filter(|e| e.is_available())
            .count()
            < n
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} endpoints never became available"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_request_waits_at_most_its_timeout_over_failover_and_a_dead_endpoint() {
        use crate::upstream::channel::tests::{blackhole, silent_upstream};
        let (silent, _requests) = silent_upstream().await;
        let (dead, _hole) = blackhole().await;
        let refer = Url::new("motan2", "", 0, "s", "g")
            .with_param("requestTimeout", "300")
            .with_param("retries", "3");
        // Connects would hang for 1 s: longer than the request timeout.
        let c = Cluster::new("c", refer, Transport::default(), None, &Arc::default()).unwrap();
        c.apply("r1", 1, &[server(silent), server(dead)], None);
        available(&c, 1).await;
        // The dead endpoint as one that stopped accepting after it was enabled: its slots
        // are connecting when requests arrive.
        for ep in c.balancer.load().endpoints() {
            ep.set_available(true);
        }
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let r = c.call(Frame::request(i, "s", "m", Bytes::new())).await;
                    (r, started.elapsed())
                })
            })
            .collect();
        for call in calls {
            let (r, took) = call.await.unwrap();
            let e = r.unwrap_err();
            assert!(e.message.contains("300 ms"), "{e}");
            let timeout = Duration::from_millis(300);
            assert!(
                took >= timeout && took < timeout + Duration::from_millis(150),
                "{took:?}: {e}"
            );
        }
        c.stop();
    }

    #[tokio::test]
    async fn oneway_requests_are_answered_once_written_and_leave_nothing_pending() {
        use crate::protocol::motan2::frame::FLAG_ONEWAY;
        use crate::upstream::channel::tests::silent_upstream;
        let (silent, mut requests) = silent_upstream().await;
        let refer = Url::new("motan2", "", 0, "s", "g").with_param("requestTimeout", "100");
        let c = Cluster::new("c", refer, Transport::default(), None, &Arc::default()).unwrap();
        c.apply("r1", 1, &[server(silent)], None);
        assert!(
            c.wait_ready(tokio::time::Instant::now() + Duration::from_secs(5))
                .await
        );
        for i in 0..3 {
            let mut req = Frame::request(40 + i, "s", "m", Bytes::from_static(b"fire"));
            req.header.set_flag(FLAG_ONEWAY, true);
            let started = tokio::time::Instant::now();
            let resp = c.call(req).await.unwrap();
            assert!(
                started.elapsed() < Duration::from_millis(50),
                "{:?}",
                started.elapsed()
            );
            assert!(resp.header.is_response() && !resp.is_exception(), "{resp:?}");
            assert!(resp.body.is_empty());
            let got = requests.recv().await.unwrap();
            assert!(got.header.is_oneway() && got.header.is_proxy());
            assert_eq!(got.body.as_ref(), b"fire");
        }
        // Past the request timeout: no timeout counted, nothing waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = c.status_json();
        assert_eq!(st["endpoints"][0]["in_flight"], 0, "{st}");
        assert_eq!(st["endpoints"][0]["consecutive_errors"], 0, "{st}");
        c.stop();
    }

    #[tokio::test]
    async fn the_summary_lists_small_clusters_whole_and_large_ones_by_unavailable_endpoints() {
        let cluster = |n: u16| {
            let c = Cluster::new(
                "c",
                Url::new("motan2", "", 0, "s", "g").with_param("lazyInit", "true"),
                Transport::default(),
                None,
                &Default::default(),
            )
            .unwrap();
            let servers: Vec<Url> = (0..n)
                .map(|p| Url::new("motan2", "127.0.0.1", 1000 + p, "s", "g"))
                .collect();
            c.apply("r1", 1, &servers, None);
            c
        };
        let listed = |v: &Value| v["endpoints"].as_array().unwrap().len();
        let small = cluster(SMALL_CLUSTER as u16);
        let v = small.status_json_with(EndpointList::Summary { max: 1000 });
        assert_eq!(
            (listed(&v), v["endpoints_listed"].as_str()),
            (SMALL_CLUSTER, Some("all"))
        );
        let big = cluster(100);
        for ep in big.balancer.load().endpoints().iter().step_by(5) {
            ep.set_available(false);
        }
        let v = big.status_json_with(EndpointList::Summary { max: 1000 });
        assert_eq!(listed(&v), UNAVAILABLE_LISTED, "{v}");
        assert_eq!(v["endpoint_count"], 100);
        assert_eq!(v["available_endpoints"], 80);
        assert_eq!(v["endpoints_omitted"], 100 - UNAVAILABLE_LISTED);
        assert!(
            v["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["available"] == false)
        );
        // /metrics: totals over all, rows for a small cluster's endpoints and a large one's
        // unavailable or busy ones, within the budget.
        let h = small.health(1000);
        assert_eq!((h.endpoints, h.listed.len()), (SMALL_CLUSTER, SMALL_CLUSTER));
        let busy = big.balancer.load().endpoints()[1].clone();
        let call = busy.begin();
        let h = big.health(1000);
        assert_eq!((h.endpoints, h.available, h.active), (100, 80, 1));
        assert_eq!(h.listed.len(), 21, "{h:?}");
        assert!(
            h.listed
                .iter()
                .any(|e| e.address == busy.address() && e.active == 1)
        );
        assert!(h.listed.iter().all(|e| !e.available || e.active == 1));
        drop(call);
        assert_eq!(big.health(3).listed.len(), 3);
        assert_eq!(big.health(3).endpoints, 100);
        // The caller's budget caps it.
        assert_eq!(listed(&big.status_json_with(EndpointList::Summary { max: 3 })), 3);
        assert_eq!(
            listed(&small.status_json_with(EndpointList::Summary { max: 3 })),
            0
        );
        assert_eq!(listed(&big.status_json_with(EndpointList::All)), 100);
        small.stop();
        big.stop();
    }

    #[tokio::test]
    async fn endpoints_beyond_the_warm_subset_connect_on_demand_and_idle_pools_close() {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            addrs.push(crate::upstream::channel::tests::upstream().await);
        }
        let refer = Url::new("motan2", "", 0, "s", "g")
            .with_param(WARM_ENDPOINTS, "1")
            .with_param(POOL_IDLE_TIMEOUT, "300");
        let c = Cluster::new("c", refer, Transport::default(), None, &Arc::default()).unwrap();
        let servers: Vec<Url> = addrs.iter().map(|a| server(*a)).collect();
        c.apply("r1", 1, &servers, None);
        assert!(
            c.wait_ready(tokio::time::Instant::now() + Duration::from_secs(5))
                .await
        );
        // One pool made ahead of traffic; every endpoint is available.
        assert_eq!(c.pools.read().unwrap().len(), 1);
        available(&c, 3).await;
        for i in 0..30 {
            let r = c
                .call(Frame::request(i, "s", "m", Bytes::from_static(b"\x00ab")))
                .await;
            assert!(r.is_ok(), "{:?}", r.err());
        }
        assert_eq!(c.pools.read().unwrap().len(), 3, "pools made by traffic");
        // Idle: closed (connections with them), made again by the next call.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(c.pools.read().unwrap().len(), 0, "idle pools closed");
        let r = c
            .call(Frame::request(99, "s", "m", Bytes::from_static(b"\x00ab")))
            .await;
        assert!(r.is_ok(), "{:?}", r.err());
        c.stop();
    }

    #[tokio::test]
    async fn start_up_does_not_wait_for_endpoints_that_cannot_connect() {
        use crate::upstream::channel::tests::blackhole;
        let good = crate::upstream::channel::tests::upstream().await;
        let (dead, _hole) = blackhole().await;
        let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let failures = crate::metrics::UPSTREAM_CONNECT_FAILURES.load(Ordering::Relaxed);
        let c = Cluster::new(
            "c",
            Url::new("motan2", "", 0, "s", "g"),
            Transport::default(),
            None,
            &Arc::default(),
        )
        .unwrap();
        c.apply("r1", 1, &[server(dead), server(dead_port), server(good)], None);
        let started = tokio::time::Instant::now();
        assert!(c.wait_ready(started + Duration::from_secs(5)).await);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "ready after {:?}",
            started.elapsed()
        );
        // The refused endpoint's failed connects are counted for /metrics.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(crate::metrics::UPSTREAM_CONNECT_FAILURES.load(Ordering::Relaxed) > failures);
        c.stop();
    }
}
