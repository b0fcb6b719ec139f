//! The inbound side of a Motan2 connection (apps on the agent port, client agents on an
//! export port, intercepted connections): decode frames, answer heartbeats, hand each request
//! to a [`Handler`] on its own task (full multiplexing) and write responses as they complete.
//!
//! Bad input affects only its own connection: an oversized frame is answered with an exception
//! frame carrying its request id and the connection is closed (the rest of the stream cannot be
//! trusted); any other malformed frame closes the connection (spec 1.13).
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::motan2::{CodecError, DecodeLimits, Exception, Frame, FrameError, Motan2Codec, v1};
use crate::upstream::channel::{WRITE_QUEUE, write_frames};

/// What a listener does with each request: its answer (oneway requests are answered too, see
/// `cluster::oneway_answer`). The future runs as the request's task; being a concrete type
/// (not boxed) it costs no allocation of its own.
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

/// Accept on `listener` until `shutdown`, serving each connection on a task tracked by `tasks`.
pub async fn accept_loop<H: Handler>(
    name: &'static str,
    listener: tokio::net::TcpListener,
    handler: Arc<H>,
    limits: DecodeLimits,
    stats: Arc<ServeStats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    while let Some((conn, peer)) = next_connection(name, &listener, &shutdown).await {
        let h = handler.clone();
        let (l, s, sd) = (limits, stats.clone(), shutdown.clone());
        tasks.spawn(async move { serve_connection(conn, peer, BytesMut::new(), h, l, s, sd).await });
    }
}

/// The next accepted connection, or `None` once `shutdown` is cancelled; a failed accept (out
/// of descriptors, say) is logged and retried after a short pause.
pub async fn next_connection(
    name: &'static str,
    listener: &tokio::net::TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serve one connection until the peer closes, a bad frame arrives, or `shutdown`; requests
/// already read are answered before the connection closes. `buf` holds bytes already read
/// from the connection (protocol sniffing).
pub async fn serve_connection<H: Handler>(
    conn: TcpStream,
    peer: SocketAddr,
    mut buf: BytesMut,
    handler: Arc<H>,
    limits: DecodeLimits,
    stats: Arc<ServeStats>,
    shutdown: CancellationToken,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let _ = conn.set_nodelay(true);
    let (mut rd, mut wr) = conn.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::spawn(async move { write_frames(&mut wr, rx).await });
    let requests = TaskTracker::new();
    let peer_ip = Bytes::from(peer.ip().to_string());
    let mut codec = Motan2Codec::new(limits);
    let conn = Conn {
        peer,
        peer_ip: &peer_ip,
        handler: &handler,
        tx: &tx,
        requests: &requests,
        stats: &stats,
        limits: &limits,
    };
    buf.reserve(8192);
    let why: String = 'conn: loop {
        // Decode everything buffered before reading more.
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if !dispatch(frame, &conn).await {
                        break 'conn "writer closed".into();
                    }
                }
                Ok(None) => break,
                Err(CodecError::Frame(FrameError::MotanV1)) => match v1_frame(&mut buf, &limits) {
                    Ok(None) => break,
                    Ok(Some(reply)) => {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        if tx.send(reply).await.is_err() {
                            break 'conn "writer closed".into();
                        }
                    }
                    Err(e) => {
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        break 'conn e;
                    }
                },
                Err(e) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = oversize_reply(&buf, &e) {
                        let _ = tx.send(reply).await;
                    }
                    break 'conn format!("bad frame: {e}");
                }
            }
        }
        let n = tokio::select! {
            _ = shutdown.cancelled() => break 'conn "agent shutting down".into(),
            r = rd.read_buf(&mut buf) => r,
        };
        match n {
            Ok(0) => break 'conn "closed by peer".into(),
            Ok(_) => {}
            Err(e) => break 'conn format!("read error: {e}"),
        }
    };
    // Answer what was accepted, then close.
    requests.close();
    requests.wait().await;
    drop(tx);
    let _ = writer.await;
    stats.active_connections.fetch_sub(1, Ordering::Relaxed);
    if why.starts_with("bad frame") || why.starts_with("motan v1") {
        // WARN lines also land in `sockmesh status` (recent errors).
        tracing::warn!(%peer, "closing connection: {why}");
    } else {
        tracing::debug!(%peer, "connection ended: {why}");
    }
}

/// What `dispatch` needs of its connection.
struct Conn<'a, H> {
    peer: SocketAddr,
    peer_ip: &'a Bytes,
    handler: &'a Arc<H>,
    tx: &'a mpsc::Sender<Bytes>,
    requests: &'a TaskTracker,
    stats: &'a ServeStats,
    limits: &'a DecodeLimits,
}

/// Handle one decoded frame; false when the writer is gone.
async fn dispatch<H: Handler>(mut frame: Frame, conn: &Conn<'_, H>) -> bool {
    let Conn {
        peer,
        peer_ip,
        handler,
        tx,
        requests,
        stats,
        limits,
    } = *conn;
    if frame.header.is_response() {
        // Apps do not send responses to an agent; ignore rather than fail the connection.
        return true;
    }
    if frame.header.is_heartbeat() {
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let id = frame.header.request_id;
        return tx
            .send(Frame::heartbeat_response(id).encode_to_bytes())
            .await
            .is_ok();
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let ctx = RequestContext {
        peer,
        peer_ip: peer_ip.clone(),
        received: Instant::now(),
    };
    let id = frame.header.request_id;
    if frame.header.is_gzip()
        && let Err(e) = frame.gunzip(limits.max_body)
    {
        let ex = Exception::service(500, format!("cannot decompress the request body: {e}"));
        return tx
            .send(Frame::agent_exception(id, &ex).encode_to_bytes())
            .await
            .is_ok();
    }
    let (handler, tx) = (handler.clone(), tx.clone());
    // The handler's future is made inside the task: a future made outside and moved in would
    // be stored twice in the task (once captured, once awaited).
    requests.spawn(async move {
        let mut resp = handler.handle(frame, ctx).await;
        resp.header.request_id = id;
        let _ = tx.send(resp.encode_to_bytes()).await;
    });
    true
}

/// A motan v1 frame: heartbeats are answered (old Java clients probe with them); anything else
/// is refused by closing, as this agent speaks Motan2 only.
fn v1_frame(buf: &mut BytesMut, limits: &DecodeLimits) -> Result<Option<Bytes>, String> {
    let max = limits.max_body;
    match v1::frame_len(buf, max) {
        Ok(None) => Ok(None),
        Ok(Some(n)) if buf.len() < n => Ok(None),
        Ok(Some(n)) => {
            let frame = buf.split_to(n);
            match v1::answer_heartbeat(&frame) {
                Some(reply) => Ok(Some(reply)),
                None => Err("motan v1 request: only motan2 is supported (v1 heartbeats are answered)".into()),
            }
        }
        Err(e) => Err(format!("bad frame: {e}")),
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
