//! A real ZooKeeper server for tests: Debian's `zookeeper` package (jars under /usr/share/java)
//! run by the system JRE on a free 127.0.0.1 port with a data dir of its own. Stopped by the
//! PID it was started with, and its directory deleted, when the guard drops (also when the test
//! fails). `cargo xtask setup` installs the package.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sockmesh_testkit::ChildProcess;
use sockmesh_testkit::proc::log_tail;

const JAR: &str = "/usr/share/java/zookeeper.jar";
/// Without a binding slf4j prints a warning per start; the server log goes to a file anyway.
const SLF4J_NOP: &str = "/usr/share/java/slf4j-nop.jar";
const JAVA: &str = "/usr/bin/java";
const READY_TIMEOUT: Duration = Duration::from_secs(40);

pub struct ZkServer {
    port: u16,
    dir: PathBuf,
    child: Option<ChildProcess>,
}

/// A running server, or a panic with the reason it could not start. `None` only when
/// SOCKMESH_SKIP_ZK=1 explicitly asks to skip (and then it says so).
pub fn zookeeper(test: &str) -> Option<ZkServer> {
    if std::env::var("SOCKMESH_SKIP_ZK").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs a ZooKeeper server; SOCKMESH_SKIP_ZK=1 is set");
        return None;
    }
    let missing: Vec<&str> = [JAVA, JAR]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "{test} needs a ZooKeeper server: {} not found (cargo xtask setup, or apt-get install zookeeper default-jre-headless); set SOCKMESH_SKIP_ZK=1 to skip it explicitly",
        missing.join(", ")
    );
    Some(ZkServer::start(test))
}

impl ZkServer {
    fn start(test: &str) -> ZkServer {
        let port = sockmesh_testkit::free_port();
        let dir = std::env::temp_dir().join(format!("sockmesh-zk-{test}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // tickTime 500 ms: sessions may be as short as 1 s (2 ticks), so expiry tests are quick.
        let cfg = format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=srvr\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).unwrap();
        let mut zk = ZkServer {
            port,
            dir,
            child: None,
        };
        zk.spawn();
        zk
    }

    /// Start the server process (again) on the same port and data dir; waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = ChildProcess::spawn(
            format!("ZooKeeper on {}", self.addr()),
            Command::new(JAVA)
                .args(["-Xmx256m", "-cp"])
                .arg(format!("{JAR}:{SLF4J_NOP}"))
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(self.dir.join("zoo.cfg"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let addr = self.addr().parse().unwrap();
        if let Err(e) = child.wait_until(READY_TIMEOUT, || Ok(serving(addr))) {
            drop(child);
            panic!("{e:#}:\n{}", self.log_tail());
        }
        self.child = Some(child);
    }

    /// Kill the server (SIGKILL by the PID we started) and wait for it; the data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.join("server.log"), 30)
    }
}

/// The four-letter word `srvr` answered with the server's stats: it serves sessions (`ruok` says
/// `imok` before that, and the first sessions are then refused).
fn serving(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    s.write_all(b"srvr").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("Zookeeper version")
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
