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
//!
//! Churn: namespaces are known by inode, and a `/proc/PID/ns/net` opened for one is checked to
//! still be that inode (the PID may have exited and been reused in between); at most
//! `sockmesh.intercept.max_netns_listeners` namespaces get a listener (the others fail open, with
//! a warning); a namespace whose intercepted processes are all gone loses its listener, and its
//! thread ends with the last connection, so it lets go of the namespace.
use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EbpfInterceptor;
use crate::net::{NetnsSockets, SocketFactory};
use crate::proxy::transparent::TransparentProxy;

/// How often the watcher looks for namespaces that got or lost intercepted processes.
const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// How long a namespace where no listener could be opened waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The network namespace inode of a process (`/proc/PID/ns/net`).
pub fn netns_ino(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Open the network namespace at `path` (a `/proc/PID/ns/net`) if it is still namespace `ino`:
/// between finding it and opening it the process may have exited and its PID been reused.
pub fn open_namespace(path: &Path, ino: u64) -> anyhow::Result<File> {
    use anyhow::Context;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let now = f.metadata()?.ino();
    if now != ino {
        anyhow::bail!(
            "{} is now network namespace {now}, not {ino} (its process exited and the PID was reused)",
            path.display()
        );
    }
    Ok(f)
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
    /// At most this many namespaces get a listener (`sockmesh.intercept.max_netns_listeners`).
    pub max_listeners: usize,
}

impl NamespaceWatcher {
    /// A socket factory inside namespace `ino` (opened through `path`, checked to still be
    /// `ino`) and its transparent listeners, ready.
    async fn open_in(
        &self,
        path: &Path,
        ino: u64,
    ) -> anyhow::Result<(SocketFactory, Vec<(SocketAddr, TcpListener)>)> {
        let p = path.to_path_buf();
        let ns = tokio::task::spawn_blocking(move || NetnsSockets::start(open_namespace(&p, ino)?)).await??;
        let sockets = self.sockets.in_namespace(ns);
        let mut listeners = Vec::new();
        for l in sockets.bind_listeners(&self.listen).await? {
            // Made in the namespace, so one socket (no shard group): accepted on the main
            // runtime, connections handed to the shards.
            let addr = l.addr();
            for socket in l.ready()? {
                listeners.push((addr, TcpListener::from_std(socket)?));
            }
        }
        Ok((sockets, listeners))
    }

    /// Watch until `shutdown`; the listeners and their connections are tracked by `tasks`.
    pub async fn run(self, shutdown: CancellationToken, tasks: TaskTracker) {
        let Some(own) = netns_ino(std::process::id()) else {
            return;
        };
        let mut active: HashMap<u64, CancellationToken> = Default::default();
        // Namespaces where opening a listener failed, and when.
        let mut failed: HashMap<u64, Instant> = Default::default();
        let mut over_cap_reported = 0;
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
            // Gone first, so that their places count for new ones.
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
            failed.retain(|ino, at| found.contains_key(ino) && at.elapsed() < RETRY_AFTER);
            let mut over_cap = 0;
            for (ino, path) in &found {
                if active.contains_key(ino) || failed.contains_key(ino) {
                    continue;
                }
                if active.len() >= self.max_listeners {
                    over_cap += 1;
                    continue;
                }
                let (sockets, listeners) = match self.open_in(path, *ino).await {
                    Ok(opened) => opened,
                    Err(e) => {
                        failed.insert(*ino, Instant::now());
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
            if over_cap != over_cap_reported {
                if over_cap > 0 {
                    tracing::warn!(
                        namespaces = over_cap,
                        max = self.max_listeners,
                        "network namespaces with intercepted processes but no transparent listener (sockmesh.intercept.max_netns_listeners reached): their connections go direct"
                    );
                }
                over_cap_reported = over_cap;
            }
            (self.report)(active.keys().copied().collect());
        }
    }
}
