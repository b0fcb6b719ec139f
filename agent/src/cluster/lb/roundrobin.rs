//! `roundrobin`: endpoints in turn; an unavailable one is replaced by a random pick.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::random::select_one_at_random;
use super::select::{LbRequest, Select, select_array_from};
use crate::cluster::endpoint::Endpoint;

#[derive(Debug)]
pub(super) struct RoundRobin {
    eps: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn new(eps: Vec<Arc<Endpoint>>) -> RoundRobin {
        RoundRobin {
            eps,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Option<usize> {
        let (eps, next) = (&self.eps, &self.next);
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
}

impl Select for RoundRobin {
    fn select(&self, _req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
        self.pick().map(|i| self.eps[i].clone())
    }

    fn select_array(&self, _req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        self.pick()
            .map(|i| select_array_from(&self.eps, i))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::lb::LbKind;
    use crate::cluster::lb::tests::{count, eps, lb};

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
}
