//! HA strategies (4.6): how many endpoints a request may try and when. The decisions are pure
//! (`Failover::after_attempt`, `BackupRequestConfig::delay`, `BackupRequestBudget`); the two
//! drivers `call_with_failover` and `call_with_backup` run them over any async call closure,
//! so the request path supplies only "call this endpoint" and "is this response an error".
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;
use super::lb::{Balancer, LbRequest};
use crate::protocol::motan2::call::{CallError, E_NO_ENDPOINTS};
use crate::upstream::Deadline;

pub use crate::config::refer::HaKind;

/// Whether a call ends the HA loop: success, or a business error (never retried).
pub fn is_final(error: Option<&CallError>) -> bool {
    error.is_none_or(|e| !e.is_retryable())
}

// ---- failover ------------------------------------------------------------------------------

/// Failover for one request: up to `retries + 1` attempts, each selecting an endpoint afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    attempts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverStep {
    /// Hand this response to the caller (success, business error, or the last failure).
    Return,
    /// Select an endpoint again and retry.
    Retry,
}

impl Failover {
    pub fn with_retries(retries: u32) -> Failover {
        Failover {
            attempts: retries.saturating_add(1),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After attempt number `attempt` (1-based) ended with `error` (`None` = success). After
    /// the last attempt the *last response* is returned, so the caller sees the last upstream
    /// error rather than a synthetic one.
    pub fn after_attempt(&self, attempt: u32, error: Option<&CallError>) -> FailoverStep {
        if is_final(error) || attempt >= self.attempts {
            FailoverStep::Return
        } else {
            FailoverStep::Retry
        }
    }
}

/// errcode 1001 when failover finds no endpoint: upstream's text, `request_info` being the
/// request meta as Go prints a map (`map[k:v k2:v2]`, keys sorted).
pub fn failover_no_endpoint_error<'a>(
    request_id: u64,
    meta: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> CallError {
    let mut pairs: Vec<(&str, &str)> = meta.into_iter().collect();
    pairs.sort();
    let info: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    CallError::service(
        E_NO_ENDPOINTS,
        format!(
            "No refers for request, RequestID: {request_id}, Request info: map[{}]",
            info.join(" ")
        ),
    )
}

/// Run failover: select, call, and retry retryable failures while the request's `deadline`
/// has time left (each attempt waits only for what is left of it). `Err` only when no
/// endpoint is available (errcode 1001 from `no_endpoint`); otherwise the response to relay.
pub async fn call_with_failover<R, F, Fut>(
    policy: Failover,
    deadline: Deadline,
    balancer: &Balancer,
    req: &LbRequest<'_>,
    mut call: F,
    error_of: impl Fn(&R) -> Option<CallError>,
    no_endpoint: impl FnOnce() -> CallError,
) -> Result<R, CallError>
where
    F: FnMut(Arc<Endpoint>) -> Fut,
    Fut: Future<Output = R>,
{
    let mut attempt = 1;
    let mut failed: Vec<Arc<Endpoint>> = Vec::new();
    loop {
        let Some(ep) = select_untried(balancer, req, &failed) else {
            return Err(no_endpoint());
        };
        let response = call(ep.clone()).await;
        let error = error_of(&response);
        if let Some(e) = &error {
            tracing::warn!(attempt, endpoint = ep.address(), error = %e, "failover: call failed");
        }
        match policy.after_attempt(attempt, error.as_ref()) {
            FailoverStep::Return => return Ok(response),
            FailoverStep::Retry if deadline.expired() => {
                tracing::warn!(attempt, "failover: no time left for another attempt");
                return Ok(response);
            }
            FailoverStep::Retry => {
                attempt += 1;
                failed.push(ep);
            }
        }
    }
}

/// The balancer's choice, avoiding endpoints that already failed this request while another
/// available one exists (upstream may pick the same endpoint again; a retry that lands on the
/// endpoint that just failed is wasted, and right after a provider dies, before it is marked
/// unavailable, all of a request's attempts could land there).
fn select_untried(
    balancer: &Balancer,
    req: &LbRequest<'_>,
    failed: &[Arc<Endpoint>],
) -> Option<Arc<Endpoint>> {
    let first = balancer.select(req)?;
    let tried = |e: &Arc<Endpoint>| failed.iter().any(|f| Arc::ptr_eq(f, e));
    if !tried(&first) {
        return Some(first);
    }
    for _ in 0..3 {
        match balancer.select(req) {
            Some(e) if !tried(&e) => return Some(e),
            _ => {}
        }
    }
    balancer
        .endpoints()
        .iter()
        .find(|e| e.is_available() && !tried(e))
        .cloned()
        .or(Some(first))
}

// ---- backup request ------------------------------------------------------------------------

/// Smallest delay computed from latency (or the init delay).
pub const MIN_BACKUP_DELAY: Duration = Duration::from_millis(10);
/// A round of the retry budget is this many requests ...
const BUDGET_ROUND_REQUESTS: u32 = 100;
/// ... or at most this long, so a quiet service does not starve of backups.
const BUDGET_ROUND_MAX_AGE: Duration = Duration::from_secs(20);

pub use crate::config::refer::BackupRequestConfig;

impl BackupRequestConfig {
    /// The delay before a backup is sent, or `None` for a plain single call (no retries
    /// configured, or no latency observed yet and no init delay). `observed` is the latency at
    /// percentile `delay_ratio` of this method, `None` while there are no metrics. A computed
    /// delay is at least 10 ms; a fixed delay is used as configured.
    pub fn delay(&self, observed: Option<Duration>) -> Option<Duration> {
        if self.retries == 0 {
            return None;
        }
        if let Some(fixed) = self.fixed_delay {
            return Some(fixed);
        }
        observed.or(self.init_delay).map(|d| d.max(MIN_BACKUP_DELAY))
    }
}

/// The backup budget of one refer: at most `max_retry_ratio` backups per round, a round being
/// 100 requests or 20 s, whichever ends first.
#[derive(Debug)]
pub struct BackupRequestBudget {
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    total: u32,
    retries: u32,
    round_start: Instant,
}

impl BackupRequestBudget {
    pub fn new() -> BackupRequestBudget {
        Self::starting_at(Instant::now())
    }

    pub fn starting_at(now: Instant) -> BackupRequestBudget {
        BackupRequestBudget {
            state: Mutex::new(BudgetState {
                total: 0,
                retries: 0,
                round_start: now,
            }),
        }
    }

    /// Count a request (its first attempt), starting a new round when due.
    pub fn on_request(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.total > BUDGET_ROUND_REQUESTS
            || now.saturating_duration_since(s.round_start) >= BUDGET_ROUND_MAX_AGE
        {
            s.total = 1;
            s.retries = 0;
            s.round_start = now;
        } else {
            s.total += 1;
        }
    }

    /// Take one backup permit if the round has any left.
    pub fn try_acquire(&self, max_retry_ratio: u32) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.retries >= max_retry_ratio {
            return false;
        }
        s.retries += 1;
        true
    }
}

impl Default for BackupRequestBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// errcode 1001: no endpoint for the first attempt.
pub fn backup_no_endpoint_error() -> CallError {
    CallError::service(E_NO_ENDPOINTS, "call backup request fail: no endpoints")
}

/// An endpoint-level failure as backupRequest reports it (errcode 400).
pub fn backup_call_error(e: &CallError) -> CallError {
    CallError::service(400, format!("call backup request fail.Exception:{}", e.message))
}

/// Deadline reached (or every attempt failed) without a usable response (errcode 400).
pub fn backup_timeout_error() -> CallError {
    CallError::service(400, "call backup request fail: timeout")
}

/// One attempt of `call_with_backup`: the boxed future of a call to one endpoint.
pub type Attempt<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

/// Run backupRequest: call one endpoint; every `delay` without an answer (or as soon as the
/// latest attempt fails) send a backup to a freshly selected endpoint, while the budget allows;
/// the first success or business error wins. `delay` comes from `BackupRequestConfig::delay`;
/// `None` makes it a plain single call. Failures become errcode 400 errors (texts as upstream).
/// Upstream gives up as soon as the *latest* attempt fails even if earlier ones are still in
/// flight; this waits for those until the deadline.
pub async fn call_with_backup<'a, R, F>(
    cfg: &BackupRequestConfig,
    delay: Option<Duration>,
    budget: &BackupRequestBudget,
    balancer: &Balancer,
    req: &LbRequest<'_>,
    mut call: F,
    error_of: impl Fn(&R) -> Option<CallError>,
) -> Result<R, CallError>
where
    F: FnMut(Arc<Endpoint>) -> Attempt<'a, R>,
{
    let Some(first) = balancer.select(req) else {
        return Err(backup_no_endpoint_error());
    };
    let finish = |r: R| match error_of(&r) {
        Some(e) if e.is_retryable() => Err(backup_call_error(&e)),
        _ => Ok(r),
    };
    let Some(delay) = delay else {
        return finish(call(first).await);
    };
    budget.on_request(Instant::now());
    let deadline = tokio::time::Instant::now() + cfg.request_timeout;
    let mut in_flight: Vec<Attempt<'a, R>> = vec![call(first)];
    let mut sent = 0u32;
    loop {
        let may_send = sent < cfg.retries;
        let next_send = tokio::time::sleep(delay);
        tokio::pin!(next_send);
        // Wait for the first of: an attempt finishing, the backup delay, the deadline.
        let event = std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < in_flight.len() {
                if let Poll::Ready(r) = in_flight[i].as_mut().poll(cx) {
                    drop(in_flight.swap_remove(i));
                    return Poll::Ready(Event::Done(r));
                }
                i += 1;
            }
            if may_send && next_send.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::SendBackup);
            }
            Poll::Pending
        });
        let event = tokio::select! {
            e = event => e,
            _ = tokio::time::sleep_until(deadline) => Event::Deadline,
        };
        let send_backup = match event {
            Event::Deadline => return Err(backup_timeout_error()),
            Event::Done(r) => {
                if let Some(e) = error_of(&r).filter(|e| e.is_retryable()) {
                    tracing::warn!(error = %e, "backup request: attempt failed");
                    // The latest attempt failed: send the next one now (as upstream).
                    in_flight.is_empty() || may_send
                } else {
                    return Ok(r);
                }
            }
            Event::SendBackup => true,
        };
        if send_backup {
            if !may_send {
                return Err(backup_timeout_error());
            }
            sent += 1;
            if let Some(ep) = balancer.select(req) {
                if budget.try_acquire(cfg.max_retry_ratio) {
                    in_flight.push(call(ep));
                } else {
                    tracing::debug!("backup request: budget used up");
                    sent = cfg.retries;
                }
            }
            if in_flight.is_empty() && sent >= cfg.retries {
                return Err(backup_timeout_error());
            }
        }
    }
}

enum Event<R> {
    Done(R),
    SendBackup,
    Deadline,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::lb::{LbConfig, LbKind};
    use crate::config::refer::CallSettings;
    use crate::protocol::motan2::call::ErrorKind;
    use crate::url::Url;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn refer() -> Url {
        Url::new("motan2", "", 0, "p", "g")
    }

    fn balancer(n: usize) -> Balancer {
        let eps = (0..n)
            .map(|i| {
                let e = Endpoint::new(Url::new("motan2", &format!("127.0.0.{}", i + 1), 1, "p", "g"));
                e.set_available(true);
                Arc::new(e)
            })
            .collect();
        Balancer::new(LbConfig::new(LbKind::RoundRobin), eps, None)
    }

    /// A deadline no test reaches.
    fn far() -> Deadline {
        Deadline::after(Duration::from_secs(3600))
    }

    fn svc() -> CallError {
        CallError::service(400, "channel call error: timeout")
    }

    #[test]
    fn names() {
        assert_eq!(HaKind::from_url(&refer()).unwrap(), HaKind::Failover);
        assert_eq!(HaKind::from_name("failfast").unwrap(), HaKind::Failfast);
        assert_eq!(HaKind::from_name("backupRequest").unwrap(), HaKind::BackupRequest);
        assert_eq!(
            HaKind::from_name("broadcast").unwrap_err(),
            "unknown HA strategy \"broadcast\" (expected failover, failfast, backupRequest)"
        );
    }

    #[test]
    fn failover_attempts_and_steps() {
        let attempts = |r: &Url, kind, m, d| {
            Failover::with_retries(*CallSettings::from_url(r, kind).retries.get(m, d)).attempts()
        };
        let r = refer().with_param("retries", "2").with_param("m(x).retries", "4");
        assert_eq!(attempts(&r, HaKind::Failover, "other", ""), 3);
        assert_eq!(attempts(&r, HaKind::Failover, "m", "x"), 5);
        assert_eq!(attempts(&r, HaKind::Failfast, "m", "x"), 1);
        assert_eq!(attempts(&refer(), HaKind::Failover, "m", ""), 1);
        let neg = refer().with_param("retries", "-1");
        assert_eq!(attempts(&neg, HaKind::Failover, "m", ""), 1);

        let f = Failover::with_retries(2);
        let biz = CallError::new(500, "boom", ErrorKind::Business);
        assert_eq!(f.after_attempt(1, None), FailoverStep::Return);
        assert_eq!(f.after_attempt(1, Some(&biz)), FailoverStep::Return);
        assert_eq!(f.after_attempt(1, Some(&svc())), FailoverStep::Retry);
        assert_eq!(f.after_attempt(2, Some(&svc())), FailoverStep::Retry);
        assert_eq!(f.after_attempt(3, Some(&svc())), FailoverStep::Return);
        let fw = CallError::new(500, "codec", ErrorKind::Framework);
        assert_eq!(f.after_attempt(1, Some(&fw)), FailoverStep::Retry);
    }

    #[test]
    fn failover_no_endpoint_text() {
        let e = failover_no_endpoint_error(7, [("M_p", "com.a.B"), ("M_g", "g")]);
        assert_eq!(e.code, 1001);
        assert_eq!(
            e.message,
            "No refers for request, RequestID: 7, Request info: map[M_g:g M_p:com.a.B]"
        );
    }

    type Resp = Result<&'static str, CallError>;

    fn error_of(r: &Resp) -> Option<CallError> {
        r.as_ref().err().cloned()
    }

    #[tokio::test]
    async fn failover_driver_retries_then_returns_last() {
        let b = balancer(3);
        let calls = AtomicU32::new(0);
        let r = call_with_failover(
            Failover::with_retries(2),
            far(),
            &b,
            &LbRequest::default(),
            |_ep| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<&str, _>(svc()) }
            },
            error_of,
            || unreachable!(),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(
            r.unwrap_err().message,
            "channel call error: timeout",
            "last response relayed"
        );

        let calls = AtomicU32::new(0);
        let r = call_with_failover(
            Failover::with_retries(5),
            far(),
            &b,
            &LbRequest::default(),
            |_ep| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n == 0 {
                        Err(svc())
                    } else {
                        Err(CallError::new(503, "upstream", ErrorKind::Business))
                    }
                }
            },
            error_of,
            || unreachable!(),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2, "business error is not retried");
        assert_eq!(r.unwrap_err().code, 503);

        let none = Balancer::new(LbConfig::new(LbKind::Random), vec![], None);
        let err = call_with_failover(
            Failover::with_retries(1),
            far(),
            &none,
            &LbRequest::default(),
            |_ep| async { Ok::<&str, CallError>("x") },
            error_of,
            || failover_no_endpoint_error(1, []),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 1001);
    }

    #[tokio::test(start_paused = true)]
    async fn failover_retries_only_while_the_deadline_has_time_left() {
        let b = balancer(3);
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r = call_with_failover(
            Failover::with_retries(5),
            Deadline::after(Duration::from_millis(250)),
            &b,
            &LbRequest::default(),
            |_ep| {
                calls.fetch_add(1, Ordering::Relaxed);
                async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<&str, _>(svc())
                }
            },
            error_of,
            || unreachable!(),
        )
        .await
        .unwrap();
        assert_eq!(r.unwrap_err(), svc(), "the last error is relayed");
        assert_eq!(calls.load(Ordering::Relaxed), 3, "no attempt starts after 250 ms");
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn backup_delay_rules() {
        let mut cfg = BackupRequestConfig::for_method(&refer(), "m", "");
        assert_eq!(cfg.retries, 0);
        assert_eq!(cfg.delay_ratio, 90);
        assert_eq!(cfg.max_retry_ratio, 15);
        assert_eq!(cfg.request_timeout, Duration::from_millis(1000));
        assert_eq!(
            cfg.delay(Some(Duration::from_millis(50))),
            None,
            "no retries: plain call"
        );
        cfg.retries = 1;
        let ms = Duration::from_millis;
        assert_eq!(cfg.delay(Some(ms(50))), Some(ms(50)));
        assert_eq!(cfg.delay(Some(ms(3))), Some(ms(10)), "floor 10 ms");
        assert_eq!(cfg.delay(None), None, "no metrics, no init delay: plain call");
        cfg.init_delay = Some(ms(5));
        assert_eq!(cfg.delay(None), Some(ms(10)));
        cfg.init_delay = Some(ms(40));
        assert_eq!(cfg.delay(None), Some(ms(40)));
        cfg.fixed_delay = Some(ms(4));
        assert_eq!(cfg.delay(Some(ms(50))), Some(ms(4)), "fixed delay used as is");

        let r = refer()
            .with_param("retries", "1")
            .with_param("backupRequestDelayTime", "0")
            .with_param("get().backupRequestDelayRatio", "99")
            .with_param("backupRequestInitDelayTime", "20")
            .with_param("backupRequestMaxRetryRatio", "-3")
            .with_param("requestTimeout", "250");
        let c = BackupRequestConfig::for_method(&r, "get", "");
        assert_eq!(
            c,
            BackupRequestConfig {
                retries: 1,
                fixed_delay: None,
                delay_ratio: 99,
                init_delay: Some(ms(20)),
                max_retry_ratio: 15,
                request_timeout: ms(250),
            }
        );
    }

    #[test]
    fn budget_rounds() {
        let t0 = Instant::now();
        let b = BackupRequestBudget::starting_at(t0);
        b.on_request(t0);
        for _ in 0..15 {
            assert!(b.try_acquire(15));
        }
        assert!(!b.try_acquire(15), "15 per round");
        // 100 more requests end the round.
        for _ in 0..100 {
            b.on_request(t0);
        }
        assert!(!b.try_acquire(15));
        b.on_request(t0);
        assert!(b.try_acquire(15), "new round after >100 requests");
        // 20 s also end the round.
        let b = BackupRequestBudget::starting_at(t0);
        b.on_request(t0);
        while b.try_acquire(15) {}
        b.on_request(t0 + Duration::from_secs(19));
        assert!(!b.try_acquire(15));
        b.on_request(t0 + Duration::from_secs(20));
        assert!(b.try_acquire(15));
    }

    fn attempt(d: u64, r: Resp) -> Attempt<'static, Resp> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            r
        })
    }

    fn cfg(retries: u32, timeout_ms: u64) -> BackupRequestConfig {
        BackupRequestConfig {
            retries,
            fixed_delay: None,
            delay_ratio: 90,
            init_delay: None,
            max_retry_ratio: 15,
            request_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backup_sent_after_delay_and_faster_wins() {
        let b = balancer(2);
        let budget = BackupRequestBudget::new();
        let n = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r = call_with_backup(
            &cfg(1, 1000),
            Some(Duration::from_millis(20)),
            &budget,
            &b,
            &LbRequest::default(),
            |_ep| match n.fetch_add(1, Ordering::Relaxed) {
                0 => attempt(500, Ok("slow")),
                _ => attempt(10, Ok("backup")),
            },
            error_of,
        )
        .await;
        assert_eq!(r.unwrap().unwrap(), "backup");
        assert_eq!(n.load(Ordering::Relaxed), 2);
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn backup_not_sent_when_first_is_fast() {
        let b = balancer(2);
        let n = AtomicU32::new(0);
        let r = call_with_backup(
            &cfg(2, 1000),
            Some(Duration::from_millis(20)),
            &BackupRequestBudget::new(),
            &b,
            &LbRequest::default(),
            |_ep| {
                n.fetch_add(1, Ordering::Relaxed);
                attempt(5, Ok("first"))
            },
            error_of,
        )
        .await;
        assert_eq!(r.unwrap().unwrap(), "first");
        assert_eq!(n.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn backup_failures_and_deadline() {
        let b = balancer(2);
        // Every attempt fails fast: each failure triggers the next at once; then the error.
        let n = AtomicU32::new(0);
        let r = call_with_backup(
            &cfg(2, 1000),
            Some(Duration::from_millis(50)),
            &BackupRequestBudget::new(),
            &b,
            &LbRequest::default(),
            |_ep| {
                n.fetch_add(1, Ordering::Relaxed);
                attempt(1, Err(svc()))
            },
            error_of,
        )
        .await;
        assert_eq!(r.unwrap_err(), backup_timeout_error());
        assert_eq!(n.load(Ordering::Relaxed), 3);
        // Nothing answers before the deadline.
        let start = tokio::time::Instant::now();
        let r = call_with_backup(
            &cfg(1, 100),
            Some(Duration::from_millis(20)),
            &BackupRequestBudget::new(),
            &b,
            &LbRequest::default(),
            |_ep| attempt(10_000, Ok("late")),
            error_of,
        )
        .await;
        assert_eq!(r.unwrap_err().message, "call backup request fail: timeout");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // Business error wins like a success.
        let r = call_with_backup(
            &cfg(1, 100),
            Some(Duration::from_millis(20)),
            &BackupRequestBudget::new(),
            &b,
            &LbRequest::default(),
            |_ep| attempt(1, Err(CallError::new(503, "biz", ErrorKind::Business))),
            error_of,
        )
        .await;
        assert_eq!(r.unwrap().unwrap_err().code, 503);
    }

    #[tokio::test(start_paused = true)]
    async fn backup_plain_call_and_budget() {
        let b = balancer(2);
        // No delay: a single call; its failure is converted.
        let r = call_with_backup(
            &cfg(1, 100),
            None,
            &BackupRequestBudget::new(),
            &b,
            &LbRequest::default(),
            |_ep| attempt(1, Err(svc())),
            error_of,
        )
        .await;
        assert_eq!(
            r.unwrap_err().message,
            "call backup request fail.Exception:channel call error: timeout"
        );
        // Budget exhausted: no backup, the first attempt is awaited until it answers.
        let budget = BackupRequestBudget::new();
        budget.on_request(Instant::now());
        while budget.try_acquire(15) {}
        let n = AtomicU32::new(0);
        let r = call_with_backup(
            &cfg(1, 1000),
            Some(Duration::from_millis(10)),
            &budget,
            &b,
            &LbRequest::default(),
            |_ep| {
                n.fetch_add(1, Ordering::Relaxed);
                attempt(200, Ok("only"))
            },
            error_of,
        )
        .await;
        assert_eq!(r.unwrap().unwrap(), "only");
        assert_eq!(n.load(Ordering::Relaxed), 1);
        // No endpoint at all.
        let none = Balancer::new(LbConfig::new(LbKind::Random), vec![], None);
        let r = call_with_backup(
            &cfg(1, 100),
            None,
            &BackupRequestBudget::new(),
            &none,
            &LbRequest::default(),
            |_ep| attempt(1, Ok("x")),
            error_of,
        )
        .await;
        assert_eq!(r.unwrap_err().code, 1001);
    }
}
