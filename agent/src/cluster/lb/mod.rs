//! Load balancers (4.5). A `Balancer` is built from a refer's endpoint list (and, with traffic
//! control, group weights) and then only read: `select` picks one endpoint, `select_array` up to
//! three for HA. The cluster rebuilds it when the endpoint list changes; the request path keeps
//! the current one behind an `Arc` it swaps. (Rebuilding when wrr weights change waits for the
//! weight refresher, issue #20: see `Balancer::weights_changed`.)
//!
//! Every policy skips unavailable endpoints the way upstream does: when the chosen endpoint is
//! unavailable, scan forward from a *second* random index (so a dead node's traffic spreads
//! over all others instead of landing on its neighbour). No available endpoint → `None`, which
//! HA turns into errcode 1001.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use xxhash_rust::xxh64::xxh64;

use super::endpoint::Endpoint;
use crate::url::{Url, keys};

/// Most endpoints `select_array` returns.
pub const MAX_SELECT_ARRAY_SIZE: usize = 3;
/// Request meta key holding the consistent-hash key.
pub const CONSISTENT_HASH_META_KEY: &str = "consistentHashKey";
/// Group weights of the group-weight wrapper are clamped to this range.
const MIN_GROUP_WEIGHT: u32 = 1;
const MAX_GROUP_WEIGHT: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbKind {
    Random,
    RoundRobin,
    WeightedRoundRobin,
    ConsistentHashKey,
    /// Not in motan-go (Java's "activeWeight" idea): fewest in-flight requests, ties random.
    LeastActive,
}

impl LbKind {
    pub const NAMES: [&'static str; 5] = ["random", "roundrobin", "wrr", "consistentHashKey", "leastActive"];

    pub fn name(self) -> &'static str {
        match self {
            LbKind::Random => "random",
            LbKind::RoundRobin => "roundrobin",
            LbKind::WeightedRoundRobin => "wrr",
            LbKind::ConsistentHashKey => "consistentHashKey",
            LbKind::LeastActive => "leastActive",
        }
    }

    pub fn from_name(name: &str) -> Result<LbKind, String> {
        Ok(match name {
            "random" => LbKind::Random,
            "roundrobin" => LbKind::RoundRobin,
            "wrr" => LbKind::WeightedRoundRobin,
            "consistentHashKey" => LbKind::ConsistentHashKey,
            "leastActive" => LbKind::LeastActive,
            other => {
                return Err(format!(
                    "unknown load balancer {other:?} (expected {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }
}

/// The balancer settings of a refer.
#[derive(Clone, Debug, PartialEq)]
pub struct LbConfig {
    pub kind: LbKind,
    /// `consistentHashKey.partSize`: partition count if ≥ 2n, else 5n + 271 is used.
    pub hash_part_size: usize,
    /// `consistentHashKey.load`: bounded-load factor, at least 1.1.
    pub hash_load: f64,
    /// `consistentHashKey.replica`: virtual nodes per member; 0 → 20 (< 100 endpoints) or 10.
    pub hash_replica: usize,
}

impl LbConfig {
    pub const MIN_HASH_LOAD: f64 = 1.1;

    pub fn new(kind: LbKind) -> LbConfig {
        LbConfig {
            kind,
            hash_part_size: 0,
            hash_load: Self::MIN_HASH_LOAD,
            hash_replica: 0,
        }
    }

    /// From the refer's `loadbalance` (default `random`) and `consistentHashKey.*` parameters.
    pub fn from_url(refer: &Url) -> Result<LbConfig, String> {
        let kind = LbKind::from_name(refer.get_str(keys::LOADBALANCE, "random"))?;
        let load = refer
            .param("consistentHashKey.load")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|l| *l >= Self::MIN_HASH_LOAD)
            .unwrap_or(Self::MIN_HASH_LOAD);
        Ok(LbConfig {
            kind,
            hash_part_size: refer.get_int("consistentHashKey.partSize", 0).max(0) as usize,
            hash_load: load,
            hash_replica: refer.get_int("consistentHashKey.replica", 0).max(0) as usize,
        })
    }
}

/// What a balancer looks at in a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct LbRequest<'a> {
    /// Meta `consistentHashKey` (or whatever the request path chose as the key).
    pub hash_key: Option<&'a str>,
}

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

    /// For wrr: whether any endpoint's weight differs from the one this balancer was built with.
    /// Not called yet: it is for the planned weight refresher (motan-go's
    /// `weightRefreshPeriodSecond`, issue #20), which would check it every period and rebuild.
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

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Debug)]
enum Policy {
    Random(Vec<Arc<Endpoint>>),
    RoundRobin {
        eps: Vec<Arc<Endpoint>>,
        next: AtomicUsize,
    },
    Wrr(Wrr),
    Hash(Box<HashBalancer>),
    LeastActive(Vec<Arc<Endpoint>>),
}

impl Policy {
    fn build(config: &LbConfig, eps: Vec<Arc<Endpoint>>, previous: Option<HashCarry>) -> Policy {
        match config.kind {
            LbKind::Random => Policy::Random(eps),
            LbKind::RoundRobin => Policy::RoundRobin {
                eps,
                next: AtomicUsize::new(0),
            },
            LbKind::WeightedRoundRobin => Policy::Wrr(Wrr::new(eps)),
            LbKind::ConsistentHashKey => Policy::Hash(Box::new(HashBalancer::new(config, eps, previous))),
            LbKind::LeastActive => Policy::LeastActive(eps),
        }
    }

    fn select(&self, req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        match self {
            Policy::Random(eps) => select_one_at_random(eps).map(|i| eps[i].clone()),
            Policy::RoundRobin { eps, next } => round_robin(eps, next).map(|i| eps[i].clone()),
            Policy::Wrr(w) => w.select(),
            Policy::Hash(h) => h.select(req),
            Policy::LeastActive(eps) => least_active(eps),
        }
    }

    fn select_array(&self, req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        match self {
            Policy::Random(eps) => select_one_at_random(eps)
                .map(|i| select_array_from(eps, i))
                .unwrap_or_default(),
            Policy::RoundRobin { eps, next } => round_robin(eps, next)
                .map(|i| select_array_from(eps, i))
                .unwrap_or_default(),
            // Upstream's wrr has no array selection; HA only uses `select` anyway.
            Policy::Wrr(_) => Vec::new(),
            Policy::Hash(h) => h.select_array(req),
            Policy::LeastActive(eps) => {
                let mut v = least_active_order(eps);
                v.truncate(MAX_SELECT_ARRAY_SIZE);
                v
            }
        }
    }
}

/// Random index; if unavailable, scan forward from a second random index.
fn select_one_at_random(eps: &[Arc<Endpoint>]) -> Option<usize> {
    if eps.is_empty() {
        return None;
    }
    let n = eps.len();
    let i = fastrand::usize(..n);
    if eps[i].is_available() {
        return Some(i);
    }
    scan_available(eps, fastrand::usize(..n))
}

fn scan_available(eps: &[Arc<Endpoint>], from: usize) -> Option<usize> {
    let n = eps.len();
    (0..n).map(|k| (from + k) % n).find(|&j| eps[j].is_available())
}

fn round_robin(eps: &[Arc<Endpoint>], next: &AtomicUsize) -> Option<usize> {
    if eps.is_empty() {
        return None;
    }
    let i = next.fetch_add(1, Ordering::Relaxed) % eps.len();
    if eps[i].is_available() {
        Some(i)
    } else {
        select_one_at_random(eps)
    }
}

/// Up to three available endpoints, starting at `from` and going forward.
fn select_array_from(eps: &[Arc<Endpoint>], from: usize) -> Vec<Arc<Endpoint>> {
    let n = eps.len();
    (0..n)
        .map(|k| &eps[(from + k) % n])
        .filter(|e| e.is_available())
        .take(MAX_SELECT_ARRAY_SIZE)
        .cloned()
        .collect()
}

/// The available endpoint with the fewest requests in flight; ties broken uniformly at random
/// (reservoir sampling over the tied ones).
fn least_active(eps: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
    let mut best: Option<(usize, &Arc<Endpoint>)> = None;
    let mut ties = 0u32;
    for e in eps.iter().filter(|e| e.is_available()) {
        let a = e.active();
        match best {
            Some((b, _)) if a > b => {}
            Some((b, _)) if a == b => {
                ties += 1;
                if fastrand::u32(..ties) == 0 {
                    best = Some((a, e));
                }
            }
            _ => {
                best = Some((a, e));
                ties = 1;
            }
        }
    }
    best.map(|(_, e)| e.clone())
}

/// Available endpoints by ascending in-flight count; equal counts in random order (the scan
/// starts at a random offset and the sort is stable).
fn least_active_order(eps: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
    if eps.is_empty() {
        return Vec::new();
    }
    let n = eps.len();
    let start = fastrand::usize(..n);
    let mut v: Vec<(usize, Arc<Endpoint>)> = (0..n)
        .map(|k| &eps[(start + k) % n])
        .filter(|e| e.is_available())
        .map(|e| (e.active(), e.clone()))
        .collect();
    v.sort_by_key(|(a, _)| *a);
    v.into_iter().map(|(_, e)| e).collect()
}

// ---- weighted round robin ------------------------------------------------------------------

/// Precomputed ring is used up to this many endpoints and this total (divided) weight.
const WRR_RING_MAX_ENDPOINTS: usize = 256;
const WRR_RING_MAX_TOTAL: u32 = 256 * 20;
const SWRR_WINDOW: usize = 50;

#[derive(Debug)]
struct Wrr {
    eps: Vec<Arc<Endpoint>>,
    /// Weights as read at build time (before GCD division), to detect changes.
    built_weights: Vec<u32>,
    selector: WrrSelector,
}

#[derive(Debug)]
enum WrrSelector {
    /// All weights equal: plain round robin.
    RoundRobin(AtomicUsize),
    /// Shuffled ring of endpoint indexes, each repeated weight/gcd times.
    Ring { ring: Vec<u8>, next: AtomicUsize },
    /// Many endpoints or large weights: nginx's smooth weighted round robin over a window that
    /// slides by `window` per pick (upstream's SlidingWindowWeightedRoundRobinSelector).
    SlidingWindow {
        weights: Vec<i64>,
        current: Vec<AtomicI64>,
        window: usize,
        next: AtomicUsize,
    },
}

impl Wrr {
    fn new(eps: Vec<Arc<Endpoint>>) -> Wrr {
        let built_weights: Vec<u32> = eps.iter().map(|e| e.weight()).collect();
        let selector = Self::selector(&built_weights);
        Wrr {
            eps,
            built_weights,
            selector,
        }
    }

    fn selector(raw: &[u32]) -> WrrSelector {
        if raw.windows(2).all(|w| w[0] == w[1]) {
            return WrrSelector::RoundRobin(AtomicUsize::new(0));
        }
        let g = raw.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<u32> = raw.iter().map(|w| w / g).collect();
        let total: u32 = weights.iter().sum();
        if weights.len() <= WRR_RING_MAX_ENDPOINTS && total <= WRR_RING_MAX_TOTAL {
            let mut ring = Vec::with_capacity(total as usize);
            for (i, w) in weights.iter().enumerate() {
                ring.extend(std::iter::repeat_n(i as u8, *w as usize));
            }
            fastrand::shuffle(&mut ring);
            return WrrSelector::Ring {
                ring,
                next: AtomicUsize::new(0),
            };
        }
        let n = weights.len();
        let mut window = n.min(SWRR_WINDOW);
        if n > SWRR_WINDOW {
            // A window that does not divide n makes its start drift over all endpoints.
            while n.is_multiple_of(window) {
                window -= 1;
            }
        }
        WrrSelector::SlidingWindow {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: (0..n).map(|_| AtomicI64::new(0)).collect(),
            window,
            next: AtomicUsize::new(0),
        }
    }

    fn weights_changed(&self) -> bool {
        self.eps
            .iter()
            .zip(&self.built_weights)
            .any(|(e, w)| e.weight() != *w)
    }

    fn select(&self) -> Option<Arc<Endpoint>> {
        let eps = &self.eps;
        if eps.is_empty() {
            return None;
        }
        match &self.selector {
            WrrSelector::RoundRobin(next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % eps.len();
                if eps[i].is_available() {
                    return Some(eps[i].clone());
                }
                scan_available(eps, fastrand::usize(..eps.len())).map(|i| eps[i].clone())
            }
            WrrSelector::Ring { ring, next } => {
                let ep = &eps[ring[next.fetch_add(1, Ordering::Relaxed) % ring.len()] as usize];
                if ep.is_available() {
                    return Some(ep.clone());
                }
                let start = fastrand::usize(..ring.len());
                (0..ring.len())
                    .map(|k| &eps[ring[(start + k) % ring.len()] as usize])
                    .find(|e| e.is_available())
                    .cloned()
            }
            WrrSelector::SlidingWindow {
                weights,
                current,
                window,
                next,
            } => {
                let n = eps.len();
                let start = next.fetch_add(*window, Ordering::Relaxed);
                let mut total = 0;
                let mut best: Option<(i64, usize)> = None;
                for k in 0..*window {
                    let i = (start + k) % n;
                    if !eps[i].is_available() {
                        continue;
                    }
                    let cur = current[i].fetch_add(weights[i], Ordering::Relaxed) + weights[i];
                    total += weights[i];
                    if best.is_none_or(|(b, _)| cur > b) {
                        best = Some((cur, i));
                    }
                }
                if let Some((_, i)) = best {
                    current[i].fetch_sub(total, Ordering::Relaxed);
                    if eps[i].is_available() {
                        return Some(eps[i].clone());
                    }
                }
                let from = start + fastrand::usize(..*window);
                (1..n)
                    .map(|k| &eps[(from + k) % n])
                    .find(|e| e.is_available())
                    .cloned()
            }
        }
    }
}

// ---- consistent hash -----------------------------------------------------------------------

const HASH_PART_ADDEND: usize = 271;
const HASH_REPLICA_SMALL: usize = 20;
const HASH_REPLICA_LARGE: usize = 10;
const HASH_BUILD_TRIES: usize = 20;

/// What a rebuild keeps from the previous consistent-hash balancer.
#[derive(Clone, Copy, Debug)]
struct HashCarry {
    part_size: usize,
    load: f64,
    replica: usize,
}

/// Consistent hashing with bounded loads over a fixed number of partitions, the algorithm of
/// buraksezer/consistent v0.10.0 that motan-go uses, with xxhash64: members (`host:port`) get
/// `replica` points `xxh64("<member><i>")` on a ring; partition p (hash of its id as 8 bytes
/// little-endian) goes to the first member clockwise whose load is below
/// ceil((partitions / members) × load); a key lives in partition `xxh64(key) % partitions`.
/// Same inputs give the same placement as upstream, so keys land where motan-go puts them.
#[derive(Debug)]
struct HashBalancer {
    eps: Vec<Arc<Endpoint>>,
    ring: Option<HashRing>,
    carry: HashCarry,
}

#[derive(Debug)]
struct HashRing {
    /// Owner (index into `members`) of each partition.
    owners: Vec<usize>,
    /// Distinct members: endpoint index per member.
    members: Vec<usize>,
    /// Members sorted by `xxh64(name)` with their position, for "closest N" (replicas).
    by_name_hash: Vec<(u64, usize)>,
}

impl HashBalancer {
    fn new(config: &LbConfig, eps: Vec<Arc<Endpoint>>, previous: Option<HashCarry>) -> HashBalancer {
        let n = eps.len();
        let part_size = previous.map(|p| p.part_size).unwrap_or(config.hash_part_size);
        let part_size = if part_size < n * 2 {
            n * 5 + HASH_PART_ADDEND
        } else {
            part_size
        };
        let load = previous.map(|p| p.load).unwrap_or(config.hash_load);
        let replica = match previous.map(|p| p.replica).unwrap_or(config.hash_replica) {
            0 if n < 100 => HASH_REPLICA_SMALL,
            0 => HASH_REPLICA_LARGE,
            r => r,
        };
        let mut carry = HashCarry {
            part_size,
            load,
            replica,
        };
        let ring = if n <= 1 {
            None
        } else {
            // Raise the load until every partition finds room (upstream: 20 tries, +0.1 each).
            (0..=HASH_BUILD_TRIES).find_map(|k| {
                let l = load + 0.1 * k as f64;
                HashRing::build(&eps, part_size, replica, l).inspect(|_| carry.load = l)
            })
        };
        if n > 1 && ring.is_none() {
            tracing::error!(
                endpoints = n,
                part_size,
                "consistent hash ring could not be built; selecting at random"
            );
        }
        HashBalancer { eps, ring, carry }
    }

    fn carry(&self) -> HashCarry {
        self.carry
    }

    fn owner(&self, key: &str) -> Option<&Arc<Endpoint>> {
        let ring = self.ring.as_ref()?;
        let part = (xxh64(key.as_bytes(), 0) % ring.owners.len() as u64) as usize;
        Some(&self.eps[ring.members[ring.owners[part]]])
    }

    fn select(&self, req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        if self.eps.len() == 1 {
            // Upstream returns the only endpoint even when it is unavailable; we do not.
            return self.eps.first().filter(|e| e.is_available()).cloned();
        }
        if let Some(ep) = req.hash_key.filter(|k| !k.is_empty()).and_then(|k| self.owner(k))
            && ep.is_available()
        {
            return Some(ep.clone());
        }
        select_one_at_random(&self.eps).map(|i| self.eps[i].clone())
    }

    fn select_array(&self, req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        if self.eps.is_empty() {
            return Vec::new();
        }
        if self.eps.len() > MAX_SELECT_ARRAY_SIZE
            && let (Some(key), Some(ring)) = (req.hash_key.filter(|k| !k.is_empty()), &self.ring)
            && ring.members.len() >= MAX_SELECT_ARRAY_SIZE
        {
            let part = (xxh64(key.as_bytes(), 0) % ring.owners.len() as u64) as usize;
            let owner = ring.owners[part];
            let at = ring
                .by_name_hash
                .iter()
                .position(|(_, m)| *m == owner)
                .unwrap_or(0);
            let len = ring.by_name_hash.len();
            return (0..MAX_SELECT_ARRAY_SIZE)
                .map(|k| &self.eps[ring.members[ring.by_name_hash[(at + k) % len].1]])
                .filter(|e| e.is_available())
                .cloned()
                .collect();
        }
        select_array_from(&self.eps, fastrand::usize(..self.eps.len()))
    }
}

impl HashRing {
    fn build(eps: &[Arc<Endpoint>], part_count: usize, replica: usize, load: f64) -> Option<HashRing> {
        // Members are distinct addresses; a duplicate address keeps its first endpoint.
        let mut members: Vec<usize> = Vec::new();
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for (i, e) in eps.iter().enumerate() {
            if seen.insert(e.address(), ()).is_none() {
                members.push(i);
            }
        }
        let mut points: Vec<(u64, usize)> = Vec::with_capacity(members.len() * replica);
        for (m, &i) in members.iter().enumerate() {
            for r in 0..replica {
                let key = format!("{}{}", eps[i].address(), r);
                points.push((xxh64(key.as_bytes(), 0), m));
            }
        }
        points.sort_by_key(|p| p.0);
        // Upstream divides as integers before applying the load factor.
        let avg_load = ((part_count / members.len()) as f64 * load).ceil();
        let mut loads = vec![0f64; members.len()];
        let mut owners = Vec::with_capacity(part_count);
        for part in 0..part_count as u64 {
            let h = xxh64(&part.to_le_bytes(), 0);
            let mut idx = points.partition_point(|p| p.0 < h);
            if idx >= points.len() {
                idx = 0;
            }
            let mut tries = 0;
            loop {
                tries += 1;
                if tries >= points.len() {
                    return None;
                }
                let m = points[idx].1;
                if loads[m] + 1.0 <= avg_load {
                    loads[m] += 1.0;
                    owners.push(m);
                    break;
                }
                idx = (idx + 1) % points.len();
            }
        }
        let mut by_name_hash: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .map(|(m, &i)| (xxh64(eps[i].address().as_bytes(), 0), m))
            .collect();
        by_name_hash.sort_by_key(|p| p.0);
        Some(HashRing {
            owners,
            members,
            by_name_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, group: &str, weight: Option<u32>) -> Arc<Endpoint> {
        let mut u = Url::new("motan2", host, 9982, "p", group);
        if let Some(w) = weight {
            u.params.insert("META_WEIGHT".into(), w.to_string());
        }
        let e = Endpoint::new(u);
        e.set_available(true);
        Arc::new(e)
    }

    fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| ep(&format!("127.0.0.{}", i + 1), "g", None))
            .collect()
    }

    fn count(b: &Balancer, picks: usize, key: Option<&str>) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            let e = b.select(&LbRequest { hash_key: key }).expect("an endpoint");
            *m.entry(e.url().host.clone()).or_insert(0) += 1;
        }
        m
    }

    fn within(actual: usize, expected: f64, tolerance: f64) -> bool {
        (actual as f64 - expected).abs() <= expected * tolerance
    }

    fn lb(kind: LbKind, eps: Vec<Arc<Endpoint>>) -> Balancer {
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
    fn random_is_uniform_and_skips_unavailable() {
        let b = lb(LbKind::Random, eps(3));
        let c = count(&b, 30_000, None);
        for host in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
            assert!(within(c[host], 10_000.0, 0.06), "{c:?}");
        }
        let list = eps(3);
        list[1].set_available(false);
        let b = lb(LbKind::Random, list);
        let c = count(&b, 20_000, None);
        assert!(!c.contains_key("127.0.0.2"));
        assert!(within(c["127.0.0.1"], 10_000.0, 0.15), "{c:?}");
        assert!(within(c["127.0.0.3"], 10_000.0, 0.15), "{c:?}");
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
    fn roundrobin_is_exact_and_falls_back_when_unavailable() {
        let b = lb(LbKind::RoundRobin, eps(3));
        let c = count(&b, 9_000, None);
        assert!(c.values().all(|&v| v == 3_000), "{c:?}");
        let list = eps(3);
        list[0].set_available(false);
        let b = lb(LbKind::RoundRobin, list);
        let c = count(&b, 9_000, None);
        assert!(!c.contains_key("127.0.0.1"));
        assert_eq!(c.values().sum::<usize>(), 9_000);
    }

    #[test]
    fn wrr_three_to_one() {
        let list = vec![ep("127.0.0.1", "g", Some(30)), ep("127.0.0.2", "g", Some(10))];
        let b = lb(LbKind::WeightedRoundRobin, list);
        // Ring of 4 after GCD division: exact over multiples of the ring.
        let c = count(&b, 10_000, None);
        assert_eq!((c["127.0.0.1"], c["127.0.0.2"]), (7_500, 2_500));
        assert!(!b.weights_changed());
        b.endpoints()[1].set_dynamic_weight(Some("30"));
        assert!(b.weights_changed());
        let b = b.rebuild(b.endpoints().to_vec(), None);
        let c = count(&b, 10_000, None);
        assert_eq!(c["127.0.0.1"], 5_000, "equal weights: round robin");
    }

    #[test]
    fn wrr_default_weight_and_unavailable() {
        let list = vec![
            ep("127.0.0.1", "g", None),
            ep("127.0.0.2", "g", Some(20)),
            ep("127.0.0.3", "g", Some(30)),
        ];
        list[2].set_available(false);
        let b = lb(LbKind::WeightedRoundRobin, list);
        let c = count(&b, 6_000, None);
        assert!(!c.contains_key("127.0.0.3"));
        assert_eq!(c.values().sum::<usize>(), 6_000);
        // Picks of .3's ring slots go elsewhere; the 10:20 ratio holds for the rest.
        assert!(c["127.0.0.2"] > c["127.0.0.1"], "{c:?}");
    }

    #[test]
    fn wrr_sliding_window_for_many_endpoints() {
        // 300 endpoints > 256: the sliding-window selector; odd ones weigh 3, even ones 1.
        let list: Vec<_> = (0..300)
            .map(|i| {
                ep(
                    &format!("10.1.{}.{}", i / 250, i % 250),
                    "g",
                    Some(if i % 2 == 1 { 3 } else { 1 }),
                )
            })
            .collect();
        let heavy: Vec<String> = list
            .iter()
            .filter(|e| e.weight() == 3)
            .map(|e| e.url().host.clone())
            .collect();
        let b = lb(LbKind::WeightedRoundRobin, list);
        let c = count(&b, 40_000, None);
        let on_heavy: usize = heavy.iter().filter_map(|h| c.get(h)).sum();
        assert!(within(on_heavy, 30_000.0, 0.05), "heavy share {on_heavy}/40000");
        assert!(c.len() > 250, "spread over the endpoints: {}", c.len());
    }

    #[test]
    fn consistent_hash_sticks_and_moves_about_one_nth() {
        let n = 10;
        let list = eps(n);
        let b = lb(LbKind::ConsistentHashKey, list.clone());
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let before: Vec<String> = keys
            .iter()
            .map(|k| {
                b.select(&LbRequest { hash_key: Some(k) })
                    .unwrap()
                    .address()
                    .to_string()
            })
            .collect();
        // Sticky.
        for (k, owner) in keys.iter().zip(&before).take(100) {
            assert_eq!(
                b.select(&LbRequest { hash_key: Some(k) }).unwrap().address(),
                owner
            );
        }
        // Balanced within the bounded load (1.1 × average).
        let mut per: HashMap<&str, usize> = HashMap::new();
        before.iter().for_each(|a| *per.entry(a).or_default() += 1);
        assert_eq!(per.len(), n);
        assert!(per.values().all(|&v| v < 1_500), "{per:?}");
        // Remove one endpoint: only about 1/n of the keys move.
        let removed = list[3].address().to_string();
        let rest: Vec<_> = list.iter().filter(|e| e.address() != removed).cloned().collect();
        let b2 = b.rebuild(rest, None);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, old)| b2.select(&LbRequest { hash_key: Some(k) }).unwrap().address() != *old)
            .count();
        let had_removed = before.iter().filter(|a| **a == removed).count();
        assert!(moved >= had_removed);
        let frac = moved as f64 / keys.len() as f64;
        assert!(
            frac < 2.0 / n as f64,
            "moved {frac:.3} of keys (1/n = {:.3})",
            1.0 / n as f64
        );
    }

    #[test]
    fn consistent_hash_fallbacks() {
        let list = eps(4);
        let b = lb(LbKind::ConsistentHashKey, list);
        let owner = b.select(&LbRequest { hash_key: Some("k1") }).unwrap();
        owner.set_available(false);
        for _ in 0..50 {
            let e = b.select(&LbRequest { hash_key: Some("k1") }).unwrap();
            assert!(!Arc::ptr_eq(&e, &owner));
        }
        owner.set_available(true);
        // Empty key: random over all.
        let c = count(&b, 4_000, Some(""));
        assert_eq!(c.len(), 4);
        // Array: the owner first, then its ring neighbours, stable for the key.
        let a1 = b.select_array(&LbRequest { hash_key: Some("k1") });
        let a2 = b.select_array(&LbRequest { hash_key: Some("k1") });
        assert_eq!(a1.len(), 3);
        assert!(Arc::ptr_eq(&a1[0], &owner));
        assert!(a1.iter().zip(&a2).all(|(x, y)| Arc::ptr_eq(x, y)));
        // A single endpoint is always it while available.
        let one = eps(1);
        let b = lb(LbKind::ConsistentHashKey, one.clone());
        assert!(b.select(&LbRequest { hash_key: Some("x") }).is_some());
        one[0].set_available(false);
        assert!(b.select(&LbRequest { hash_key: Some("x") }).is_none());
    }

    #[test]
    fn consistent_hash_keeps_partition_count_on_rebuild() {
        let cfg = LbConfig {
            hash_part_size: 101,
            ..LbConfig::new(LbKind::ConsistentHashKey)
        };
        let b = Balancer::new(cfg, eps(5), None);
        let b2 = b.rebuild(eps(8), None);
        let part = |b: &Balancer| match &b.groups {
            Groups::Single(Policy::Hash(h)) => h.carry.part_size,
            _ => unreachable!(),
        };
        assert_eq!(part(&b), 101);
        assert_eq!(part(&b2), 101);
        // Too few partitions for the members: 5n + 271.
        let b3 = b.rebuild(eps(60), None);
        assert_eq!(part(&b3), 571);
    }

    #[test]
    fn least_active_prefers_idle_and_breaks_ties_randomly() {
        let list = eps(3);
        let _busy = [list[0].begin(), list[0].begin(), list[1].begin()];
        let b = lb(LbKind::LeastActive, list.clone());
        for _ in 0..100 {
            assert_eq!(b.select(&LbRequest::default()).unwrap().url().host, "127.0.0.3");
        }
        let a = b.select_array(&LbRequest::default());
        let hosts: Vec<_> = a.iter().map(|e| e.url().host.as_str()).collect();
        assert_eq!(hosts, ["127.0.0.3", "127.0.0.2", "127.0.0.1"]);
        let idle = eps(3);
        let b = lb(LbKind::LeastActive, idle);
        let c = count(&b, 15_000, None);
        for host in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
            assert!(within(c[host], 5_000.0, 0.08), "{c:?}");
        }
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
