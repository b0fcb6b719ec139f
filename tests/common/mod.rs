//! Shared harness for the privileged integration tests: a daemon per test with its own ports
//! and pin directory, child cgroups and network namespaces, an echo server, and the
//! cgroup-joining test client. The guards come from the test kit (tests/kit), so everything a
//! test creates is removed on drop, also when the test fails; what is here is only what the tests
//! alone use.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use sockmesh_testkit::{ChildCgroup, ChildProcess, NatChain, PinDir, free_ports, privileged};
use sockmesh_testkit::{agent, http, netns};

/// Privileged tests share the kernel (cgroup root attachments, bpftool listings): run them one
/// at a time so their assertions about "nothing of ours is left" are exact.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockmesh")
}

pub fn peer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sockmesh-testpeer")
}

pub fn cgroup_mount() -> PathBuf {
    sockmesh_testkit::cgroup2_mount().expect("cgroup v2 mount")
}

/// A child cgroup for one test (removed on drop) and its path as the CLI takes it ("/name").
pub fn test_cgroup(tag: &str) -> (ChildCgroup, String) {
    let cg = ChildCgroup::create(&format!("{tag}-{}", std::process::id())).unwrap();
    let rel = cg.rel().to_string();
    (cg, rel)
}

/// The ports a daemon will use, chosen before its configuration is written (so another
/// daemon's configuration can name them).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub port: u16,
    pub eport: u16,
    pub mport: u16,
    pub tport: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        let p = free_ports(4);
        Ports {
            port: p[0],
            eport: p[1],
            mport: p[2],
            tport: p[3],
        }
    }
}

pub struct Daemon {
    child: Option<ChildProcess>,
    pub ports: Ports,
    /// The TCP admin port: reads (and the mutations `sockmesh.admin.tcp_mutations` enables).
    pub admin: SocketAddr,
    /// The control socket: the whole admin API, for root.
    pub control: PathBuf,
    pub transparent_port: u16,
    pub pin_dir: PathBuf,
    pub iptables_chain: String,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The daemon's pins and iptables chain, removed after it is stopped.
    pins: PinDir,
    chain: NatChain,
    /// `sockmesh run` flags after the configuration (motan-go's, e.g. `-idc yf`).
    flags: Vec<String>,
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with(name, "")
    }

    /// Start with extra keys for the `sockmesh.intercept` section (YAML lines, 4-space indent).
    pub fn start_with(name: &str, extra_intercept: &str) -> Daemon {
        Daemon::launch(name, Ports::pick(), "", extra_intercept)
    }

    /// A mesh daemon without interception: `motan` holds the motan sections (YAML).
    pub fn mesh(name: &str, ports: Ports, motan: &str) -> Daemon {
        Daemon::launch(name, ports, motan, "    enabled: false\n")
    }

    /// A mesh daemon without interception with extra `motan-agent` keys (2-space indent).
    pub fn mesh_with_agent(name: &str, ports: Ports, agent: &str, motan: &str) -> Daemon {
        Daemon::launch_full(name, ports, agent, motan, "    enabled: false\n")
    }

    /// Start with `motan` sections and extra `sockmesh.intercept` keys (4-space indent).
    pub fn launch(name: &str, ports: Ports, motan: &str, extra_intercept: &str) -> Daemon {
        Daemon::launch_full(name, ports, "", motan, extra_intercept)
    }

    pub fn launch_full(name: &str, ports: Ports, agent: &str, motan: &str, extra_intercept: &str) -> Daemon {
        Daemon::launch_admin(name, ports, agent, "", motan, extra_intercept)
    }

    /// Also with extra `sockmesh.admin` keys (4-space indent; the control socket is set here).
    pub fn launch_admin(
        name: &str,
        ports: Ports,
        agent: &str,
        admin: &str,
        motan: &str,
        extra_intercept: &str,
    ) -> Daemon {
        let mut d = Daemon::configure(name, ports, agent, admin, motan, extra_intercept);
        d.spawn();
        d
    }

    /// Write the configuration (as `launch_admin`), without starting the daemon.
    fn configure(
        name: &str,
        ports: Ports,
        agent: &str,
        admin: &str,
        motan: &str,
        extra_intercept: &str,
    ) -> Daemon {
        let dir = std::env::temp_dir().join(format!("sockmesh-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Ports {
            port,
            eport,
            mport,
            tport,
        } = ports;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-test-{name}-{}", std::process::id()));
        let iptables_chain = format!("SMT{}", std::process::id());
        let config = dir.join("sockmesh.yaml");
        // The agent refuses a directory others could write to; 0755 whatever the umask, so the
        // socket's own mode (0600) is what keeps other users out.
        let control = dir.join("control/control.sock");
        let control_dir = control.parent().unwrap();
        std::fs::create_dir_all(control_dir).unwrap();
        std::fs::set_permissions(control_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // `intercept` comes last: tests append keys to it (4-space indent) and reload.
        std::fs::write(
            &config,
            format!(
                "motan-agent:\n  port: {port}\n  eport: {eport}\n  mport: {mport}\n  application: test-{name}\n{agent}\
                 sockmesh:\n  log_level: debug\n  admin:\n    control_socket: {}\n{admin}\
                 \x20 intercept:\n    transparent_port: {tport}\n    pin_dir: {}\n    iptables_chain: {iptables_chain}\n    bpf_log_level: debug\n{extra_intercept}\n# motan\n{motan}",
                control.display(),
                pin_dir.display()
            ),
        )
        .unwrap();
        Daemon {
            child: None,
            ports,
            admin: format!("127.0.0.1:{mport}").parse().unwrap(),
            control,
            transparent_port: tport,
            pins: PinDir::new(bin(), &pin_dir),
            chain: NatChain::new(&iptables_chain),
            pin_dir,
            iptables_chain,
            log: dir.join("agent.log"),
            dir,
            config,
            flags: Vec::new(),
        }
    }

    /// A mesh daemon without interception (as `mesh_with_agent`) started with `flags`.
    pub fn mesh_with_flags(name: &str, ports: Ports, agent: &str, motan: &str, flags: &[&str]) -> Daemon {
        let mut d = Daemon::configure(name, ports, agent, "", motan, "    enabled: false\n");
        d.flags = flags.iter().map(|f| f.to_string()).collect();
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        // `SOCKMESH_TEST_AGENT_WRAPPER="heaptrack -o /tmp/x"` runs the daemon under a profiler.
        let cmd = match std::env::var("SOCKMESH_TEST_AGENT_WRAPPER") {
            Ok(w) if !w.trim().is_empty() => {
                let mut words = w.split_whitespace();
                let mut cmd = Command::new(words.next().unwrap());
                cmd.args(words).arg(bin());
                cmd
            }
            _ => Command::new(bin()),
        };
        let child = self.child.insert(
            agent::spawn_with_flags("sockmesh run", cmd, &self.config, &self.log, &self.flags).unwrap(),
        );
        // Up when the TCP admin port answers, or the control socket does (a daemon whose admin
        // API is on managementUnixSock has no TCP admin port).
        let (admin, control) = (self.admin, self.control.clone());
        let up = move || agent::answers(admin) || http::unix_request(&control, "GET", "/version", "").is_ok();
        if let Err(e) = child.wait_until(agent::START_TIMEOUT, || Ok(up())) {
            panic!("daemon on {}: {e:#}; log:\n{}", self.admin, self.log());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").pid()
    }

    /// SIGKILL the daemon (we started it; we stop it by its PID).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Send SIGTERM to the daemon (we started it).
    pub fn sigterm(&self) {
        self.child
            .as_ref()
            .expect("daemon running")
            .signal(libc::SIGTERM)
            .unwrap();
    }

    /// Wait for the daemon to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self) -> bool {
        self.child.take().is_some_and(|mut c| c.wait().unwrap().success())
    }

    /// Stop the daemon with SIGSTOP (we started it) until the guard is dropped, which sends
    /// SIGCONT, also when the test fails in between.
    pub fn stop(&self) -> Stopped<'_> {
        self.child
            .as_ref()
            .expect("daemon running")
            .signal(libc::SIGSTOP)
            .unwrap();
        Stopped(self)
    }

    /// The thread id of the daemon's thread called `name` (e.g. `sm-shard-0`).
    pub fn thread(&self, name: &str) -> libc::pid_t {
        let tasks = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .unwrap_or_else(|| panic!("no thread {name} in {tasks}"))
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap()
    }

    /// Stop one thread of the daemon, found by its name (e.g. `sm-shard-0`), while the others
    /// run on: PTRACE_SEIZE then PTRACE_INTERRUPT stop that thread alone (a signal would stop
    /// the whole process). Dropping the guard detaches, which resumes it; it must be dropped on
    /// the thread that made it (the tracer is a thread).
    pub fn stall_thread(&self, name: &str) -> StalledThread<'_> {
        let tid = self.thread(name);
        // SAFETY: ptrace and waitpid on a thread of a process this test started.
        unsafe {
            let seized = libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0);
            assert_eq!(
                seized,
                0,
                "PTRACE_SEIZE {name} ({tid}): {}",
                std::io::Error::last_os_error()
            );
            let stall = StalledThread { tid, _daemon: self };
            let interrupted = libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
            assert_eq!(
                interrupted,
                0,
                "PTRACE_INTERRUPT {name}: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            let waited = libc::waitpid(tid, &mut status, libc::__WALL);
            assert_eq!(waited, tid, "waitpid {name}: {}", std::io::Error::last_os_error());
            assert!(libc::WIFSTOPPED(status), "{name} not stopped: status {status:#x}");
            stall
        }
    }

    /// Send SIGHUP to the daemon (we started it).
    pub fn sighup(&self) {
        self.child
            .as_ref()
            .expect("daemon running")
            .signal(libc::SIGHUP)
            .unwrap();
    }

    /// Wait until the log contains `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?} {n} time(s):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `method path` on the control socket (the whole admin API, as root); (status, body).
    pub fn control_request(&self, method: &str, path: &str) -> (u16, String) {
        http::unix_request(&self.control, method, path, "").unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// POST a mutation on the control socket; (status, body).
    pub fn control_post(&self, path: &str) -> (u16, String) {
        self.control_request("POST", path)
    }

    /// GET an admin path and parse the JSON answer.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http::get(self.admin, path).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The Prometheus text on the TCP admin port's `/metrics`.
    pub fn metrics(&self) -> String {
        let (code, body) = http::get(self.admin, "/metrics").unwrap();
        assert_eq!(code, 200, "GET /metrics: {body}");
        body
    }

    /// Replace the motan sections of the configuration file (for reload tests).
    pub fn rewrite_motan(&self, motan: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let keep = text.split("\n# motan\n").next().unwrap().to_string();
        std::fs::write(&self.config, format!("{keep}\n# motan\n{motan}")).unwrap();
    }

    /// The daemon's log so far. The daemon writes info and debug lines in batches at least
    /// every 100 ms (agent/src/log_writer.rs), so this waits a little for them first.
    pub fn log(&self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run the CLI against this daemon (on its control socket); returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin())
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn enable(&self, cgroup_rel: &str, mode: &str) {
        let (ok, out, err) = self.cli(&["intercept", "enable", "--cgroup", cgroup_rel, "--mode", mode]);
        assert!(ok, "intercept enable failed: {out}{err}");
    }

    pub fn intercept_status(&self) -> serde_json::Value {
        let (ok, out, err) = self.cli(&["intercept", "status", "--json"]);
        assert!(ok, "intercept status failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Wait until the daemon serves a network namespace other than its own (the namespace
    /// watcher opened listeners there).
    pub fn wait_netns_listener(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.intercept_status()["netns_listeners"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "no listener opened in the app's namespace:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One intercepted cgroup's entry in `intercept status` (panics, with the status, when it
    /// is not there).
    pub fn cgroup_status(&self, cgroup_rel: &str) -> serde_json::Value {
        let v = self.intercept_status();
        v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cgroup"] == cgroup_rel)
            .unwrap_or_else(|| panic!("cgroup {cgroup_rel} not in status {v}"))
            .clone()
    }

    /// Counters of one intercepted cgroup: (redirected, passed, fail_open).
    pub fn counters(&self, cgroup_rel: &str) -> (u64, u64, u64) {
        let c = self.cgroup_status(cgroup_rel);
        (
            c["redirected"].as_u64().unwrap(),
            c["passed"].as_u64().unwrap(),
            c["fail_open"].as_u64().unwrap(),
        )
    }

    /// Stop this daemon (SIGTERM, it drains), then remove its pins and iptables chain with
    /// `sockmesh uninstall --pin-dir --iptables-chain`; returns the CLI output.
    pub fn uninstall(&mut self) -> String {
        if self.child.is_some() {
            self.sigterm();
            assert!(self.wait_exit(), "daemon did not exit cleanly on SIGTERM");
        }
        let out = Command::new(bin())
            .args(["uninstall", "--pin-dir"])
            .arg(&self.pin_dir)
            .args(["--iptables-chain", &self.iptables_chain])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "uninstall failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into()
    }
}

/// A daemon stopped by [`Daemon::stop`]; dropping it resumes the daemon.
pub struct Stopped<'a>(&'a Daemon);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(c) = &self.0.child {
            let _ = c.signal(libc::SIGCONT);
        }
    }
}

/// A thread of the daemon stopped by [`Daemon::stall_thread`]; dropping it resumes the thread.
pub struct StalledThread<'a> {
    tid: libc::pid_t,
    _daemon: &'a Daemon,
}

impl Drop for StalledThread<'_> {
    fn drop(&mut self) {
        // SAFETY: detaching the thread this test seized.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if let Err(e) = self.pins.remove() {
            eprintln!("{e:#}");
        }
        if let Err(e) = self.chain.remove() {
            eprintln!("iptables chain {}: {e:#}", self.iptables_chain);
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ({}) ---\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `bpftool -j ARGS`, parsed; None when bpftool fails (e.g. no such object).
pub fn bpftool(args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Every pinned file below `dir`, sorted.
pub fn pins_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The program behind each link pinned under `pin_dir`: (pin, program id).
pub fn link_programs(pin_dir: &Path) -> Vec<(PathBuf, u64)> {
    pins_below(&pin_dir.join("links"))
        .into_iter()
        .map(|p| {
            let v = bpftool(&["link", "show", "pinned", p.to_str().unwrap()])
                .unwrap_or_else(|| panic!("bpftool link show pinned {}", p.display()));
            (p, v["prog_id"].as_u64().unwrap())
        })
        .collect()
}

/// Where the maps of this build's layout are pinned under `pin_dir` (`maps-v<N>`).
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("maps-v{}", sockmesh_common::MAP_LAYOUT_VERSION))
}

/// The ids of the maps pinned under `pin_dir`.
pub fn pinned_map_ids(pin_dir: &Path) -> Vec<u64> {
    pins_below(pin_dir)
        .into_iter()
        .filter(|p| !p.starts_with(pin_dir.join("links")))
        .map(|p| {
            bpftool(&["map", "show", "pinned", p.to_str().unwrap()]).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The kernel objects of one daemon's interception, by id: the programs behind its pinned links
/// and every map they use (pinned or not, e.g. the aya-log ring buffer). Other agents may run on
/// the same kernel at the same time (other test binaries), so "nothing of ours is left" is
/// checked by these ids, not by names.
#[derive(Debug)]
pub struct BpfObjects {
    pub programs: Vec<u64>,
    pub maps: Vec<u64>,
}

impl BpfObjects {
    pub fn pinned_under(pin_dir: &Path) -> BpfObjects {
        let mut programs: Vec<u64> = link_programs(pin_dir).into_iter().map(|(_, id)| id).collect();
        programs.sort_unstable();
        programs.dedup();
        let mut maps = pinned_map_ids(pin_dir);
        for id in &programs {
            let p = bpftool(&["prog", "show", "id", &id.to_string()]).unwrap();
            maps.extend(
                p["map_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_u64()),
            );
        }
        maps.sort_unstable();
        maps.dedup();
        assert!(
            !programs.is_empty() && !maps.is_empty(),
            "nothing pinned under {}",
            pin_dir.display()
        );
        BpfObjects { programs, maps }
    }

    /// Every program and map is gone (the kernel frees them asynchronously: up to 10 s).
    pub fn assert_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let objects = self.programs.iter().map(|id| ("prog", id));
        for (kind, id) in objects.chain(self.maps.iter().map(|id| ("map", id))) {
            while let Some(o) = bpftool(&[kind, "show", "id", &id.to_string()]) {
                assert!(Instant::now() < deadline, "{kind} {id} still exists: {o}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// No BPF program is attached to the cgroup at `path`.
pub fn assert_nothing_attached(path: &Path) {
    let attached = bpftool(&["cgroup", "show", path.to_str().unwrap()]);
    assert!(
        attached
            .as_ref()
            .and_then(|v| v.as_array())
            .is_none_or(|a| a.is_empty()),
        "{}: {attached:?}",
        path.display()
    );
}

/// A network namespace with a veth pair to the root namespace: root side `host_ip/30`, namespace
/// side `ns_ip/30`. Deleted on drop (which also removes the veth pair).
pub struct VethNetNs {
    pub ns: netns::NetNs,
    pub host_ip: String,
    pub ns_ip: String,
    veth_host: String,
    veth_ns: String,
    subnet: u8,
}

impl VethNetNs {
    /// `subnet` picks 10.213.<subnet>.0/30, a range only this test uses, inside its own netns.
    pub fn create(tag: &str, subnet: u8) -> VethNetNs {
        let pid = std::process::id();
        let ns = netns::NetNs::add(format!("smt-{tag}-{pid}")).unwrap();
        let (veth_h, veth_n) = (
            format!("smh{subnet}-{}", pid % 10000),
            format!("smn{subnet}-{}", pid % 10000),
        );
        let (host_ip, ns_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        for args in [
            &["link", "add", &veth_h, "type", "veth", "peer", "name", &veth_n][..],
            &["link", "set", &veth_n, "netns", ns.name()],
            &["addr", "add", &host_cidr, "dev", &veth_h],
            &["link", "set", &veth_h, "up"],
        ] {
            netns::ip(args).unwrap();
        }
        for args in [
            &["addr", "add", &ns_cidr, "dev", &veth_n][..],
            &["link", "set", &veth_n, "up"],
            &["link", "set", "lo", "up"],
        ] {
            ns.ip(args).unwrap();
        }
        VethNetNs {
            ns,
            host_ip,
            ns_ip,
            veth_host: veth_h,
            veth_ns: veth_n,
            subnet,
        }
    }

    /// `sysctl -w KEY=VALUE` inside the namespace (net.* keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let out = self
            .ns
            .command("sysctl")
            .args(["-w", &format!("{key}={value}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sysctl {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// IPv6 on the veth pair too: root side `fd00:213:<subnet>::1/64`, namespace side `::2`
    /// (a ULA range only this test uses; `nodad` so the addresses are usable at once). Returns
    /// (host, namespace) addresses.
    pub fn add_ipv6(&self) -> (String, String) {
        let (h, n) = (
            format!("fd00:213:{}::1", self.subnet),
            format!("fd00:213:{}::2", self.subnet),
        );
        netns::ip(&[
            "-6",
            "addr",
            "add",
            &format!("{h}/64"),
            "dev",
            &self.veth_host,
            "nodad",
        ])
        .unwrap();
        self.ns
            .ip(&[
                "-6",
                "addr",
                "add",
                &format!("{n}/64"),
                "dev",
                &self.veth_ns,
                "nodad",
            ])
            .unwrap();
        (h, n)
    }
}

/// A slow ICMP echo responder inside a namespace (testpeer icmp-responder), stopped on drop.
/// The namespace's kernel stops answering echoes itself first.
pub struct IcmpResponder(#[allow(dead_code)] ChildProcess);

impl IcmpResponder {
    pub fn start(netns: &VethNetNs, delay_ms: u64) -> IcmpResponder {
        netns.sysctl("net.ipv4.icmp_echo_ignore_all", "1");
        let mut p = ChildProcess::spawn(
            "icmp responder",
            peer_cmd(Some(netns))
                .args(["icmp-responder", "--delay-ms", &delay_ms.to_string()])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        assert_eq!(p.ready().unwrap(), "icmp");
        IcmpResponder(p)
    }
}

/// An echo server process (the test peer), optionally inside a network namespace.
pub struct EchoServer {
    _process: ChildProcess,
    pub addr: SocketAddr,
}

impl EchoServer {
    pub fn start(listen: &str, netns: Option<&VethNetNs>) -> EchoServer {
        let mut process = ChildProcess::spawn(
            "echo server",
            peer_cmd(netns)
                .args(["echo-server", listen])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let addr = process.ready().unwrap().parse().unwrap();
        EchoServer {
            _process: process,
            addr,
        }
    }
}

/// Run the test client (moving itself into `cgroup` first when given) against `connect`.
pub fn client(cgroup: Option<&Path>, connect: SocketAddr, bytes: usize, reader: &str) -> serde_json::Value {
    client_in(None, cgroup, connect, bytes, reader)
}

/// `peer_bin()`, run inside `netns` when given.
fn peer_cmd(netns: Option<&VethNetNs>) -> Command {
    match netns {
        Some(n) => n.ns.command(peer_bin()),
        None => Command::new(peer_bin()),
    }
}

/// Connect from `cgroup` to the echo server `connect` on new connections until one echoes
/// within `wait_ms` (testpeer until-echo); returns `{"attempts": N, "ms": M}`.
pub fn until_echo(cgroup: &Path, connect: SocketAddr, wait_ms: u64) -> serde_json::Value {
    let out = Command::new(peer_bin())
        .arg("until-echo")
        .arg("--cgroup")
        .arg(cgroup)
        .args([
            "--connect",
            &connect.to_string(),
            "--wait-ms",
            &wait_ms.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "until-echo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client with one long-lived connection doing periodic round trips (see testpeer pingpong).
pub struct PingPong(ChildProcess);

impl PingPong {
    pub fn start(cgroup: &Path, connect: SocketAddr, count: u32, interval_ms: u32) -> PingPong {
        let mut process = ChildProcess::spawn(
            "pingpong client",
            Command::new(peer_bin())
                .arg("pingpong")
                .arg("--cgroup")
                .arg(cgroup)
                .args(["--connect", &connect.to_string(), "--count", &count.to_string()])
                .args(["--interval-ms", &interval_ms.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap();
        assert_eq!(process.read_line().unwrap(), "connected");
        PingPong(process)
    }

    /// Wait for the end; returns its report ("ok N") or panics with its error.
    pub fn finish(mut self) -> String {
        let st = self.0.wait().unwrap();
        let out = self.0.read_rest().unwrap();
        let mut err = String::new();
        self.0.take_stderr().unwrap().read_to_string(&mut err).unwrap();
        assert!(st.success(), "long-lived connection broke: {err}");
        out.trim().to_string()
    }
}

/// A process that sits in a cgroup (inside `netns` when given) until dropped.
pub struct Resident(ChildProcess);

impl Resident {
    pub fn start(netns: Option<&VethNetNs>, cgroup: &Path) -> Resident {
        let mut process = ChildProcess::spawn(
            "resident",
            peer_cmd(netns).arg("hold").arg(cgroup).stdout(Stdio::piped()),
        )
        .unwrap();
        assert_eq!(process.read_line().unwrap(), "held");
        Resident(process)
    }
}

/// The test client, inside `netns` when given.
pub fn client_in(
    netns: Option<&VethNetNs>,
    cgroup: Option<&Path>,
    connect: SocketAddr,
    bytes: usize,
    reader: &str,
) -> serde_json::Value {
    let mut cmd = peer_cmd(netns);
    cmd.arg("client");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    let out = cmd
        .args([
            "--connect",
            &connect.to_string(),
            "--bytes",
            &bytes.to_string(),
            "--reader",
            reader,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client output {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// A short request/response on a plain socket from this (un-intercepted) process.
pub fn ping(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.write_all(b"ping").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

/// A Motan2 test provider (`sockmesh-testpeer motan2-provider`), stopped on drop.
pub struct Provider {
    process: Option<ChildProcess>,
    pub addr: SocketAddr,
    pub name: String,
}

impl Provider {
    pub fn start(name: &str, delay_ms: u64) -> Provider {
        Provider::start_on("127.0.0.1:0", name, delay_ms, 1)
    }

    /// `delay_ms` applies to every `slow_every`-th request.
    pub fn start_on(listen: &str, name: &str, delay_ms: u64, slow_every: u64) -> Provider {
        Provider::start_in(None, listen, name, delay_ms, slow_every)
    }

    /// As `start_on`, inside `netns` when given.
    pub fn start_in(
        netns: Option<&VethNetNs>,
        listen: &str,
        name: &str,
        delay_ms: u64,
        slow_every: u64,
    ) -> Provider {
        Provider::spawn(
            "motan2 provider",
            name,
            peer_cmd(netns)
                .args(["motan2-provider", "--listen", listen, "--name", name])
                .args(["--delay-ms", &delay_ms.to_string()])
                .args(["--slow-every", &slow_every.to_string()]),
        )
    }

    /// A provider written as blocking I/O (std::net, a thread per connection) on loopback.
    pub fn start_blocking(name: &str) -> Provider {
        Provider::spawn(
            "blocking motan2 provider",
            name,
            Command::new(peer_bin()).args([
                "motan2-provider",
                "--blocking",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
            ]),
        )
    }

    /// Start the test peer's provider `cmd` and wait for the address it prints.
    fn spawn(what: &str, name: &str, cmd: &mut Command) -> Provider {
        let mut process = ChildProcess::spawn(what, cmd.stdout(Stdio::piped())).unwrap();
        let addr = process.ready().unwrap().parse().unwrap();
        Provider {
            process: Some(process),
            addr,
            name: name.to_string(),
        }
    }

    /// SIGKILL it (we started it; stopped by its PID).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
        }
    }
}

pub mod motan {
    //! An app's side of Motan2 in the tests: the agent's own multiplexed channel (it remaps
    //! request ids per connection, so every response must come back under the id we sent).
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    pub use sockmesh::protocol::motan2::{Frame, Value, simple};
    pub use sockmesh::upstream::channel::{Channel, Transport};

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    pub async fn connect(addr: SocketAddr) -> Channel {
        Channel::connect(&addr.to_string(), &Transport::default())
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn request(service: &str, method: &str, meta: &[(&str, &str)], args: &[Value]) -> Frame {
        let mut f = Frame::request(0, service, method, simple::encode_args(args));
        for (k, v) in meta {
            f.meta.insert(
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            );
        }
        f
    }

    pub async fn call(ch: &Channel, req: Frame) -> Frame {
        ch.call(req, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("call: {e}"))
    }

    /// errcode and errmsg of an exception response.
    pub fn exception(f: &Frame) -> Option<(i64, String, i64)> {
        let e = f.as_response()?.exception()?;
        Some((e.errcode, e.errmsg, e.errtype as i64))
    }

    pub fn meta<'a>(f: &'a Frame, k: &str) -> &'a str {
        f.meta.get(k).unwrap_or("")
    }
}

/// The service the mesh tests call.
pub const SVC: &str = "com.example.Echo";

/// A `motan-registry` entry of protocol direct.
pub fn direct_registry(id: &str, addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!(
        "  {id}:\n    protocol: direct\n    address: \"{}\"\n",
        list.join(",")
    )
}

/// Motan sections of a client agent: one refer `echo` for SVC (group g1) over a direct registry
/// of `servers`; `refer_extra` adds keys to the refer (4-space indent).
pub fn client_motan(servers: &[SocketAddr], refer_extra: &str) -> String {
    format!(
        "motan-registry:\n{}motan-refer:\n  echo:\n    path: {SVC}\n    group: g1\n    protocol: motan2\n    registry: servers\n    requestTimeout: 3000\n{refer_extra}",
        direct_registry("servers", servers)
    )
}

/// A client agent with one refer for SVC over a direct registry of `servers`.
pub fn client_agent(name: &str, servers: &[SocketAddr], refer_extra: &str) -> Daemon {
    Daemon::mesh(name, Ports::pick(), &client_motan(servers, refer_extra))
}

/// The agent port of a daemon (client role).
pub fn agent_addr(d: &Daemon) -> SocketAddr {
    format!("127.0.0.1:{}", d.ports.port).parse().unwrap()
}

/// The export port of a daemon (server role).
pub fn export_addr(d: &Daemon) -> SocketAddr {
    format!("127.0.0.1:{}", d.ports.eport).parse().unwrap()
}
