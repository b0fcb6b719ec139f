//! `cargo xtask soak [--minutes N]` (issue #16): open-loop Motan2 load through eBPF interception
//! for N minutes while faults are injected, with the agent's RSS, fds and threads and the load's
//! latency and errors sampled every interval. Writes `samples.csv`, `faults.csv`, `report.md` and
//! SVG plots under `bench/results/soak-<date>/` and fails when the verdict does (errors outside
//! the injected faults' windows, RSS or fds not flat after warm-up).
//!
//! The topology: a real ZooKeeper; the echo provider of the bench (`sockmesh-loadgen serve`);
//! one agent (release build) exporting the service to the provider and registering the export
//! in ZooKeeper (server role), and referring the service through ZooKeeper (client role); the
//! load generator in a cgroup the agent intercepts, dialing the provider's own address, so its
//! connections land on the agent, which routes them through its refer to its export and the
//! provider. While the agent is down the intercepted connects fail open to the provider.
//!
//! This file holds the set-up and the schedule; `load` is the sampling thread, `report` the
//! verdict, report.md and plots.
mod load;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sockmesh_testkit::{ChildCgroup, ChildProcess, NatChain, PinDir, ZkServer, agent, free_ports, http};

use crate::util::{Step, project_root};

const SERVICE: &str = "com.weibo.soak.EchoService";
const GROUP: &str = "soak";
/// How long the agent may drain after SIGTERM before it is killed.
const AGENT_GRACE: Duration = Duration::from_secs(15);
/// Added to a fault's window after it recovered: requests that started inside it may still end.
const GRACE: Duration = Duration::from_secs(5);
/// How long a fault may take to recover before the run fails.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The interception modes the run alternates between, by phase.
pub const MODES: [&str; 2] = ["ebpf-connect", "ebpf-sockmap"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    ProviderRestart,
    ZkFlap,
    AgentReload,
    AgentKill,
    AgentTerm,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::ProviderRestart,
        FaultKind::AgentReload,
        FaultKind::ZkFlap,
        FaultKind::AgentKill,
        FaultKind::AgentTerm,
    ];
    /// Agent restarts come after six other faults each, so an agent lives long enough (about
    /// ten minutes in a 30-minute run) for a leak within one process to show.
    pub const ROTATION: [FaultKind; 10] = [
        FaultKind::ProviderRestart,
        FaultKind::AgentReload,
        FaultKind::ZkFlap,
        FaultKind::ProviderRestart,
        FaultKind::AgentReload,
        FaultKind::ZkFlap,
        FaultKind::AgentKill,
        FaultKind::ProviderRestart,
        FaultKind::AgentReload,
        FaultKind::AgentTerm,
    ];
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ProviderRestart => "provider-restart",
            FaultKind::ZkFlap => "zookeeper-flap",
            FaultKind::AgentReload => "agent-reload",
            FaultKind::AgentKill => "agent-kill",
            FaultKind::AgentTerm => "agent-term",
        }
    }
}

/// One injected fault: its window runs from `start` to `recovered` + GRACE (seconds since the
/// run started).
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub how: String,
    pub start: f64,
    pub recovered: f64,
}

impl Fault {
    pub fn end(&self) -> f64 {
        self.recovered + GRACE.as_secs_f64()
    }
}

pub struct Options {
    pub minutes: f64,
    /// Open-loop rate of the load (requests per second).
    pub rate: u32,
}

/// The run's timing, scaled to its length.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub total: Duration,
    /// Samples before this are not judged for RSS and fds.
    pub warmup: Duration,
    /// Per agent incarnation: samples younger than this are not judged for RSS.
    pub settle: Duration,
    /// The interception mode changes every `phase`.
    pub phase: Duration,
    /// A fault `fault_every` after the previous one recovered (the first that long after the start).
    pub fault_every: Duration,
    pub interval: Duration,
    pub rate: u32,
}

impl Plan {
    pub fn new(opts: &Options) -> Plan {
        let total = Duration::from_secs_f64(opts.minutes * 60.0);
        let clamp = |d: Duration, lo: u64, hi: u64| d.clamp(Duration::from_secs(lo), Duration::from_secs(hi));
        Plan {
            total,
            warmup: clamp(total / 5, 30, 180),
            settle: Duration::from_secs(30),
            phase: clamp(total / 6, 30, 300),
            fault_every: clamp(total / 24, 20, 75),
            interval: Duration::from_secs(2),
            rate: opts.rate,
        }
    }
}

/// The processes and guards of a run. Fields drop in declaration order: the load's cgroup
/// last, the agent before its pins.
struct Env {
    dir: PathBuf,
    bin: PathBuf,
    loadgen: PathBuf,
    cfg: PathBuf,
    log: PathBuf,
    control: PathBuf,
    admin: SocketAddr,
    provider_addr: String,
    agent: Option<ChildProcess>,
    /// The current agent's PID (0 while it is down), for the sampler.
    agent_pid: Arc<AtomicU32>,
    /// Agent incarnations so far (1 for the first one).
    incarnation: Arc<AtomicU32>,
    provider: Option<ChildProcess>,
    zk: ZkServer,
    _pins: PinDir,
    _chain: NatChain,
    cgroup: ChildCgroup,
    reloads: u32,
}

fn agent_config(
    ports: &[u16],
    zk_port: u16,
    provider: &str,
    dir: &Path,
    control: &Path,
    pins: &Path,
    chain: &str,
) -> Result<String> {
    let (host, pport) = provider.rsplit_once(':').context("provider address")?;
    Ok(format!(
        "motan-agent:\n  port: {port}\n  eport: {eport}\n  mport: {mport}\n  application: soak\n  localIP: 127.0.0.1\n  snapshot_dir: {snap}\n\
         sockmesh:\n  log_level: info\n  admin:\n    control_socket: {control}\n\
         \x20 intercept:\n    transparent_port: {tport}\n    pin_dir: {pins}\n    iptables_chain: {chain}\n    bpf_log_level: warn\n\
         motan-registry:\n  zk:\n    protocol: zookeeper\n    host: 127.0.0.1\n    port: {zk_port}\n    registrySessionTimeout: 4\n\
         motan-refer:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    registry: zk\n    requestTimeout: 3000\n    haStrategy: failover\n    retries: 1\n\
         motan-service:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    registry: zk\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{pport}\"\n    proxy.host: {host}\n    requestTimeout: 3000\n",
        port = ports[0],
        eport = ports[1],
        mport = ports[2],
        tport = ports[3],
        snap = dir.join("snapshots").display(),
        control = control.display(),
        pins = pins.display(),
    ))
}

impl Env {
    fn start(dir: &Path) -> Result<Env> {
        let root = project_root();
        let bin = root.join("target/release/sockmesh");
        let loadgen = root.join("target/release/sockmesh-loadgen");
        let id = std::process::id();
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-soak-{id}"));
        let pins = PinDir::new(&bin, &pin_dir);
        let chain = NatChain::new(format!("SMSOAK{id}"));
        let cgroup = ChildCgroup::create(&format!("sockmesh-soak-{id}"))?;
        let step = Step::start("soak: starting ZooKeeper");
        let zk = ZkServer::start("soak")?;
        step.done(&zk.addr());
        let ports = free_ports(5);
        let provider_addr = format!("127.0.0.1:{}", ports[4]);
        // The agent refuses a control directory others could write to.
        let control = dir.join("control/agent.sock");
        let control_dir = control.parent().unwrap();
        std::fs::create_dir_all(control_dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(control_dir, std::fs::Permissions::from_mode(0o755))?;
        let cfg = dir.join("agent.yaml");
        std::fs::write(
            &cfg,
            agent_config(
                &ports,
                zk.port(),
                &provider_addr,
                dir,
                &control,
                &pin_dir,
                chain.name(),
            )?,
        )?;
        let mut env = Env {
            dir: dir.to_path_buf(),
            bin,
            loadgen,
            log: dir.join("agent.log"),
            cfg,
            control,
            admin: ([127, 0, 0, 1], ports[2]).into(),
            provider_addr,
            agent: None,
            agent_pid: Arc::default(),
            incarnation: Arc::default(),
            provider: None,
            zk,
            _pins: pins,
            _chain: chain,
            cgroup,
            reloads: 0,
        };
        env.start_provider()?;
        env.start_agent()?;
        Ok(env)
    }

    fn start_provider(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("provider.log"))?;
        let mut p = ChildProcess::spawn(
            "the Motan2 provider (sockmesh-loadgen serve)",
            Command::new(&self.loadgen)
                .args(["serve", "--listen", &self.provider_addr])
                .stdout(Stdio::piped())
                .stderr(log),
        )?;
        p.ready()?;
        self.provider = Some(p);
        Ok(())
    }

    /// Start an agent incarnation, wait until it answers, bring its export online (`/200`) and
    /// wait until its refer sees the export.
    fn start_agent(&mut self) -> Result<()> {
        let mut a =
            agent::spawn("the agent", Command::new(&self.bin), &self.cfg, &self.log)?.with_grace(AGENT_GRACE);
        let started = agent::await_admin(&mut a, self.admin, &self.log);
        let pid = a.pid();
        self.agent = Some(a);
        started?;
        self.agent_pid.store(pid, Ordering::SeqCst);
        self.incarnation.fetch_add(1, Ordering::SeqCst);
        let (code, body) = http::unix_get(&self.control, "/200")?;
        if code != 200 {
            bail!("GET /200 on the control socket: {code} {body}");
        }
        Ok(())
    }

    /// The agent's refer has an available endpoint.
    fn agent_serving(&self) -> bool {
        let Ok((200, body)) = http::get(self.admin, "/sockmesh/status") else {
            return false;
        };
        let Ok(st) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        st["mesh"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
            .any(|e| e["available"] == true)
    }

    fn zk_connected(&self) -> bool {
        matches!(http::get(self.admin, "/registry/list"), Ok((200, body))
            if serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| v["registries"].as_array().into_iter().flatten().all(|r| r["connected"] == true))
                .unwrap_or(false))
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()?;
        if !out.status.success() {
            bail!(
                "sockmesh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn set_mode(&self, mode: &str) -> Result<()> {
        self.cli(&[
            "intercept",
            "enable",
            "--cgroup",
            self.cgroup.rel(),
            "--mode",
            mode,
        ])?;
        Ok(())
    }

    /// Intercepted connections this agent handed to the mesh so far.
    fn routed(&self) -> Option<u64> {
        match http::get(self.admin, "/metrics") {
            Ok((200, text)) => Some(load::metric_sum(&text, "sockmesh_transparent_routed_connections")),
            _ => None,
        }
    }

    /// A short load run in the intercepted cgroup: every request answered, through the agent.
    fn probe(&self) -> bool {
        let Some(before) = self.routed() else {
            return false;
        };
        let out = Command::new(&self.loadgen)
            .args([
                "run",
                "--target",
                &self.provider_addr,
                "--rate",
                "200",
                "--duration-ms",
                "500",
            ])
            .args([
                "--warmup-ms",
                "0",
                "--timeout-ms",
                "1000",
                "--service",
                SERVICE,
                "--group",
                GROUP,
            ])
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .output();
        let Ok(out) = out else { return false };
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        out.status.success()
            && j["errors"] == 0
            && j["ok"].as_u64().unwrap_or(0) >= 90
            && self.routed().is_some_and(|after| after > before)
    }

    /// Wait until `ok` (and a probe through interception succeeds), at most RECOVERY_TIMEOUT.
    fn await_recovery(&self, what: &str, mut ok: impl FnMut(&Env) -> bool) -> Result<()> {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        loop {
            if ok(self) && self.probe() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not recovered within {RECOVERY_TIMEOUT:?}; agent log:\n{}",
                    sockmesh_testkit::proc::log_tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Inject one fault and wait until everything serves again; returns how it was done.
    fn inject(&mut self, kind: FaultKind) -> Result<String> {
        let how = match kind {
            FaultKind::ProviderRestart => {
                if let Some(mut p) = self.provider.take() {
                    p.stop()?;
                }
                std::thread::sleep(Duration::from_secs(2));
                self.start_provider()?;
                "provider SIGTERM, down 2 s, started again on the same address".to_string()
            }
            FaultKind::ZkFlap => {
                self.zk.stop();
                std::thread::sleep(Duration::from_secs(10));
                self.zk.spawn()?;
                self.await_recovery("ZooKeeper flap", Env::zk_connected)?;
                "ZooKeeper SIGKILL, down 10 s, started again (same port and data)".to_string()
            }
            FaultKind::AgentReload => {
                self.reloads += 1;
                if self.reloads % 2 == 1 {
                    self.cli(&["reload"])?;
                    "sockmesh reload".to_string()
                } else {
                    self.agent.as_ref().context("no agent")?.signal(libc::SIGHUP)?;
                    "SIGHUP".to_string()
                }
            }
            FaultKind::AgentKill | FaultKind::AgentTerm => {
                let mut a = self.agent.take().context("no agent")?;
                self.agent_pid.store(0, Ordering::SeqCst);
                let how = if kind == FaultKind::AgentKill {
                    a.kill()?;
                    "agent SIGKILL"
                } else {
                    a.stop()?;
                    "agent SIGTERM (drain)"
                };
                drop(a);
                std::thread::sleep(Duration::from_secs(3));
                self.start_agent()?;
                format!("{how}, down 3 s (apps fail open), started again")
            }
        };
        self.await_recovery(kind.name(), Env::agent_serving)?;
        Ok(how)
    }
}

pub fn run(opts: Options) -> Result<()> {
    if !sockmesh_testkit::is_root() {
        bail!("cargo xtask soak needs root (cgroups, BPF)");
    }
    if opts.minutes < 1.0 {
        bail!("--minutes must be at least 1");
    }
    crate::bench::build_bins("soak")?;
    let plan = Plan::new(&opts);
    let dir = project_root()
        .join("bench/results")
        .join(format!("soak-{}", crate::bench::stamp()?));
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)?;
    let step = Step::start("soak: starting ZooKeeper, the provider and the agent");
    let mut env = Env::start(&raw)?;
    env.set_mode(MODES[0])?;
    env.await_recovery("start", Env::agent_serving)?;
    step.done(&format!("agent pid {}", env.agent_pid.load(Ordering::SeqCst)));

    println!(
        "xtask: soak: {:.1} min at {} req/s; warm-up {} s, mode switch every {} s, a fault {} s after the previous one; results in {}",
        opts.minutes,
        plan.rate,
        plan.warmup.as_secs(),
        plan.phase.as_secs(),
        plan.fault_every.as_secs(),
        dir.display()
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mode = Arc::new(AtomicU8::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = load::Sampler {
        loadgen: env.loadgen.clone(),
        target: env.provider_addr.clone(),
        service: SERVICE,
        group: GROUP,
        cgroup: env.cgroup.path().to_path_buf(),
        admin: env.admin,
        agent_pid: env.agent_pid.clone(),
        incarnation: env.incarnation.clone(),
        mode: mode.clone(),
        stop: stop.clone(),
        samples: samples.clone(),
        plan,
        t0,
    };
    let load = std::thread::spawn(move || sampler.run());

    let mut faults: Vec<Fault> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut next_fault = plan.fault_every;
    let mut next_phase = plan.phase;
    let mut phase = 0usize;
    let mut k = 0usize;
    let mut mode_switches = vec![(0.0, MODES[0].to_string())];
    while t0.elapsed() < plan.total {
        let now = t0.elapsed();
        if now >= next_phase {
            phase += 1;
            let m = MODES[phase % MODES.len()];
            if let Err(e) = env.set_mode(m) {
                failure = Some(e.context(format!("switching to {m}")));
                break;
            }
            mode.store((phase % MODES.len()) as u8, Ordering::SeqCst);
            mode_switches.push((t0.elapsed().as_secs_f64(), m.to_string()));
            println!("xtask: soak: {:>5.0} s mode {m}", t0.elapsed().as_secs_f64());
            next_phase += plan.phase;
        } else if now >= next_fault && now + Duration::from_secs(20) < plan.total {
            let kind = FaultKind::ROTATION[k % FaultKind::ROTATION.len()];
            k += 1;
            let start = t0.elapsed().as_secs_f64();
            match env.inject(kind) {
                Ok(how) => {
                    let f = Fault {
                        kind,
                        how,
                        start,
                        recovered: t0.elapsed().as_secs_f64(),
                    };
                    println!(
                        "xtask: soak: {:>5.0} s fault {} ({}) recovered in {:.1} s",
                        f.start,
                        kind.name(),
                        f.how,
                        f.recovered - f.start
                    );
                    faults.push(f);
                }
                Err(e) => {
                    failure = Some(e.context(format!("fault {}", kind.name())));
                    break;
                }
            }
            // The next one a full period after this one recovered.
            next_fault = t0.elapsed() + plan.fault_every;
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = load.join();
    let took = t0.elapsed();
    let _ = env.cli(&["intercept", "disable", "--cgroup", env.cgroup.rel()]);
    drop(env);
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let rep = report::Report::build(&plan, &samples, &faults, &mode_switches, took, failure.as_ref());
    rep.write(&dir)?;
    println!("{}", rep.markdown);
    println!("xtask: soak: results in {}", dir.display());
    if let Some(e) = failure {
        return Err(e.context("the soak run stopped early"));
    }
    if !rep.verdict.pass {
        bail!("soak verdict FAIL: {}", rep.verdict.reasons.join("; "));
    }
    println!("xtask: soak: PASS");
    Ok(())
}
