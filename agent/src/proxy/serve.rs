//! The inbound side of a Motan2 connection (apps on the agent port, client agents on an
//! export port, intercepted connections): decode frames, answer heartbeats, drive each request's
//! [`Handler`] future inside the connection's task (full multiplexing) and write responses as
//! they complete, those that complete together in one write.
//!
//! Bad input affects only its own connection: an oversized frame is answered with an exception
//! frame carrying its request id and the connection is closed (the rest of the stream cannot be
//! trusted); any other malformed frame closes the connection (spec 1.13).
//!
//! Motan v1 frames (old Java clients) share the port, as with motan-go: heartbeats are answered,
//! requests continue as Motan2 requests and their responses go back as v1 (`v1.rs`). A v1
//! frame whose framing is broken gets a v1 exception and closes its connection; a well-framed
//! request whose payload cannot be read gets a v1 exception and the connection stays, as
//! motan-go's `processV1` does.
use std::future::Future;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::locks::Locked;
use crate::protocol::motan2::{CodecError, DecodeLimits, Exception, Frame, FrameError, Motan2Codec, v1};
use crate::proxy::budget::{Budget, ConnectionShare, Lease, SharePermit};
use crate::write_queue::{self, WriteQueue};

/// What bounds a connection: frame limits, the agent's budget (with each connection's share)
/// and how long an idle client is kept; and how its socket is read.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub decode: DecodeLimits,
    pub budget: Arc<Budget>,
    /// The listener's sockets are never in the sockhash (the agent port, its Unix socket, an
    /// export port while no BPF program runs): a read that does not fill the buffer shows the
    /// socket's queue is empty, so it is not read again until the next readiness event. That
    /// saves a read returning EAGAIN per request. A socket in the sockhash may return a short
    /// read from the sk_msg queue while its TCP queue still holds bytes (the first message of a
    /// connection can take the TCP path before both ends are in the sockhash), so those are
    /// read until EAGAIN (`false`, the default).
    pub drained_reads: bool,
}

impl Default for ConnectionLimits {
    /// Default frame limits and a budget of its own with the default `sockmesh.limits`.
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            decode: DecodeLimits::default(),
            budget: Budget::new(Default::default()),
            drained_reads: false,
        }
    }
}

impl ConnectionLimits {
    fn idle_timeout(&self) -> Option<Duration> {
        let ms = self.budget.limits.client_idle_timeout_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

/// A frame on its way to the peer with what it holds of the budgets, given back once it is
/// written (a peer that does not read keeps its share full: its connection is no longer read
/// from).
struct Queued {
    frame: Bytes,
    _held: Option<(SharePermit, Lease)>,
}

impl From<Bytes> for Queued {
    fn from(frame: Bytes) -> Queued {
        Queued { frame, _held: None }
    }
}

/// Accept errors (EMFILE, ENFILE, ENOBUFS...) back off instead of spinning, and are logged at
/// most once per interval with how many there were.
#[derive(Default)]
pub struct AcceptBackoff {
    last_log: Option<Instant>,
    since_log: u64,
}

impl AcceptBackoff {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    pub async fn failed(&mut self, listener: &str, e: &std::io::Error) {
        self.since_log += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                listener,
                "accept failed ({} time(s) since the last report): {e}",
                self.since_log
            );
            self.last_log = Some(Instant::now());
            self.since_log = 0;
        }
        // Out of descriptors: wait for connections to close rather than retrying at once.
        let pause = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => 200,
            _ => 20,
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Per-connection warnings are rate limited across all connections: one hostile peer opening
/// thousands of connections with bad frames must not make the agent a log writer.
pub fn warn_connection(peer: SocketAddr, why: &str) {
    static LAST: std::sync::Mutex<(Option<Instant>, u64)> = std::sync::Mutex::new((None, 0));
    let suppressed = {
        let mut last = LAST.locked();
        if last.0.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            last.1 += 1;
            return;
        }
        last.0 = Some(Instant::now());
        std::mem::take(&mut last.1)
    };
    // WARN lines also land in `sockmesh status` (recent errors).
    if suppressed > 0 {
        tracing::warn!(%peer, "closing connection: {why} ({suppressed} similar warning(s) suppressed)");
    } else {
        tracing::warn!(%peer, "closing connection: {why}");
    }
}

/// What a listener does with each request: its answer (oneway requests are answered too, see
/// `cluster::oneway_answer`). The future is driven by its connection's task; being a concrete
/// type (not boxed) it costs no allocation of its own.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Frame, ctx: RequestContext) -> impl Future<Output = Frame> + Send + 'static;
}

/// Per-request facts the handler may need.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub peer: SocketAddr,
    /// The peer's IP as text (the `host` meta value), made once per connection.
    pub peer_ip: Bytes,
    /// When the request frame was complete (for `M_pt`).
    pub received: Instant,
}

#[derive(Default, Debug)]
pub struct ServeStats {
    pub connections: AtomicU64,
    pub active_connections: AtomicU64,
    pub requests: AtomicU64,
    pub heartbeats: AtomicU64,
    pub bad_frames: AtomicU64,
}

#[derive(Serialize)]
pub struct ServeStatsSnapshot {
    pub connections: u64,
    pub active_connections: u64,
    pub requests: u64,
    pub heartbeats: u64,
    pub bad_frames: u64,
}

impl ServeStats {
    pub fn snapshot(&self) -> ServeStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeStatsSnapshot {
            connections: g(&self.connections),
            active_connections: g(&self.active_connections),
            requests: g(&self.requests),
            heartbeats: g(&self.heartbeats),
            bad_frames: g(&self.bad_frames),
        }
    }
}

/// Accept on `listener` through `gate` until `shutdown`, serving each connection on a task
/// tracked by `tasks` (on a data-plane shard when they run).
#[allow(clippy::too_many_arguments)]
pub async fn accept_loop<H: Handler, L>(
    name: &'static str,
    listener: L,
    mut gate: AcceptGate,
    handler: Arc<H>,
    limits: ConnectionLimits,
    stats: Arc<ServeStats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) where
    L: Accept + Send + Sync + 'static,
    L::Conn: Inbound + crate::shard::Rehome,
    L::Addr: AgentPeer,
{
    while let Some((conn, peer, slot)) = next_connection(name, &listener, &mut gate, &shutdown).await {
        let peer = peer.agent_peer();
        let h = handler.clone();
        let (l, s, sd) = (limits.clone(), stats.clone(), shutdown.clone());
        crate::shard::serve(&tasks, conn, move |conn| async move {
            let _slot = slot;
            serve_connection(conn, peer, BytesMut::new(), h, l, s, sd).await
        });
    }
}

/// What an agent listener's peer is reported as: a TCP peer as it is, a Unix socket's peer
/// (`motan-agent.unixSock`) as 127.0.0.1:0, what the `host` meta value says for an app on the
/// loopback agent port.
pub trait AgentPeer {
    fn agent_peer(self) -> SocketAddr;
}

/// The peer a Unix socket connection is reported as.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl AgentPeer for SocketAddr {
    fn agent_peer(self) -> SocketAddr {
        self
    }
}

impl AgentPeer for tokio::net::unix::SocketAddr {
    fn agent_peer(self) -> SocketAddr {
        UNIX_PEER
    }
}

/// A connection [`serve_connection`] reads frames from (readiness, then a non-blocking read, so
/// an idle connection holds no buffer) and writes answers to.
pub trait Inbound: Send + 'static {
    type Read: ReadHalf;
    type Write: WriteHalf;
    fn split_inbound(self) -> (Self::Read, Self::Write);
}

/// Writes go straight from the connection's task: readiness, then a non-blocking write.
pub trait WriteHalf: Send + Sync {
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

impl WriteHalf for tokio::net::tcp::OwnedWriteHalf {
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::tcp::OwnedWriteHalf::writable(self)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

impl WriteHalf for tokio::net::unix::OwnedWriteHalf {
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::unix::OwnedWriteHalf::writable(self)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        tokio::net::unix::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

/// Reads go into room that need not be initialised (`MaybeUninit`): the read buffer on the
/// stack is not zeroed on every read.
pub trait ReadHalf: Send + Sync {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// One read into `buf`; the first `n` bytes it returns are initialised.
    fn try_read(&self, buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize>;
    /// One read into `buf` (`recv`) that, when it does not fill `buf`, also clears the
    /// socket's read readiness, as a read returning EAGAIN would (`ConnectionLimits::
    /// drained_reads`): with edge-triggered epoll, bytes arriving later raise a new event.
    fn try_read_drained(&self, buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize>;
}

/// `recv` on `fd` through the reactor's `try_io`: a short read is reported to it as
/// WouldBlock, which clears the readiness it saw, and returned as the bytes it read.
fn recv_drained(
    fd: std::os::fd::RawFd,
    buf: &mut [MaybeUninit<u8>],
    try_io: impl FnOnce(&mut dyn FnMut() -> std::io::Result<usize>) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let len = buf.len();
    let mut got = 0;
    let r = try_io(&mut || {
        // SAFETY: `buf` is valid for `len` writable bytes (recv only writes them); `fd` is the
        // open socket of the half that called.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        got = n as usize;
        if got > 0 && got < len {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

impl Inbound for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_inbound(self) -> (Self::Read, Self::Write) {
        let _ = self.set_nodelay(true);
        self.into_split()
    }
}

impl Inbound for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split_inbound(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl ReadHalf for tokio::net::tcp::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::tcp::OwnedReadHalf::readable(self)
    }
    fn try_read(&self, mut buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize> {
        tokio::net::tcp::OwnedReadHalf::try_read_buf(self, &mut buf)
    }
    fn try_read_drained(&self, buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let s: &TcpStream = self.as_ref();
        recv_drained(s.as_raw_fd(), buf, |f| s.try_io(tokio::io::Interest::READABLE, f))
    }
}

impl ReadHalf for tokio::net::unix::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::unix::OwnedReadHalf::readable(self)
    }
    fn try_read(&self, mut buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize> {
        tokio::net::unix::OwnedReadHalf::try_read_buf(self, &mut buf)
    }
    fn try_read_drained(&self, buf: &mut [MaybeUninit<u8>]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let s: &UnixStream = self.as_ref();
        recv_drained(s.as_raw_fd(), buf, |f| s.try_io(tokio::io::Interest::READABLE, f))
    }
}

/// Whether a listener's accept loop keeps up: it is *behind* from the moment it cannot take a
/// waiting connection (at its connection cap, or accept failing, e.g. out of descriptors) until
/// it finds the kernel's backlog empty again. A new connection to a listener that is behind
/// waits in the backlog; the heartbeat of stuck-agent fail-open stops while one is (app.rs).
#[derive(Debug, Default)]
pub struct AcceptProgress {
    behind: AtomicBool,
}

impl AcceptProgress {
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    fn set_behind(&self, behind: bool) {
        // Read first: the accept path stays free of cache-line writes while nothing changes.
        if self.behind.load(Ordering::Relaxed) != behind {
            self.behind.store(behind, Ordering::Relaxed);
        }
    }
}

/// What a listener may accept: at most `sockmesh.limits.listener_connections` open connections
/// (at the cap the listener stops accepting and the kernel's backlog holds the rest), and failed
/// accepts back off ([`AcceptBackoff`]).
pub struct AcceptGate {
    slots: Arc<Semaphore>,
    backoff: AcceptBackoff,
    progress: Option<Arc<AcceptProgress>>,
}

impl AcceptGate {
    pub fn new(budget: &Budget) -> AcceptGate {
        AcceptGate::with_cap(budget.limits.listener_connections)
    }

    /// At most `connections` open at once (the admin doors have caps of their own).
    pub fn with_cap(connections: u32) -> AcceptGate {
        AcceptGate {
            slots: Arc::new(Semaphore::new(connections as usize)),
            backoff: AcceptBackoff::default(),
            progress: None,
        }
    }

    /// A gate for another socket of the same listener group (`net::listen_group`): the same
    /// connection cap, a backoff of its own, and no progress report until `watched_by`.
    pub fn sibling(&self) -> AcceptGate {
        AcceptGate {
            slots: self.slots.clone(),
            backoff: AcceptBackoff::default(),
            progress: None,
        }
    }

    /// Report whether this listener keeps up into `progress`.
    pub fn watched_by(mut self, progress: Option<Arc<AcceptProgress>>) -> AcceptGate {
        self.progress = progress;
        self
    }

    fn behind(&self, behind: bool) {
        if let Some(p) = &self.progress {
            p.set_behind(behind);
        }
    }
}

/// A listener [`next_connection`] accepts from: TCP, or the admin control socket. Polled, so
/// an accept that would wait (the backlog is empty) can be told from one that got a connection.
pub trait Accept {
    type Conn;
    type Addr;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<(Self::Conn, Self::Addr)>>;
}

impl Accept for tokio::net::TcpListener {
    type Conn = TcpStream;
    type Addr = SocketAddr;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<(TcpStream, SocketAddr)>> {
        tokio::net::TcpListener::poll_accept(self, cx)
    }
}

impl Accept for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }
}

/// The next accepted connection with its slot of the listener's cap (keep it while the
/// connection is open), or `None` once `shutdown` is cancelled; a failed accept (out of
/// descriptors, say) is logged, rate limited, and retried after a pause.
pub async fn next_connection<L: Accept>(
    name: &'static str,
    listener: &L,
    gate: &mut AcceptGate,
    shutdown: &CancellationToken,
) -> Option<(L::Conn, L::Addr, OwnedSemaphorePermit)> {
    let progress = gate.progress.clone();
    loop {
        // At the connection cap the listener stops accepting: the kernel's backlog holds the
        // rest. It waits for a slot to come free without taking it: the sockets of a listener
        // group share the cap, and a slot held by one waiting for a connection would keep
        // the others from accepting.
        if gate.slots.available_permits() == 0 {
            gate.behind(true);
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                s = gate.slots.acquire() => drop(s.ok()?),
            }
        }
        // An accept that would wait found the backlog empty: the listener has caught up.
        let accept = std::future::poll_fn(|cx| {
            let r = Accept::poll_accept(listener, cx);
            if r.is_pending()
                && let Some(p) = &progress
            {
                p.set_behind(false);
            }
            r
        });
        let (conn, peer) = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = accept => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    gate.behind(true);
                    gate.backoff.failed(name, &e).await;
                    continue;
                }
            },
        };
        // Another socket of the group may have taken the last slot since: this connection
        // waits for one, and the listener counts as behind meanwhile.
        let slot = match gate.slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                gate.behind(true);
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    s = gate.slots.clone().acquire_owned() => s.ok()?,
                }
            }
        };
        return Some((conn, peer, slot));
    }
}

/// Most answers waiting for a peer that does not read before the connection stops reading
/// (answers also hold their share of the budgets; refusals and heartbeat answers only this).
const OUT_FRAMES: usize = 4096;

/// A request waiting for room in its connection's share or for its body to be inflated.
type Admission = Pin<Box<dyn Future<Output = Admitted> + Send>>;

/// Serve one connection until the peer closes, a bad frame arrives, or `shutdown`; requests
/// already read are answered before the connection closes. `buf` holds bytes already read
/// from the connection (protocol sniffing).
///
/// One task does it all: it reads and decodes frames, drives every request of the connection
/// (a `FuturesUnordered`, bounded by the connection's share) and writes the answers that are
/// ready with one vectored write per wake-up. No task is spawned and no channel crossed per
/// request; only a request that must wait for room or have its body inflated (on the blocking
/// pool) takes a detour, during which the connection is not read from.
pub async fn serve_connection<H: Handler, S: Inbound>(
    conn: S,
    peer: SocketAddr,
    mut buf: BytesMut,
    handler: Arc<H>,
    limits: ConnectionLimits,
    stats: Arc<ServeStats>,
    shutdown: CancellationToken,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = conn.split_inbound();
    let peer_ip = Bytes::from(peer.ip().to_string());
    let mut codec = Motan2Codec::new(limits.decode);
    let idle = limits.idle_timeout();
    // One idle timer for the connection's life, moved on only when it fires: going idle after
    // each request costs a clock read, not a timer registration.
    let idle_sleep = std::pin::pin!(tokio::time::sleep(idle.unwrap_or_default()));
    let mut idle_timer = WokenOnly::new(idle_sleep);
    let mut idle_since = tokio::time::Instant::now();
    let mut was_busy = false;
    // Made once: a fresh `cancelled()` per wake-up registers and unregisters a waiter each time;
    // gated, as every pass of the loop would poll it (two locks) and only a shutdown wakes it.
    let cancelled = std::pin::pin!(shutdown.cancelled());
    let mut shutting_down = WokenOnly::new(cancelled);
    // One readiness future at a time, replaced in its box once it is ready: made afresh on
    // every pass it would register and unregister a waiter each time.
    let mut readable = WokenOnly::new(Box::pin(rd.readable()));
    // The connection's share is made with the first frame: a connection that never sends one
    // (thousands of idle or slowloris peers) holds none.
    let mut share: Option<Arc<ConnectionShare>> = None;
    // The connection's first request in flight is driven here, in its slot; only requests that
    // come while it is in flight go to `inflight` (a task allocated per request).
    let solo_slot = std::pin::pin!(None);
    let mut solo = WokenOnly::new(Solo(solo_slot));
    let mut inflight = FuturesUnordered::new();
    let mut out = Out::default();
    let mut admission: Option<Admission> = None;
    // Why the connection is closing, while what was accepted is still being answered.
    let mut closing: Option<String> = None;
    let why: String = 'conn: loop {
        // Decode everything buffered before reading more.
        while closing.is_none() && admission.is_none() && out.has_room() {
            let decoded = codec.decode(&mut buf);
            if matches!(decoded, Ok(None)) {
                break;
            }
            let share = share.get_or_insert_with(|| Arc::new(ConnectionShare::new(&limits.budget.limits)));
            let conn = Conn {
                peer,
                peer_ip: &peer_ip,
                stats: &stats,
                limits: &limits,
                share,
            };
            let step = match decoded {
                Ok(Some(frame)) => take(frame, Wire::Motan2, &conn),
                Ok(None) => break,
                Err(CodecError::Frame(FrameError::MotanV1)) => match v1_frame(&mut buf, &limits.decode) {
                    V1Frame::Incomplete => break,
                    V1Frame::Request(frame) => take(frame, Wire::V1, &conn),
                    V1Frame::Heartbeat(reply) => {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        Step::Reply(reply)
                    }
                    V1Frame::Refused(reply, why) => {
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "motan v1 request refused: {why}");
                        Step::Reply(reply)
                    }
                    V1Frame::Broken(reply, why) => {
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        if let Some(reply) = reply {
                            out.push(reply.into());
                        }
                        closing = Some(why);
                        break;
                    }
                },
                Err(e) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = oversize_reply(&buf, &e) {
                        out.push(reply.into());
                    }
                    closing = Some(format!("bad frame: {e}"));
                    break;
                }
            };
            match step {
                Step::Nothing => {}
                Step::Reply(reply) => out.push(reply.into()),
                Step::Start(s) => start(&mut solo, &mut inflight, answer(&*handler, s)),
                Step::Wait(a) => admission = Some(a),
            }
        }
        // Everything ready goes out in one write.
        if let Err(e) = out.write_now(&wr) {
            break 'conn format!("write error: {e}");
        }
        let busy = solo.inner().is_busy() || !inflight.is_empty() || admission.is_some() || !out.is_empty();
        if !busy && let Some(why) = closing.take() {
            break 'conn why;
        }
        // Only a connection with nothing in flight is idle.
        if busy {
            was_busy = true;
        } else if was_busy {
            was_busy = false;
            idle_since = tokio::time::Instant::now();
        }
        let idle_armed = idle.is_some() && !busy && closing.is_none();
        let read = closing.is_none() && admission.is_none() && out.has_room();
        // Biased: in this order, answers first; and no random start (a thread-local RNG per
        // wake-up).
        tokio::select! {
            biased;
            done = &mut solo, if solo.inner().is_busy() => {
                out.push(done);
                while let Some(Some(done)) = inflight.next().now_or_never() {
                    out.push(done);
                }
            }
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                out.push(done);
                // Every other answer that is ready joins the same write.
                while let Some(Some(done)) = inflight.next().now_or_never() {
                    out.push(done);
                }
            }
            admitted = async {
                match admission.as_mut() {
                    Some(a) => a.await,
                    None => std::future::pending().await,
                }
            }, if admission.is_some() => {
                admission = None;
                match admitted {
                    Admitted::Start(s) => start(&mut solo, &mut inflight, answer(&*handler, s)),
                    Admitted::Reply(reply) => out.push(reply.into()),
                }
            }
            r = wr.writable(), if !out.is_empty() => {
                if let Err(e) = r {
                    break 'conn format!("write error: {e}");
                }
            }
            () = &mut shutting_down, if closing.is_none() => closing = Some("agent shutting down".into()),
            () = &mut idle_timer, if idle_armed => {
                let due = idle_since + idle.unwrap_or_default();
                if tokio::time::Instant::now() >= due {
                    break 'conn "idle timeout".into();
                }
                idle_timer.inner_mut().as_mut().reset(due);
            }
            r = &mut readable, if read => {
                readable.inner_mut().set(rd.readable());
                let r = r.and_then(|()| read_some(&rd, &mut buf, limits.drained_reads));
                match r {
                    Ok(0) => closing = Some("closed by peer".into()),
                    Ok(_) => idle_since = tokio::time::Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => closing = Some(format!("read error: {e}")),
                }
            }
            // Not reached (a connection that is not closing waits for shutdown, one that is
            // has something in flight), but never a panic on the request path.
            else => break 'conn "nothing left to wait for".into(),
        }
    };
    // Requests still in flight (the peer is gone or cannot be written to) are cancelled here.
    drop(solo);
    drop(inflight);
    stats.active_connections.fetch_sub(1, Ordering::Relaxed);
    if why.starts_with("bad frame") || why.starts_with("bad motan v1") {
        warn_connection(peer, &why);
    } else {
        tracing::debug!(%peer, "connection ended: {why}");
    }
}

/// Start answering a request: in the connection's slot when it is free, else as a task of its
/// own in `inflight`.
fn start<F: Future>(solo: &mut WokenOnly<Solo<'_, F>>, inflight: &mut FuturesUnordered<F>, answer: F) {
    if solo.inner().is_busy() {
        inflight.push(answer);
    } else {
        solo.inner_mut().0.set(Some(answer));
    }
}

/// A slot for one future, pinned in the connection's task: ready with the future's output, after
/// which it is empty again (and pending while empty).
struct Solo<'a, F>(Pin<&'a mut Option<F>>);

impl<F> Solo<'_, F> {
    fn is_busy(&self) -> bool {
        self.0.is_some()
    }
}

impl<F: Future> Future for Solo<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let Some(f) = self.0.as_mut().as_pin_mut() else {
            return std::task::Poll::Pending;
        };
        let out = std::task::ready!(f.poll(cx));
        self.0.set(None);
        std::task::Poll::Ready(out)
    }
}

/// A future polled again only after it has woken the task: `select!` polls every branch on each
/// pass of a connection's loop (several per request), and polling a registered waiter again
/// (a cancellation token, a notification) takes its locks although nothing changed. The inner
/// future is given a waker of its own, which marks it woken and wakes the task.
struct WokenOnly<F> {
    inner: F,
    gate: Arc<Gate>,
    waker: std::task::Waker,
    polled: bool,
}

#[derive(Default)]
struct Gate {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> WokenOnly<F> {
    fn new(inner: F) -> WokenOnly<F> {
        let gate = Arc::new(Gate::default());
        WokenOnly {
            inner,
            waker: gate.clone().into(),
            gate,
            polled: false,
        }
    }
}

impl<F> WokenOnly<F> {
    fn inner(&self) -> &F {
        &self.inner
    }

    /// The inner future, to change or replace it; it is polled on the next poll (a reset timer
    /// registers its new deadline, a new future its waiter).
    fn inner_mut(&mut self) -> &mut F {
        self.polled = false;
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        // Registered before the check: a wake-up after it finds this task's waker.
        this.gate.task.register(cx.waker());
        if this.polled && !this.gate.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        this.polled = true;
        Pin::new(&mut this.inner).poll(&mut std::task::Context::from_waker(&this.waker))
    }
}

/// Answers on their way to the peer, oldest first, each with what it holds of the budgets
/// until it is written.
#[derive(Default)]
struct Out(WriteQueue<Queued>);

impl Out {
    fn push(&mut self, q: Queued) {
        self.0.push(q);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn has_room(&self) -> bool {
        self.0.len() < OUT_FRAMES
    }

    /// Write as much as the socket takes now (vectored writes of up to [`write_queue::MAX_IOV`] frames
    /// while it takes everything); a written frame gives back what it holds.
    fn write_now(&mut self, wr: &impl WriteHalf) -> std::io::Result<()> {
        self.0.write_with(|iov| wr.try_write_vectored(iov)).map(|_| ())
    }
}

impl write_queue::Frame for Queued {
    fn bytes(&self) -> &[u8] {
        &self.frame
    }
}

/// Read what is there. Into the buffer's spare room when the codec has reserved some for a
/// frame in progress; else through a stack buffer, so a peer that sent three bytes holds three
/// bytes, not a 4 KiB read buffer. `drained`: see `ConnectionLimits::drained_reads`.
fn read_some(rd: &impl ReadHalf, buf: &mut BytesMut, drained: bool) -> std::io::Result<usize> {
    let read = |room: &mut [MaybeUninit<u8>]| match drained {
        true => rd.try_read_drained(room),
        false => rd.try_read(room),
    };
    if buf.capacity() > buf.len() {
        let n = read(buf.spare_capacity_mut())?;
        // SAFETY: the read initialised `n` bytes of the spare room.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
    let mut scratch = [MaybeUninit::<u8>::uninit(); 8192];
    let n = read(&mut scratch)?;
    // SAFETY: the read initialised the first `n` bytes.
    let got = unsafe { std::slice::from_raw_parts(scratch.as_ptr().cast::<u8>(), n) };
    if buf.is_empty() {
        // A buffer of its own for what arrived: growing the one shared with the frames split
        // off it would allocate its original capacity and double it for the next frame.
        *buf = BytesMut::from(got);
    } else {
        buf.extend_from_slice(got);
    }
    Ok(n)
}

/// What `take` needs of its connection.
struct Conn<'a> {
    peer: SocketAddr,
    peer_ip: &'a Bytes,
    stats: &'a ServeStats,
    limits: &'a ConnectionLimits,
    share: &'a Arc<ConnectionShare>,
}

/// How a request came and how its answer goes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Motan2,
    /// A motan v1 request converted to Motan2: the response is converted back.
    V1,
}

impl Wire {
    fn encode(self, request_id: u64, mut resp: Frame) -> Bytes {
        match self {
            Wire::Motan2 => {
                resp.header.request_id = request_id;
                resp.encode_to_bytes()
            }
            Wire::V1 => v1::response_from_motan2(request_id, &resp),
        }
    }

    fn refuse(self, id: u64, code: i64, msg: String) -> Bytes {
        let ex = Exception::service(code, msg);
        self.encode(id, Frame::agent_exception(id, &ex))
    }
}

/// A request admitted to the budgets, ready for its handler.
struct Started {
    frame: Frame,
    ctx: RequestContext,
    via: Wire,
    id: u64,
    permit: SharePermit,
    lease: Lease,
}

/// What to do with one decoded frame. Not boxed although `Start` is the large variant: it is
/// the common one, moved once, and a box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    Nothing,
    /// Answer at once (heartbeats, refusals).
    Reply(Bytes),
    Start(Started),
    /// Wait (not reading) for room in the connection's share, or inflate the body first.
    Wait(Admission),
}

/// What a waiting request became (unboxed, as [`Step`]).
#[allow(clippy::large_enum_variant)]
enum Admitted {
    Start(Started),
    Reply(Bytes),
}

/// Take one decoded frame: the common request (room in the share, not compressed) is started
/// without waiting or allocating.
fn take(frame: Frame, via: Wire, conn: &Conn<'_>) -> Step {
    let Conn {
        peer,
        peer_ip,
        stats,
        limits,
        share,
    } = *conn;
    if frame.header.is_response() {
        // Apps do not send responses to an agent; ignore rather than fail the connection.
        return Step::Nothing;
    }
    if frame.header.is_heartbeat() {
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let id = frame.header.request_id;
        return Step::Reply(Frame::heartbeat_response(id).encode_to_bytes());
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let ctx = RequestContext {
        peer,
        peer_ip: peer_ip.clone(),
        received: Instant::now(),
    };
    let id = frame.header.request_id;
    let wire = frame.encoded_len() as u64;
    if !frame.header.is_gzip()
        && let Some(permit) = share.try_request(wire)
    {
        let budget = &limits.budget;
        return match budget.admit(wire) {
            Some(lease) => Step::Start(Started {
                frame,
                ctx,
                via,
                id,
                permit,
                lease,
            }),
            None => Step::Reply(via.refuse(id, 503, over_budget(budget))),
        };
    }
    Step::Wait(Box::pin(admit(frame, ctx, via, share.clone(), limits.clone())))
}

/// A request that waits for room in its connection's share (the connection is not read from
/// meanwhile) or has a compressed body.
async fn admit(
    mut frame: Frame,
    ctx: RequestContext,
    via: Wire,
    share: Arc<ConnectionShare>,
    limits: ConnectionLimits,
) -> Admitted {
    let id = frame.header.request_id;
    let refuse = |code, msg: String| Admitted::Reply(via.refuse(id, code, msg));
    let wire = frame.encoded_len() as u64;
    let mut permit = share.request(wire).await;
    let budget = &limits.budget;
    let Some(mut lease) = budget.admit(wire) else {
        return refuse(503, over_budget(budget));
    };
    if frame.header.is_gzip() {
        // Inflate no further than the budgets have room for (a gzip bomb stops there).
        let room = budget.bytes_left().min(u64::from(budget.limits.connection_bytes));
        let cap = (limits.decode.max_body as u64).min(room) as usize;
        // Off the runtime's workers: inflating megabytes would stall every task queued on this
        // worker for as long.
        let inflated = tokio::task::spawn_blocking(move || {
            let r = frame.gunzip(cap);
            (frame, r)
        })
        .await;
        let Ok((inflated, r)) = inflated else {
            return refuse(500, "cannot decompress the request body".into());
        };
        frame = inflated;
        if let Err(e) = r {
            let (code, msg) = match e {
                FrameError::BodyTooLarge { .. } if cap < limits.decode.max_body => {
                    budget.rejected.inc();
                    (503, over_budget(budget))
                }
                e => (500, format!("cannot decompress the request body: {e}")),
            };
            return refuse(code, msg);
        }
        let inflated = frame.body.len() as u64;
        permit = share.request_more(permit, inflated).await;
        if !budget.grow(&mut lease, inflated) {
            budget.rejected.inc();
            return refuse(503, over_budget(budget));
        }
    }
    Admitted::Start(Started {
        frame,
        ctx,
        via,
        id,
        permit,
        lease,
    })
}

/// One request's answer, driven by its connection's task. The response takes over its
/// request's share and lease without waiting: requests and their responses together stay
/// within the share, and a full share always drains.
async fn answer<H: Handler>(handler: &H, s: Started) -> Queued {
    let Started {
        frame,
        ctx,
        via,
        id,
        permit,
        lease,
    } = s;
    // Boxed: the handler's future is a few KiB (the whole call path's state); unboxed it would
    // make this future as large, and the connection's `FuturesUnordered` copies a pushed
    // future three times (about 900 instructions per request, callgrind). Boxed it is copied
    // once, when it starts.
    let resp = Box::pin(handler.handle(frame, ctx)).await;
    let bytes = via.encode(id, resp);
    let n = bytes.len() as u64;
    Queued {
        frame: bytes,
        _held: Some((permit.into_response(n), lease.into_response(n))),
    }
}

fn over_budget(budget: &Budget) -> String {
    let (requests, bytes) = budget.in_use();
    format!(
        "agent overloaded: {requests} request(s) and {bytes} byte(s) in flight (limits sockmesh.limits.requests = {}, sockmesh.limits.bytes = {}); retry later",
        budget.limits.requests, budget.limits.bytes
    )
}

/// What to do with a motan v1 frame at the start of the buffer.
#[derive(Debug)]
enum V1Frame {
    /// Not all of it is buffered yet.
    Incomplete,
    /// A heartbeat: its answer.
    Heartbeat(Bytes),
    /// A request, as Motan2.
    Request(Frame),
    /// A well-framed request that cannot be served: a v1 exception; the connection stays.
    Refused(Bytes, String),
    /// Broken framing: the rest of the stream cannot be trusted. A v1 exception when the
    /// request id could be read, then the connection closes.
    Broken(Option<Bytes>, String),
}

fn v1_frame(buf: &mut BytesMut, limits: &DecodeLimits) -> V1Frame {
    let broken = |buf: &[u8], e: FrameError| {
        let why = format!("bad motan v1 frame: {e}");
        let reply = v1::outer_request_id(buf).map(|id| v1::exception_response(id, &why));
        V1Frame::Broken(reply, why)
    };
    let n = match v1::frame_len(buf, limits.max_body) {
        Ok(None) => return V1Frame::Incomplete,
        Ok(Some(n)) if buf.len() < n => return V1Frame::Incomplete,
        Ok(Some(n)) => n,
        Err(e) => return broken(buf, e),
    };
    let frame = buf.split_to(n);
    if let Err(e) = v1::decode_header(&frame) {
        return broken(&frame, e);
    }
    if let Some(reply) = v1::answer_heartbeat(&frame) {
        return V1Frame::Heartbeat(reply);
    }
    match v1::decode_request(&frame, limits.max_body) {
        Ok(req) => V1Frame::Request(req.to_motan2()),
        Err(e) => {
            let why = format!("bad motan v1 request: {e}");
            let id = v1::outer_request_id(&frame).unwrap_or(0);
            V1Frame::Refused(v1::exception_response(id, &why), why)
        }
    }
}

/// An over-limit meta or body: answer with an exception carrying the frame's request id.
fn oversize_reply(buf: &[u8], e: &CodecError) -> Option<Bytes> {
    let CodecError::Frame(fe @ (FrameError::BodyTooLarge { .. } | FrameError::MetaTooLarge { .. })) = e
    else {
        return None;
    };
    let id = u64::from_be_bytes(buf.get(5..13)?.try_into().ok()?);
    let ex = Exception::service(500, format!("request refused by the agent: {fe}"));
    Some(Frame::agent_exception(id, &ex).encode_to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections::LimitsSection;
    use futures_util::SinkExt;
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Framed;

    #[test]
    fn a_gated_future_is_polled_again_only_once_it_woke_the_task_or_was_replaced() {
        let notify = tokio::sync::Notify::new();
        let polls = std::cell::Cell::new(0);
        let counted = |n: &'static str| {
            let mut notified = Box::pin(notify.notified());
            let polls = &polls;
            std::future::poll_fn(move |cx| {
                polls.set(polls.get() + 1);
                notified.as_mut().poll(cx).map(|()| n)
            })
        };
        let mut gated = WokenOnly::new(Box::pin(counted("first")));
        let task = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&task);
        let mut poll = |g: &mut WokenOnly<_>| Pin::new(g).poll(&mut cx);
        assert!(poll(&mut gated).is_pending());
        // Nothing woke it: polling the branch again does not reach the inner future.
        assert!(poll(&mut gated).is_pending() && poll(&mut gated).is_pending());
        assert_eq!(polls.get(), 1);
        notify.notify_waiters();
        assert_eq!(poll(&mut gated), std::task::Poll::Ready("first"));
        assert_eq!(polls.get(), 2);
        // A replaced future is polled at once (it has not registered anything yet).
        gated.inner_mut().set(counted("second"));
        assert!(poll(&mut gated).is_pending());
        assert_eq!(polls.get(), 3);
        notify.notify_waiters();
        assert_eq!(poll(&mut gated), std::task::Poll::Ready("second"));
    }

    /// Answers every request with its own body.
    struct Echo;

    impl Handler for Echo {
        fn handle(&self, req: Frame, _: RequestContext) -> impl Future<Output = Frame> + Send + 'static {
            let resp = Frame::response_to(&req, req.body.clone());
            async move { resp }
        }
    }

    /// Answers after as many milliseconds as the body's first byte says.
    struct Delayed;

    impl Handler for Delayed {
        fn handle(&self, req: Frame, _: RequestContext) -> impl Future<Output = Frame> + Send + 'static {
            let delay = Duration::from_millis(u64::from(req.body.first().copied().unwrap_or(0)));
            let resp = Frame::response_to(&req, req.body.clone());
            async move {
                tokio::time::sleep(delay).await;
                resp
            }
        }
    }

    /// The first request in flight is driven in the connection's slot, the ones that come
    /// meanwhile as tasks of their own: each answer goes out as soon as it is ready, whichever
    /// holds it, and the slot serves again once free.
    #[tokio::test]
    async fn requests_in_flight_together_are_answered_as_each_is_ready() {
        let limits = ConnectionLimits::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            "test",
            listener,
            AcceptGate::new(&limits.budget),
            Arc::new(Delayed),
            limits.clone(),
            Arc::default(),
            shutdown.clone(),
            TaskTracker::new(),
        ));
        let mut conn = Framed::new(TcpStream::connect(addr).await.unwrap(), Motan2Codec::default());
        for round in 0..3u64 {
            // Slowest first (it takes the slot), then the others while it runs.
            for (i, delay) in [(1u64, 200u8), (2, 0), (3, 60)] {
                let req = Frame::request(round * 10 + i, "s", "m", Bytes::from(vec![delay, 1]));
                conn.feed(req).await.unwrap();
            }
            SinkExt::<Frame>::flush(&mut conn).await.unwrap();
            let mut order = Vec::new();
            for _ in 0..3 {
                let resp = tokio::time::timeout(Duration::from_secs(5), conn.next())
                    .await
                    .expect("an answer did not come")
                    .unwrap()
                    .unwrap();
                let id = resp.header.request_id;
                assert_eq!(
                    resp.body[0],
                    [200u8, 0, 60][(id % 10 - 1) as usize],
                    "answer to {id}"
                );
                order.push(id % 10);
            }
            assert_eq!(order, [2, 3, 1], "round {round}");
            // One at a time: the slot alone.
            let req = Frame::request(round * 10 + 9, "s", "m", Bytes::from(vec![5u8]));
            conn.send(req).await.unwrap();
            let resp = conn.next().await.unwrap().unwrap();
            assert_eq!(resp.header.request_id, round * 10 + 9);
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_idle_client_is_closed_after_its_timeout_and_an_active_one_is_not() {
        let limits = ConnectionLimits {
            decode: DecodeLimits::default(),
            budget: Budget::new(LimitsSection {
                client_idle_timeout_ms: 300,
                ..Default::default()
            }),
            drained_reads: false,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        spawn_echo("test", listener, &limits, &shutdown);
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut active = Framed::new(TcpStream::connect(addr).await.unwrap(), Motan2Codec::default());
        let t0 = Instant::now();
        // A request every 100 ms for a second: answered, the connection stays.
        for i in 0..10 {
            let req = Frame::request(i, "s", "m", Bytes::from_static(b"x"));
            active.send(req).await.unwrap();
            let resp = active.next().await.unwrap().unwrap();
            assert_eq!(resp.header.request_id, i);
            assert_eq!(resp.body.as_ref(), b"x");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(t0.elapsed() >= Duration::from_millis(1000));
        // The one that never sent anything was closed meanwhile.
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_millis(100), idle.read(&mut b))
            .await
            .expect("the idle connection is still open")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The active one, idle now, goes after its timeout too.
        let went_idle = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(3), active.next())
            .await
            .expect("the connection stayed open");
        assert!(end.is_none_or(|r| r.is_err()));
        let after = went_idle.elapsed();
        assert!(
            after >= Duration::from_millis(150),
            "closed {after:?} after its last answer"
        );
        shutdown.cancel();
    }

    /// What a client of a `drained_reads` listener does: a frame in pieces with pauses, a body
    /// larger than the read buffer, many requests in one write; every answer comes back.
    async fn drained_reads_answer_everything<S>(mut conn: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let mut codec = Motan2Codec::default();
        let mut wire = BytesMut::new();
        let mut answers = BytesMut::new();
        let next = async |conn: &mut S, answers: &mut BytesMut| -> Frame {
            let mut codec = Motan2Codec::default();
            loop {
                if let Some(f) = codec.decode(answers).unwrap() {
                    return f;
                }
                let n = tokio::time::timeout(Duration::from_secs(5), conn.read_buf(answers))
                    .await
                    .expect("an answer did not come: a read readiness was lost")
                    .unwrap();
                assert!(n > 0, "the agent closed the connection");
            }
        };
        // One frame in three pieces, 30 ms apart: each piece is a short read.
        tokio_util::codec::Encoder::encode(
            &mut codec,
            Frame::request(1, "s", "m", Bytes::from_static(b"split")),
            &mut wire,
        )
        .unwrap();
        let third = wire.len() / 3;
        for piece in [wire.split_to(third), wire.split_to(third), wire.split()] {
            conn.write_all(&piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let f = next(&mut conn, &mut answers).await;
        assert_eq!((f.header.request_id, f.body.as_ref()), (1, &b"split"[..]));
        // A 200 KiB body: read into the room the codec reserved, across many reads.
        let big = Bytes::from(vec![7u8; 200 * 1024]);
        tokio_util::codec::Encoder::encode(&mut codec, Frame::request(2, "s", "m", big.clone()), &mut wire)
            .unwrap();
        conn.write_all(&wire.split()).await.unwrap();
        let f = next(&mut conn, &mut answers).await;
        assert_eq!(f.header.request_id, 2);
        assert!(f.body == big, "the large body came back changed");
        // 64 requests in one write: all answered.
        for i in 0..64 {
            tokio_util::codec::Encoder::encode(
                &mut codec,
                Frame::request(100 + i, "s", "m", Bytes::from_static(b"p")),
                &mut wire,
            )
            .unwrap();
        }
        conn.write_all(&wire.split()).await.unwrap();
        let mut ids: Vec<u64> = Vec::new();
        for _ in 0..64 {
            ids.push(next(&mut conn, &mut answers).await.header.request_id);
        }
        ids.sort_unstable();
        assert_eq!(ids, (100..164).collect::<Vec<u64>>());
    }

    /// An echo server's accept loop on `listener` with `limits`, until `shutdown`.
    fn spawn_echo<L>(name: &'static str, listener: L, limits: &ConnectionLimits, shutdown: &CancellationToken)
    where
        L: Accept + Send + Sync + 'static,
        L::Conn: Inbound + crate::shard::Rehome,
        L::Addr: AgentPeer + Send,
    {
        tokio::spawn(accept_loop(
            name,
            listener,
            AcceptGate::new(&limits.budget),
            Arc::new(Echo),
            limits.clone(),
            Arc::default(),
            shutdown.clone(),
            TaskTracker::new(),
        ));
    }

    #[tokio::test]
    async fn drained_reads_lose_no_frame_over_tcp_and_unix_sockets() {
        let limits = ConnectionLimits {
            drained_reads: true,
            ..ConnectionLimits::default()
        };
        let shutdown = CancellationToken::new();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("sockmesh-drained-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = tokio::net::UnixListener::bind(&dir).unwrap();
        spawn_echo("tcp", tcp, &limits, &shutdown);
        spawn_echo("unix", unix, &limits, &shutdown);
        drained_reads_answer_everything(TcpStream::connect(addr).await.unwrap()).await;
        drained_reads_answer_everything(UnixStream::connect(&dir).await.unwrap()).await;
        shutdown.cancel();
        let _ = std::fs::remove_file(&dir);
    }

    #[tokio::test]
    async fn sockets_of_a_group_share_the_cap_and_an_idle_one_holds_no_slot() {
        let budget = Budget::new(LimitsSection {
            listener_connections: 1,
            ..Default::default()
        });
        let mut a = AcceptGate::new(&budget);
        let mut b = a.sibling();
        let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (at_a, at_b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        // A waits for a connection that does not come: B still accepts, within the cap.
        let sd = shutdown.clone();
        let waiting_a = tokio::spawn(async move {
            let got = next_connection("a", &la, &mut a, &sd)
                .await
                .map(|(c, _, s)| (c, s));
            (got, la, a)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _cb = TcpStream::connect(at_b).await.unwrap();
        let (_, _, slot_b) = tokio::time::timeout(
            Duration::from_secs(2),
            next_connection("b", &lb, &mut b, &shutdown),
        )
        .await
        .expect("an idle sibling held the only slot")
        .unwrap();
        // The cap is shared: A's connection waits until B's slot comes back.
        let _ca = TcpStream::connect(at_a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting_a.is_finished(), "accepted beyond listener_connections");
        drop(slot_b);
        let (got, _la, _a) = tokio::time::timeout(Duration::from_secs(2), waiting_a)
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_some());
    }

    #[tokio::test]
    async fn next_connection_stops_accepting_at_the_cap_until_a_slot_is_given_back() {
        let budget = Budget::new(LimitsSection {
            listener_connections: 1,
            ..Default::default()
        });
        let mut gate = AcceptGate::new(&budget);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let (_, _, slot) = next_connection("test", &listener, &mut gate, &shutdown)
            .await
            .unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(200),
            next_connection("test", &listener, &mut gate, &shutdown),
        )
        .await;
        assert!(waiting.is_err(), "accepted beyond listener_connections");
        drop(slot);
        // Watched: at the cap it is behind; once the backlog is empty it has caught up.
        let progress = Arc::new(AcceptProgress::default());
        let mut gate = gate.watched_by(Some(progress.clone()));
        let (_, _, slot) = next_connection("test", &listener, &mut gate, &shutdown)
            .await
            .unwrap();
        assert!(!progress.is_behind(), "accepted without waiting");
        let waiting = tokio::time::timeout(
            Duration::from_millis(100),
            next_connection("test", &listener, &mut gate, &shutdown),
        )
        .await;
        assert!(waiting.is_err());
        assert!(progress.is_behind(), "at the cap, not behind");
        drop(slot);
        let waiting = tokio::time::timeout(
            Duration::from_millis(100),
            next_connection("test", &listener, &mut gate, &shutdown),
        )
        .await;
        assert!(waiting.is_err(), "the backlog should be empty");
        assert!(!progress.is_behind(), "an empty backlog is caught up");
        let _c = TcpStream::connect(addr).await.unwrap();
        let second = tokio::time::timeout(
            Duration::from_secs(5),
            next_connection("test", &listener, &mut gate, &shutdown),
        )
        .await
        .unwrap();
        assert!(second.is_some());
        shutdown.cancel();
        assert!(
            next_connection("test", &listener, &mut gate, &shutdown)
                .await
                .is_none()
        );
    }
}
