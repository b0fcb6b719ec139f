//! Watches: the server list of each subscribed refer (`.../server`, with this agent's
//! subscriber record `.../client/<ip:port>`) and each command node, followed for as long as
//! anyone receives them and restarted on every new session. Every value is published to its
//! receivers and into the snapshot.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use zookeeper_client as zk;

use super::layout::{NODE_CLIENT, NODE_SERVER, command_path, node_path, node_type_path, server_from_node};
use super::session::{OP_TIMEOUT, Session, delete_node, ensure_node, op};
use super::state::{CommandWatch, Shared, Source, Subscription};
use crate::registry::{CommandScope, ServerList};
use crate::url::Url;

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
                _ => (Vec::new(), Source::Nothing),
            };
            let tx = Arc::new(watch::channel(Arc::new(initial)).0);
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

    /// Publish a server list (never an empty one, 4.9) and snapshot it.
    async fn publish_servers(&self, path: &str, tx: &Arc<watch::Sender<ServerList>>, list: Vec<Url>) {
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
            let changed = tx.send_if_modified(|cur| {
                if **cur == list {
                    false
                } else {
                    *cur = Arc::new(list.clone());
                    true
                }
            });
            if changed {
                tracing::info!(registry = %self.name, path, servers = list.len(), "server list changed");
            }
            if live.snapshot.servers.get(path) == Some(&list) {
                return;
            }
            live.snapshot.servers.insert(path.to_string(), list);
        }
        self.save_snapshot().await;
    }

    async fn publish_command(
        &self,
        path: &str,
        tx: &Arc<watch::Sender<Option<String>>>,
        text: Option<String>,
    ) {
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
        self.save_snapshot().await;
    }

    async fn save_snapshot(&self) {
        let Some(store) = &self.snapshot else { return };
        store.save(|| self.live.lock().unwrap().snapshot.clone()).await;
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

/// Follow `.../server` of one subscription for one session.
pub(super) async fn watch_servers(
    shared: Arc<Shared>,
    session: Session,
    path: String,
    refer: Url,
    tx: Arc<watch::Sender<ServerList>>,
    mut first: Option<oneshot::Sender<()>>,
) {
    let mut client_node: Option<String> = None;
    loop {
        let next = match op(session.client.get_and_watch_children(&path)).await {
            Ok((mut children, _, watcher)) => {
                children.sort();
                // Requests go out when the futures are created, so these reads are pipelined.
                let reads: Vec<_> = children
                    .iter()
                    .map(|c| op(session.client.get_data(&format!("{path}/{c}"))))
                    .collect();
                let mut list = Vec::with_capacity(children.len());
                for (child, read) in children.iter().zip(reads) {
                    match read.await {
                        Ok((data, _)) => list.extend(server_from_node(&refer, child, &data)),
                        Err(zk::Error::NoNode) => {}
                        Err(e) => tracing::warn!(node = %child, "reading server node failed: {e}"),
                    }
                }
                if !list.is_empty() {
                    shared.publish_servers(&path, &tx, list).await;
                }
                if client_node.is_none() {
                    client_node = create_client_node(&shared, &session, &refer).await;
                }
                signal(&mut first);
                wait_event(&session, &tx, watcher).await
            }
            Err(zk::Error::NoNode) => {
                // Not there yet: wait for it to be created.
                signal(&mut first);
                match op(session.client.check_and_watch_stat(&path)).await {
                    Ok((Some(_), _)) => Next::Again,
                    Ok((None, watcher)) => wait_event(&session, &tx, watcher).await,
                    Err(_) => pause(&session).await,
                }
            }
            Err(e) => {
                signal(&mut first);
                tracing::debug!(path, "watching servers failed: {e}");
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
                shared.publish_command(&path, &tx, text).await;
                signal(&mut first);
                wait_event(&session, &tx, watcher).await
            }
            Err(zk::Error::NoNode) => match op(session.client.check_and_watch_stat(&path)).await {
                Ok((Some(_), _)) => Next::Again,
                Ok((None, watcher)) => {
                    shared.publish_command(&path, &tx, None).await;
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
