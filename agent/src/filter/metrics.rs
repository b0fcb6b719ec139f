//! `metrics` (motan-go filter/metrics.go, spec 4.7): request families in the agent's
//! Prometheus registry (`crate::metrics`).
//!
//! Per role, group, service and method: a request counter, an error counter by type (`biz` for
//! business exceptions, `other` for the rest, as upstream's `biz_error_count` /
//! `other_error_count`) and a latency histogram.
//!
//! Optionally the same counts are pushed to a Graphite/statsd collector every period in
//! motan-go's layout (metrics/graphite.go): UDP datagrams of at most 5 KiB holding lines
//! `<role>.<application>.<group>.byhost.<local ip>.<service>.<method><suffix>:<value>|<type>`
//! (every part but the suffix escaped to `[A-Za-z0-9-]`, others becoming `_`; the local IP
//! with `_` for `.`), with per-period counters `total_count`, `biz_error_count`,
//! `other_error_count`, `slow_count` (> 200 ms) and `Less50ms` … `More500ms` (`|c`), latency
//! percentiles `p50` … `p9999` (`|kv`) and `avg_time` (`|ms`), in milliseconds. See
//! [`Metrics::run_graphite`]. The runtime status (metrics/metrics.go `sampleStatus`: memory,
//! cpu, goroutine_count, ...) goes in the same datagrams as gauges
//! `motan-agent.<agent application>.motan-stat.byhost.<local ip>.status.<key>:<value>|kv`,
//! sampled every status period (motan-go: 30 s).
//!
//! Per request: one hash of the label strings and a read-locked map lookup finds the series
//! (created once, with its label strings, on first use); then atomic adds. The series count is
//! capped ([`MAX_SERIES`]); methods beyond it are counted under method `_overflow`.
use crate::locks::{Locked, Unpoisoned};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio_util::sync::CancellationToken;

use super::call::{CallInfo, Filter, Observer, Observing, Role, Sent, exception_of};
use crate::metrics::MetricsRegistry;
use crate::protocol::motan2::{ErrorType, Frame};
use crate::url::{Url, keys};

pub const NAME: &str = "metrics";
pub const INDEX: i32 = 2;
/// Default cap of (role, group, service, method) series; later ones share `_overflow`.
pub const MAX_SERIES: usize = 10_000;
pub const OVERFLOW_METHOD: &str = "_overflow";
/// Upstream's `slow_count` threshold.
const SLOW_MS: u64 = 200;
/// Upstream's datagram limit.
const GRAPHITE_MESSAGE_MAX: usize = 5 * 1024;
/// Upstream's percentiles, in the order written.
const SLA: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p75", 75.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
    ("p9999", 99.99),
];
/// Upstream's latency classes: upper bound (ms, exclusive) and suffix.
const ELAPSE: [(u64, &str); 5] = [
    (50, ".Less50ms"),
    (100, ".Less100ms"),
    (200, ".Less200ms"),
    (500, ".Less500ms"),
    (u64::MAX, ".More500ms"),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    role: String,
    group: String,
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    role: String,
    group: String,
    service: String,
    method: String,
    r#type: &'static str,
}

type HistogramFamily = Family<CallLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Counts of one series since the last Graphite push (only kept while pushing).
#[derive(Debug)]
struct Period {
    total: AtomicU64,
    biz: AtomicU64,
    other: AtomicU64,
    slow: AtomicU64,
    sum_ms: AtomicU64,
    elapse: [AtomicU64; 5],
    latency_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Period {
    fn default() -> Period {
        Period {
            total: AtomicU64::new(0),
            biz: AtomicU64::new(0),
            other: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
            elapse: Default::default(),
            latency_ms: Mutex::new(hdrhistogram::Histogram::new(2).expect("2 significant figures is valid")),
        }
    }
}

/// One (role, group, service, method) series.
#[derive(Debug)]
struct Series {
    role: Role,
    group: String,
    service: String,
    method: String,
    /// The URL's `application` (Graphite key).
    application: String,
    requests: Counter,
    biz_errors: Counter,
    other_errors: Counter,
    latency: Histogram,
    period: Period,
}

impl Series {
    fn is(&self, role: Role, group: &str, service: &str, method: &str) -> bool {
        self.role == role && self.method == method && self.service == service && self.group == group
    }
}

/// One series' counts of a Graphite period.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodSnapshot {
    pub role: Role,
    pub application: String,
    pub group: String,
    pub service: String,
    pub method: String,
    pub total: u64,
    pub biz_errors: u64,
    pub other_errors: u64,
    pub slow: u64,
    pub elapse: [u64; 5],
    /// (name, value ms) for each of upstream's percentiles.
    pub percentiles: Vec<(&'static str, f64)>,
    pub mean_ms: f64,
}

/// Where and how often to push to Graphite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphiteConfig {
    /// `host:port` of each collector (UDP).
    pub addrs: Vec<String>,
    /// Push period (motan-go's default is 5 s).
    pub period: Duration,
    /// How often the status samplers run (motan-go: 30 s).
    pub status_period: Duration,
    /// The agent's application (status keys; motan-go's default `unknown`).
    pub application: String,
}

/// One runtime-status value (motan-go `RegisterStatusSampleFunc`): its key and how to read it.
pub struct StatusSampler {
    pub key: &'static str,
    pub sample: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl StatusSampler {
    pub fn new(key: &'static str, sample: impl Fn() -> i64 + Send + Sync + 'static) -> StatusSampler {
        StatusSampler {
            key,
            sample: Box::new(sample),
        }
    }
}

/// motan-go's status keys: `DefaultStatRole`, `DefaultStatGroup`, `DefaultStatService`.
const STATUS_ROLE: &str = "motan-agent";
const STATUS_GROUP: &str = "motan-stat";
const STATUS_SERVICE: &str = "status";

/// Request metrics (registered in the agent's [`MetricsRegistry`]).
pub struct Metrics {
    requests: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: HistogramFamily,
    series: RwLock<HashMap<u64, Vec<Arc<Series>>>>,
    series_count: AtomicU64,
    max_series: u64,
    /// Whether a Graphite push runs (per-period counts are kept only then).
    pushing: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("series", &self.series_count.load(Ordering::Relaxed))
            .finish()
    }
}

impl Metrics {
    pub fn new(registry: &MetricsRegistry) -> Metrics {
        Metrics::with_series_limit(registry, MAX_SERIES)
    }

    /// At most `max_series` request series (methods past it count as `_overflow`).
    pub fn with_series_limit(registry: &MetricsRegistry, max_series: usize) -> Metrics {
        let requests = Family::<CallLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "Requests through a metrics filter, by role, group, service and method",
            requests.clone(),
        );
        registry.register(
            "request_errors",
            "Requests answered with an exception; type biz = business exception, other = the rest",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from entering the metrics filter to its response",
            latency.clone(),
        );
        Metrics {
            requests,
            errors,
            latency,
            series: RwLock::new(HashMap::new()),
            series_count: AtomicU64::new(0),
            max_series: max_series as u64,
            pushing: AtomicBool::new(false),
        }
    }

    fn series(&self, info: &CallInfo) -> Arc<Series> {
        let key = series_key(info.role, &info.group, &info.service, &info.method);
        if let Some(s) = self.find(key, info.role, &info.group, &info.service, &info.method) {
            return s;
        }
        let method = if self.series_count.load(Ordering::Relaxed) >= self.max_series {
            OVERFLOW_METHOD
        } else {
            &info.method
        };
        let key = series_key(info.role, &info.group, &info.service, method);
        let mut map = self.series.write_unpoisoned();
        let bucket = map.entry(key).or_default();
        if let Some(s) = bucket
            .iter()
            .find(|s| s.is(info.role, &info.group, &info.service, method))
        {
            return s.clone();
        }
        let labels = CallLabels {
            role: info.role.as_str().to_string(),
            group: info.group.to_string(),
            service: info.service.to_string(),
            method: method.to_string(),
        };
        let error = |t| ErrorLabels {
            role: labels.role.clone(),
            group: labels.group.clone(),
            service: labels.service.clone(),
            method: labels.method.clone(),
            r#type: t,
        };
        let s = Arc::new(Series {
            role: info.role,
            group: info.group.to_string(),
            service: info.service.to_string(),
            method: method.to_string(),
            application: info.url.get_str(keys::APPLICATION, "").to_string(),
            requests: self.requests.get_or_create_owned(&labels),
            biz_errors: self.errors.get_or_create_owned(&error("biz")),
            other_errors: self.errors.get_or_create_owned(&error("other")),
            latency: self.latency.get_or_create_owned(&labels),
            period: Period::default(),
        });
        bucket.push(s.clone());
        self.series_count.fetch_add(1, Ordering::Relaxed);
        s
    }

    fn find(&self, key: u64, role: Role, group: &str, service: &str, method: &str) -> Option<Arc<Series>> {
        let map = self.series.read_unpoisoned();
        map.get(&key)?
            .iter()
            .find(|s| s.is(role, group, service, method))
            .cloned()
    }

    /// Count one finished call.
    pub fn record(&self, info: &CallInfo, elapsed: Duration, resp: &Frame) {
        let s = self.series(info);
        let biz = exception_of(resp).map(|e| e.errtype == ErrorType::Business);
        s.requests.inc();
        match biz {
            Some(true) => s.biz_errors.inc(),
            Some(false) => s.other_errors.inc(),
            None => 0,
        };
        s.latency.observe(elapsed.as_secs_f64());
        if self.pushing.load(Ordering::Relaxed) {
            let p = &s.period;
            let ms = elapsed.as_millis() as u64;
            p.total.fetch_add(1, Ordering::Relaxed);
            p.sum_ms.fetch_add(ms, Ordering::Relaxed);
            match biz {
                Some(true) => p.biz.fetch_add(1, Ordering::Relaxed),
                Some(false) => p.other.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
            if ms > SLOW_MS {
                p.slow.fetch_add(1, Ordering::Relaxed);
            }
            let class = ELAPSE
                .iter()
                .position(|(max, _)| ms < *max)
                .unwrap_or(ELAPSE.len() - 1);
            p.elapse[class].fetch_add(1, Ordering::Relaxed);
            let _ = p.latency_ms.locked().record(ms);
        }
    }

    /// The requests counted so far per method of `role`, `group` and `service` (cumulative;
    /// empty when no metrics filter saw that service).
    pub fn request_totals(&self, role: Role, group: &str, service: &str) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .series
            .read_unpoisoned()
            .values()
            .flatten()
            .filter(|s| s.role == role && s.group == group && s.service == service)
            .map(|s| (s.method.clone(), s.requests.get()))
            .collect();
        out.sort();
        out
    }

    /// Take (and reset) the per-period counts of every series that had requests.
    pub fn take_period(&self) -> Vec<PeriodSnapshot> {
        let all: Vec<Arc<Series>> = self
            .series
            .read_unpoisoned()
            .values()
            .flatten()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for s in all {
            let p = &s.period;
            let total = p.total.swap(0, Ordering::Relaxed);
            let sum_ms = p.sum_ms.swap(0, Ordering::Relaxed);
            let percentiles = {
                let mut h = p.latency_ms.locked();
                let v = SLA
                    .iter()
                    .map(|(n, q)| (*n, h.value_at_percentile(*q) as f64))
                    .collect();
                h.reset();
                v
            };
            let mean_ms = if total > 0 {
                sum_ms as f64 / total as f64
            } else {
                0.0
            };
            let snap = PeriodSnapshot {
                role: s.role,
                application: s.application.clone(),
                group: s.group.clone(),
                service: s.service.clone(),
                method: s.method.clone(),
                total,
                biz_errors: p.biz.swap(0, Ordering::Relaxed),
                other_errors: p.other.swap(0, Ordering::Relaxed),
                slow: p.slow.swap(0, Ordering::Relaxed),
                elapse: std::array::from_fn(|i| p.elapse[i].swap(0, Ordering::Relaxed)),
                percentiles,
                mean_ms,
            };
            if total > 0 {
                out.push(snap);
            }
        }
        out
    }

    /// Push the per-period counts (and, every `cfg.status_period`, the status samples) to
    /// each Graphite collector every `cfg.period` until `shutdown`. Errors (the address does
    /// not resolve, a send fails) are logged and retried next period, as upstream.
    pub async fn run_graphite(
        self: Arc<Self>,
        cfg: GraphiteConfig,
        samplers: Vec<StatusSampler>,
        shutdown: CancellationToken,
    ) {
        self.pushing.store(true, Ordering::Relaxed);
        let mut tick = tokio::time::interval(cfg.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(cfg.status_period);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        status_tick.tick().await;
        let app = if cfg.application.is_empty() {
            "unknown".to_string()
        } else {
            cfg.application.clone()
        };
        // Samples wait for the next push, as motan-go's gauges wait for its next sink.
        let mut status: Vec<StatusSample> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = status_tick.tick() => {
                    status = samplers
                        .iter()
                        .map(|s| StatusSample { application: app.clone(), key: s.key, value: (s.sample)() })
                        .collect();
                    continue;
                }
                _ = tick.tick() => {}
            }
            let snaps = self.take_period();
            let sent = std::mem::take(&mut status);
            for addr in &cfg.addrs {
                if let Err(e) = push_graphite(addr, &snaps, &sent).await {
                    tracing::warn!("graphite push to {addr} failed: {e}");
                }
            }
        }
        self.pushing.store(false, Ordering::Relaxed);
    }
}

/// One status value of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSample {
    pub application: String,
    pub key: &'static str,
    pub value: i64,
}

async fn push_graphite(addr: &str, snaps: &[PeriodSnapshot], status: &[StatusSample]) -> std::io::Result<()> {
    if snaps.is_empty() && status.is_empty() {
        return Ok(());
    }
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    let local_ip = sock.local_addr()?.ip().to_string().replace(['.', ':'], "_");
    for message in graphite_messages(&local_ip, snaps, status) {
        sock.send(message.as_bytes()).await?;
    }
    Ok(())
}

/// motan-go's Graphite key escaping: `[A-Za-z0-9-]` kept, anything else `_`.
pub fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The datagrams for one period (each at most 5 KiB unless a single series' lines are longer).
pub fn graphite_messages(local_ip: &str, snaps: &[PeriodSnapshot], status: &[StatusSample]) -> Vec<String> {
    let mut messages = Vec::new();
    let mut buf = String::with_capacity(GRAPHITE_MESSAGE_MAX);
    let mut add = |segment: String, buf: &mut String| {
        if !buf.is_empty() && buf.len() + segment.len() > GRAPHITE_MESSAGE_MAX {
            messages.push(std::mem::take(buf));
        }
        buf.push_str(&segment);
    };
    for s in snaps {
        // As motan-go's filter: the URL's application, escaped, empty when it has none.
        let app = escape(&s.application);
        let prefix = format!(
            "{}.{}.{}.byhost.{}.{}.{}",
            s.role.metrics_key(),
            app,
            escape(&s.group),
            local_ip,
            escape(&s.service),
            escape(&s.method)
        );
        let mut segment = String::new();
        let mut counter = |suffix: &str, v: u64| {
            if v > 0 {
                let _ = writeln!(segment, "{prefix}{suffix}:{v}|c");
            }
        };
        counter(".total_count", s.total);
        counter(".biz_error_count", s.biz_errors);
        counter(".other_error_count", s.other_errors);
        counter(".slow_count", s.slow);
        for (i, (_, suffix)) in ELAPSE.iter().enumerate() {
            counter(suffix, s.elapse[i]);
        }
        for (name, v) in &s.percentiles {
            let _ = writeln!(segment, "{prefix}.{name}:{v:.2}|kv");
        }
        let _ = writeln!(segment, "{prefix}.avg_time:{:.2}|ms", s.mean_ms);
        add(segment, &mut buf);
    }
    for st in status {
        add(
            format!(
                "{STATUS_ROLE}.{}.{STATUS_GROUP}.byhost.{local_ip}.{STATUS_SERVICE}.{}:{}|kv\n",
                escape(&st.application),
                escape(st.key),
                st.value
            ),
            &mut buf,
        );
    }
    if !buf.is_empty() {
        messages.push(buf);
    }
    messages
}

fn series_key(role: Role, group: &str, service: &str, method: &str) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(role as u64);
    for part in [group, service, method] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finish()
}

struct MetricsFilter {
    metrics: Arc<Metrics>,
}

pub fn build(_url: &Url, metrics: &Arc<Metrics>) -> Arc<dyn Filter> {
    Arc::new(Observing(MetricsFilter {
        metrics: metrics.clone(),
    }))
}

impl Observer for MetricsFilter {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn observe(&self, info: &CallInfo, _sent: Sent, resp: &Frame, elapsed: Duration) {
        self.metrics.record(info, elapsed, resp);
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::filter::test_support::*;
    use crate::filter::{FilterChain, FilterShared};

    fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines)
            .expect("valid 0.0.4 text")
            .samples
    }

    fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }

    #[tokio::test]
    async fn counters_equal_the_requests_sent() {
        let shared = FilterShared::new();
        let url = refer(&[("filter", "metrics")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let hello = info(url.clone(), "hello");
        let bye = info(url, "bye");
        for id in 0..5 {
            call(&chain, &hello, &up, request(id, "hello")).await;
        }
        up.set(Answer::Fail(ErrorType::Business, 503));
        for id in 0..2 {
            call(&chain, &hello, &up, request(id, "hello")).await;
        }
        up.set(Answer::Fail(ErrorType::Service, 400));
        for id in 0..3 {
            call(&chain, &bye, &up, request(id, "bye")).await;
        }
        let text = shared.registry.encode();
        assert!(
            text.contains("# TYPE sockmesh_requests_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let s = samples(&text);
        let l = |m| {
            [
                ("role", "client-agent"),
                ("group", "g1"),
                ("service", "com.example.Hello"),
                ("method", m),
            ]
        };
        assert_eq!(value(&s, "sockmesh_requests_total", &l("hello")), Some(7.0));
        assert_eq!(value(&s, "sockmesh_requests_total", &l("bye")), Some(3.0));
        let errors = |m, t| {
            let mut ls = l(m).to_vec();
            ls.push(("type", t));
            value(&s, "sockmesh_request_errors_total", &ls)
        };
        assert_eq!(
            [
                errors("hello", "biz"),
                errors("hello", "other"),
                errors("bye", "biz"),
                errors("bye", "other")
            ],
            [Some(2.0), Some(0.0), Some(0.0), Some(3.0)]
        );
        let counter = s
            .iter()
            .find(|x| x.metric == "sockmesh_requests_total" && x.labels.get("method") == Some("bye"))
            .unwrap();
        assert_eq!(
            counter.value,
            prometheus_parse::Value::Counter(3.0),
            "typed as a counter"
        );
        assert_eq!(
            value(&s, "sockmesh_request_duration_seconds", &l("hello")),
            Some(7.0)
        );
        let count = s
            .iter()
            .find(|x| {
                x.metric == "sockmesh_request_duration_seconds_count" && x.labels.get("method") == Some("bye")
            })
            .unwrap();
        assert_eq!(count.value, prometheus_parse::Value::Untyped(3.0));
    }

    #[tokio::test]
    async fn series_are_capped() {
        let r = MetricsRegistry::new();
        let m = Arc::new(Metrics::with_series_limit(&r, 10));
        let req = request(1, "x");
        let resp = Frame::response_to(&req, bytes::Bytes::new());
        for i in 0..15 {
            let inf = info(refer(&[]), &format!("m{i}"));
            m.record(&inf, Duration::from_millis(1), &resp);
        }
        assert_eq!(m.series_count.load(Ordering::Relaxed), 11);
        let s = samples(&r.encode());
        assert_eq!(
            value(&s, "sockmesh_requests_total", &[("method", OVERFLOW_METHOD)]),
            Some(5.0)
        );
    }

    #[test]
    fn graphite_lines_in_motan_layout() {
        let m = Metrics::new(&MetricsRegistry::new());
        m.pushing.store(true, Ordering::Relaxed);
        let url = refer(&[("application", "my.app")]);
        let i = info(url, "say.hi");
        let req = request(1, "say.hi");
        let ok = Frame::response_to(&req, bytes::Bytes::new());
        let biz = crate::filter::reject(&req, &crate::protocol::motan2::Exception::business(503, "x"));
        m.record(&i, Duration::from_millis(10), &ok);
        m.record(&i, Duration::from_millis(30), &ok);
        m.record(&i, Duration::from_millis(300), &biz);
        let snaps = m.take_period();
        assert_eq!(snaps.len(), 1);
        let msgs = graphite_messages("10_0_0_1", &snaps, &[]);
        assert_eq!(msgs.len(), 1);
        let p = "motan-client-agent.my_app.g1.byhost.10_0_0_1.com_example_Hello.say_hi";
        let lines: Vec<&str> = msgs[0].lines().collect();
        assert_eq!(
            lines[..5],
            [
                format!("{p}.total_count:3|c"),
                format!("{p}.biz_error_count:1|c"),
                format!("{p}.slow_count:1|c"),
                format!("{p}.Less50ms:2|c"),
                format!("{p}.Less500ms:1|c"),
            ]
        );
        assert_eq!(lines[5], format!("{p}.p50:30.00|kv"));
        // hdrhistogram with 2 significant figures: 300 lies in a bucket of width 2.
        let p9999: f64 = lines[10]
            .strip_prefix(&format!("{p}.p9999:"))
            .and_then(|v| v.strip_suffix("|kv"))
            .unwrap()
            .parse()
            .unwrap();
        assert!((300.0..302.0).contains(&p9999), "{}", lines[10]);
        assert_eq!(lines[11], format!("{p}.avg_time:113.33|ms"));
        assert_eq!(lines.len(), 12);
        // The period was reset.
        assert!(m.take_period().is_empty());
    }

    #[test]
    fn graphite_messages_split_at_5_kib() {
        let snap = |i: usize| PeriodSnapshot {
            role: Role::ServerAgent,
            application: String::new(),
            group: "g".into(),
            service: format!("svc{i}"),
            method: "m".into(),
            total: 1,
            biz_errors: 0,
            other_errors: 0,
            slow: 0,
            elapse: [1, 0, 0, 0, 0],
            percentiles: SLA.iter().map(|(n, _)| (*n, 1.0)).collect(),
            mean_ms: 1.0,
        };
        let snaps: Vec<_> = (0..100).map(snap).collect();
        let status = [StatusSample {
            application: "my.app".into(),
            key: "goroutine_count",
            value: 12,
        }];
        let msgs = graphite_messages("127_0_0_1", &snaps, &status);
        assert!(msgs.len() > 1);
        assert!(msgs.iter().all(|m| m.len() <= GRAPHITE_MESSAGE_MAX));
        assert_eq!(msgs.iter().map(|m| m.lines().count()).sum::<usize>(), 100 * 9 + 1);
        assert!(msgs[0].starts_with("motan-server-agent..g.byhost.127_0_0_1.svc0.m.total_count:1|c\n"));
        assert!(
            msgs.last()
                .unwrap()
                .ends_with("\nmotan-agent.my_app.motan-stat.byhost.127_0_0_1.status.goroutine_count:12|kv\n")
        );
    }

    #[tokio::test]
    async fn graphite_push_over_udp() {
        let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = GraphiteConfig {
            addrs: vec![collector.local_addr().unwrap().to_string()],
            period: Duration::from_millis(50),
            status_period: Duration::from_secs(3600),
            application: String::new(),
        };
        let m = Arc::new(Metrics::new(&MetricsRegistry::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(m.clone().run_graphite(cfg, Vec::new(), stop.clone()));
        while !m.pushing.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        let i = info(refer(&[("application", "app")]), "hello");
        let req = request(1, "hello");
        m.record(
            &i,
            Duration::from_millis(1),
            &Frame::response_to(&req, bytes::Bytes::new()),
        );
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), collector.recv(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            text.starts_with(
                "motan-client-agent.app.g1.byhost.127_0_0_1.com_example_Hello.hello.total_count:1|c\n"
            ),
            "{text}"
        );
        stop.cancel();
        task.await.unwrap();
        assert!(!m.pushing.load(Ordering::Relaxed));
    }
}
