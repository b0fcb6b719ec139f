//! What requests may hold: per connection (waited for: the connection is not read from while it
//! is over its share, TCP back-pressure does the rest) and for the whole agent (never waited
//! for: a request beyond it is refused at once with a 503 exception frame).
//!
//! Bytes are counted from the decoded frame (meta + body), again for an inflated body, and for
//! a response until it has been written.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::sections::LimitsSection;

/// The agent-wide budget, shared by every listener.
#[derive(Debug)]
pub struct Budget {
    pub limits: LimitsSection,
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Requests refused because the agent was over its budget (`sockmesh_overload_rejected_total`).
    pub rejected: Counter,
}

impl Budget {
    pub fn new(limits: LimitsSection) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rejected: Counter::default(),
        })
    }

    /// Requests and bytes held now.
    pub fn in_use(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Bytes still free in the agent's budget.
    pub fn bytes_left(&self) -> u64 {
        self.limits
            .bytes
            .saturating_sub(self.bytes.load(Ordering::Relaxed))
    }

    /// One request of `bytes`, or None (counted as rejected) when it does not fit.
    pub fn admit(self: &Arc<Self>, bytes: u64) -> Option<Lease> {
        let r = self.requests.fetch_add(1, Ordering::Relaxed);
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let lease = Lease {
            budget: self.clone(),
            requests: 1,
            bytes,
        };
        if r >= self.limits.requests || b.saturating_add(bytes) > self.limits.bytes {
            self.rejected.inc();
            return None; // the lease drops: both counts are given back
        }
        Some(lease)
    }

    /// `bytes` more on a lease, if they fit (an inflated body).
    pub fn grow(&self, lease: &mut Lease, bytes: u64) -> bool {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        lease.bytes += bytes;
        b.saturating_add(bytes) <= self.limits.bytes
    }

    /// Bytes that are already in memory (a response): counted, never refused, so new requests
    /// see the agent as full while they wait to be written.
    pub fn hold(self: &Arc<Self>, bytes: u64) -> Lease {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Lease {
            budget: self.clone(),
            requests: 0,
            bytes,
        }
    }
}

/// Requests and bytes taken from the [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    requests: u64,
    bytes: u64,
}

impl Lease {
    /// A request's lease becomes its response's: the request is given back and the lease holds
    /// the response's `bytes` instead (as [`Budget::hold`]: never refused).
    pub fn into_response(mut self, bytes: u64) -> Lease {
        let b = &self.budget;
        b.requests
            .fetch_sub(std::mem::take(&mut self.requests), Ordering::Relaxed);
        if bytes >= self.bytes {
            b.bytes.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            b.bytes.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
        self
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.requests.fetch_sub(self.requests, Ordering::Relaxed);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One connection's share: requests in flight and bytes held. Only the connection's reader
/// waits for it (a new request, an inflated body); a response takes over its request's bytes
/// without waiting (more if it is larger), so requests and responses together stay within the
/// share, give or take responses larger than their requests, and a full share always drains
/// as the peer reads.
#[derive(Debug)]
pub struct ConnectionShare {
    requests: Arc<Semaphore>,
    bytes: Arc<ShareBytes>,
}

#[derive(Debug)]
struct ShareBytes {
    held: AtomicU64,
    max: u64,
    /// Bytes given back: wakes the reader waiting for room.
    room: Notify,
}

/// Bytes held of a connection's share, given back on drop.
#[derive(Debug)]
struct HeldBytes {
    share: Arc<ShareBytes>,
    n: u64,
}

impl HeldBytes {
    /// Hold `n` bytes instead, at once (never waits).
    fn resize(&mut self, n: u64) {
        if n >= self.n {
            self.share.held.fetch_add(n - self.n, Ordering::Relaxed);
        } else {
            self.share.held.fetch_sub(self.n - n, Ordering::Relaxed);
            self.share.room.notify_one();
        }
        self.n = n;
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.share.held.fetch_sub(self.n, Ordering::Relaxed);
        self.share.room.notify_one();
    }
}

/// What one request or response holds of its connection's share.
#[derive(Debug)]
pub struct SharePermit {
    request: Option<OwnedSemaphorePermit>,
    bytes: HeldBytes,
}

impl SharePermit {
    /// The request's permit becomes its response's: the request's slot is given back and its
    /// bytes become the response's `bytes`, without waiting.
    pub fn into_response(mut self, bytes: u64) -> SharePermit {
        self.request = None;
        self.bytes.resize(bytes);
        self
    }
}

impl ConnectionShare {
    pub fn new(limits: &LimitsSection) -> ConnectionShare {
        ConnectionShare {
            requests: Arc::new(Semaphore::new(limits.connection_requests as usize)),
            bytes: Arc::new(ShareBytes {
                held: AtomicU64::new(0),
                max: u64::from(limits.connection_bytes),
                room: Notify::new(),
            }),
        }
    }

    /// Wait for room for one request of `bytes` (a frame larger than the whole share waits for
    /// all of it).
    pub async fn request(&self, bytes: u64) -> SharePermit {
        let request = self.requests.clone().acquire_owned().await.ok();
        let bytes = self.room(bytes).await;
        SharePermit { request, bytes }
    }

    /// Room for one request of `bytes` if there is some now (the common case: no future).
    pub fn try_request(&self, bytes: u64) -> Option<SharePermit> {
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let bytes = self.try_room(bytes)?;
        Some(SharePermit {
            request: Some(request),
            bytes,
        })
    }

    /// Wait for `more` bytes on a request's permit (its inflated body), never beyond the whole
    /// share for one request.
    pub async fn request_more(&self, mut permit: SharePermit, more: u64) -> SharePermit {
        let held = permit.bytes.n;
        let more = more.min(self.bytes.max.saturating_sub(held));
        if more > 0 {
            let extra = self.room(more).await;
            permit.bytes.n += extra.n;
            std::mem::forget(extra); // its bytes now belong to `permit`
        }
        permit
    }

    /// Bytes held now (requests and responses).
    pub fn held(&self) -> u64 {
        self.bytes.held.load(Ordering::Relaxed)
    }

    fn try_room(&self, n: u64) -> Option<HeldBytes> {
        let share = &self.bytes;
        let n = n.clamp(1, share.max);
        share
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h + n <= share.max).then_some(h + n)
            })
            .ok()?;
        Some(HeldBytes {
            share: share.clone(),
            n,
        })
    }

    async fn room(&self, n: u64) -> HeldBytes {
        let share = &self.bytes;
        loop {
            if let Some(held) = self.try_room(n) {
                return held;
            }
            // Only this connection's reader waits here; a release in between leaves a permit
            // in `room`, so no wake-up is lost.
            share.room.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u64, bytes: u64) -> LimitsSection {
        LimitsSection {
            requests,
            bytes,
            connection_requests: 2,
            connection_bytes: 100,
            ..LimitsSection::default()
        }
    }

    #[test]
    fn the_agent_budget_refuses_and_gives_back() {
        let b = Budget::new(limits(2, 1000));
        let l1 = b.admit(600).unwrap();
        assert!(b.admit(500).is_none(), "bytes over budget");
        let mut l2 = b.admit(100).unwrap();
        assert!(b.admit(1).is_none(), "requests over budget");
        assert!(!b.grow(&mut l2, 400), "inflated body over budget");
        assert_eq!(b.rejected.get(), 2);
        drop((l1, l2));
        assert_eq!(b.in_use(), (0, 0));
        let r = b.hold(5000);
        assert!(b.admit(1).is_none(), "responses waiting fill the budget");
        drop(r);
        assert!(b.admit(1).is_some());
    }

    #[tokio::test]
    async fn a_connection_over_its_share_waits() {
        async fn waits<F: std::future::Future>(f: F) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(20), f)
                .await
                .is_err()
        }
        let s = ConnectionShare::new(&limits(10, 1000));
        let p1 = s.request(60).await;
        // A frame larger than the share needs all of it.
        assert!(waits(s.request(1_000_000)).await);
        drop(p1);
        let p2 = s.request(1_000_000).await;
        assert_eq!(s.held(), 100);
        // Its response takes over its bytes without waiting, and gives back the rest.
        let r2 = p2.into_response(30);
        assert_eq!(s.held(), 30);
        assert!(waits(s.request(80)).await, "no room for 80 bytes");
        drop(r2);
        let (a, _b) = (s.request(1).await, s.request(1).await);
        assert!(waits(s.request(1)).await, "two requests in flight at most");
        // A response larger than its request holds more than the share for a while: the
        // reader waits until it has been written.
        let big = a.into_response(500);
        assert_eq!(s.held(), 501);
        assert!(waits(s.request(1)).await, "over the share: nothing more is read");
        drop(big);
        let _c = s.request(1).await;
    }
}
