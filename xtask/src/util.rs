//! Small helpers: timed progress steps, cargo invocations, test-output accounting.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A progress line on start and a timed line on completion.
pub struct Step {
    name: String,
    start: Instant,
}

impl Step {
    pub fn start(name: &str) -> Step {
        println!("xtask: {name} ...");
        Step {
            name: name.to_string(),
            start: Instant::now(),
        }
    }
    pub fn done(self, what: &str) {
        println!(
            "xtask: {} -> {} ({:.1} s)",
            self.name,
            what,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// `cargo [+toolchain]` in the project root, without variables the outer `cargo run` set that
/// would leak into a build for another toolchain.
pub fn cargo(toolchain: Option<&str>) -> Command {
    let mut cmd = Command::new("cargo");
    if let Some(t) = toolchain {
        cmd.arg(format!("+{t}"));
        for v in [
            "RUSTC",
            "RUSTDOC",
            "RUSTC_WRAPPER",
            "RUSTUP_TOOLCHAIN",
            "RUSTFLAGS",
            "CARGO",
        ] {
            cmd.env_remove(v);
        }
    }
    cmd.current_dir(project_root());
    cmd
}

/// utime+stime of a process in seconds, and its current RSS in KiB.
pub fn proc_cpu_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks / hz, rss)
}

/// A process's threads (from /proc/PID/status) and open file descriptors (entries of
/// /proc/PID/fd); None once it is gone.
pub fn proc_threads_fds(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((threads, fds))
}

#[derive(Default, Debug)]
pub struct TestSummary {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub success: bool,
}

/// Run a `cargo test` command, echo its output, and add up its "test result:" lines.
pub fn run_streaming(cmd: &mut Command) -> Result<TestSummary> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let stdout = child.stdout.take().unwrap();
    let mut sum = TestSummary::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.")
                    .trim();
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) = (it.next(), it.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => sum.passed += n,
                        "failed" => sum.failed += n,
                        "ignored" => sum.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    sum.success = child.wait()?.success();
    Ok(sum)
}

/// The median of the finite values (NaN when there are none): the bench's and the soak's reports.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
