//! A refer's endpoints as the registries report them (4.4): one list per registry, endpoints
//! reused by URL identity, the refer's parameters merged over each server URL.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::endpoint::Endpoint;
use crate::url::Url;

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
        let old = self.by_registry.remove(registry_id).unwrap_or_default();
        // Old endpoints by identity (borrowed: a list change costs no copy of them).
        let index: HashMap<&str, usize> = old.iter().enumerate().map(|(i, e)| (e.identity(), i)).collect();
        let mut reused = vec![false; old.len()];
        let mut out = NotifyOutcome::default();
        let mut fresh: Vec<Arc<Endpoint>> = Vec::with_capacity(servers.len());
        let mut seen: HashSet<String> = HashSet::with_capacity(servers.len());
        for server in servers.iter().filter(|s| s.can_serve(refer)) {
            let id = server.identity();
            let ep = match index.get(id.as_str()) {
                Some(&i) if !reused[i] => {
                    reused[i] = true;
                    old[i].clone()
                }
                // Listed twice.
                Some(_) => continue,
                None => {
                    if !seen.insert(id) {
                        continue;
                    }
                    let mut url = server.clone();
                    url.merge_params(&refer.params);
                    let ep = Arc::new(Endpoint::new(url));
                    out.added.push(ep.clone());
                    ep
                }
            };
            fresh.push(ep);
        }
        drop(index);
        if fresh.is_empty() {
            match registry_count > 1 {
                true if !old.is_empty() => {
                    out.removed = old;
                    out.changed = true;
                }
                true => {}
                // A single registry's empty list is ignored: its endpoints stay.
                false => {
                    if !old.is_empty() {
                        self.by_registry.insert(registry_id.to_string(), old);
                    }
                }
            }
            return out;
        }
        out.removed = old
            .into_iter()
            .zip(reused)
            .filter_map(|(e, used)| (!used).then_some(e))
            .collect();
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
        Url::new("motan2", "", 0, "p", "g")
            .with_param("requestTimeout", "300")
            .with_param(super::super::endpoint::WEIGHT_META_KEY, "7")
    }

    fn server(host: &str) -> Url {
        Url::new("motan2", host, 9982, "p", "g")
            .with_param("requestTimeout", "999")
            .with_param(super::super::endpoint::WEIGHT_META_KEY, "3")
    }

    #[test]
    fn notify_reuses_by_identity_and_merges_refer_params() {
        let mut set = EndpointSet::new();
        let out = set.notify("zk", &refer(), 1, &[server("10.0.0.1"), server("10.0.0.2")]);
        assert!(out.changed);
        assert_eq!(out.added.len(), 2);
        // The refer's settings win (read when the endpoint is made).
        assert_eq!(out.added[0].weight(), 7);
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
