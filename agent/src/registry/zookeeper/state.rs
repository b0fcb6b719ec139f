//! What the registry handle, the session loop and the watch tasks share: the connection
//! state, what the registry was asked to register, the subscriptions and command watches, and
//! the snapshot's data.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::reads::NodeReader;
use super::session::Session;
use super::snapshot::{SnapshotData, SnapshotStore};
use crate::registry::ServerList;
use crate::url::Url;

/// How long the first calls wait for a first session (or for the session loop to give up on
/// one for now: after failures past its first-connect window).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What the registry handle, the session loop and the watch tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    /// `conf-id`, else the URL identity: how logs name this registry.
    pub(super) name: String,
    /// `host:port,host:port`.
    pub(super) servers: String,
    pub(super) session_timeout: Duration,
    pub(super) local_ip: Option<String>,
    pub(super) shutdown: CancellationToken,
    /// Serialises registry writes (as upstream's register lock), held across their awaits.
    pub(super) writes: tokio::sync::Mutex<()>,
    pub(super) regs: Mutex<Registrations>,
    pub(super) live: Mutex<Live>,
    pub(super) first_attempt: watch::Sender<bool>,
    pub(super) snapshot: Option<SnapshotStore>,
    /// How the server lists' nodes are read (bounded, retried).
    pub(super) reader: NodeReader,
    /// Bumped when the connection comes back within the session: every list is listed and
    /// read again (events may have been missed while disconnected).
    pub(super) resync: watch::Sender<u64>,
}

/// The session and what depends on it.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) session: Option<Session>,
    pub(super) connected: bool,
    /// When `connected` last changed (or the registry started).
    pub(super) since: SystemTime,
    pub(super) local_ip: String,
    /// By `.../server` path.
    pub(super) subscriptions: BTreeMap<String, Subscription>,
    /// By command node path.
    pub(super) commands: BTreeMap<String, CommandWatch>,
    pub(super) snapshot: SnapshotData,
}

/// What the registry was asked to register, remembered so that every new session (and the
/// retry of a failed write) can apply it again; `register` writes it into the session.
#[derive(Debug, Default)]
pub(super) struct Registrations {
    /// By URL identity.
    pub(super) services: BTreeMap<String, Registered>,
    pub(super) agent: Option<Url>,
    /// Unregistered services whose nodes may still exist.
    pub(super) removed: Vec<Url>,
    /// Something failed to apply: retried periodically.
    pub(super) dirty: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Registered {
    pub(super) url: Url,
    pub(super) available: bool,
}

/// One watched server list (`subscriptions` follows it).
#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) refer: Url,
    pub(super) tx: Arc<watch::Sender<ServerList>>,
    pub(super) source: Source,
}

/// One watched command node.
#[derive(Debug)]
pub(super) struct CommandWatch {
    pub(super) tx: Arc<watch::Sender<Option<String>>>,
    pub(super) source: Source,
}

/// Where a list's current value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Nothing known yet.
    Nothing,
    /// The snapshot, since then (ZooKeeper was unreachable when it was subscribed).
    Snapshot(SystemTime),
    Zookeeper,
}

impl Source {
    pub(super) fn name(self) -> &'static str {
        match self {
            Source::Nothing => "none",
            Source::Snapshot(_) => "snapshot",
            Source::Zookeeper => "zookeeper",
        }
    }
}

impl Shared {
    pub(super) fn session(&self) -> Option<Session> {
        let live = self.live.lock().unwrap();
        live.session.clone().filter(|_| live.connected)
    }

    pub(super) async fn wait_first_attempt(&self) {
        let mut rx = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, rx.wait_for(|done| *done)).await;
    }

    pub(super) fn set_connected(&self, connected: bool) {
        let mut live = self.live.lock().unwrap();
        if live.connected != connected {
            live.connected = connected;
            live.since = SystemTime::now();
        }
    }
}
