//! `cargo xtask bench`: the interception benchmark of BENCH.md. Starts a Motan2 provider, the
//! agent and haproxy, runs every mode side by side in interleaved rounds with the Motan2 load
//! generator, and writes results.json, a Markdown report and SVG plots into a dated folder under
//! bench/results/. Everything it creates (cgroup, pins, iptables chain, processes) is removed at
//! the end, also on failure.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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
}

impl Mode {
    /// Mode names as the report writes them; an unknown one is an error listing the known ones.
    pub fn parse_list(names: &[String]) -> Result<Vec<Mode>> {
        names
            .iter()
            .map(|n| {
                Mode::ALL
                    .iter()
                    .copied()
                    .find(|m| m.name() == n)
                    .with_context(|| {
                        let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                        format!("unknown bench mode {n:?} (known: {})", known.join(", "))
                    })
            })
            .collect()
    }

    pub const ALL: [Mode; 7] = [
        Mode::Direct,
        Mode::AgentExplicit,
        Mode::AgentFilters,
        Mode::Iptables,
        Mode::EbpfConnect,
        Mode::EbpfSockmap,
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
        }
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

/// A child process we started, stopped by its PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .context("no cgroup2 mount")
}

/// utime+stime of a process in seconds, and its current RSS in KiB.
fn proc_cpu_rss(pid: u32) -> (f64, u64) {
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

struct Env {
    bin: PathBuf,
    loadgen: PathBuf,
    provider_addr: String,
    agent_admin: String,
    /// The agent port (client role), for agent-explicit.
    agent_port_addr: String,
    agent_pid: u32,
    haproxy_addr: String,
    haproxy_pid: u32,
    cgroup_rel: String,
    cgroup_dir: PathBuf,
    pin_dir: PathBuf,
    chain: String,
    _procs: Vec<Proc>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["uninstall", "--pin-dir"])
            .arg(&self.pin_dir)
            .args(["--iptables-chain", &self.chain, "--admin", &self.agent_admin])
            .output();
        // Processes are stopped by Proc's drop; the cgroup has to be empty first.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup_dir).is_ok() || !self.cgroup_dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_ready(child: &mut Child, what: &str) -> Result<String> {
    let out = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    line.trim()
        .strip_prefix("ready ")
        .map(String::from)
        .with_context(|| format!("{what} said {line:?}"))
}

/// The bench service through both roles of the agent: a refer (client role) whose direct
/// registry is the agent's own export port, and that export (server role) in front of the
/// provider. Agent-explicit and the intercepted modes all take this path; interception
/// overhead = mode - agent-explicit.
const SERVICE: &str = "com.weibo.bench.EchoService";
/// The same echo service behind the default filter chain (agent-filters mode).
const FILTERED_SERVICE: &str = "com.weibo.bench.FilteredEchoService";
/// What sockmesh calls its default filter chain: an access-log line and metrics per call, on
/// both roles.
pub const DEFAULT_FILTERS: &str = "accessLog,metrics";

fn mesh_sections(eport: u16, provider: &str) -> Result<String> {
    let (host, port) = provider.rsplit_once(':').context("provider address")?;
    let mut refers = String::new();
    let mut services = String::new();
    for (id, path, filters) in [
        ("bench", SERVICE, ""),
        ("filtered", FILTERED_SERVICE, DEFAULT_FILTERS),
    ] {
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("    filter: \"{filters}\"\n")
        };
        refers += &format!(
            "  {id}:\n    path: {path}\n    group: bench\n    registry: self\n    requestTimeout: 5000\n{filter}"
        );
        services += &format!(
            "  {id}:\n    path: {path}\n    group: bench\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{port}\"\n    proxy.host: {host}\n    requestTimeout: 5000\n{filter}"
        );
    }
    Ok(format!(
        "motan-registry:\n  self:\n    protocol: direct\n    address: \"127.0.0.1:{eport}\"\n\
         motan-refer:\n{refers}motan-service:\n{services}"
    ))
}

fn start_env(dir: &Path, agent_workers: usize) -> Result<Env> {
    let root = project_root();
    let bin = root.join("target/release/sockmesh");
    let loadgen = root.join("target/release/sockmesh-loadgen");
    let ports = free_ports(7);
    let mut procs = Vec::new();

    // The provider listens on its own loopback address; that is what clients dial.
    let mut provider = Command::new(&loadgen)
        .args(["serve", "--listen", &format!("127.0.0.10:{}", ports[0])])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the Motan2 provider (sockmesh-loadgen serve)")?;
    let provider_addr = wait_ready(&mut provider, "provider")?;
    procs.push(Proc(provider));

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-bench-{}", std::process::id()));
    let chain = format!("SMBENCH{}", std::process::id());
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "motan-agent:\n  port: {}\n  eport: {}\n  mport: {}\n  application: bench\n\
             sockmesh:\n  log_level: \"warn,sockmesh::access=info\"\n  worker_threads: {agent_workers}\n  intercept:\n    transparent_port: {}\n    pin_dir: {}\n    iptables_chain: {chain}\n    bpf_log_level: warn\n{}",
            ports[1],
            ports[2],
            ports[3],
            ports[4],
            pin_dir.display(),
            mesh_sections(ports[2], &provider_addr)?
        ),
    )?;
    let agent_log = std::fs::File::create(dir.join("agent.log"))?;
    let agent = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .spawn()
        .context("starting the agent")?;
    let agent_pid = agent.id();
    procs.push(Proc(agent));
    let agent_admin = format!("127.0.0.1:{}", ports[3]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&agent_admin).is_err() {
        if Instant::now() > deadline {
            bail!("agent did not start; see {}", dir.join("agent.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let haproxy_addr = format!("127.0.0.1:{}", ports[5]);
    let hcfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n    nbthread 1\n    maxconn 8000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             listen bench\n    bind {haproxy_addr}\n    server provider {provider_addr}\n"
        ),
    )?;
    let haproxy = Command::new("haproxy")
        .arg("-f")
        .arg(&hcfg)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
        .spawn()
        .context("starting haproxy (installed by cargo xtask setup)")?;
    let haproxy_pid = haproxy.id();
    procs.push(Proc(haproxy));
    while std::net::TcpStream::connect(&haproxy_addr).is_err() {
        if Instant::now() > deadline {
            bail!("haproxy did not start; see {}", dir.join("haproxy.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mount = cgroup2_mount()?;
    let cgroup_rel = format!("sockmesh-bench-{}", std::process::id());
    let cgroup_dir = mount.join(&cgroup_rel);
    std::fs::create_dir_all(&cgroup_dir)?;
    Ok(Env {
        bin,
        loadgen,
        provider_addr,
        agent_admin,
        agent_port_addr: format!("127.0.0.1:{}", ports[1]),
        agent_pid,
        haproxy_addr,
        haproxy_pid,
        cgroup_rel: format!("/{cgroup_rel}"),
        cgroup_dir,
        pin_dir,
        chain,
        _procs: procs,
    })
}

impl Env {
    fn cli(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--admin", &self.agent_admin])
            .output()?;
        if !out.status.success() {
            bail!(
                "sockmesh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Put the client cgroup into the mode's interception state.
    fn prepare(&self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Iptables => self.cli(&[
                "intercept",
                "enable",
                "--cgroup",
                &self.cgroup_rel,
                "--mode",
                "iptables",
            ]),
            Mode::EbpfConnect => self.cli(&[
                "intercept",
                "enable",
                "--cgroup",
                &self.cgroup_rel,
                "--mode",
                "ebpf-connect",
            ]),
            Mode::EbpfSockmap => self.cli(&[
                "intercept",
                "enable",
                "--cgroup",
                &self.cgroup_rel,
                "--mode",
                "ebpf-sockmap",
            ]),
            _ => {
                let _ = self.cli(&["intercept", "disable", "--all"]);
                Ok(())
            }
        }
    }

    fn target(&self, mode: Mode) -> Option<String> {
        match mode {
            Mode::Haproxy => Some(self.haproxy_addr.clone()),
            Mode::AgentExplicit | Mode::AgentFilters => Some(self.agent_port_addr.clone()),
            _ => Some(self.provider_addr.clone()),
        }
    }

    fn proxy_pid(&self, mode: Mode) -> Option<u32> {
        match mode {
            Mode::Direct => None,
            Mode::Haproxy => Some(self.haproxy_pid),
            _ => Some(self.agent_pid),
        }
    }

    fn run(&self, mode: Mode, case: &Case, round: u32, opts: &Options) -> Result<Run> {
        let target = self.target(mode).context("mode unavailable")?;
        self.prepare(mode)?;
        let pid = self.proxy_pid(mode);
        let before = pid.map(proc_cpu_rss).unwrap_or_default();
        let mut cmd = Command::new(&self.loadgen);
        cmd.args(["run", "--target", &target, "--conns", &case.conns.to_string()])
            .args([
                "--service",
                if mode == Mode::AgentFilters {
                    FILTERED_SERVICE
                } else {
                    SERVICE
                },
            ])
            .args(["--payload", &case.payload.to_string()])
            .args(["--duration-ms", &opts.duration.as_millis().to_string()])
            .args(["--warmup-ms", &opts.warmup.as_millis().to_string()])
            .arg("--cgroup")
            .arg(&self.cgroup_dir);
        match case.rate {
            Some(r) => cmd.args(["--rate", &r.to_string()]),
            None => cmd.arg("--closed"),
        };
        if case.conn_per_request {
            cmd.arg("--conn-per-request");
        }
        let out = cmd.output().context("running sockmesh-loadgen")?;
        if !out.status.success() {
            bail!(
                "loadgen failed in mode {}: {}",
                mode.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let after = pid.map(proc_cpu_rss).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("loadgen output")?;
        Ok(Run {
            mode,
            case: case.name.to_string(),
            round,
            json,
            proxy_cpu_s: after.0 - before.0,
            proxy_rss_kib: after.1,
        })
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

fn median(mut v: Vec<f64>) -> f64 {
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

fn spread(v: &[f64]) -> (f64, f64) {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    (
        f.iter().copied().fold(f64::INFINITY, f64::min),
        f.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

pub fn run(opts: Options) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (cgroups, BPF, iptables)");
    }
    crate::setup::run()?;
    crate::build_ebpf()?;
    let step = Step::start("bench: building release binaries (sockmesh, sockmesh-loadgen)");
    let st = cargo(None)
        .args(["build", "--release", "--package", "sockmesh", "--bins"])
        .status()?;
    if !st.success() {
        bail!("release build failed");
    }
    step.done("ok");

    let stamp = Command::new("date").arg("+%Y-%m-%dT%H%M%S").output()?;
    let stamp = String::from_utf8_lossy(&stamp.stdout).trim().to_string();
    let dir = project_root().join("bench/results").join(&stamp);
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)?;
    let env = start_env(&raw, opts.agent_workers)?;

    let cases = cases();
    let modes: Vec<Mode> = if opts.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        opts.modes.clone()
    };
    let unavailable: Vec<(Mode, &str)> = modes
        .iter()
        .filter(|m| env.target(**m).is_none())
        .map(|m| {
            (
                *m,
                "needs the agent core's client/server roles (9981 -> 9982), not built yet",
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
    drop(env);
    let report = Report::build(&runs, &cases, &runnable, &unavailable, &opts, started.elapsed());
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

pub struct Report {
    pub json: serde_json::Value,
    pub markdown: String,
}

impl Report {
    fn build(
        runs: &[Run],
        cases: &[Case],
        modes: &[Mode],
        unavailable: &[(Mode, &str)],
        opts: &Options,
        took: Duration,
    ) -> Report {
        use std::fmt::Write as _;
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let haproxy = Command::new("haproxy")
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        let cmd = if opts.quick {
            "cargo xtask bench --quick".to_string()
        } else {
            format!("cargo xtask bench --rounds {}", opts.rounds)
        };
        let cmd = if opts.agent_workers > 0 {
            format!("{cmd} --agent-workers {}", opts.agent_workers)
        } else {
            cmd
        };
        let cmd = if opts.modes.is_empty() {
            cmd
        } else {
            let names: Vec<&str> = opts.modes.iter().map(|m| m.name()).collect();
            format!("{cmd} --modes {}", names.join(","))
        };
        let mut md = String::new();
        let _ = writeln!(md, "# sockmesh interception benchmark\n");
        let _ = writeln!(
            md,
            "- command: `{cmd}` ({} round(s), {} ms per run after {} ms warm-up; took {} s)",
            opts.rounds,
            opts.duration.as_millis(),
            opts.warmup.as_millis(),
            took.as_secs()
        );
        let _ = writeln!(
            md,
            "- kernel {kernel}, {} cores; sockmesh {}; {haproxy}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            md,
            "- latency is the full request round trip measured from the intended send time (no coordinated omission); medians over rounds, [min..max] of the per-round values"
        );
        let _ = writeln!(
            md,
            "- proxy CPU = utime+stime of the agent (haproxy in haproxy mode) per 1,000 requests. agent-explicit and the intercepted modes take the full mesh path: the agent's client role routes the Motan2 request to its own export port (server role), which forwards it to the provider (two Motan2 hops in one process); haproxy is one L4 hop"
        );
        for (m, why) in unavailable {
            let _ = writeln!(md, "- mode `{}` not run: {why}", m.name());
        }
        let mut cases_json = BTreeMap::new();
        for case in cases {
            let _ = writeln!(md, "\n## {}\n", case.name);
            let _ = writeln!(
                md,
                "| mode | p50 µs | p90 µs | p99 µs | p99.9 µs | req/s | errors | proxy CPU ms / 1k req | RSS MiB |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            let mut modes_json = BTreeMap::new();
            let per = |m: Mode| -> Vec<&Run> {
                runs.iter()
                    .filter(|r| r.mode == m && r.case == case.name)
                    .collect()
            };
            for m in modes {
                let rs = per(*m);
                let col = |path: &[&str]| rs.iter().map(|r| r.get(path)).collect::<Vec<f64>>();
                let cpu: Vec<f64> = rs
                    .iter()
                    .map(|r| {
                        let n = r.get(&["requests"]);
                        if n > 0.0 {
                            r.proxy_cpu_s * 1e6 / n
                        } else {
                            f64::NAN
                        }
                    })
                    .collect();
                let p = |k: &str| {
                    let v = col(&["latency_us", k]);
                    let (lo, hi) = spread(&v);
                    (median(v), lo, hi)
                };
                let (p50, p90, p99, p999) = (p("p50"), p("p90"), p("p99"), p("p999"));
                let tput = median(col(&["throughput"]));
                let errors: u64 = rs.iter().map(|r| r.errors()).sum();
                let rss = rs.iter().map(|r| r.proxy_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
                let cpu_m = median(cpu.clone());
                let _ = writeln!(
                    md,
                    "| {} | {:.0} [{:.0}..{:.0}] | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                    m.name(),
                    p50.0,
                    p50.1,
                    p50.2,
                    p90.0,
                    p99.0,
                    p999.0,
                    tput,
                    errors,
                    if cpu_m.is_finite() && *m != Mode::Direct {
                        format!("{cpu_m:.1}")
                    } else {
                        "-".into()
                    },
                    if *m == Mode::Direct {
                        "-".to_string()
                    } else {
                        format!("{rss:.1}")
                    }
                );
                modes_json.insert(m.name(), serde_json::json!({
                    "p50_us": p50.0, "p50_min": p50.1, "p50_max": p50.2, "p90_us": p90.0, "p99_us": p99.0, "p999_us": p999.0,
                    "throughput": tput, "errors": errors, "proxy_cpu_ms_per_1k": cpu_m, "proxy_rss_mib": rss,
                    "rounds": rs.iter().map(|r| serde_json::json!({"round": r.round, "result": r.json, "proxy_cpu_s": r.proxy_cpu_s, "proxy_rss_kib": r.proxy_rss_kib})).collect::<Vec<_>>(),
                }));
            }
            // Paired per-round differences against direct and haproxy at p50.
            let paired = |a: Mode, b: Mode| -> Option<(f64, f64, f64)> {
                let (ra, rb) = (per(a), per(b));
                if ra.is_empty() || rb.is_empty() {
                    return None;
                }
                let d: Vec<f64> = ra
                    .iter()
                    .filter_map(|x| {
                        rb.iter()
                            .find(|y| y.round == x.round)
                            .map(|y| x.get(&["latency_us", "p50"]) - y.get(&["latency_us", "p50"]))
                    })
                    .collect();
                let (lo, hi) = spread(&d);
                Some((median(d), lo, hi))
            };
            let _ = writeln!(
                md,
                "\nPaired per-round p50 differences (median [min..max], µs):\n"
            );
            let mut diffs = BTreeMap::new();
            for (a, b, label) in [
                (
                    Mode::AgentExplicit,
                    Mode::Direct,
                    "proxy overhead: agent-explicit - direct (client role + server role, two Motan2 hops)",
                ),
                (
                    Mode::Haproxy,
                    Mode::Direct,
                    "haproxy hop: haproxy - direct (one L4 hop)",
                ),
                (
                    Mode::AgentFilters,
                    Mode::AgentExplicit,
                    "default filter chain (accessLog, metrics): agent-filters - agent-explicit",
                ),
                (
                    Mode::Iptables,
                    Mode::AgentExplicit,
                    "interception overhead: iptables - agent-explicit",
                ),
                (
                    Mode::EbpfConnect,
                    Mode::AgentExplicit,
                    "interception overhead: ebpf-connect - agent-explicit",
                ),
                (
                    Mode::EbpfSockmap,
                    Mode::AgentExplicit,
                    "interception overhead: ebpf-sockmap - agent-explicit",
                ),
                (
                    Mode::Iptables,
                    Mode::EbpfConnect,
                    "iptables - ebpf-connect (netfilter rule cost)",
                ),
                (
                    Mode::EbpfSockmap,
                    Mode::EbpfConnect,
                    "ebpf-sockmap - ebpf-connect (loopback bypass)",
                ),
            ] {
                if let Some((m, lo, hi)) = paired(a, b) {
                    let _ = writeln!(md, "- {label}: {m:+.1} [{lo:+.1}..{hi:+.1}]");
                    diffs.insert(label, serde_json::json!({"median": m, "min": lo, "max": hi}));
                }
            }
            // Ratios of the median paired differences.
            let mut ratios = BTreeMap::new();
            for (num, den, label) in [
                (
                    (Mode::AgentExplicit, Mode::Direct),
                    (Mode::Haproxy, Mode::Direct),
                    "proxy overhead ratio: (agent-explicit - direct) / (haproxy - direct)",
                ),
                (
                    (Mode::Iptables, Mode::AgentExplicit),
                    (Mode::EbpfConnect, Mode::AgentExplicit),
                    "interception overhead ratio: (iptables - agent-explicit) / (ebpf-connect - agent-explicit)",
                ),
            ] {
                if let (Some(n), Some(d)) = (paired(num.0, num.1), paired(den.0, den.1))
                    && d.0.abs() > f64::EPSILON
                {
                    let r = n.0 / d.0;
                    let _ = writeln!(md, "- {label}: {r:.2}");
                    ratios.insert(label, r);
                }
            }
            // The filter chain's cost relative to the same path without filters, per round.
            let rel: Vec<f64> = per(Mode::AgentFilters)
                .iter()
                .filter_map(|x| {
                    let y = per(Mode::AgentExplicit)
                        .into_iter()
                        .find(|y| y.round == x.round)?;
                    let base = y.get(&["latency_us", "p50"]);
                    (base > 0.0).then(|| 100.0 * (x.get(&["latency_us", "p50"]) / base - 1.0))
                })
                .collect();
            if !rel.is_empty() {
                let (lo, hi) = spread(&rel);
                let m = median(rel);
                let label =
                    "default filter chain p50 cost: agent-filters / agent-explicit - 1, per round (%)";
                let _ = writeln!(md, "- {label}: {m:+.1}% [{lo:+.1}..{hi:+.1}]");
                diffs.insert(label, serde_json::json!({"median": m, "min": lo, "max": hi}));
            }
            diffs.insert("ratios", serde_json::json!(ratios));
            cases_json.insert(case.name, serde_json::json!({
                "rate": case.rate, "conns": case.conns, "payload": case.payload, "conn_per_request": case.conn_per_request,
                "modes": modes_json, "paired_p50_diff_us": diffs,
            }));
        }
        let json = serde_json::json!({
            "command": cmd, "kernel": kernel, "haproxy": haproxy, "sockmesh": env!("CARGO_PKG_VERSION"),
            "rounds": opts.rounds, "duration_ms": opts.duration.as_millis() as u64, "warmup_ms": opts.warmup.as_millis() as u64,
            "unavailable_modes": unavailable.iter().map(|(m, w)| serde_json::json!({"mode": m.name(), "why": w})).collect::<Vec<_>>(),
            "cases": cases_json,
        });
        Report { json, markdown: md }
    }
}
