//! A real ZooKeeper server for tests: the test kit's [`ZkServer`] (Debian's jars, a free
//! 127.0.0.1 port, a data dir of its own, killed and removed on drop), started per test, and a
//! plain ZooKeeper client to read and write nodes as another program would.
#![allow(dead_code)]

pub use sockmesh_testkit::ZkServer;

/// A running server, or a panic with the reason it could not start. `None` only when
/// SOCKMESH_SKIP_ZK=1 explicitly asks to skip (and then it says so).
pub fn zookeeper(test: &str) -> Option<ZkServer> {
    if std::env::var("SOCKMESH_SKIP_ZK").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs a ZooKeeper server; SOCKMESH_SKIP_ZK=1 is set");
        return None;
    }
    let missing = sockmesh_testkit::zk::missing();
    assert!(
        missing.is_empty(),
        "{test} needs a ZooKeeper server: {} not found (cargo xtask setup, or apt-get install zookeeper default-jre-headless); set SOCKMESH_SKIP_ZK=1 to skip it explicitly",
        missing.join(", ")
    );
    Some(ZkServer::start(test).unwrap_or_else(|e| panic!("{test}: {e:#}")))
}

/// A plain ZooKeeper client of the test, to read and write nodes as another program would.
pub async fn raw_client(zk: &ZkServer) -> zookeeper_client::Client {
    zookeeper_client::Client::connect(&zk.addr())
        .await
        .expect("raw client connects")
}

/// Children of `path`, sorted; none when the node does not exist.
pub async fn children(c: &zookeeper_client::Client, path: &str) -> Vec<String> {
    match c.list_children(path).await {
        Ok(mut v) => {
            v.sort();
            v
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("listing {path}: {e}"),
    }
}
