//! `rateLimit` (motan-go filter/rateLimit.go, spec 4.7): token buckets per service and per
//! method.
//!
//! - `rateLimit: <req/s>` limits the whole service; `rateLimit.<method>: <req/s>` one method.
//! - Bucket capacity: `capacity` (method: `<method>().capacity`), default 2 × rate clamped to
//!   [1000, 5000]. Buckets start full.
//! - A request waits for a token up to a timeout: for the service bucket the URL's
//!   `requestTimeout` (default 1000 ms); for a method bucket the request's `M_tmo`, else the
//!   method's `requestTimeout`. When the wait would be longer it is answered at once with
//!   errcode 400 errtype 1 `[rateLimit] wait time exceed timeout(<d>)` (method: `[rateLimit]
//!   method <m> wait time exceed timeout(<d>)`), `<d>` written as Go writes a duration.
//! - Switch `<conf-id>_rateLimit` (registered on) turns the limiting off.
//!
//! Buckets belong to the service path in [`RateLimits`], shared by every chain of that path, so
//! `/ratelimit/set` changes them at run time. Building a chain applies its URL's rates again.
use crate::locks::{Locked, Unpoisoned};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::call::{CallInfo, Filter, FilterFuture, Next, reject};
use crate::protocol::motan2::{Exception, Frame, keys as meta_keys};
use crate::switcher::{Switch, Switchers};
use crate::url::{Url, keys};

pub const NAME: &str = "rateLimit";
pub const INDEX: i32 = 3;

const CAPACITY_KEY: &str = "capacity";
const METHOD_PREFIX: &str = "rateLimit.";
const DEFAULT_TIMEOUT_MS: i64 = 1000;
const MIN_CAPACITY: f64 = 1000.0;
const MAX_CAPACITY: f64 = 5000.0;
/// Rates a bucket accepts, tokens per second. Below the floor a token's wait overflows a
/// `Duration` (1e-30/s is 1e30 s); above the ceiling the limit means nothing.
pub const MIN_RATE: f64 = 1e-3;
pub const MAX_RATE: f64 = 1e9;

/// A rate a bucket can run with, or why not (the message `/ratelimit/set` answers with).
pub fn check_rate(rate: f64) -> Result<f64, String> {
    if !rate.is_finite() {
        return Err(format!("rate {rate} is not a finite number"));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(format!(
            "rate {rate} is outside {MIN_RATE}..={MAX_RATE} requests per second (rate=off removes the limit)"
        ));
    }
    Ok(rate)
}

/// Upstream's default capacity: twice the rate, at least 1000 and at most 5000.
pub fn default_capacity(rate: f64) -> u64 {
    (rate * 2.0).clamp(MIN_CAPACITY, MAX_CAPACITY) as u64
}

/// A token bucket (juju/ratelimit's semantics: a request may reserve a token that refills
/// later, and then sleeps until then).
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens per second.
    rate: f64,
    capacity: f64,
    /// May go negative: tokens reserved by waiting requests.
    tokens: f64,
    last: Instant,
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }
}

/// Rate and capacity of a bucket, as `/ratelimit/list` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BucketConfig {
    pub rate: f64,
    pub capacity: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, capacity: u64) -> Bucket {
        let capacity = capacity.max(1) as f64;
        Bucket {
            state: Mutex::new(BucketState {
                rate: clamp_rate(rate),
                capacity,
                tokens: capacity,
                last: Instant::now(),
            }),
        }
    }

    /// Take one token: the time to wait for it, or None (nothing taken) when that is longer
    /// than `max_wait`.
    pub fn take(&self, max_wait: Duration) -> Option<Duration> {
        let mut s = self.state.locked();
        s.refill(Instant::now());
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        // No panic here, whatever the rate: an unrepresentable wait is "too long".
        let wait = Duration::try_from_secs_f64((1.0 - s.tokens) / s.rate).ok()?;
        if wait > max_wait {
            return None;
        }
        s.tokens -= 1.0;
        Some(wait)
    }

    /// Change rate and capacity; tokens above the new capacity are dropped.
    pub fn reconfigure(&self, rate: f64, capacity: u64) {
        let mut s = self.state.locked();
        s.refill(Instant::now());
        s.rate = clamp_rate(rate);
        s.capacity = capacity.max(1) as f64;
        s.tokens = s.tokens.min(s.capacity);
    }

    pub fn config(&self) -> BucketConfig {
        let s = self.state.locked();
        BucketConfig {
            rate: s.rate,
            capacity: s.capacity as u64,
        }
    }
}

/// Callers check rates with [`check_rate`]; a bucket still never runs outside the range (NaN
/// becomes the floor), so no rate can make `take` misbehave.
fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        MIN_RATE
    } else {
        rate.clamp(MIN_RATE, MAX_RATE)
    }
}

/// The buckets of one service path.
#[derive(Debug, Default)]
pub struct ServiceLimit {
    service: RwLock<Option<Arc<Bucket>>>,
    methods: RwLock<HashMap<String, Arc<Bucket>>>,
}

impl ServiceLimit {
    fn service_bucket(&self) -> Option<Arc<Bucket>> {
        self.service.read_unpoisoned().clone()
    }

    fn method_bucket(&self, method: &str) -> Option<Arc<Bucket>> {
        let methods = self.methods.read_unpoisoned();
        if methods.is_empty() {
            return None;
        }
        methods.get(method).cloned()
    }

    /// Set the service (method None) or a method bucket; rate None removes the limit. An
    /// existing bucket keeps its tokens (up to the new capacity).
    fn set(&self, method: Option<&str>, rate: Option<f64>, capacity: Option<u64>) {
        let update = |slot: Option<&Arc<Bucket>>| -> Option<Arc<Bucket>> {
            let rate = rate?;
            let capacity = capacity.unwrap_or_else(|| default_capacity(rate));
            Some(match slot {
                Some(b) => {
                    b.reconfigure(rate, capacity);
                    b.clone()
                }
                None => Arc::new(Bucket::new(rate, capacity)),
            })
        };
        match method {
            None => {
                let mut s = self.service.write_unpoisoned();
                *s = update(s.as_ref());
            }
            Some(m) => {
                let mut methods = self.methods.write_unpoisoned();
                match update(methods.get(m)) {
                    Some(b) => methods.insert(m.to_string(), b),
                    None => methods.remove(m),
                };
            }
        }
    }

    /// Replace every bucket with a URL's configuration (fresh, full buckets).
    fn configure(&self, service: Option<Arc<Bucket>>, methods: HashMap<String, Arc<Bucket>>) {
        *self.service.write_unpoisoned() = service;
        *self.methods.write_unpoisoned() = methods;
    }
}

/// A service's limits as `/ratelimit/list` shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceLimitView {
    pub service: Option<BucketConfig>,
    pub methods: BTreeMap<String, BucketConfig>,
}

/// Every service's buckets, by service path.
#[derive(Debug, Default)]
pub struct RateLimits {
    map: RwLock<HashMap<String, Arc<ServiceLimit>>>,
}

impl RateLimits {
    fn service(&self, path: &str) -> Arc<ServiceLimit> {
        if let Some(s) = self.map.read_unpoisoned().get(path) {
            return s.clone();
        }
        self.map
            .write_unpoisoned()
            .entry(path.to_string())
            .or_default()
            .clone()
    }

    /// Change a rate at run time: the service's (method None) or one method's, capacity the
    /// default for the rate; rate None removes that limit. Only services that have a rateLimit
    /// filter can be changed, only to a rate [`check_rate`] accepts.
    pub fn set(&self, service: &str, method: Option<&str>, rate: Option<f64>) -> Result<(), String> {
        if let Some(r) = rate {
            check_rate(r)?;
        }
        let limit = self
            .map
            .read_unpoisoned()
            .get(service)
            .cloned()
            .ok_or_else(|| format!("service {service} has no rateLimit filter"))?;
        limit.set(method.filter(|m| !m.is_empty()), rate, None);
        tracing::info!(
            "[rateLimit] {service} {} rate set to {}",
            method.unwrap_or("(service)"),
            rate.map_or("off".to_string(), |r| r.to_string())
        );
        Ok(())
    }

    /// Every service with a rateLimit filter and its buckets.
    pub fn list(&self) -> BTreeMap<String, ServiceLimitView> {
        self.map
            .read_unpoisoned()
            .iter()
            .map(|(k, l)| {
                let methods = l
                    .methods
                    .read_unpoisoned()
                    .iter()
                    .map(|(m, b)| (m.clone(), b.config()))
                    .collect();
                let view = ServiceLimitView {
                    service: l.service_bucket().map(|b| b.config()),
                    methods,
                };
                (k.clone(), view)
            })
            .collect()
    }
}

/// A positive rate from a parameter value, else None (logged).
fn parse_rate(url: &Url, key: &str, value: &str) -> Option<f64> {
    match value.parse::<f64>() {
        Ok(r) if check_rate(r).is_ok() => Some(r),
        _ => {
            tracing::warn!("[rateLimit] {}: {key}={value:?} is not a positive rate", url.path);
            None
        }
    }
}

struct RateLimit {
    limits: Arc<ServiceLimit>,
    switch: Option<Arc<Switch>>,
    service_timeout: Duration,
    service_timeout_text: String,
}

pub fn build(url: &Url, rate_limits: &RateLimits, switchers: &Switchers) -> Arc<dyn Filter> {
    let service = url
        .param(NAME)
        .and_then(|v| parse_rate(url, NAME, v))
        .map(|rate| {
            let cap = url.get_positive_int(CAPACITY_KEY, default_capacity(rate) as i64) as u64;
            Arc::new(Bucket::new(rate, cap))
        });
    let mut methods = HashMap::new();
    for (k, v) in &url.params {
        let Some(method) = k.strip_prefix(METHOD_PREFIX).filter(|m| !m.is_empty()) else {
            continue;
        };
        if let Some(rate) = parse_rate(url, k, v) {
            let cap = url.get_method_positive_int(method, "", CAPACITY_KEY, default_capacity(rate) as i64);
            methods.insert(method.to_string(), Arc::new(Bucket::new(rate, cap as u64)));
        }
    }
    if service.is_none() && methods.is_empty() {
        tracing::warn!(
            "[rateLimit] {}: no service or method rateLimit takes effect",
            url.path
        );
    }
    let limits = rate_limits.service(&url.path);
    limits.configure(service, methods);
    let switch_name = format!("{}_rateLimit", url.get_str(keys::CONF_ID, ""));
    let service_timeout = url.get_duration_ms(
        keys::REQUEST_TIMEOUT,
        Duration::from_millis(DEFAULT_TIMEOUT_MS as u64),
    );
    Arc::new(RateLimit {
        limits,
        switch: switchers.register(&switch_name, true),
        service_timeout,
        service_timeout_text: go_duration(service_timeout),
    })
}

impl RateLimit {
    /// The method bucket's wait limit: `M_tmo` (unparsable counts as 0, as upstream), else the
    /// method's `requestTimeout`.
    fn method_timeout(req: &Frame, info: &CallInfo) -> Duration {
        let ms = match req.meta.get_non_empty(meta_keys::TIMEOUT) {
            Some(t) => t.parse::<i64>().unwrap_or(0),
            None => info.url.get_method_positive_int(
                &info.method,
                &info.method_desc,
                keys::REQUEST_TIMEOUT,
                DEFAULT_TIMEOUT_MS,
            ),
        };
        Duration::from_millis(ms.max(0) as u64)
    }
}

impl Filter for RateLimit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        Box::pin(async move {
            if self.switch.as_ref().is_none_or(|s| s.is_on()) {
                if let Some(bucket) = self.limits.service_bucket() {
                    match bucket.take(self.service_timeout) {
                        Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                        Some(_) => {}
                        None => {
                            let msg = format!(
                                "[rateLimit] wait time exceed timeout({})",
                                self.service_timeout_text
                            );
                            return reject(&req, &Exception::service(400, msg));
                        }
                    }
                }
                if let Some(bucket) = self.limits.method_bucket(&info.method) {
                    let timeout = RateLimit::method_timeout(&req, info);
                    match bucket.take(timeout) {
                        Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                        Some(_) => {}
                        None => {
                            let msg = format!(
                                "[rateLimit] method {} wait time exceed timeout({})",
                                info.method,
                                go_duration(timeout)
                            );
                            return reject(&req, &Exception::service(400, msg));
                        }
                    }
                }
            }
            next.run(req, info).await
        })
    }
}

/// A duration as Go's `time.Duration.String` writes it, to millisecond precision: `0s`,
/// `250ms`, `1s`, `1.5s`, `1m30s`, `2h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, frac) = (rem / 1000, rem % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        let f = format!("{frac:03}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;
    use crate::filter::{FilterChain, exception_of};
    use crate::protocol::motan2::ErrorType;

    #[test]
    fn capacity_and_go_durations() {
        assert_eq!(
            [1.0, 10.0, 600.0, 2500.0, 2600.0, 1e6].map(default_capacity),
            [1000, 1000, 1200, 5000, 5000, 5000]
        );
        let ms = Duration::from_millis;
        let texts: Vec<String> = [0, 1, 250, 1000, 1500, 1050, 60_000, 90_500, 3_600_000, 3_661_001]
            .into_iter()
            .map(|m| go_duration(ms(m)))
            .collect();
        assert_eq!(
            texts,
            [
                "0s",
                "1ms",
                "250ms",
                "1s",
                "1.5s",
                "1.05s",
                "1m0s",
                "1m30.5s",
                "1h0m0s",
                "1h1m1.001s"
            ]
        );
    }

    fn limited(params: &[(&str, &str)]) -> (Arc<FilterShared>, FilterChain, Url) {
        let shared = FilterShared::new();
        let mut all = vec![("filter", "rateLimit")];
        all.extend_from_slice(params);
        let url = refer(&all);
        let chain = FilterChain::build(&url, &shared).unwrap();
        (shared, chain, url)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_within_the_timeout() {
        let (_s, chain, url) = limited(&[("rateLimit", "10"), ("capacity", "2")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        let t0 = Instant::now();
        for id in 0..2 {
            let r = call(&chain, &i, &up, request(id, "hello")).await;
            assert!(exception_of(&r).is_none());
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "two tokens in the bucket");
        let r = call(&chain, &i, &up, request(2, "hello")).await;
        assert!(exception_of(&r).is_none());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(99) && waited <= Duration::from_millis(101),
            "waited {waited:?} for the third token at 10/s"
        );
        assert_eq!(up.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_above_the_rate_when_the_wait_exceeds_the_timeout() {
        let (_s, chain, url) = limited(&[("rateLimit", "10"), ("capacity", "3"), ("requestTimeout", "50")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        let mut shed = Vec::new();
        for id in 0..10 {
            let r = call(&chain, &i, &up, request(id, "hello")).await;
            if let Some(e) = exception_of(&r) {
                assert_eq!(r.header.request_id, id);
                shed.push(e);
            }
        }
        assert_eq!(
            (up.calls(), shed.len()),
            (3, 7),
            "capacity 3, no token within 50 ms"
        );
        assert_eq!(
            shed[0],
            Exception::service(400, "[rateLimit] wait time exceed timeout(50ms)")
        );
        // A token comes back after 100 ms.
        tokio::time::advance(Duration::from_millis(100)).await;
        let r = call(&chain, &i, &up, request(11, "hello")).await;
        assert!(exception_of(&r).is_none());
        assert_eq!(up.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn method_limit_uses_m_tmo_and_leaves_other_methods_alone() {
        let (_s, chain, url) = limited(&[("rateLimit.hello", "1"), ("hello().capacity", "1")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url.clone(), "hello");
        assert!(exception_of(&call(&chain, &i, &up, request(1, "hello")).await).is_none());
        let mut req = request(2, "hello");
        req.meta.insert("M_tmo", "100");
        let e = exception_of(&call(&chain, &i, &up, req).await).unwrap();
        assert_eq!(
            (e.errcode, e.errtype, e.errmsg.as_str()),
            (
                400,
                ErrorType::Service,
                "[rateLimit] method hello wait time exceed timeout(100ms)"
            )
        );
        // Without M_tmo the method's requestTimeout (1 s default) covers the 1 s wait.
        let t0 = Instant::now();
        assert!(exception_of(&call(&chain, &i, &up, request(3, "hello")).await).is_none());
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        let other = info(url, "other");
        for id in 10..20 {
            assert!(exception_of(&call(&chain, &other, &up, request(id, "other")).await).is_none());
        }
        assert_eq!(up.calls(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn switch_off_disables_and_runtime_rates_apply() {
        let (shared, chain, url) =
            limited(&[("rateLimit", "1"), ("capacity", "1"), ("requestTimeout", "10")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        assert_eq!(shared.switchers.get("hello_rateLimit"), Some(true));
        let count_ok = |n: u64| {
            let (chain, i, up) = (&chain, &i, &up);
            async move {
                let mut ok = 0;
                for id in 0..n {
                    if exception_of(&call(chain, i, up, request(id, "hello")).await).is_none() {
                        ok += 1;
                    }
                }
                ok
            }
        };
        assert_eq!(count_ok(5).await, 1);
        shared.switchers.set("hello_rateLimit", false);
        assert_eq!(count_ok(5).await, 5, "switched off");
        shared.switchers.set("hello_rateLimit", true);
        assert_eq!(count_ok(3).await, 0, "the bucket is empty");

        // Raise the rate: capacity becomes the default for it (1000), tokens refill from now.
        shared
            .rate_limits
            .set("com.example.Hello", None, Some(500.0))
            .unwrap();
        let view = &shared.rate_limits.list()["com.example.Hello"];
        assert_eq!(
            view.service,
            Some(BucketConfig {
                rate: 500.0,
                capacity: 1000
            })
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(count_ok(5).await, 5, "5 tokens after 10 ms at 500/s");
        // A method limit added at run time, then the service limit removed.
        shared
            .rate_limits
            .set("com.example.Hello", Some("hello"), Some(2.0))
            .unwrap();
        shared.rate_limits.set("com.example.Hello", None, None).unwrap();
        let view = &shared.rate_limits.list()["com.example.Hello"];
        assert_eq!(view.service, None);
        assert_eq!(
            view.methods["hello"],
            BucketConfig {
                rate: 2.0,
                capacity: 1000
            }
        );
        assert!(
            shared
                .rate_limits
                .set("no.such.Service", None, Some(1.0))
                .is_err()
        );
        for bad in [f64::NAN, f64::INFINITY, 0.0, -1.0, 1e-30, 1e300] {
            let r = shared.rate_limits.set("com.example.Hello", None, Some(bad));
            assert!(r.is_err(), "rate {bad} accepted");
        }
    }

    #[test]
    fn no_rate_makes_a_bucket_panic() {
        for rate in [1e-30, f64::MIN_POSITIVE, 0.0, -5.0, f64::NAN, f64::INFINITY] {
            let b = Bucket::new(rate, 1);
            assert_eq!(b.take(Duration::from_secs(1)), Some(Duration::ZERO));
            // The next token is far away (or, at the ceiling, near): never a panic.
            let _ = b.take(Duration::from_secs(1));
            b.reconfigure(rate, 1);
            let _ = b.take(Duration::MAX);
        }
    }

    #[test]
    fn bad_rates_are_ignored() {
        let (shared, _chain, _url) =
            limited(&[("rateLimit", "-1"), ("rateLimit.x", "abc"), ("rateLimit.", "5")]);
        let view = &shared.rate_limits.list()["com.example.Hello"];
        assert_eq!((view.service, view.methods.len()), (None, 0));
    }
}
