//! motan-go's observability keys, typed: the `metrics:` section (Graphite writers, push period;
//! metrics/metrics.go `StartReporter`) and the access-log keys of `motan-agent` (`log_dir`,
//! `rotate_per_hour`, `log_async`, `log_structured`, `log_buffer_size`; agent.go `initLog`),
//! plus the sockmesh test/ops aids `sockmesh.log.rotate_interval_ms` and
//! `sockmesh.metrics.status_period_ms`.
//!
//! Where motan-go silently falls back (a `metrics` section it cannot read, a value of the wrong
//! type it would panic on), sockmesh refuses the configuration with the key named; where it
//! silently skips (a Graphite entry without `name`, unknown keys), sockmesh warns.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;

/// motan-go's default push period (`defaultSinkDuration`).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
/// motan-go's status sample period (`defaultStatusSamplePeriod`).
pub const DEFAULT_STATUS_PERIOD: Duration = Duration::from_secs(30);
/// motan-go's `maxEventProcessor`.
const MAX_PROCESSOR: i64 = 50;

/// One `metrics.graphite` entry: a collector taking motan-go's UDP lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphiteTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl GraphiteTarget {
    /// `host:port` (IPv6 literals bracketed).
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The `metrics` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSpec {
    pub period: Duration,
    pub graphite: Vec<GraphiteTarget>,
    /// How often the runtime status (memory, cpu, tasks, connections...) is sampled.
    pub status_period: Duration,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            period: DEFAULT_PERIOD,
            graphite: Vec::new(),
            status_period: DEFAULT_STATUS_PERIOD,
        }
    }
}

/// How access lines are written to files (`log_dir` set and not `stdout`), or `None`: to the
/// daemon's log (stderr), as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    pub dir: PathBuf,
    /// Rotate at every wall-clock hour (motan-go's default); else only at 1 GiB.
    pub rotate_per_hour: bool,
    /// Test/ops aid: rotate every this long instead (`sockmesh.log.rotate_interval_ms`).
    pub rotate_interval: Option<Duration>,
    /// `log_structured`: JSON fields instead of motan-go's `|`-separated line.
    pub structured: bool,
}

/// Everything this module types.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObserveSpec {
    pub metrics: MetricsSpec,
    pub access_log: Option<AccessLogSpec>,
    /// `log_async` (accepted; lines are always written by a background thread).
    pub log_async: bool,
    /// `log_buffer_size`: access lines queued before new ones are dropped (when given; else
    /// sockmesh's own bound).
    pub log_buffer_size: Option<usize>,
}

/// The sockmesh keys this module reads (`sockmesh.log`, `sockmesh.metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockmeshAids {
    pub rotate_interval_ms: u64,
    pub status_period_ms: u64,
}

/// Errors and warnings, each naming section and key.
#[derive(Debug, Default)]
pub struct Found {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl ObserveSpec {
    /// Type the keys; `metrics` is the `metrics` section (if any), `agent` the other keys of
    /// `motan-agent`.
    pub fn build(
        src: &str,
        metrics: Option<&Value>,
        agent: &BTreeMap<String, Value>,
        aids: SockmeshAids,
    ) -> (ObserveSpec, Found) {
        let mut f = Found::default();
        let mut spec = ObserveSpec {
            log_async: true,
            ..ObserveSpec::default()
        };
        if let Some(m) = metrics {
            spec.metrics = metrics_section(src, m, &mut f);
        }
        if aids.status_period_ms > 0 {
            spec.metrics.status_period = Duration::from_millis(aids.status_period_ms);
        }
        let agent_err = |f: &mut Found, key: &str, msg: &str| {
            f.errors
                .push(format!("{src}: section motan-agent, key {key}: {msg}"));
        };
        let flag = |f: &mut Found, key: &str, default: bool| match agent.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                agent_err(f, key, &format!("{} is not true or false", show(v)));
                default
            }
        };
        let rotate_per_hour = flag(&mut f, "rotate_per_hour", true);
        let structured = flag(&mut f, "log_structured", false);
        spec.log_async = flag(&mut f, "log_async", true);
        match agent.get("log_buffer_size") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => spec.log_buffer_size = Some(n.min(1 << 20) as usize),
                _ => agent_err(
                    &mut f,
                    "log_buffer_size",
                    &format!("{} is not a positive integer", show(v)),
                ),
            },
        }
        let dir = match agent.get("log_dir") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() || s == "stdout" => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(v) => {
                agent_err(&mut f, "log_dir", &format!("{} is not a directory path", show(v)));
                None
            }
        };
        spec.access_log = dir.map(|dir| AccessLogSpec {
            dir,
            rotate_per_hour,
            rotate_interval: (aids.rotate_interval_ms > 0)
                .then(|| Duration::from_millis(aids.rotate_interval_ms)),
            structured,
        });
        (spec, f)
    }
}

fn show(v: &Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| format!("{v:?}"))
}

fn metrics_section(src: &str, m: &Value, f: &mut Found) -> MetricsSpec {
    let mut spec = MetricsSpec::default();
    let err = |f: &mut Found, key: &str, msg: String| {
        f.errors.push(format!("{src}: section metrics, key {key}: {msg}"));
    };
    let map = match m {
        Value::Null => return spec,
        Value::Mapping(map) => map,
        v => {
            f.errors.push(format!(
                "{src}: section metrics: {} is not a mapping of period, processor, graphite",
                show(v)
            ));
            return spec;
        }
    };
    for (k, v) in map {
        match k.as_str().unwrap_or("") {
            "period" => match v.as_i64() {
                // motan-go keeps its default for 0 or less.
                Some(s) if s <= 0 => {}
                Some(s) => spec.period = Duration::from_secs(s as u64),
                None => err(f, "period", format!("{} is not a number of seconds", show(v))),
            },
            "processor" => match v.as_i64() {
                Some(n) if n <= MAX_PROCESSOR => {}
                _ => err(
                    f,
                    "processor",
                    format!("{} is not an integer up to {MAX_PROCESSOR}", show(v)),
                ),
            },
            "graphite" => match v {
                Value::Null => {}
                Value::Sequence(list) => {
                    for (i, e) in list.iter().enumerate() {
                        if let Some(t) = graphite_entry(src, i, e, f) {
                            spec.graphite.push(t);
                        }
                    }
                }
                v => err(f, "graphite", format!("{} is not a list of {{name, host, port}}", show(v))),
            },
            other => f.warnings.push(format!(
                "{src}: section metrics, key {other}: unknown key, ignored (known: period, processor, graphite)"
            )),
        }
    }
    spec
}

fn graphite_entry(src: &str, i: usize, e: &Value, f: &mut Found) -> Option<GraphiteTarget> {
    let key = |k: &str| format!("{src}: section metrics, key graphite[{i}].{k}");
    let Value::Mapping(m) = e else {
        f.errors.push(format!(
            "{src}: section metrics, key graphite[{i}]: {} is not a mapping of name, host, port",
            show(e)
        ));
        return None;
    };
    let text = |k: &str, f: &mut Found| match m.get(k) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            f.errors.push(format!("{}: {} is not a string", key(k), show(v)));
            None
        }
    };
    let name = text("name", f);
    let host = text("host", f);
    let port = match m.get("port") {
        Some(v) => match v.as_u64() {
            Some(p) if (1..=65535).contains(&p) => Some(p as u16),
            _ => {
                f.errors
                    .push(format!("{}: {} is not a port (1..=65535)", key("port"), show(v)));
                None
            }
        },
        None => {
            f.errors.push(format!("{}: missing", key("port")));
            None
        }
    };
    for k in m.keys().filter_map(Value::as_str) {
        if !["name", "host", "port"].contains(&k) {
            f.warnings.push(format!("{}: unknown key, ignored", key(k)));
        }
    }
    let (name, host, port) = (name?, host?, port?);
    if host.is_empty() {
        f.errors.push(format!("{}: missing or empty", key("host")));
        return None;
    }
    if name.is_empty() {
        // motan-go adds a writer under its name; without one it adds none.
        f.warnings.push(format!(
            "{}: missing or empty; motan-go skips such an entry, so does sockmesh",
            key("name")
        ));
        return None;
    }
    Some(GraphiteTarget { name, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(metrics: &str, agent: &str, aids: SockmeshAids) -> (ObserveSpec, Found) {
        let m: Option<Value> = (!metrics.is_empty()).then(|| serde_yaml_ng::from_str(metrics).unwrap());
        let a: BTreeMap<String, Value> = if agent.is_empty() {
            BTreeMap::new()
        } else {
            serde_yaml_ng::from_str(agent).unwrap()
        };
        ObserveSpec::build("c.yaml", m.as_ref(), &a, aids)
    }

    #[test]
    fn motan_go_metrics_section() {
        let (s, f) = build(
            "period: 1\nprocessor: 2\ngraphite:\n  - {name: g1, host: 127.0.0.1, port: 8125}\n  - {host: 127.0.0.1, port: 8126}\n",
            "",
            SockmeshAids::default(),
        );
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert_eq!(s.metrics.period, Duration::from_secs(1));
        assert_eq!(s.metrics.status_period, DEFAULT_STATUS_PERIOD);
        assert_eq!(s.metrics.graphite.len(), 1);
        assert_eq!(s.metrics.graphite[0].addr(), "127.0.0.1:8125");
        assert!(f.warnings[0].contains("key graphite[1].name"), "{:?}", f.warnings);
        assert_eq!(s.access_log, None);
        assert!(s.log_async);
    }

    #[test]
    fn bad_values_name_the_key() {
        let (_, f) = build(
            "period: soon\ngraphite:\n  - {name: g, host: h, port: 70000}\n",
            "log_dir: 3\nrotate_per_hour: \"yes\"\nlog_buffer_size: 0\n",
            SockmeshAids::default(),
        );
        let all = f.errors.join("\n");
        for k in [
            "section metrics, key period",
            "section metrics, key graphite[0].port",
            "section motan-agent, key log_dir",
            "section motan-agent, key rotate_per_hour",
            "section motan-agent, key log_buffer_size",
        ] {
            assert!(all.contains(k), "{k} in {all}");
        }
    }

    #[test]
    fn log_keys() {
        let aids = SockmeshAids {
            rotate_interval_ms: 500,
            status_period_ms: 1000,
        };
        let (s, f) = build(
            "",
            "log_dir: /var/log/motan\nrotate_per_hour: false\nlog_structured: true\nlog_async: false\nlog_buffer_size: 10\n",
            aids,
        );
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        let a = s.access_log.unwrap();
        assert_eq!(a.dir, PathBuf::from("/var/log/motan"));
        assert!(!a.rotate_per_hour && a.structured);
        assert_eq!(a.rotate_interval, Some(Duration::from_millis(500)));
        assert_eq!(s.metrics.status_period, Duration::from_secs(1));
        assert_eq!((s.log_async, s.log_buffer_size), (false, Some(10)));
        let (s, _) = build("", "log_dir: stdout\n", SockmeshAids::default());
        assert_eq!(s.access_log, None);
    }
}
