//! `leastActive` (not in motan-go; Java's "activeWeight" idea): the fewest requests in flight,
//! ties broken at random.
use std::sync::Arc;

use super::select::{LbRequest, MAX_SELECT_ARRAY_SIZE, Select};
use crate::cluster::endpoint::Endpoint;

#[derive(Debug)]
pub(super) struct LeastActive {
    eps: Vec<Arc<Endpoint>>,
}

impl LeastActive {
    pub(super) fn new(eps: Vec<Arc<Endpoint>>) -> LeastActive {
        LeastActive { eps }
    }
}

impl Select for LeastActive {
    fn select(&self, _req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        least_active(&self.eps)
    }

    fn select_array(&self, _req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        let mut v = least_active_order(&self.eps);
        v.truncate(MAX_SELECT_ARRAY_SIZE);
        v
    }
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

#[cfg(test)]
mod tests {
    use crate::cluster::lb::tests::{count, eps, lb, within};
    use crate::cluster::lb::{LbKind, LbRequest};

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
}
