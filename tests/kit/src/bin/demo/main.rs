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
//!
//! It uses only the `sockmesh`, `sockmesh-testpeer` and `sockmesh-loadgen` binaries (found next
//! to it, or in `--bin-dir`) and the test kit's guards: test code is never linked into the agent.
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use sockmesh_testkit::{ChildCgroup, PinDir};

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
pub struct Opts {
    /// Print a JSON summary on stdout (the narration goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Open-loop request rate of each latency run (requests per second).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Measured milliseconds of each latency run (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 2000)]
    pub duration_ms: u64,
    /// Where sockmesh, sockmesh-testpeer and sockmesh-loadgen are (default: next to this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

static JSON: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static TEARDOWN_PROBLEMS: AtomicUsize = AtomicUsize::new(0);

/// The narration: stdout, or stderr when stdout carries the JSON summary.
macro_rules! say {
    ($($t:tt)*) => {
        if $crate::JSON.load(std::sync::atomic::Ordering::Relaxed) { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

mod summary;
mod world;

use summary::{print_summary, role_metrics, yes_no};
use world::{AppCgroup, Bins, Demo, Latency, Pins, client_agent_config, server_agent_config};

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

/// Run a short-lived command (`what` names it) to completion and return its stdout; a failure
/// carries its stderr. Unlike `Command::output`, it kills the command (by its PID) as soon as the
/// demo is interrupted instead of waiting for it.
fn stdout_of(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = output(cmd).with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

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

fn run(opts: &Opts) -> Result<Value> {
    if !sockmesh_testkit::is_root() {
        bail!("the demo needs root (network namespaces, cgroups, BPF)");
    }
    let bins = Bins::locate(opts.bin_dir.as_deref())?;
    let pid = std::process::id();
    let run_dir = std::env::temp_dir().join(format!("sockmesh-demo-{pid}"));
    std::fs::create_dir_all(&run_dir)?;
    let mut d = Demo::new(bins, run_dir);
    say!("sockmesh demo (pid {pid}): two hosts as network namespaces, one veth link on {SUBNET}\n");

    say!("[1/5] hosts");
    d.create_hosts()?;
    for h in &d.hosts {
        say!(
            "  {}  {}/24  network namespace {}",
            h.name,
            h.address,
            h.netns.name()
        );
    }
    say!("  link    host-a eth0 <-> host-b eth0 (veth pair)");
    check_interrupted()?;

    let (a_ip, b_ip) = (d.host("host-a").address, d.host("host-b").address);
    say!("\n[2/5] host-b: Motan2 provider and server agent");
    let provider_pid = d.start_provider()?;
    say!(
        "  provider      pid {provider_pid:<7} sockmesh-testpeer motan2-provider on 0.0.0.0:{PROVIDER_PORT} ({SERVICE})"
    );
    let server_pid = d.start_agent(
        "host-b",
        "server agent",
        &server_agent_config(&d.control_socket("host-b")),
    )?;
    say!(
        "  server agent  pid {server_pid:<7} export {b_ip}:{EXPORT_PORT} (group {GROUP}) -> provider 127.0.0.1:{PROVIDER_PORT}; no interception"
    );

    say!("\n[3/5] host-a: client agent, app cgroup, interception");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-demo-{pid}"));
    d.pins = Some(Pins(PinDir::new(&d.bins.sockmesh, &pin_dir)));
    let client_pid = d.start_agent(
        "host-a",
        "client agent",
        &client_agent_config(b_ip, &pin_dir, &d.control_socket("host-a")),
    )?;
    say!(
        "  client agent  pid {client_pid:<7} refer echo -> direct registry {b_ip}:{EXPORT_PORT}; transparent listener 127.0.0.1:{TRANSPARENT_PORT}; BPF pins {}",
        pin_dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st: Value = serde_json::from_str(&d.host("host-a").admin("/sockmesh/status")?)?;
        if st["mesh"]["clusters"][0]["available_endpoints"].as_u64() >= Some(1) {
            say!("  cluster echo: endpoint {b_ip}:{EXPORT_PORT} available");
            break;
        }
        if Instant::now() > deadline {
            bail!("the client agent never reached host-b's export port: {st}");
        }
        pause(Duration::from_millis(100))?;
    }
    let cgroup = ChildCgroup::create(&format!("sockmesh-demo-{pid}"))?;
    let cg_rel = cgroup.rel().to_string();
    d.cgroup = Some(AppCgroup(cgroup));
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
        "  host-a$ sockmesh {} --control {}",
        enable.join(" "),
        d.control_socket("host-a").display()
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
            "name": h.name, "netns": h.netns.name(), "address": h.address,
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
