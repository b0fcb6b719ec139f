//! The wrr weight refresher (motan-go's `WeightedEpRefresher`): every `weightRefreshPeriodSecond`
//! a wrr cluster asks each available endpoint's agent for its dynamic meta (the MetaService,
//! `getDynamicMeta`, a Breeze map, through the endpoint's own pool), sets the endpoint's dynamic
//! weight from `META_WEIGHT` (clamped to 1..=500; absent → the static weight), and rebuilds the
//! balancer when a weight changed. A failed fetch keeps the endpoint's weight; failures are
//! logged at most once a minute per cluster, with how many there were. An endpoint whose agent
//! answers "service not support" is not asked again for `NOT_SUPPORT_BACKOFF` (upstream caches
//! that answer for 30 s).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Cluster;
use super::endpoint::Endpoint;
use crate::locks::Locked;
use crate::meta::{META_METHOD, META_SERVICE, SERVICE_NOT_SUPPORT, WEIGHT_KEY};
use crate::protocol::motan2::breeze::decode_string_map;
use crate::protocol::motan2::frame::{FLAG_PROXY, serialization};
use crate::protocol::motan2::{Frame, keys};
use crate::upstream::Deadline;

/// One fetch's time limit (upstream waits for a whole round up to 30 s; a period is short).
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const NOT_SUPPORT_BACKOFF: Duration = Duration::from_secs(30);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a fetch failed.
enum FetchError {
    NotSupported,
    Failed(String),
}

/// The MetaService request motan-go's `getMetaServiceRequest` builds: Breeze, no arguments,
/// `M_fws: y`.
fn meta_request() -> Frame {
    let mut req = Frame::request(0, META_SERVICE, META_METHOD, Bytes::new());
    req.header.set_serialization(serialization::BREEZE);
    req.header.set_flag(FLAG_PROXY, true);
    req.meta.insert(keys::FRAMEWORK_SERVICE, Bytes::from_static(b"y"));
    req
}

impl Cluster {
    /// Start the refresher once (called when endpoints arrive); it stops with the cluster.
    pub(super) fn start_weight_refresher(self: &Arc<Self>) {
        let Some(period) = self.balancer.load().config().weight_refresh else {
            return;
        };
        if self
            .refreshing_weights
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let me = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut state = RefreshState::default();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                if !refresh_once(&me, &mut state).await {
                    return;
                }
            }
        });
    }

    async fn fetch_meta(&self, ep: &Endpoint) -> Result<BTreeMap<String, String>, FetchError> {
        let pool = self.pool_for(ep);
        let resp = pool
            .call(&meta_request(), Deadline::after(FETCH_TIMEOUT))
            .await
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        if let Some(r) = resp.as_response()
            && let Some(e) = r.exception()
        {
            return Err(if e.errmsg == SERVICE_NOT_SUPPORT {
                FetchError::NotSupported
            } else {
                FetchError::Failed(format!("exception {}: {}", e.errcode, e.errmsg))
            });
        }
        decode_string_map(&resp.body).map_err(FetchError::Failed)
    }

    /// Rebuild the balancer if an endpoint's weight changed since it was built. Under the
    /// endpoint-set lock, so a concurrent `apply` cannot be overwritten with an older list.
    fn rebuild_if_weights_changed(&self) -> bool {
        if !self.balancer.load().weights_changed() {
            return false;
        }
        let set = self.endpoints.locked();
        let group_weights = self.group_weights.locked().clone();
        let balancer = self
            .balancer
            .load()
            .rebuild(set.shuffled(), group_weights.as_deref());
        self.balancer.store(Arc::new(balancer));
        drop(set);
        true
    }
}

#[derive(Default)]
struct RefreshState {
    /// Endpoint identity → when it answered "service not support".
    not_supported: HashMap<String, Instant>,
    last_warn: Option<Instant>,
    failures_since_warn: u64,
}

/// One round; false once the cluster is gone.
async fn refresh_once(me: &Weak<Cluster>, state: &mut RefreshState) -> bool {
    let Some(me) = me.upgrade() else { return false };
    let now = Instant::now();
    state
        .not_supported
        .retain(|_, at| now.duration_since(*at) < NOT_SUPPORT_BACKOFF);
    let eps: Vec<Arc<Endpoint>> = me
        .balancer
        .load()
        .endpoints()
        .iter()
        .filter(|e| e.is_available() && !state.not_supported.contains_key(e.identity()))
        .cloned()
        .collect();
    let mut fetches = tokio::task::JoinSet::new();
    for ep in eps {
        let me = me.clone();
        fetches.spawn(async move {
            let r = me.fetch_meta(&ep).await;
            (ep, r)
        });
    }
    let mut first_error = None;
    while let Some(done) = fetches.join_next().await {
        let Ok((ep, r)) = done else { continue };
        match r {
            Ok(m) => ep.set_dynamic_weight(m.get(WEIGHT_KEY).map(String::as_str)),
            Err(FetchError::NotSupported) => {
                state.not_supported.insert(ep.identity().to_string(), now);
            }
            Err(FetchError::Failed(e)) => {
                state.failures_since_warn += 1;
                first_error.get_or_insert_with(|| format!("{}: {e}", ep.address()));
            }
        }
    }
    if let Some(e) = first_error
        && state
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
    {
        tracing::warn!(
            cluster = %me.conf_id, failures = state.failures_since_warn,
            "dynamic weight refresh failed, old weights kept (first: {e})"
        );
        state.last_warn = Some(now);
        state.failures_since_warn = 0;
    }
    if me.rebuild_if_weights_changed() {
        let weights: Vec<String> = me
            .balancer
            .load()
            .endpoints()
            .iter()
            .map(|e| format!("{}={}", e.address(), e.weight()))
            .collect();
        tracing::info!(cluster = %me.conf_id, ?weights, "wrr weights changed, balancer rebuilt");
    }
    true
}
