//! The filter stage (spec 4.7): a chain of filters wraps one call, the way tower layers wrap a
//! service. Which filters run is configuration (the URL's `filter` list); their nesting is
//! fixed by each filter's index, lower = outer (runs first on the request, last on the
//! response). Order in the list does not matter.
//!
//! A filter sees the request frame and the [`CallInfo`] of the call, and either answers itself
//! (an exception frame, a mock or degrade response) or hands the request to [`Next`] and looks at
//! the response that comes back. The innermost step, the *terminal*, is whatever the request
//! path does after the filters (the cluster call on the client side, the provider on the server
//! side); it always returns a frame (a success or an exception), never an error.
//!
//! State that outlives a chain (switches, metrics, rate-limit buckets, circuits, the access-log
//! toggle) lives in one [`FilterShared`] per agent, which the admin API's filter routes
//! read and change at run time.
pub mod access_log;
pub mod call;
pub mod circuit_breaker;
pub mod degrade;
pub mod metrics;
pub mod mock;
pub mod rate_limit;
pub mod trace;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::protocol::motan2::Frame;
use crate::url::Url;

pub use crate::config::filters::known_names;
use crate::config::filters::{Side, filter_names};
use crate::metrics::MetricsRegistry;
pub use crate::switcher::Switchers;
pub use call::{
    CallInfo, Filter, FilterFuture, Next, Observer, Observing, Role, Sent, exception_of, reject,
    simple_response,
};
pub use circuit_breaker::Breakers;
pub use metrics::Metrics;
pub use rate_limit::RateLimits;

/// Build the filter `name` (one of `config::filters::FILTERS`) for `url`; each filter gets the shared state it
/// keeps, not all of it.
fn construct(name: &str, url: &Url, shared: &FilterShared) -> Option<Arc<dyn Filter>> {
    Some(match name {
        access_log::NAME => access_log::build(url, &shared.access_log),
        metrics::NAME => metrics::build(url, &shared.metrics),
        trace::NAME => trace::build(url),
        rate_limit::NAME => rate_limit::build(url, &shared.rate_limits, &shared.switchers),
        degrade::DEGRADE_NAME => degrade::build_degrade(url, &shared.switchers),
        circuit_breaker::NAME => circuit_breaker::build(url, &shared.breakers),
        mock::NAME => mock::build(url),
        _ => return None,
    })
}

/// The filters of one refer or service, sorted by index (ties by name).
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn Filter>>,
    /// How many filters from the outside in are observers (run after the call, unwrapped).
    outer_observers: usize,
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl FilterChain {
    /// No filters: [`FilterChain::call`] is the terminal alone.
    pub fn empty() -> FilterChain {
        FilterChain::default()
    }

    /// The chain for a service URL from its `filter` list (comma separated names; motan-go's
    /// `cluster*` names are aliases, duplicates count once). An unknown name is an error naming
    /// it and the known ones.
    pub fn build(url: &Url, shared: &Arc<FilterShared>) -> Result<FilterChain, String> {
        Self::build_for(url, Side::Service, shared)
    }

    /// The chain for a refer URL: as [`FilterChain::build`], without the endpoint filters
    /// (`circuitBreaker`, `failfast`), which the refer's cluster applies per endpoint.
    pub fn build_refer(url: &Url, shared: &Arc<FilterShared>) -> Result<FilterChain, String> {
        Self::build_for(url, Side::Refer, shared)
    }

    fn build_for(url: &Url, side: Side, shared: &Arc<FilterShared>) -> Result<FilterChain, String> {
        let wanted = filter_names(url, side).map_err(|e| format!("{} in {}", e.reason, url.path))?;
        for (n, why) in &wanted.skipped {
            tracing::warn!("filter {n} of {} is not a filter here: {why}", url.path);
        }
        let filters = wanted
            .names
            .iter()
            .map(|n| {
                construct(n, url, shared).expect("every name in config::filters::FILTERS has a constructor")
            })
            .collect();
        Ok(FilterChain::from_filters(filters))
    }

    /// A chain of the given filters, sorted by index (ties by name).
    pub fn from_filters(mut filters: Vec<Arc<dyn Filter>>) -> FilterChain {
        filters.sort_by(|a, b| a.index().cmp(&b.index()).then(a.name().cmp(b.name())));
        let outer_observers = filters.iter().take_while(|f| f.observer().is_some()).count();
        FilterChain {
            filters,
            outer_observers,
        }
    }

    /// Filter names, outermost first.
    pub fn names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Run `req` through the filters and then `terminal` (unless a filter answers first). The
    /// outer observers are called with the response once it is there; only filters that wrap
    /// the call (and the terminal, when there are such) are boxed futures.
    pub async fn call<'a, T, F>(&'a self, req: Frame, info: &'a CallInfo, terminal: T) -> Frame
    where
        T: FnOnce(Frame) -> F + Send + 'a,
        F: Future<Output = Frame> + Send + 'a,
    {
        let (observers, wrapping) = self.filters.split_at(self.outer_observers);
        let observed = (!observers.is_empty()).then(|| (Instant::now(), Sent::of(&req)));
        let resp = if wrapping.is_empty() {
            terminal(req).await
        } else {
            Next {
                rest: wrapping,
                terminal: Box::new(move |r| Box::pin(terminal(r))),
            }
            .run(req, info)
            .await
        };
        if let Some((start, sent)) = observed {
            let elapsed = start.elapsed();
            // Inner first, as the response travels out.
            for f in observers.iter().rev() {
                if let Some(o) = f.observer() {
                    o.observe(info, sent, &resp, elapsed);
                }
            }
        }
        resp
    }
}

/// Filter state shared by every chain of one agent and changed through the admin routes.
pub struct FilterShared {
    /// Named on/off switches (`switcher` config section, `/switcher/*`).
    pub switchers: Arc<Switchers>,
    /// The agent's Prometheus registry.
    pub registry: Arc<MetricsRegistry>,
    /// Request metrics (the metrics filter's families).
    pub metrics: Arc<Metrics>,
    /// Rate-limit buckets per service (`/ratelimit/*`).
    pub rate_limits: RateLimits,
    /// Circuits per URL identity (the clusters' endpoint circuits too) and failfast statuses.
    pub breakers: Arc<Breakers>,
    /// The accessLog filters' line queue and its on/off toggle.
    pub access_log: Arc<access_log::AccessLogWriter>,
}

impl Default for FilterShared {
    fn default() -> FilterShared {
        FilterShared::with_registry(Arc::default())
    }
}

impl FilterShared {
    /// Filter state whose metrics go into `registry` (the agent's).
    pub fn with_registry(registry: Arc<MetricsRegistry>) -> FilterShared {
        let metrics = Arc::new(Metrics::new(&registry));
        let dropped = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            dropped.clone(),
        );
        FilterShared {
            switchers: Arc::default(),
            registry,
            metrics,
            rate_limits: RateLimits::default(),
            breakers: Arc::default(),
            access_log: access_log::AccessLogWriter::new(dropped),
        }
    }
}

impl FilterShared {
    pub fn new() -> Arc<FilterShared> {
        Arc::new(FilterShared::default())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A terminal that counts calls and answers from a script, and helpers to build calls.
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::protocol::motan2::frame::serialization;
    use crate::protocol::motan2::{ErrorType, Exception};

    pub fn refer(params: &[(&str, &str)]) -> Url {
        let mut u = Url::new("motan2", "", 0, "com.example.Hello", "g1")
            .with_param(crate::url::keys::CONF_ID, "hello");
        for (k, v) in params {
            u = u.with_param(k, v);
        }
        u
    }

    pub fn info(url: Url, method: &str) -> CallInfo {
        let req = request(7, method);
        CallInfo::from_request(Role::ClientAgent, &req, Arc::new(url), "127.0.0.1:9982".into())
    }

    pub fn request(id: u64, method: &str) -> Frame {
        Frame::request(
            id,
            "com.example.Hello",
            method,
            Bytes::from_static(b"\x01\x00\x00\x00\x02hi"),
        )
    }

    /// How the terminal answers.
    #[derive(Clone, Debug)]
    pub enum Answer {
        Ok(&'static [u8]),
        Fail(ErrorType, i64),
    }

    /// A terminal that records how often it ran and answers with `answer`.
    #[derive(Default)]
    pub struct Upstream {
        pub calls: AtomicUsize,
        pub answer: Mutex<Option<Answer>>,
        pub delay: Mutex<Option<std::time::Duration>>,
        pub last_request: Mutex<Option<Frame>>,
    }

    impl Upstream {
        pub fn new(answer: Answer) -> Arc<Upstream> {
            let u = Upstream::default();
            *u.answer.lock().unwrap() = Some(answer);
            Arc::new(u)
        }
        pub fn set(&self, answer: Answer) {
            *self.answer.lock().unwrap() = Some(answer);
        }
        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        pub async fn answer(&self, req: Frame) -> Frame {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let answer = self.answer.lock().unwrap().clone().expect("an answer");
            *self.last_request.lock().unwrap() = Some(req.clone());
            match answer {
                Answer::Ok(body) => {
                    let mut r = Frame::response_to(&req, Bytes::from_static(body));
                    r.meta.insert("M_pt", "1");
                    r
                }
                Answer::Fail(t, code) => Frame::exception_response(
                    req.header.request_id,
                    &Exception::new(code, "upstream failed", t),
                    serialization::SIMPLE,
                    true,
                ),
            }
        }
    }

    /// Log lines written while the guard lives (this thread only), as JSON objects.
    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        pub fn lines(&self, target: &str) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
                .filter(|v| v["target"] == target)
                .collect()
        }
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
        pub fn access_lines(&self) -> Vec<serde_json::Value> {
            self.lines(crate::filter::access_log::TARGET)
        }
    }

    pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
        let c = Captured::default();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(c.clone())
            .finish();
        (c, tracing::subscriber::set_default(sub))
    }

    /// Run one request through `chain` with `upstream` as the terminal.
    pub async fn call(chain: &FilterChain, info: &CallInfo, up: &Arc<Upstream>, req: Frame) -> Frame {
        let up = up.clone();
        chain
            .call(req, info, move |r| Box::pin(async move { up.answer(r).await }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::time::Duration;

    use bytes::Bytes;

    use super::test_support::*;
    use super::*;
    use crate::protocol::motan2::ErrorType;
    use crate::protocol::motan2::Exception;
    use crate::protocol::motan2::frame::serialization;

    /// Records the order it is entered and left in.
    struct Probe {
        name: &'static str,
        index: i32,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Filter for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn index(&self) -> i32 {
            self.index
        }
        fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
            Box::pin(async move {
                self.log.lock().unwrap().push(format!("in {}", self.name));
                let resp = next.run(req, info).await;
                self.log.lock().unwrap().push(format!("out {}", self.name));
                resp
            })
        }
    }

    #[tokio::test]
    async fn lower_index_is_outer() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe = |name, index| -> Arc<dyn Filter> {
            Arc::new(Probe {
                name,
                index,
                log: log.clone(),
            })
        };
        let chain = FilterChain::from_filters(vec![probe("c", 20), probe("a", 1), probe("b", 2)]);
        assert_eq!(chain.names(), vec!["a", "b", "c"]);
        let up = Upstream::new(Answer::Ok(b"\x01\x00\x00\x00\x02ok"));
        let info = info(refer(&[]), "hello");
        let resp = call(&chain, &info, &up, request(5, "hello")).await;
        assert_eq!(
            (resp.header.request_id, &resp.body[..]),
            (5, &b"\x01\x00\x00\x00\x02ok"[..])
        );
        assert_eq!(up.calls(), 1);
        assert_eq!(
            *log.lock().unwrap(),
            vec!["in a", "in b", "in c", "out c", "out b", "out a"]
        );
    }

    /// An observer that logs what it saw.
    struct Watch {
        name: &'static str,
        index: i32,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Observer for Watch {
        fn name(&self) -> &'static str {
            self.name
        }
        fn index(&self) -> i32 {
            self.index
        }
        fn observe(&self, _info: &CallInfo, sent: Sent, resp: &Frame, _elapsed: Duration) {
            let code = exception_of(resp).map_or(200, |e| e.errcode);
            self.log.lock().unwrap().push(format!(
                "{} saw {} {} -> {code}",
                self.name, sent.request_id, sent.body_len
            ));
        }
    }

    #[tokio::test]
    async fn observers_see_calls_inside_and_outside_wrapping_filters() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let watch = |name, index| -> Arc<dyn Filter> {
            Arc::new(Observing(Watch {
                name,
                index,
                log: log.clone(),
            }))
        };
        let wrap: Arc<dyn Filter> = Arc::new(Probe {
            name: "wrap",
            index: 5,
            log: log.clone(),
        });
        let chain = FilterChain::from_filters(vec![watch("inner", 10), wrap, watch("o2", 2), watch("o1", 1)]);
        assert_eq!(
            (chain.names(), chain.outer_observers),
            (vec!["o1", "o2", "wrap", "inner"], 2)
        );
        let up = Upstream::new(Answer::Fail(ErrorType::Business, 503));
        let info = info(refer(&[]), "hello");
        call(&chain, &info, &up, request(8, "hello")).await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "in wrap",
                "inner saw 8 7 -> 503",
                "out wrap",
                "o2 saw 8 7 -> 503",
                "o1 saw 8 7 -> 503"
            ],
            "outer observers after the call, inner first; an observer inside a wrapping filter still observes"
        );
        let only = FilterChain::from_filters(vec![watch("x", 1)]);
        log.lock().unwrap().clear();
        call(&only, &info, &up, request(9, "hello")).await;
        assert_eq!(
            (log.lock().unwrap().clone(), up.calls()),
            (vec!["x saw 9 7 -> 503".to_string()], 2)
        );
    }

    #[tokio::test]
    async fn empty_chain_is_the_terminal() {
        let chain = FilterChain::empty();
        assert!(chain.is_empty() && chain.names().is_empty());
        let up = Upstream::new(Answer::Fail(ErrorType::Business, 503));
        let info = info(refer(&[]), "hello");
        let resp = call(&chain, &info, &up, request(9, "hello")).await;
        assert_eq!(exception_of(&resp).unwrap().errcode, 503);
        assert_eq!(up.calls(), 1);
    }

    #[test]
    fn every_configured_filter_name_has_a_constructor() {
        let shared = FilterShared::new();
        let url = Url::new("motan2", "", 0, "p", "g");
        for name in crate::config::filters::FILTERS {
            let f = construct(name, &url, &shared).unwrap_or_else(|| panic!("{name} has no constructor"));
            assert_eq!(f.name(), *name);
        }
    }

    #[test]
    fn build_sorts_dedups_aliases_and_rejects_unknown_names() {
        let shared = FilterShared::new();
        let url = refer(&[(
            "filter",
            "mock, circuitBreaker,accessLog,clusterAccessLog,metrics,trace,rateLimit,degrade,failfast",
        )]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        assert_eq!(
            chain.names(),
            vec![
                "accessLog",
                "metrics",
                "trace",
                "degrade",
                "rateLimit",
                "circuitBreaker",
                "mock"
            ]
        );
        assert!(FilterChain::build(&refer(&[]), &shared).unwrap().is_empty());
        let err = FilterChain::build(&refer(&[("filter", "accessLog,bogus")]), &shared).unwrap_err();
        assert!(err.contains("\"bogus\""), "{err}");
        assert!(err.contains("known filters: accessLog, metrics"), "{err}");
        assert!(err.contains("clusterCircuitBreaker"), "{err}");
    }

    #[test]
    fn call_info_from_request() {
        let url = Arc::new(refer(&[]));
        let mut req = request(3, "hello");
        req.meta.insert("M_md", "java.lang.String");
        let i = CallInfo::from_request(Role::ServerAgent, &req, url.clone(), "10.0.0.1".into());
        assert_eq!(
            (i.conf_id(), &*i.service, &*i.method, &*i.method_desc, &*i.group),
            ("hello", "com.example.Hello", "hello", "java.lang.String", "g1")
        );
        req.meta.insert("M_g", "g2");
        let i = CallInfo::from_request(Role::ServerAgent, &req, url, "10.0.0.1".into());
        assert_eq!((&*i.group, i.role.as_str()), ("g2", "server-agent"));
        assert_eq!(Role::ClientAgent.metrics_key(), "motan-client-agent");
    }

    #[test]
    fn agent_built_responses() {
        let req = request(11, "hello");
        let r = reject(&req, &Exception::service(400, "no"));
        assert_eq!((r.header.flags, r.header.request_id), (0x03, 11));
        assert_eq!(exception_of(&r).unwrap(), Exception::service(400, "no"));
        let mut hessian = req.clone();
        hessian.header.set_serialization(serialization::HESSIAN2);
        let ok = simple_response(&hessian, Bytes::from_static(b"\x01\x00\x00\x00\x01x"));
        assert_eq!(
            (ok.header.flags, ok.header.serialization(), ok.header.request_id),
            (0x03, serialization::SIMPLE, 11)
        );
        assert!(exception_of(&ok).is_none());
    }
}
