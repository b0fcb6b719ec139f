//! `clientConnection` channels to one endpoint, made on demand and replaced when they die.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::channel::{Channel, Transport};
use crate::protocol::motan2::Frame;
use crate::protocol::motan2::call::CallError;

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

    pub async fn call(&self, req: &Frame, timeout: Duration) -> Result<Frame, CallError> {
        self.get().await?.call_ref(req, timeout).await
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
mod tests {
    use super::*;
    use crate::protocol::motan2::Motan2Codec;
    use crate::protocol::motan2::call::E_NO_CHANNEL;
    use crate::upstream::channel::tests::upstream;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::FramedRead;

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
                let resp = pool.call(&req, Duration::from_secs(5)).await.unwrap();
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
        let e = pool.call(&req, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("timed out"), "{e}");
        assert_eq!(pool.usage().1, 0, "a timed-out request is forgotten");

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let pool = Pool::new(dead.to_string(), 1, Transport::default());
        let e = pool
            .call(&Frame::request(1, "s", "m", Bytes::new()), Duration::from_secs(1))
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
            .call(&Frame::request(1, "s", "m", Bytes::new()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.message.contains("closed"), "{e}");
    }
}
