//! motan-go's observability outputs through real agents (issue #19): app → client agent →
//! server agent → Motan2 provider, both agents with `accessLog,metrics`, a `metrics` section
//! pointing at a collector this test runs (UDP on 127.0.0.1, motan-go's `key:value|type`
//! lines) and `log_dir` set. Checks motan-go's Graphite key layout and that its values agree
//! with `/metrics`, and that the access-log files hold one motan-go line per call and role
//! across rotations (`sockmesh.log.rotate_interval_ms`).
mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr, client_motan, export_addr, serial};

const CALLS: usize = 60;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("sockmesh-observe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One line a collector received: (key, value, type).
type Line = (String, f64, String);

/// Collects every datagram's lines until dropped.
struct Collector {
    port: u16,
    lines: Arc<Mutex<Vec<Line>>>,
    bad: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start() -> Collector {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let port = sock.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, b, s) = (lines.clone(), bad.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines().filter(|x| !x.is_empty()) {
                    match parse_line(line) {
                        Some(p) => l.lock().unwrap().push(p),
                        None => b.lock().unwrap().push(line.to_string()),
                    }
                }
            }
        });
        Collector {
            port,
            lines,
            bad,
            stop,
            thread: Some(thread),
        }
    }

    fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `key:value|type`, every key part in motan-go's escaped alphabet.
fn parse_line(line: &str) -> Option<Line> {
    let (key, rest) = line.rsplit_once(':')?;
    let (value, kind) = rest.split_once('|')?;
    let ok_key = key.split('.').all(|p| {
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !ok_key || !["c", "kv", "ms"].contains(&kind) {
        return None;
    }
    Some((key.to_string(), value.parse().ok()?, kind.to_string()))
}

fn sum(lines: &[Line], key: &str) -> f64 {
    lines.iter().filter(|l| l.0 == key).map(|l| l.1).sum()
}

/// The samples of `/metrics` (Prometheus text).
fn scrape(d: &Daemon) -> Vec<prometheus_parse::Sample> {
    let (code, text) = sockmesh_testkit::http::get(d.admin, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap()
        .samples
}

fn sample(s: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("{name} {labels:?} not on /metrics"))
}

/// Every line of the access-log files (`<program>-access*.log`) under `dir`, and the count of files.
fn access_lines(dir: &Path) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("sockmesh-access") && name.ends_with(".log") {
            files += 1;
            lines.extend(std::fs::read_to_string(&p).unwrap().lines().map(str::to_string));
        }
    }
    (lines, files)
}

#[test]
fn graphite_lines_and_access_log_files_in_motan_go_layout() {
    let _serial = serial();
    let rt = motan::rt();
    let collector = Collector::start();
    let provider = Provider::start("observe-provider", 0);
    let (client_logs, server_logs) = (TempDir::new("client"), TempDir::new("server"));
    let metrics = format!(
        "metrics:\n  period: 1\n  graphite:\n    - {{name: test, host: 127.0.0.1, port: {}}}\n",
        collector.port
    );
    // sockmesh keys (2-space indent, beside `admin`): fast rotation and status samples.
    let aids = "  log:\n    rotate_interval_ms: 700\n  metrics:\n    status_period_ms: 1000\n";
    let agent_keys = |d: &TempDir| format!("  log_dir: {}\n", d.0.display());
    let ports = Ports::pick();
    let server = Daemon::launch_admin(
        "observe-server",
        ports,
        &agent_keys(&server_logs),
        aids,
        &format!(
            "motan-service:\n  echo:\n    path: {SVC}\n    group: g1\n    export: \"motan2:{}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n    filter: \"accessLog,metrics\"\n{metrics}",
            ports.eport,
            provider.addr.port()
        ),
        "    enabled: false\n",
    );
    let client = Daemon::launch_admin(
        "observe-client",
        Ports::pick(),
        &agent_keys(&client_logs),
        aids,
        &format!(
            "{}{metrics}",
            client_motan(&[export_addr(&server)], "    filter: \"accessLog,metrics\"\n")
        ),
        "    enabled: false\n",
    );

    // CALLS calls over about 2.4 s: several Graphite periods and access-log rotations.
    rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        for i in 1..=CALLS {
            let rid = i.to_string();
            let req = motan::request(SVC, "echo", &[("M_rid", &rid)], &[Value::from("hi")]);
            let resp = motan::call(&ch, req).await;
            assert!(motan::exception(&resp).is_none(), "call {i}: {resp:?}");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });

    // --- Graphite: wait until both roles' totals are in (a period is 1 s).
    let key = |role: &str, app: &str, suffix: &str| {
        format!("{role}.{app}.g1.byhost.127_0_0_1.com_example_Echo.echo.{suffix}")
    };
    let client_total = key("motan-client-agent", "test-observe-client", "total_count");
    let server_total = key("motan-server-agent", "test-observe-server", "total_count");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let l = collector.lines();
        let done = sum(&l, &client_total) >= CALLS as f64 && sum(&l, &server_total) >= CALLS as f64;
        if done || Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        collector.bad.lock().unwrap().is_empty(),
        "{:?}",
        collector.bad.lock().unwrap()
    );
    let (cs, ss) = (scrape(&client), scrape(&server));
    for (s, role, app, total) in [
        (&cs, "client-agent", "test-observe-client", &client_total),
        (&ss, "server-agent", "test-observe-server", &server_total),
    ] {
        let labels = [
            ("role", role),
            ("group", "g1"),
            ("service", SVC),
            ("method", "echo"),
        ];
        let prom = sample(s, "sockmesh_requests_total", &labels);
        assert_eq!(prom, CALLS as f64, "{role}: /metrics");
        assert_eq!(
            sum(&lines, total),
            prom,
            "{role}: graphite total_count over the periods"
        );
        let k = |suffix| key(&format!("motan-{role}"), app, suffix);
        // Loopback calls: all under 50 ms, no errors, no slow ones.
        assert_eq!(sum(&lines, &k("Less50ms")), prom, "{role}");
        for absent in ["biz_error_count", "other_error_count", "slow_count", "More500ms"] {
            assert_eq!(sum(&lines, &k(absent)), 0.0, "{role} {absent}");
        }
        // Every period that counted calls has the percentiles and the mean.
        let periods = lines.iter().filter(|l| &l.0 == total).count();
        assert!(periods >= 2, "{role}: calls spread over periods: {periods}");
        for p in ["p50", "p75", "p95", "p99", "p999", "p9999"] {
            let n = lines.iter().filter(|l| l.0 == k(p) && l.2 == "kv").count();
            assert_eq!(n, periods, "{role} {p}");
        }
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.0 == k("avg_time") && l.2 == "ms")
                .count(),
            periods
        );
        // The runtime status, as motan-go names it.
        let st = |key: &str| -> Vec<f64> {
            let full = format!("motan-agent.{app}.motan-stat.byhost.127_0_0_1.status.{key}");
            lines
                .iter()
                .filter(|l| l.0 == full && l.2 == "kv")
                .map(|l| l.1)
                .collect()
        };
        assert!(
            st("memory").iter().all(|m| *m >= 1.0) && !st("memory").is_empty(),
            "{role} memory"
        );
        assert!(!st("cpu").is_empty(), "{role} cpu");
        assert!(st("goroutine_count").iter().all(|t| *t >= 1.0), "{role} tasks");
        let dropped = sample(s, "sockmesh_access_log_dropped_total", &[]);
        assert_eq!(
            st("accesslog_discard_count").iter().sum::<f64>(),
            dropped,
            "{role}"
        );
        let conns = st("motan_server_connection_count");
        let open = sample(s, "sockmesh_listener_open_connections", &[("listener", "export")]);
        assert_eq!(conns.last().copied(), Some(open), "{role}: export connections");
    }
    // The client agent's pooled connection to the server agent's export port is open.
    assert!(
        sample(
            &ss,
            "sockmesh_listener_open_connections",
            &[("listener", "export")]
        ) >= 1.0
    );

    // --- Access-log files: one motan-go line per call and role, across rotations.
    std::thread::sleep(Duration::from_millis(300));
    for (dir, role) in [(&client_logs, "client-agent"), (&server_logs, "server-agent")] {
        let (lines, files) = access_lines(&dir.0);
        assert!(files >= 3, "{role}: rotated into {files} file(s)");
        assert_eq!(lines.len(), CALLS, "{role}: {lines:#?}");
        let mut ids = BTreeSet::new();
        for l in &lines {
            let (ts, msg) = l.split_once('\t').unwrap_or_else(|| panic!("{l}"));
            assert!(ts.len() >= 24 && &ts[10..11] == "T", "{l}");
            let f: Vec<&str> = msg.split('|').collect();
            assert_eq!(f.len(), 15, "{l}");
            assert_eq!((f[0], f[1], f[3], f[4]), ("accessLog", role, SVC, "echo"), "{l}");
            // The caller's IP (client role: the app's; see README, Migration from motan-go).
            assert_eq!(f[6], "127.0.0.1", "{l}");
            assert!(f[7].parse::<u64>().unwrap() > 0, "reqSize: {l}");
            assert!(f[8].parse::<u64>().unwrap() > 0, "resSize: {l}");
            assert!(f[10].parse::<u64>().unwrap() < 1000, "totalTime ms: {l}");
            assert_eq!((f[11], f[12], f[13]), ("true", "200", ""), "{l}");
            ids.insert(f[2].parse::<u64>().unwrap());
        }
        assert_eq!(
            ids,
            (1..=CALLS as u64).collect::<BTreeSet<_>>(),
            "{role}: every call once"
        );
    }
    for (role, log) in [("client", client.log()), ("server", server.log())] {
        assert!(log.contains("access log goes to its file"), "{role}: {log}");
        assert!(
            !log.contains(" access role="),
            "{role}: access lines not on stderr too"
        );
    }
}
