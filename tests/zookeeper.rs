//! The zookeeper registry against a real ZooKeeper server (Debian's package, started per test on
//! a free loopback port): node layout and data, the server-role lifecycle, subscriptions,
//! session loss and recovery, snapshots, and command nodes.
#[path = "common/zk.rs"]
mod zk_server;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sockmesh::registry::command::CommandList;
use sockmesh::registry::{CommandScope, Registry, ServerList, ZkOptions, ZkRegistry};
use sockmesh::url::Url;
use tokio::sync::watch;
use zk_server::{ZkServer, children, raw_client, zookeeper};
use zookeeper_client as zk;

const GROUP: &str = "zk-test-group";
const SERVICE: &str = "com.weibo.zk.HelloService";
const NOTICE: Duration = Duration::from_secs(2);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "sockmesh=debug,zookeeper_client=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn provider(host: &str, port: u16) -> Url {
    Url::new("motan2", host, port, SERVICE, GROUP)
        .with_param("nodeType", "service")
        .with_param("application", "zk-test")
        .with_param("serialization", "simple")
}

fn refer() -> Url {
    Url::new("motan2", "", 0, SERVICE, GROUP).with_param("application", "zk-test")
}

fn registry_url(zk: &ZkServer, session_secs: u32) -> Url {
    Url::new("zookeeper", "127.0.0.1", zk.port(), "", "")
        .with_param("conf-id", "zk")
        .with_param("registrySessionTimeout", &session_secs.to_string())
}

fn registry(zk: &ZkServer, session_secs: u32, snapshot_dir: Option<PathBuf>) -> ZkRegistry {
    ZkRegistry::new(
        registry_url(zk, session_secs),
        ZkOptions {
            snapshot_dir,
            local_ip: Some("127.0.0.9".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn server_path(kind: &str) -> String {
    format!("/motan/{GROUP}/{SERVICE}/{kind}")
}

/// The node's data as the registry wrote it, parsed back like a reader does.
async fn node_url(c: &zk::Client, path: &str) -> Option<Url> {
    match c.get_data(path).await {
        Ok((data, _)) => Some(Url::parse_node(&Url::node_data_text(&data)).expect("node data parses")),
        Err(zk::Error::NoNode) => None,
        Err(e) => panic!("reading {path}: {e}"),
    }
}

/// Poll `check` until it is true or `timeout` passes.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait for the watch to hold a value satisfying `pred`.
async fn watch_until<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, pred: impl Fn(&T) -> bool) -> T {
    match tokio::time::timeout(NOTICE, rx.wait_for(|v| pred(v))).await {
        Ok(Ok(v)) => v.clone(),
        Ok(Err(_)) => panic!("{what}: the watch closed"),
        Err(_) => panic!("{what}: not within {NOTICE:?}"),
    }
}

fn addresses(list: &ServerList) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(Url::address).collect();
    v.sort();
    v
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifecycle_and_subscription() {
    init_logs();
    let Some(zk) = blocking(|| zookeeper("lifecycle")) else {
        return;
    };
    let raw = raw_client(&zk).await;
    let reg = registry(&zk, 10, None);
    let a = provider("127.0.0.1", 18001);
    let b = provider("127.0.0.2", 18002);

    // A subscription made before any provider exists: empty, and waits for `server`.
    let mut rx = reg.subscribe(&refer()).await.unwrap();
    assert!(rx.borrow_and_update().is_empty());

    // register → unavailableServer, with the URL string as data.
    reg.register(&a).await.unwrap();
    let unavailable = format!("{}/127.0.0.1:18001", server_path("unavailableServer"));
    assert_eq!(node_url(&raw, &unavailable).await, Some(a.clone()));
    let (data, stat) = raw.get_data(&unavailable).await.unwrap();
    assert_eq!(String::from_utf8(data).unwrap(), a.to_node_string());
    assert_ne!(stat.ephemeral_owner, 0, "ephemeral node");
    assert!(children(&raw, &server_path("server")).await.is_empty());

    // available → moved to server; the subscriber sees it.
    reg.available(None).await.unwrap();
    let server = format!("{}/127.0.0.1:18001", server_path("server"));
    assert_eq!(node_url(&raw, &server).await, Some(a.clone()));
    assert_eq!(node_url(&raw, &unavailable).await, None);
    let list = watch_until(&mut rx, "first provider", |l| !l.is_empty()).await;
    assert_eq!(*list, vec![a.clone()]);
    assert!(list[0].can_serve(&refer()));

    // The subscriber's client node: the refer as a referer, at the configured local IP.
    // Created by the subscription in the background.
    eventually("client node created", NOTICE, || async {
        children(&raw, &server_path("client")).await == ["127.0.0.9:0"]
    })
    .await;
    let client = node_url(&raw, &format!("{}/127.0.0.9:0", server_path("client")))
        .await
        .unwrap();
    assert_eq!(client.params["nodeType"], "referer");
    assert_eq!(client.path, SERVICE);

    // A second provider, registered and made available by itself.
    reg.register(&b).await.unwrap();
    reg.available(Some(&b)).await.unwrap();
    let list = watch_until(&mut rx, "second provider", |l| l.len() == 2).await;
    assert_eq!(addresses(&list), ["127.0.0.1:18001", "127.0.0.2:18002"]);

    // unavailable(one) → list update.
    reg.unavailable(Some(&a)).await.unwrap();
    let list = watch_until(&mut rx, "a unavailable", |l| l.len() == 1).await;
    assert_eq!(addresses(&list), ["127.0.0.2:18002"]);
    assert_eq!(
        children(&raw, &server_path("unavailableServer")).await,
        ["127.0.0.1:18001"]
    );

    // unavailable(all) leaves `server` empty: zero children are not notified (4.9).
    reg.unavailable(None).await.unwrap();
    assert!(children(&raw, &server_path("server")).await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(addresses(&rx.borrow()), ["127.0.0.2:18002"]);

    // A node written by someone else without data: the refer at the node's address.
    raw.create(
        &format!("{}/127.0.0.3:18003", server_path("server")),
        b"",
        &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    let list = watch_until(&mut rx, "node without data", |l| l[0].host == "127.0.0.3").await;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].port, list[0].path.as_str()), (18003, SERVICE));

    // unregister deletes the nodes.
    reg.unregister(&a).await.unwrap();
    reg.unregister(&b).await.unwrap();
    assert!(children(&raw, &server_path("unavailableServer")).await.is_empty());

    // The agent node.
    let agent = Url::new("motan2", "127.0.0.9", 8002, "", "").with_param("application", "zk-test");
    reg.register_agent(&agent).await.unwrap();
    assert_eq!(
        node_url(&raw, "/motan/agent/zk-test/node/127.0.0.9:8002").await,
        Some(agent)
    );

    let status = reg.status();
    assert_eq!(status["connected"], true, "{status:#}");
    assert_eq!(status["subscriptions"][0]["endpoints"], 1, "{status:#}");
    assert_eq!(status["subscriptions"][0]["source"], "zookeeper", "{status:#}");
    assert!(status["serving_from_snapshot_since"].is_null(), "{status:#}");

    // Dropping the subscriber removes its client node; closing the registry its session.
    drop(rx);
    eventually("client node removed", NOTICE, || async {
        children(&raw, &server_path("client")).await.is_empty()
    })
    .await;
    drop(reg);
    eventually(
        "agent node gone with the session",
        Duration::from_secs(5),
        || async { children(&raw, "/motan/agent/zk-test/node").await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_loss_keeps_lists_and_recovery_reregisters() {
    init_logs();
    let Some(mut zk) = blocking(|| zookeeper("session")) else {
        return;
    };
    // 2 s sessions: the client gives the session up ~3 s into an outage.
    let reg = registry(&zk, 2, None);
    let up = provider("127.0.0.1", 18011);
    let down = provider("127.0.0.2", 18012);
    reg.register(&up).await.unwrap();
    reg.register(&down).await.unwrap();
    reg.available(Some(&up)).await.unwrap();
    let mut rx = reg.subscribe(&refer()).await.unwrap();
    let list = watch_until(&mut rx, "initial list", |l| !l.is_empty()).await;
    assert_eq!(addresses(&list), ["127.0.0.1:18011"]);
    let old_session = reg.status()["session"].clone();

    // ZooKeeper killed: the list stays, the status says disconnected.
    blocking(|| zk.stop());
    eventually("status disconnected", Duration::from_secs(5), || async {
        reg.status()["connected"] == false
    })
    .await;
    let status = reg.status();
    assert!(status["disconnected_since"].as_u64().is_some(), "{status:#}");
    // Past the session timeout: the session is gone for good on the client side.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(addresses(&rx.borrow()), ["127.0.0.1:18011"]);
    assert!(!reg.is_connected());
    // A change asked for while down is kept.
    assert!(reg.available(Some(&down)).await.is_err());
    reg.unavailable(Some(&down)).await.unwrap_err();

    // Restarted on the same port and data dir: a new session, registrations come back with
    // the state they had (up available, down not).
    blocking(|| zk.spawn()).unwrap();
    let raw = raw_client(&zk).await;
    eventually("reconnected", Duration::from_secs(15), || async {
        reg.is_connected()
    })
    .await;
    let new_session = reg.status()["session"].clone();
    assert_ne!(new_session, old_session);
    let session_id = i64::from_str_radix(new_session.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let owned_by_new_session = |path: String| {
        let raw = raw.clone();
        async move {
            match raw.get_data(&path).await {
                Ok((_, stat)) => stat.ephemeral_owner == session_id,
                Err(_) => false,
            }
        }
    };
    eventually("up re-registered as available", Duration::from_secs(5), || {
        owned_by_new_session(format!("{}/127.0.0.1:18011", server_path("server")))
    })
    .await;
    eventually(
        "down re-registered as unavailable",
        Duration::from_secs(5),
        || owned_by_new_session(format!("{}/127.0.0.2:18012", server_path("unavailableServer"))),
    )
    .await;
    // The old session expires on the server too; our nodes are not its any more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(children(&raw, &server_path("server")).await, ["127.0.0.1:18011"]);
    assert_eq!(
        children(&raw, &server_path("unavailableServer")).await,
        ["127.0.0.2:18012"]
    );
    assert_eq!(children(&raw, &server_path("client")).await, ["127.0.0.9:0"]);
    // The subscription follows ZooKeeper again.
    reg.available(None).await.unwrap();
    let list = watch_until(&mut rx, "both after recovery", |l| l.len() == 2).await;
    assert_eq!(addresses(&list), ["127.0.0.1:18011", "127.0.0.2:18012"]);
    let status = reg.status();
    assert_eq!(status["connected"], true, "{status:#}");
    assert!(status["connected_since"].as_u64().is_some(), "{status:#}");
    assert_eq!(status["pending_writes"], false, "{status:#}");
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_serves_while_zookeeper_is_down() {
    init_logs();
    let Some(mut zk) = blocking(|| zookeeper("snapshot")) else {
        return;
    };
    let dir = TempDir(std::env::temp_dir().join(format!("sockmesh-zk-snapshot-{}", std::process::id())));
    let raw = raw_client(&zk).await;
    let command = r#"{"clientCommandList":[{"index":1,"commandType":1,"pattern":"com.weibo.zk"}]}"#;
    raw.mkdir(
        "/motan/zk-test-group",
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    raw.create(
        &format!("/motan/{GROUP}/command"),
        command.as_bytes(),
        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();

    // A provider registry (no snapshot) and a consumer that writes one.
    let providers = registry(&zk, 10, None);
    let a = provider("127.0.0.1", 18021);
    providers.register(&a).await.unwrap();
    providers.available(None).await.unwrap();
    let consumer = registry(&zk, 10, Some(dir.0.clone()));
    let mut rx = consumer.subscribe(&refer()).await.unwrap();
    watch_until(&mut rx, "consumer list", |l| l.len() == 1).await;
    let cmd = consumer
        .subscribe_commands(&CommandScope::Group(GROUP.into()))
        .await
        .unwrap();
    assert_eq!(cmd.borrow().as_deref(), Some(command));
    // A file per node in the registry's snapshot directory.
    let snap = dir.0.join(format!("zookeeper_127.0.0.1_{}.d", zk.port()));
    let all_files = || {
        std::fs::read_dir(&snap)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect::<String>()
    };
    // Snapshot writes are coalesced to one per 2 s: the command may come with the second.
    eventually("snapshot written", NOTICE * 3, || async {
        let t = all_files();
        t.contains("18021") && t.contains("clientCommandList")
    })
    .await;
    drop(rx);
    drop(cmd);
    consumer.close();

    // ZooKeeper down; a new registry with the same snapshot dir serves what was saved.
    blocking(|| zk.stop());
    let cold = registry(&zk, 10, Some(dir.0.clone()));
    let mut rx = cold.subscribe(&refer()).await.unwrap();
    assert_eq!(*rx.borrow_and_update().clone(), vec![a.clone()]);
    let mut cmd = cold
        .subscribe_commands(&CommandScope::Group(GROUP.into()))
        .await
        .unwrap();
    let text = cmd
        .borrow_and_update()
        .clone()
        .expect("command from the snapshot");
    assert!(CommandList::parse(&text).unwrap().select(SERVICE).is_degraded());
    let status = cold.status();
    assert_eq!(status["connected"], false, "{status:#}");
    assert!(
        status["serving_from_snapshot_since"].as_u64().is_some(),
        "{status:#}"
    );
    assert_eq!(status["subscriptions"][0]["source"], "snapshot", "{status:#}");
    assert_eq!(status["subscriptions"][0]["endpoints"], 1, "{status:#}");
    assert_eq!(status["commands"][0]["source"], "snapshot", "{status:#}");

    // Back up: ZooKeeper's values take over.
    blocking(|| zk.spawn()).unwrap();
    let b = provider("127.0.0.2", 18022);
    eventually(
        "provider registry reconnected",
        Duration::from_secs(15),
        || async { providers.is_connected() },
    )
    .await;
    providers.register(&b).await.unwrap();
    providers.available(Some(&b)).await.unwrap();
    eventually("cold registry connected", Duration::from_secs(15), || async {
        cold.is_connected()
    })
    .await;
    let list = watch_until(&mut rx, "list from zookeeper", |l| l.len() == 2).await;
    assert_eq!(addresses(&list), ["127.0.0.1:18021", "127.0.0.2:18022"]);
    assert_eq!(cold.status()["subscriptions"][0]["source"], "zookeeper");
    assert_eq!(cmd.borrow_and_update().as_deref(), Some(command));
    assert!(cold.status()["serving_from_snapshot_since"].is_null());
    // The snapshot now has both servers.
    eventually("snapshot updated", NOTICE, || async {
        all_files().contains("18022")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_nodes_stream() {
    init_logs();
    let Some(zk) = blocking(|| zookeeper("commands")) else {
        return;
    };
    let raw = raw_client(&zk).await;
    let reg = Arc::new(registry(&zk, 10, None));
    let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

    // The service command of the group: absent at first.
    let mut service = reg
        .subscribe_commands(&CommandScope::Group(GROUP.into()))
        .await
        .unwrap();
    assert_eq!(*service.borrow_and_update(), None);
    let path = format!("/motan/{GROUP}/command");
    raw.mkdir(&format!("/motan/{GROUP}"), &dir).await.unwrap();
    let tc = r#"{"clientCommandList":[{"index":1,"commandType":0,"pattern":"*","mergeGroups":["zk-test-group:1","other:1"]}]}"#;
    raw.create(&path, tc.as_bytes(), &dir).await.unwrap();
    let got = watch_until(&mut service, "command created", Option::is_some).await;
    assert_eq!(got.as_deref(), Some(tc));
    let tc_cmd = CommandList::parse(got.as_deref().unwrap())
        .unwrap()
        .select(SERVICE);
    assert_eq!(tc_cmd.traffic_control.unwrap().merge_groups.len(), 2);

    // Changed data streams through.
    let degrade = r#"{"clientCommandList":[{"index":1,"commandType":1,"pattern":"com.weibo"}]}"#;
    raw.set_data(&path, degrade.as_bytes(), None).await.unwrap();
    let got = watch_until(&mut service, "command changed", |v| v.as_deref() == Some(degrade)).await;
    assert!(
        CommandList::parse(&got.unwrap())
            .unwrap()
            .select(SERVICE)
            .is_degraded()
    );
    // Emptied: no command.
    raw.set_data(&path, b"", None).await.unwrap();
    watch_until(&mut service, "command emptied", Option::is_none).await;
    // Java-serialized text is read as text.
    let mut java = vec![0xAC, 0xED, 0x00, 0x05, 0x74, 0x00, degrade.len() as u8];
    java.extend_from_slice(degrade.as_bytes());
    raw.set_data(&path, &java, None).await.unwrap();
    watch_until(&mut service, "java string", |v| v.as_deref() == Some(degrade)).await;
    // Deleted: no command.
    raw.delete(&path, None).await.unwrap();
    watch_until(&mut service, "command deleted", Option::is_none).await;

    // The agent command, created after subscribing; a second subscriber shares the watch.
    let mut agent = reg
        .subscribe_commands(&CommandScope::Agent("zk-test".into()))
        .await
        .unwrap();
    assert_eq!(*agent.borrow_and_update(), None);
    let mut agent2 = reg
        .subscribe_commands(&CommandScope::Agent("zk-test".into()))
        .await
        .unwrap();
    raw.mkdir("/motan/agent/zk-test", &dir).await.unwrap();
    let sw = r#"{"clientCommandList":[{"index":1,"commandType":2,"pattern":"feature.x:true"}]}"#;
    raw.create("/motan/agent/zk-test/command", sw.as_bytes(), &dir)
        .await
        .unwrap();
    let got = watch_until(&mut agent, "agent command", Option::is_some).await;
    assert_eq!(got.as_deref(), Some(sw));
    watch_until(&mut agent2, "agent command, second subscriber", Option::is_some).await;
    let switchers = CommandList::parse(sw).unwrap().select(SERVICE).switchers();
    assert_eq!(switchers, [("feature.x".to_string(), true)]);
    let status = reg.status();
    assert_eq!(status["commands"].as_array().unwrap().len(), 2, "{status:#}");
}

/// Create `/motan/<group>/<service>/server/<host:port>` as a persistent node (as a provider
/// fleet would, without running the providers).
async fn create_provider_node(c: &zk::Client, url: &Url) {
    let path = format!("{}/{}", server_path("server"), url.address());
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let data = url.to_node_string();
    match c.create(&path, data.as_bytes(), &persistent).await {
        Ok(_) => {}
        Err(zk::Error::NoNode) => {
            c.mkdir(&server_path("server"), &persistent).await.unwrap();
            c.create(&path, data.as_bytes(), &persistent).await.unwrap();
        }
        Err(e) => panic!("creating {path}: {e}"),
    }
}

/// With 30% of node reads failing (the test-only fault hook), a list still converges to
/// ZooKeeper's children: failed reads are retried, not dropped; adds and deletes follow; the
/// client node is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_converge_despite_failed_reads() {
    init_logs();
    let Some(zk) = blocking(|| zookeeper("faults")) else {
        return;
    };
    let raw = raw_client(&zk).await;
    for i in 0..60u16 {
        create_provider_node(&raw, &provider("127.0.0.1", 20000 + i)).await;
    }
    let reg = ZkRegistry::new(
        registry_url(&zk, 10),
        ZkOptions {
            local_ip: Some("127.0.0.9".into()),
            inject_read_failures: 300,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rx = reg.subscribe(&refer()).await.unwrap();
    // Wait for exactly these servers: the list passes through other lists of the same length
    // while nodes are created and deleted (60 + 5 created = 65 before any delete is seen).
    let wait = |ports: std::ops::Range<u16>| {
        let mut rx = rx.clone();
        let want: Vec<String> = ports.map(|p| format!("127.0.0.1:{}", 20000 + p)).collect();
        async move {
            let done = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|l| addresses(l) == want))
                .await
                .is_ok();
            assert!(
                done,
                "servers {want:?} not within 15 s; have {:?}",
                addresses(&rx.borrow())
            );
        }
    };
    wait(0..60).await;
    for i in 60..70u16 {
        create_provider_node(&raw, &provider("127.0.0.1", 20000 + i)).await;
    }
    for i in 0..5u16 {
        let path = format!("{}/127.0.0.1:{}", server_path("server"), 20000 + i);
        raw.delete(&path, None).await.unwrap();
    }
    wait(5..70).await;
    let list = rx.borrow_and_update().clone();
    let want: Vec<String> = (5..70u16).map(|i| format!("127.0.0.1:{}", 20000 + i)).collect();
    assert_eq!(addresses(&list), want);
    eventually("client node created", NOTICE * 5, || async {
        children(&raw, &server_path("client")).await == ["127.0.0.9:0"]
    })
    .await;
    reg.close();
}

/// What `${idc}` resolution asks (cluster/idc.rs): the groups under `/motan` (not `agent`) and
/// one look at a group's servers, which follows nothing (no watch, no client node); both fail
/// plainly while ZooKeeper is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_one_shot_discovery() {
    init_logs();
    let Some(mut zk) = blocking(|| zookeeper("groups")) else {
        return;
    };
    let raw = raw_client(&zk).await;
    let reg = registry(&zk, 10, None);
    assert_eq!(reg.list_groups().await.unwrap(), Some(vec![]), "no /motan yet");
    let a = provider("127.0.0.1", 18101);
    create_provider_node(&raw, &a).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    raw.mkdir(&format!("/motan/zk-test-other/{SERVICE}/server"), &persistent)
        .await
        .unwrap();
    reg.register_agent_node(&Url::new("motan2", "127.0.0.1", 9981, "", "").with_param("application", "app"))
        .await
        .unwrap();
    assert_eq!(
        reg.list_groups().await.unwrap(),
        Some(vec![GROUP.to_string(), "zk-test-other".to_string()])
    );
    assert_eq!(reg.discover(&refer()).await.unwrap(), vec![a.clone()]);
    let mut missing = refer();
    missing.group = "zk-test-none".into();
    assert!(reg.discover(&missing).await.unwrap().is_empty());
    assert!(
        children(&raw, &server_path("client")).await.is_empty(),
        "a one-shot look registers no subscriber"
    );
    assert!(reg.status()["subscriptions"].as_array().unwrap().is_empty());
    blocking(|| zk.stop());
    eventually("disconnected", Duration::from_secs(15), || async {
        !reg.is_connected()
    })
    .await;
    assert!(reg.list_groups().await.is_err());
    assert!(reg.discover(&refer()).await.is_err());
}
