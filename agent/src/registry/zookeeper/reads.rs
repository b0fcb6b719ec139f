//! Reading a server list's nodes: each child's data is read once (a child's data is its
//! provider URL, which motan providers never change in place), with a registry-wide bound on
//! reads in flight and a timeout per read that starts when the read is sent. Reads that fail
//! are retried a few times at once and otherwise reported, so the watch loop retries them
//! later instead of dropping the child.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use zookeeper_client as zk;

use super::layout::server_from_node;
use super::session::{Session, op};
use crate::url::Url;

/// Reads in flight per registry: enough to pipeline, few enough that a read is answered well
/// within its timeout even when thousands are wanted at once.
pub(super) const READ_CONCURRENCY: usize = 128;
/// Lists whose nodes are read at once: enough to keep `READ_CONCURRENCY` reads in flight,
/// few enough that what a pass holds until its list is published (the servers read, by child
/// and by address) is not held for every list at once while a fleet's lists are first read.
const PASSES: usize = 16;
/// Attempts per read within one pass (then the child waits for the watch loop's retry).
const ATTEMPTS: u32 = 3;
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// How server-node reads are made: the bound on reads in flight and, for tests only, a share
/// of reads that fail without being sent.
#[derive(Debug)]
pub(super) struct NodeReader {
    permits: Arc<Semaphore>,
    /// Lists being read at once (`pass`).
    passes: Semaphore,
    /// Per mille of reads made to fail (`ZkOptions::inject_read_failures`); 0 in production.
    fail_per_mille: u32,
}

/// What one pass over a list's children found.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// Child name → the server it describes (`None`: a node that is not a usable server).
    pub(super) servers: BTreeMap<String, Option<Url>>,
    /// Children whose node could not be read (and still exists as far as we know).
    pub(super) failed: BTreeSet<String>,
}

impl NodeReader {
    pub(super) fn new(fail_per_mille: u32) -> NodeReader {
        NodeReader {
            permits: Arc::new(Semaphore::new(READ_CONCURRENCY)),
            passes: Semaphore::new(PASSES),
            fail_per_mille: fail_per_mille.min(1000),
        }
    }

    /// Wait for a turn to read a list's nodes (held until its list is published).
    pub(super) async fn pass(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.passes.acquire().await.ok()
    }

    /// Read the nodes `children` of `path`, retrying failures `ATTEMPTS` times in all. A node
    /// deleted meanwhile is neither a server nor a failure.
    pub(super) async fn read(
        &self,
        session: &Session,
        path: &str,
        refer: &Url,
        children: impl IntoIterator<Item = String>,
    ) -> Reads {
        let mut out = Reads::default();
        let mut wanted: Vec<String> = children.into_iter().collect();
        let mut delay = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let mut failed = Vec::new();
            let mut tasks = tokio::task::JoinSet::new();
            for child in wanted {
                // The permit is taken before the read is created: the request is sent, and its
                // timeout starts, only once it may be in flight.
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    break;
                };
                let (client, node) = (session.client.clone(), format!("{path}/{child}"));
                let inject = self.fail_per_mille > 0 && fastrand::u32(0..1000) < self.fail_per_mille;
                tasks.spawn(async move {
                    let r = match inject {
                        true => Err(zk::Error::ConnectionLoss),
                        false => op(client.get_data(&node)).await.map(|(data, _)| data),
                    };
                    drop(permit);
                    (child, r)
                });
                while let Some(done) = tasks.try_join_next() {
                    collect(&mut out, &mut failed, refer, done);
                }
            }
            while let Some(done) = tasks.join_next().await {
                collect(&mut out, &mut failed, refer, done);
            }
            if failed.is_empty() {
                break;
            }
            if attempt == ATTEMPTS {
                out.failed.extend(failed);
                break;
            }
            tokio::select! {
                _ = session.token.cancelled() => {
                    out.failed.extend(failed);
                    break;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            delay *= 2;
            wanted = failed;
        }
        out
    }
}

fn collect(
    out: &mut Reads,
    failed: &mut Vec<String>,
    refer: &Url,
    done: Result<(String, Result<Vec<u8>, zk::Error>), tokio::task::JoinError>,
) {
    let Ok((child, r)) = done else { return };
    match r {
        Ok(data) => {
            let server = server_from_node(refer, &child, &data);
            out.servers.insert(child, server);
        }
        Err(zk::Error::NoNode) => {}
        Err(e) => {
            tracing::debug!(node = %child, "reading a server node failed: {e}; retried");
            failed.push(child);
        }
    }
}
