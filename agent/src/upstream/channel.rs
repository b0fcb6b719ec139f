//! Upstream connections: one `Channel` is a multiplexed Motan2 connection to one endpoint
//! (many requests in flight, responses matched by request id); a `Pool` keeps
//! `clientConnection` channels per endpoint and replaces dead ones.
//!
//! Request ids are remapped per channel (spec 1.9): the caller's id is kept by the caller and
//! restored on the response. Every frame is encoded into one contiguous buffer before it is
//! queued, so a reader never sees a frame in fragments made by us; the writer task batches
//! whole frames into one write when several are queued.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::net::SocketFactory;
use crate::protocol::motan2::call::{CallError, E_NO_CHANNEL};
use crate::protocol::motan2::{DecodeLimits, Frame, Motan2Codec};

/// Frames queued per channel before callers wait (back-pressure instead of unbounded memory).
pub const WRITE_QUEUE: usize = 4096;
/// Upper bound of one batched write.
const MAX_BATCH: usize = 256 * 1024;

/// How channels are made: the socket factory (the agent's mark, namespace), the connect
/// timeout and the frame limits for responses.
#[derive(Clone, Debug)]
pub struct Transport {
    pub sockets: SocketFactory,
    pub connect_timeout: Duration,
    pub limits: DecodeLimits,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            sockets: SocketFactory::default(),
            connect_timeout: Duration::from_millis(1000),
            limits: DecodeLimits::default(),
        }
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Frame>>>;

/// One multiplexed connection. Dropping the last handle closes it.
#[derive(Debug)]
pub struct Channel {
    peer: String,
    tx: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

/// "channel call error: ..." (errcode 400, errtype 1): retryable, counts against the endpoint.
fn channel_error(what: impl std::fmt::Display) -> CallError {
    CallError::service(400, format!("channel call error: {what}"))
}

impl Channel {
    pub async fn connect(addr: &str, t: &Transport) -> Result<Channel, CallError> {
        let sa: SocketAddr = addr
            .parse()
            .map_err(|_| CallError::service(E_NO_CHANNEL, format!("bad endpoint address {addr:?}")))?;
        let stream = connect_tcp(sa, t)
            .await
            .map_err(|e| CallError::service(E_NO_CHANNEL, format!("connect to {addr} failed: {e:#}")))?;
        Ok(Channel::start(stream, addr.to_string(), t.limits))
    }

    fn start(stream: TcpStream, peer: String, limits: DecodeLimits) -> Channel {
        let (rd, mut wr) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let pending: Arc<Pending> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let closed_w = closed.clone();
        let peer_w = peer.clone();
        tokio::spawn(async move {
            if let Err(e) = write_frames(&mut wr, rx).await {
                tracing::debug!(peer = %peer_w, "upstream write failed: {e}");
            }
            closed_w.store(true, Ordering::Release);
        });
        // Reader: hand each response to its caller; on EOF or error fail everything pending.
        let pending_r = pending.clone();
        let closed_r = closed.clone();
        let peer_r = peer.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, Motan2Codec::new(limits));
            let why = loop {
                match frames.next().await {
                    Some(Ok(f)) if f.header.is_response() => {
                        let waiter = pending_r.lock().unwrap().remove(&f.header.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(f);
                        }
                    }
                    Some(Ok(_)) => {} // a request from upstream: nothing asks for that; ignore
                    Some(Err(e)) => break format!("{e}"),
                    None => break "connection closed by peer".to_string(),
                };
            };
            tracing::debug!(peer = %peer_r, "upstream channel closed: {why}");
            closed_r.store(true, Ordering::Release);
            // Dropping the senders wakes every waiter with an error.
            pending_r.lock().unwrap().clear();
        });
        Channel {
            peer,
            tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// Send `req` with a channel-local request id and wait for its response up to `timeout`.
    /// The response keeps the channel id; the caller restores its own.
    pub async fn call(&self, mut req: Frame, timeout: Duration) -> Result<Frame, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.header.request_id = id;
        let bytes = req.encode_to_bytes();
        drop(req);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        // The reader may have closed between the check and the insert: re-check after.
        if self.is_closed() {
            self.pending.lock().unwrap().remove(&id);
            return Err(channel_error(format!("connection to {} is closed", self.peer)));
        }
        let sent = tokio::time::timeout(timeout, self.tx.send(bytes)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.pending.lock().unwrap().remove(&id);
            return Err(channel_error(format!("cannot write to {}", self.peer)));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(channel_error(format!(
                "connection to {} closed with the request in flight",
                self.peer
            ))),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(channel_error(format!(
                    "request timed out after {} ms waiting for {}",
                    timeout.as_millis(),
                    self.peer
                )))
            }
        }
    }

    /// A oneway request: written, never answered.
    pub async fn send_oneway(&self, mut req: Frame) -> Result<(), CallError> {
        req.header.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(req.encode_to_bytes())
            .await
            .map_err(|_| channel_error(format!("cannot write to {}", self.peer)))
    }

    pub async fn heartbeat(&self, timeout: Duration) -> Result<(), CallError> {
        let resp = self.call(Frame::heartbeat_request(0), timeout).await?;
        if resp.header.is_heartbeat() {
            Ok(())
        } else {
            Err(channel_error("heartbeat answered with a non-heartbeat frame"))
        }
    }
}

/// Write queued frames (each already one contiguous buffer) until every sender is gone,
/// batching whole frames into one write while more are queued.
pub async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    mut rx: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        match rx.try_recv() {
            Err(_) => wr.write_all(&first).await?,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(b) => batch.extend_from_slice(&b),
                        Err(_) => break,
                    }
                }
                wr.write_all(&batch).await?
            }
        }
    }
    wr.flush().await
}

async fn connect_tcp(sa: SocketAddr, t: &Transport) -> anyhow::Result<TcpStream> {
    t.sockets.connect_within(sa, t.connect_timeout).await
}

/// `size` channels to one address, made on demand and replaced when they die. Callers are
/// spread over the live channels by a rotating index.
#[derive(Debug)]
pub struct Pool {
    addr: String,
    transport: Transport,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Channel>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(addr: String, size: usize, transport: Transport) -> Pool {
        Pool {
            addr,
            transport,
            slots: (0..size.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// A live channel, connecting the chosen slot if it has none (errcode 1002 on failure).
    pub async fn get(&self) -> Result<Arc<Channel>, CallError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(Channel::connect(&self.addr, &self.transport).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Connect every slot (the pool's initial creation); fails if none could be made.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let mut last = None;
        let mut any = false;
        for _ in 0..self.slots.len() {
            match self.get().await {
                Ok(_) => any = true,
                Err(e) => last = Some(e),
            }
        }
        match (any, last) {
            (true, _) | (false, None) => Ok(()),
            (false, Some(e)) => Err(e),
        }
    }

    pub async fn call(&self, req: Frame, timeout: Duration) -> Result<Frame, CallError> {
        self.get().await?.call(req, timeout).await
    }

    pub async fn heartbeat(&self, timeout: Duration) -> Result<(), CallError> {
        self.get().await?.heartbeat(timeout).await
    }

    /// Live channels and requests in flight over them (for status).
    pub fn usage(&self) -> (usize, usize) {
        let mut live = 0;
        let mut in_flight = 0;
        for s in &self.slots {
            if let Ok(g) = s.try_lock()
                && let Some(c) = g.as_ref()
                && !c.is_closed()
            {
                live += 1;
                in_flight += c.in_flight();
            }
        }
        (live, in_flight)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    use futures_util::SinkExt;

    /// An upstream that answers every request with its body reversed, after `delay_ms` taken
    /// from the body's first byte, so responses come back out of order.
    pub(crate) async fn upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut sink, mut stream) = Framed::new(s, Motan2Codec::default()).split();
                    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
                    tokio::spawn(async move {
                        while let Some(f) = rx.recv().await {
                            if sink.send(f).await.is_err() {
                                break;
                            }
                        }
                    });
                    while let Some(Ok(f)) = stream.next().await {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if f.header.is_heartbeat() {
                                let _ = tx.send(Frame::heartbeat_response(f.header.request_id));
                                return;
                            }
                            let delay = f.body.first().copied().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                            let mut body = f.body.to_vec();
                            body.reverse();
                            let _ = tx.send(Frame::response_to(&f, Bytes::from(body)));
                        });
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn multiplexed_calls_get_their_own_answers() {
        let addr = upstream().await;
        let pool = Arc::new(Pool::new(addr.to_string(), 2, Transport::default()));
        pool.warm_up().await.unwrap();
        let mut calls = Vec::new();
        for i in 0..200u32 {
            let pool = pool.clone();
            calls.push(tokio::spawn(async move {
                let body = Bytes::from(vec![(i % 7) as u8, (i >> 8) as u8, i as u8]);
                let req = Frame::request(u64::from(i) + 1_000_000, "s", "m", body.clone());
                let resp = pool.call(req, Duration::from_secs(5)).await.unwrap();
                let mut want = body.to_vec();
                want.reverse();
                assert_eq!(resp.body.as_ref(), want.as_slice());
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(pool.usage().0, 2);
        pool.heartbeat(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn timeout_and_refused_are_channel_errors() {
        let addr = upstream().await;
        let pool = Pool::new(addr.to_string(), 1, Transport::default());
        let req = Frame::request(1, "s", "m", Bytes::from_static(&[200]));
        let e = pool.call(req, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("timed out"), "{e}");
        assert_eq!(pool.usage().1, 0, "a timed-out request is forgotten");

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let pool = Pool::new(dead.to_string(), 1, Transport::default());
        let e = pool
            .call(Frame::request(1, "s", "m", Bytes::new()), Duration::from_secs(1))
            .await;
        let e = e.unwrap_err();
        assert_eq!(e.code, E_NO_CHANNEL);
        assert!(e.is_retryable());
    }

    #[tokio::test]
    async fn in_flight_requests_fail_when_the_peer_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut frames = FramedRead::new(s, Motan2Codec::default());
            let _ = frames.next().await; // read one request, then close
        });
        let pool = Pool::new(addr.to_string(), 1, Transport::default());
        let e = pool
            .call(Frame::request(1, "s", "m", Bytes::new()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.message.contains("closed"), "{e}");
    }
}
