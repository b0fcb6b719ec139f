//! The soak's load and sampler: back-to-back open-loop runs of `sockmesh-loadgen` (one per
//! interval, each a new process in the intercepted cgroup with a new connection), and after each
//! the agent's RSS, threads, fds and open connections.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{MODES, Plan};
use crate::util::{proc_cpu_rss, proc_threads_fds};

/// One interval: the load's counts and latency, then the agent's state at its end.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the run started.
    pub start: f64,
    pub end: f64,
    pub mode: &'static str,
    pub ok: u64,
    /// Failed requests plus those never sent (the connection broke) or, when the run could not
    /// start at all (e.g. the connect was refused), every request of the interval.
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Why the load generator failed, when it did.
    pub note: String,
    /// The agent's PID (0 while it is down) and incarnation.
    pub pid: u32,
    pub incarnation: u32,
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
    pub cpu_s: f64,
    /// Open client connections on the agent's listeners (`sockmesh_listener_open_connections`).
    pub conns: u64,
    /// Intercepted connections this incarnation handed to the mesh so far
    /// (`sockmesh_transparent_routed_connections`): the load went through the agent.
    pub routed: u64,
    /// Connects of the cgroup that failed open so far (pinned counter, survives restarts).
    pub fail_open: u64,
}

pub struct Sampler {
    pub loadgen: PathBuf,
    pub target: String,
    pub service: &'static str,
    pub group: &'static str,
    pub cgroup: PathBuf,
    pub admin: SocketAddr,
    pub agent_pid: Arc<AtomicU32>,
    pub incarnation: Arc<AtomicU32>,
    pub mode: Arc<AtomicU8>,
    pub stop: Arc<AtomicBool>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub plan: Plan,
    pub t0: Instant,
}

/// Sum of a metric's samples (`name` or, for a counter, `name_total`) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix("_total").unwrap_or(rest);
            matches!(rest.as_bytes().first(), Some(b' ' | b'{')).then_some(l)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl Sampler {
    pub fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let s = self.one();
            self.samples.lock().unwrap().push(s);
        }
    }

    fn one(&self) -> Sample {
        let interval = self.plan.interval;
        let expected = (self.plan.rate as f64 * interval.as_secs_f64()).round() as u64;
        let start = self.t0.elapsed().as_secs_f64();
        let began = Instant::now();
        let out = Command::new(&self.loadgen)
            .args([
                "run",
                "--target",
                &self.target,
                "--rate",
                &self.plan.rate.to_string(),
            ])
            .args([
                "--duration-ms",
                &interval.as_millis().to_string(),
                "--warmup-ms",
                "0",
            ])
            .args([
                "--timeout-ms",
                "1000",
                "--service",
                self.service,
                "--group",
                self.group,
            ])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .output();
        let mut s = Sample {
            start,
            mode: MODES[self.mode.load(Ordering::SeqCst) as usize % MODES.len()],
            ..Sample::default()
        };
        let json = match &out {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout).ok(),
            _ => None,
        };
        match json {
            Some(j) => {
                s.ok = j["ok"].as_u64().unwrap_or(0);
                let failed = j["errors"].as_u64().unwrap_or(0);
                // Requests the run never sent (its connection broke) count as failed.
                s.errors = failed + expected.saturating_sub(s.ok + failed);
                s.p50_us = j["latency_us"]["p50"].as_u64().unwrap_or(0);
                s.p99_us = j["latency_us"]["p99"].as_u64().unwrap_or(0);
            }
            None => {
                s.errors = expected;
                s.note = match &out {
                    Ok(o) => String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string(),
                    Err(e) => e.to_string(),
                };
                // Keep the interval's length, so errors per interval stay comparable.
                if let Some(rest) = interval.checked_sub(began.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        }
        s.end = self.t0.elapsed().as_secs_f64();
        s.pid = self.agent_pid.load(Ordering::SeqCst);
        s.incarnation = self.incarnation.load(Ordering::SeqCst);
        if s.pid != 0
            && let Some((threads, fds)) = proc_threads_fds(s.pid)
        {
            let (cpu, rss) = proc_cpu_rss(s.pid);
            (s.threads, s.fds, s.cpu_s, s.rss_kib) = (threads, fds, cpu, rss);
            if let Ok((200, text)) = sockmesh_testkit::http::get(self.admin, "/metrics") {
                s.conns = metric_sum(&text, "sockmesh_listener_open_connections");
                s.routed = metric_sum(&text, "sockmesh_transparent_routed_connections");
                s.fail_open = metric_sum(&text, "sockmesh_intercept_fail_open");
            }
        }
        s
    }
}
