//! The transparent listener: intercepted connections (eBPF connect rewrite or iptables
//! REDIRECT) arrive here. The original destination comes from `SO_ORIGINAL_DST` in both modes.
//!
//! Protocol detection is a hand-off point: `classify` looks at the first bytes; Motan2 (magic
//! 0xF1F1) connections go to the Motan2 router once the agent core provides one, everything
//! else is forwarded as plain TCP to the original destination.
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::passthrough;
use crate::intercept::netns::NetnsSockets;
use crate::sys;

#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub forwarded: AtomicU64,
    pub no_original_dst: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_app: AtomicU64,
}

#[derive(Serialize)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub active: u64,
    pub forwarded: u64,
    pub no_original_dst: u64,
    pub upstream_errors: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_app: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: g(&self.accepted),
            active: g(&self.active),
            forwarded: g(&self.forwarded),
            no_original_dst: g(&self.no_original_dst),
            upstream_errors: g(&self.upstream_errors),
            bytes_to_upstream: g(&self.bytes_to_upstream),
            bytes_to_app: g(&self.bytes_to_app),
        }
    }
}

pub struct TransparentProxy {
    pub mark: u32,
    pub connect_timeout: Duration,
    pub stats: Arc<Stats>,
}

impl TransparentProxy {
    /// Accept until `shutdown`; connections in flight are tracked by `tasks` for draining.
    /// `netns` is set for a listener inside another network namespace: upstream sockets are then
    /// made there too.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        netns: Option<NetnsSockets>,
    ) {
        let local = listener.local_addr().ok();
        loop {
            let (conn, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("transparent listener accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let me = self.clone();
            let ns = netns.clone();
            tasks.spawn(async move { me.handle(conn, peer, local, ns).await });
        }
    }

    async fn handle(
        &self,
        conn: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        netns: Option<NetnsSockets>,
    ) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let orig = match sys::original_dst(&conn) {
            Ok(o) => o,
            Err(e) => {
                self.stats.no_original_dst.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "connection on the transparent listener has no original destination ({e}); closing");
                return;
            }
        };
        if Some(SocketAddr::V4(orig)) == local {
            self.stats.no_original_dst.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "original destination is the transparent listener itself; closing to avoid a loop");
            return;
        }
        tracing::debug!(%peer, original_dst = %orig, other_netns = netns.is_some(), "intercepted connection");
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.passthrough(conn, orig, peer, netns).await;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn passthrough(
        &self,
        conn: TcpStream,
        orig: SocketAddrV4,
        peer: SocketAddr,
        netns: Option<NetnsSockets>,
    ) {
        let _ = conn.set_nodelay(true);
        let socket = match &netns {
            Some(ns) => match ns.socket().await {
                Ok(s) => Some(s),
                Err(e) => {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "cannot make a socket in the app's network namespace: {e:#}");
                    return;
                }
            },
            None => None,
        };
        let upstream = match passthrough::connect_marked(orig, self.mark, self.connect_timeout, socket).await
        {
            Ok(u) => u,
            Err(e) => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, original_dst = %orig, "upstream connect failed: {e:#}");
                return;
            }
        };
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        match passthrough::forward(conn, upstream).await {
            Ok((up, down)) => {
                self.stats.bytes_to_upstream.fetch_add(up, Ordering::Relaxed);
                self.stats.bytes_to_app.fetch_add(down, Ordering::Relaxed);
                tracing::debug!(%peer, original_dst = %orig, bytes_up = up, bytes_down = down, "connection closed");
            }
            Err(e) => tracing::debug!(%peer, original_dst = %orig, "forwarding ended: {e}"),
        }
    }
}
