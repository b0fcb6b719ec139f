//! Load balancers (4.5). A `Balancer` is built from a refer's endpoint list (and, with traffic
//! control, group weights) and then only read: `select` picks one endpoint, `select_array` up to
//! three for HA. The cluster rebuilds it when the endpoint list changes; the request path keeps
//! the current one behind an `Arc` it swaps; it also rebuilds a wrr balancer when the weight
//! refresher (`cluster/weights.rs`) changed a weight (`Balancer::weights_changed`).
//!
//! Every policy skips unavailable endpoints the way upstream does: when the chosen endpoint is
//! unavailable, scan forward from a *second* random index (so a dead node's traffic spreads
//! over all others instead of landing on its neighbour). No available endpoint → `None`, which
//! HA turns into errcode 1001.
mod consistent_hash;
mod least_active;
mod random;
mod roundrobin;
mod select;
mod wrr;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
pub use crate::config::refer::{LbConfig, LbKind};
use consistent_hash::{HashBalancer, HashCarry};
use least_active::LeastActive;
use random::Random;
use roundrobin::RoundRobin;
pub use select::{LbRequest, MAX_SELECT_ARRAY_SIZE};
use select::{Select, gcd};
use wrr::Wrr;

/// Request meta key holding the consistent-hash key.
pub const CONSISTENT_HASH_META_KEY: &str = "consistentHashKey";
/// Group weights of the group-weight wrapper are clamped to this range.
const MIN_GROUP_WEIGHT: u32 = 1;
const MAX_GROUP_WEIGHT: u32 = 100;

#[derive(Debug)]
pub struct Balancer {
    config: LbConfig,
    endpoints: Vec<Arc<Endpoint>>,
    groups: Groups,
}

#[derive(Debug)]
enum Groups {
    /// No group weights ("mix mode"): one balancer over all endpoints.
    Single(Policy),
    /// Traffic control weights: a shuffled ring of group indexes, one balancer per group.
    Weighted {
        ring: Vec<usize>,
        groups: Vec<(String, Policy)>,
        next: AtomicUsize,
    },
}

impl Balancer {
    /// `group_weights` is the traffic-control weight list (`g1:3,g2:1`, 4.10); `None`, or a
    /// list without any `:weight`, puts all endpoints into one balancer.
    pub fn new(config: LbConfig, endpoints: Vec<Arc<Endpoint>>, group_weights: Option<&str>) -> Balancer {
        Self::build(config, endpoints, group_weights, None)
    }

    /// A balancer for a new endpoint list that keeps state worth keeping (the consistent-hash
    /// partition count, so keys stay where they were).
    pub fn rebuild(&self, endpoints: Vec<Arc<Endpoint>>, group_weights: Option<&str>) -> Balancer {
        let previous = match &self.groups {
            Groups::Single(Policy::Hash(h)) => Some(h.carry()),
            _ => None,
        };
        Self::build(self.config.clone(), endpoints, group_weights, previous)
    }

    fn build(
        config: LbConfig,
        endpoints: Vec<Arc<Endpoint>>,
        group_weights: Option<&str>,
        previous: Option<HashCarry>,
    ) -> Balancer {
        let weights = group_weights.and_then(parse_group_weights);
        let groups = match weights {
            None => Groups::Single(Policy::build(&config, endpoints.clone(), previous)),
            Some(weights) => Self::weighted(&config, &endpoints, &weights)
                .unwrap_or_else(|| Groups::Single(Policy::build(&config, endpoints.clone(), previous))),
        };
        Balancer {
            config,
            endpoints,
            groups,
        }
    }

    fn weighted(
        config: &LbConfig,
        endpoints: &[Arc<Endpoint>],
        weights: &HashMap<String, u32>,
    ) -> Option<Groups> {
        let mut by_group: BTreeMap<&str, Vec<Arc<Endpoint>>> = BTreeMap::new();
        for ep in endpoints {
            by_group
                .entry(ep.url().group.as_str())
                .or_default()
                .push(ep.clone());
        }
        // A group without a weight gets 0: it is never chosen (as upstream).
        let raw: Vec<u32> = by_group
            .keys()
            .map(|g| weights.get(*g).copied().unwrap_or(0))
            .collect();
        let gcd = raw.iter().copied().fold(0, gcd);
        if gcd == 0 {
            return None;
        }
        let mut ring = Vec::new();
        let mut groups = Vec::new();
        for (i, ((g, eps), w)) in by_group.into_iter().zip(raw).enumerate() {
            ring.extend(std::iter::repeat_n(i, (w / gcd) as usize));
            groups.push((g.to_string(), Policy::build(config, eps, None)));
        }
        fastrand::shuffle(&mut ring);
        Some(Groups::Weighted {
            ring,
            groups,
            next: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &LbConfig {
        &self.config
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn select(&self, req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        match &self.groups {
            Groups::Single(p) => p.select(req),
            Groups::Weighted { ring, groups, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                // Upstream gives up when the chosen group has nothing available; we try the
                // other groups in ring order before answering "no endpoint".
                (0..ring.len()).find_map(|i| groups[ring[(start + i) % ring.len()]].1.select(req))
            }
        }
    }

    pub fn select_array(&self, req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        match &self.groups {
            Groups::Single(p) => p.select_array(req),
            Groups::Weighted { ring, groups, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                groups[ring[start % ring.len()]].1.select_array(req)
            }
        }
    }

    /// For wrr: whether any endpoint's weight differs from the one this balancer was built with
    /// (the weight refresher, `cluster/weights.rs`, checks it every period and rebuilds).
    pub fn weights_changed(&self) -> bool {
        let changed = |p: &Policy| match p {
            Policy::Wrr(w) => w.weights_changed(),
            _ => false,
        };
        match &self.groups {
            Groups::Single(p) => changed(p),
            Groups::Weighted { groups, .. } => groups.iter().any(|(_, p)| changed(p)),
        }
    }
}

/// `g1:3,g2:1` → weights clamped to [1, 100] (unparsable → 1); `None` in mix mode (no entry
/// carries a weight).
fn parse_group_weights(s: &str) -> Option<HashMap<String, u32>> {
    let mut mix = true;
    let mut out = HashMap::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        match item.split_once(':') {
            None => {
                out.insert(item.to_string(), MIN_GROUP_WEIGHT);
            }
            Some((g, w)) => {
                mix = false;
                let w = w
                    .parse::<i64>()
                    .map(|w| w.clamp(i64::from(MIN_GROUP_WEIGHT), i64::from(MAX_GROUP_WEIGHT)) as u32)
                    .unwrap_or(MIN_GROUP_WEIGHT);
                out.insert(g.to_string(), w);
            }
        }
    }
    (!mix).then_some(out)
}

#[derive(Debug)]
enum Policy {
    Random(Random),
    RoundRobin(RoundRobin),
    Wrr(Wrr),
    Hash(Box<HashBalancer>),
    LeastActive(LeastActive),
}

impl Policy {
    fn build(config: &LbConfig, eps: Vec<Arc<Endpoint>>, previous: Option<HashCarry>) -> Policy {
        match config.kind {
            LbKind::Random => Policy::Random(Random::new(eps)),
            LbKind::RoundRobin => Policy::RoundRobin(RoundRobin::new(eps)),
            LbKind::WeightedRoundRobin => Policy::Wrr(Wrr::new(eps)),
            LbKind::ConsistentHashKey => Policy::Hash(Box::new(HashBalancer::new(config, eps, previous))),
            LbKind::LeastActive => Policy::LeastActive(LeastActive::new(eps)),
        }
    }

    fn get(&self) -> &dyn Select {
        match self {
            Policy::Random(p) => p,
            Policy::RoundRobin(p) => p,
            Policy::Wrr(p) => p,
            Policy::Hash(p) => p.as_ref(),
            Policy::LeastActive(p) => p,
        }
    }

    fn select(&self, req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        self.get().select(req)
    }

    fn select_array(&self, req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        self.get().select_array(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::Url;

    pub(super) fn ep(host: &str, group: &str, weight: Option<u32>) -> Arc<Endpoint> {
        let mut u = Url::new("motan2", host, 9982, "p", group);
        if let Some(w) = weight {
            u.params.insert("META_WEIGHT".into(), w.to_string());
        }
        let e = Endpoint::new(u);
        e.set_available(true);
        Arc::new(e)
    }

    pub(super) fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| ep(&format!("127.0.0.{}", i + 1), "g", None))
            .collect()
    }

    pub(super) fn count(b: &Balancer, picks: usize, key: Option<&str>) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            let e = b.select(&LbRequest { hash_key: key }).expect("an endpoint");
            *m.entry(e.url().host.clone()).or_insert(0) += 1;
        }
        m
    }

    pub(super) fn within(actual: usize, expected: f64, tolerance: f64) -> bool {
        (actual as f64 - expected).abs() <= expected * tolerance
    }

    pub(super) fn lb(kind: LbKind, eps: Vec<Arc<Endpoint>>) -> Balancer {
        Balancer::new(LbConfig::new(kind), eps, None)
    }

    #[test]
    fn names_parse_and_unknown_is_explained() {
        for n in LbKind::NAMES {
            assert_eq!(LbKind::from_name(n).unwrap().name(), n);
        }
        assert_eq!(
            LbKind::from_name("foo").unwrap_err(),
            "unknown load balancer \"foo\" (expected random, roundrobin, wrr, consistentHashKey, leastActive)"
        );
        let c = LbConfig::from_url(&Url::new("motan2", "", 0, "p", "g")).unwrap();
        assert_eq!(c.kind, LbKind::Random);
        let u = Url::new("motan2", "", 0, "p", "g")
            .with_param("loadbalance", "consistentHashKey")
            .with_param("consistentHashKey.load", "1.0")
            .with_param("consistentHashKey.replica", "7");
        let c = LbConfig::from_url(&u).unwrap();
        assert_eq!(
            (c.kind, c.hash_load, c.hash_replica),
            (LbKind::ConsistentHashKey, 1.1, 7)
        );
    }

    #[test]
    fn empty_and_all_unavailable_give_none() {
        for kind in [
            LbKind::Random,
            LbKind::RoundRobin,
            LbKind::WeightedRoundRobin,
            LbKind::ConsistentHashKey,
            LbKind::LeastActive,
        ] {
            let b = lb(kind, vec![]);
            assert!(b.select(&LbRequest::default()).is_none(), "{kind:?}");
            assert!(b.select_array(&LbRequest::default()).is_empty(), "{kind:?}");
            let all = eps(4);
            all.iter().for_each(|e| e.set_available(false));
            let b = lb(kind, all);
            assert!(b.select(&LbRequest { hash_key: Some("k") }).is_none(), "{kind:?}");
            assert!(
                b.select_array(&LbRequest { hash_key: Some("k") }).is_empty(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn select_array_gives_up_to_three_distinct_available() {
        let list = eps(5);
        list[2].set_available(false);
        for kind in [
            LbKind::Random,
            LbKind::RoundRobin,
            LbKind::LeastActive,
            LbKind::ConsistentHashKey,
        ] {
            let b = lb(kind, list.clone());
            for _ in 0..50 {
                let a = b.select_array(&LbRequest {
                    hash_key: Some("user-1"),
                });
                assert!(!a.is_empty() && a.len() <= 3, "{kind:?}");
                assert!(a.iter().all(|e| e.is_available()), "{kind:?}");
                let mut hosts: Vec<_> = a.iter().map(|e| e.address()).collect();
                hosts.sort();
                hosts.dedup();
                assert_eq!(hosts.len(), a.len(), "{kind:?}: distinct");
            }
        }
        // Random/roundrobin: three in a row from the chosen index.
        let b = lb(LbKind::Random, eps(5));
        let a = b.select_array(&LbRequest::default());
        assert_eq!(a.len(), 3);
        let idx = |e: &Arc<Endpoint>| b.endpoints().iter().position(|x| Arc::ptr_eq(x, e)).unwrap();
        assert_eq!((idx(&a[0]) + 1) % 5, idx(&a[1]));
        // wrr has no array selection upstream.
        assert!(
            lb(LbKind::WeightedRoundRobin, eps(3))
                .select_array(&LbRequest::default())
                .is_empty()
        );
    }

    #[test]
    fn group_weights_split_traffic_by_group() {
        let list = vec![
            ep("127.0.0.1", "g-yf", None),
            ep("127.0.0.2", "g-yf", None),
            ep("127.0.0.3", "g-tc", None),
        ];
        let b = Balancer::new(
            LbConfig::new(LbKind::RoundRobin),
            list.clone(),
            Some("g-yf:60,g-tc:20"),
        );
        let c = count(&b, 8_000, None);
        assert_eq!(c["127.0.0.1"] + c["127.0.0.2"], 6_000, "{c:?}");
        assert_eq!(c["127.0.0.3"], 2_000);
        // Mix mode (no weights): one balancer over all.
        let b = Balancer::new(LbConfig::new(LbKind::RoundRobin), list.clone(), Some("g-yf,g-tc"));
        let c = count(&b, 9_000, None);
        assert_eq!(c["127.0.0.3"], 3_000);
        // Clamping: 0 → 1, 1000 → 100.
        let b = Balancer::new(
            LbConfig::new(LbKind::Random),
            list.clone(),
            Some("g-yf:1000,g-tc:0"),
        );
        let c = count(&b, 10_100, None);
        assert_eq!(c["127.0.0.3"], 100);
        // A group without endpoints available: the others answer.
        list[2].set_available(false);
        let b = Balancer::new(LbConfig::new(LbKind::Random), list.clone(), Some("g-yf:1,g-tc:3"));
        assert_eq!(count(&b, 100, None).values().sum::<usize>(), 100);
        // No endpoint of a weighted group at all: fall back to all endpoints.
        let b = Balancer::new(LbConfig::new(LbKind::Random), list, Some("other:3"));
        assert_eq!(count(&b, 100, None).values().sum::<usize>(), 100);
    }

    #[test]
    fn group_weight_parsing() {
        assert_eq!(parse_group_weights("a,b"), None);
        assert_eq!(parse_group_weights(""), None);
        let w = parse_group_weights("a:3,b,c:x,d:-5,e:101").unwrap();
        assert_eq!((w["a"], w["b"], w["c"], w["d"], w["e"]), (3, 1, 1, 1, 100));
        assert_eq!(gcd(12, 18), 6);
        assert_eq!(gcd(0, 7), 7);
    }
}
