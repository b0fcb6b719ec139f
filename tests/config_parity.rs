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
        "http provider with proxyAddress and enableRewrite: false (tests/mesh.rs)",
        "motan-service:\n  hello-http: {path: api.hello.com, group: web, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.hello.com, enableRewrite: false}\n",
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
        "http provider in URL_FORMAT mode",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"http://127.0.0.1:1/%s\"}\n",
        true,
    ),
    (
        "http provider on a unix socket",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"unix:///run/app.sock\"}\n",
        true,
    ),
    (
        "http provider whose domain has http-locations rules (rewriting)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /, type: start, upstream: api}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.example.com}\n",
        true,
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
    // The HTTP side (issue #18): every HTTP provider configuration of the test suite's shapes.
    (
        "the Weibo Mesh article's entry (HTTP_URL, basicRefer naming a basicService)",
        "motan-registry:\n  zk-registry: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-basicService:\n  mesh-server-basicService: {group: hello-group}\nmotan-service:\n  http-mesh-example-helloworld: {path: com.weibo.motan.HelloWorldService, export: \"motan2:EPORT\", provider: http, registry: zk-registry, HTTP_URL: \"http://127.0.0.1:1/http_server\", basicRefer: mesh-server-basicService}\n",
        true,
    ),
    (
        "URL_FORMAT with per-method http-service entries",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-service:\n  h:\n    \"a,b\": {URL_FORMAT: \"http://127.0.0.1:1/ab/%s\", HTTP_REQUEST_METHOD: POST}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"http://127.0.0.1:1/%s\"}\n",
        true,
    ),
    (
        "http provider with http-service entries only",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-service:\n  h:\n    http_default_motan_method: {URL_FORMAT: \"http://127.0.0.1:1/x\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, enableRewrite: false}\n",
        true,
    ),
    (
        "http provider with neither proxyAddress nor a URL",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, domain: api.example.com}\n",
        false,
    ),
    (
        "URL_FORMAT with two %s",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"http://127.0.0.1:1/%s/%s\"}\n",
        false,
    ),
    (
        "https URL_FORMAT (no TLS client)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"https://127.0.0.1:1/%s\"}\n",
        false,
    ),
    (
        "HTTP_URL and URL_FORMAT that differ",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, URL_FORMAT: \"http://127.0.0.1:1/a\", HTTP_URL: \"http://127.0.0.1:1/b\"}\n",
        false,
    ),
    (
        "a bad URL_FORMAT in http-service",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-service:\n  h:\n    m: {URL_FORMAT: \"not a url\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\"}\n",
        false,
    ),
    (
        "proxySchema https",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", proxySchema: https}\n",
        false,
    ),
    (
        "an http-locations regexp that does not compile",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: \"(\", type: regexp, upstream: api}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.example.com}\n",
        false,
    ),
    (
        "an http-locations rule of an unknown type",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /, type: prefix, upstream: api}\n",
        false,
    ),
    (
        "a rewrite rule with three fields",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /, upstream: api, rewriteRules: [\"regexp ^/ /x\"]}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"127.0.0.1:1\", domain: api.example.com}\n",
        false,
    ),
    (
        "exact, regexp and regexpVar rules",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /a, type: exact, upstream: api}\n    - {match: \"^/b/.*\", type: iregexp, upstream: api, rewriteRules: [\"regexpVar ^/b ^/b/(.*) /c/{id}/$1\"]}\nmotan-service:\n  h: {path: api.example.com, group: g, registry: d, export: \"motan2:EPORT\", provider: http, proxyAddress: \"unix:///run/app.sock\", domain: api.example.com}\n",
        true,
    ),
    (
        "an http-client with the hport forward proxy on",
        "  hport: HPORT\n  httpProxyEnable: true\n  httpProxyDefaultDomain: api.example.com\n#agent\nmotan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-locations:\n  api.example.com:\n    - {match: /, upstream: api}\nhttp-client:\n  web: {domain: api.example.com, group: g, registry: d}\n",
        true,
    ),
    (
        "two http-client entries for one domain",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-client:\n  a: {domain: api.example.com, registry: d}\n  b: {domain: api.example.com, registry: d}\n",
        false,
    ),
    (
        "an http-client without domain",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-client:\n  a: {registry: d}\n",
        false,
    ),
    (
        "an http-client whose domain is not a host name",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nhttp-client:\n  a: {domain: \"a b\", registry: d}\n",
        false,
    ),
    (
        "hport on the agent port",
        "  hport: PORT\n  httpProxyEnable: true\n#agent\n",
        false,
    ),
    (
        "the forward proxy on a unix socket",
        "  httpProxyUnixSock: /run/h.sock\n#agent\n",
        false,
    ),
    (
        "httpProxyDefaultDomain that no http-client serves",
        "  httpProxyDefaultDomain: nowhere.example.com\n#agent\n",
        false,
    ),
    (
        "motan-go's metrics section and log keys",
        "  log_dir: stdout\n  log_async: true\n  log_structured: false\n  rotate_per_hour: true\n  log_buffer_size: 5000\n#agent\nmetrics:\n  period: 5\n  processor: 1\n  graphite:\n    - {name: g, host: 127.0.0.1, port: 1}\n",
        true,
    ),
    (
        "a graphite port out of range",
        "metrics:\n  graphite:\n    - {name: g, host: 127.0.0.1, port: 70000}\n",
        false,
    ),
    (
        "rotate_per_hour not a boolean",
        "  rotate_per_hour: hourly\n#agent\n",
        false,
    ),
    (
        "a refer group with ${idc}, no -idc and a registry that cannot list groups (warned: used as written)",
        "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: \"g-${idc}\", registry: d}\n",
        true,
    ),
    (
        "a refer group with ${idc} and no -idc in zookeeper (resolved by ping at start)",
        "motan-registry:\n  z: {protocol: zookeeper, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: com.example.A, group: \"g-${idc}\", registry: z}\n",
        true,
    ),
    (
        "initClusterTimeout, runtime_dir and registerMeta",
        "  initClusterTimeout: 500\n  runtime_dir: /tmp/sockmesh-parity-runtime\n#agent\nmotan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-service:\n  s: {path: com.example.A, group: g, registry: d, export: \"motan2:EPORT\", proxy: \"motan2:1\", registerMeta: true}\n",
        true,
    ),
    (
        "initClusterTimeout that is not milliseconds",
        "  initClusterTimeout: soon\n#agent\n",
        false,
    ),
    (
        "the agent port on a unix socket (motan-agent.unixSock)",
        "  unixSock: SOCKDIR/agent.sock\n#agent\n",
        true,
    ),
    (
        "unixSock as a relative path",
        "  unixSock: run/agent.sock\n#agent\n",
        false,
    ),
    (
        "managementUnixSock naming a directory",
        "  managementUnixSock: /run/\n#agent\n",
        false,
    ),
];

/// The configuration of one case: `motan` may start with extra `motan-agent` keys, ended by a
/// `#agent` line; PORT, EPORT and HPORT name the case's ports. `control` is the case's own
/// control socket, in a directory the daemon creates; SOCKDIR is the test's directory (root's,
/// 0755: fit for a Unix socket).
fn config_text(motan: &str, ports: &[u16], control: &Path) -> String {
    let [port, eport, mport, tport, hport] = [ports[0], ports[1], ports[2], ports[3], ports[4]];
    let (agent, motan) = motan.split_once("#agent\n").unwrap_or(("", motan));
    format!(
        "motan-agent:\n  port: {port}\n  eport: {eport}\n  mport: {mport}\n  application: parity\n{agent}\
         sockmesh:\n  admin:\n    control_socket: CONTROL\n  intercept:\n    enabled: false\n    transparent_port: {tport}\n{motan}"
    )
    .replace("EPORT", &eport.to_string())
    .replace("HPORT", &hport.to_string())
    .replace("PORT", &port.to_string())
    .replace("CONTROL", &control.display().to_string())
    .replace("SOCKDIR", &control.parent().unwrap().parent().unwrap().display().to_string())
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
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut mismatches = Vec::new();
    for (n, (name, motan, expected)) in CASES.iter().enumerate() {
        let ports = free_ports(5);
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
