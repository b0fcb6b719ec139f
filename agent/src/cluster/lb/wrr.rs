//! `wrr`: weighted round robin over the endpoints' weights (`META_WEIGHT`, 4.16), as motan-go
//! picks its selector: plain round robin when all weights are equal, a shuffled ring of
//! weight/gcd slots for small lists and weights, nginx's smooth wrr over a sliding window beyond.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use super::random::scan_available;
use super::select::{LbRequest, Select, gcd};
use crate::cluster::endpoint::Endpoint;

/// Precomputed ring is used up to this many endpoints and this total (divided) weight.
const WRR_RING_MAX_ENDPOINTS: usize = 256;
const WRR_RING_MAX_TOTAL: u32 = 256 * 20;
const SWRR_WINDOW: usize = 50;

#[derive(Debug)]
pub(super) struct Wrr {
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
    pub(super) fn new(eps: Vec<Arc<Endpoint>>) -> Wrr {
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

    pub(super) fn weights_changed(&self) -> bool {
        self.eps
            .iter()
            .zip(&self.built_weights)
            .any(|(e, w)| e.weight() != *w)
    }
}

impl Select for Wrr {
    fn select(&self, _req: &LbRequest<'_>) -> Option<Arc<Endpoint>> {
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

    // Upstream's wrr has no array selection; HA only uses `select` anyway.
    fn select_array(&self, _req: &LbRequest<'_>) -> Vec<Arc<Endpoint>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::lb::LbKind;
    use crate::cluster::lb::tests::{count, ep, lb, within};

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
        // A ring of 1 + 2 + 3 slots (weights 10:20:30), each slot picked 1000 times: .1 and .2
        // keep their own slots' picks, and .3's go to whichever follows a random start. (Which
        // one gets more of those depends on the shuffle, so .2 > .1 is not guaranteed.)
        assert!(c["127.0.0.1"] >= 1_000 && c["127.0.0.2"] >= 2_000, "{c:?}");
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
}
