//! The agent's Prometheus registry: every metric of the agent under the `sockmesh_` prefix.
//! Filters register their request families, the admin API its state collector; `/metrics`
//! encodes it in the Prometheus text format (0.0.4).
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

/// Name prefix of every metric in the registry.
pub const PREFIX: &str = "sockmesh";

/// Failed connects to upstream endpoints, process-wide (the pools count them; every
/// registry reports them as `sockmesh_upstream_connect_failures_total`).
pub static UPSTREAM_CONNECT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Calls the client role handed to this agent's own server role in-process (the local
/// short-cut, `sockmesh.local_shortcut`), reported as `sockmesh_local_shortcut_total`.
pub static LOCAL_SHORTCUTS: AtomicU64 = AtomicU64::new(0);

/// Reports the process-wide counters above at every scrape.
#[derive(Debug)]
struct ProcessCounters;

impl Collector for ProcessCounters {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        let c = prometheus_client::metrics::counter::ConstCounter::new(
            UPSTREAM_CONNECT_FAILURES.load(Ordering::Relaxed),
        );
        let me = encoder.encode_descriptor(
            "upstream_connect_failures",
            "Connects to upstream endpoints that failed",
            None,
            c.metric_type(),
        )?;
        c.encode(me)?;
        let c =
            prometheus_client::metrics::counter::ConstCounter::new(LOCAL_SHORTCUTS.load(Ordering::Relaxed));
        let me = encoder.encode_descriptor(
            "local_shortcut",
            "Calls to this agent's own exports served in-process instead of over TCP",
            None,
            c.metric_type(),
        )?;
        c.encode(me)
    }
}

pub struct MetricsRegistry {
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRegistry")
    }
}

impl Default for MetricsRegistry {
    fn default() -> MetricsRegistry {
        MetricsRegistry::new()
    }
}

impl MetricsRegistry {
    pub fn new() -> MetricsRegistry {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(ProcessCounters));
        MetricsRegistry {
            registry: Mutex::new(registry),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while registering leaves the registry usable: recover the guard.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a metric (name without the `sockmesh_` prefix; a counter's name without `_total`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Add a collector, asked for its metrics at every scrape (pool and endpoint health,
    /// interception counters kept elsewhere).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.lock().register_collector(collector);
    }

    /// Every metric in the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }

    /// Every metric in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.lock())
            .expect("writing to a String cannot fail");
        out
    }
}

/// Rewrite the OpenMetrics text prometheus-client writes as Prometheus 0.0.4 text: counter
/// families are named with their `_total` samples' name, `unknown` becomes `untyped`, `# UNIT`
/// and `# EOF` are dropped (0.0.4 parsers would take them as comments anyway).
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.replace(rest) {
                out.push_str("# HELP ");
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if let Some(h) = help.take() {
            let _ = writeln!(out, "# HELP {h}");
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).unwrap().samples
    }

    fn value(s: &[prometheus_parse::Sample], name: &str) -> Option<f64> {
        s.iter().find(|x| x.metric == name).map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    }

    #[test]
    fn extra_metrics_and_collectors_are_encoded() {
        let m = MetricsRegistry::new();
        let g: Gauge = Gauge::default();
        g.set(4);
        m.register("endpoints_available", "Endpoints currently available", g.clone());

        #[derive(Debug)]
        struct Intercepted;
        impl Collector for Intercepted {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> Result<(), std::fmt::Error> {
                use prometheus_client::encoding::EncodeMetric;
                let c = prometheus_client::metrics::counter::ConstCounter::new(17u64);
                let me = encoder.encode_descriptor(
                    "intercepted_connections",
                    "Connections redirected",
                    None,
                    c.metric_type(),
                )?;
                c.encode(me)
            }
        }
        m.register_collector(Box::new(Intercepted));
        let text = m.encode();
        let s = samples(&text);
        assert_eq!(value(&s, "sockmesh_endpoints_available"), Some(4.0));
        assert_eq!(value(&s, "sockmesh_intercepted_connections_total"), Some(17.0));
        assert!(
            value(&s, "sockmesh_upstream_connect_failures_total").is_some(),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sockmesh_intercepted_connections_total counter"),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_conversion() {
        let om = "# HELP a_b Some help.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n\
                  # HELP u Unknown.\n# TYPE u unknown\nu 1\n# HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_b_total Some help.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n\
             # HELP u Unknown.\n# TYPE u untyped\nu 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
        );
    }
}
