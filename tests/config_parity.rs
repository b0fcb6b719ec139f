//! `sockmesh config validate` accepts exactly what `sockmesh run` runs (issue #14): every
//! configuration in the table goes to both, as files, and the verdicts must agree with each
//! other and with the expected one. Runs without interception (no BPF needed), on loopback
//! ports picked per case.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_ports};

/// (name, motan sections, expected verdict: true = accepted)
const CASES: &[(&str, &str, bool)] = &[
    (
        "motan2 export and a refer over a direct registry",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: g, registry: d, filter: \"accessLog,metrics\"}\nmotan-service:\n  s: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:1\"}\n",
        true,
    ),
    (
        "http provider with proxyAddress and motan-go's default enableRewrite, no http-locations",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.example.com}\n",
        true,
    ),
    (
        "a refer without registry (warned, never has endpoints)",
        "motan-refer:\n  r: {path: com.example.A, group: g}\n",
        true,
    ),
    (
        "unknown filter on a refer",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: g, registry: d, filter: \"accessLog,nope\"}\n",
        false,
    ),
    (
        "unknown filter on a service",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  s: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:1\", filter: nope}\n",
        false,
    ),
    (
        "bad consistentHashKey.source",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: g, registry: d, loadbalance: consistentHashKey, consistentHashKey.source: \"body\"}\n",
        false,
    ),
    (
        "unknown haStrategy",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: g, registry: d, haStrategy: roulette}\n",
        false,
    ),
    (
        "unknown loadbalance",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: g, registry: d, loadbalance: dice}\n",
        false,
    ),
    (
        "a refer naming a registry that does not exist",
        "motan-refer:\n  r: {path: com.example.A, group: g, registry: nowhere}\n",
        false,
    ),
    (
        "the same group and path exported twice on one port",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  a: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:1\"}\n  b: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:2\"}\n",
        false,
    ),
    (
        "http provider in URL_FORMAT mode (not served yet)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"http://127.0.0.1:1/%s\"}\n",
        false,
    ),
    (
        "http provider on a unix socket (not served yet)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"unix:///run/app.sock\"}\n",
        false,
    ),
    (
        "http provider whose domain has http-locations rules (rewriting not served yet)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /, type: start, upstream: api}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.example.com}\n",
        false,
    ),
    (
        "motan2 provider without proxy",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  s: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", provider: motan2}\n",
        false,
    ),
    (
        "proxy.host that is not an IP address",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  s: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:1\", proxy.host: backend.local}\n",
        false,
    ),
    (
        "zookeeper registry without address",
        "motan-registry:\n  zk: {protocol: zookeeper}\n",
        false,
    ),
];

/// `control` is the case's own control socket, in a directory the daemon creates.
fn config_text(motan: &str, ports: &[u16], control: &Path) -> String {
    let [port, eport, mport, tport] = [ports[0], ports[1], ports[2], ports[3]];
    format!(
        "motan-agent:\n  port: {port}\n  eport: {eport}\n  mport: {mport}\n  application: parity\n\
         sockmesh:\n  admin:\n    control_socket: {}\n  intercept:\n    enabled: false\n    transparent_port: {tport}\n{}",
        control.display(),
        motan.replace("EPORT", &eport.to_string())
    )
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["config", "validate"])
        .arg(file)
        .output()
        .expect("run sockmesh config validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Start `sockmesh run`: accepted when its admin API answers, refused when it exits first.
fn run(file: &Path, mport: u16, log: &Path) -> (bool, String) {
    let logf = std::fs::File::create(log).unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("spawn sockmesh run");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], mport));
    let deadline = Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "run exited 0 before serving");
            break false;
        }
        if std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(100)).is_ok() {
            break true;
        }
        assert!(
            Instant::now() < deadline,
            "sockmesh run neither served nor exited within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    if accepted {
        // SAFETY: a signal to the child this test started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let _ = child.wait();
    (accepted, std::fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn validate_and_run_give_the_same_verdict() {
    let dir = std::env::temp_dir().join(format!("sockmesh-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut mismatches = Vec::new();
    for (n, (name, motan, expected)) in CASES.iter().enumerate() {
        let ports = free_ports(4);
        let file = dir.join(format!("case{n}.yaml"));
        let control = dir.join(format!("case{n}/control.sock"));
        std::fs::write(&file, config_text(motan, &ports, &control)).unwrap();
        let (v_ok, v_out) = validate(&file);
        let (r_ok, r_out) = run(&file, ports[2], &dir.join(format!("case{n}.log")));
        println!("{name}: validate {v_ok}, run {r_ok}, expected {expected}");
        if v_ok != r_ok || v_ok != *expected {
            mismatches.push(format!(
                "{name}: validate {v_ok}, run {r_ok}, expected {expected}\n  validate said: {}\n  run said: {}",
                v_out.trim(),
                r_out.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
