//! `cargo xtask bench`: the interception benchmark of BENCH.md. Starts a Motan2 provider, the
//! agent and haproxy, runs every mode side by side in interleaved rounds with the Motan2 load
//! generator, and writes results.json, a Markdown report and SVG plots into a dated folder under
//! bench/results/. Everything it creates (cgroup, pins, iptables chain, processes) is removed at
//! the end, also on failure.
//!
//! This file holds the matrix (modes, cases) and the run loop; `env` sets up the processes and
//! runs the load generator, `report` turns the runs into results.json and report.md.
mod env;
mod report;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::env::start_env;
use self::report::Report;
use crate::plots;
use crate::util::{Step, cargo, project_root};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    #[default]
    Direct,
    AgentExplicit,
    Iptables,
    EbpfConnect,
    EbpfSockmap,
    Haproxy,
    /// agent-explicit to a service whose refer and export run the default filter chain.
    AgentFilters,
    /// The agent's client role alone: agent port -> provider (one Motan2 hop).
    AgentClient,
    /// agent-client through a second agent with `sockmesh.shards: false` (connections on the
    /// multi-threaded runtime), to measure what the data-plane shards win.
    AgentClientShared,
    /// agent-client through a second agent with `sockmesh.shard_policy: batch` (the shards'
    /// threads SCHED_BATCH), to measure what the opt-in policy wins.
    AgentClientBatch,
    /// The agent's server role alone: export port -> provider (one Motan2 hop).
    AgentServer,
    /// agent-explicit through another build of the agent (`--baseline-bin`), for comparing
    /// two builds in one run.
    AgentBaseline,
    /// Two Motan2 hops on one host over TCP: the client role dials its own export port (local
    /// short-cut off), the export dials the provider (a second agent, the "legs" agent).
    AgentTwoHopTcp,
    /// The same two hops with `sockmesh.sockmap: true` on the export: both local legs (agent ->
    /// export port, export -> provider) short-circuited by sk_msg.
    AgentTwoHopSkmsg,
    /// agent-explicit (local short-cut) to a service whose export has `sockmesh.sockmap: true`:
    /// the provider leg (agent -> provider) is short-circuited by sk_msg.
    AgentExplicitSkmsg,
    /// ebpf-sockmap through the client role alone (one hop: intercepted app -> agent ->
    /// provider over TCP).
    EbpfSockmapClient,
    /// ebpf-sockmap-client to a refer with `sockmesh.sockmap: true`: one hop with sk_msg on both
    /// local legs (app -> agent, agent -> provider).
    EbpfSockmapLegs,
}

impl Mode {
    /// Mode names as the report writes them; an unknown one is an error listing the known ones.
    pub fn parse_list(names: &[String]) -> Result<Vec<Mode>> {
        names
            .iter()
            .map(|n| {
                Mode::ALL
                    .iter()
                    .chain(&[Mode::AgentBaseline])
                    .copied()
                    .find(|m| m.name() == n)
                    .with_context(|| {
                        let known: Vec<&str> = Mode::ALL
                            .iter()
                            .chain(&[Mode::AgentBaseline])
                            .map(|m| m.name())
                            .collect();
                        format!("unknown bench mode {n:?} (known: {})", known.join(", "))
                    })
            })
            .collect()
    }

    pub const ALL: [Mode; 16] = [
        Mode::Direct,
        Mode::AgentClient,
        Mode::AgentClientShared,
        Mode::AgentClientBatch,
        Mode::AgentServer,
        Mode::AgentExplicit,
        Mode::AgentExplicitSkmsg,
        Mode::AgentTwoHopTcp,
        Mode::AgentTwoHopSkmsg,
        Mode::AgentFilters,
        Mode::Iptables,
        Mode::EbpfConnect,
        Mode::EbpfSockmap,
        Mode::EbpfSockmapClient,
        Mode::EbpfSockmapLegs,
        Mode::Haproxy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::AgentExplicit => "agent-explicit",
            Mode::Iptables => "iptables",
            Mode::EbpfConnect => "ebpf-connect",
            Mode::EbpfSockmap => "ebpf-sockmap",
            Mode::Haproxy => "haproxy",
            Mode::AgentFilters => "agent-filters",
            Mode::AgentClient => "agent-client",
            Mode::AgentClientShared => "agent-client-shared",
            Mode::AgentClientBatch => "agent-client-batch",
            Mode::AgentServer => "agent-server",
            Mode::AgentBaseline => "agent-baseline",
            Mode::AgentTwoHopTcp => "agent-two-hop-tcp",
            Mode::AgentTwoHopSkmsg => "agent-two-hop-skmsg",
            Mode::AgentExplicitSkmsg => "agent-explicit-skmsg",
            Mode::EbpfSockmapClient => "ebpf-sockmap-client",
            Mode::EbpfSockmapLegs => "ebpf-sockmap-legs",
        }
    }

    /// Modes served by the second ("legs") agent.
    pub fn uses_legs_agent(self) -> bool {
        matches!(self, Mode::AgentTwoHopTcp | Mode::AgentTwoHopSkmsg)
    }
}

/// One load shape of the matrix.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    /// Open-loop rate (req/s); None = closed loop, maximum throughput.
    pub rate: Option<u32>,
    pub conns: u32,
    pub payload: u32,
    pub conn_per_request: bool,
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "open-1k-100B-1conn",
            rate: Some(1000),
            conns: 1,
            payload: 100,
            conn_per_request: false,
        },
        Case {
            name: "open-5k-4KiB-16conn",
            rate: Some(5000),
            conns: 16,
            payload: 4096,
            conn_per_request: false,
        },
        Case {
            name: "open-500-100B-conn-per-req",
            rate: Some(500),
            conns: 1,
            payload: 100,
            conn_per_request: true,
        },
        Case {
            name: "closed-100B-16conn",
            rate: None,
            conns: 16,
            payload: 100,
            conn_per_request: false,
        },
    ]
}

pub struct Options {
    pub quick: bool,
    /// Modes to run (all when empty).
    pub modes: Vec<Mode>,
    /// The agent's runtime worker threads (0 = one per CPU).
    pub agent_workers: usize,
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Another build of `sockmesh` for the agent-baseline mode.
    pub baseline_bin: Option<std::path::PathBuf>,
}

/// What one load-generator run reported (its JSON line), plus the proxy's CPU and memory.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub mode: Mode,
    pub case: String,
    pub round: u32,
    pub json: serde_json::Value,
    pub proxy_cpu_s: f64,
    pub proxy_rss_kib: u64,
    /// The proxy's scheduler counters over the measured window (`perf stat`), when perf runs.
    pub counters: Option<Counters>,
}

/// `perf stat -p` of the proxy over the load generator's measured window: CPU time on the
/// scheduler's clock (not the tick-sampled utime+stime), context switches and syscalls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub task_clock_ms: f64,
    pub context_switches: f64,
    pub syscalls: f64,
    /// How long perf counted.
    pub window_s: f64,
}

impl Run {
    pub fn get(&self, path: &[&str]) -> f64 {
        let mut v = &self.json;
        for p in path {
            v = &v[*p];
        }
        v.as_f64().unwrap_or(f64::NAN)
    }
    pub fn errors(&self) -> u64 {
        self.json["errors"].as_u64().unwrap_or(u64::MAX)
    }
}

/// The agent log of a successful run holds an access line per request of agent-filters mode
/// (hundreds of MB for a full run): keep only its end.
fn trim_agent_log(path: &Path) -> Result<()> {
    const KEEP: u64 = 1 << 20;
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len <= 8 * KEEP {
        return Ok(());
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(len - KEEP))?;
    let mut tail = Vec::with_capacity(KEEP as usize);
    f.read_to_end(&mut tail)?;
    let mut out = format!(
        "[xtask bench: the first {} bytes of this log were dropped after a successful run]\n",
        len - KEEP
    )
    .into_bytes();
    out.extend_from_slice(&tail);
    std::fs::write(path, out)?;
    Ok(())
}

/// Setup, the BPF object, then the release binaries of the sockmesh package (the agent and
/// the load generator) in target/release. `what` names the caller in the progress line.
pub fn build_bins(what: &str) -> Result<()> {
    crate::setup::run()?;
    crate::build_ebpf()?;
    let step = Step::start(&format!(
        "{what}: building release binaries (sockmesh, sockmesh-loadgen)"
    ));
    let st = cargo(None)
        .args(["build", "--release", "--package", "sockmesh", "--bins"])
        .status()?;
    if !st.success() {
        bail!("release build failed");
    }
    step.done("ok");
    Ok(())
}

/// The local time as results folders are named, e.g. 2026-11-29T114847.
pub fn stamp() -> Result<String> {
    let out = Command::new("date").arg("+%Y-%m-%dT%H%M%S").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(opts: Options) -> Result<()> {
    if !sockmesh_testkit::is_root() {
        bail!("cargo xtask bench needs root (cgroups, BPF, iptables)");
    }
    build_bins("bench")?;
    let dir = project_root().join("bench/results").join(stamp()?);
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)?;
    let modes: Vec<Mode> = if opts.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        opts.modes.clone()
    };
    let legs = modes.iter().any(|m| m.uses_legs_agent());
    let shared = modes.contains(&Mode::AgentClientShared);
    let batch = modes.contains(&Mode::AgentClientBatch);
    let env = start_env(
        &raw,
        opts.agent_workers,
        opts.baseline_bin.as_deref(),
        legs,
        shared,
        batch,
    )?;

    let cases = cases();
    let unavailable: Vec<(Mode, &str)> = modes
        .iter()
        .filter(|m| env.target(**m).is_none())
        .map(|m| {
            (
                *m,
                "needs --baseline-bin (another build of sockmesh to compare with)",
            )
        })
        .collect();
    let runnable: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| env.target(*m).is_some())
        .collect();
    let total = opts.rounds as usize * cases.len() * runnable.len();
    let per_run = opts.duration + opts.warmup + Duration::from_millis(300);
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut done = 0usize;
    for round in 1..=opts.rounds {
        for case in &cases {
            // Each round starts at another mode, so no mode always runs first (or right after
            // the same neighbour) and order effects spread over all modes.
            let mut order = runnable.clone();
            let n = order.len().max(1);
            order.rotate_left((round as usize - 1) % n);
            for mode in &order {
                let eta = per_run * (total - done) as u32;
                print!(
                    "\rxtask: bench: round {round}/{} case {:<28} mode {:<15} run {}/{} ETA {:>4} s   ",
                    opts.rounds,
                    case.name,
                    mode.name(),
                    done + 1,
                    total,
                    eta.as_secs()
                );
                std::io::stdout().flush()?;
                let r = env.run(*mode, case, round, &opts)?;
                std::fs::write(
                    raw.join(format!("r{round}-{}-{}.json", case.name, mode.name())),
                    serde_json::to_vec_pretty(&r.json)?,
                )?;
                runs.push(r);
                done += 1;
            }
        }
    }
    println!();
    let agent_idle_rss_kib = env.agent_idle_rss_kib;
    // The legs agent's sockhash counters: proof that agent-two-hop-skmsg took the sk_msg path.
    let sockhash = if runnable.contains(&Mode::AgentTwoHopSkmsg) {
        env.legs_sockhash()?
    } else {
        None
    };
    drop(env);
    if let Some(h) = &sockhash {
        std::fs::write(raw.join("legs-sockhash.json"), serde_json::to_vec_pretty(h)?)?;
        println!("xtask: bench: legs agent's sockhash: {h}");
        if h["msg_redirected"].as_u64().unwrap_or(0) == 0 {
            bail!("agent-two-hop-skmsg ran but sk_msg redirected nothing: {h}");
        }
    }
    let report = Report::build(
        &runs,
        &cases,
        &runnable,
        &unavailable,
        &opts,
        started.elapsed(),
        agent_idle_rss_kib,
    );
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&report.json)?)?;
    std::fs::write(dir.join("report.md"), &report.markdown)?;
    plots::write_all(&dir, &runs, &cases, &runnable)?;
    println!("{}", report.markdown);
    println!("xtask: bench: results in {}", dir.display());
    let errors: u64 = runs.iter().map(|r| r.errors()).sum();
    if errors > 0 {
        bail!("{errors} request(s) failed during the benchmark (see report)");
    }
    // Every runnable mode completed every case, and the report files exist.
    for m in &runnable {
        for c in &cases {
            let ok = runs
                .iter()
                .any(|r| r.mode == *m && r.case == c.name && r.get(&["ok"]) > 0.0);
            if !ok {
                bail!(
                    "mode {} produced no successful request in case {}",
                    m.name(),
                    c.name
                );
            }
        }
    }
    let mut files = vec![
        "results.json".to_string(),
        "report.md".into(),
        "throughput-closed-loop.svg".into(),
        "proxy-cpu.svg".into(),
    ];
    files.extend(cases.iter().map(|c| format!("latency-cdf-{}.svg", c.name)));
    for f in files {
        let p = dir.join(&f);
        if std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) == 0 {
            bail!("report file {} is missing or empty", p.display());
        }
    }
    trim_agent_log(&raw.join("agent.log"))?;
    println!("xtask: bench: every mode completed with 0 errors; report files present");
    Ok(())
}
