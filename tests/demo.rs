//! The multi-host demo (issue #9) as a test: `sockmesh-demo --json` builds two hosts as network
//! namespaces, runs a provider behind a server agent on host-b and an intercepted app with a
//! client agent on host-a, and its JSON summary must show the requests crossing both agents with
//! their latency and counters. Afterwards nothing it created may be left; an interrupted demo
//! must clean up as well.
//!
//! The demo binary belongs to the sockmesh-testkit package (so that test code is never a
//! dependency of the agent), and Cargo sets `CARGO_BIN_EXE_*` only for the package under test.
//! So the test finds it this way: `SOCKMESH_DEMO_BIN` names one to use; otherwise the test builds
//! it with the cargo running it, same profile and target directory (a no-op when up to date), so
//! it is always the demo of this tree. The demo runs this package's `sockmesh`,
//! `sockmesh-testpeer` and `sockmesh-loadgen` (`--bin-dir`).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{privileged, serial};
use serde_json::Value;

/// The demo binary (see the top of this file).
fn demo_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SOCKMESH_DEMO_BIN") {
            return PathBuf::from(bin);
        }
        // This test runs as <target-dir>/<profile-dir>/deps/demo-HASH.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev",
            other => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--package",
                "sockmesh-testkit",
                "--bin",
                "sockmesh-demo",
            ])
            .args(["--profile", profile, "--target-dir"])
            .arg(profile_dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build for sockmesh-demo");
        assert!(
            out.status.success(),
            "building sockmesh-demo failed (or set SOCKMESH_DEMO_BIN):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("sockmesh-demo")
    })
}

/// `sockmesh-demo ARGS` with this package's binaries.
fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(demo_bin());
    cmd.args(args)
        .arg("--bin-dir")
        .arg(Path::new(env!("CARGO_BIN_EXE_sockmesh")).parent().unwrap());
    cmd
}

/// What a demo run with PID `pid` creates, by name.
struct Created {
    netns: Vec<String>,
    cgroup_dir: PathBuf,
    pin_dir: PathBuf,
    run_dir: PathBuf,
}

impl Created {
    fn of(pid: u32) -> Created {
        Created {
            netns: ["host-a", "host-b"]
                .iter()
                .map(|h| format!("sockmesh-demo-{pid}-{h}"))
                .collect(),
            cgroup_dir: sockmesh_testkit::cgroup2_mount()
                .unwrap()
                .join(format!("sockmesh-demo-{pid}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sockmesh-demo-{pid}")),
            run_dir: std::env::temp_dir().join(format!("sockmesh-demo-{pid}")),
        }
    }

    /// Every namespace, the cgroup, the BPF pins, the run directory and the `pids` are gone.
    fn assert_gone(&self, pids: &[u32]) {
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        for ns in &self.netns {
            assert!(!list.contains(ns.as_str()), "network namespace {ns} left: {list}");
            assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} still mounted");
        }
        for p in [&self.cgroup_dir, &self.pin_dir, &self.run_dir] {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} still running"
            );
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn demo_shows_requests_crossing_two_hosts_and_cleans_up() {
    if !privileged("demo_shows_requests_crossing_two_hosts_and_cleans_up") {
        return;
    }
    let _g = serial();
    let child = demo(&["--json", "--rate", "200", "--duration-ms", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let narration = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{narration}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{narration}", String::from_utf8_lossy(&out.stdout)));

    // The topology: two hosts with their own addresses, in namespaces named after the run.
    let created = Created::of(pid);
    assert_eq!(v["pid"], pid);
    assert_eq!(v["hosts"][0]["address"], "10.77.0.1", "{v}");
    assert_eq!(v["hosts"][1]["address"], "10.77.0.2", "{v}");
    assert_eq!(v["hosts"][0]["netns"], created.netns[0].as_str());
    assert_eq!(v["hosts"][1]["netns"], created.netns[1].as_str());
    assert_eq!(v["pin_dir"], created.pin_dir.to_str().unwrap());
    assert_eq!(v["cgroup_dir"], created.cgroup_dir.to_str().unwrap());

    // One call to the provider's address from host-a: straight over the veth outside the
    // cgroup, through both agents inside it, answered by host-b's provider both times.
    let (direct, meshed) = (&v["calls"]["direct"], &v["calls"]["intercepted"]);
    assert_eq!(direct["provider"], "provider@host-b", "{direct}");
    assert_eq!(direct["seen_proxy"], "0", "{direct}");
    assert_eq!(direct["body"], "hello, direct");
    assert_eq!(meshed["provider"], "provider@host-b", "{meshed}");
    assert_eq!(
        meshed["seen_proxy"], "1",
        "the provider saw an agent's request: {meshed}"
    );
    assert_eq!(meshed["body"], "hello, mesh");
    assert_eq!(meshed["exception"], Value::Null);

    // Latency of every path: all requests answered, percentiles reported.
    for path in ["direct", "server_agent", "mesh"] {
        let r = &v["latency"][path]["result"];
        assert_eq!(u(&r["errors"]), 0, "{path}: {r}");
        assert!(u(&r["ok"]) >= 150, "{path}: {r}");
        let p50 = u(&r["latency_us"]["p50"]);
        assert!(p50 > 0 && p50 <= u(&r["latency_us"]["p99"]), "{path}: {r}");
    }
    for hop in ["server_agent", "client_agent_and_interception", "mesh_total"] {
        assert!(v["hops_p50_us"][hop].is_i64(), "{hop}: {v}");
    }

    // The client agent intercepted both connections of the cgroup (the call and the load run)
    // and routed them to host-b through its cluster; nothing failed open or passed through.
    let c = &v["client_agent"];
    assert_eq!(u(&c["cgroup"]["redirected"]), 2, "{c}");
    assert_eq!(u(&c["cgroup"]["fail_open"]), 0, "{c}");
    assert_eq!(u(&c["transparent_proxy"]["routed"]), 2, "{c}");
    assert_eq!(u(&c["transparent_proxy"]["forwarded"]), 0, "{c}");
    assert_eq!(c["cluster"]["endpoints"][0]["address"], "10.77.0.2:8100", "{c}");
    assert_eq!(c["cluster"]["endpoints"][0]["available"], true, "{c}");
    let mesh_ok = u(&v["latency"]["mesh"]["result"]["ok"]);
    let via_server_ok = u(&v["latency"]["server_agent"]["result"]["ok"]);
    // Only the intercepted requests reach the client agent (the load run's warm-up too).
    let client_requests = u(&c["metrics"]["requests"]);
    assert!(client_requests > mesh_ok, "{c}");
    assert!(u(&c["metrics"]["mean_us"]) > 0, "{c}");

    // The server agent served the intercepted requests and the ones sent to its export port;
    // the direct path never touched it.
    let s = &v["server_agent"];
    let server_requests = u(&s["metrics"]["requests"]);
    assert_eq!(u(&s["export_ports"]["requests"]), server_requests, "{s}");
    assert!(server_requests > mesh_ok + via_server_ok, "{s}");
    // Those sent to the export port directly: the measured ones plus a warm-up of a quarter.
    let to_export = server_requests - client_requests;
    assert!(
        to_export >= via_server_ok && to_export <= via_server_ok * 3 / 2,
        "{to_export} requests reached the export port other than through the client agent: {s}"
    );
    assert_eq!(s["exports"][0]["port"], 8100, "{s}");
    assert_eq!(s["exports"][0]["provider"]["address"], "127.0.0.1:9100", "{s}");

    // Torn down without a problem: nothing of the run is left.
    assert_eq!(v["teardown"]["problems"], 0, "{narration}");
    let pids: Vec<u32> = ["provider", "server_agent", "client_agent"]
        .iter()
        .map(|k| u(&v["pids"][k]) as u32)
        .collect();
    created.assert_gone(&pids);
    assert!(narration.contains("interception enabled"), "{narration}");
    assert!(narration.contains("teardown"), "{narration}");
}

#[test]
fn interrupted_demo_removes_everything_it_created() {
    if !privileged("interrupted_demo_removes_everything_it_created") {
        return;
    }
    let _g = serial();
    let mut child = demo(&["--json", "--rate", "200", "--duration-ms", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read the narration until interception is on (agents, provider, cgroup and pins exist),
    // remembering the PIDs it announces; then SIGINT the demo alone, as a Ctrl-C would.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut narration = String::new();
    let mut pids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap();
        narration.push_str(&line);
        narration.push('\n');
        if let Some(p) = line.split("pid ").nth(1) {
            pids.extend(p.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()));
        }
        if line.contains("interception enabled") {
            break;
        }
        assert!(Instant::now() < deadline, "{narration}");
    }
    assert!(narration.contains("interception enabled"), "{narration}");
    assert_eq!(pids.len(), 3, "provider and both agents announced: {narration}");
    let created = Created::of(pid);
    assert!(
        created.pin_dir.exists() && created.cgroup_dir.exists(),
        "{narration}"
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the PID of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let started = Instant::now();
    for line in lines {
        narration.push_str(&line.unwrap());
        narration.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{narration}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the teardown took {:?}",
        started.elapsed()
    );
    assert!(
        narration.contains("interrupted; everything it created has been removed"),
        "{narration}"
    );
    created.assert_gone(&pids);
}
