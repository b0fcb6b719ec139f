//! A real ZooKeeper server: Debian's `zookeeper` package (jars under /usr/share/java) run by the
//! system JRE on a free 127.0.0.1 port with a data dir of its own. Stopped by the PID it was
//! started with, and its directory deleted, when the guard drops (also on failure). Used by the
//! ZooKeeper tests (tests/common/zk.rs) and `cargo xtask soak`; `cargo xtask setup` installs the
//! package.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proc::{ChildProcess, log_tail};

pub const JAR: &str = "/usr/share/java/zookeeper.jar";
/// Without a binding slf4j prints a warning per start; the server log goes to a file anyway.
const SLF4J_NOP: &str = "/usr/share/java/slf4j-nop.jar";
pub const JAVA: &str = "/usr/bin/java";
const READY_TIMEOUT: Duration = Duration::from_secs(40);

pub struct ZkServer {
    port: u16,
    dir: PathBuf,
    child: Option<ChildProcess>,
}

/// What is missing to run a server (the JRE, the jars), empty when nothing is.
pub fn missing() -> Vec<&'static str> {
    [JAVA, JAR]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect()
}

impl ZkServer {
    /// Start a server named `name` (part of its temp dir) and wait until it serves sessions.
    pub fn start(name: &str) -> Result<ZkServer> {
        let missing = missing();
        if !missing.is_empty() {
            bail!(
                "ZooKeeper needs {} (cargo xtask setup, or apt-get install zookeeper default-jre-headless)",
                missing.join(", ")
            );
        }
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("sockmesh-zk-{name}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).with_context(|| format!("creating {}", dir.display()))?;
        // tickTime 500 ms: sessions may be as short as 1 s (2 ticks), so expiry tests are quick.
        let cfg = format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=srvr\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg)?;
        let mut zk = ZkServer {
            port,
            dir,
            child: None,
        };
        zk.spawn()?;
        Ok(zk)
    }

    /// Start the server process (again) on the same port and data dir; waits until it answers.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("ZooKeeper on {} is already running", self.addr());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut child = ChildProcess::spawn(
            format!("ZooKeeper on {}", self.addr()),
            Command::new(JAVA)
                .args(["-Xmx256m", "-cp"])
                .arg(format!("{JAR}:{SLF4J_NOP}"))
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(self.dir.join("zoo.cfg"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let addr = self.addr().parse()?;
        if let Err(e) = child.wait_until(READY_TIMEOUT, || Ok(serving(addr))) {
            drop(child);
            bail!("{e:#}:\n{}", self.log_tail());
        }
        self.child = Some(child);
        Ok(())
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

    /// Its PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::pid)
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
