//! Circuits (hystrix-go's rules as motan-go's `circuitBreaker` filters use them, spec 4.7) and
//! motan-go's `failfast` endpoint status. Both are pure bookkeeping kept in one agent-wide
//! [`Breakers`] by name, as hystrix keeps its circuits globally by command name: a circuit
//! outlives the cluster or chain that made it (a reload keeps it).
//!
//! Who uses a circuit: the cluster gives every endpoint its own circuit when the refer lists
//! `circuitBreaker` (motan-go's endpoint filter, circuit named by the endpoint's identity, so one
//! bad node opens only its own circuit); the filter stage wraps a whole refer in one circuit for
//! `clusterCircuitBreaker` (motan-go's cluster filter) and a service for `circuitBreaker` on the
//! server side (`filter::circuit_breaker`).
//!
//! hystrix-go's rules, kept here:
//! - a rolling window of 10 one-second buckets counts requests and errors (failures, timeouts,
//!   rejections and short circuits are errors);
//! - a closed circuit opens when the window holds at least `circuitBreaker.requestThreshold`
//!   (20) requests and the error percentage, rounded, is at least `circuitBreaker.errorPercent`
//!   (50);
//! - while open, requests are answered at once; once `circuitBreaker.sleepWindow` (5000 ms)
//!   has passed since it opened or since the last probe, one request is let through as a probe;
//! - a success closes the circuit and clears the window; a failed probe keeps it open for
//!   another sleep window;
//! - at most `circuitBreaker.maxConcurrent` (5000) calls run at once.
use crate::locks::{Locked, Unpoisoned};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::protocol::motan2::call::{CallError, ErrorKind};
use crate::url::Url;

pub const REQUEST_THRESHOLD_KEY: &str = "circuitBreaker.requestThreshold";
pub const SLEEP_WINDOW_KEY: &str = "circuitBreaker.sleepWindow";
pub const ERROR_PERCENT_KEY: &str = "circuitBreaker.errorPercent";
pub const MAX_CONCURRENT_KEY: &str = "circuitBreaker.maxConcurrent";
pub const BIZ_EXCEPTION_KEY: &str = "circuitBreaker.bizException";

pub const ERR_OPEN: &str = "hystrix: circuit open";
pub const ERR_MAX_CONCURRENCY: &str = "hystrix: max concurrency";
pub const ERR_TIMEOUT: &str = "hystrix: timeout";

/// hystrix-go's rolling window: 10 buckets of one second.
const WINDOW_SECS: u64 = 10;

/// A circuit's thresholds (hystrix `CommandConfig` as motan-go fills it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub request_threshold: u64,
    #[serde(serialize_with = "as_millis")]
    pub sleep_window: Duration,
    pub error_percent: u64,
    pub max_concurrent: usize,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            request_threshold: 20,
            sleep_window: Duration::from_millis(5000),
            error_percent: 50,
            max_concurrent: 5000,
        }
    }
}

impl Settings {
    /// From the URL's `circuitBreaker.*` parameters: a value that is not a positive integer
    /// (or an error percent above 100) gives the default, as upstream.
    pub fn from_url(url: &Url) -> Settings {
        let d = Settings::default();
        let positive = |key: &str, default: u64| -> u64 {
            match url.param(key).map(str::parse::<u64>) {
                Some(Ok(v)) if v > 0 && (key != ERROR_PERCENT_KEY || v <= 100) => v,
                None => default,
                Some(_) => {
                    tracing::warn!("[circuitBreaker] {}: bad {key}, using {default}", url.path);
                    default
                }
            }
        };
        Settings {
            request_threshold: positive(REQUEST_THRESHOLD_KEY, d.request_threshold),
            sleep_window: Duration::from_millis(positive(
                SLEEP_WINDOW_KEY,
                d.sleep_window.as_millis() as u64,
            )),
            error_percent: positive(ERROR_PERCENT_KEY, d.error_percent),
            max_concurrent: positive(MAX_CONCURRENT_KEY, d.max_concurrent as u64) as usize,
        }
    }
}

/// The call timeout of a breaker: upstream gives hystrix the URL's `requestTimeout`. A
/// request's `M_tmo` within [`minRequestTimeout`, `maxRequestTimeout`] (what the endpoint
/// honours) replaces it, and the chain may wrap failover retries, so the timeout covers all
/// attempts; the breaker then never gives up on a call the cluster would still let finish.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    sec: u64,
    requests: u64,
    errors: u64,
}

/// Requests and errors of the last `WINDOW_SECS` seconds.
#[derive(Debug)]
struct Window {
    base: Instant,
    slots: [Slot; WINDOW_SECS as usize],
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            base: now,
            slots: [Slot::default(); WINDOW_SECS as usize],
        }
    }

    fn sec(&self, now: Instant) -> u64 {
        // +1 so that slot second 0 means "never used".
        now.saturating_duration_since(self.base).as_secs() + 1
    }

    fn record(&mut self, now: Instant, error: bool) {
        let sec = self.sec(now);
        let slot = &mut self.slots[(sec % WINDOW_SECS) as usize];
        if slot.sec != sec {
            *slot = Slot {
                sec,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(error);
    }

    fn sum(&self, now: Instant) -> (u64, u64) {
        let sec = self.sec(now);
        self.slots
            .iter()
            .filter(|s| s.sec != 0 && sec - s.sec < WINDOW_SECS)
            .fold((0, 0), |(r, e), s| (r + s.requests, e + s.errors))
    }
}

#[derive(Debug)]
struct State {
    settings: Settings,
    open: bool,
    opened_or_last_tested: Instant,
    window: Window,
}

/// How a call through the circuit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
}

/// One circuit.
#[derive(Debug)]
pub struct Circuit {
    name: String,
    state: Mutex<State>,
    active: AtomicUsize,
}

/// A circuit as `/circuitBreaker/list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CircuitView {
    pub open: bool,
    pub requests: u64,
    pub errors: u64,
    pub active: usize,
    pub settings: Settings,
}

impl Circuit {
    fn new(name: String, settings: Settings) -> Circuit {
        let now = Instant::now();
        Circuit {
            name,
            state: Mutex::new(State {
                settings,
                open: false,
                opened_or_last_tested: now,
                window: Window::new(now),
            }),
            active: AtomicUsize::new(0),
        }
    }

    /// Whether a request may go through now (hystrix `AllowRequest`); a refused one is counted
    /// as a short circuit.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut s = self.state.locked();
        if !s.open {
            let (requests, errors) = s.window.sum(now);
            if requests >= s.settings.request_threshold
                && error_percent(requests, errors) >= s.settings.error_percent
            {
                tracing::warn!(
                    "[circuitBreaker] opening circuit {}: {errors} of {requests} requests failed",
                    self.name
                );
                s.open = true;
                s.opened_or_last_tested = now;
            }
        }
        if !s.open {
            return true;
        }
        if now > s.opened_or_last_tested + s.settings.sleep_window {
            s.opened_or_last_tested = now;
            tracing::info!(
                "[circuitBreaker] allowing one probe through circuit {}",
                self.name
            );
            return true;
        }
        s.window.record(now, true);
        false
    }

    pub fn report(&self, outcome: Outcome) {
        let now = Instant::now();
        let mut s = self.state.locked();
        if outcome == Outcome::Success && s.open {
            tracing::info!("[circuitBreaker] closing circuit {}", self.name);
            s.open = false;
            s.window = Window::new(now);
        }
        s.window.record(now, outcome == Outcome::Error);
    }

    pub fn is_open(&self) -> bool {
        self.state.locked().open
    }

    /// Start a call through the circuit: refused with hystrix's text when the circuit is open
    /// or `maxConcurrent` calls already run (counted as an error, as hystrix does); else a slot
    /// held until the call ends. Report the call's outcome with [`Circuit::report`].
    pub fn enter(&self) -> Result<CircuitSlot<'_>, &'static str> {
        if !self.allow() {
            return Err(ERR_OPEN);
        }
        let max = self.state.locked().settings.max_concurrent;
        let slot = CircuitSlot(&self.active);
        if self.active.fetch_add(1, Ordering::Relaxed) >= max {
            drop(slot);
            self.report(Outcome::Error);
            return Err(ERR_MAX_CONCURRENCY);
        }
        Ok(slot)
    }

    pub fn view(&self) -> CircuitView {
        let s = self.state.locked();
        let (requests, errors) = s.window.sum(Instant::now());
        CircuitView {
            open: s.open,
            requests,
            errors,
            active: self.active.load(Ordering::Relaxed),
            settings: s.settings,
        }
    }
}

/// A concurrency slot of a circuit, given back when dropped (also when the call is dropped half
/// way).
#[derive(Debug)]
pub struct CircuitSlot<'a>(&'a AtomicUsize);

impl Drop for CircuitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hystrix's `int(errors/requests*100 + 0.5)`.
fn error_percent(requests: u64, errors: u64) -> u64 {
    if requests == 0 {
        return 0;
    }
    ((errors as f64 / requests as f64) * 100.0 + 0.5) as u64
}

/// Every circuit, by name (the URL identity), and every failfast status, by address.
#[derive(Debug, Default)]
pub struct Breakers {
    map: RwLock<HashMap<String, Arc<Circuit>>>,
    failfast: RwLock<HashMap<String, Arc<FailfastStatus>>>,
}

impl Breakers {
    /// The circuit of that name with these settings (a later configuration replaces the
    /// settings of an existing circuit, as hystrix's `ConfigureCommand` does).
    pub fn circuit(&self, name: &str, settings: Settings) -> Arc<Circuit> {
        let mut map = self.map.write_unpoisoned();
        let c = map
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Circuit::new(name.to_string(), settings)));
        c.state.locked().settings = settings;
        c.clone()
    }

    /// The failfast status of `address` (`host:port`): one per address, shared by every
    /// refer that reaches it, as motan-go's `failfast` filter keeps it.
    pub fn failfast(&self, address: &str) -> Arc<FailfastStatus> {
        if let Some(f) = self.failfast.read_unpoisoned().get(address) {
            return f.clone();
        }
        self.failfast
            .write_unpoisoned()
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(FailfastStatus::new()))
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Circuit>> {
        self.map.read_unpoisoned().get(name).cloned()
    }

    pub fn list(&self) -> BTreeMap<String, CircuitView> {
        self.map
            .read_unpoisoned()
            .iter()
            .map(|(k, c)| (k.clone(), c.view()))
            .collect()
    }
}

/// motan-go's `failfast` endpoint filter (filter/failfast.go): after
/// [`FailfastStatus::FAILURE_COUNT`] consecutive calls ending in an exception of any kind
/// (business exceptions too) the address is unavailable to the balancers; once
/// [`FailfastStatus::NEXT_TEST`] has passed since the last call or probe, one pick is let
/// through as a probe, and a success makes it available again.
#[derive(Debug)]
pub struct FailfastStatus {
    available: AtomicBool,
    errors: AtomicU32,
    /// Since `born`, in milliseconds: when a call last ended or a probe was let through.
    last_tested_ms: std::sync::atomic::AtomicU64,
    born: Instant,
}

impl FailfastStatus {
    pub const FAILURE_COUNT: u32 = 10;
    pub const NEXT_TEST: Duration = Duration::from_secs(10);

    fn new() -> FailfastStatus {
        FailfastStatus {
            available: AtomicBool::new(true),
            errors: AtomicU32::new(0),
            last_tested_ms: Default::default(),
            born: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Account for one call's outcome (`failed`: it ended in an exception of any kind).
    pub fn record(&self, failed: bool) {
        if failed {
            let n = self.errors.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if n >= Self::FAILURE_COUNT && self.available.swap(false, Ordering::AcqRel) {
                tracing::warn!("[failfast] endpoint unavailable after {n} consecutive errors");
            }
        } else {
            self.errors.store(0, Ordering::Relaxed);
            if !self.available.swap(true, Ordering::AcqRel) {
                tracing::info!("[failfast] endpoint available again");
            }
        }
        self.last_tested_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether a balancer may pick the endpoint now; while unavailable, true once per
    /// [`FailfastStatus::NEXT_TEST`] (the probe), as upstream's `IsAvailable`.
    pub fn allows_pick(&self) -> bool {
        if self.available.load(Ordering::Acquire) {
            return true;
        }
        let last = self.last_tested_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        now > last + Self::NEXT_TEST.as_millis() as u64
            && self
                .last_tested_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Available without taking a probe (for status pages).
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }
}

/// What a refer's filter list asks of each of its endpoints (`circuitBreaker`, `failfast`:
/// motan-go's endpoint filters), resolved once per cluster.
#[derive(Debug, Default)]
pub struct EndpointFilters {
    breakers: Arc<Breakers>,
    /// The endpoints' circuit settings and `circuitBreaker.bizException`.
    circuit: Option<(Settings, bool)>,
    failfast: bool,
}

impl EndpointFilters {
    /// From the refer's `filter` list (its errors are the configuration's to report: a list
    /// that does not resolve asks for nothing here).
    pub fn from_refer(refer: &Url, breakers: Arc<Breakers>) -> EndpointFilters {
        use crate::config::filters::{CIRCUIT_BREAKER, FAILFAST, Side, filter_names};
        let names = filter_names(refer, Side::Refer)
            .map(|f| f.endpoint)
            .unwrap_or_default();
        EndpointFilters {
            breakers,
            circuit: names
                .contains(&CIRCUIT_BREAKER)
                .then(|| (Settings::from_url(refer), refer.get_bool(BIZ_EXCEPTION_KEY, true))),
            failfast: names.contains(&FAILFAST),
        }
    }

    /// The guard of one endpoint (`identity` names its circuit, as motan-go names it by the
    /// endpoint URL's identity; failfast is per `address`), or `None` when the refer asks for
    /// neither.
    pub fn guard(&self, identity: &str, address: &str) -> Option<EndpointGuard> {
        if self.circuit.is_none() && !self.failfast {
            return None;
        }
        Some(EndpointGuard {
            circuit: self
                .circuit
                .map(|(settings, _)| self.breakers.circuit(identity, settings)),
            biz_exception: self.circuit.is_some_and(|(_, biz)| biz),
            failfast: self.failfast.then(|| self.breakers.failfast(address)),
        })
    }
}

/// One endpoint's circuit and failfast status.
#[derive(Debug)]
pub struct EndpointGuard {
    pub circuit: Option<Arc<Circuit>>,
    biz_exception: bool,
    pub failfast: Option<Arc<FailfastStatus>>,
}

impl EndpointGuard {
    /// Account for a call that went through [`Circuit::enter`] (`error`: how it failed, if it
    /// did). The circuit counts business errors only with `circuitBreaker.bizException`;
    /// failfast counts every exception, as upstream.
    pub fn record(&self, error: Option<&CallError>) {
        if let Some(c) = &self.circuit {
            let failed = error.is_some_and(|e| self.biz_exception || e.kind != ErrorKind::Business);
            c.report(if failed { Outcome::Error } else { Outcome::Success });
        }
        if let Some(f) = &self.failfast {
            f.record(error.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_percent_rounds_as_hystrix() {
        assert_eq!(
            (error_percent(3, 1), error_percent(200, 99), error_percent(0, 0)),
            (33, 50, 0)
        );
    }

    fn refer(filter: &str) -> Url {
        Url::new("motan2", "", 0, "com.example.Hello", "g1")
            .with_param("filter", filter)
            .with_param(REQUEST_THRESHOLD_KEY, "2")
    }

    #[tokio::test(start_paused = true)]
    async fn each_endpoint_has_its_own_circuit() {
        let f = EndpointFilters::from_refer(&refer("circuitBreaker"), Arc::default());
        let a = f.guard("motan2://127.0.0.1:1/p?group=g", "127.0.0.1:1").unwrap();
        let b = f.guard("motan2://127.0.0.1:2/p?group=g", "127.0.0.1:2").unwrap();
        assert!(a.failfast.is_none());
        let biz = CallError::new(503, "biz", ErrorKind::Business);
        for _ in 0..2 {
            let _slot = a.circuit.as_ref().unwrap().enter().unwrap();
            a.record(Some(&biz));
        }
        assert_eq!(a.circuit.as_ref().unwrap().enter().unwrap_err(), ERR_OPEN);
        assert!(
            b.circuit.as_ref().unwrap().enter().is_ok(),
            "b's circuit is its own"
        );
        // The same identity (another cluster of the same refer, a reload) shares the circuit.
        let again = f.guard("motan2://127.0.0.1:1/p?group=g", "127.0.0.1:1").unwrap();
        assert!(again.circuit.unwrap().is_open());
        assert!(
            EndpointFilters::from_refer(&refer("clusterCircuitBreaker,metrics"), Arc::default())
                .guard("x", "y")
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failfast_counts_every_exception_and_probes_after_ten_seconds() {
        let f = EndpointFilters::from_refer(&refer("failfast"), Arc::default());
        let g = f.guard("motan2://127.0.0.1:1/p?group=g", "127.0.0.1:1").unwrap();
        let ff = g.failfast.clone().unwrap();
        let biz = CallError::new(503, "biz", ErrorKind::Business);
        for _ in 0..9 {
            g.record(Some(&biz));
        }
        g.record(None);
        for _ in 0..9 {
            g.record(Some(&biz));
        }
        assert!(ff.allows_pick(), "a success in between resets the count");
        g.record(Some(&biz));
        assert!(!ff.allows_pick() && !ff.is_available());
        tokio::time::advance(FailfastStatus::NEXT_TEST + Duration::from_millis(1)).await;
        assert!(ff.allows_pick(), "one probe after 10 s");
        assert!(!ff.allows_pick(), "only one");
        g.record(None);
        assert!(ff.allows_pick() && ff.is_available());
        // Same address, other service: the same status (motan-go keys it by address).
        let other = f.guard("motan2://127.0.0.1:1/q?group=g", "127.0.0.1:1").unwrap();
        assert!(Arc::ptr_eq(&other.failfast.unwrap(), &ff));
    }
}
