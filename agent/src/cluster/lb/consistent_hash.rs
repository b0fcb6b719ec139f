//! `consistentHashKey`: a request's hash key (meta `consistentHashKey`) always lands on the same
//! endpoint while the list does not change, and only about 1/n of the keys move when it does.
use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use super::random::select_one_at_random;
use super::select::{LbRequest, MAX_SELECT_ARRAY_SIZE, Select, select_array_from};
use crate::cluster::endpoint::Endpoint;
use crate::config::refer::LbConfig;

const HASH_PART_ADDEND: usize = 271;
const HASH_REPLICA_SMALL: usize = 20;
const HASH_REPLICA_LARGE: usize = 10;
const HASH_BUILD_TRIES: usize = 20;

/// What a rebuild keeps from the previous consistent-hash balancer.
#[derive(Clone, Copy, Debug)]
pub(super) struct HashCarry {
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
pub(super) struct HashBalancer {
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
    pub(super) fn new(
        config: &LbConfig,
        eps: Vec<Arc<Endpoint>>,
        previous: Option<HashCarry>,
    ) -> HashBalancer {
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

    pub(super) fn carry(&self) -> HashCarry {
        self.carry
    }

    fn owner(&self, key: &str) -> Option<&Arc<Endpoint>> {
        let ring = self.ring.as_ref()?;
        let part = (xxh64(key.as_bytes(), 0) % ring.owners.len() as u64) as usize;
        Some(&self.eps[ring.members[ring.owners[part]]])
    }
}

impl Select for HashBalancer {
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
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::cluster::lb::tests::{count, eps, lb};
    use crate::cluster::lb::{Balancer, Groups, LbConfig, LbKind, LbRequest, Policy};

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
}
