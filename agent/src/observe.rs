//! The motan-go observability outputs beyond `/metrics`, started from the typed
//! configuration (config/observe.rs): motan-go's access-log file under `log_dir`, and the
//! Graphite push of the `metrics` section with motan-go's runtime-status samplers (agent.go
//! `registerStatusSampler`, log.go's `accesslog_discard_count`, motan server's
//! `motan_server_connection_count`).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::AppState;
use crate::filter::FilterShared;
use crate::filter::metrics::{GraphiteConfig, StatusSampler};

/// Send access lines to motan-go's file when `log_dir` is set; apply `log_buffer_size`.
/// Before any listener serves, so every call's line goes there.
pub fn start_access_log(config: &Config, filters: &FilterShared) {
    let o = &config.observe;
    if let Some(n) = o.log_buffer_size {
        filters.access_log.set_max_queued(n);
    }
    if let Some(spec) = &o.access_log {
        // As motan-go, a log directory it cannot write does not stop the agent: the lines stay
        // on the daemon's log (and `config validate` need not guess what `run` may create).
        let path = match filters.access_log.write_to_file(spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "motan-agent.log_dir {}: cannot open the access log ({e}); access lines go to the daemon's log",
                    spec.dir.display()
                );
                return;
            }
        };
        tracing::info!(
            path = %path.display(),
            rotation = if spec.rotate_interval.is_some() { "interval" } else if spec.rotate_per_hour { "hourly" } else { "1 GiB" },
            structured = spec.structured,
            "access log goes to its file"
        );
    }
}

/// Push to the `metrics.graphite` collectors, if any, until `shutdown`.
pub fn start_graphite(
    config: &Config,
    state: &Arc<AppState>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let m = &config.observe.metrics;
    if m.graphite.is_empty() {
        return;
    }
    let cfg = GraphiteConfig {
        addrs: m.graphite.iter().map(|g| g.addr()).collect(),
        period: m.period,
        status_period: m.status_period,
        application: config.agent.application.clone(),
    };
    tracing::info!(
        collectors = ?cfg.addrs,
        period = ?cfg.period,
        "metrics pushed to graphite in motan-go's layout"
    );
    let metrics = state.mesh_shared.filters.metrics.clone();
    tasks.spawn(metrics.run_graphite(cfg, samplers(state), shutdown));
}

/// motan-go's status samplers, by its keys.
fn samplers(state: &Arc<AppState>) -> Vec<StatusSampler> {
    let access = state.mesh_shared.filters.access_log.clone();
    let reported = AtomicU64::new(access.dropped());
    let export = state.export_stats.clone();
    vec![
        StatusSampler::new("memory", || rss_bytes().map_or(0, |b| (b >> 20) as i64)),
        StatusSampler::new("cpu", || cpu_percent().unwrap_or(0)),
        // Go's goroutines; here the runtime's live tasks.
        StatusSampler::new("goroutine_count", || {
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks() as i64)
        }),
        // Since the last sample, as motan-go swaps its counter to 0.
        StatusSampler::new("accesslog_discard_count", move || {
            let now = access.dropped();
            (now - reported.swap(now, Ordering::Relaxed)) as i64
        }),
        StatusSampler::new("motan_server_connection_count", move || {
            export.active_connections.load(Ordering::Relaxed) as i64
        }),
    ]
}

/// Resident set size (`/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// CPU time over the process's lifetime, in percent of one core, as gopsutil's
/// `Process.CPUPercent` (what motan-go reports).
pub fn cpu_percent() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    let (utime, stime, start) = (num(14)?, num(15)?, num(22)?);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let alive = uptime - start / hz;
    (alive > 0.0).then(|| ((utime + stime) / hz / alive * 100.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_samples_are_plausible() {
        let rss = rss_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let cpu = cpu_percent().unwrap();
        assert!((0..=100 * 64).contains(&cpu), "{cpu}");
    }
}
