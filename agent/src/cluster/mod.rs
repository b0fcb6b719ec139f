//! The cluster stage (4.4–4.8): route a request to a refer (`route`), keep the refer's
//! endpoints from registry notifications (`EndpointSet`), pick one (`lb`), retry or hedge
//! (`ha`), track endpoint health (`endpoint`), and read registry commands (`command`).
//! Everything here is pure decision code and state; the request path owns the I/O and calls
//! into it.
pub mod command;
pub mod endpoint;
pub mod ha;
pub mod lb;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::url::Url;
pub use endpoint::Endpoint;

/// errcode of "no endpoint available in the cluster" (`ENoEndpoints`).
pub const E_NO_ENDPOINTS: i32 = 1001;
/// errcode of "endpoint could not get a connection" (`ENoChannel`).
pub const E_NO_CHANNEL: i32 = 1002;

/// Exception class of a motan2 error (`M_e` errtype). This is the one place the codec's
/// exception type maps onto: `ErrorKind::from_errtype(e.errtype)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// errtype 0: framework/codec failure; retried; counts against the endpoint.
    Framework,
    /// errtype 1: service/transport failure (timeout, no endpoint, connection); retried;
    /// counts against the endpoint.
    Service,
    /// errtype 2: thrown by the business code; returned at once, never retried, resets the
    /// endpoint's error counter.
    Business,
}

impl ErrorKind {
    /// Unknown values are framework errors, as Java does.
    pub fn from_errtype(errtype: i64) -> ErrorKind {
        match errtype {
            1 => ErrorKind::Service,
            2 => ErrorKind::Business,
            _ => ErrorKind::Framework,
        }
    }

    pub fn errtype(self) -> i32 {
        match self {
            ErrorKind::Framework => 0,
            ErrorKind::Service => 1,
            ErrorKind::Business => 2,
        }
    }
}

/// A failed call as the cluster sees it: an upstream exception response, or an error the
/// agent itself produced (timeout, no endpoint...), which becomes an exception response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub code: i32,
    pub message: String,
    pub kind: ErrorKind,
}

impl CallError {
    pub fn new(code: i32, message: impl Into<String>, kind: ErrorKind) -> CallError {
        CallError {
            code,
            message: message.into(),
            kind,
        }
    }

    /// An agent-built service error (errtype 1), the kind every cluster-level failure has.
    pub fn service(code: i32, message: impl Into<String>) -> CallError {
        CallError::new(code, message, ErrorKind::Service)
    }

    /// Whether HA may try another attempt after this error (not for business errors).
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Business
    }

    /// Whether it counts toward the endpoint's consecutive error threshold.
    pub fn counts_against_endpoint(&self) -> bool {
        self.kind != ErrorKind::Business
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "errcode {} errtype {}: {}",
            self.code,
            self.kind.errtype(),
            self.message
        )
    }
}

impl std::error::Error for CallError {}

/// The error a degraded cluster answers with (4.4, 4.10).
pub fn degraded_error() -> CallError {
    CallError::service(500, "cluster not available, maybe caused by degrade")
}

/// A refer's endpoints, per registry, as registry notifications arrive (4.4).
#[derive(Debug, Default)]
pub struct EndpointSet {
    by_registry: BTreeMap<String, Vec<Arc<Endpoint>>>,
}

/// What a notification changed.
#[derive(Debug, Default)]
pub struct NotifyOutcome {
    /// False when the notification was ignored (empty list with a single registry).
    pub changed: bool,
    /// Endpoints no longer used; upstream destroys them 2 s later so in-flight calls finish.
    pub removed: Vec<Arc<Endpoint>>,
    /// Newly created endpoints: the caller starts their connection pools.
    pub added: Vec<Arc<Endpoint>>,
}

impl EndpointSet {
    pub fn new() -> EndpointSet {
        EndpointSet::default()
    }

    /// Apply one registry's full server list for `refer`. Servers that cannot serve the refer
    /// are skipped; endpoints are reused by URL identity; a new endpoint's URL is the server
    /// URL with the refer's parameters merged over it (the refer wins, as upstream). An empty
    /// usable list is ignored when the refer has a single registry (the old endpoints stay,
    /// sharp edge 7), and drops that registry's endpoints otherwise.
    pub fn notify(
        &mut self,
        registry_id: &str,
        refer: &Url,
        registry_count: usize,
        servers: &[Url],
    ) -> NotifyOutcome {
        let mut old: HashMap<String, Arc<Endpoint>> = self
            .by_registry
            .get(registry_id)
            .into_iter()
            .flatten()
            .map(|e| (e.identity().to_string(), e.clone()))
            .collect();
        let mut out = NotifyOutcome::default();
        let mut fresh: Vec<Arc<Endpoint>> = Vec::with_capacity(servers.len());
        for server in servers.iter().filter(|s| s.can_serve(refer)) {
            let id = server.identity();
            if fresh.iter().any(|e| e.identity() == id) {
                continue;
            }
            let ep = match old.remove(&id) {
                Some(ep) => ep,
                None => {
                    let mut url = server.clone();
                    url.merge_params(&refer.params);
                    let ep = Arc::new(Endpoint::new(url));
                    out.added.push(ep.clone());
                    ep
                }
            };
            fresh.push(ep);
        }
        if fresh.is_empty() {
            if registry_count > 1
                && let Some(gone) = self.by_registry.remove(registry_id)
            {
                out.removed = gone;
                out.changed = true;
            }
            return out;
        }
        out.removed = old.into_values().collect();
        self.by_registry.insert(registry_id.to_string(), fresh);
        out.changed = true;
        out
    }

    /// All endpoints of all registries, shuffled so that clients with the same list do not
    /// all start on the same server (upstream shuffles before handing them to the balancer).
    pub fn shuffled(&self) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<Arc<Endpoint>> = self.by_registry.values().flatten().cloned().collect();
        fastrand::shuffle(&mut all);
        all
    }

    pub fn len(&self) -> usize {
        self.by_registry.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer() -> Url {
        Url::new("motan2", "", 0, "p", "g").with_param("requestTimeout", "300")
    }

    fn server(host: &str) -> Url {
        Url::new("motan2", host, 9982, "p", "g").with_param("requestTimeout", "999")
    }

    #[test]
    fn errtype_mapping() {
        assert_eq!(ErrorKind::from_errtype(0), ErrorKind::Framework);
        assert_eq!(ErrorKind::from_errtype(1), ErrorKind::Service);
        assert_eq!(ErrorKind::from_errtype(2), ErrorKind::Business);
        assert_eq!(ErrorKind::from_errtype(7), ErrorKind::Framework);
        assert_eq!(ErrorKind::Business.errtype(), 2);
        assert!(!CallError::new(503, "x", ErrorKind::Business).is_retryable());
        assert!(CallError::service(400, "x").is_retryable());
        assert_eq!(degraded_error().code, 500);
    }

    #[test]
    fn notify_reuses_by_identity_and_merges_refer_params() {
        let mut set = EndpointSet::new();
        let out = set.notify("zk", &refer(), 1, &[server("10.0.0.1"), server("10.0.0.2")]);
        assert!(out.changed);
        assert_eq!(out.added.len(), 2);
        assert_eq!(out.added[0].url().params["requestTimeout"], "300");
        let first = set
            .shuffled()
            .into_iter()
            .find(|e| e.url().host == "10.0.0.1")
            .unwrap();
        let out = set.notify("zk", &refer(), 1, &[server("10.0.0.1"), server("10.0.0.3")]);
        assert_eq!(out.added.len(), 1);
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.removed[0].url().host, "10.0.0.2");
        let again = set
            .shuffled()
            .into_iter()
            .find(|e| e.url().host == "10.0.0.1")
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "endpoint reused, not rebuilt");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn notify_skips_servers_that_cannot_serve() {
        let mut set = EndpointSet::new();
        let mut wrong = server("10.0.0.9");
        wrong.path = "other".into();
        let out = set.notify(
            "zk",
            &refer(),
            1,
            &[wrong, server("10.0.0.1"), server("10.0.0.1")],
        );
        assert_eq!(out.added.len(), 1);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn empty_notification_single_vs_multi_registry() {
        let mut set = EndpointSet::new();
        set.notify("zk", &refer(), 1, &[server("10.0.0.1")]);
        let out = set.notify("zk", &refer(), 1, &[]);
        assert!(!out.changed);
        assert_eq!(set.len(), 1, "single registry: stale list kept");

        let mut set = EndpointSet::new();
        set.notify("zk", &refer(), 2, &[server("10.0.0.1")]);
        set.notify("direct", &refer(), 2, &[server("10.0.0.2")]);
        assert_eq!(set.len(), 2);
        let out = set.notify("zk", &refer(), 2, &[]);
        assert!(out.changed);
        assert_eq!(out.removed.len(), 1);
        assert_eq!(set.len(), 1);
    }
}
