//! The ZooKeeper session: connect (with back-off), follow the session state, and on every new
//! session restart the watches and re-apply the registrations; and the requests made in one.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::Shared;
use super::register::reconcile;
use super::subscriptions::{watch_command, watch_servers};
use crate::url::Url;

/// Bound of one ZooKeeper request: requests made while disconnected wait for a reconnection.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often failed registry writes are retried.
const RETRY_PERIOD: Duration = Duration::from_secs(3);
/// Reconnection back-off after a failed session establishment.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// How long the first calls wait for a first session (or for the registry to give up on one
/// for now: after failures during `FIRST_CONNECT_WINDOW`).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);
const FIRST_CONNECT_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) client: zk::Client,
    pub(super) id: i64,
    /// Cancelled when the session ends: its watch tasks stop.
    pub(super) token: CancellationToken,
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

/// One ZooKeeper request, bounded by `OP_TIMEOUT`.
pub(super) async fn op<T>(
    f: impl std::future::Future<Output = Result<T, zk::Error>>,
) -> Result<T, zk::Error> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// The session loop: connect, install watches and registrations, follow the session state,
/// retry failed writes; after expiry start over with a new session.
pub(super) async fn run_sessions(shared: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    let started = tokio::time::Instant::now();
    while !shared.shutdown.is_cancelled() {
        let connect = zk::Client::connector()
            .with_session_timeout(shared.session_timeout)
            .with_fail_eagerly()
            .connect(&shared.servers);
        let client = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout(shared.session_timeout, connect) => r.unwrap_or(Err(zk::Error::Timeout)),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                if started.elapsed() >= FIRST_CONNECT_WINDOW {
                    shared.first_attempt.send_replace(true);
                }
                if failures == 0 {
                    tracing::warn!(registry = %shared.name, servers = %shared.servers, "zookeeper unreachable: {e}; retrying");
                }
                failures += 1;
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if started.elapsed() < FIRST_CONNECT_WINDOW {
                    backoff = MIN_BACKOFF;
                }
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        failures = 0;
        serve_session(&shared, client).await;
    }
    // Dropping the last clone of the client closes the session.
    shared.live.lock().unwrap().session = None;
}

async fn serve_session(shared: &Arc<Shared>, client: zk::Client) {
    let id = client.session_id().0;
    tracing::info!(registry = %shared.name, session = %format!("{id:#x}"), "zookeeper session established");
    let local_ip = match &shared.local_ip {
        Some(ip) => ip.clone(),
        None => local_ip_towards(&shared.servers).await,
    };
    let session = Session {
        client: client.clone(),
        id,
        token: shared.shutdown.child_token(),
    };
    let mut state = client.state_watcher();
    {
        let mut live = shared.live.lock().unwrap();
        live.session = Some(session.clone());
        live.connected = true;
        live.since = SystemTime::now();
        live.local_ip = local_ip;
        for (path, sub) in &live.subscriptions {
            tokio::spawn(watch_servers(
                shared.clone(),
                session.clone(),
                path.clone(),
                sub.refer.clone(),
                sub.tx.clone(),
                None,
            ));
        }
        for (path, c) in &live.commands {
            tokio::spawn(watch_command(
                shared.clone(),
                session.clone(),
                path.clone(),
                c.tx.clone(),
                None,
            ));
        }
    }
    shared.first_attempt.send_replace(true);
    reconcile(shared, &session, true).await;
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            s = state.changed() => match s {
                zk::SessionState::Disconnected => {
                    tracing::warn!(registry = %shared.name, "zookeeper connection lost; serving the last lists");
                    shared.set_connected(false);
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    tracing::info!(registry = %shared.name, "zookeeper connection re-established (same session)");
                    shared.set_connected(true);
                    reconcile(shared, &session, false).await;
                }
                terminal => {
                    tracing::warn!(registry = %shared.name, state = ?terminal, "zookeeper session ended; starting a new one");
                    break;
                }
            },
            _ = retry.tick() => {
                if shared.live.lock().unwrap().connected {
                    reconcile(shared, &session, false).await;
                }
            }
        }
    }
    session.token.cancel();
    let mut live = shared.live.lock().unwrap();
    live.session = None;
    if live.connected {
        live.connected = false;
        live.since = SystemTime::now();
    }
}

/// The local address of a TCP connection to the first reachable server.
async fn local_ip_towards(servers: &str) -> String {
    for server in servers.split(',') {
        let connect = tokio::net::TcpStream::connect(server.trim());
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), connect).await
            && let Ok(addr) = stream.local_addr()
        {
            return addr.ip().to_string();
        }
    }
    tracing::warn!(
        servers,
        "could not find the local IP towards zookeeper; using 127.0.0.1"
    );
    "127.0.0.1".into()
}

/// Delete a node if it exists.
pub(super) async fn delete_node(session: &Session, path: &str) -> Result<(), zk::Error> {
    match op(session.client.delete(path, None)).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make `path` an ephemeral node of this session holding `url` as node data. A node that
/// already is exactly that is left alone; any other (another session's, other data) is
/// replaced, as upstream's remove-then-create.
pub(super) async fn ensure_node(session: &Session, path: &str, url: &Url) -> Result<(), zk::Error> {
    let data = url.to_node_string();
    match op(session.client.get_data(path)).await {
        Ok((current, stat)) if stat.ephemeral_owner == session.id && current == data.as_bytes() => {
            return Ok(());
        }
        Ok(_) => delete_node(session, path).await?,
        Err(zk::Error::NoNode) => {}
        Err(e) => return Err(e),
    }
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match op(session.client.create(path, data.as_bytes(), &ephemeral)).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => {
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            op(session.client.mkdir(parent, &dir)).await?;
            op(session.client.create(path, data.as_bytes(), &ephemeral))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
