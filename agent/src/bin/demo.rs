//! sockmesh-demo: the mesh across two hosts (issue #9), run by `cargo xtask demo`.
//!
//! Each "host" is a network namespace created here, the two joined by one veth link on
//! 10.77.0.0/24 (host-a 10.77.0.1, host-b 10.77.0.2; nothing is added to the root namespace).
//! host-b runs a Motan2 provider and a server-role agent exporting it; host-a runs a client-role
//! agent with eBPF interception, and an app in an intercepted cgroup that dials the provider's
//! own address. The demo makes single calls, measures each hop with sockmesh-loadgen, reads both
//! agents' counters and prints a summary.
//!
//! Everything it creates (processes, stopped by PID; BPF pins; the cgroup; the namespaces, whose
//! veth ends go with them) has a drop guard, so it is removed also on failure or Ctrl-C: the
//! signal handler only sets a flag that every step and wait checks, and the stack unwinds.
//!
//! `--json` prints a machine-readable summary on stdout and the narration on stderr
//! (tests/demo.rs asserts on it).
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde_json::{Value, json};
use sockmesh::cgroup::ChildCgroup;

const SUBNET: &str = "10.77.0.0/24";
const SERVICE: &str = "com.example.demo.EchoService";
const GROUP: &str = "demo";
/// Ports inside the hosts' own namespaces, so fixed numbers never collide with anything else.
const PROVIDER_PORT: u16 = 9100;
const EXPORT_PORT: u16 = 8100;
const AGENT_PORT: u16 = 9981;
const ADMIN_PORT: u16 = 8002;
const TRANSPARENT_PORT: u16 = 15001;
const PROVIDER_NAME: &str = "provider@host-b";

#[derive(Parser)]
#[command(
    name = "sockmesh-demo",
    about = "Two hosts as network namespaces: an intercepted app and a client agent on one, a server agent and a Motan2 provider on the other"
)]
struct Opts {
    /// Print a JSON summary on stdout (the narration goes to stderr).
    #[arg(long)]
    json: bool,
    /// Open-loop request rate of each latency run (requests per second).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Measured milliseconds of each latency run (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Where sockmesh, sockmesh-testpeer and sockmesh-loadgen are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

static JSON: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static TEARDOWN_PROBLEMS: AtomicUsize = AtomicUsize::new(0);

/// The narration: stdout, or stderr when stdout carries the JSON summary.
macro_rules! say {
    ($($t:tt)*) => {
        if JSON.load(Ordering::Relaxed) { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep in short slices so an interrupt is noticed at once.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    check_interrupted()
}

/// Run a short-lived command to completion, like `Command::output`, but kill it (by its PID)
/// as soon as the demo is interrupted instead of waiting for it.
fn output(cmd: &mut Command) -> Result<std::process::Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (mut out, mut err) = (
        child.stdout.take().context("stdout")?,
        child.stderr.take().context("stderr")?,
    );
    std::thread::scope(|s| {
        let out = s.spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let err = s.spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

fn teardown_problem(what: String) {
    eprintln!("  teardown problem: {what}");
    TEARDOWN_PROBLEMS.fetch_add(1, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    JSON.store(opts.json, Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let result = run(&opts);
    let problems = TEARDOWN_PROBLEMS.load(Ordering::SeqCst);
    match result {
        Ok(mut summary) => {
            summary["teardown"] = json!({ "problems": problems });
            if opts.json {
                println!("{summary}");
            } else {
                print_summary(&summary);
            }
            if problems > 0 {
                eprintln!("sockmesh-demo: {problems} teardown problem(s), see above");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!(
                "sockmesh-demo: interrupted; {}",
                if problems == 0 {
                    "everything it created has been removed".to_string()
                } else {
                    format!("{problems} teardown problem(s), see above")
                }
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("sockmesh-demo: failed: {e:#}");
            if problems > 0 {
                eprintln!("sockmesh-demo: also {problems} teardown problem(s), see above");
            }
            ExitCode::FAILURE
        }
    }
}

/// The programs the demo runs.
struct Bins {
    sockmesh: PathBuf,
    testpeer: PathBuf,
    loadgen: PathBuf,
}

impl Bins {
    fn locate(dir: Option<&Path>) -> Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()?
                .parent()
                .context("this program has no directory")?
                .to_path_buf(),
        };
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "{} is missing: build it with `cargo build -p sockmesh --bins` (`cargo xtask demo` does)",
                    p.display()
                ))
            }
        };
        Ok(Bins {
            sockmesh: find("sockmesh")?,
            testpeer: find("sockmesh-testpeer")?,
            loadgen: find("sockmesh-loadgen")?,
        })
    }
}

/// A process the demo started: SIGTERM, then SIGKILL after 2 s, by its PID, and reaped on drop.
struct Proc {
    what: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the PID of our own, not yet reaped, child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        match self.child.wait() {
            Ok(_) => say!("  stopped {} (pid {pid})", self.what),
            Err(e) => teardown_problem(format!("could not reap {} (pid {pid}): {e}", self.what)),
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One demo host: a network namespace, deleted on drop (its veth end goes with it).
struct Host {
    name: &'static str,
    netns: String,
    address: &'static str,
}

impl Host {
    fn create(name: &'static str, address: &'static str) -> Result<Host> {
        let netns = format!("sockmesh-demo-{}-{name}", std::process::id());
        ip(&["netns", "add", &netns])?;
        Ok(Host { name, netns, address })
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// `program` run inside this host. nsenter switches only the network namespace (`ip netns
    /// exec` would also remount /sys and hide the cgroup mount the app has to join).
    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Run `f` on a thread inside this host's namespace (a thread's setns changes only itself).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = File::open(self.netns_path())
            .with_context(|| format!("opening {}", self.netns_path().display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this scoped thread only; it ends when `f` returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(std::io::Error::last_os_error()).context("setns"));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread inside {} panicked", self.netns))?
        })
    }

    /// GET a path of the agent's admin API on this host.
    fn admin(&self, path: &str) -> Result<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], ADMIN_PORT).into();
        let (code, body) = self.within(|| sockmesh::admin::request(addr, "GET", path))??;
        if code != 200 {
            bail!("{} agent: GET {path} answered {code}: {body}", self.name);
        }
        Ok(body)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        match ip(&["netns", "del", &self.netns]) {
            Ok(()) => say!(
                "  deleted network namespace {} ({}, with its veth end)",
                self.netns,
                self.name
            ),
            Err(e) => teardown_problem(format!("{e:#}")),
        }
    }
}

/// The client agent's BPF pins: removing them detaches its programs from every cgroup.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if !self.0.exists() {
            return;
        }
        match sockmesh::intercept::ebpf::uninstall(&self.0) {
            Ok(n) => say!(
                "  removed {n} pinned BPF object(s) under {} (programs detached)",
                self.0.display()
            ),
            Err(e) => teardown_problem(format!("BPF pins {}: {e:#}", self.0.display())),
        }
    }
}

/// The app's cgroup, removed on drop.
struct AppCgroup {
    cgroup: Option<ChildCgroup>,
    rel: String,
}

impl Drop for AppCgroup {
    fn drop(&mut self) {
        let Some(cg) = self.cgroup.take() else { return };
        let path = cg.path().to_path_buf();
        drop(cg);
        if path.exists() {
            teardown_problem(format!("cgroup {} is still there", path.display()));
        } else {
            say!("  removed cgroup {}", self.rel);
        }
    }
}

/// Everything the demo created. Drop removes it in dependency order: processes first (so the
/// cgroup is empty and no program holds the pins), then pins, cgroup, namespaces, files.
struct Demo {
    bins: Bins,
    run_dir: PathBuf,
    procs: Vec<Proc>,
    pins: Option<Pins>,
    cgroup: Option<AppCgroup>,
    hosts: Vec<Host>,
    /// Keep the configs and logs in `run_dir` (after a failure, to read the agents' logs).
    keep_files: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        say!("\nteardown");
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        self.pins.take();
        self.cgroup.take();
        while let Some(h) = self.hosts.pop() {
            drop(h);
        }
        if self.keep_files && !INTERRUPTED.load(Ordering::SeqCst) {
            say!("  kept configs and logs in {}", self.run_dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            teardown_problem(format!("removing {}: {e}", self.run_dir.display()));
        } else {
            say!("  removed {}", self.run_dir.display());
        }
    }
}

/// One latency run's result: the load generator's JSON line.
struct Latency {
    label: &'static str,
    path: &'static str,
    json: Value,
}

impl Demo {
    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).expect("host exists")
    }

    fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.run_dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// host-a and host-b, linked by a veth pair created directly inside the two namespaces.
    fn create_hosts(&mut self) -> Result<()> {
        self.hosts.push(Host::create("host-a", "10.77.0.1")?);
        self.hosts.push(Host::create("host-b", "10.77.0.2")?);
        let (a, b) = (&self.hosts[0].netns, &self.hosts[1].netns);
        ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
        ])?;
        for h in &self.hosts {
            ip(&[
                "-n",
                &h.netns,
                "addr",
                "add",
                &format!("{}/24", h.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h.netns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Start the Motan2 provider on host-b; returns its PID once it listens.
    fn start_provider(&mut self) -> Result<u32> {
        let mut child = self
            .host("host-b")
            .cmd(&self.bins.testpeer)
            .args(["motan2-provider", "--listen"])
            .arg(format!("0.0.0.0:{PROVIDER_PORT}"))
            .args(["--name", PROVIDER_NAME])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the provider (sockmesh-testpeer motan2-provider)")?;
        let pid = child.id();
        let stdout = child.stdout.take();
        self.procs.push(Proc {
            what: "provider on host-b".into(),
            child,
        });
        let mut line = String::new();
        BufReader::new(stdout.context("provider stdout")?).read_line(&mut line)?;
        if !line.starts_with("ready ") {
            bail!("the provider did not start: {line:?}");
        }
        Ok(pid)
    }

    /// Start an agent on `host` with `config`; returns its PID once its admin API answers.
    fn start_agent(&mut self, host: &str, what: &str, config: &str) -> Result<u32> {
        let file = what.replace(' ', "-");
        let cfg = self.run_dir.join(format!("{file}.yaml"));
        std::fs::write(&cfg, config)?;
        let log = File::create(self.run_dir.join(format!("{file}.log")))?;
        let child = self
            .host(host)
            .cmd(&self.bins.sockmesh)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        let pid = child.id();
        self.procs.push(Proc {
            what: format!("{what} on {host}"),
            child,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.host(host).admin("/status").is_err() {
            let proc = self.procs.last_mut().expect("just pushed");
            if let Ok(Some(st)) = proc.child.try_wait() {
                bail!(
                    "the {what} exited during start-up ({st}); its log:\n{}",
                    self.log_tail(&format!("{file}.log"))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the {what} did not answer within 30 s; its log:\n{}",
                    self.log_tail(&format!("{file}.log"))
                );
            }
            pause(Duration::from_millis(100))?;
        }
        Ok(pid)
    }

    /// The agent's status (`sockmesh status --json`, run on the agent's host).
    fn status(&self, host: &str) -> Result<Value> {
        let out = self.cli(host, &["status", "--json"])?;
        serde_json::from_str(&out).context("sockmesh status --json output")
    }

    /// Run the sockmesh CLI on `host` against its agent; returns stdout.
    fn cli(&self, host: &str, args: &[&str]) -> Result<String> {
        let out = output(
            self.host(host)
                .cmd(&self.bins.sockmesh)
                .args(args)
                .args(["--admin", &format!("127.0.0.1:{ADMIN_PORT}")]),
        )
        .context("running the sockmesh CLI")?;
        if !out.status.success() {
            bail!(
                "sockmesh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One Motan2 call from host-a (from inside the app cgroup when `in_cgroup`).
    fn call(&self, to: &str, in_cgroup: bool, arg: &str) -> Result<Value> {
        let mut cmd = self.host("host-a").cmd(&self.bins.testpeer);
        cmd.arg("motan2-call");
        if in_cgroup {
            cmd.arg("--cgroup").arg(self.cgroup_dir()?);
        }
        cmd.args(["--connect", to, "--service", SERVICE, "--arg", arg]);
        let out = output(&mut cmd).context("running sockmesh-testpeer motan2-call")?;
        if !out.status.success() {
            bail!(
                "the call to {to} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("motan2-call output")
    }

    fn cgroup_dir(&self) -> Result<PathBuf> {
        Ok(self
            .cgroup
            .as_ref()
            .and_then(|c| c.cgroup.as_ref())
            .context("no app cgroup")?
            .path()
            .to_path_buf())
    }

    /// sockmesh-loadgen on host-a against `to` (from inside the app cgroup when `in_cgroup`).
    fn load(&self, opts: &Opts, to: &str, in_cgroup: bool) -> Result<Value> {
        let mut cmd = self.host("host-a").cmd(&self.bins.loadgen);
        cmd.args(["run", "--target", to, "--conns", "1", "--payload", "100"])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--duration-ms", &opts.duration_ms.to_string()])
            .args(["--warmup-ms", &(opts.duration_ms / 4).to_string()])
            .args(["--timeout-ms", "3000", "--service", SERVICE, "--group", GROUP]);
        if in_cgroup {
            cmd.arg("--cgroup").arg(self.cgroup_dir()?);
        }
        let out = output(&mut cmd).context("running sockmesh-loadgen")?;
        if !out.status.success() {
            bail!(
                "sockmesh-loadgen against {to} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("sockmesh-loadgen output")
    }
}

fn server_agent_config() -> String {
    format!(
        "motan-agent:\n  port: {AGENT_PORT}\n  mport: {ADMIN_PORT}\n  application: demo-provider\n\
         sockmesh:\n  log_level: info\n  intercept:\n    enabled: false\n\
         motan-service:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    export: \"motan2:{EXPORT_PORT}\"\n\
         \x20   provider: motan2\n    proxy: \"motan2:{PROVIDER_PORT}\"\n    filter: metrics\n"
    )
}

fn client_agent_config(server: &str, pin_dir: &Path) -> String {
    format!(
        "motan-agent:\n  port: {AGENT_PORT}\n  mport: {ADMIN_PORT}\n  application: demo-app\n\
         sockmesh:\n  log_level: info\n  intercept:\n    transparent_port: {TRANSPARENT_PORT}\n\
         \x20   default_mode: ebpf-connect\n    pin_dir: {}\n    iptables_chain: SMDEMO{}\n    bpf_log_level: warn\n\
         motan-registry:\n  host-b:\n    protocol: direct\n    address: \"{server}:{EXPORT_PORT}\"\n\
         motan-refer:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    protocol: motan2\n    registry: host-b\n\
         \x20   requestTimeout: 3000\n    filter: metrics\n",
        pin_dir.display(),
        std::process::id()
    )
}

/// Request count and mean latency (µs) of one role from the agent's /metrics text.
fn role_metrics(text: &str, role: &str) -> Value {
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains(&format!("role=\"{role}\"")) && l.contains(SERVICE))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let count = value("sockmesh_request_duration_seconds_count");
    let sum = value("sockmesh_request_duration_seconds_sum");
    json!({
        "requests": count as u64,
        "mean_us": if count > 0.0 { (sum / count * 1e6).round() as u64 } else { 0 },
    })
}

fn run(opts: &Opts) -> Result<Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root (network namespaces, cgroups, BPF)");
    }
    let bins = Bins::locate(opts.bin_dir.as_deref())?;
    let pid = std::process::id();
    let run_dir = std::env::temp_dir().join(format!("sockmesh-demo-{pid}"));
    std::fs::create_dir_all(&run_dir)?;
    let mut d = Demo {
        bins,
        run_dir,
        procs: Vec::new(),
        pins: None,
        cgroup: None,
        hosts: Vec::new(),
        keep_files: true,
    };
    say!("sockmesh demo (pid {pid}): two hosts as network namespaces, one veth link on {SUBNET}\n");

    say!("[1/5] hosts");
    d.create_hosts()?;
    for h in &d.hosts {
        say!("  {}  {}/24  network namespace {}", h.name, h.address, h.netns);
    }
    say!("  link    host-a eth0 <-> host-b eth0 (veth pair)");
    check_interrupted()?;

    let (a_ip, b_ip) = (d.host("host-a").address, d.host("host-b").address);
    say!("\n[2/5] host-b: Motan2 provider and server agent");
    let provider_pid = d.start_provider()?;
    say!(
        "  provider      pid {provider_pid:<7} sockmesh-testpeer motan2-provider on 0.0.0.0:{PROVIDER_PORT} ({SERVICE})"
    );
    let server_pid = d.start_agent("host-b", "server agent", &server_agent_config())?;
    say!(
        "  server agent  pid {server_pid:<7} export {b_ip}:{EXPORT_PORT} (group {GROUP}) -> provider 127.0.0.1:{PROVIDER_PORT}; no interception"
    );

    say!("\n[3/5] host-a: client agent, app cgroup, interception");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-demo-{pid}"));
    d.pins = Some(Pins(pin_dir.clone()));
    let client_pid = d.start_agent("host-a", "client agent", &client_agent_config(b_ip, &pin_dir))?;
    say!(
        "  client agent  pid {client_pid:<7} refer echo -> direct registry {b_ip}:{EXPORT_PORT}; transparent listener 127.0.0.1:{TRANSPARENT_PORT}; BPF pins {}",
        pin_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st: Value = serde_json::from_str(&d.host("host-a").admin("/status")?)?;
        if st["mesh"]["clusters"][0]["available_endpoints"].as_u64() >= Some(1) {
            say!("  cluster echo: endpoint {b_ip}:{EXPORT_PORT} available");
            break;
        }
        if Instant::now() > deadline {
            bail!("the client agent never reached host-b's export port: {st}");
        }
        pause(Duration::from_millis(100))?;
    }
    let mount = sockmesh::cgroup::cgroup2_mount()?;
    let cg_name = format!("sockmesh-demo-{pid}");
    d.cgroup = Some(AppCgroup {
        cgroup: Some(ChildCgroup::create(&mount, &cg_name)?),
        rel: format!("/{cg_name}"),
    });
    let cg_rel = format!("/{cg_name}");
    let cg_dir = d.cgroup_dir()?;
    say!("  app cgroup    {cg_rel} ({})", cg_dir.display());
    let enable = [
        "intercept",
        "enable",
        "--cgroup",
        &cg_rel,
        "--mode",
        "ebpf-connect",
    ];
    say!(
        "  host-a$ sockmesh {} --admin 127.0.0.1:{ADMIN_PORT}",
        enable.join(" ")
    );
    let out = d.cli("host-a", &enable)?;
    say!("          {}", out.trim());
    say!("  interception enabled for {cg_rel}");

    let provider_addr = format!("{b_ip}:{PROVIDER_PORT}");
    say!("\n[4/5] requests: an app on host-a calls {provider_addr}, the provider's own address");
    let direct = d.call(&provider_addr, false, "hello, direct")?;
    say!(
        "  outside the cgroup: {:?} answered by {}, through an agent: {}  (straight over the veth)",
        direct["body"].as_str().unwrap_or("?"),
        direct["provider"].as_str().unwrap_or("?"),
        yes_no(&direct)
    );
    let meshed = d.call(&provider_addr, true, "hello, mesh")?;
    say!(
        "  inside the cgroup:  {:?} answered by {}, through an agent: {}  (connect4 -> client agent -> {b_ip}:{EXPORT_PORT} -> server agent -> provider)",
        meshed["body"].as_str().unwrap_or("?"),
        meshed["provider"].as_str().unwrap_or("?"),
        yes_no(&meshed)
    );
    if meshed["seen_proxy"] != "1" || meshed["provider"] != PROVIDER_NAME {
        bail!("the intercepted call did not go through the mesh: {meshed}");
    }

    say!(
        "\n[5/5] latency from host-a: sockmesh-loadgen, open loop {} req/s, 1 connection, 100 B payload, {} ms per path",
        opts.rate,
        opts.duration_ms
    );
    let export_addr = format!("{b_ip}:{EXPORT_PORT}");
    let mut latency = Vec::new();
    for (label, path, to, in_cgroup) in [
        (
            "direct",
            "app -> provider (not intercepted)",
            &provider_addr,
            false,
        ),
        (
            "server_agent",
            "app -> server agent :8100 -> provider",
            &export_addr,
            false,
        ),
        (
            "mesh",
            "app (intercepted) -> client agent -> server agent -> provider",
            &provider_addr,
            true,
        ),
    ] {
        say!("  measuring {path} ...");
        let json = d.load(opts, to, in_cgroup)?;
        latency.push(Latency { label, path, json });
    }

    let client = d.status("host-a")?;
    let server = d.status("host-b")?;
    let client_metrics = role_metrics(&d.host("host-a").admin("/metrics")?, "client-agent");
    let server_metrics = role_metrics(&d.host("host-b").admin("/metrics")?, "server-agent");
    let cgroup_counters = client["intercept"]["cgroups"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["cgroup"] == cg_rel.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    let p50 = |label: &str| {
        latency
            .iter()
            .find(|l| l.label == label)
            .and_then(|l| l.json["latency_us"]["p50"].as_i64())
            .unwrap_or(0)
    };
    let summary = json!({
        "pid": pid,
        "subnet": SUBNET,
        "service": SERVICE,
        "group": GROUP,
        "hosts": d.hosts.iter().map(|h| json!({
            "name": h.name, "netns": h.netns, "address": h.address,
            "runs": if h.name == "host-a" { json!(["client agent", "app"]) } else { json!(["server agent", "provider"]) },
        })).collect::<Vec<_>>(),
        "cgroup": cg_rel,
        "cgroup_dir": cg_dir,
        "pin_dir": pin_dir,
        "run_dir": d.run_dir,
        "pids": { "provider": provider_pid, "server_agent": server_pid, "client_agent": client_pid },
        "addresses": { "host_a": a_ip, "provider": provider_addr, "export": export_addr },
        "calls": { "direct": direct, "intercepted": meshed },
        "load": { "rate": opts.rate, "duration_ms": opts.duration_ms, "conns": 1, "payload": 100 },
        "latency": latency.iter().map(|l| (l.label.to_string(), json!({ "path": l.path, "result": l.json })))
            .collect::<serde_json::Map<_, _>>(),
        "hops_p50_us": {
            "server_agent": p50("server_agent") - p50("direct"),
            "client_agent_and_interception": p50("mesh") - p50("server_agent"),
            "mesh_total": p50("mesh") - p50("direct"),
        },
        "client_agent": {
            "cgroup": cgroup_counters,
            "transparent_proxy": client["transparent_proxy"],
            "agent_port": client["agent_port"],
            "cluster": client["mesh"]["clusters"][0],
            "metrics": client_metrics,
        },
        "server_agent": {
            "export_ports": server["export_ports"],
            "exports": server["mesh"]["exports"],
            "metrics": server_metrics,
        },
    });
    d.keep_files = false;
    drop(d);
    Ok(summary)
}

fn yes_no(call: &Value) -> &'static str {
    if call["seen_proxy"] == "1" { "yes" } else { "no" }
}

fn print_summary(v: &Value) {
    let n = |x: &Value| x.as_i64().map_or("?".to_string(), |n| n.to_string());
    println!("\nsummary");
    println!(
        "  hosts: host-a {} (client agent, app), host-b {} (server agent, provider), netns removed",
        v["hosts"][0]["address"].as_str().unwrap_or("?"),
        v["hosts"][1]["address"].as_str().unwrap_or("?")
    );
    println!(
        "\n  latency seen by the app on host-a (µs; open loop {} req/s, 1 connection, {} ms per path)",
        v["load"]["rate"], v["load"]["duration_ms"]
    );
    println!(
        "  {:<14} {:<64} {:>8} {:>6} {:>6} {:>6} {:>6}",
        "run", "path", "requests", "errors", "p50", "p90", "p99"
    );
    for label in ["direct", "server_agent", "mesh"] {
        let l = &v["latency"][label];
        let r = &l["result"];
        println!(
            "  {:<14} {:<64} {:>8} {:>6} {:>6} {:>6} {:>6}",
            label,
            l["path"].as_str().unwrap_or("?"),
            n(&r["ok"]),
            n(&r["errors"]),
            n(&r["latency_us"]["p50"]),
            n(&r["latency_us"]["p90"]),
            n(&r["latency_us"]["p99"])
        );
    }
    let h = &v["hops_p50_us"];
    println!("\n  per hop (differences of the p50s)");
    println!(
        "    server agent on host-b (export -> provider)           {:>+6} µs",
        h["server_agent"].as_i64().unwrap_or(0)
    );
    println!(
        "    client agent on host-a, with the eBPF redirect        {:>+6} µs",
        h["client_agent_and_interception"].as_i64().unwrap_or(0)
    );
    println!(
        "    whole mesh vs direct                                  {:>+6} µs",
        h["mesh_total"].as_i64().unwrap_or(0)
    );
    let (cm, sm) = (&v["client_agent"]["metrics"], &v["server_agent"]["metrics"]);
    println!("\n  inside the agents (metrics filter, mean over every request)");
    println!(
        "    client agent: request to host-b and back             {:>7} µs over {} requests",
        n(&cm["mean_us"]),
        n(&cm["requests"])
    );
    println!(
        "    server agent: request to the provider and back       {:>7} µs over {} requests",
        n(&sm["mean_us"]),
        n(&sm["requests"])
    );
    let c = &v["client_agent"];
    let s = &v["server_agent"];
    println!("\n  counters (sockmesh status --json)");
    println!(
        "    client agent  cgroup {}: redirected {}, passed {}, fail-open {}",
        v["cgroup"].as_str().unwrap_or("?"),
        n(&c["cgroup"]["redirected"]),
        n(&c["cgroup"]["passed"]),
        n(&c["cgroup"]["fail_open"])
    );
    println!(
        "                  transparent listener: accepted {}, routed by the mesh {}, passed through {}; client role: {} requests on {} connections",
        n(&c["transparent_proxy"]["accepted"]),
        n(&c["transparent_proxy"]["routed"]),
        n(&c["transparent_proxy"]["forwarded"]),
        n(&c["agent_port"]["requests"]),
        n(&c["agent_port"]["connections"])
    );
    let ep = &c["cluster"]["endpoints"][0];
    println!(
        "                  cluster {} ({}): endpoint {} available={}",
        c["cluster"]["name"].as_str().unwrap_or("?"),
        c["cluster"]["service"].as_str().unwrap_or("?"),
        ep["address"].as_str().unwrap_or("?"),
        ep["available"]
    );
    println!(
        "    server agent  export {}: {} requests on {} connections -> provider {}",
        v["addresses"]["export"].as_str().unwrap_or("?"),
        n(&s["export_ports"]["requests"]),
        n(&s["export_ports"]["connections"]),
        s["exports"][0]["provider"]["address"].as_str().unwrap_or("?")
    );
    println!(
        "\ndemo ok: the intercepted app reached {} through both agents; teardown problems: {}",
        v["addresses"]["provider"].as_str().unwrap_or("?"),
        n(&v["teardown"]["problems"])
    );
}
