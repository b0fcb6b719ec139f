//! Apps in other network namespaces (containers). The connect hook rewrites to 127.0.0.1 of the
//! app's own namespace, so the agent keeps a transparent listener inside every namespace that
//! has processes in an intercepted cgroup. Upstream sockets for those connections are created in
//! the same namespace (a socket belongs to the namespace it was created in), so the agent dials
//! the original destination with the app's view of the network.
//!
//! A namespace gets its listener within one watcher period of its first process appearing in an
//! enabled cgroup; until then the connect hook finds no listener there and lets connections go
//! direct (fail-open), so nothing breaks in between.
use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

/// Creates TCP sockets inside one network namespace, from a thread that lives there.
#[derive(Clone)]
pub struct NetnsSockets {
    tx: mpsc::Sender<oneshot::Sender<std::io::Result<socket2::Socket>>>,
}

impl NetnsSockets {
    /// Start the namespace thread; returns the factory and a listener bound in the namespace.
    pub fn start(ns: &Path, listen: SocketAddrV4) -> Result<(NetnsSockets, std::net::TcpListener)> {
        let ns_file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        let (tx, rx) = mpsc::channel::<oneshot::Sender<std::io::Result<socket2::Socket>>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sockmesh-netns".into())
            .spawn(move || {
                // SAFETY: setns on this thread only; the thread never goes back to the host namespace.
                if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let l = std::net::TcpListener::bind(listen);
                let _ = ready_tx.send(l);
                while let Ok(reply) = rx.recv() {
                    let s = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    );
                    let _ = reply.send(s);
                }
            })?;
        let listener = ready_rx
            .recv()
            .context("netns thread died")?
            .with_context(|| format!("binding {listen} inside {}", ns.display()))?;
        Ok((NetnsSockets { tx }, listener))
    }

    /// A new, unconnected TCP socket in the namespace.
    pub async fn socket(&self) -> Result<socket2::Socket> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).context("netns thread gone")?;
        Ok(rx.await.context("netns thread gone")??)
    }
}

/// The network namespace inode of a process (`/proc/PID/ns/net`).
pub fn netns_ino(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Every pid in `cg` and its descendants.
pub fn pids_in(cg: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![cg.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Network namespaces (inode -> a /proc path that opens it) of processes in the given cgroups,
/// other than `own`.
pub fn foreign_namespaces(cgroups: &[PathBuf], own: u64) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    for cg in cgroups {
        for pid in pids_in(cg) {
            if let Some(ino) = netns_ino(pid)
                && ino != own
            {
                found
                    .entry(ino)
                    .or_insert_with(|| PathBuf::from(format!("/proc/{pid}/ns/net")));
            }
        }
    }
    found
}
