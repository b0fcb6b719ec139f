//! What the demo creates, each behind a guard that narrates its removal, and the steps that
//! create and use it.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sockmesh_testkit::proc::log_tail;
use sockmesh_testkit::{ChildCgroup, ChildProcess, NetNs, PinDir, agent, http};

use crate::{
    ADMIN_PORT, AGENT_PORT, EXPORT_PORT, GROUP, INTERRUPTED, Opts, PROVIDER_NAME, PROVIDER_PORT, SERVICE,
    TRANSPARENT_PORT, check_interrupted, stdout_of, teardown_problem,
};

/// The programs the demo runs.
pub struct Bins {
    pub sockmesh: PathBuf,
    pub testpeer: PathBuf,
    pub loadgen: PathBuf,
}

impl Bins {
    pub fn locate(dir: Option<&Path>) -> Result<Bins> {
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

/// A process the demo started; stopped by the kit's guard (SIGTERM, then SIGKILL after 2 s, by
/// its PID), and the narration says so.
struct DemoProc(ChildProcess);

impl Drop for DemoProc {
    fn drop(&mut self) {
        let pid = self.0.pid();
        match self.0.stop() {
            Ok(_) => say!("  stopped {} (pid {pid})", self.0.what()),
            Err(e) => teardown_problem(format!("could not stop {} (pid {pid}): {e:#}", self.0.what())),
        }
    }
}

/// One demo host: a network namespace, deleted on drop (its veth end goes with it).
pub struct Host {
    pub name: &'static str,
    pub netns: NetNs,
    pub address: &'static str,
}

impl Host {
    pub fn create(name: &'static str, address: &'static str) -> Result<Host> {
        let netns = NetNs::add(format!("sockmesh-demo-{}-{name}", std::process::id()))?;
        Ok(Host { name, netns, address })
    }

    /// `program` run inside this host.
    fn cmd(&self, program: &Path) -> Command {
        self.netns.command(program)
    }

    /// GET a path of the agent's admin API on this host.
    pub fn admin(&self, path: &str) -> Result<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], ADMIN_PORT).into();
        let (code, body) = self.netns.within(|| http::get(addr, path))??;
        if code != 200 {
            bail!("{} agent: GET {path} answered {code}: {body}", self.name);
        }
        Ok(body)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        match self.netns.delete() {
            Ok(()) => say!(
                "  deleted network namespace {} ({}, with its veth end)",
                self.netns.name(),
                self.name
            ),
            Err(e) => teardown_problem(format!("{e:#}")),
        }
    }
}

/// The client agent's BPF pins: removing them detaches its programs from every cgroup.
pub struct Pins(pub PinDir);

impl Drop for Pins {
    fn drop(&mut self) {
        match self.0.remove() {
            Ok(Some(said)) => say!("  {said}"),
            Ok(None) => {}
            Err(e) => teardown_problem(format!("BPF pins {}: {e:#}", self.0.path().display())),
        }
    }
}

/// The app's cgroup, removed on drop.
pub struct AppCgroup(pub ChildCgroup);

impl Drop for AppCgroup {
    fn drop(&mut self) {
        match self.0.remove() {
            Ok(()) => say!("  removed cgroup {}", self.0.rel()),
            Err(e) => teardown_problem(format!("{e:#}")),
        }
    }
}

/// Everything the demo created. Drop removes it in dependency order: processes first (so the
/// cgroup is empty and no program holds the pins), then pins, cgroup, namespaces, files.
pub struct Demo {
    pub bins: Bins,
    pub run_dir: PathBuf,
    procs: Vec<DemoProc>,
    pub pins: Option<Pins>,
    pub cgroup: Option<AppCgroup>,
    pub hosts: Vec<Host>,
    /// Keep the configs and logs in `run_dir` (after a failure, to read the agents' logs).
    pub keep_files: bool,
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
pub struct Latency {
    pub label: &'static str,
    pub path: &'static str,
    pub json: Value,
}

impl Demo {
    /// Nothing created yet; configs and logs will go to `run_dir`.
    pub fn new(bins: Bins, run_dir: PathBuf) -> Demo {
        Demo {
            bins,
            run_dir,
            procs: Vec::new(),
            pins: None,
            cgroup: None,
            hosts: Vec::new(),
            keep_files: true,
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).expect("host exists")
    }

    /// host-a and host-b, linked by a veth pair created directly inside the two namespaces.
    pub fn create_hosts(&mut self) -> Result<()> {
        self.hosts.push(Host::create("host-a", "10.77.0.1")?);
        self.hosts.push(Host::create("host-b", "10.77.0.2")?);
        let (a, b) = (&self.hosts[0].netns, &self.hosts[1].netns);
        a.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.name(),
        ])?;
        for h in &self.hosts {
            h.netns
                .ip(&["addr", "add", &format!("{}/24", h.address), "dev", "eth0"])?;
            h.netns.ip(&["link", "set", "eth0", "up"])?;
            h.netns.ip(&["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Start the Motan2 provider on host-b; returns its PID once it listens.
    pub fn start_provider(&mut self) -> Result<u32> {
        let provider = ChildProcess::spawn(
            "provider on host-b",
            self.host("host-b")
                .cmd(&self.bins.testpeer)
                .args(["motan2-provider", "--listen"])
                .arg(format!("0.0.0.0:{PROVIDER_PORT}"))
                .args(["--name", PROVIDER_NAME])
                .stdout(Stdio::piped()),
        )?;
        let pid = provider.pid();
        self.procs.push(DemoProc(provider));
        let provider = &mut self.procs.last_mut().expect("just pushed").0;
        provider.ready().context("the provider did not start")?;
        Ok(pid)
    }

    /// Start an agent on `host` with `config`; returns its PID once its admin API answers.
    pub fn start_agent(&mut self, host: &str, what: &str, config: &str) -> Result<u32> {
        let file = what.replace(' ', "-");
        let cfg = self.run_dir.join(format!("{file}.yaml"));
        std::fs::write(&cfg, config)?;
        let log = self.run_dir.join(format!("{file}.log"));
        let h = self
            .hosts
            .iter()
            .find(|h| h.name == host)
            .context("no such host")?;
        let started = agent::spawn(
            &format!("{what} on {host}"),
            h.cmd(&self.bins.sockmesh),
            &cfg,
            &log,
        )?;
        let pid = started.pid();
        self.procs.push(DemoProc(started));
        let started = &mut self.procs.last_mut().expect("just pushed").0;
        started
            .wait_until(agent::START_TIMEOUT, || {
                check_interrupted()?;
                Ok(h.admin("/sockmesh/status").is_ok())
            })
            .with_context(|| format!("the {what} did not answer; its log:\n{}", log_tail(&log, 15)))?;
        Ok(pid)
    }

    /// The agent's status (`sockmesh status --json`, run on the agent's host).
    pub fn status(&self, host: &str) -> Result<Value> {
        let out = self.cli(host, &["status", "--json"])?;
        serde_json::from_str(&out).context("sockmesh status --json output")
    }

    /// The control socket of the agent on `host` (a directory the agents create, 0700, in the
    /// run directory: the hosts share the file system).
    pub fn control_socket(&self, host: &str) -> PathBuf {
        self.run_dir.join("control").join(format!("{host}.sock"))
    }

    /// Run the sockmesh CLI on `host` against its agent (on its control socket); returns stdout.
    pub fn cli(&self, host: &str, args: &[&str]) -> Result<String> {
        let out = stdout_of(
            self.host(host)
                .cmd(&self.bins.sockmesh)
                .args(args)
                .arg("--control")
                .arg(self.control_socket(host)),
            &format!("sockmesh {}", args.join(" ")),
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// One Motan2 call from host-a (from inside the app cgroup when `in_cgroup`).
    pub fn call(&self, to: &str, in_cgroup: bool, arg: &str) -> Result<Value> {
        let mut cmd = self.host("host-a").cmd(&self.bins.testpeer);
        cmd.arg("motan2-call");
        if in_cgroup {
            cmd.arg("--cgroup").arg(self.cgroup_dir()?);
        }
        cmd.args(["--connect", to, "--service", SERVICE, "--arg", arg]);
        let out = stdout_of(
            &mut cmd,
            &format!("the call to {to} (sockmesh-testpeer motan2-call)"),
        )?;
        serde_json::from_slice(&out).context("motan2-call output")
    }

    pub fn cgroup_dir(&self) -> Result<PathBuf> {
        Ok(self
            .cgroup
            .as_ref()
            .context("no app cgroup")?
            .0
            .path()
            .to_path_buf())
    }

    /// sockmesh-loadgen on host-a against `to` (from inside the app cgroup when `in_cgroup`).
    pub fn load(&self, opts: &Opts, to: &str, in_cgroup: bool) -> Result<Value> {
        let mut cmd = self.host("host-a").cmd(&self.bins.loadgen);
        cmd.args(["run", "--target", to, "--conns", "1", "--payload", "100"])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--duration-ms", &opts.duration_ms.to_string()])
            .args(["--warmup-ms", &(opts.duration_ms / 4).to_string()])
            .args(["--timeout-ms", "3000", "--service", SERVICE, "--group", GROUP]);
        if in_cgroup {
            cmd.arg("--cgroup").arg(self.cgroup_dir()?);
        }
        let out = stdout_of(&mut cmd, &format!("sockmesh-loadgen against {to}"))?;
        serde_json::from_slice(&out).context("sockmesh-loadgen output")
    }
}

/// The server agent pins nothing (no interception), but a daemon locks its pin directory: its
/// own one, so that it never competes with an agent of the host for the default. Its control
/// socket is its own too.
pub fn server_agent_config(control: &Path) -> String {
    format!(
        "motan-agent:\n  port: {AGENT_PORT}\n  mport: {ADMIN_PORT}\n  application: demo-provider\n\
         sockmesh:\n  log_level: info\n  admin:\n    control_socket: {}\n  intercept:\n    enabled: false\n    pin_dir: /sys/fs/bpf/sockmesh-demo-server-{}\n\
         motan-service:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    export: \"motan2:{EXPORT_PORT}\"\n\
         \x20   provider: motan2\n    proxy: \"motan2:{PROVIDER_PORT}\"\n    filter: metrics\n",
        control.display(),
        std::process::id()
    )
}

pub fn client_agent_config(server: &str, pin_dir: &Path, control: &Path) -> String {
    format!(
        "motan-agent:\n  port: {AGENT_PORT}\n  mport: {ADMIN_PORT}\n  application: demo-app\n\
         sockmesh:\n  log_level: info\n  admin:\n    control_socket: {}\n  intercept:\n    transparent_port: {TRANSPARENT_PORT}\n\
         \x20   default_mode: ebpf-connect\n    pin_dir: {}\n    iptables_chain: SMDEMO{}\n    bpf_log_level: warn\n\
         motan-registry:\n  host-b:\n    protocol: direct\n    address: \"{server}:{EXPORT_PORT}\"\n\
         motan-refer:\n  echo:\n    path: {SERVICE}\n    group: {GROUP}\n    protocol: motan2\n    registry: host-b\n\
         \x20   requestTimeout: 3000\n    filter: metrics\n",
        control.display(),
        pin_dir.display(),
        std::process::id()
    )
}
