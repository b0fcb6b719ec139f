//! What every balancing policy is and shares: the request a balancer looks at, the [`Select`]
//! trait, and the helpers several policies use.
use std::sync::Arc;

use super::super::endpoint::Endpoint;

/// Most endpoints `select_array` returns.
pub const MAX_SELECT_ARRAY_SIZE: usize = 3;

/// What a balancer looks at in a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct LbRequest<'a> {
    /// Meta `consistentHashKey` (or whatever the request path chose as the key).
    pub hash_key: Option<&'a str>,
}

pub(super) fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One balancing policy over a fixed endpoint list; whatever state it keeps (a counter, a
/// ring) is its own. It never returns an unavailable endpoint.
pub(super) trait Select {
    fn select(&self, req: &LbRequest<'_>) -> Option<Arc<Endpoint>>;
    /// Up to `MAX_SELECT_ARRAY_SIZE` distinct available endpoints, for HA.
    fn select_array(&self, req: &LbRequest<'_>) -> Vec<Arc<Endpoint>>;
}

/// Up to three available endpoints, starting at `from` and going forward.
pub(super) fn select_array_from(eps: &[Arc<Endpoint>], from: usize) -> Vec<Arc<Endpoint>> {
    let n = eps.len();
    (0..n)
        .map(|k| &eps[(from + k) % n])
        .filter(|e| e.is_available())
        .take(MAX_SELECT_ARRAY_SIZE)
        .cloned()
        .collect()
}
