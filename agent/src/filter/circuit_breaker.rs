//! `circuitBreaker` (motan-go filter/circuitBreaker.go on hystrix-go, spec 4.7): one circuit per
//! URL identity, shared by every chain built from that identity (hystrix's circuits are global
//! by name).
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
//! - at most `circuitBreaker.maxConcurrent` (5000) calls run at once; a call is given up after
//!   the timeout (the URL's `requestTimeout`, 1000 ms; see [`Settings::timeout_for`]).
//! - With `circuitBreaker.bizException` (true) business exceptions count as failures.
//!
//! The breaker's own answers are errcode 400 errtype 1 with hystrix's texts: `hystrix: circuit
//! open`, `hystrix: max concurrency`, `hystrix: timeout`.
//!
//! One deliberate difference: motan-go replaces every *counted* upstream exception by a new
//! errcode 400 errtype 1 exception with the same text, which turns business errors into
//! retryable service errors. Here an upstream exception is relayed unchanged (spec 1.9: relayed
//! exceptions keep their `M_e`); it is only counted.
use crate::locks::{Locked, Unpoisoned};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::call::{CallInfo, Filter, FilterFuture, Next, exception_of, reject};
use crate::protocol::motan2::{ErrorType, Exception, Frame, keys as meta_keys};
use crate::url::{Url, keys};

pub const NAME: &str = "circuitBreaker";
pub const INDEX: i32 = 20;

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
const DEFAULT_TIMEOUT_MS: i64 = 1000;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CallTimeout {
    base_ms: i64,
    min_ms: i64,
    max_ms: i64,
    attempts: u32,
}

impl CallTimeout {
    fn from_url(url: &Url) -> CallTimeout {
        let base_ms = url.get_positive_int(keys::REQUEST_TIMEOUT, DEFAULT_TIMEOUT_MS);
        let or = |key, default| match url.get_int(key, 0) {
            0 => default,
            v => v,
        };
        CallTimeout {
            base_ms,
            min_ms: or(keys::MIN_REQUEST_TIMEOUT, base_ms / 2),
            max_ms: or(keys::MAX_REQUEST_TIMEOUT, base_ms.saturating_mul(2)),
            attempts: u32::try_from(url.get_positive_int(keys::RETRIES, 0))
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        }
    }

    fn for_request(&self, req: &Frame) -> Duration {
        let asked = req
            .meta
            .get(meta_keys::TIMEOUT)
            .and_then(|t| t.parse::<i64>().ok());
        let ms = match asked {
            Some(t) if t >= self.min_ms && t <= self.max_ms => t,
            _ => self.base_ms,
        };
        Duration::from_millis(ms.max(0) as u64).saturating_mul(self.attempts)
    }
}

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
enum Outcome {
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
    fn allow(&self) -> bool {
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

    fn report(&self, outcome: Outcome) {
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

/// hystrix's `int(errors/requests*100 + 0.5)`.
fn error_percent(requests: u64, errors: u64) -> u64 {
    if requests == 0 {
        return 0;
    }
    ((errors as f64 / requests as f64) * 100.0 + 0.5) as u64
}

/// Every circuit, by name (the URL identity).
#[derive(Debug, Default)]
pub struct Breakers {
    map: RwLock<HashMap<String, Arc<Circuit>>>,
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

struct CircuitBreaker {
    circuit: Arc<Circuit>,
    timeout: CallTimeout,
    biz_exception: bool,
}

pub fn build(url: &Url, breakers: &Breakers) -> Arc<dyn Filter> {
    let settings = Settings::from_url(url);
    let biz_exception = url.get_bool(BIZ_EXCEPTION_KEY, true);
    let name = url.identity();
    tracing::info!(
        "[circuitBreaker] circuit {name}: requestThreshold {} sleepWindow {:?} errorPercent {} \
         maxConcurrent {} bizException {biz_exception}",
        settings.request_threshold,
        settings.sleep_window,
        settings.error_percent,
        settings.max_concurrent
    );
    Arc::new(CircuitBreaker {
        circuit: breakers.circuit(&name, settings),
        timeout: CallTimeout::from_url(url),
        biz_exception,
    })
}

/// Releases a concurrency slot even when the call is dropped half way.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Filter for CircuitBreaker {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        Box::pin(async move {
            let c = &self.circuit;
            if !c.allow() {
                return reject(&req, &Exception::service(400, ERR_OPEN));
            }
            let max = c.state.locked().settings.max_concurrent;
            let active = Active(&c.active);
            if c.active.fetch_add(1, Ordering::Relaxed) >= max {
                drop(active);
                c.report(Outcome::Error);
                return reject(&req, &Exception::service(400, ERR_MAX_CONCURRENCY));
            }
            let id = req.header.request_id;
            let timeout = self.timeout.for_request(&req);
            let resp = tokio::time::timeout(timeout, next.run(req, info)).await;
            drop(active);
            let Ok(resp) = resp else {
                c.report(Outcome::Error);
                return Frame::agent_exception(id, &Exception::service(400, ERR_TIMEOUT));
            };
            let failed =
                exception_of(&resp).is_some_and(|e| self.biz_exception || e.errtype != ErrorType::Business);
            c.report(if failed { Outcome::Error } else { Outcome::Success });
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;

    fn breaker(params: &[(&str, &str)]) -> (Arc<FilterShared>, FilterChain, CallInfo) {
        let shared = FilterShared::new();
        let mut all = vec![("filter", "circuitBreaker")];
        all.extend_from_slice(params);
        let url = refer(&all);
        let chain = FilterChain::build(&url, &shared).unwrap();
        (shared, chain, info(url, "hello"))
    }

    async fn errcode(chain: &FilterChain, i: &CallInfo, up: &Arc<Upstream>) -> (i64, String) {
        match exception_of(&call(chain, i, up, request(1, "hello")).await) {
            Some(e) => (e.errcode, e.errmsg),
            None => (200, String::new()),
        }
    }

    #[test]
    fn settings_defaults_and_bad_values() {
        assert_eq!(Settings::from_url(&refer(&[])), Settings::default());
        let s = Settings::from_url(&refer(&[
            (REQUEST_THRESHOLD_KEY, "4"),
            (SLEEP_WINDOW_KEY, "100"),
            (ERROR_PERCENT_KEY, "101"),
            (MAX_CONCURRENT_KEY, "-3"),
        ]));
        assert_eq!(
            s,
            Settings {
                request_threshold: 4,
                sleep_window: Duration::from_millis(100),
                error_percent: 50,
                max_concurrent: 5000
            }
        );
        assert_eq!(
            (error_percent(3, 1), error_percent(200, 99), error_percent(0, 0)),
            (33, 50, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_error_ratio_then_half_opens_and_closes_on_success() {
        let (shared, chain, i) = breaker(&[(REQUEST_THRESHOLD_KEY, "4"), (SLEEP_WINDOW_KEY, "1000")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        // 2 successes + 2 failures: 4 requests, 50 % errors.
        for _ in 0..2 {
            assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        }
        up.set(Answer::Fail(ErrorType::Service, 503));
        assert_eq!(
            errcode(&chain, &i, &up).await.0,
            503,
            "upstream errors are relayed"
        );
        assert_eq!(errcode(&chain, &i, &up).await, (503, "upstream failed".into()));
        assert_eq!(up.calls(), 4);
        // Next request: threshold reached, 50 % ≥ 50 % → open, answered by the breaker.
        up.set(Answer::Ok(b"ok"));
        assert_eq!(errcode(&chain, &i, &up).await, (400, ERR_OPEN.into()));
        assert_eq!(up.calls(), 4);
        let name = i.url.identity();
        assert!(shared.breakers.get(&name).unwrap().is_open());
        // Still open just before the sleep window ends.
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(errcode(&chain, &i, &up).await.1, ERR_OPEN);
        // After it, one probe goes through; while it runs, others are refused.
        tokio::time::advance(Duration::from_millis(1)).await;
        *up.delay.locked() = Some(Duration::from_millis(50));
        let probe = call(&chain, &i, &up, request(1, "hello"));
        let other = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            errcode(&chain, &i, &up).await
        };
        let (probe, other) = tokio::join!(probe, other);
        assert!(exception_of(&probe).is_none());
        assert_eq!(other.1, ERR_OPEN);
        assert_eq!(up.calls(), 5, "only the probe reached upstream");
        // The probe's success closed the circuit and cleared the window.
        let view = shared.breakers.list()[&name].clone();
        assert_eq!((view.open, view.requests, view.errors), (false, 1, 0));
        *up.delay.locked() = None;
        for _ in 0..5 {
            assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        }
        assert_eq!(up.calls(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_keeps_it_open_for_another_window() {
        let (_s, chain, i) = breaker(&[(REQUEST_THRESHOLD_KEY, "2"), (SLEEP_WINDOW_KEY, "500")]);
        let up = Upstream::new(Answer::Fail(ErrorType::Service, 400));
        errcode(&chain, &i, &up).await;
        errcode(&chain, &i, &up).await;
        assert_eq!(errcode(&chain, &i, &up).await.1, ERR_OPEN);
        tokio::time::advance(Duration::from_millis(501)).await;
        assert_eq!(
            errcode(&chain, &i, &up).await.0,
            400,
            "probe reached upstream and failed"
        );
        assert_eq!(up.calls(), 3);
        assert_eq!(errcode(&chain, &i, &up).await.1, ERR_OPEN);
        tokio::time::advance(Duration::from_millis(501)).await;
        up.set(Answer::Ok(b"ok"));
        assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        assert_eq!(up.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn below_threshold_or_ratio_stays_closed_and_old_errors_expire() {
        let (shared, chain, i) = breaker(&[(REQUEST_THRESHOLD_KEY, "4")]);
        let up = Upstream::new(Answer::Fail(ErrorType::Service, 500));
        for _ in 0..3 {
            errcode(&chain, &i, &up).await;
        }
        // 3 requests < threshold 4: still closed although all failed.
        up.set(Answer::Ok(b"ok"));
        assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        // Now 4 requests, 75 % errors: the next one opens it... unless they left the window.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(errcode(&chain, &i, &up).await.0, 200);
        let view = &shared.breakers.list()[&i.url.identity()];
        assert_eq!((view.open, view.requests, view.errors), (false, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn biz_exceptions_count_only_when_configured() {
        for (flag, opens) in [("true", true), ("false", false)] {
            let (_s, chain, i) = breaker(&[(REQUEST_THRESHOLD_KEY, "2"), (BIZ_EXCEPTION_KEY, flag)]);
            let up = Upstream::new(Answer::Fail(ErrorType::Business, 503));
            errcode(&chain, &i, &up).await;
            errcode(&chain, &i, &up).await;
            let third = errcode(&chain, &i, &up).await;
            assert_eq!(third.1 == ERR_OPEN, opens, "bizException={flag}: {third:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_and_max_concurrency() {
        let (_s, chain, i) = breaker(&[("requestTimeout", "100"), (MAX_CONCURRENT_KEY, "1")]);
        let up = Upstream::new(Answer::Ok(b"ok"));
        *up.delay.locked() = Some(Duration::from_millis(150));
        let t0 = Instant::now();
        let r = call(&chain, &i, &up, request(3, "hello")).await;
        assert_eq!(exception_of(&r).unwrap(), Exception::service(400, ERR_TIMEOUT));
        assert_eq!(
            (r.header.request_id, t0.elapsed()),
            (3, Duration::from_millis(100))
        );
        // M_tmo within [50, 200] extends it.
        let mut req = request(4, "hello");
        req.meta.insert("M_tmo", "200");
        assert!(exception_of(&call(&chain, &i, &up, req).await).is_none());
        // Two at once with maxConcurrent 1: the second is refused.
        let (a, b) = tokio::join!(
            call(&chain, &i, &up, request(5, "hello")),
            call(&chain, &i, &up, request(6, "hello"))
        );
        let texts: Vec<String> = [a, b]
            .iter()
            .map(|r| exception_of(r).map(|e| e.errmsg).unwrap_or_default())
            .collect();
        assert!(texts.contains(&ERR_MAX_CONCURRENCY.to_string()), "{texts:?}");
        assert!(texts.contains(&ERR_TIMEOUT.to_string()), "{texts:?}");
    }

    #[test]
    fn call_timeout_covers_retries() {
        let t = CallTimeout::from_url(&refer(&[("requestTimeout", "300"), ("retries", "2")]));
        let mut req = request(1, "m");
        assert_eq!(t.for_request(&req), Duration::from_millis(900));
        req.meta.insert("M_tmo", "1000");
        assert_eq!(
            t.for_request(&req),
            Duration::from_millis(900),
            "outside [150, 600]"
        );
        req.meta.insert("M_tmo", "500");
        assert_eq!(t.for_request(&req), Duration::from_millis(1500));
    }
}
