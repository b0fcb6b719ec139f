//! Privileged end-to-end tests of eBPF interception on the real kernel: real cgroups, real
//! network namespaces, the real daemon binary. Traffic only goes to 127.0.0.0/8 or to addresses
//! inside namespaces these tests create.
mod common;

use std::process::Command;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn check_probes_every_capability_and_cleans_up() {
    if !privileged("check_probes_every_capability_and_cleans_up") {
        return;
    }
    let _g = serial();
    let out = Command::new(bin()).args(["check", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json output");
    let lines = report["lines"].as_array().unwrap();
    let names: Vec<&str> = lines.iter().map(|l| l["capability"].as_str().unwrap()).collect();
    for want in [
        "BTF",
        "cgroup v2",
        "bpffs",
        "cgroup/connect4",
        "cgroup/connect6",
        "cgroup/getsockopt",
        "cgroup/getpeername4",
        "cgroup/sock_release",
        "sock_ops",
        "sk_msg + sockhash",
        "sk_msg redirect: data-exact",
        "sk_msg redirect: fionread",
        "sk_msg redirect: epoll",
        "sk_msg redirect: blocking-read",
        "sk_msg redirect: splice",
    ] {
        assert!(names.contains(&want), "check does not report {want}: {names:?}");
    }
    for l in lines {
        let name = l["capability"].as_str().unwrap();
        if name != "sk_msg redirect: splice" {
            assert_eq!(l["state"], "ok", "{name} not ok on this kernel: {l}");
        }
        if name.starts_with("cgroup/") || name == "sock_ops" {
            assert!(
                l["detail"]
                    .as_str()
                    .unwrap()
                    .contains("attached to scratch cgroup"),
                "{l}"
            );
        }
    }
    assert_eq!(report["full_ebpf"], true);
    assert!(
        out.status.success(),
        "check exits 0 when the full eBPF path is available"
    );
    // The probe removed its scratch cgroup and pins.
    let leftovers: Vec<_> = std::fs::read_dir(cgroup_mount())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sockmesh-check-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch cgroups left: {leftovers:?}");
    let pins: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sockmesh-check-"))
        .collect();
    assert!(pins.is_empty(), "scratch pins left: {pins:?}");
}

#[test]
fn connect_mode_intercepts_only_the_enabled_cgroup() {
    if !privileged("connect_mode_intercepts_only_the_enabled_cgroup") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.2:0", None);
    let d = Daemon::start("connect");
    let (cg, rel) = test_cgroup("smt-connect");
    d.enable(&rel, "ebpf-connect");

    let r = client(Some(cg.path()), echo.addr, MIB, "blocking");
    assert_eq!(r["ok"], true, "1 MiB each way must arrive intact: {r}");
    assert_eq!(r["received"], MIB);
    assert_eq!(
        r["peer"],
        echo.addr.to_string(),
        "getpeername shows the original destination"
    );
    let (redirected, _, _) = d.counters(&rel);
    assert_eq!(redirected, 1);
    let log = d.log();
    assert!(
        log.contains(&format!("original_dst={}", echo.addr)),
        "agent did not log the original destination:\n{log}"
    );
    // aya-log records of the kernel program reach the agent's log.
    assert!(
        log.contains(&format!("sockmesh: redirected connect to {}", echo.addr)),
        "no BPF log record:\n{log}"
    );
    // Connect mode: the data crossed the loopback TCP stack.
    assert!(r["tcp_bytes_received"].as_u64().unwrap() >= MIB as u64, "{r}");

    // A process outside the cgroup is not intercepted.
    let before = d.cli(&["status", "--json"]).1;
    let r = client(None, echo.addr, 4096, "blocking");
    assert_eq!(r["ok"], true);
    assert_eq!(
        d.counters(&rel).0,
        1,
        "a process outside the cgroup was intercepted"
    );
    let after = d.cli(&["status", "--json"]).1;
    let acc = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["transparent_proxy"]["accepted"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(acc(&before), acc(&after));

    // disable restores the direct path.
    let (ok, out, err) = d.cli(&["intercept", "disable", "--cgroup", &rel]);
    assert!(ok, "{out}{err}");
    let r = client(Some(cg.path()), echo.addr, 4096, "blocking");
    assert_eq!(r["ok"], true);
    assert_eq!(
        acc(&d.cli(&["status", "--json"]).1),
        acc(&after),
        "disabled cgroup still intercepted"
    );
    assert!(d.intercept_status()["cgroups"].as_array().unwrap().is_empty());

    // A connection straight to the transparent listener has no original destination: it is
    // closed, and the warning shows up in the status' recent errors.
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", d.transparent_port).parse().unwrap();
    {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(direct).unwrap();
        let mut buf = [0u8; 1];
        // The agent closes it (EOF or reset, depending on timing).
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let st: serde_json::Value = serde_json::from_str(&d.cli(&["status", "--json"]).1).unwrap();
        if st["recent_errors"]
            .to_string()
            .contains("no original destination")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "warning not in recent_errors: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sockmap_mode_serves_tokio_fionread_and_blocking_readers() {
    if !privileged("sockmap_mode_serves_tokio_fionread_and_blocking_readers") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.3:0", None);
    let d = Daemon::start("sockmap");
    let (cg, rel) = test_cgroup("smt-sockmap");
    d.enable(&rel, "ebpf-sockmap");
    for reader in ["tokio", "fionread", "blocking"] {
        let r = client(Some(cg.path()), echo.addr, MIB, reader);
        assert_eq!(r["ok"], true, "{reader}: {r}");
        assert_eq!(r["received"], MIB, "{reader}: {r}");
        assert_eq!(r["peer"], echo.addr.to_string());
        if reader != "tokio" {
            // The app<->agent leg bypassed TCP: (almost) nothing arrived through the stack.
            assert!(
                r["tcp_bytes_received"].as_u64().unwrap() < 4096,
                "{reader}: data took the TCP path: {r}"
            );
        }
        if reader == "fionread" {
            assert!(r["fionread_max"].as_u64().unwrap() > 0, "{r}");
        }
        // A spurious EAGAIN on a blocking reader (seen on 6.18 under sk_msg) must never be what
        // `auto` hands to apps: then auto has to be ebpf-connect.
        if r["spurious_eagain"].as_u64().unwrap() > 0 {
            eprintln!(
                "{reader}: blocking reader saw {} spurious EAGAIN under ebpf-sockmap",
                r["spurious_eagain"]
            );
            assert_eq!(
                auto_mode(&d),
                "ebpf-connect",
                "auto must not pick the mode that showed the fault: {r}"
            );
        }
    }
    assert_eq!(d.counters(&rel).0, 3);
    assert!(d.log().contains(&format!("original_dst={}", echo.addr)));
}

fn auto_mode(d: &Daemon) -> String {
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["status", "--json"]).1).unwrap();
    v["intercept"]["auto_mode"].as_str().unwrap().to_string()
}

#[test]
fn auto_mode_follows_the_self_test() {
    if !privileged("auto_mode_follows_the_self_test") {
        return;
    }
    let _g = serial();
    let d = Daemon::start("auto");
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["status", "--json"]).1).unwrap();
    let checks = v["selftest"]["checks"].as_array().unwrap();
    assert!(checks.len() >= 7, "{v}");
    let required = [
        "redirect-active",
        "data-exact",
        "fionread",
        "epoll",
        "blocking-read",
        "blocking-read-while-writing",
    ];
    for name in required.iter().chain(&["splice"]) {
        assert!(
            checks.iter().any(|c| c["name"] == *name),
            "self-test lacks {name}: {v}"
        );
    }
    // Default (auto_sockmap: false): auto is ebpf-connect whatever the self-test says.
    let want = "ebpf-connect";
    assert_eq!(v["intercept"]["auto_mode"], want, "{v}");
    let (_cg, rel) = test_cgroup("smt-auto");
    d.enable(&rel, "auto");
    assert_eq!(d.intercept_status()["cgroups"][0]["mode"], want);
    let log = d.log();
    assert!(log.contains("kernel self-test"), "{log}");
    drop(d);
    // Opted in: auto follows the self-test.
    let d = Daemon::start_with("auto-optin", "    auto_sockmap: true\n");
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["status", "--json"]).1).unwrap();
    let checks = v["selftest"]["checks"].as_array().unwrap();
    let safe = required
        .iter()
        .all(|n| checks.iter().any(|c| c["name"] == *n && c["ok"] == true));
    assert_eq!(
        v["intercept"]["auto_mode"],
        if safe { "ebpf-sockmap" } else { "ebpf-connect" },
        "{v}"
    );
}

#[test]
fn destination_inside_a_test_network_namespace() {
    if !privileged("destination_inside_a_test_network_namespace") {
        return;
    }
    let _g = serial();
    let ns = VethNetNs::create("dst", 1);
    let echo = EchoServer::start(&format!("{}:0", ns.ns_ip), Some(&ns));
    let d = Daemon::start("netnsdst");
    let (cg, rel) = test_cgroup("smt-netns");
    for mode in ["ebpf-connect", "ebpf-sockmap"] {
        d.enable(&rel, mode);
        let r = client(Some(cg.path()), echo.addr, MIB, "blocking");
        assert_eq!(r["ok"], true, "{mode}: {r}");
        assert_eq!(r["peer"], echo.addr.to_string());
    }
    assert_eq!(d.counters(&rel).0, 2);
    assert!(d.log().contains(&format!("original_dst={}", echo.addr)));
}

#[test]
fn app_inside_another_network_namespace() {
    if !privileged("app_inside_another_network_namespace") {
        return;
    }
    let _g = serial();
    let ns = VethNetNs::create("app", 2);
    // The destination is the namespace's own loopback: only reachable from inside it.
    let echo = EchoServer::start("127.0.0.2:0", Some(&ns));
    let d = Daemon::start("netnsapp");
    let (cg, rel) = test_cgroup("smt-nsapp");
    d.enable(&rel, "ebpf-connect");
    let _resident = Resident::start(Some(&ns), cg.path());
    d.wait_netns_listener();
    for mode in ["ebpf-connect", "ebpf-sockmap"] {
        d.enable(&rel, mode);
        let r = client_in(Some(&ns), Some(cg.path()), echo.addr, MIB, "blocking");
        assert_eq!(r["ok"], true, "{mode}: {r}");
        assert_eq!(r["peer"], echo.addr.to_string(), "{mode}");
    }
    assert_eq!(d.counters(&rel).0, 2, "both connections intercepted");
    let log = d.log();
    assert!(
        log.contains(&format!("original_dst={}", echo.addr)) && log.contains("other_netns=true"),
        "{log}"
    );
    assert!(
        log.contains("transparent listener opened in network namespace"),
        "{log}"
    );
}

#[test]
fn fail_open_when_killed_and_interception_back_after_restart() {
    if !privileged("fail_open_when_killed_and_interception_back_after_restart") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.4:0", None);
    let mut d = Daemon::start("failopen");
    let (cg, rel) = test_cgroup("smt-failopen");
    d.enable(&rel, "auto");
    assert_eq!(client(Some(cg.path()), echo.addr, 65536, "blocking")["ok"], true);

    d.kill9();
    // Agent gone: the app's next connection reaches its destination directly.
    let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
    assert_eq!(r["ok"], true, "fail-open: {r}");
    assert!(
        r["tcp_bytes_received"].as_u64().unwrap() >= 65536,
        "direct path expected: {r}"
    );

    // Restart: interception is back without enabling again, and counted the fail-open.
    d.spawn();
    let (redirected, _, fail_open) = d.counters(&rel);
    assert_eq!((redirected, fail_open), (1, 1));
    let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
    assert_eq!(r["ok"], true);
    assert_eq!(d.counters(&rel).0, 2, "not intercepted after restart");
    assert!(
        d.log()
            .contains("interception from the previous run is active again")
    );
}

/// Stuck-agent fail-open: a SIGSTOPped agent keeps its listener, but its heartbeat goes stale,
/// so the app's new connections go direct within `liveness_timeout_ms` (set by a reload); after
/// SIGCONT they are intercepted again; a killed agent's stale heartbeat is plain fail-open, and a
/// restarted agent intercepts again.
#[test]
fn stopped_agent_fails_open_within_the_liveness_timeout() {
    if !privileged("stopped_agent_fails_open_within_the_liveness_timeout") {
        return;
    }
    let _g = serial();
    const TIMEOUT_MS: u64 = 500;
    let echo = EchoServer::start("127.0.0.6:0", None);
    // Started with the default timeout (2 s); a reload shortens it.
    let mut d = Daemon::start("stuck");
    let (cg, rel) = test_cgroup("smt-stuck");
    d.enable(&rel, "ebpf-connect");
    let cfg = d.config_path().to_path_buf();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}    liveness_timeout_ms: {TIMEOUT_MS}\n")).unwrap();
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok && out.contains("liveness_timeout_ms"), "{out}{err}");
    let accepted = |d: &Daemon| {
        serde_json::from_str::<serde_json::Value>(&d.cli(&["status", "--json"]).1).unwrap()["transparent_proxy"]
            ["accepted"]
            .as_u64()
            .unwrap()
    };
    let stalled = |d: &Daemon| fail_open_stalled(d, &rel);
    assert_eq!(client(Some(cg.path()), echo.addr, 65536, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel), (1, 0, 0));
    assert_eq!(accepted(&d), 1);

    let stuck = {
        // The agent stops with its listener open: only the stale heartbeat can send apps
        // direct. SIGCONT when this scope ends, also on failure.
        let _stopped = d.stop();
        let stopped_at = std::time::Instant::now();
        // New connections every 50 ms until one is answered: those before it went into the
        // stopped agent's backlog.
        let probe = until_echo(cg.path(), echo.addr, 50);
        let took = stopped_at.elapsed();
        eprintln!("stopped agent: first direct connection {took:?} after SIGSTOP, {probe}");
        assert!(
            took < std::time::Duration::from_millis(TIMEOUT_MS + 1000),
            "the first direct connection took {took:?} after SIGSTOP (liveness timeout {TIMEOUT_MS} ms)"
        );
        let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
        assert_eq!(r["ok"], true, "a stopped agent must not hold the app: {r}");
        assert_eq!(r["received"], 65536, "{r}");
        assert_eq!(r["peer"], echo.addr.to_string(), "{r}");
        probe["attempts"].as_u64().unwrap() - 1
    };
    // Resumed: the answered probe and the client went direct, counted as fail-open for a stale
    // heartbeat; the probes before went to the agent.
    assert_eq!(d.counters(&rel), (1 + stuck, 0, 2));
    assert_eq!(stalled(&d), 2);
    let metrics = d.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sockmesh_intercept_fail_open_stalled_total{")
                && l.contains(&rel)
                && l.ends_with(" 2")),
        "{metrics}"
    );

    // The heartbeat is fresh again within an interval: new connections go through the agent.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        d.counters(&rel),
        (2 + stuck, 0, 2),
        "not intercepted after SIGCONT"
    );
    assert_eq!(stalled(&d), 2);
    // The agent accepted what was redirected to it (the backlog after SIGCONT, then the client)
    // and nothing else.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while accepted(&d) != 2 + stuck {
        assert!(
            std::time::Instant::now() < deadline,
            "accepted {} connections, {} were redirected",
            accepted(&d),
            2 + stuck
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A killed agent leaves a stale heartbeat behind: no listener is the plain fail-open, not a
    // stalled one, and a restarted agent writes a fresh heartbeat before it redirects again.
    d.kill9();
    std::thread::sleep(std::time::Duration::from_millis(TIMEOUT_MS + 200));
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    d.spawn();
    assert_eq!(d.counters(&rel), (2 + stuck, 0, 3));
    assert_eq!(stalled(&d), 2);
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(
        d.counters(&rel),
        (3 + stuck, 0, 3),
        "not intercepted after restart"
    );
}

/// The cgroup's `fail_open_stalled` count in `intercept status`.
fn fail_open_stalled(d: &Daemon, rel: &str) -> u64 {
    d.cgroup_status(rel)["fail_open_stalled"].as_u64().unwrap()
}

/// Stuck-agent fail-open for one stalled data-plane shard: the rest of the agent runs (the
/// heartbeat task, the other shards), but connections the stalled shard accepts or was handed
/// would wait, so the heartbeat pauses and apps connect directly; once the shard runs again
/// they are intercepted again.
#[test]
fn a_stalled_shard_fails_open_within_the_liveness_timeout() {
    if !privileged("a_stalled_shard_fails_open_within_the_liveness_timeout") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.8:0", None);
    let d = Daemon::launch_admin(
        "shardstall",
        Ports::pick(),
        "",
        "",
        "",
        "    liveness_timeout_ms: 500\n",
    );
    let (cg, rel) = test_cgroup("smt-shardstall");
    d.enable(&rel, "ebpf-connect");
    assert_eq!(client(Some(cg.path()), echo.addr, 65536, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel), (1, 0, 0));
    let stalled = |d: &Daemon| fail_open_stalled(d, &rel);
    {
        let _stall = d.stall_thread("sm-shard-0");
        let at = std::time::Instant::now();
        d.wait_log("a data-plane shard has not run", 1);
        let noticed = at.elapsed();
        assert!(
            noticed < std::time::Duration::from_millis(2000),
            "the stall was noticed after {noticed:?}"
        );
        // The last heartbeat ages past the liveness timeout (500 ms).
        std::thread::sleep(std::time::Duration::from_millis(700));
        let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
        assert_eq!(r["ok"], true, "a stalled shard must not hold the app: {r}");
        assert_eq!(r["peer"], echo.addr.to_string(), "{r}");
        assert_eq!(
            d.counters(&rel),
            (1, 0, 1),
            "not sent direct while a shard is stalled"
        );
        assert_eq!(stalled(&d), 1);
    }
    d.wait_log("the data-plane shards run again", 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(client(Some(cg.path()), echo.addr, 65536, "blocking")["ok"], true);
    assert_eq!(
        d.counters(&rel),
        (2, 0, 1),
        "not intercepted once the shard runs again"
    );
}

/// Stuck-agent fail-open for an agent that runs but cannot accept: at the transparent
/// listener's connection cap (`sockmesh.limits.listener_connections`) the heartbeat pauses, new
/// connections go direct instead of waiting in the backlog, and once the listener accepts again
/// they are intercepted again.
#[test]
fn listener_at_its_cap_fails_open_within_the_liveness_timeout() {
    if !privileged("listener_at_its_cap_fails_open_within_the_liveness_timeout") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.7:0", None);
    let d = Daemon::launch_admin(
        "capped",
        Ports::pick(),
        "",
        "  limits:\n    listener_connections: 1\n",
        "",
        "    liveness_timeout_ms: 500\n",
    );
    let (cg, rel) = test_cgroup("smt-capped");
    d.enable(&rel, "ebpf-connect");
    // One long-lived intercepted connection takes the only slot (about 2 s of round trips).
    let held = PingPong::start(cg.path(), echo.addr, 8, 250);
    assert_eq!(d.counters(&rel), (1, 0, 0));
    std::thread::sleep(std::time::Duration::from_millis(650));
    let started = std::time::Instant::now();
    let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the connection waited for the capped listener"
    );
    let c = d.cgroup_status(&rel);
    assert_eq!(
        (
            c["redirected"].as_u64(),
            c["fail_open"].as_u64(),
            c["fail_open_stalled"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{c}"
    );
    d.wait_log("heartbeat paused", 1);

    // The slot comes back: the listener catches up, the heartbeat resumes.
    assert_eq!(held.finish(), "ok 8");
    d.wait_log("heartbeat resumed", 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(client(Some(cg.path()), echo.addr, 65536, "blocking")["ok"], true);
    assert_eq!(
        d.counters(&rel),
        (2, 0, 1),
        "not intercepted once the listener accepts again"
    );
}

#[test]
fn uninstall_leaves_no_bpf_objects() {
    if !privileged("uninstall_leaves_no_bpf_objects") {
        return;
    }
    let _g = serial();
    let mut d = Daemon::start("uninstall");
    let (cg, rel) = test_cgroup("smt-uninst");
    d.enable(&rel, "ebpf-sockmap");
    let ours = BpfObjects::pinned_under(&d.pin_dir);
    let out = d.uninstall();
    assert!(out.contains("removed"), "{out}");
    ours.assert_gone();
    assert_nothing_attached(cg.path());
    assert!(!d.pin_dir.exists(), "pin directory left: {}", d.pin_dir.display());
}

#[test]
fn config_validate_reports_all_problems() {
    let dir = std::env::temp_dir().join(format!("sockmesh-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "motan-agent:\n  port: 8002\n  mport: 8002\nsockmesh:\n  intercept:\n    default_mode: warp\n    liveness_timeout_ms: 100\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("3 configuration problem(s)"), "{err}");
    assert!(
        err.contains("bad.yaml") && err.contains("default_mode") && err.contains("mport"),
        "{err}"
    );
    assert!(
        err.contains(
            "section sockmesh.intercept, key liveness_timeout_ms: 100 is neither 0 (off) nor in 300..=600000"
        ),
        "{err}"
    );
    let good = dir.join("good.yaml");
    let def = Command::new(bin())
        .args(["config", "show-default"])
        .output()
        .unwrap();
    std::fs::write(&good, &def.stdout).unwrap();
    let out = Command::new(bin())
        .args(["config", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

fn iptables_save() -> String {
    let out = Command::new("iptables-save").output().expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn iptables_mode_redirects_and_uninstall_removes_every_rule() {
    if !privileged("iptables_mode_redirects_and_uninstall_removes_every_rule") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.6:0", None);
    let mut d = Daemon::start("iptables");
    let (cg, rel) = test_cgroup("smt-ipt");
    d.enable(&rel, "iptables");
    let saved = iptables_save();
    assert!(
        saved.contains(&format!("-A OUTPUT -p tcp -j {}", d.iptables_chain)),
        "{saved}"
    );
    assert!(saved.contains(&format!("sockmesh cgroup {rel}")), "{saved}");

    let r = client(Some(cg.path()), echo.addr, MIB, "blocking");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["peer"], echo.addr.to_string());
    assert!(
        d.log().contains(&format!("original_dst={}", echo.addr)),
        "conntrack original destination not used"
    );
    let c = d.cgroup_status(&rel);
    assert_eq!(
        (c["mode"].as_str(), c["redirected"].as_u64()),
        (Some("iptables"), Some(1)),
        "{c}"
    );

    // Not intercepted outside the cgroup (the rule count stays 1).
    assert_eq!(client(None, echo.addr, 4096, "blocking")["ok"], true);
    let st = d.intercept_status();
    assert_eq!(st["cgroups"][0]["redirected"], 1, "{st}");

    // Switching the cgroup to eBPF removes its iptables rule, and back.
    d.enable(&rel, "ebpf-connect");
    assert!(!iptables_save().contains(&format!("sockmesh cgroup {rel}")));
    assert_eq!(d.intercept_status()["cgroups"][0]["mode"], "ebpf-connect");
    d.enable(&rel, "iptables");
    assert_eq!(d.intercept_status()["cgroups"].as_array().unwrap().len(), 1);

    let out = d.uninstall();
    assert!(
        out.contains(&format!("removed iptables nat chain {}", d.iptables_chain)),
        "{out}"
    );
    let saved = iptables_save();
    assert!(
        !saved.contains(&d.iptables_chain) && !saved.contains("sockmesh"),
        "rules left:\n{saved}"
    );
    // Direct path again.
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
}

#[test]
fn install_status_uninstall_leaves_nothing() {
    if !privileged("install_status_uninstall_leaves_nothing") {
        return;
    }
    let _g = serial();
    let root = std::env::temp_dir().join(format!("sockmesh-install-{}", std::process::id()));
    // A config with this test's own ports, pin directory and chain.
    let mut d = Daemon::start("install");
    let cfg = std::fs::read_to_string(d.dir.join("sockmesh.yaml")).unwrap();
    d.kill9();
    let cfg_file = root.with_extension("yaml");
    std::fs::write(&cfg_file, &cfg).unwrap();
    let out = Command::new(bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--config")
        .arg(&cfg_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed_bin = root.join("usr/local/bin/sockmesh");
    let installed_cfg = root.join("etc/sockmesh/sockmesh.yaml");
    let unit = root.join("etc/systemd/system/sockmesh.service");
    for p in [&installed_bin, &installed_cfg, &unit] {
        assert!(p.exists(), "{} not installed: {text}", p.display());
    }
    assert!(
        text.contains("systemd is not running here") || text.contains("enabled and started"),
        "{text}"
    );
    // Idempotent.
    let again = Command::new(bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--config")
        .arg(&cfg_file)
        .output()
        .unwrap();
    assert!(again.status.success() && String::from_utf8_lossy(&again.stdout).contains("already up to date"));

    // Run the installed binary with the installed config: healthy status, interception on.
    let mut child = Command::new(&installed_bin)
        .args(["run", "--config"])
        .arg(&installed_cfg)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Ok((200, body)) = sockmesh_testkit::http::get(d.admin, "/sockmesh/status") {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "installed daemon did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["intercept"]["available"], true, "{status}");
    let (cg, rel) = test_cgroup("smt-inst");
    d.enable(&rel, "ebpf-sockmap");
    let ours = BpfObjects::pinned_under(&d.pin_dir);
    let (ok, _, err) = d.cli(&[
        "intercept",
        "enable",
        "--cgroup",
        &format!("{rel}-none"),
        "--mode",
        "iptables",
    ]);
    assert!(
        !ok && err.contains("does not exist"),
        "a missing cgroup must be refused: {err}"
    );

    let out = Command::new(&installed_bin)
        .args(["uninstall", "--root"])
        .arg(&root)
        .arg("--pin-dir")
        .arg(&d.pin_dir)
        .args(["--iptables-chain", &d.iptables_chain])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = child.wait().unwrap();
    assert!(st.success(), "daemon should exit cleanly on uninstall: {st}");
    for p in [&installed_bin, &installed_cfg, &unit, &root.join("etc/sockmesh")] {
        assert!(!p.exists(), "{} left after uninstall: {text}", p.display());
    }
    assert!(!d.pin_dir.exists(), "pins left");
    ours.assert_gone();
    assert_nothing_attached(cg.path());
    assert!(
        !iptables_save().contains(&d.iptables_chain),
        "iptables rules left"
    );
    // Twice is safe.
    let out = Command::new(bin())
        .args(["uninstall", "--root"])
        .arg(&root)
        .arg("--pin-dir")
        .arg(&d.pin_dir)
        .args(["--iptables-chain", &d.iptables_chain])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&cfg_file);
}

#[test]
fn reload_applies_policy_keeps_connections_and_refuses_bad_config() {
    if !privileged("reload_applies_policy_keeps_connections_and_refuses_bad_config") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.7:0", None);
    let d = Daemon::start("reload");
    let (cg, rel) = test_cgroup("smt-reload");
    d.enable(&rel, "ebpf-connect");
    // An established intercepted connection that must survive the reloads.
    let long = PingPong::start(cg.path(), echo.addr, 30, 50);
    assert_eq!(d.counters(&rel).0, 1);

    // Exclude the echo's port: after SIGHUP new connects to it are left alone.
    let cfg = d.config_path().to_path_buf();
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{good}    exclude_ports: [22, {}]\n", echo.addr.port()),
    )
    .unwrap();
    d.sighup();
    d.wait_log("configuration reloaded", 1);
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    let (redirected, passed, _) = d.counters(&rel);
    assert_eq!(
        (redirected, passed),
        (1, 1),
        "the reloaded policy should pass the excluded port"
    );

    // A broken configuration is refused, over SIGHUP and over the admin API; service goes on.
    std::fs::write(&cfg, format!("{good}    default_mode: warp-speed\n")).unwrap();
    d.sighup();
    d.wait_log("reload refused", 1);
    let (code, body) = d.control_post("/reload");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("default_mode"), "{body}");
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(
        d.counters(&rel).1,
        2,
        "the running (reloaded) policy stays after a refused reload"
    );

    // Back to the original: intercepted again, via the admin call this time.
    std::fs::write(&cfg, &good).unwrap();
    let (code, body) = d.control_post("/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("policy"), "{body}");
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel).0, 2);
    assert_eq!(
        long.finish(),
        "ok 30",
        "the established connection kept working through the reloads"
    );
}

#[test]
fn sigterm_drains_fails_open_and_restart_intercepts_again() {
    if !privileged("sigterm_drains_fails_open_and_restart_intercepts_again") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.8:0", None);
    let mut d = Daemon::start("drain");
    let (cg, rel) = test_cgroup("smt-drain");
    d.enable(&rel, "ebpf-connect");
    // In flight when SIGTERM arrives: 40 round trips over 2 s on one intercepted connection.
    let long = PingPong::start(cg.path(), echo.addr, 40, 50);
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.sigterm();
    d.wait_log("shutting down", 1);
    // While the agent drains, new connections from the app go direct (listener closed first).
    let r = client(Some(cg.path()), echo.addr, 65536, "blocking");
    assert_eq!(r["ok"], true, "fail-open during drain: {r}");
    assert_eq!(
        long.finish(),
        "ok 40",
        "the accepted connection was cut by the shutdown"
    );
    assert!(d.wait_exit(), "daemon exits cleanly after draining");
    // Restarted: intercepted again without enabling.
    d.spawn();
    let before = d.counters(&rel).0;
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel).0, before + 1);
    assert!(
        d.counters(&rel).2 >= 1,
        "the direct connect during the drain was counted as fail-open"
    );
}

/// `sockmesh-testpeer motan2-call` from inside `cgroup`; the printed JSON.
fn motan2_call(cgroup: &std::path::Path, connect: std::net::SocketAddr, service: &str) -> serde_json::Value {
    let out = std::process::Command::new(peer_bin())
        .args(["motan2-call", "--cgroup"])
        .arg(cgroup)
        .args([
            "--connect",
            &connect.to_string(),
            "--service",
            service,
            "--arg",
            "ping",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "motan2-call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn intercepted_motan2_requests_are_routed_by_service() {
    if !privileged("intercepted_motan2_requests_are_routed_by_service") {
        return;
    }
    let _g = serial();
    let provider = Provider::start("routed-provider", 0);
    let motan = format!(
        "motan-registry:\n  servers:\n    protocol: direct\n    address: \"{}\"\nmotan-refer:\n  echo:\n    path: com.example.Echo\n    group: g1\n    registry: servers\n",
        provider.addr
    );
    let d = Daemon::launch("motan2-routed", Ports::pick(), &motan, "");
    let (cg, rel) = test_cgroup("smt-motan2");
    d.enable(&rel, "ebpf-connect");
    // The app dials a loopback port where nothing listens: only the mesh can answer.
    let nowhere: std::net::SocketAddr = format!("127.0.0.3:{}", free_ports(1)[0]).parse().unwrap();
    let r = motan2_call(cg.path(), nowhere, "com.example.Echo");
    assert_eq!(r["exception"], serde_json::Value::Null, "{r}");
    assert_eq!(r["provider"], "routed-provider", "{r}");
    assert_eq!(r["body"], "ping");
    assert_eq!(r["id"], 77, "the app's own request id comes back");
    let st = d.admin_json("/sockmesh/status");
    assert_eq!(st["transparent_proxy"]["routed"], 1, "{st}");

    // A Motan2 request for a service no cluster knows goes to its original destination.
    let echo = EchoServer::start("127.0.0.2:0", None);
    let r = motan2_call(cg.path(), echo.addr, "com.example.Unknown");
    // The echo server returns the request itself: a request frame, so no provider meta.
    assert_eq!(r["provider"], serde_json::Value::Null, "{r}");
    assert_eq!(d.admin_json("/sockmesh/status")["transparent_proxy"]["routed"], 1);
    assert!(d.counters(&rel).0 >= 2);
}
