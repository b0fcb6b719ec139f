//! The session loop: connect (with back-off), and on every new session restart the watches
//! and re-apply the registrations; follow the session's state and retry failed writes until
//! it ends, then start over.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use zookeeper_client as zk;

use super::register::reconcile;
use super::session::{Session, connect, local_ip_towards};
use super::state::Shared;
use super::subscriptions::{watch_command, watch_servers};

/// How often failed registry writes are retried.
const RETRY_PERIOD: Duration = Duration::from_secs(3);
/// Reconnection back-off after a failed session establishment.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Connection failures within this window of the start neither release the calls waiting for
/// a first session (`Shared::wait_first_attempt`) nor grow the back-off.
const FIRST_CONNECT_WINDOW: Duration = Duration::from_secs(1);

/// The session loop: connect, install watches and registrations, follow the session state,
/// retry failed writes; after expiry start over with a new session.
pub(super) async fn run_sessions(shared: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    let started = tokio::time::Instant::now();
    while !shared.shutdown.is_cancelled() {
        let client = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = connect(&shared.servers, shared.session_timeout) => r,
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
                    shared.resync.send_modify(|n| *n += 1);
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
