//! Apps in other network namespaces (containers). The connect hook rewrites to 127.0.0.1 of the
//! app's own namespace, so the agent keeps a transparent listener inside every namespace that
//! has processes in an intercepted cgroup. Upstream sockets for those connections are created in
//! the same namespace (a socket belongs to the namespace it was created in), so the agent dials
//! the original destination with the app's view of the network.
//!
//! A namespace gets its listener within one watcher period of its first process appearing in an
//! enabled cgroup; until then the connect hook finds no listener there and lets connections go
//! direct (fail-open), so nothing breaks in between. The namespace thread that binds the
//! listener and makes the sockets is `crate::net::NetnsSockets`; `NamespaceWatcher` keeps the
//! listeners.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EbpfInterceptor;
use crate::net::{NetnsSockets, SocketFactory};
use crate::proxy::transparent::TransparentProxy;

/// How often the watcher looks for namespaces that got or lost intercepted processes.
const WATCH_PERIOD: Duration = Duration::from_millis(500);

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

/// The cgroups interception is enabled for (mode not `off`), as directories under the cgroup2
/// mount.
pub fn enabled_cgroups(interceptor: &EbpfInterceptor) -> Vec<PathBuf> {
    let mount = interceptor.cgroup_mount().to_path_buf();
    interceptor
        .status()
        .unwrap_or_default()
        .iter()
        .filter(|c| c.mode != "off" && c.cgroup.starts_with('/'))
        .map(|c| mount.join(c.cgroup.trim_start_matches('/')))
        .collect()
}

/// Keeps a transparent listener in every foreign network namespace that has processes in an
/// intercepted cgroup, and closes it when the last one is gone.
pub struct NamespaceWatcher {
    /// The cgroups to look in (see `enabled_cgroups`); `None` once interception is gone, which
    /// ends the watcher.
    pub cgroups: Box<dyn Fn() -> Option<Vec<PathBuf>> + Send + Sync>,
    /// The transparent listeners' addresses (IPv4, IPv6), bound inside each namespace.
    pub listen: Vec<SocketAddr>,
    /// The agent's socket factory; each namespace's listener gets a copy that makes its
    /// upstream sockets inside that namespace.
    pub sockets: SocketFactory,
    pub proxy: Arc<TransparentProxy>,
    /// Told the namespaces (inodes) that have a listener, after every pass (for status).
    pub report: Box<dyn Fn(Vec<u64>) + Send + Sync>,
}

impl NamespaceWatcher {
    /// A socket factory inside the namespace at `path` and its transparent listeners, ready.
    async fn open_in(&self, path: &Path) -> anyhow::Result<(SocketFactory, Vec<(SocketAddr, TcpListener)>)> {
        let p = path.to_path_buf();
        let ns = tokio::task::spawn_blocking(move || NetnsSockets::start(&p)).await??;
        let sockets = self.sockets.in_namespace(ns);
        let mut listeners = Vec::new();
        for l in sockets.bind_listeners(&self.listen).await? {
            listeners.push((l.addr(), l.ready()?));
        }
        Ok((sockets, listeners))
    }

    /// Watch until `shutdown`; the listeners and their connections are tracked by `tasks`.
    pub async fn run(self, shutdown: CancellationToken, tasks: TaskTracker) {
        let Some(own) = netns_ino(std::process::id()) else {
            return;
        };
        let mut active: HashMap<u64, CancellationToken> = Default::default();
        let mut tick = tokio::time::interval(WATCH_PERIOD);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(cgroups) = (self.cgroups)() else { return };
            let found = tokio::task::spawn_blocking(move || foreign_namespaces(&cgroups, own))
                .await
                .unwrap_or_default();
            for (ino, path) in &found {
                if active.contains_key(ino) {
                    continue;
                }
                let (sockets, listeners) = match self.open_in(path).await {
                    Ok(opened) => opened,
                    Err(e) => {
                        tracing::warn!(
                            netns = ino,
                            "no transparent listener in network namespace (connections there go direct): {e:#}"
                        );
                        continue;
                    }
                };
                let token = shutdown.child_token();
                for (addr, listener) in listeners {
                    tasks.spawn(self.proxy.clone().run(
                        listener,
                        token.clone(),
                        tasks.clone(),
                        sockets.clone(),
                    ));
                    tracing::info!(netns = ino, via = %path.display(), listen = %addr, "transparent listener opened in network namespace");
                }
                active.insert(*ino, token);
            }
            active.retain(|ino, token| {
                let keep = found.contains_key(ino);
                if !keep {
                    token.cancel();
                    tracing::info!(
                        netns = ino,
                        "no intercepted processes left in network namespace; listener closed"
                    );
                }
                keep
            });
            (self.report)(active.keys().copied().collect());
        }
    }
}
