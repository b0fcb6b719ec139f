//! Agents discovering each other through a real ZooKeeper (started per test on loopback):
//! server-role registration and /200 /503, client-role discovery and routing, commands
//! (traffic shifting, degrade, switcher), ZooKeeper outages and snapshots.
mod common;
#[path = "common/zk.rs"]
mod zk_server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr};
use zk_server::{ZkServer, children, raw_client as raw, zookeeper};
use zookeeper_client as zk;

fn zk_registry(zk: &ZkServer) -> String {
    format!(
        "motan-registry:\n  zk:\n    protocol: zookeeper\n    host: 127.0.0.1\n    port: {}\n    registrySessionTimeout: 4\n",
        zk.port()
    )
}

/// A server agent exporting SVC in `group` through ZooKeeper, backed by `provider`.
fn server_agent(name: &str, zk: &ZkServer, group: &str, provider: SocketAddr) -> Daemon {
    let ports = Ports::pick();
    let motan = format!(
        "{}motan-service:\n  echo:\n    path: {SVC}\n    group: {group}\n    registry: zk\n    export: \"motan2:{}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n",
        zk_registry(zk),
        ports.eport,
        provider.port()
    );
    Daemon::mesh_with_agent(name, ports, &agent_keys(name), &motan)
}

fn agent_keys(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sockmesh-test-snap-{name}-{}", std::process::id()));
    format!(
        "  snapshot_dir: {}\n  localIP: 127.0.0.1\n  registry: zk\n",
        dir.display()
    )
}

/// A client agent referring SVC in `group` through ZooKeeper.
fn client_agent(name: &str, zk: &ZkServer, group: &str, extra: &str) -> Daemon {
    let motan = format!(
        "{}motan-refer:\n  echo:\n    path: {SVC}\n    group: {group}\n    registry: zk\n    requestTimeout: 3000\n    haStrategy: failover\n    retries: 1\n{extra}",
        zk_registry(zk)
    );
    Daemon::mesh_with_agent(name, Ports::pick(), &agent_keys(name), &motan)
}

// GET, as motan-go's deploy scripts call them; on the control socket, which needs no
// sockmesh.admin.tcp_mutations.
fn online(d: &Daemon) {
    let (code, body) = d.control_request("GET", "/200");
    assert_eq!(code, 200, "{body}");
}

fn offline(d: &Daemon) {
    let (code, body) = d.control_request("GET", "/503");
    assert_eq!(code, 200, "{body}");
}

/// Addresses of the client's available endpoints.
fn available(d: &Daemon) -> Vec<String> {
    let st = d.admin_json("/sockmesh/status");
    let mut v: Vec<String> = st["mesh"]["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["available"] == true)
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    t0.elapsed()
}

fn export_of(d: &Daemon) -> String {
    format!("127.0.0.1:{}", d.ports.eport)
}

/// Count answers by provider over `n` sequential calls.
async fn spread(ch: &motan::Channel, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for i in 0..n {
        let r = motan::call(ch, motan::request(SVC, "echo", &[], &[Value::from(i as i64)])).await;
        assert_eq!(motan::exception(&r), None, "request {i}");
        *by.entry(motan::meta(&r, "provider").to_string()).or_default() += 1;
    }
    by
}

#[test]
fn registration_discovery_and_503_moves_traffic_without_failures() {
    // One at a time: several tests compare latencies or count requests per provider.
    let _serial = common::serial();
    let Some(zk) = zookeeper("zk-mesh-503") else {
        return;
    };
    let (pa, pb) = (Provider::start("pa", 0), Provider::start("pb", 0));
    let a = server_agent("zk503-a", &zk, "zkg", pa.addr);
    let b = server_agent("zk503-b", &zk, "zkg", pb.addr);
    let rt = motan::rt();
    // Registered but unavailable until /200 (4.15).
    let path = format!("/motan/zkg/{SVC}");
    rt.block_on(async {
        let c = raw(&zk).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while children(&c, &format!("{path}/unavailableServer")).await.len() < 2 {
            assert!(Instant::now() < deadline, "exports not registered as unavailable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(children(&c, &format!("{path}/server")).await.is_empty());
        // The node data is a motan URL a motan-go/Java reader parses.
        let node = format!("{path}/unavailableServer/{}", export_of(&a));
        let (data, _) = c.get_data(&node).await.unwrap();
        let url = sockmesh::url::Url::parse_node(&sockmesh::url::Url::node_data_text(&data)).unwrap();
        assert_eq!(
            (url.protocol.as_str(), url.path.as_str(), url.group.as_str()),
            ("motan2", SVC, "zkg")
        );
        assert_eq!(url.address(), export_of(&a));
        // The agent's own node (motan-agent registry: zk).
        let agent_nodes = children(&c, "/motan/agent/test-zk503-a/node").await;
        assert_eq!(agent_nodes, vec![format!("127.0.0.1:{}", a.ports.port)]);
    });
    online(&a);
    online(&b);
    let client = client_agent("zk503-client", &zk, "zkg", "    loadbalance: roundrobin\n");
    wait_for("client sees both servers", Duration::from_secs(10), || {
        available(&client).len() == 2
    });

    // Load while server A goes offline: A leaves the client's endpoints within 2 s, no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
        let addr = agent_addr(&client);
        rt.spawn(async move {
            let ch = motan::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let r = ch
                    .call(
                        motan::request(SVC, "echo", &[], &[Value::from("x")]),
                        Duration::from_secs(5),
                    )
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.map(|f| motan::exception(&f).is_some()).unwrap_or(true) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // Counted in requests, not time: a slow host (debug builds, 2 cores) still sends at
    // least 50 before the move and 50 after it.
    wait_for("load running", Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) >= 50
    });
    offline(&a);
    let took = wait_for("A removed from the client", Duration::from_secs(2), || {
        available(&client) == vec![export_of(&b)]
    });
    let moved = sent.load(Ordering::Relaxed);
    wait_for("load after the move", Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) >= moved + 50
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(load).unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the move"
    );
    eprintln!("A left the client's endpoints {took:?} after /503");
    let by = rt.block_on(async { spread(&motan::connect(agent_addr(&client)).await, 50).await });
    assert_eq!(by.get("pb"), Some(&50), "{by:?}");
    let reg = client.admin_json("/registry/list");
    assert_eq!(reg["registries"][0]["connected"], true, "{reg}");
}

/// Write (or with `None` delete) the service command node of `group`.
async fn set_command(c: &zk::Client, group: &str, text: Option<&str>) {
    let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let path = format!("/motan/{group}/command");
    match text {
        Some(t) => {
            let _ = c.mkdir(&format!("/motan/{group}"), &dir).await;
            match c.create(&path, t.as_bytes(), &dir).await {
                Ok(_) => {}
                Err(zk::Error::NodeExists) => {
                    c.set_data(&path, t.as_bytes(), None).await.unwrap();
                }
                Err(e) => panic!("create {path}: {e}"),
            }
        }
        None => c.delete(&path, None).await.unwrap(),
    }
}

#[test]
fn commands_shift_traffic_degrade_and_flip_switchers() {
    // One at a time: several tests compare latencies or count requests per provider.
    let _serial = common::serial();
    let Some(zk) = zookeeper("zk-mesh-commands") else {
        return;
    };
    let (pa, pb) = (Provider::start("pa", 0), Provider::start("pb", 0));
    let a = server_agent("zkcmd-a", &zk, "g-a", pa.addr);
    let b = server_agent("zkcmd-b", &zk, "g-b", pb.addr);
    online(&a);
    online(&b);
    let client = client_agent("zkcmd-client", &zk, "g-a", "switcher:\n  feature.x: false\n");
    wait_for("client sees its own group", Duration::from_secs(10), || {
        available(&client).len() == 1
    });
    let rt = motan::rt();
    let c = rt.block_on(raw(&zk));

    // mergeGroups 3:1 → ~75/25.
    let tc = r#"{"clientCommandList":[{"index":1,"version":"1.0","commandType":0,"dc":"t","pattern":"*","mergeGroups":["g-a:3","g-b:1"],"routeRules":[],"remark":"shift 25% to g-b"}]}"#;
    rt.block_on(set_command(&c, "g-a", Some(tc)));
    wait_for("merge group joined", Duration::from_secs(5), || {
        available(&client).len() == 2
    });
    let n = 2000;
    let by = rt.block_on(async { spread(&motan::connect(agent_addr(&client)).await, n).await });
    let share_a = *by.get("pa").unwrap_or(&0) as f64 / n as f64;
    assert!(
        (0.70..=0.80).contains(&share_a),
        "g-a share {share_a:.3} (want ~0.75): {by:?}"
    );
    // Deleting it restores the own group only.
    rt.block_on(set_command(&c, "g-a", None));
    wait_for("merge group left", Duration::from_secs(5), || {
        available(&client).len() == 1
    });
    let by = rt.block_on(async { spread(&motan::connect(agent_addr(&client)).await, 100).await });
    assert_eq!(by.get("pa"), Some(&100), "{by:?}");

    // Degrade: calls fail fast with a clear exception; removal restores them.
    let degrade = r#"{"clientCommandList":[{"index":1,"commandType":1,"pattern":"com.example"}]}"#;
    rt.block_on(set_command(&c, "g-a", Some(degrade)));
    let ch = rt.block_on(motan::connect(agent_addr(&client)));
    let call = |ch: &motan::Channel| rt.block_on(motan::call(ch, motan::request(SVC, "echo", &[], &[])));
    wait_for("degraded", Duration::from_secs(5), || {
        motan::exception(&call(&ch)).is_some()
    });
    let (code, msg, _) = motan::exception(&call(&ch)).unwrap();
    assert_eq!(code, 500);
    assert!(msg.contains("degrade"), "{msg}");
    rt.block_on(set_command(&c, "g-a", None));
    wait_for("degrade lifted", Duration::from_secs(5), || {
        motan::exception(&call(&ch)).is_none()
    });

    // Switcher: the command flips feature.x; its removal restores the configured value.
    let switch = |d: &Daemon| {
        let (code, body) = sockmesh_testkit::http::get(d.admin, "/switcher/get?name=feature.x").unwrap();
        assert_eq!(code, 200, "{body}");
        body
    };
    assert!(switch(&client).contains("false"));
    let sw = r#"{"clientCommandList":[{"index":1,"commandType":2,"pattern":"feature.x:true"}]}"#;
    rt.block_on(set_command(&c, "g-a", Some(sw)));
    wait_for("switcher on", Duration::from_secs(5), || {
        switch(&client).contains("true")
    });
    rt.block_on(set_command(&c, "g-a", None));
    wait_for("switcher restored", Duration::from_secs(5), || {
        switch(&client).contains("false")
    });
}

#[test]
fn zookeeper_outage_keeps_traffic_and_snapshot_serves_a_restarted_agent() {
    // One at a time: several tests compare latencies or count requests per provider.
    let _serial = common::serial();
    let Some(mut zk) = zookeeper("zk-mesh-outage") else {
        return;
    };
    let pa = Provider::start("pa", 0);
    let a = server_agent("zkout-a", &zk, "zko", pa.addr);
    online(&a);
    let mut client = client_agent("zkout-client", &zk, "zko", "");
    wait_for("client sees the server", Duration::from_secs(10), || {
        available(&client).len() == 1
    });
    let rt = motan::rt();

    // ZooKeeper down: cached endpoints keep serving; status says disconnected.
    zk.stop();
    let by = rt.block_on(async { spread(&motan::connect(agent_addr(&client)).await, 50).await });
    assert_eq!(by.get("pa"), Some(&50));
    wait_for(
        "client reports the registry disconnected",
        Duration::from_secs(10),
        || client.admin_json("/registry/list")["registries"][0]["connected"] == false,
    );

    // The client restarts while ZooKeeper is down: it serves from its snapshot.
    client.kill9();
    client.spawn();
    wait_for(
        "restarted client serves from the snapshot",
        Duration::from_secs(10),
        || available(&client).len() == 1,
    );
    let by = rt.block_on(async { spread(&motan::connect(agent_addr(&client)).await, 20).await });
    assert_eq!(by.get("pa"), Some(&20));
    let reg = client.admin_json("/registry/list");
    assert!(
        reg["registries"][0]["serving_from_snapshot_since"].is_u64(),
        "status should say since when it serves from the snapshot: {reg}"
    );
    let (ok, text, err) = client.cli(&["status"]);
    assert!(
        ok && text.contains("DISCONNECTED, serving from the snapshot since"),
        "{text}{err}"
    );

    // ZooKeeper back: the server's registration returns.
    zk.spawn().unwrap();
    rt.block_on(async {
        let c = raw(&zk).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !children(&c, &format!("/motan/zko/{SVC}/server"))
            .await
            .contains(&export_of(&a))
        {
            assert!(Instant::now() < deadline, "registration did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
