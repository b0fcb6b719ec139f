//! Watches: the server list of each subscribed refer (`.../server`, with this agent's
//! subscriber record `.../client/<ip:port>`) and each command node, followed for as long as
//! anyone receives them and restarted on every new session. Every value is published to its
//! receivers and into the snapshot.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use zookeeper_client as zk;

use super::layout::{NODE_CLIENT, NODE_SERVER, command_path, node_path, node_type_path};
use super::session::{OP_TIMEOUT, Session, delete_node, ensure_node, op};
use super::state::{CommandWatch, Shared, Source, Subscription};
use crate::registry::{CommandScope, ServerList};
use crate::url::{ParamsPool, Url};

impl Shared {
    /// Watch the servers of `refer` (group and path checked by the caller). While ZooKeeper is
    /// unreachable the snapshot's list (if any) is the starting value.
    pub(super) async fn subscribe_servers(self: &Arc<Self>, refer: &Url) -> watch::Receiver<ServerList> {
        self.wait_first_attempt().await;
        let path = node_type_path(refer, NODE_SERVER);
        let (rx, first) = {
            let mut live = self.live.lock().unwrap();
            if let Some(sub) = live.subscriptions.get(&path) {
                return sub.tx.subscribe();
            }
            let (initial, source) = match live.snapshot.servers.get(&path) {
                Some(list) if !live.connected => {
                    tracing::warn!(registry = %self.name, path, servers = list.len(), "zookeeper unreachable: serving the snapshot");
                    (list.clone(), Source::Snapshot(SystemTime::now()))
                }
                _ => (Arc::new(Vec::new()), Source::Nothing),
            };
            let tx = Arc::new(watch::channel(initial).0);
            let rx = tx.subscribe();
            live.subscriptions.insert(
                path.clone(),
                Subscription {
                    refer: refer.clone(),
                    tx: tx.clone(),
                    source,
                },
            );
            // The first read is awaited only while connected: a disconnected session
            // would hold the caller for the whole request timeout.
            let first = live.session.clone().and_then(|s| {
                let (done, first) = oneshot::channel();
                tokio::spawn(watch_servers(
                    self.clone(),
                    s,
                    path.clone(),
                    refer.clone(),
                    tx,
                    Some(done),
                ));
                live.connected.then_some(first)
            });
            (rx, first)
        };
        if let Some(first) = first {
            let _ = tokio::time::timeout(OP_TIMEOUT, first).await;
        }
        rx
    }

    /// Watch a command node (`None`: absent or empty). While ZooKeeper is unreachable the
    /// snapshot's text (if any) is the starting value.
    pub(super) async fn subscribe_command(
        self: &Arc<Self>,
        scope: &CommandScope,
    ) -> watch::Receiver<Option<String>> {
        self.wait_first_attempt().await;
        let path = command_path(scope);
        let (rx, first) = {
            let mut live = self.live.lock().unwrap();
            if let Some(c) = live.commands.get(&path) {
                return c.tx.subscribe();
            }
            let (initial, source) = match live.snapshot.commands.get(&path) {
                Some(text) if !live.connected => (Some(text.clone()), Source::Snapshot(SystemTime::now())),
                _ => (None, Source::Nothing),
            };
            let tx = Arc::new(watch::channel(initial).0);
            let rx = tx.subscribe();
            live.commands.insert(
                path.clone(),
                CommandWatch {
                    tx: tx.clone(),
                    source,
                },
            );
            let first = live.session.clone().and_then(|s| {
                let (done, first) = oneshot::channel();
                tokio::spawn(watch_command(self.clone(), s, path.clone(), tx, Some(done)));
                live.connected.then_some(first)
            });
            (rx, first)
        };
        if let Some(first) = first {
            let _ = tokio::time::timeout(OP_TIMEOUT, first).await;
        }
        rx
    }

    /// Publish a server list (never an empty one, 4.9) and have it snapshotted.
    fn publish_servers(&self, path: &str, tx: &Arc<watch::Sender<ServerList>>, mut list: Vec<Url>) {
        {
            let mut live = self.live.lock().unwrap();
            let Some(sub) = live
                .subscriptions
                .get_mut(path)
                .filter(|s| Arc::ptr_eq(&s.tx, tx))
            else {
                return;
            };
            sub.source = Source::Zookeeper;
            let servers = list.len();
            let changed = tx.send_if_modified(|cur| {
                if **cur == list {
                    false
                } else {
                    *cur = Arc::new(std::mem::take(&mut list));
                    true
                }
            });
            if changed {
                tracing::info!(registry = %self.name, path, servers, "server list changed");
            }
            // The snapshot shares the published list.
            let current = tx.borrow().clone();
            if live
                .snapshot
                .servers
                .get(path)
                .is_some_and(|s| Arc::ptr_eq(s, &current) || *s == current)
            {
                return;
            }
            live.snapshot.servers.insert(path.to_string(), current);
        }
        self.save_snapshot(path);
    }

    fn publish_command(&self, path: &str, tx: &Arc<watch::Sender<Option<String>>>, text: Option<String>) {
        {
            let mut live = self.live.lock().unwrap();
            let Some(c) = live.commands.get_mut(path).filter(|c| Arc::ptr_eq(&c.tx, tx)) else {
                return;
            };
            c.source = Source::Zookeeper;
            if tx.send_if_modified(|cur| {
                if *cur == text {
                    false
                } else {
                    *cur = text.clone();
                    true
                }
            }) {
                tracing::info!(registry = %self.name, path, present = text.is_some(), "command changed");
            }
            if live.snapshot.commands.get(path) == text.as_ref() {
                return;
            }
            match text {
                Some(t) => live.snapshot.commands.insert(path.to_string(), t),
                None => live.snapshot.commands.remove(path),
            };
        }
        self.save_snapshot(path);
    }

    fn save_snapshot(&self, path: &str) {
        if let Some(store) = &self.snapshot {
            store.mark_dirty(path);
        }
    }
}

/// What a watch loop does next.
enum Next {
    Again,
    Stop,
}

/// Wait for a node event, the end of the session, or the last subscriber leaving.
async fn wait_event<T>(session: &Session, tx: &watch::Sender<T>, watcher: zk::OneshotWatcher) -> Next {
    tokio::select! {
        _ = session.token.cancelled() => Next::Stop,
        _ = tx.closed() => Next::Stop,
        ev = watcher.changed() => {
            if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() {
                Next::Stop
            } else {
                Next::Again
            }
        }
    }
}

async fn pause(session: &Session) -> Next {
    tokio::select! {
        _ = session.token.cancelled() => Next::Stop,
        _ = tokio::time::sleep(Duration::from_secs(1)) => Next::Again,
    }
}

/// How often a followed list is compared with ZooKeeper's children although no event came
/// (a missed event, a read that kept failing), with up to half of it added at random so the
/// subscriptions do not all ask at once.
const RECONCILE_PERIOD: Duration = Duration::from_secs(30);
/// Every this many reconciliations every node is read again (a node whose data changed in
/// place keeps its name, so listing the children does not show it).
const FULL_READ_EVERY: u32 = 10;
/// Retry of failed reads or a failed client node: first after this, doubling up to
/// `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Follow `.../server` of one subscription for one session: the children are listed with a
/// watch; only children not read yet (or whose read failed) are read; the list is published
/// from what is known. Failed reads and a failed client node are retried with back-off, and
/// the children are listed again periodically and when the connection comes back, so the
/// list always converges to ZooKeeper's children.
pub(super) async fn watch_servers(
    shared: Arc<Shared>,
    session: Session,
    path: String,
    refer: Url,
    tx: Arc<watch::Sender<ServerList>>,
    mut first: Option<oneshot::Sender<()>>,
) {
    let mut client_node: Option<String> = None;
    // Child → the address of the server it describes. The servers themselves live only in
    // the published list: at a fleet's size a second copy of every URL is most of the
    // registry's memory. Children are known by a 64-bit hash of their name (`child_key`),
    // not a copy of it: the names are in every listing.
    let mut known: HashMap<u64, Known> = HashMap::new();
    // The servers of a service mostly have the same parameters: one map for all of them.
    let mut params = ParamsPool::default();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut watcher: Option<Event> = None;
    let mut resync = shared.resync.subscribe();
    let mut retry = FIRST_RETRY;
    let mut reconciles = 0u32;
    let mut full_read = false;
    // A periodic check first asks for the node's stat: unchanged children version, nothing
    // to retry, and a watch set → nothing to do (one small answer per list per period).
    let mut check_only = false;
    let mut cversion: Option<i32> = None;
    loop {
        if std::mem::take(&mut check_only) && watcher.is_some() && failed.is_empty() && client_node.is_some()
        {
            let same = matches!(op(session.client.check_stat(&path)).await, Ok(Some(st)) if Some(st.cversion) == cversion);
            if same {
                let (next, woke) = wait_list_event(&session, &tx, &mut watcher, &mut resync, None).await;
                if let Next::Stop = next {
                    break;
                }
                (check_only, full_read) = after_wake(woke, &mut reconciles);
                continue;
            }
        }
        let listed = match watcher {
            // A watch is set: list without another one (periodic check, retry, reconnect).
            Some(_) => op(session.client.get_children(&path))
                .await
                .map(|(c, st)| (c, st, None)),
            None => op(session.client.get_and_watch_children(&path))
                .await
                .map(|(c, st, w)| (c, st, Some(w))),
        };
        let next = match listed {
            Ok((children, stat, w)) => {
                cversion = Some(stat.cversion);
                if let Some(w) = w {
                    watcher = Some(Box::pin(w.changed()));
                }
                // One pass, in a block: what it read is dropped before the wait below (a
                // list's worth of URLs per subscription otherwise stays until the next event).
                {
                    let children: BTreeSet<String> = children.into_iter().collect();
                    let keys: HashSet<u64> = children.iter().map(|c| child_key(c)).collect();
                    let known_before = known.len();
                    known.retain(|k, _| keys.contains(k));
                    let dropped = known.len() != known_before;
                    failed.retain(|c| children.contains(c));
                    let wanted: Vec<String> = children
                        .iter()
                        .filter(|c| full_read || !known.contains_key(&child_key(c)) || failed.contains(*c))
                        .cloned()
                        .collect();
                    let read_nothing = wanted.is_empty();
                    let mut fresh: HashMap<String, Url> = HashMap::new();
                    let _turn = match wanted.is_empty() {
                        true => None,
                        false => shared.reader.pass().await,
                    };
                    if !wanted.is_empty() {
                        let reads = shared.reader.read(&session, &path, &refer, wanted).await;
                        for (child, server) in reads.servers {
                            failed.remove(&child);
                            let address = match server {
                                Some(mut u) => {
                                    params.share(&mut u);
                                    let a = u.address();
                                    let k = match a == child {
                                        true => Known::Named,
                                        false => Known::At(a.clone().into()),
                                    };
                                    fresh.insert(a, u);
                                    k
                                }
                                None => Known::Unusable,
                            };
                            known.insert(child_key(&child), address);
                        }
                        failed.extend(reads.failed);
                    }
                    if !failed.is_empty() {
                        tracing::warn!(
                            path,
                            failed = failed.len(),
                            "server nodes could not be read; retrying"
                        );
                    }
                    // Nothing read and nothing gone: the published list stands.
                    if dropped || !fresh.is_empty() || !read_nothing {
                        let list = current_list(&tx, &children, &mut known, fresh, &mut failed);
                        if !list.is_empty() {
                            shared.publish_servers(&path, &tx, list);
                        }
                    }
                }
                if client_node.is_none() {
                    client_node = create_client_node(&shared, &session, &refer).await;
                }
                signal(&mut first);
                let again = match failed.is_empty() && client_node.is_some() {
                    true => {
                        retry = FIRST_RETRY;
                        None
                    }
                    false => {
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        Some(wait)
                    }
                };
                let (next, woke) = wait_list_event(&session, &tx, &mut watcher, &mut resync, again).await;
                (check_only, full_read) = after_wake(woke, &mut reconciles);
                next
            }
            Err(zk::Error::NoNode) => {
                // Not there yet: wait for it to be created.
                signal(&mut first);
                watcher = None;
                match op(session.client.check_and_watch_stat(&path)).await {
                    Ok((Some(_), _)) => Next::Again,
                    Ok((None, w)) => {
                        watcher = Some(Box::pin(w.changed()));
                        wait_list_event(&session, &tx, &mut watcher, &mut resync, None)
                            .await
                            .0
                    }
                    Err(_) => pause(&session).await,
                }
            }
            Err(e) => {
                signal(&mut first);
                tracing::debug!(path, "watching servers failed: {e}");
                watcher = None;
                pause(&session).await
            }
        };
        if let Next::Stop = next {
            break;
        }
    }
    let gone = {
        let mut live = shared.live.lock().unwrap();
        forget_if_unused(&mut live.subscriptions, &path, &tx, |s| &s.tx)
    };
    if gone && let Some(node) = client_node {
        let _ = delete_node(&session, &node).await;
    }
}

/// A set watch's event, to come.
type Event = std::pin::Pin<Box<dyn std::future::Future<Output = zk::WatchedEvent> + Send>>;

/// How a list's child is known: a hash of its name (two of a list's children hashing alike,
/// at 2^-64 per pair, would be read as one).
fn child_key(child: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(child.as_bytes(), 0)
}

/// What a child of a list names.
#[derive(Debug)]
enum Known {
    /// Not a usable server.
    Unusable,
    /// The server whose address is the child's name (`host:port`, motan's layout).
    Named,
    /// The server at this address.
    At(Box<str>),
}

/// The list of the `known` children: servers just read (`fresh`) or, for the others, as
/// published before. A known child whose server is in neither (the last list was not
/// published: it was empty) is read again.
fn current_list(
    tx: &watch::Sender<ServerList>,
    children: &BTreeSet<String>,
    known: &mut HashMap<u64, Known>,
    mut fresh: HashMap<String, Url>,
    failed: &mut BTreeSet<String>,
) -> Vec<Url> {
    let published = tx.borrow().clone();
    // The old list by address, made only if something was not read in this pass.
    let mut before: Option<HashMap<String, &Url>> = None;
    // Where each address went in `list` (two children may name the same server).
    let mut placed: HashMap<&str, usize> = HashMap::new();
    let mut list: Vec<Url> = Vec::with_capacity(known.len());
    let mut lost = Vec::new();
    for child in children {
        let Some(k) = known.get(&child_key(child)) else {
            continue;
        };
        let address = match k {
            Known::Unusable => continue,
            Known::Named => child.as_str(),
            Known::At(a) => a,
        };
        if let Some(u) = fresh.remove(address) {
            placed.insert(address, list.len());
            list.push(u);
            continue;
        }
        if let Some(&i) = placed.get(address) {
            list.push(list[i].clone());
            continue;
        }
        let before = before.get_or_insert_with(|| published.iter().map(|u| (u.address(), u)).collect());
        match before.get(address) {
            Some(u) => list.push((*u).clone()),
            None => lost.push(child.clone()),
        }
    }
    for child in lost {
        known.remove(&child_key(&child));
        failed.insert(child);
    }
    list
}

/// After a wait: (check the stat only, read every node again).
fn after_wake(woke: Woke, reconciles: &mut u32) -> (bool, bool) {
    match woke {
        Woke::Period => {
            *reconciles += 1;
            let full = reconciles.is_multiple_of(FULL_READ_EVERY);
            (!full, full)
        }
        Woke::Resync => (false, true),
        Woke::Other => (false, false),
    }
}

/// What ended a wait of the list loop.
enum Woke {
    /// The reconciliation period passed.
    Period,
    /// The connection came back (`Shared::resync`).
    Resync,
    /// A node event, a retry, or the end.
    Other,
}

/// Wait for the list's node event (`watcher`, consumed when it fires), a resync request, the
/// retry delay `again`, else the reconciliation period; or the end of the session or of the
/// subscribers.
async fn wait_list_event(
    session: &Session,
    tx: &watch::Sender<ServerList>,
    watcher: &mut Option<Event>,
    resync: &mut watch::Receiver<u64>,
    again: Option<Duration>,
) -> (Next, Woke) {
    let period = RECONCILE_PERIOD + RECONCILE_PERIOD.mul_f64(fastrand::f64() / 2.0);
    let (wait, woke) = match again {
        Some(d) => (d, Woke::Other),
        None => (period, Woke::Period),
    };
    let event = async {
        match watcher.as_mut() {
            Some(w) => Some(w.await),
            None => std::future::pending().await,
        }
    };
    let r = tokio::select! {
        _ = session.token.cancelled() => (Next::Stop, Woke::Other),
        _ = tx.closed() => (Next::Stop, Woke::Other),
        _ = resync.changed() => (Next::Again, Woke::Resync),
        _ = tokio::time::sleep(wait) => (Next::Again, woke),
        ev = event => {
            let stop = ev.is_some_and(|ev| ev.event_type == zk::EventType::Session && ev.session_state.is_terminated());
            *watcher = None;
            (if stop { Next::Stop } else { Next::Again }, Woke::Other)
        }
    };
    r
}

/// Tell a waiting subscriber that the first pass is done.
fn signal(first: &mut Option<oneshot::Sender<()>>) {
    if let Some(f) = first.take() {
        let _ = f.send(());
    }
}

/// Drop the entry for `path` if it is still this watch (`tx`) and nobody receives from it any
/// more; true when it was dropped. Checked under the lock that `subscribe` takes, so a new
/// subscriber either got this channel or finds no entry.
fn forget_if_unused<E, T>(
    entries: &mut BTreeMap<String, E>,
    path: &str,
    tx: &Arc<watch::Sender<T>>,
    sender: impl Fn(&E) -> &Arc<watch::Sender<T>>,
) -> bool {
    let unused = entries
        .get(path)
        .is_some_and(|e| Arc::ptr_eq(sender(e), tx) && tx.is_closed());
    if unused {
        entries.remove(path);
    }
    unused
}

/// The subscriber record (`.../client/<ip:port>`, 4.9): the refer as a `referer` node, with
/// this agent's IP when it has no host.
async fn create_client_node(shared: &Shared, session: &Session, refer: &Url) -> Option<String> {
    let mut url = refer.clone().with_param("nodeType", "referer");
    if url.host.is_empty() {
        url.host = shared.live.lock().unwrap().local_ip.clone();
    }
    let path = node_path(&url, NODE_CLIENT);
    match ensure_node(session, &path, &url).await {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(path, "creating the client node failed: {e}");
            None
        }
    }
}

/// Follow one command node for one session.
pub(super) async fn watch_command(
    shared: Arc<Shared>,
    session: Session,
    path: String,
    tx: Arc<watch::Sender<Option<String>>>,
    mut first: Option<oneshot::Sender<()>>,
) {
    loop {
        let next = match op(session.client.get_and_watch_data(&path)).await {
            Ok((data, _, watcher)) => {
                let text = Url::node_data_text(&data);
                let text = (!text.trim().is_empty()).then_some(text);
                shared.publish_command(&path, &tx, text);
                signal(&mut first);
                wait_event(&session, &tx, watcher).await
            }
            Err(zk::Error::NoNode) => match op(session.client.check_and_watch_stat(&path)).await {
                Ok((Some(_), _)) => Next::Again,
                Ok((None, watcher)) => {
                    shared.publish_command(&path, &tx, None);
                    signal(&mut first);
                    wait_event(&session, &tx, watcher).await
                }
                Err(_) => pause(&session).await,
            },
            Err(e) => {
                signal(&mut first);
                tracing::debug!(path, "watching command failed: {e}");
                pause(&session).await
            }
        };
        if let Next::Stop = next {
            break;
        }
    }
    forget_if_unused(&mut shared.live.lock().unwrap().commands, &path, &tx, |c| &c.tx);
}
