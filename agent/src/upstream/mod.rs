//! Upstream connections: multiplexed Motan2 channels (`channel`) and the pools that hold them
//! (`pool`), and pooled HTTP/1.1 connections to HTTP upstreams (`http`).
pub mod channel;
pub mod http;
pub mod pool;

use std::time::Duration;

use tokio::time::Instant;

/// When a request must be answered by, fixed once when it enters the cluster (or the server
/// role's provider call): every wait on its path (a connect, the write queue, the response,
/// further attempts) gets what is left of it, so a request waits at most its timeout once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// The whole budget the request started with (for messages).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}
