//! `sockmesh run` started the way motan-go's init scripts start motan-go (issue #20): the
//! single-dash flags, each checked on a real agent through its listening ports, admin API and
//! files; pool mode on motan-go's own example directory (tests/data/motan-go-pool);
//! `MESH_DIRECT_RPC`; and `registerMeta` with `META_*` variables in the URL a real ZooKeeper
//! holds.
mod common;
#[path = "common/zk.rs"]
mod zk_server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{PinDir, Provider, SVC, bin, free_ports};
use sockmesh_testkit::{ChildProcess, agent, http, ports::accepts};
use zk_server::{children, raw_client, zookeeper};

/// A test's directory, removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One agent started with motan-go's flags (stopped on drop, by its PID).
struct FlagAgent {
    child: Option<ChildProcess>,
    admin: SocketAddr,
    control: PathBuf,
    log: PathBuf,
    _pins: PinDir,
}

/// The `sockmesh` section every test agent needs (own control socket and pin directory, no
/// interception), to be appended to a configuration file.
fn sockmesh_section(dir: &Path, tport: u16) -> (String, PinDir, PathBuf) {
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sockmesh-test-{}-{}",
        dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let control = dir.join("control/control.sock");
    std::fs::create_dir_all(control.parent().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(control.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "sockmesh:\n  admin:\n    control_socket: {}\n  intercept:\n    enabled: false\n    transparent_port: {tport}\n    pin_dir: {}\n",
        control.display(),
        pin_dir.display()
    );
    (text, PinDir::new(bin(), &pin_dir), control)
}

fn test_dir(name: &str) -> (Scratch, PathBuf) {
    let dir = std::env::temp_dir().join(format!("smflags-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (Scratch(dir.clone()), dir)
}

impl FlagAgent {
    /// `sockmesh run ARGS` (ARGS as an init script writes them), in `dir`, with `envs`; waits
    /// for the admin API at 127.0.0.1:`mport`.
    fn start(
        dir: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        mport: u16,
        pins: PinDir,
        control: PathBuf,
    ) -> FlagAgent {
        let log = dir.join("agent.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = ChildProcess::spawn("sockmesh run (motan-go flags)", &mut cmd).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
        agent::await_admin(&mut child, admin, &log).unwrap();
        FlagAgent {
            child: Some(child),
            admin,
            control,
            log,
            _pins: pins,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().pid()
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http::get(self.admin, path).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn control(&self, path: &str) {
        let (code, body) = http::unix_request(&self.control, "GET", path, "").unwrap();
        assert_eq!(code, 200, "{path}: {body}");
    }

    /// SIGTERM (our child, by PID) and wait for a clean exit.
    fn stop(&mut self) {
        let mut c = self.child.take().unwrap();
        c.signal(libc::SIGTERM).unwrap();
        let status = c.wait().unwrap();
        assert!(status.success(), "exit {status:?}; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Write `motan` and our `sockmesh` section (transparent port `tport`) to `dir`/motan.yaml and
/// start `sockmesh run -c FILE ARGS` with `envs`; its admin API on `mport`.
fn start_with_file(
    dir: &Path,
    tport: u16,
    motan: &str,
    args: &[String],
    envs: &[(&str, &str)],
    mport: u16,
) -> FlagAgent {
    let (section, pins, control) = sockmesh_section(dir, tport);
    let conf = dir.join("motan.yaml");
    std::fs::write(&conf, format!("{motan}{section}")).unwrap();
    let mut all = s(&["-c", conf.to_str().unwrap()]);
    all.extend_from_slice(args);
    FlagAgent::start(dir, &all, envs, mport, pins, control)
}

/// Every flag on one agent whose file says otherwise: ports listen where the flags say,
/// `-pidfile` holds the PID (gone after a clean stop), `-idc` resolves `${idc}`, `-localIP`
/// is the registered address. (`-application` and `-pool`: the pool test.)
#[test]
fn flags_win_over_the_file() {
    if !common::privileged("flags_win_over_the_file") {
        return;
    }
    let (_scratch, dir) = test_dir("flags");
    let p = free_ports(10);
    let (file_ports, flag_ports) = (&p[0..4], &p[4..8]);
    let tport = p[8];
    let pidfile = dir.join("agent.pid");
    let motan = format!(
        "motan-agent:\n  port: {}\n  mport: {}\n  eport: {}\n  hport: {}\n  httpProxyEnable: true\n  pidfile: {}/other.pid\n  initClusterTimeout: 700\n\
             motan-registry:\n  d: {{protocol: direct, address: \"127.0.0.1:1\"}}\n\
             motan-refer:\n  r:\n    path: {SVC}\n    group: \"echo-${{idc}}\"\n    registry: d\n\
             motan-service:\n  s:\n    path: {SVC}\n    group: g\n    registry: d\n    export: \"motan2:{}\"\n    provider: motan2\n    proxy: \"motan2:1\"\n",
        file_ports[0],
        file_ports[1],
        file_ports[2],
        file_ports[3],
        dir.display(),
        flag_ports[2]
    );
    let args: Vec<String> = vec![
        format!("-port={}", flag_ports[0]),
        "-mport".into(),
        flag_ports[1].to_string(),
        "-eport".into(),
        flag_ports[2].to_string(),
        "-hport".into(),
        flag_ports[3].to_string(),
        "-pidfile".into(),
        pidfile.display().to_string(),
        "-idc".into(),
        "yf".into(),
        "-localIP".into(),
        "127.0.0.7".into(),
    ];
    let mut a = start_with_file(&dir, tport, &motan, &args, &[], flag_ports[1]);
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for (i, name) in ["port", "mport", "eport", "hport"].iter().enumerate() {
        assert!(
            accepts(local(flag_ports[i])),
            "-{name} {} does not listen",
            flag_ports[i]
        );
        assert!(
            !accepts(local(file_ports[i])),
            "the file's {name} {} listens",
            file_ports[i]
        );
    }
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        a.pid().to_string()
    );
    let reg = a.json("/registry/list");
    assert_eq!(reg["subscriptions"][0]["group"], "echo-yf", "{reg}");
    assert_eq!(
        reg["registrations"][0]["address"],
        format!("127.0.0.7:{}", flag_ports[2]),
        "{reg}"
    );
    let status = a.json("/sockmesh/status");
    assert!(
        status["config"].as_str().unwrap().ends_with("motan.yaml"),
        "{status}"
    );
    a.stop();
    assert!(!pidfile.exists(), "pidfile left after a clean stop");
}

/// `-recover`: the status set with /200 or /503 is saved in runtime_dir and restored by a
/// restart with `-recover`; without it the agent starts at 503 as before.
#[test]
fn recover_restores_the_saved_status() {
    if !common::privileged("recover_restores_the_saved_status") {
        return;
    }
    let (_scratch, dir) = test_dir("recover");
    let runtime = dir.join("runtime");
    let p = free_ports(4);
    let motan = format!(
        "motan-agent:\n  port: {}\n  mport: {}\n  eport: {}\n  runtime_dir: {}\n",
        p[0],
        p[1],
        p[2],
        runtime.display()
    );
    let start = |args: &[&str]| start_with_file(&dir, p[3], &motan, &s(args), &[], p[1]);
    let status = |a: &FlagAgent| a.json("/sockmesh/status")["status"].as_i64().unwrap();

    let mut a = start(&[]);
    assert_eq!(status(&a), 503);
    a.control("/200");
    assert_eq!(std::fs::read_to_string(runtime.join("status")).unwrap(), "200");
    a.stop();

    let mut a = start(&["-recover"]);
    assert_eq!(status(&a), 200, "-recover after /200");
    assert_eq!(http::get(a.admin, "/").unwrap().0, 200);
    a.control("/503");
    assert_eq!(std::fs::read_to_string(runtime.join("status")).unwrap(), "503");
    a.stop();

    let mut a = start(&["-recover"]);
    assert_eq!(status(&a), 503, "-recover after /503");
    a.control("/200");
    a.stop();
    let mut a = start(&[]);
    assert_eq!(status(&a), 503, "without -recover the saved 200 is not used");
    a.stop();
}

/// Copy tests/data/motan-go-pool (motan-go's main/confsDemo/mesh-confs) to `dir`, with the
/// fixed export port 19982 replaced by `eport` and our `sockmesh` section in basic.yaml.
fn pool_copy(dir: &Path, eport: u16, section: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/motan-go-pool");
    let dst = dir.join("mesh-confs");
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        std::fs::create_dir_all(dst.join(&rel)).unwrap();
        for e in std::fs::read_dir(src.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else {
                let text = std::fs::read_to_string(e.path())
                    .unwrap()
                    .replace("19982", &eport.to_string());
                std::fs::write(dst.join(&r), text).unwrap();
            }
        }
    }
    let basic = dst.join("basic.yaml");
    let text = std::fs::read_to_string(&basic).unwrap();
    std::fs::write(&basic, format!("{text}\n{section}")).unwrap();
    dst
}

/// Pool mode on motan-go's example directory: `-pool server_demo-yf` exports the http service
/// of http/service/server_demo.yaml with the group its pool's dynamic-param gives and the one
/// of http/pools/server_demo-yf.yaml; `-pool client_demo-yf` imports services/api.demo.com.yaml
/// (import-refer) and http/location/api.demo.com.yaml (import-http-location).
#[test]
fn pool_mode_on_motan_go_example_configs() {
    if !common::privileged("pool_mode_on_motan_go_example_configs") {
        return;
    }
    let (_scratch, dir) = test_dir("pool");
    let p = free_ports(5);
    let (section, pins, control) = sockmesh_section(&dir, p[4]);
    let confs = pool_copy(&dir, p[2], &section);
    let args = |pool: &str| {
        s(&[
            "-c",
            confs.to_str().unwrap(),
            "-pool",
            pool,
            "-port",
            &p[0].to_string(),
            "-mport",
            &p[1].to_string(),
            "-eport",
            &p[3].to_string(),
            "-hport",
            &p[3].to_string(),
        ])
    };
    let mut a = FlagAgent::start(&dir, &args("server_demo-yf"), &[], p[1], pins, control);
    let status = a.json("/sockmesh/status");
    let mut exports: Vec<(String, String, String)> = status["mesh"]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["service"].as_str().unwrap().to_string(),
                e["group"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    exports.sort();
    assert_eq!(
        exports,
        [
            (
                "api.demo.com-test".into(),
                "test".into(),
                "yf-api.demo.com".into()
            ),
            (
                "yf-api.demo.com-test1".into(),
                "test1".into(),
                "yf-api.demo.com".into()
            ),
        ],
        "{status}"
    );
    assert!(accepts(SocketAddr::from(([127, 0, 0, 1], p[2]))), "export port");
    a.stop();

    let (_, pins, control) = sockmesh_section(&dir, p[4]);
    let mut a = FlagAgent::start(&dir, &args("client_demo-yf"), &[], p[1], pins, control);
    let status = a.json("/sockmesh/status");
    let source = status["config"].as_str().unwrap();
    for f in [
        "basic.yaml",
        "applications/client_demo.yaml",
        "services/api.demo.com.yaml",
        "http/location/api.demo.com.yaml",
        "pools/client_demo-yf.yaml",
    ] {
        assert!(source.contains(f), "{f} not read: {source}");
    }
    a.stop();

    // `-application` alone picks the application's files (no pool files, so the group's
    // placeholder stays as text, as in motan-go).
    let (_, pins, control) = sockmesh_section(&dir, p[4]);
    let mut only_app = args("x");
    only_app.drain(2..4);
    only_app.extend(s(&["-application", "server_demo"]));
    let mut a = FlagAgent::start(&dir, &only_app, &[], p[1], pins, control);
    let status = a.json("/sockmesh/status");
    let names: Vec<&str> = status["mesh"]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api.demo.com-test"], "{status}");
    assert!(!status["config"].as_str().unwrap().contains("pools/"), "{status}");
    a.stop();
}

/// `MESH_DIRECT_RPC=<service suffix>>host:port` sends a refer's calls to that server instead of
/// its registry's (here one that has only a dead address). Also: the `mport` variable wins
/// over the key.
#[test]
fn mesh_direct_rpc_replaces_the_registry() {
    if !common::privileged("mesh_direct_rpc_replaces_the_registry") {
        return;
    }
    let provider = Provider::start("direct-p", 0);
    let (_scratch, dir) = test_dir("direct");
    let p = free_ports(5);
    let motan = format!(
        "motan-agent:\n  port: {}\n  mport: {}\n  eport: {}\n\
         motan-registry:\n  d: {{protocol: direct, address: \"127.0.0.1:1\"}}\n\
         motan-refer:\n  r:\n    path: {SVC}\n    group: g1\n    registry: d\n    requestTimeout: 3000\n",
        p[0], p[4], p[2]
    );
    let rule = format!("Echo>{}", provider.addr);
    let a = start_with_file(
        &dir,
        p[3],
        &motan,
        &[],
        // motan-go reads `mport` from the environment before the key (here p[4]).
        &[("MESH_DIRECT_RPC", &rule), ("mport", &p[1].to_string())],
        p[1],
    );
    let reg = a.json("/registry/list");
    assert_eq!(
        reg["subscriptions"][0]["registries"],
        serde_json::json!(["MESH_DIRECT_RPC:Echo"]),
        "{reg}"
    );
    motan::rt().block_on(async {
        let ch = motan::connect(SocketAddr::from(([127, 0, 0, 1], p[0]))).await;
        let resp = motan::call(&ch, motan::request(SVC, "echo", &[], &[Value::from("hi")])).await;
        assert_eq!(motan::exception(&resp), None, "{resp:?}");
        assert_eq!(motan::meta(&resp, "provider"), "direct-p");
    });
}

/// `registerMeta: true` puts the agent's `META_*` variables (or `envMetaPrefix`'s) into the
/// service URL it registers in ZooKeeper; a service without it does not carry them.
#[test]
fn register_meta_puts_env_meta_into_the_zookeeper_node() {
    if !common::privileged("register_meta_puts_env_meta_into_the_zookeeper_node") {
        return;
    }
    let Some(zk) = zookeeper("register-meta") else {
        return;
    };
    let (_scratch, dir) = test_dir("meta");
    let p = free_ports(4);
    let motan = format!(
        "motan-agent:\n  port: {}\n  mport: {}\n  eport: {}\n  snapshot_dir: {}/snap\n\
             motan-registry:\n  zk: {{protocol: zookeeper, host: 127.0.0.1, port: {}}}\n\
             motan-service:\n  with:\n    path: {SVC}\n    group: meta-on\n    registry: zk\n    export: \"motan2:{}\"\n    proxy: \"motan2:1\"\n    registerMeta: true\n\
             \x20 without:\n    path: {SVC}\n    group: meta-off\n    registry: zk\n    export: \"motan2:{}\"\n    proxy: \"motan2:1\"\n",
        p[0],
        p[1],
        p[2],
        dir.display(),
        zk.port(),
        p[2],
        p[2]
    );
    let a = start_with_file(
        &dir,
        p[3],
        &motan,
        &s(&["-localIP", "127.0.0.5"]),
        &[("META_IDC", "yf"), ("META_WEIGHT", "7"), ("OTHER_X", "1")],
        p[1],
    );
    let node = format!("127.0.0.5:{}", p[2]);
    motan::rt().block_on(async {
        let c = raw_client(&zk).await;
        let url_of = |group: &'static str| {
            let (c, node) = (&c, node.clone());
            async move {
                let base = format!("/motan/{group}/{SVC}/unavailableServer");
                let deadline = Instant::now() + Duration::from_secs(10);
                while !children(c, &base).await.contains(&node) {
                    assert!(Instant::now() < deadline, "{base}/{node} not registered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let (data, _) = c.get_data(&format!("{base}/{node}")).await.unwrap();
                sockmesh::url::Url::parse_node(&sockmesh::url::Url::node_data_text(&data)).unwrap()
            }
        };
        let on = url_of("meta-on").await;
        assert_eq!(on.param("META_IDC"), Some("yf"), "{on:?}");
        assert_eq!(on.param("META_WEIGHT"), Some("7"), "{on:?}");
        assert_eq!(on.param("OTHER_X"), None, "{on:?}");
        assert_eq!(on.host, "127.0.0.5");
        let off = url_of("meta-off").await;
        assert_eq!(off.param("META_IDC"), None, "{off:?}");
    });
    drop(a);
}

/// `initClusterTimeout` (ms) bounds how long start-up waits for a refer whose registry does
/// not answer (a ZooKeeper address where nothing listens); the agent then serves anyway.
#[test]
fn init_cluster_timeout_bounds_the_wait() {
    if !common::privileged("init_cluster_timeout_bounds_the_wait") {
        return;
    }
    let (_scratch, dir) = test_dir("inittimeout");
    let p = free_ports(5);
    let motan = format!(
        "motan-agent:\n  port: {}\n  mport: {}\n  eport: {}\n  initClusterTimeout: 600\n  snapshot_dir: {}/snap\n\
             motan-registry:\n  zk: {{protocol: zookeeper, host: 127.0.0.1, port: {}}}\n\
             motan-refer:\n  r:\n    path: {SVC}\n    group: g1\n    registry: zk\n",
        p[0],
        p[1],
        p[2],
        dir.display(),
        p[4]
    );
    let a = start_with_file(&dir, p[3], &motan, &[], &[], p[1]);
    // The line comes once the 600 ms are up (the admin API may answer before): waited for, not
    // looked for after a fixed sleep that a loaded machine can outlast.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log().contains("cluster not fully connected after 600ms") {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
