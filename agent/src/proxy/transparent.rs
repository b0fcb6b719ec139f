//! The transparent listeners (127.0.0.1 and [::1]): intercepted connections (eBPF connect
//! rewrite or iptables REDIRECT) arrive here. The original destination comes from
//! `SO_ORIGINAL_DST` (IPv6: `IP6T_SO_ORIGINAL_DST`) in both modes; the kernel programs answer
//! it only on sockets accepted from the agent's marked listeners.
//!
//! Protocol detection: when clusters are configured, the first bytes are read (up to the sniff
//! timeout). A Motan2 connection (magic 0xF1F1) whose first request names a service some
//! cluster serves is handed to the mesh router; an HTTP/1.x connection whose first request is
//! for a host an `http-client` entry serves goes to the HTTP side of the mesh
//! (`http_proxy.rs`); everything else is forwarded as plain TCP to the original destination,
//! starting with the bytes already read. Without clusters nothing
//! is read ahead, so plain forwarding costs nothing extra.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{http_proxy, passthrough};
use crate::net::SocketFactory;
use crate::protocol::motan2::codec::frame_len;
use crate::protocol::motan2::{DecodeLimits, Motan2Codec};
use crate::proxy::budget::Budget;
use crate::proxy::mesh::{ClientHandler, MeshHandle};
use crate::proxy::serve::{AcceptGate, ConnectionLimits, ServeStats, next_connection, serve_connection};
use crate::sys;

#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub forwarded: AtomicU64,
    /// Motan2 connections handed to the mesh router.
    pub routed: AtomicU64,
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
    pub routed: u64,
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
            routed: g(&self.routed),
            no_original_dst: g(&self.no_original_dst),
            upstream_errors: g(&self.upstream_errors),
            bytes_to_upstream: g(&self.bytes_to_upstream),
            bytes_to_app: g(&self.bytes_to_app),
        }
    }
}

pub struct TransparentProxy {
    pub stats: Arc<Stats>,
    /// The mesh (and the agent port's stats, which routed connections count in).
    pub mesh: Option<(MeshHandle, Arc<ServeStats>)>,
    pub sniff_timeout: Duration,
    /// The agent's budget (`sockmesh.limits`): routed connections draw on it as the agent
    /// port's do; the connection cap applies per transparent listener.
    pub budget: Arc<Budget>,
    pub shutdown: CancellationToken,
}

/// Whether the first bytes are a Motan2 request some cluster routes.
enum Sniffed {
    Route,
    Forward,
}

impl TransparentProxy {
    /// Accept until `shutdown`; connections in flight are tracked by `tasks` for draining.
    /// `sockets` makes the upstream sockets: for a listener inside another network namespace,
    /// a factory that makes them there too.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        sockets: SocketFactory,
    ) {
        let gate = AcceptGate::new(&self.budget);
        self.run_watched(listener, gate, shutdown, tasks, sockets).await
    }

    /// [`TransparentProxy::run`] through `gate` (a socket of a listener group shares its
    /// group's connection cap; the gate reports whether the listener keeps up).
    pub async fn run_watched(
        self: Arc<Self>,
        listener: TcpListener,
        mut gate: AcceptGate,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        sockets: SocketFactory,
    ) {
        let local = listener.local_addr().ok();
        while let Some((conn, peer, slot)) =
            next_connection("transparent", &listener, &mut gate, &shutdown).await
        {
            let me = self.clone();
            let sockets = sockets.clone();
            crate::shard::serve(&tasks, conn, move |conn| async move {
                let _slot = slot;
                me.handle(conn, peer, local, sockets).await
            });
        }
    }

    async fn handle(
        &self,
        conn: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        sockets: SocketFactory,
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
        if Some(orig) == local {
            self.stats.no_original_dst.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "original destination is the transparent listener itself; closing to avoid a loop");
            return;
        }
        tracing::debug!(%peer, original_dst = %orig, other_netns = sockets.in_other_namespace(), "intercepted connection");
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.route_or_forward(conn, orig, peer, sockets).await;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hand a Motan2 connection for a routed service to the mesh; forward anything else.
    async fn route_or_forward(
        &self,
        mut conn: TcpStream,
        orig: SocketAddr,
        peer: SocketAddr,
        sockets: SocketFactory,
    ) {
        let mut prefix = BytesMut::new();
        if let Some((mesh, agent_stats)) = &self.mesh
            && (!mesh.load().router.refers().is_empty() || !mesh.load().http.is_empty())
        {
            let limits = mesh.load().limits;
            if let Sniffed::Route = self.sniff(&mut conn, &mut prefix, mesh, limits).await {
                self.stats.routed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, original_dst = %orig, "intercepted Motan2 connection routed by the mesh");
                let handler = Arc::new(ClientHandler(mesh.clone()));
                let stats = agent_stats.clone();
                // Intercepted connections may be in the sockhash (ebpf-sockmap).
                let limits = ConnectionLimits {
                    decode: limits,
                    budget: self.budget.clone(),
                    drained_reads: false,
                };
                serve_connection(conn, peer, prefix, handler, limits, stats, self.shutdown.clone()).await;
                return;
            }
            // HTTP/1.x to a host an http-client entry serves (spec 4.13).
            let deadline = tokio::time::Instant::now() + self.sniff_timeout;
            let current = mesh.load_full();
            if http_proxy::sniff(&mut conn, &mut prefix, deadline, &current.http).await {
                self.stats.routed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, original_dst = %orig, "intercepted HTTP connection routed by the mesh");
                let shutdown = self.shutdown.clone();
                http_proxy::serve_intercepted(
                    conn,
                    prefix,
                    (orig, peer),
                    sockets,
                    mesh.clone(),
                    self.budget.clone(),
                    shutdown,
                )
                .await;
                return;
            }
        }
        self.passthrough(conn, prefix, orig, peer, sockets).await;
    }

    /// Read until the first frame is complete, the bytes are not Motan2, the peer goes quiet
    /// for the sniff timeout, or closes.
    async fn sniff(
        &self,
        conn: &mut TcpStream,
        buf: &mut BytesMut,
        mesh: &MeshHandle,
        limits: DecodeLimits,
    ) -> Sniffed {
        use tokio_util::codec::Decoder;
        let deadline = tokio::time::Instant::now() + self.sniff_timeout;
        buf.reserve(4096);
        loop {
            // Wrong magic (checked as soon as two bytes are in), a v1 frame or an over-limit
            // size: not ours to route.
            match frame_len(buf, &limits) {
                Err(_) => return Sniffed::Forward,
                Ok(Some(n)) if buf.len() >= n => {
                    let mut copy = BytesMut::from(&buf[..n]);
                    return match Motan2Codec::new(limits).decode(&mut copy) {
                        Ok(Some(f)) if !f.header.is_heartbeat() && mesh.load().router.routes(&f) => {
                            Sniffed::Route
                        }
                        _ => Sniffed::Forward,
                    };
                }
                Ok(_) => {}
            }
            match tokio::time::timeout_at(deadline, conn.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Sniffed::Forward,
            }
        }
    }

    async fn passthrough(
        &self,
        conn: TcpStream,
        prefix: BytesMut,
        orig: SocketAddr,
        peer: SocketAddr,
        sockets: SocketFactory,
    ) {
        let _ = conn.set_nodelay(true);
        let upstream = match sockets.connect(orig).await {
            Ok(mut u) if !prefix.is_empty() => {
                if let Err(e) = u.write_all(&prefix).await {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, original_dst = %orig, "upstream write failed: {e}");
                    return;
                }
                self.stats
                    .bytes_to_upstream
                    .fetch_add(prefix.len() as u64, Ordering::Relaxed);
                u
            }
            Ok(u) => u,
            Err(e) => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, original_dst = %orig, "upstream connect failed: {e:#}");
                return;
            }
        };
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let idle = Duration::from_millis(self.budget.limits.passthrough_idle_timeout_ms);
        match passthrough::forward(conn, upstream, (!idle.is_zero()).then_some(idle)).await {
            Ok((up, down)) => {
                self.stats.bytes_to_upstream.fetch_add(up, Ordering::Relaxed);
                self.stats.bytes_to_app.fetch_add(down, Ordering::Relaxed);
                tracing::debug!(%peer, original_dst = %orig, bytes_up = up, bytes_down = down, "connection closed");
            }
            Err(e) => tracing::debug!(%peer, original_dst = %orig, "forwarding ended: {e}"),
        }
    }
}
