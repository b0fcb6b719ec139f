//! `circuitBreaker` on a service and `clusterCircuitBreaker` on a refer (motan-go
//! filter/circuitBreaker.go and clusterCircuitBreaker.go on hystrix-go, spec 4.7): one circuit
//! per URL identity around the whole call, shared by every chain built from that identity
//! (hystrix's circuits are global by name). On a refer, `circuitBreaker` is an endpoint filter
//! in motan-go: the cluster gives each endpoint its own circuit (`cluster::circuit`, where the
//! circuit rules are).
//!
//! The filter adds hystrix's call timeout: a call is given up after the URL's
//! `requestTimeout` (1000 ms; see `CallTimeout::for_request`). With
//! `circuitBreaker.bizException` (true) business exceptions count as failures.
//!
//! The breaker's own answers are errcode 400 errtype 1 with hystrix's texts: `hystrix: circuit
//! open`, `hystrix: max concurrency`, `hystrix: timeout`.
//!
//! One deliberate difference: motan-go replaces every *counted* upstream exception by a new
//! errcode 400 errtype 1 exception with the same text, which turns business errors into
//! retryable service errors. Here an upstream exception is relayed unchanged (spec 1.9: relayed
//! exceptions keep their `M_e`); it is only counted.
use std::sync::Arc;
use std::time::Duration;

use super::call::{CallInfo, Filter, FilterFuture, Next, exception_of, reject};
pub use crate::cluster::circuit::{
    BIZ_EXCEPTION_KEY, Breakers, Circuit, CircuitView, ERR_MAX_CONCURRENCY, ERR_OPEN, ERR_TIMEOUT,
    ERROR_PERCENT_KEY, MAX_CONCURRENT_KEY, Outcome, REQUEST_THRESHOLD_KEY, SLEEP_WINDOW_KEY, Settings,
};
use crate::protocol::motan2::{ErrorType, Exception, Frame, keys as meta_keys};
use crate::url::{Url, keys};

pub const NAME: &str = "circuitBreaker";
pub const INDEX: i32 = 20;

const DEFAULT_TIMEOUT_MS: i64 = 1000;

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
            let slot = match c.enter() {
                Ok(slot) => slot,
                Err(text) => return reject(&req, &Exception::service(400, text)),
            };
            let id = req.header.request_id;
            let timeout = self.timeout.for_request(&req);
            let resp = tokio::time::timeout(timeout, next.run(req, info)).await;
            drop(slot);
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
    use crate::locks::Locked;
    use tokio::time::Instant;

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
