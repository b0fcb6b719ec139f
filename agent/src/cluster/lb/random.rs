//! `random`: a uniformly random endpoint. Its fallback, a scan from a second random index,
//! is what every other policy does when its pick is unavailable.
use std::sync::Arc;

use super::select::{LbRequest, Select, select_array_from};
use crate::cluster::endpoint::Endpoint;

#[derive(Debug)]
pub(super) struct Random {
    eps: Vec<Arc<Endpoint>>,
}

impl Random {
    pub(super) fn new(eps: Vec<Arc<Endpoint>>) -> Random {
        Random { eps }
    }
}

impl Select for Random {
    fn select(&self, _req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        select_one_at_random(&self.eps).map(|i| self.eps[i].clone())
    }

    fn select_array(&self, _req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        select_one_at_random(&self.eps)
            .map(|i| select_array_from(&self.eps, i))
            .unwrap_or_default()
    }
}

/// Random index; if unavailable, scan forward from a second random index.
pub(super) fn select_one_at_random(eps: &[Arc<Endpoint>]) -> Option<usize> {
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

/// The first available endpoint from index `from` on, wrapping around.
pub(super) fn scan_available(eps: &[Arc<Endpoint>], from: usize) -> Option<usize> {
    let n = eps.len();
    (0..n).map(|k| (from + k) % n).find(|&j| eps[j].is_available())
}

#[cfg(test)]
mod tests {
    use crate::cluster::lb::LbKind;
    use crate::cluster::lb::tests::{count, eps, lb, within};

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
}
