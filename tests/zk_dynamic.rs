//! Dynamic registration through the admin API (motan-go's `/registry/register`, `/unregister`,
//! `/subscribe`, `/list`, `/info`) against a real ZooKeeper started per test on loopback: a
//! provider registers itself through its server agent, as Weibo Mesh providers do at start-up;
//! a client agent finds it through ZooKeeper; the registration survives a restart of the server
//! agent while ZooKeeper is down (the `registry.snap` snapshot); bad requests get a 400.
mod common;
#[path = "common/zk.rs"]
mod zk_server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr};
use sockmesh_testkit::http;
use zk_server::{ZkServer, raw_client as raw, zookeeper};

const GROUP: &str = "dyng";

fn zk_registry(zk: &ZkServer) -> String {
    format!(
        "motan-registry:\n  zk:\n    protocol: zookeeper\n    host: 127.0.0.1\n    port: {}\n    registrySessionTimeout: 4\n",
        zk.port()
    )
}

/// The daemon's directory (the test kit's naming; removed when the daemon is dropped): its
/// runtime directory, with the registry snapshots, goes inside.
fn runtime_dir(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("sockmesh-test-{name}-{}", std::process::id()))
        .join("runtime")
}

/// An agent on ZooKeeper with `motan` sections after the registry; `admin`: extra
/// `sockmesh.admin` keys.
fn agent(name: &str, zk: &ZkServer, admin: &str, motan: &str) -> Daemon {
    let dir = runtime_dir(name);
    let keys = format!(
        "  runtime_dir: {}\n  snapshot_dir: {}\n  localIP: 127.0.0.1\n",
        dir.display(),
        dir.display()
    );
    let motan = format!("{}{motan}", zk_registry(zk));
    Daemon::launch_admin(name, Ports::pick(), &keys, admin, &motan, "    enabled: false\n")
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server node of the service in ZooKeeper: its session and creation (`None`: no such node).
fn server_node(rt: &tokio::runtime::Runtime, zk: &ZkServer, server: &Daemon) -> Option<(i64, i64)> {
    rt.block_on(async {
        let c = raw(zk).await;
        let node = format!("/motan/{GROUP}/{SVC}/server/127.0.0.1:{}", server.ports.eport);
        match c.get_data(&node).await {
            Ok((data, stat)) => {
                let url = sockmesh::url::Url::parse_node(&sockmesh::url::Url::node_data_text(&data)).unwrap();
                assert_eq!((url.path.as_str(), url.group.as_str()), (SVC, GROUP), "{url:?}");
                Some((stat.ephemeral_owner, stat.czxid))
            }
            Err(zookeeper_client::Error::NoNode) => None,
            Err(e) => panic!("reading {node}: {e}"),
        }
    })
}

/// One call through `client`'s agent port: the answering provider's name, or the exception.
fn call(rt: &tokio::runtime::Runtime, client: &Daemon) -> Result<String, String> {
    rt.block_on(async {
        let ch = motan::connect(agent_addr(client)).await;
        let r = motan::call(
            &ch,
            motan::request(SVC, "echo", &[("M_g", GROUP)], &[Value::from("x")]),
        )
        .await;
        match motan::exception(&r) {
            None => Ok(motan::meta(&r, "provider").to_string()),
            Some(e) => Err(format!("{e:?}")),
        }
    })
}

/// motan-go's answer: HTTP status and `code` agree; `message` says what happened.
fn motan_answer(what: &str, (status, body): (u16, String)) -> (u16, String) {
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(v["code"], status, "{what}: {body}");
    (status, v["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn provider_registers_through_its_agent_and_survives_a_restart_while_zookeeper_is_down() {
    let _serial = common::serial();
    let Some(mut zk) = zookeeper("zk-dynamic") else {
        return;
    };
    let rt = motan::rt();
    let provider = Provider::start("pdyn", 0);
    // The server agent: no motan-service entries; its provider registers through the TCP
    // management port, as motan-go providers do, which needs these in tcp_mutations.
    let mut server = agent(
        "dyn-server",
        &zk,
        "    tcp_mutations: [\"/200\", \"/registry/register\", \"/registry/unregister\"]\n",
        "",
    );
    let (code, body) = http::get(server.admin, "/200").unwrap();
    assert_eq!(code, 200, "{body}");

    // Registration as a form POST on the management port; the provider names the registry
    // by its address, as motan-go's mesh registry does.
    let form = format!(
        "path={SVC}&group={GROUP}&port={}&proxyRegistry=zookeeper://127.0.0.1:{}&serialization=simple",
        provider.addr.port(),
        zk.port()
    );
    let t0 = Instant::now();
    let (code, msg) = motan_answer(
        "register",
        http::post(server.admin, "/registry/register", &form).unwrap(),
    );
    assert_eq!((code, msg.as_str()), (200, "ok"));
    let answered = t0.elapsed();
    wait_for("the registration in ZooKeeper", Duration::from_secs(10), || {
        server_node(&rt, &zk, &server).is_some()
    });
    eprintln!(
        "register answered in {answered:?}, node in ZooKeeper after {:?}",
        t0.elapsed()
    );
    let list = server.admin_json("/registry/list");
    let node = &list["body"]["register_nodes"][0];
    assert_eq!(node["path"], SVC, "{list}");
    assert_eq!(node["group"], GROUP, "{list}");
    assert_eq!(node["port"], server.ports.eport, "{list}");
    assert_eq!(
        node["parameters"]["proxy"],
        format!("motan2:{}", provider.addr.port()),
        "{list}"
    );
    assert_eq!(node["parameters"]["registry"], "zk", "{list}");
    assert_eq!(list["body"]["subscribe_nodes"], serde_json::json!([]), "{list}");
    assert_eq!(
        list["registries"][0]["name"], "zk",
        "sockmesh's fields stay: {list}"
    );
    let info = server.admin_json("/registry/info");
    assert_eq!(info["body"]["mesh_port"], server.ports.port, "{info}");
    let snap = std::fs::read_to_string(runtime_dir("dyn-server").join("registry.snap")).unwrap();
    assert!(snap.contains(SVC) && snap.contains("register_nodes"), "{snap}");

    // A client agent referring the service through ZooKeeper routes to the provider.
    let client = agent(
        "dyn-client",
        &zk,
        "",
        &format!(
            "motan-refer:\n  echo:\n    path: {SVC}\n    group: {GROUP}\n    registry: zk\n    requestTimeout: 3000\n"
        ),
    );
    wait_for("a call routed to the provider", Duration::from_secs(10), || {
        call(&rt, &client).as_deref() == Ok("pdyn")
    });

    // A reload that changes the motan sections keeps the dynamic registration (the same node,
    // not a new one).
    let owner = server_node(&rt, &zk, &server);
    server.rewrite_motan(&format!("{}switcher:\n  dyn.test: true\n", zk_registry(&zk)));
    let (code, body) = server.control_post("/reload");
    assert!(code == 200 && body.contains("motan sections"), "{code} {body}");
    assert_eq!(server_node(&rt, &zk, &server), owner);
    assert_eq!(call(&rt, &client).as_deref(), Ok("pdyn"));

    // A subscription as motan-go's mesh registry sends it (JSON), on the control socket of an
    // agent with no refers: the refer is added, and calls through it route.
    let sub = agent("dyn-sub", &zk, "", "");
    let json = format!(
        r#"{{"protocol":"motan2","host":"","port":0,"path":"{SVC}","group":"{GROUP}","parameters":{{"proxyRegistry":"zookeeper://127.0.0.1:{}","requestTimeout":"3000"}}}}"#,
        zk.port()
    );
    let (code, msg) = motan_answer(
        "subscribe",
        http::unix_request(&sub.control, "POST", "/registry/subscribe", &json).unwrap(),
    );
    assert_eq!((code, msg.as_str()), (200, "ok"));
    wait_for("a call through the subscription", Duration::from_secs(10), || {
        call(&rt, &sub).as_deref() == Ok("pdyn")
    });
    assert_eq!(
        sub.admin_json("/registry/list")["body"]["subscribe_nodes"][0]["path"],
        SVC
    );

    // ZooKeeper down; the server agent restarts meanwhile: it recovers the registration from
    // its snapshot and registers it again when ZooKeeper is back, in a session of its own.
    let (before, _) = server_node(&rt, &zk, &server).expect("registered");
    zk.stop();
    server.kill9();
    server.spawn();
    let (code, body) = http::get(server.admin, "/200").unwrap();
    assert_eq!(code, 200, "{body}");
    server.wait_log("dynamic registrations recovered from the snapshot", 1);
    let list = server.admin_json("/registry/list");
    assert_eq!(
        list["body"]["register_nodes"][0]["path"], SVC,
        "recovered: {list}"
    );
    zk.spawn().unwrap();
    let t0 = Instant::now();
    wait_for(
        "the registration back in ZooKeeper",
        Duration::from_secs(30),
        || server_node(&rt, &zk, &server).is_some_and(|(owner, _)| owner != before),
    );
    eprintln!(
        "registration recovered from the snapshot {:?} after ZooKeeper answered again",
        t0.elapsed()
    );
    wait_for("calls routed again", Duration::from_secs(15), || {
        call(&rt, &client).as_deref() == Ok("pdyn")
    });
    // The subscriber's refer too comes back after its restart.
    let mut sub = sub;
    sub.kill9();
    sub.spawn();
    wait_for(
        "a call through the recovered subscription",
        Duration::from_secs(10),
        || call(&rt, &sub).as_deref() == Ok("pdyn"),
    );

    // Unregister (the motan-go JSON form) removes the node and the snapshot entry.
    let json = format!(
        r#"{{"protocol":"motan2","port":{},"path":"{SVC}","group":"{GROUP}","parameters":{{"proxyRegistry":"zookeeper://127.0.0.1:{}"}}}}"#,
        provider.addr.port(),
        zk.port()
    );
    let (code, msg) = motan_answer(
        "unregister",
        http::post(server.admin, "/registry/unregister", &json).unwrap(),
    );
    assert_eq!((code, msg.as_str()), (200, "ok"));
    wait_for("the node removed from ZooKeeper", Duration::from_secs(10), || {
        server_node(&rt, &zk, &server).is_none()
    });
    assert_eq!(
        server.admin_json("/registry/list")["body"]["register_nodes"],
        serde_json::json!([])
    );
    let snap = std::fs::read_to_string(runtime_dir("dyn-server").join("registry.snap")).unwrap();
    assert!(!snap.contains(SVC), "{snap}");
}

#[test]
fn bad_registrations_get_a_clear_400_and_mutations_need_tcp_mutations() {
    let Some(zk) = zookeeper("zk-dynamic-bad") else {
        return;
    };
    let d = agent(
        "dyn-bad",
        &zk,
        "    tcp_mutations: [\"/registry/register\"]\n",
        "",
    );
    let zk_reg = format!("proxyRegistry=zookeeper://127.0.0.1:{}", zk.port());
    for (body, says) in [
        (format!("group=g&port=1&{zk_reg}"), "missing parameter path"),
        (format!("path=S&port=1&{zk_reg}"), "missing parameter group"),
        (format!("path=S&group=g&{zk_reg}"), "missing parameter port"),
        (format!("path=S&group=g&port=99999&{zk_reg}"), "port 99999"),
        (
            "path=S&group=g&port=1&proxyRegistry=zookeeper://10.1.1.1:2181".to_string(),
            "registry not found",
        ),
        ("url=not-a-url".to_string(), "parameter url"),
        ("{\"path\": \"S\", ".to_string(), "not a motan URL as JSON"),
        (format!("path=a/b&group=g&port=1&{zk_reg}"), "registry node name"),
        // The configuration's checks: an export protocol the agent does not speak.
        (format!("path=S&group=g&port=1&protocol=grpc&{zk_reg}"), "export"),
    ] {
        let (code, msg) = motan_answer(&body, http::post(d.admin, "/registry/register", &body).unwrap());
        assert_eq!(code, 400, "{body}: {msg}");
        assert!(msg.contains(says), "{body}: {msg:?} should say {says:?}");
    }
    // Nothing was registered by any of them.
    assert_eq!(
        d.admin_json("/registry/list")["body"]["register_nodes"],
        serde_json::json!([])
    );
    // A GET of a mutation is a 405; a mutation not in tcp_mutations a 403 that says how.
    let (code, body) = http::get(d.admin, "/registry/register").unwrap();
    assert_eq!(code, 405, "{body}");
    let (code, body) = http::post(d.admin, "/registry/subscribe", "path=S&group=g").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("tcp_mutations"), "{body}");
    // The control socket serves it (and validates the same way).
    let (code, body) = http::unix_request(&d.control, "POST", "/registry/subscribe", "path=S").unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing parameter group"), "{body}");
}
