//! `clientConnection` channels to one endpoint, made on demand and replaced when they die.
//!
//! No lock is held across a connect: a slot is `Empty`, `Connecting` (a task makes the
//! connection and publishes the outcome) or `Connected`, and its mutex is held only to read or
//! replace that state. A caller whose slot is connecting takes another live channel of the pool
//! if there is one, and otherwise waits for that one connect, bounded by its own deadline, so a
//! dead endpoint costs each caller at most what is left of its timeout.
use crate::locks::Locked;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Deadline;
use super::channel::{Channel, Transport};
use crate::protocol::motan2::Frame;
use crate::protocol::motan2::call::{CallError, E_NO_CHANNEL};

/// The outcome of a slot's connect, `None` while it runs.
type Connect = watch::Receiver<Option<Result<Arc<Channel>, CallError>>>;

#[derive(Debug)]
enum Slot {
    Empty,
    Connecting(Connect),
    Connected(Arc<Channel>),
}

/// `size` channels to one address (at least one per data-plane shard, shard.rs). Callers are
/// spread over the slots by a rotating index, on a shard over the slots that shard owns.
#[derive(Debug)]
pub struct Pool {
    addr: String,
    transport: Transport,
    /// Shared with the connect tasks, which store what they made.
    slots: Arc<[Mutex<Slot>]>,
    next: AtomicUsize,
    /// When a caller last asked for a channel, in `sys::monotonic_ms` (for idle close).
    last_used: AtomicU64,
}

impl Pool {
    pub fn new(addr: String, size: usize, transport: Transport) -> Pool {
        Pool {
            addr,
            transport,
            slots: (0..crate::shard::pool_slots(size))
                .map(|_| Mutex::new(Slot::Empty))
                .collect(),
            next: AtomicUsize::new(0),
            last_used: AtomicU64::new(crate::sys::monotonic_ms()),
        }
    }

    /// How long no caller asked for a channel.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            crate::sys::monotonic_ms().saturating_sub(self.last_used.load(Ordering::Relaxed)),
        )
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// A live channel: the next slot's, another live one while that slot connects, or the
    /// slot's new connection if it is made before `deadline` (errcode 1002 otherwise).
    pub async fn get(&self, deadline: Deadline) -> Result<Arc<Channel>, CallError> {
        self.last_used
            .store(crate::sys::monotonic_ms(), Ordering::Relaxed);
        let i = crate::shard::slot_for(self.next.fetch_add(1, Ordering::Relaxed), self.slots.len());
        let connect = match self.live_or_connect(i) {
            Ok(c) => return Ok(c),
            Err(connect) => connect,
        };
        if let Some(c) = self.any_live(i) {
            return Ok(c);
        }
        self.wait(connect, Some(deadline)).await
    }

    /// Slot `i`'s live channel, or its connect (started here when the slot has none).
    fn live_or_connect(&self, i: usize) -> Result<Arc<Channel>, Connect> {
        let mut slot = self.slots[i].locked();
        match &*slot {
            Slot::Connected(c) if !c.is_closed() => return Ok(c.clone()),
            Slot::Connecting(connect) => return Err(connect.clone()),
            Slot::Connected(_) | Slot::Empty => {}
        }
        let (tx, connect) = watch::channel(None);
        *slot = Slot::Connecting(connect.clone());
        drop(slot);
        // A task of its own: the connect finishes (within the connect timeout) for whoever
        // waits next, even when the caller that started it gives up. On the shard that owns
        // the slot, so the channel's reader and writer run where its callers do.
        let (slots, addr, transport) = (self.slots.clone(), self.addr.clone(), self.transport.clone());
        crate::shard::spawn_for_slot(i, async move {
            let made = Channel::connect(&addr, &transport).await.map(Arc::new);
            if made.is_err() {
                crate::metrics::UPSTREAM_CONNECT_FAILURES.fetch_add(1, Ordering::Relaxed);
            }
            *slots[i].locked() = match &made {
                Ok(c) => Slot::Connected(c.clone()),
                Err(_) => Slot::Empty,
            };
            let _ = tx.send(Some(made));
        });
        Err(connect)
    }

    /// A live channel of any slot but `busy`, looking from the one after it.
    fn any_live(&self, busy: usize) -> Option<Arc<Channel>> {
        let n = self.slots.len();
        (1..n).find_map(|k| match &*self.slots[(busy + k) % n].locked() {
            Slot::Connected(c) if !c.is_closed() => Some(c.clone()),
            _ => None,
        })
    }

    /// The outcome of `connect`, waiting at most until `deadline` (`None`: as long as the
    /// connect takes, itself bounded by the connect timeout).
    async fn wait(
        &self,
        mut connect: Connect,
        deadline: Option<Deadline>,
    ) -> Result<Arc<Channel>, CallError> {
        let done = async {
            match connect.wait_for(Option::is_some).await {
                Ok(made) => made.clone(),
                Err(_) => None,
            }
        };
        let made = match deadline {
            Some(d) => tokio::time::timeout_at(d.at(), done).await.map_err(|_| {
                CallError::service(
                    E_NO_CHANNEL,
                    format!(
                        "no connection to {} within the request timeout of {} ms",
                        self.addr,
                        d.timeout().as_millis()
                    ),
                )
            })?,
            None => done.await,
        };
        made.unwrap_or_else(|| {
            Err(CallError::service(
                E_NO_CHANNEL,
                format!("connect to {} was abandoned", self.addr),
            ))
        })
    }

    /// Connect every slot that has no live channel, all at once (the pool's initial creation);
    /// fails if none could be made.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let connects: Vec<_> = (0..self.slots.len()).map(|i| self.live_or_connect(i)).collect();
        let mut last = None;
        let mut any = false;
        for c in connects {
            let made = match c {
                Ok(_) => Ok(()),
                Err(connect) => self.wait(connect, None).await.map(drop),
            };
            match made {
                Ok(()) => any = true,
                Err(e) => last = Some(e),
            }
        }
        match (any, last) {
            (true, _) | (false, None) => Ok(()),
            (false, Some(e)) => Err(e),
        }
    }

    /// Call over a live channel; connect, write queue and response share `deadline`.
    pub async fn call(&self, req: &Frame, deadline: Deadline) -> Result<Frame, CallError> {
        self.get(deadline).await?.call_until(req, deadline).await
    }

    /// Write a oneway request over a live channel (nothing waits for an answer).
    pub async fn send_oneway(&self, req: &Frame, deadline: Deadline) -> Result<(), CallError> {
        self.get(deadline).await?.send_oneway(req, deadline).await
    }

    pub async fn heartbeat(&self, timeout: Duration) -> Result<(), CallError> {
        self.get(Deadline::after(timeout)).await?.heartbeat(timeout).await
    }

    /// Live channels and requests in flight over them (for status).
    pub fn usage(&self) -> (usize, usize) {
        let mut live = 0;
        let mut in_flight = 0;
        for s in self.slots.iter() {
            if let Slot::Connected(c) = &*s.locked()
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
mod tests {
    use super::*;
    use crate::upstream::channel::tests::{
        backlog_of_one, blackhole, fill_backlog, serve_reversed, upstream,
    };
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::FramedRead;

    use crate::protocol::motan2::Motan2Codec;

    fn within(ms: u64) -> Deadline {
        Deadline::after(Duration::from_millis(ms))
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
                let resp = pool.call(&req, within(5000)).await.unwrap();
                let mut want = body.to_vec();
                want.reverse();
                assert_eq!(resp.body.as_ref(), want.as_slice());
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(pool.usage(), (2, 0));
        pool.heartbeat(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn timeout_and_refused_are_channel_errors() {
        let addr = upstream().await;
        let pool = Pool::new(addr.to_string(), 1, Transport::default());
        let req = Frame::request(1, "s", "m", Bytes::from_static(&[200]));
        let e = pool.call(&req, within(50)).await.unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("timed out after 50 ms"), "{e}");
        assert_eq!(pool.usage().1, 0, "a timed-out request is forgotten");

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let pool = Pool::new(dead.to_string(), 1, Transport::default());
        let e = pool
            .call(&Frame::request(1, "s", "m", Bytes::new()), within(1000))
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
            .call(&Frame::request(1, "s", "m", Bytes::new()), within(5000))
            .await
            .unwrap_err();
        assert!(e.message.contains("closed"), "{e}");
    }

    /// Connects that hang for long (the kernel's SYN retries), unlike the tests' deadlines.
    fn slow_connects() -> Transport {
        Transport {
            connect_timeout: Duration::from_secs(10),
            ..Transport::default()
        }
    }

    #[tokio::test]
    async fn callers_of_a_dead_endpoint_wait_their_own_deadline_not_a_connect() {
        let (addr, _hole) = blackhole().await;
        let pool = Arc::new(Pool::new(addr.to_string(), 1, slow_connects()));
        let call = |ms: u64| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let e = pool
                    .call(&Frame::request(1, "s", "m", Bytes::new()), within(ms))
                    .await
                    .unwrap_err();
                (e, started.elapsed())
            })
        };
        // Both wait on the one connect of the one slot, each until its own deadline.
        let (short, long) = (call(100), call(300));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.usage(), (0, 0), "status reads the slots while they connect");
        for (task, ms) in [(short, 100), (long, 300)] {
            let (e, took) = task.await.unwrap();
            assert_eq!(e.code, E_NO_CHANNEL, "{e}");
            assert!(
                e.message
                    .contains(&format!("within the request timeout of {ms} ms")),
                "{e}"
            );
            let ms = Duration::from_millis(ms);
            assert!(took >= ms && took < ms + Duration::from_millis(150), "{took:?}");
        }
    }

    #[tokio::test]
    async fn a_connecting_slot_sends_its_callers_to_a_live_channel() {
        // Accepts (and serves) one connection, then never again.
        let (addr, l) = backlog_of_one();
        let l = TcpListener::from_std(l).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_reversed(s).await;
        });
        let pool = Pool::new(addr.to_string(), 2, slow_connects());
        let req = Frame::request(1, "s", "m", Bytes::from_static(b"\x00ab"));
        pool.call(&req, within(2000)).await.unwrap();
        let _held = fill_backlog(addr).await;
        // The next call's slot starts a connect that hangs; it and the ones after it are
        // served by the first slot's channel meanwhile.
        let started = tokio::time::Instant::now();
        for _ in 0..4 {
            let resp = pool.call(&req, within(2000)).await.unwrap();
            assert_eq!(resp.body.as_ref(), b"ba\x00");
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            pool.usage(),
            (1, 0),
            "one live channel, the other slot still connecting"
        );
    }
}
