//! Graceful shutdown. One token that every accept loop and connection selects on, and one
//! tracker of the tasks still running: `signal` stops new work, `drained` waits for the tracked
//! tasks to finish, up to a deadline.
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight connections get to finish on shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Cancelled when shutdown starts (also by the admin API's shutdown, which cancels it).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Every task that must finish before the process exits is spawned on this.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Start draining: loops stop accepting, and the tracker counts down to empty.
    pub fn signal(&self) {
        self.token.cancel();
        self.tracker.close();
    }

    /// Wait until every tracked task has finished, at most `deadline`; false when some were
    /// still running then. Returns only after `signal` (or at the deadline).
    pub async fn drained(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_tasks_that_follow_the_token() {
        let drain = Drain::new();
        let token = drain.token().clone();
        drain.tracker().spawn(async move {
            token.cancelled().await;
            // Finishing an in-flight request after the signal.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert!(
            !drain.drained(Duration::from_millis(20)).await,
            "not signalled yet"
        );
        drain.signal();
        assert!(drain.drained(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn the_deadline_bounds_the_wait() {
        let drain = Drain::new();
        drain.tracker().spawn(std::future::pending::<()>());
        drain.signal();
        assert!(!drain.drained(Duration::from_millis(20)).await);
    }
}
