//! Bookkeeping for one remote endpoint (4.8), without any I/O: availability, the consecutive
//! error counter that disables an endpoint and asks for a keepalive probe, the in-flight
//! counter leastActive reads, recent latencies (P90 for backupRequest) and the wrr weight.
//! The connection pool that actually talks to the endpoint is `upstream::pool::Pool`.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::circuit::EndpointGuard;
use crate::protocol::motan2::call::CallError;
use crate::url::{Url, keys};

pub const DEFAULT_ERROR_COUNT_THRESHOLD: i64 = 10;
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(1000);
/// wrr weight of an endpoint without `META_WEIGHT` (4.16), and its bounds.
pub const DEFAULT_WEIGHT: u32 = 10;
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 500;
/// Static meta key carrying the wrr weight (env prefix `META_` + `WEIGHT`).
pub const WEIGHT_META_KEY: &str = "META_WEIGHT";
/// errmsg prefix of a server agent that has no provider for the service (errcode 404).
pub const PROVIDER_NOT_EXIST_PREFIX: &str = "provider not exist serviceKey=";

/// How a disabled endpoint is probed (4.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveKind {
    /// Send a heartbeat every interval; the first success re-enables the endpoint.
    Heartbeat,
    /// The server agent has no provider for the service: only report every interval, never
    /// re-enable (the endpoint returns when the registry replaces it). Upstream behaviour; see
    /// sharp edge 10.
    Profile,
}

/// Ask the caller to start a keepalive task for this endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveRequest {
    pub kind: KeepaliveKind,
    pub interval: Duration,
}

#[derive(Debug)]
pub struct Endpoint {
    /// Host, port and group of the server URL (protocol and path are in `identity`).
    url: Url,
    /// One buffer for the identity (`url.identity()`, computed once: endpoints and their
    /// pools are keyed by it) and the address (`host:port` or the unix socket path, also the
    /// meta value `x-forwarded-for` of every response, shared, not copied): the address is
    /// part of the identity, else appended to it. At a fleet's size every allocation per idle
    /// endpoint counts.
    text: bytestring::ByteString,
    identity_len: u32,
    address_at: (u32, u32),
    available: AtomicBool,
    consecutive_errors: AtomicU32,
    error_threshold: i64,
    keepalive_interval: Duration,
    keepalive_running: AtomicBool,
    active: AtomicUsize,
    latency: LatencyStats,
    static_weight: u32,
    /// 0 = none fetched; else overrides the static weight (dynamic meta, 4.16).
    dynamic_weight: AtomicU32,
    /// Its circuit and failfast status, when the refer lists those endpoint filters (set once
    /// by the cluster before the endpoint is in a balancer).
    guard: OnceLock<EndpointGuard>,
}

impl Endpoint {
    /// A new endpoint starts **unavailable**: upstream only makes it available once its
    /// connection pool exists. Call `set_available(true)` then.
    pub fn new(mut url: Url) -> Endpoint {
        let address = url.address();
        let mut text = url.identity();
        let identity_len = text.len();
        let start = url.protocol.len() + 3;
        let address_at = match text.get(start..).is_some_and(|t| t.starts_with(&address)) {
            true => (start, start + address.len()),
            false => {
                text.push_str(&address);
                (identity_len, text.len())
            }
        };
        // Exactly its length: a `Bytes` made from a `String` with spare capacity keeps the
        // spare bytes and allocates a header besides.
        text.shrink_to_fit();
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let settings = Endpoint {
            text: bytestring::ByteString::from(text),
            identity_len: as_u32(identity_len),
            address_at: (as_u32(address_at.0), as_u32(address_at.1)),
            error_threshold: url.get_int(keys::ERROR_COUNT_THRESHOLD, DEFAULT_ERROR_COUNT_THRESHOLD),
            keepalive_interval: url.get_duration_ms(keys::KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_INTERVAL),
            static_weight: parse_weight(url.params.get(WEIGHT_META_KEY).map(String::as_str)),
            url: Url::default(),
            available: AtomicBool::new(false),
            consecutive_errors: AtomicU32::new(0),
            keepalive_running: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            latency: LatencyStats::new(),
            dynamic_weight: AtomicU32::new(0),
            guard: OnceLock::new(),
        };
        // The settings above are all the endpoint reads from its parameters: they are not
        // kept (most of an idle endpoint's memory at a fleet's size).
        // Nor are the protocol and path, which the identity has (the cluster's refer says
        // them too).
        url.params = Default::default();
        url.protocol = String::new();
        url.path = String::new();
        Endpoint { url, ..settings }
    }

    /// The server URL's host, port and group (no parameters, protocol or path: see
    /// [`Endpoint::identity`]).
    pub fn url(&self) -> &Url {
        &self.url
    }

    fn text(&self, (from, to): (u32, u32)) -> &str {
        // Cut at char boundaries of the Strings it was made from.
        self.text.get(from as usize..to as usize).unwrap_or_default()
    }

    /// `protocol://host:port/path?group=G`: what endpoints are reused and keyed by (4.4).
    pub fn identity(&self) -> &str {
        self.text((0, self.identity_len))
    }

    /// `host:port` (or the unix socket path): the member key of the consistent-hash ring.
    pub fn address(&self) -> &str {
        self.text(self.address_at)
    }

    /// [`Endpoint::address`] sharing one buffer (a reference count per use, no copy).
    pub fn address_bytes(&self) -> Bytes {
        let (from, to) = self.address_at;
        self.text.as_bytes().slice(from as usize..to as usize)
    }

    /// Whether a balancer may pick it: connected and not disabled, and not failed fast (a
    /// failed-fast endpoint answers true once per probe interval: the caller is expected to
    /// call it, as upstream's `IsAvailable`). Status pages use [`Endpoint::status_available`].
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
            && self
                .guard()
                .and_then(|g| g.failfast.as_ref())
                .is_none_or(|f| f.allows_pick())
    }

    /// [`Endpoint::is_available`] without taking a failfast probe.
    pub fn status_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
            && self
                .guard()
                .and_then(|g| g.failfast.as_ref())
                .is_none_or(|f| f.is_available())
    }

    /// Give the endpoint its circuit / failfast status (the first call wins).
    pub fn set_guard(&self, guard: EndpointGuard) {
        let _ = self.guard.set(guard);
    }

    pub fn guard(&self) -> Option<&EndpointGuard> {
        self.guard.get()
    }

    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::Release);
    }

    pub fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors.load(Ordering::Relaxed)
    }

    /// Requests currently in flight on this endpoint.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> &LatencyStats {
        &self.latency
    }

    /// wrr weight: the dynamic one if set, else `META_WEIGHT`, else 10; always in [1, 500].
    pub fn weight(&self) -> u32 {
        match self.dynamic_weight.load(Ordering::Relaxed) {
            0 => self.static_weight,
            w => w,
        }
    }

    /// Set the weight fetched from the endpoint's dynamic meta (`None` clears it); the wrr
    /// weight refresher (`cluster/weights.rs`) calls it, then rebuilds the balancer when
    /// `Balancer::weights_changed`.
    pub fn set_dynamic_weight(&self, raw: Option<&str>) {
        let w = raw.map(|r| parse_weight(Some(r))).unwrap_or(0);
        self.dynamic_weight.store(w, Ordering::Relaxed);
    }

    /// Start a call: counts it as in flight until the returned guard is finished or dropped.
    pub fn begin(&self) -> InFlight<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self,
            started: Instant::now(),
        }
    }

    /// Account for the outcome of one call (`None` = success). Success and business errors
    /// reset the consecutive error counter; any other failure increments it, and reaching
    /// `errorCountThreshold` (≤ 0 disables the mechanism) makes the endpoint unavailable.
    /// Returns a keepalive request when the caller must start a probe task (at most one task
    /// runs at a time; call `keepalive_finished` when it ends).
    pub fn record(&self, error: Option<&CallError>) -> Option<KeepaliveRequest> {
        let error = match error {
            Some(e) if e.counts_against_endpoint() => e,
            _ => {
                self.consecutive_errors.store(0, Ordering::Relaxed);
                return None;
            }
        };
        if self.error_threshold <= 0 {
            return None;
        }
        let count = self
            .consecutive_errors
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if i64::from(count) < self.error_threshold {
            return None;
        }
        self.set_available(false);
        if self.keepalive_running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let kind = if error.code == 404 && error.message.contains(PROVIDER_NOT_EXIST_PREFIX) {
            KeepaliveKind::Profile
        } else {
            KeepaliveKind::Heartbeat
        };
        Some(KeepaliveRequest {
            kind,
            interval: self.keepalive_interval,
        })
    }

    /// A keepalive heartbeat succeeded: the endpoint is usable again and the task ends.
    pub fn keepalive_succeeded(&self) {
        self.consecutive_errors.store(0, Ordering::Relaxed);
        self.set_available(true);
        self.keepalive_finished();
    }

    /// The keepalive task ended without success (the endpoint was destroyed or replaced).
    pub fn keepalive_finished(&self) {
        self.keepalive_running.store(false, Ordering::Release);
    }

    pub fn keepalive_running(&self) -> bool {
        self.keepalive_running.load(Ordering::Acquire)
    }
}

/// One call in flight; `finish` records outcome and latency, dropping it only ends the count.
#[derive(Debug)]
pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
    started: Instant,
}

impl InFlight<'_> {
    pub fn finish(self, error: Option<&CallError>) -> Option<KeepaliveRequest> {
        self.endpoint.latency.record(self.started.elapsed());
        self.endpoint.record(error)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_weight(raw: Option<&str>) -> u32 {
    match raw.filter(|r| !r.is_empty()).map(str::parse::<i64>) {
        None | Some(Err(_)) => DEFAULT_WEIGHT,
        Some(Ok(w)) => w.clamp(i64::from(MIN_WEIGHT), i64::from(MAX_WEIGHT)) as u32,
    }
}

/// Latencies of the most recent calls (a ring of `CAPACITY` samples) and percentiles over
/// them. A ring keeps the estimate recent without timers; the percentile is cached and only
/// recomputed after `RECOMPUTE_EVERY` new samples, so asking per request stays cheap.
#[derive(Debug)]
pub struct LatencyStats {
    /// Made by the first sample: an endpoint that never carries a call (most of a large
    /// fleet, with pools on demand) costs a pointer.
    ring: OnceLock<Box<Mutex<Ring>>>,
}

#[derive(Debug)]
struct Ring {
    samples: Vec<u32>,
    next: usize,
    new_since_cache: usize,
    cache: Option<(u32, Duration)>,
}

impl LatencyStats {
    pub const CAPACITY: usize = 256;
    /// Fewer samples than this and there is no percentile yet ("no metrics").
    pub const MIN_SAMPLES: usize = 10;
    const RECOMPUTE_EVERY: usize = 16;

    pub fn new() -> LatencyStats {
        LatencyStats {
            ring: OnceLock::new(),
        }
    }

    fn ring(&self) -> Option<std::sync::MutexGuard<'_, Ring>> {
        Some(self.ring.get()?.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn record(&self, d: Duration) {
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let ring = self.ring.get_or_init(|| {
            Box::new(Mutex::new(Ring {
                samples: Vec::new(),
                next: 0,
                new_since_cache: 0,
                cache: None,
            }))
        });
        let mut r = ring.lock().unwrap_or_else(|e| e.into_inner());
        if r.samples.len() < Self::CAPACITY {
            r.samples.push(micros);
        } else {
            let i = r.next;
            r.samples[i] = micros;
        }
        r.next = (r.next + 1) % Self::CAPACITY;
        r.new_since_cache += 1;
    }

    pub fn len(&self) -> usize {
        self.ring().map_or(0, |r| r.samples.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nearest-rank percentile `p` (0–100) of the recent samples; `None` while there are
    /// fewer than `MIN_SAMPLES`.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let p = p.clamp(0.0, 100.0);
        let key = (p * 100.0) as u32;
        let mut r = self.ring()?;
        let n = r.samples.len();
        if n < Self::MIN_SAMPLES {
            return None;
        }
        if let Some((k, v)) = r.cache
            && k == key
            && r.new_since_cache < Self::RECOMPUTE_EVERY
        {
            return Some(v);
        }
        let mut sorted = r.samples.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let v = Duration::from_micros(u64::from(sorted[rank.clamp(1, n) - 1]));
        r.cache = Some((key, v));
        r.new_since_cache = 0;
        Some(v)
    }

    pub fn p90(&self) -> Option<Duration> {
        self.percentile(90.0)
    }
}

/// Latency per method (`M_m`) of one refer: backupRequest takes its delay from the method's
/// percentile, as upstream reads the method's metrics.
#[derive(Debug, Default)]
pub struct MethodLatencies {
    by_method: std::sync::RwLock<std::collections::HashMap<String, Arc<LatencyStats>>>,
}

impl MethodLatencies {
    pub fn new() -> MethodLatencies {
        MethodLatencies::default()
    }

    /// The stats of `method`, created on first use.
    pub fn get(&self, method: &str) -> Arc<LatencyStats> {
        if let Some(s) = self
            .by_method
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(method)
        {
            return s.clone();
        }
        let mut map = self.by_method.write().unwrap_or_else(|e| e.into_inner());
        map.entry(method.to_string()).or_default().clone()
    }
}

impl Default for LatencyStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::motan2::call::ErrorKind;

    fn ep(params: &[(&str, &str)]) -> Endpoint {
        let mut u = Url::new("motan2", "127.0.0.1", 9982, "p", "g");
        for (k, v) in params {
            u.params.insert(k.to_string(), v.to_string());
        }
        Endpoint::new(u)
    }

    fn err(kind: ErrorKind) -> CallError {
        CallError::new(400, "channel call error: timeout", kind)
    }

    #[test]
    fn starts_unavailable_until_pool_ready() {
        let e = ep(&[]);
        assert!(!e.is_available());
        e.set_available(true);
        assert!(e.is_available());
        assert_eq!(e.address(), "127.0.0.1:9982");
    }

    #[test]
    fn threshold_disables_and_requests_one_keepalive() {
        let e = ep(&[("errorCountThreshold", "3"), ("keepaliveInterval", "50")]);
        e.set_available(true);
        let svc = err(ErrorKind::Service);
        assert_eq!(e.record(Some(&svc)), None);
        assert_eq!(e.record(Some(&svc)), None);
        assert!(e.is_available());
        let ka = e.record(Some(&svc)).expect("keepalive on the third error");
        assert_eq!(ka.kind, KeepaliveKind::Heartbeat);
        assert_eq!(ka.interval, Duration::from_millis(50));
        assert!(!e.is_available());
        // Further errors while the probe runs do not ask for a second one.
        assert_eq!(e.record(Some(&svc)), None);
        e.keepalive_succeeded();
        assert!(e.is_available());
        assert!(!e.keepalive_running());
        assert_eq!(e.consecutive_errors(), 0);
    }

    #[test]
    fn success_and_business_errors_reset_the_counter() {
        let e = ep(&[("errorCountThreshold", "2")]);
        e.set_available(true);
        let fw = err(ErrorKind::Framework);
        e.record(Some(&fw));
        e.record(None);
        e.record(Some(&fw));
        e.record(Some(&err(ErrorKind::Business)));
        assert_eq!(e.consecutive_errors(), 0);
        assert!(e.record(Some(&fw)).is_none());
        assert!(e.record(Some(&fw)).is_some());
        assert!(!e.is_available());
    }

    #[test]
    fn default_threshold_is_ten_and_zero_disables() {
        let e = ep(&[]);
        e.set_available(true);
        let svc = err(ErrorKind::Service);
        for _ in 0..9 {
            assert!(e.record(Some(&svc)).is_none());
        }
        assert!(e.record(Some(&svc)).is_some());
        let never = ep(&[("errorCountThreshold", "0")]);
        never.set_available(true);
        for _ in 0..100 {
            assert!(never.record(Some(&svc)).is_none());
        }
        assert!(never.is_available());
    }

    #[test]
    fn provider_not_exist_asks_for_profile_keepalive() {
        let e = ep(&[("errorCountThreshold", "1")]);
        let missing = CallError::new(404, "provider not exist serviceKey=g_p", ErrorKind::Service);
        assert_eq!(e.record(Some(&missing)).unwrap().kind, KeepaliveKind::Profile);
    }

    #[test]
    fn in_flight_guard_counts_and_records_latency() {
        let e = ep(&[]);
        let a = e.begin();
        let b = e.begin();
        assert_eq!(e.active(), 2);
        drop(a);
        assert_eq!(e.active(), 1);
        b.finish(None);
        assert_eq!(e.active(), 0);
        assert_eq!(e.latency().len(), 1);
    }

    #[test]
    fn weights_from_meta_clamped() {
        assert_eq!(ep(&[]).weight(), 10);
        assert_eq!(ep(&[("META_WEIGHT", "30")]).weight(), 30);
        assert_eq!(ep(&[("META_WEIGHT", "0")]).weight(), 1);
        assert_eq!(ep(&[("META_WEIGHT", "9000")]).weight(), 500);
        assert_eq!(ep(&[("META_WEIGHT", "x")]).weight(), 10);
        let e = ep(&[("META_WEIGHT", "30")]);
        e.set_dynamic_weight(Some("7"));
        assert_eq!(e.weight(), 7);
        e.set_dynamic_weight(None);
        assert_eq!(e.weight(), 30);
    }

    #[test]
    fn method_latencies_are_per_method() {
        let m = MethodLatencies::new();
        m.get("a").record(Duration::from_millis(5));
        assert_eq!(m.get("a").len(), 1);
        assert!(m.get("b").is_empty());
        assert!(Arc::ptr_eq(&m.get("a"), &m.get("a")));
    }

    #[test]
    fn latency_percentiles() {
        let s = LatencyStats::new();
        for i in 1..=9 {
            s.record(Duration::from_millis(i));
        }
        assert_eq!(s.p90(), None, "not enough samples yet");
        s.record(Duration::from_millis(10));
        assert_eq!(s.p90(), Some(Duration::from_millis(9)));
        assert_eq!(s.percentile(100.0), Some(Duration::from_millis(10)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_millis(1)));
        // Ring: old samples age out.
        for _ in 0..LatencyStats::CAPACITY {
            s.record(Duration::from_millis(100));
        }
        assert_eq!(s.len(), LatencyStats::CAPACITY);
        assert_eq!(s.p90(), Some(Duration::from_millis(100)));
    }
}
