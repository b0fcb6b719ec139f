//! One upstream connection: a `Channel` is a multiplexed Motan2 connection to one endpoint
//! (many requests in flight, responses matched by request id). `upstream::pool` keeps them.
//!
//! Request ids are remapped per channel (spec 1.9): the caller's id is kept by the caller and
//! restored on the response. Every frame is encoded into one contiguous buffer and written by
//! the task that made it (one write, no task in between); only while the socket is full do
//! frames wait in a byte-bounded backlog that a flusher task writes, whole frames batched.
use crate::locks::Locked;
use crate::write_queue::{self, WriteQueue};
use rustc_hash::FxHashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::Deadline;
use crate::net::SocketFactory;
use crate::protocol::motan2::call::{CallError, E_NO_CHANNEL};
use crate::protocol::motan2::simple::ValueLimits;
use crate::protocol::motan2::{DecodeLimits, Frame, Motan2Codec};

/// Most bytes waiting for one upstream connection's socket: a slow upstream makes callers wait
/// (up to their deadline) instead of the agent holding any number of frames of up to 10 MiB.
pub const WRITE_QUEUE_BYTES: usize = 16 << 20;

/// A frame waiting for the socket with its room in the byte bound, given back once written.
#[derive(Debug)]
struct QueuedFrame {
    frame: Bytes,
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl write_queue::Frame for QueuedFrame {
    fn bytes(&self) -> &[u8] {
        &self.frame
    }
}

/// The write side of a channel. The task that has a frame writes it to the socket itself (no
/// task or channel in between); only when the socket is full do frames wait in the backlog,
/// which the channel's flusher task writes as the socket drains.
#[derive(Debug)]
struct Writer {
    wr: OwnedWriteHalf,
    backlog: Mutex<Backlog>,
    /// A backlog started, or the channel was dropped: wakes the flusher.
    kick: tokio::sync::Notify,
    /// The last handle is gone: the flusher writes what is left and ends (the socket is shut).
    dropped: AtomicBool,
}

#[derive(Debug, Default)]
struct Backlog {
    frames: WriteQueue<QueuedFrame>,
    /// A write failed: nothing more is written.
    failed: bool,
}

/// What became of a frame handed to the [`Writer`].
enum Sent {
    Written,
    /// Others wait before it: it needs room in the backlog first.
    NeedsRoom(Bytes),
    Failed,
}

impl Writer {
    /// Write `frame` now, or queue it behind the backlog with its `room` (a frame partly
    /// written is queued whatever the room: nothing may come between its bytes).
    fn send(&self, frame: Bytes, room: Option<tokio::sync::OwnedSemaphorePermit>) -> Sent {
        let mut b = self.backlog.locked();
        if b.failed {
            return Sent::Failed;
        }
        if b.frames.is_empty() {
            let done = match self.wr.try_write(&frame) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    b.failed = true;
                    return Sent::Failed;
                }
            };
            if done == frame.len() {
                return Sent::Written;
            }
            b.frames.push_partial(QueuedFrame { frame, _room: room }, done);
            drop(b);
            self.kick.notify_one();
            return Sent::Written;
        }
        if room.is_none() {
            return Sent::NeedsRoom(frame);
        }
        b.frames.push(QueuedFrame { frame, _room: room });
        Sent::Written
    }

    /// Write the backlog while the socket takes it: Ok(true) once it is empty.
    fn flush_now(&self) -> std::io::Result<bool> {
        let mut b = self.backlog.locked();
        b.frames.write_with(|iov| self.wr.try_write_vectored(iov))
    }

    fn fail(&self) {
        let mut b = self.backlog.locked();
        b.failed = true;
        b.frames.clear();
    }

    /// The flusher: wakes only when the socket was full.
    async fn flush(self: Arc<Self>) -> std::io::Result<()> {
        loop {
            self.kick.notified().await;
            loop {
                match self.flush_now() {
                    Ok(true) => break,
                    Ok(false) => self.wr.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            if self.dropped.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
}

/// How channels are made: the socket factory (the agent's mark, namespace), the connect
/// timeout and the frame limits for responses.
#[derive(Clone, Debug)]
pub struct Transport {
    pub sockets: SocketFactory,
    pub connect_timeout: Duration,
    pub limits: DecodeLimits,
    /// What decoding one body's arguments may build (the HTTP provider's requests).
    pub values: ValueLimits,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            sockets: SocketFactory::default(),
            connect_timeout: Duration::from_millis(1000),
            limits: DecodeLimits::default(),
            values: ValueLimits::default(),
        }
    }
}

/// Calls waiting for their response, by channel request id. A waiter is an entry of this map
/// rather than a channel of its own: the reader fills the entry in and wakes the caller's task,
/// so once the map has grown to the channel's usual concurrency a call allocates nothing here.
///
/// Deadlines are kept here too, not as one timer per call: the reader task holds a single timer,
/// armed at the earliest deadline it knows of, and expires the calls that are due when it fires.
/// A call whose deadline comes after the armed one (the usual case: one timeout per service, so
/// later calls end later) touches no timer at all; an earlier one re-arms it through `rearm`.
#[derive(Debug, Default)]
struct Pending {
    waiters: Mutex<Waiters>,
    /// Set with `armed` moved earlier: the reader re-arms its timer.
    rearm: AtomicBool,
    /// The reader task, woken to re-arm.
    reader: futures_util::task::AtomicWaker,
}

#[derive(Debug, Default)]
struct Waiters {
    calls: FxHashMap<u64, Waiter>,
    /// When the reader's timer fires (`None`: not armed).
    armed: Option<Instant>,
}

#[derive(Debug)]
enum Waiter {
    /// The caller's task, once it has polled, and the call's deadline.
    Waiting(Option<Waker>, Instant),
    Answered(Frame),
    /// The deadline passed first.
    Expired,
}

/// What became of a call, seen by its caller.
enum Outcome {
    Answered(Frame),
    Expired,
    /// The connection closed with the call in flight.
    Gone,
}

/// The reader's timer moves on by at least this much per firing, so calls that expire close
/// together are swept together (a timeout fires at most this late).
const SWEEP_STEP: Duration = Duration::from_millis(1);

impl Pending {
    fn insert(&self, id: u64, due: Instant) {
        let mut w = self.waiters.locked();
        w.calls.insert(id, Waiter::Waiting(None, due));
        if w.armed.is_none_or(|at| due < at) {
            w.armed = Some(due);
            drop(w);
            self.rearm.store(true, Ordering::Release);
            self.reader.wake();
        }
    }

    fn remove(&self, id: u64) {
        self.waiters.locked().calls.remove(&id);
    }

    fn len(&self) -> usize {
        self.waiters.locked().calls.len()
    }

    /// Hand `resp` to the call waiting for its id; a response nobody waits for (the call timed
    /// out or was cancelled, or it answers a oneway request) is dropped.
    fn answer(&self, resp: Frame) {
        let waker = {
            let mut waiters = self.waiters.locked();
            match waiters.calls.get_mut(&resp.header.request_id) {
                Some(w @ Waiter::Waiting(..)) => match std::mem::replace(w, Waiter::Answered(resp)) {
                    Waiter::Waiting(waker, _) => waker,
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// How call `id` ended, once it has.
    fn poll_answer(&self, id: u64, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut waiters = self.waiters.locked();
        match waiters.calls.get_mut(&id) {
            None => Poll::Ready(Outcome::Gone),
            Some(Waiter::Waiting(waker, _)) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Some(_) => match waiters.calls.remove(&id) {
                Some(Waiter::Answered(resp)) => Poll::Ready(Outcome::Answered(resp)),
                Some(Waiter::Expired) => Poll::Ready(Outcome::Expired),
                _ => Poll::Ready(Outcome::Gone),
            },
        }
    }

    /// The reader's timer fired at `now`: expire every call due by then and say when to fire
    /// next (`None`: nothing waits).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut woken = Vec::new();
        let mut next: Option<Instant> = None;
        let mut waiters = self.waiters.locked();
        for w in waiters.calls.values_mut() {
            if let Waiter::Waiting(waker, due) = w {
                if *due <= now {
                    woken.extend(waker.take());
                    *w = Waiter::Expired;
                } else {
                    next = Some(next.map_or(*due, |n| n.min(*due)));
                }
            }
        }
        let next = next.map(|n| n.max(now + SWEEP_STEP));
        waiters.armed = next;
        drop(waiters);
        for w in woken {
            w.wake();
        }
        next
    }

    /// When the reader's timer should fire now.
    fn armed(&self) -> Option<Instant> {
        self.waiters.locked().armed
    }

    /// The connection is gone: every call still waiting fails (answered ones keep their answer).
    fn fail_waiting(&self) {
        let mut woken = Vec::new();
        self.waiters.locked().calls.retain(|_, w| match w {
            Waiter::Waiting(waker, _) => {
                woken.extend(waker.take());
                false
            }
            Waiter::Answered(_) | Waiter::Expired => true,
        });
        for w in woken {
            w.wake();
        }
    }
}

/// Point the reader's timer at `at` (made on first use); false when there is nothing to time.
fn arm(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>, at: Option<Instant>) -> bool {
    let Some(at) = at else { return false };
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
    true
}

/// A call's entry in `Pending`, removed however the call ends (timeout, error, cancellation).
struct PendingEntry<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        self.pending.remove(self.id);
    }
}

/// One multiplexed connection. Dropping the last handle closes it.
#[derive(Debug)]
pub struct Channel {
    peer: String,
    writer: Arc<Writer>,
    room: Arc<tokio::sync::Semaphore>,
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
        let stream = t
            .sockets
            .connect_within(sa, t.connect_timeout)
            .await
            .map_err(|e| CallError::service(E_NO_CHANNEL, format!("connect to {addr} failed: {e:#}")))?;
        Ok(Channel::start(stream, addr.to_string(), t.limits))
    }

    fn start(stream: TcpStream, peer: String, limits: DecodeLimits) -> Channel {
        let (rd, wr) = stream.into_split();
        let writer = Arc::new(Writer {
            wr,
            backlog: Mutex::default(),
            kick: tokio::sync::Notify::new(),
            dropped: AtomicBool::new(false),
        });
        let pending: Arc<Pending> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let closed_w = closed.clone();
        let peer_w = peer.clone();
        let flusher = writer.clone();
        tokio::spawn(async move {
            if let Err(e) = flusher.clone().flush().await {
                tracing::debug!(peer = %peer_w, "upstream write failed: {e}");
                flusher.fail();
                closed_w.store(true, Ordering::Release);
            }
        });
        // Reader: hand each response to its caller; on EOF or error fail everything pending.
        let pending_r = pending.clone();
        let closed_r = closed.clone();
        let peer_r = peer.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, Motan2Codec::new(limits));
            // The deadlines' one timer (see `Pending`), made at the first call.
            let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            let mut timing = false;
            let why = std::future::poll_fn(|cx| {
                pending_r.reader.register(cx.waker());
                if pending_r.rearm.load(Ordering::Acquire) {
                    pending_r.rearm.store(false, Ordering::Release);
                    timing = arm(&mut timer, pending_r.armed());
                }
                while timing {
                    let Some(t) = timer.as_mut() else { break };
                    if t.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    timing = arm(&mut timer, pending_r.expire(Instant::now()));
                }
                loop {
                    match frames.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(f))) if f.header.is_response() => pending_r.answer(f),
                        Poll::Ready(Some(Ok(_))) => {} // a request from upstream: nothing asks for that
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(format!("{e}")),
                        Poll::Ready(None) => return Poll::Ready("connection closed by peer".to_string()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            tracing::debug!(peer = %peer_r, "upstream channel closed: {why}");
            // Closed first: a call that registers after the sweep sees it and gives up.
            closed_r.store(true, Ordering::Release);
            pending_r.fail_waiting();
        });
        Channel {
            peer,
            writer,
            room: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_BYTES)),
            pending,
            next_id: AtomicU64::new(1),
            closed,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Calls waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Send `req` with a channel-local request id and wait for its response up to `timeout`.
    /// The response keeps the channel id; the caller restores its own.
    pub async fn call(&self, req: Frame, timeout: Duration) -> Result<Frame, CallError> {
        self.call_until(&req, Deadline::after(timeout)).await
    }

    /// Send `req` (on the wire with a channel-local request id; the frame itself is neither
    /// changed nor copied) and wait for its response until `deadline`, which a full write
    /// queue and the response share. The response keeps the channel id.
    pub async fn call_until(&self, req: &Frame, deadline: Deadline) -> Result<Frame, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = req.encode_to_bytes_with_id(id);
        self.pending.insert(id, deadline.at());
        let entry = PendingEntry {
            pending: &self.pending,
            id,
        };
        // The reader may have closed between the check and the insert: re-check after.
        if self.is_closed() {
            return Err(channel_error(format!("connection to {} is closed", self.peer)));
        }
        self.enqueue(bytes, deadline).await?;
        match std::future::poll_fn(|cx| self.pending.poll_answer(id, cx)).await {
            Outcome::Answered(resp) => {
                // Already removed with its answer.
                std::mem::forget(entry);
                Ok(resp)
            }
            Outcome::Gone => Err(channel_error(format!(
                "connection to {} closed with the request in flight",
                self.peer
            ))),
            Outcome::Expired => Err(channel_error(format!(
                "request timed out after {} ms waiting for {}",
                deadline.timeout().as_millis(),
                self.peer
            ))),
        }
    }

    /// A oneway request: written with a channel-local id, nothing waits for an answer. A
    /// server that answers anyway (motan-go's does, spec 1.8) finds no waiter; the reader
    /// drops that answer.
    pub async fn send_oneway(&self, req: &Frame, deadline: Deadline) -> Result<(), CallError> {
        if self.is_closed() {
            return Err(channel_error(format!("connection to {} is closed", self.peer)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.enqueue(req.encode_to_bytes_with_id(id), deadline).await
    }

    /// Write one encoded frame; when the socket is full and others wait before it, wait for
    /// room in the backlog at most until `deadline`.
    async fn enqueue(&self, frame: Bytes, deadline: Deadline) -> Result<(), CallError> {
        let frame = match self.writer.send(frame, None) {
            Sent::Written => return Ok(()),
            Sent::Failed => return Err(self.write_failed()),
            Sent::NeedsRoom(frame) => frame,
        };
        let n = frame.len().clamp(1, WRITE_QUEUE_BYTES) as u32;
        let room = match tokio::time::timeout_at(deadline.at(), self.room.clone().acquire_many_owned(n)).await
        {
            Ok(Ok(room)) => room,
            Ok(Err(_)) => return Err(self.write_failed()),
            Err(_) => {
                return Err(channel_error(format!(
                    "request timed out after {} ms: the write queue to {} stayed full",
                    deadline.timeout().as_millis(),
                    self.peer
                )));
            }
        };
        match self.writer.send(frame, Some(room)) {
            Sent::Written | Sent::NeedsRoom(_) => Ok(()),
            Sent::Failed => Err(self.write_failed()),
        }
    }

    fn write_failed(&self) -> CallError {
        self.closed.store(true, Ordering::Release);
        channel_error(format!("cannot write to {}", self.peer))
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

impl Drop for Channel {
    /// The flusher writes what is left, then lets go of the socket (which shuts it).
    fn drop(&mut self) {
        self.writer.dropped.store(true, Ordering::Release);
        self.writer.kick.notify_one();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_util::codec::Framed;

    use futures_util::SinkExt;

    /// An upstream that answers every request with its body reversed, after `delay_ms` taken
    /// from the body's first byte, so responses come back out of order.
    pub(crate) async fn upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_reversed(s));
            }
        });
        addr
    }

    /// Serve one connection the way [`upstream`] does.
    pub(crate) async fn serve_reversed(s: TcpStream) {
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
    }

    /// A listening socket with a backlog of one, not yet accepting.
    pub(crate) fn backlog_of_one() -> (SocketAddr, std::net::TcpListener) {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        s.listen(1).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let l = std::net::TcpListener::from(s);
        l.set_nonblocking(true).unwrap();
        (addr, l)
    }

    /// Connect to `addr` until a connect hangs: the listener's accept queue is then full and
    /// the kernel drops further SYNs. Keep the returned connections open.
    pub(crate) async fn fill_backlog(addr: SocketAddr) -> Vec<TcpStream> {
        let mut held = Vec::new();
        while let Ok(c) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            held.push(c.unwrap());
            assert!(held.len() < 16, "the backlog of {addr} never filled");
        }
        held
    }

    /// An endpoint that never accepts (a connect to it hangs until its timeout), as long as the
    /// returned listener and connections live.
    pub(crate) async fn blackhole() -> (SocketAddr, (std::net::TcpListener, Vec<TcpStream>)) {
        let (addr, l) = backlog_of_one();
        let held = fill_backlog(addr).await;
        (addr, (l, held))
    }

    /// A provider that reads requests and never answers; requests arrive on the receiver.
    pub(crate) async fn silent_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Frame>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut frames = FramedRead::new(s, Motan2Codec::default());
                    while let Some(Ok(f)) = frames.next().await {
                        let _ = tx.send(f);
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn the_caller_keeps_its_frame_and_the_wire_carries_the_channel_id() {
        let addr = upstream().await;
        let ch = Channel::connect(&addr.to_string(), &Transport::default())
            .await
            .unwrap();
        let req = Frame::request(77, "s", "m", Bytes::from_static(b"\x00ab"));
        let resp = ch
            .call_until(&req, Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(resp.body.as_ref(), b"ba\x00");
        assert_eq!(resp.header.request_id, 1, "the channel's own id");
        assert_eq!(req.header.request_id, 77, "the request is not changed");
        assert_eq!(ch.in_flight(), 0);
    }

    #[tokio::test]
    async fn frames_larger_than_the_socket_takes_go_out_whole_through_the_backlog() {
        let addr = upstream().await;
        let ch = Arc::new(
            Channel::connect(&addr.to_string(), &Transport::default())
                .await
                .unwrap(),
        );
        // Several megabytes at once: the socket's buffer fills mid-frame, the rest of that
        // frame and the frames after it wait in the backlog for the flusher.
        let calls: Vec<_> = (1..=4u8)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move {
                    let mut body = vec![i; 3 << 20];
                    body[0] = 0; // no delay upstream
                    let req = Frame::request(u64::from(i), "s", "m", Bytes::from(body));
                    let resp = ch
                        .call_until(&req, Deadline::after(Duration::from_secs(20)))
                        .await
                        .unwrap();
                    (i, resp)
                })
            })
            .collect();
        for c in calls {
            let (i, resp) = c.await.unwrap();
            assert_eq!(resp.body.len(), 3 << 20);
            assert_eq!(resp.body[0], i);
            assert_eq!(*resp.body.last().unwrap(), 0);
            assert!(resp.body[..(3 << 20) - 1].iter().all(|b| *b == i));
        }
        assert_eq!(ch.in_flight(), 0);
        // Small calls after it go straight out again.
        let resp = ch
            .call(
                Frame::request(9, "s", "m", Bytes::from_static(b"\x00ok")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(resp.body.as_ref(), b"ko\x00");
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_no_waiter_behind() {
        let (addr, _requests) = silent_upstream().await;
        let ch = Channel::connect(&addr.to_string(), &Transport::default())
            .await
            .unwrap();
        let req = Frame::request(1, "s", "m", Bytes::new());
        let call = ch.call_until(&req, Deadline::after(Duration::from_secs(60)));
        let cancelled = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(cancelled.is_err(), "still waiting when dropped");
        assert_eq!(ch.in_flight(), 0);
    }

    /// One timer serves every deadline of a channel: a later call with a shorter timeout
    /// re-arms it earlier, each call times out at its own deadline, and a call answered after
    /// others expired still gets its answer.
    #[tokio::test]
    async fn each_call_times_out_at_its_own_deadline_on_one_timer() {
        let addr = upstream().await;
        let ch = Arc::new(
            Channel::connect(&addr.to_string(), &Transport::default())
                .await
                .unwrap(),
        );
        // (timeout, the upstream's delay): answered in time, or not.
        let call = |timeout_ms: u64, delay_ms: u8| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let req = Frame::request(7, "s", "m", Bytes::from(vec![delay_ms, 1, 2]));
                let r = ch
                    .call_until(&req, Deadline::after(Duration::from_millis(timeout_ms)))
                    .await;
                (r, started.elapsed())
            })
        };
        let answered = call(400, 255);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let expiring = [call(100, 200), call(150, 250), call(200, 255)];
        for (c, ms) in expiring.into_iter().zip([100u64, 150, 200]) {
            let (r, took) = c.await.unwrap();
            let e = r.unwrap_err().to_string();
            assert!(e.contains(&format!("timed out after {ms} ms")), "{e}");
            let ms = Duration::from_millis(ms);
            assert!(
                took >= ms && took < ms + Duration::from_millis(200),
                "the {ms:?} call ended after {took:?}"
            );
        }
        let (r, took) = answered.await.unwrap();
        assert_eq!(&r.unwrap().body[..], &[2, 1, 255], "after {took:?}");
        assert_eq!(ch.in_flight(), 0);
    }

    #[tokio::test]
    async fn oneway_requests_are_written_and_nothing_waits() {
        let (addr, mut requests) = silent_upstream().await;
        let ch = Channel::connect(&addr.to_string(), &Transport::default())
            .await
            .unwrap();
        let mut req = Frame::request(5, "s", "m", Bytes::from_static(b"fire"));
        req.header
            .set_flag(crate::protocol::motan2::frame::FLAG_ONEWAY, true);
        ch.send_oneway(&req, Deadline::after(Duration::from_secs(1)))
            .await
            .unwrap();
        let got = requests.recv().await.unwrap();
        assert!(got.header.is_oneway());
        assert_eq!(got.body.as_ref(), b"fire");
        assert_eq!(ch.in_flight(), 0);
    }
}
