//! The `zookeeper` registry (4.9), with motan's node layout (weibocom/motan-go
//! registry/zkRegistry.go, the same as Java motan):
//!
//! ```text
//! /motan/<group>/<path>/server/<ip:port>             ephemeral  available provider (data: URL string)
//! /motan/<group>/<path>/unavailableServer/<ip:port>  ephemeral  registered, offline provider
//! /motan/<group>/<path>/client/<ip:port>             ephemeral  subscriber record
//! /motan/<group>/command                             persistent service command JSON (4.10)
//! /motan/agent/<application>/node/<ip:port>          ephemeral  this agent
//! /motan/agent/<application>/command                 persistent agent command JSON
//! ```
//!
//! Client crate: `zookeeper-client` (kezhuw/zookeeper-client-rust). It is async and runs on
//! tokio (feature `tokio`), is actively maintained, speaks the 3.5+ protocol, re-arms watches
//! itself after a reconnection within the session, and reports session states through a
//! `StateWatcher`, which is all this registry needs. The `zookeeper` crate is synchronous
//! (a thread and callbacks per connection) and `zookeeper-async` is a little-maintained fork.
//!
//! Behaviour, and where it deliberately differs from upstream:
//! - The registry remembers what it was asked (registered services and whether each is
//!   available, the agent node, subscriptions, command watches). A new session (first start,
//!   or after the old one expired) re-creates every node with that state and re-subscribes; a
//!   failed registry write is retried every few seconds. Upstream drops requests made while
//!   disconnected.
//! - Lost connection: lists and commands keep their last value; `status()` says since when.
//! - Subscribing to a service whose `server` node does not exist yet waits for it to appear
//!   (upstream never watches it, sharp edge 7). A change to zero children is not notified
//!   (4.9): the previous list stays.
//! - A command node that is absent or empty is delivered as `None` (upstream ignores empty
//!   data, so a removed command would never be noticed); the registry never creates command
//!   nodes (upstream creates an empty one).
//! - Snapshot: with `snapshot_dir`, every discovered server list and command text is written
//!   to `<snapshot_dir>/zookeeper_<address>.json` (atomically: temp file, fsync, rename).
//!   Subscriptions made while ZooKeeper cannot be reached start from it.
//! - `registrySessionTimeout` is in seconds as in motan-go, but clamped to 2..=60 s (absent:
//!   30 s). Upstream's default of 1000 s only works because servers cap it (40 s by default);
//!   demo configs that write `10000` meaning milliseconds get 60 s.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::direct::parse_address;
use super::{CommandScope, Registry, RegistryError, RegistryFuture, ServerList};
use crate::url::{Url, keys};

/// Registry URL parameter: directory of the registry snapshot.
pub const SNAPSHOT_DIR: &str = "snapshot_dir";
/// Registry URL parameter: ZooKeeper session timeout in seconds (motan-go's unit).
pub const SESSION_TIMEOUT: &str = "registrySessionTimeout";

const NAMESPACE: &str = "/motan";
const NODE_SERVER: &str = "server";
const NODE_UNAVAILABLE: &str = "unavailableServer";
const NODE_CLIENT: &str = "client";

const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one ZooKeeper request: requests made while disconnected wait for a reconnection.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often failed registry writes are retried.
const RETRY_PERIOD: Duration = Duration::from_secs(3);
/// Reconnection back-off after a failed session establishment.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// How long the first calls wait for a first session (or for the registry to give up on one
/// for now: after failures during `FIRST_CONNECT_WINDOW`).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);
const FIRST_CONNECT_WINDOW: Duration = Duration::from_secs(1);

/// Options that do not come from the registry URL (or override it).
#[derive(Clone, Debug, Default)]
pub struct ZkOptions {
    /// Where snapshots are kept; `None` = the URL's `snapshot_dir`, and no snapshot without it.
    pub snapshot_dir: Option<PathBuf>,
    /// The IP written into client nodes of refers without a host (motan-go's `-localIP`).
    /// `None`: the local address of a connection to the registry.
    pub local_ip: Option<String>,
}

impl ZkOptions {
    pub fn from_url(url: &Url) -> ZkOptions {
        ZkOptions {
            snapshot_dir: url.param(SNAPSHOT_DIR).map(PathBuf::from),
            local_ip: None,
        }
    }
}

/// The ZooKeeper session timeout of a registry URL (seconds, clamped; see the module doc).
pub fn session_timeout(url: &Url) -> Duration {
    match url.param(SESSION_TIMEOUT).and_then(|v| v.parse::<u64>().ok()) {
        Some(s) => Duration::from_secs(s).clamp(MIN_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT),
        None => DEFAULT_SESSION_TIMEOUT,
    }
}

/// The servers of a registry URL as a connect string `host:port,host:port`: `host` and
/// `port` when both are set, else the `address` list (upstream's rule).
pub fn connect_string(url: &Url) -> Result<String, String> {
    if !url.host.is_empty() && url.port > 0 {
        return Ok(format!("{}:{}", url.host, url.port));
    }
    let list = url.get_list(keys::ADDRESS);
    if list.is_empty() {
        return Err("needs host and port, or address (\"host:port,host:port\")".into());
    }
    for entry in &list {
        if parse_address(entry)?.1 == 0 {
            return Err(format!("address entry {entry:?} is not host:port"));
        }
    }
    Ok(list.join(","))
}

/// `/motan/<group>/<path>/<kind>` of a service.
pub fn node_type_path(url: &Url, kind: &str) -> String {
    format!("{NAMESPACE}/{}/{}/{kind}", url.group, url.path)
}

/// `/motan/<group>/<path>/<kind>/<host:port>`.
pub fn node_path(url: &Url, kind: &str) -> String {
    format!("{}/{}:{}", node_type_path(url, kind), url.host, url.port)
}

/// `/motan/agent/<application>/node/<host:port>` of an agent URL.
pub fn agent_node_path(agent: &Url) -> String {
    format!(
        "{NAMESPACE}/agent/{}/node/{}:{}",
        agent.get_str(keys::APPLICATION, ""),
        agent.host,
        agent.port
    )
}

/// The command node of a scope (4.9).
pub fn command_path(scope: &CommandScope) -> String {
    match scope {
        CommandScope::Group(group) => format!("{NAMESPACE}/{group}/command"),
        CommandScope::Agent(application) => format!("{NAMESPACE}/agent/{application}/command"),
    }
}

/// The server URL of a child of `.../server`: the node data when it parses, else the refer
/// with the child name's host and port (4.9; upstream: `nodeChildsToURLs`).
pub fn server_from_node(refer: &Url, child: &str, data: &[u8]) -> Option<Url> {
    let text = Url::node_data_text(data);
    if !text.is_empty() {
        match Url::parse_node(&text) {
            Ok(u) => return Some(u),
            Err(e) => tracing::warn!(node = child, "{e}; using the node name"),
        }
    }
    let mut u = refer.clone();
    match child.rsplit_once(':') {
        Some((host, port)) => {
            u.host = host.to_string();
            u.port = port.parse().unwrap_or(0);
        }
        None => {
            u.host = child.to_string();
            u.port = 80;
        }
    }
    (!u.host.is_empty() || u.port != 0).then_some(u)
}

#[derive(Debug)]
pub struct ZkRegistry {
    url: Url,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `conf-id`, else the URL identity: how logs name this registry.
    name: String,
    /// `host:port,host:port`.
    servers: String,
    session_timeout: Duration,
    local_ip: Option<String>,
    shutdown: CancellationToken,
    /// Serialises registry writes (as upstream's register lock), held across their awaits.
    writes: tokio::sync::Mutex<()>,
    regs: Mutex<Registrations>,
    live: Mutex<Live>,
    first_attempt: watch::Sender<bool>,
    snapshot: Option<SnapshotStore>,
}

#[derive(Debug, Default)]
struct Registrations {
    /// By URL identity.
    services: BTreeMap<String, Registered>,
    agent: Option<Url>,
    /// Unregistered services whose nodes may still exist.
    removed: Vec<Url>,
    /// Something failed to apply: retried periodically.
    dirty: bool,
}

#[derive(Debug, Clone)]
struct Registered {
    url: Url,
    available: bool,
}

#[derive(Debug)]
struct Live {
    session: Option<Session>,
    connected: bool,
    /// When `connected` last changed (or the registry started).
    since: SystemTime,
    local_ip: String,
    /// By `.../server` path.
    subscriptions: BTreeMap<String, Subscription>,
    /// By command node path.
    commands: BTreeMap<String, CommandWatch>,
    snapshot: SnapshotData,
}

#[derive(Debug, Clone)]
struct Session {
    client: zk::Client,
    id: i64,
    /// Cancelled when the session ends: its watch tasks stop.
    token: CancellationToken,
}

#[derive(Debug)]
struct Subscription {
    refer: Url,
    tx: Arc<watch::Sender<ServerList>>,
    source: Source,
}

#[derive(Debug)]
struct CommandWatch {
    tx: Arc<watch::Sender<Option<String>>>,
    source: Source,
}

/// Where a list's current value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Nothing known yet.
    Nothing,
    /// The snapshot, since then (ZooKeeper was unreachable when it was subscribed).
    Snapshot(SystemTime),
    Zookeeper,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Nothing => "none",
            Source::Snapshot(_) => "snapshot",
            Source::Zookeeper => "zookeeper",
        }
    }
}

/// The snapshot file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct SnapshotData {
    registry: String,
    /// `.../server` path → discovered servers.
    servers: BTreeMap<String, Vec<Url>>,
    /// Command node path → text.
    commands: BTreeMap<String, String>,
}

#[derive(Debug)]
struct SnapshotStore {
    file: PathBuf,
    /// Serialises writers; each writes the newest data, taken under this lock.
    write: tokio::sync::Mutex<()>,
}

impl SnapshotStore {
    fn load(&self) -> SnapshotData {
        match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %self.file.display(), "registry snapshot unreadable, ignored: {e}");
                SnapshotData::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SnapshotData::default(),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), "registry snapshot unreadable, ignored: {e}");
                SnapshotData::default()
            }
        }
    }
}

/// Write `bytes` to `file` so that a reader sees the old or the new content, never a mix.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("json.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `zookeeper_<address>.json` with anything but `[A-Za-z0-9._-]` replaced by `_`.
fn snapshot_file_name(servers: &str) -> String {
    let safe: String = servers
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("zookeeper_{safe}.json")
}

fn registry_error(shared: &Shared, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable {
        registry: shared.name.clone(),
        message: e.to_string(),
    }
}

/// One ZooKeeper request, bounded by `OP_TIMEOUT`.
async fn op<T>(f: impl std::future::Future<Output = Result<T, zk::Error>>) -> Result<T, zk::Error> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

impl ZkRegistry {
    /// Starts connecting in the background (needs a tokio runtime); never fails because
    /// ZooKeeper is unreachable, only for a bad URL. The first calls wait for a first session
    /// (up to a few seconds; about one second when ZooKeeper refuses connections).
    pub fn new(url: Url, options: ZkOptions) -> Result<ZkRegistry, RegistryError> {
        let name = url.get_str(keys::CONF_ID, &url.identity()).to_string();
        let config = |message: String| RegistryError::Config {
            registry: name.clone(),
            message,
        };
        let servers = connect_string(&url).map_err(config)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| config("the zookeeper registry must be created inside a tokio runtime".into()))?;
        let snapshot = options
            .snapshot_dir
            .or_else(|| url.param(SNAPSHOT_DIR).map(PathBuf::from))
            .map(|dir| SnapshotStore {
                file: dir.join(snapshot_file_name(&servers)),
                write: tokio::sync::Mutex::new(()),
            });
        let mut snapshot_data = snapshot.as_ref().map(SnapshotStore::load).unwrap_or_default();
        snapshot_data.registry = servers.clone();
        let shared = Arc::new(Shared {
            name,
            session_timeout: session_timeout(&url),
            servers,
            local_ip: options.local_ip,
            shutdown: CancellationToken::new(),
            writes: tokio::sync::Mutex::new(()),
            regs: Mutex::new(Registrations::default()),
            live: Mutex::new(Live {
                session: None,
                connected: false,
                since: SystemTime::now(),
                local_ip: String::new(),
                subscriptions: BTreeMap::new(),
                commands: BTreeMap::new(),
                snapshot: snapshot_data,
            }),
            first_attempt: watch::channel(false).0,
            snapshot,
        });
        runtime.spawn(run_sessions(shared.clone()));
        Ok(ZkRegistry { url, shared })
    }

    /// Register this agent: `/motan/agent/<application>/node/<host:port>` (also re-created on
    /// every new session).
    pub async fn register_agent_node(&self, agent: &Url) -> Result<(), RegistryError> {
        if agent.get_str(keys::APPLICATION, "").is_empty() || agent.host.is_empty() {
            return Err(RegistryError::Config {
                registry: self.shared.name.clone(),
                message: format!("agent URL {} needs application and host", agent.identity()),
            });
        }
        self.shared.wait_first_attempt().await;
        let _w = self.shared.writes.lock().await;
        self.shared.regs.lock().unwrap().agent = Some(agent.clone());
        let result = match self.shared.session() {
            Some(s) => Some(ensure_node(&s, &agent_node_path(agent), agent).await),
            None => None,
        };
        self.shared.settle(result)
    }

    /// Watch a command node (`None`: absent or empty). While ZooKeeper is unreachable the
    /// snapshot's text (if any) is the starting value.
    pub async fn watch_command(&self, scope: &CommandScope) -> watch::Receiver<Option<String>> {
        let shared = &self.shared;
        shared.wait_first_attempt().await;
        let path = command_path(scope);
        let (rx, first) = {
            let mut live = shared.live.lock().unwrap();
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
                tokio::spawn(watch_command(shared.clone(), s, path.clone(), tx, Some(done)));
                live.connected.then_some(first)
            });
            (rx, first)
        };
        if let Some(first) = first {
            let _ = tokio::time::timeout(OP_TIMEOUT, first).await;
        }
        rx
    }

    /// Registry status for the admin API: connection, snapshot use, subscriptions,
    /// registrations.
    pub fn status_json(&self) -> Value {
        let s = &self.shared;
        let live = s.live.lock().unwrap();
        let regs = s.regs.lock().unwrap();
        let mut snapshot_since: Option<SystemTime> = None;
        let mut note = |src: Source| {
            if let Source::Snapshot(t) = src {
                snapshot_since = Some(snapshot_since.map_or(t, |s| s.min(t)));
            }
        };
        let subscriptions: Vec<Value> = live
            .subscriptions
            .iter()
            .map(|(path, sub)| {
                note(sub.source);
                json!({
                    "path": path,
                    "service": sub.refer.path,
                    "group": sub.refer.group,
                    "endpoints": sub.tx.borrow().len(),
                    "source": sub.source.name(),
                })
            })
            .collect();
        let commands: Vec<Value> = live
            .commands
            .iter()
            .map(|(path, c)| {
                note(c.source);
                json!({"path": path, "present": c.tx.borrow().is_some(), "source": c.source.name()})
            })
            .collect();
        let registered: Vec<Value> = regs
            .services
            .values()
            .map(|r| json!({"service": r.url.identity(), "available": r.available}))
            .collect();
        let since_key = if live.connected {
            "connected_since"
        } else {
            "disconnected_since"
        };
        let mut out = json!({
            "protocol": "zookeeper",
            "registry": s.name,
            "address": s.servers,
            "connected": live.connected,
            "session": live.session.as_ref().map(|x| format!("{:#x}", x.id)),
            "session_timeout_ms": s.session_timeout.as_millis() as u64,
            "serving_from_snapshot_since": snapshot_since.map(unix_secs),
            "snapshot_file": s.snapshot.as_ref().map(|f| f.file.display().to_string()),
            "subscriptions": subscriptions,
            "commands": commands,
            "registered": registered,
            "agent": regs.agent.as_ref().map(agent_node_path),
            "pending_writes": regs.dirty || !regs.removed.is_empty(),
        });
        out[since_key] = json!(unix_secs(live.since));
        out
    }

    /// Whether a ZooKeeper session is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.live.lock().unwrap().connected
    }

    /// Stop: watches end, the session is closed (its ephemeral nodes go away). Also on drop.
    pub fn close(&self) {
        self.shared.shutdown.cancel();
    }

    /// Change the remembered registrations and apply the services `change` returns.
    async fn change_services(
        &self,
        change: impl FnOnce(&mut Registrations) -> Vec<Registered>,
    ) -> Result<(), RegistryError> {
        self.shared.wait_first_attempt().await;
        let _w = self.shared.writes.lock().await;
        let targets = change(&mut self.shared.regs.lock().unwrap());
        let result = match self.shared.session() {
            Some(s) => Some(apply_services(&s, &targets).await),
            None => None,
        };
        self.shared.settle(result)
    }
}

impl Drop for ZkRegistry {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Shared {
    fn session(&self) -> Option<Session> {
        let live = self.live.lock().unwrap();
        live.session.clone().filter(|_| live.connected)
    }

    async fn wait_first_attempt(&self) {
        let mut rx = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, rx.wait_for(|done| *done)).await;
    }

    /// Turn the outcome of a registry write into the caller's result; a failure is retried
    /// in the background. `None`: there was no connected session to write with.
    fn settle(&self, result: Option<Result<(), zk::Error>>) -> Result<(), RegistryError> {
        let reason = match result {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e.to_string(),
            None => "not connected to ZooKeeper".to_string(),
        };
        self.regs.lock().unwrap().dirty = true;
        Err(registry_error(
            self,
            format!("{reason}; kept and retried when ZooKeeper is reachable"),
        ))
    }

    fn set_connected(&self, connected: bool) {
        let mut live = self.live.lock().unwrap();
        if live.connected != connected {
            live.connected = connected;
            live.since = SystemTime::now();
        }
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
        let _w = store.write.lock().await;
        let data = self.live.lock().unwrap().snapshot.clone();
        let file = store.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec_pretty(&data).map_err(std::io::Error::other)?;
            write_atomically(&file, &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(file = %store.file.display(), "registry snapshot not written: {e}"),
            Err(e) => tracing::warn!("registry snapshot writer failed: {e}"),
        }
    }
}

/// The session loop: connect, install watches and registrations, follow the session state,
/// retry failed writes; after expiry start over with a new session.
async fn run_sessions(shared: Arc<Shared>) {
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

/// Apply the remembered registrations. `all`: every node (a new session: nodes of the old one
/// must be re-created under this one); else only when something failed before.
async fn reconcile(shared: &Shared, session: &Session, all: bool) {
    let _w = shared.writes.lock().await;
    let (services, agent, removed) = {
        let mut regs = shared.regs.lock().unwrap();
        if !all && !regs.dirty && regs.removed.is_empty() {
            return;
        }
        regs.dirty = false;
        (
            regs.services.values().cloned().collect::<Vec<_>>(),
            regs.agent.clone(),
            std::mem::take(&mut regs.removed),
        )
    };
    let mut failed = false;
    let mut still_removed = Vec::new();
    for url in removed {
        if delete_service_nodes(session, &url).await.is_err() {
            still_removed.push(url);
        }
    }
    if apply_services(session, &services).await.is_err() {
        failed = true;
    }
    if let Some(agent) = &agent
        && ensure_node(session, &agent_node_path(agent), agent)
            .await
            .is_err()
    {
        failed = true;
    }
    let mut regs = shared.regs.lock().unwrap();
    regs.dirty |= failed;
    regs.removed.extend(still_removed);
    if all {
        tracing::info!(
            registry = %shared.name,
            services = services.len(),
            agent = agent.is_some(),
            ok = !failed,
            "registrations applied to the new session"
        );
    }
}

/// Put each service's node where its state says (server or unavailableServer) and remove the
/// other one. Continues after a failure; returns the first error.
async fn apply_services(session: &Session, services: &[Registered]) -> Result<(), zk::Error> {
    let mut result = Ok(());
    for r in services {
        let (want, other) = if r.available {
            (NODE_SERVER, NODE_UNAVAILABLE)
        } else {
            (NODE_UNAVAILABLE, NODE_SERVER)
        };
        let step = match delete_node(session, &node_path(&r.url, other)).await {
            Ok(()) => ensure_node(session, &node_path(&r.url, want), &r.url).await,
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            tracing::warn!(service = %r.url.identity(), "zookeeper write failed: {e}");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

async fn delete_service_nodes(session: &Session, url: &Url) -> Result<(), zk::Error> {
    delete_node(session, &node_path(url, NODE_SERVER)).await?;
    delete_node(session, &node_path(url, NODE_UNAVAILABLE)).await
}

/// Delete a node if it exists.
async fn delete_node(session: &Session, path: &str) -> Result<(), zk::Error> {
    match op(session.client.delete(path, None)).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make `path` an ephemeral node of this session holding `url` as node data. A node that
/// already is exactly that is left alone; any other (another session's, other data) is
/// replaced, as upstream's remove-then-create.
async fn ensure_node(session: &Session, path: &str, url: &Url) -> Result<(), zk::Error> {
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
async fn watch_servers(
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
async fn watch_command(
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

fn check_service(name: &str, url: &Url) -> Result<(), RegistryError> {
    if url.group.is_empty() || url.path.is_empty() || url.host.is_empty() {
        return Err(RegistryError::Config {
            registry: name.to_string(),
            message: format!("service URL {} needs group, path and host", url.identity()),
        });
    }
    Ok(())
}

impl Registry for ZkRegistry {
    fn url(&self) -> &Url {
        &self.url
    }

    fn subscribe<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, watch::Receiver<ServerList>> {
        Box::pin(async move {
            let shared = &self.shared;
            if refer.group.is_empty() || refer.path.is_empty() {
                return Err(RegistryError::Config {
                    registry: shared.name.clone(),
                    message: format!("refer {} needs group and path", refer.identity()),
                });
            }
            shared.wait_first_attempt().await;
            let path = node_type_path(refer, NODE_SERVER);
            let (rx, first) = {
                let mut live = shared.live.lock().unwrap();
                if let Some(sub) = live.subscriptions.get(&path) {
                    return Ok(sub.tx.subscribe());
                }
                let (initial, source) = match live.snapshot.servers.get(&path) {
                    Some(list) if !live.connected => {
                        tracing::warn!(registry = %shared.name, path, servers = list.len(), "zookeeper unreachable: serving the snapshot");
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
                        shared.clone(),
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
            Ok(rx)
        })
    }

    fn register<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            check_service(&self.shared.name, service)?;
            let id = service.identity();
            self.change_services(|regs| {
                regs.removed.retain(|u| u.identity() != id);
                let available = regs.services.get(&id).is_some_and(|r| r.available);
                let r = Registered {
                    url: service.clone(),
                    available,
                };
                regs.services.insert(id.clone(), r.clone());
                vec![r]
            })
            .await
        })
    }

    fn unregister<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.wait_first_attempt().await;
            let _w = shared.writes.lock().await;
            {
                let mut regs = shared.regs.lock().unwrap();
                regs.services.remove(&service.identity());
                regs.removed.push(service.clone());
            }
            let result = match shared.session() {
                Some(s) => Some(delete_service_nodes(&s, service).await),
                None => None,
            };
            if let Some(Ok(())) = result {
                let id = service.identity();
                shared.regs.lock().unwrap().removed.retain(|u| u.identity() != id);
            }
            shared.settle(result)
        })
    }

    fn available<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            self.change_services(|regs| set_available(regs, service, true))
                .await
        })
    }

    fn unavailable<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            self.change_services(|regs| set_available(regs, service, false))
                .await
        })
    }

    fn register_agent<'a>(&'a self, agent: &'a Url) -> RegistryFuture<'a, ()> {
        Box::pin(self.register_agent_node(agent))
    }

    fn subscribe_commands<'a>(
        &'a self,
        scope: &'a CommandScope,
    ) -> RegistryFuture<'a, watch::Receiver<Option<String>>> {
        Box::pin(async move { Ok(self.watch_command(scope).await) })
    }

    fn status(&self) -> Value {
        self.status_json()
    }
}

/// Mark `service` (a URL not registered yet is registered by this, as upstream's `Available`
/// creates the node anyway) or every registered service; returns the services to apply.
fn set_available(regs: &mut Registrations, service: Option<&Url>, available: bool) -> Vec<Registered> {
    match service {
        Some(url) => {
            let r = Registered {
                url: url.clone(),
                available,
            };
            regs.services.insert(url.identity(), r.clone());
            vec![r]
        }
        None => regs
            .services
            .values_mut()
            .map(|r| {
                r.available = available;
                r.clone()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Url {
        Url::new("motan2", "10.0.0.1", 9982, "com.weibo.Hello", "g1").with_param("nodeType", "service")
    }

    #[test]
    fn paths_follow_the_motan_layout() {
        let s = service();
        assert_eq!(
            node_type_path(&s, NODE_SERVER),
            "/motan/g1/com.weibo.Hello/server"
        );
        assert_eq!(
            node_path(&s, NODE_UNAVAILABLE),
            "/motan/g1/com.weibo.Hello/unavailableServer/10.0.0.1:9982"
        );
        let agent = Url::new("motan2", "10.0.0.1", 8002, "", "").with_param("application", "app");
        assert_eq!(agent_node_path(&agent), "/motan/agent/app/node/10.0.0.1:8002");
        assert_eq!(
            command_path(&CommandScope::Group("g1".into())),
            "/motan/g1/command"
        );
        assert_eq!(
            command_path(&CommandScope::Agent("app".into())),
            "/motan/agent/app/command"
        );
    }

    #[test]
    fn session_timeout_is_seconds_clamped() {
        let zk = |v: &str| Url::new("zookeeper", "127.0.0.1", 2181, "", "").with_param(SESSION_TIMEOUT, v);
        assert_eq!(session_timeout(&zk("10")), Duration::from_secs(10));
        assert_eq!(session_timeout(&zk("1000")), MAX_SESSION_TIMEOUT);
        assert_eq!(session_timeout(&zk("10000")), MAX_SESSION_TIMEOUT);
        assert_eq!(session_timeout(&zk("1")), MIN_SESSION_TIMEOUT);
        assert_eq!(session_timeout(&zk("x")), DEFAULT_SESSION_TIMEOUT);
        assert_eq!(
            session_timeout(&Url::new("zookeeper", "h", 1, "", "")),
            DEFAULT_SESSION_TIMEOUT
        );
    }

    #[test]
    fn server_nodes_from_data_or_name() {
        let refer = Url::new("motan2", "", 0, "com.weibo.Hello", "g1").with_param("requestTimeout", "300");
        let s = service();
        assert_eq!(
            server_from_node(&refer, "10.0.0.1:9982", s.to_node_string().as_bytes()),
            Some(s.clone())
        );
        // Java-serialized data.
        let text = s.to_node_string();
        let mut java = vec![0xAC, 0xED, 0x00, 0x05, 0x74, 0x00, text.len() as u8];
        java.extend_from_slice(text.as_bytes());
        assert_eq!(server_from_node(&refer, "x", &java), Some(s));
        // No data (or unparsable data): the refer at the node's address.
        let u = server_from_node(&refer, "10.0.0.9:8100", b"").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.9", 8100, "com.weibo.Hello")
        );
        assert_eq!(u.params["requestTimeout"], "300");
        let u = server_from_node(&refer, "10.0.0.9:8100", b"garbage").unwrap();
        assert_eq!(u.address(), "10.0.0.9:8100");
        let u = server_from_node(&refer, "hostonly", b"").unwrap();
        assert_eq!(u.address(), "hostonly:80");
        assert_eq!(server_from_node(&refer, ":x", b""), None);
    }

    #[test]
    fn snapshot_file_names_are_safe() {
        assert_eq!(
            snapshot_file_name("10.0.0.1:2181,zk-2.example:2181"),
            "zookeeper_10.0.0.1_2181_zk-2.example_2181.json"
        );
        assert_eq!(snapshot_file_name("../x:1"), "zookeeper_.._x_1.json");
    }

    #[test]
    fn bad_urls_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let err = |u: Url| ZkRegistry::new(u, ZkOptions::default()).unwrap_err().to_string();
        assert!(err(Url::new("zookeeper", "", 0, "", "")).contains("needs host and port"));
        assert!(
            err(Url::new("zookeeper", "", 0, "", "").with_param("address", "127.0.0.1:x"))
                .contains("port must be")
        );
        assert!(
            err(Url::new("zookeeper", "", 0, "", "").with_param("address", "unix:///a"))
                .contains("is not host:port")
        );
        drop(_g);
        // Outside a runtime.
        let e = ZkRegistry::new(
            Url::new("zookeeper", "127.0.0.1", 1, "", ""),
            ZkOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inside a tokio runtime"), "{e}");
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sockmesh-zk-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A port nothing listens on (bound, then released).
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn unreachable_zookeeper_serves_the_snapshot() {
        let dir = temp_dir("snap");
        let port = dead_port();
        let servers = format!("127.0.0.1:{port}");
        let refer = Url::new("motan2", "", 0, "com.weibo.Hello", "g1");
        let data = SnapshotData {
            registry: servers.clone(),
            servers: BTreeMap::from([(node_type_path(&refer, NODE_SERVER), vec![service()])]),
            commands: BTreeMap::from([(
                "/motan/g1/command".to_string(),
                "{\"clientCommandList\":[]}".to_string(),
            )]),
        };
        write_atomically(
            &dir.join(snapshot_file_name(&servers)),
            &serde_json::to_vec(&data).unwrap(),
        )
        .unwrap();
        let url =
            Url::new("zookeeper", "127.0.0.1", port, "", "").with_param(SNAPSHOT_DIR, dir.to_str().unwrap());
        let reg = ZkRegistry::new(url, ZkOptions::default()).unwrap();
        let rx = reg.subscribe(&refer).await.unwrap();
        assert_eq!(*rx.borrow().clone(), vec![service()]);
        let other = reg
            .subscribe(&Url::new("motan2", "", 0, "com.weibo.Other", "g1"))
            .await
            .unwrap();
        assert!(other.borrow().is_empty());
        let cmd = reg
            .subscribe_commands(&CommandScope::Group("g1".into()))
            .await
            .unwrap();
        assert_eq!(cmd.borrow().as_deref(), Some("{\"clientCommandList\":[]}"));
        let st = reg.status();
        assert_eq!(st["connected"], false);
        assert!(st["serving_from_snapshot_since"].as_u64().unwrap() > 0);
        assert!(st["disconnected_since"].as_u64().is_some());
        let subs = st["subscriptions"].as_array().unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0]["endpoints"], 1);
        assert_eq!(subs[0]["source"], "snapshot");
        assert_eq!(subs[1]["source"], "none");
        // Registrations are kept while unreachable, and say so.
        let e = reg.register(&service()).await.unwrap_err();
        assert!(
            e.to_string().contains("retried when ZooKeeper is reachable"),
            "{e}"
        );
        assert_eq!(reg.status()["registered"][0]["available"], false);
        reg.available(None).await.unwrap_err();
        assert_eq!(reg.status()["registered"][0]["available"], true);
        assert!(reg.register(&Url::new("motan2", "", 1, "p", "g")).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshot_round_trip_and_bad_files() {
        let dir = temp_dir("rt");
        let store = SnapshotStore {
            file: dir.join("z.json"),
            write: tokio::sync::Mutex::new(()),
        };
        assert_eq!(store.load(), SnapshotData::default());
        let data = SnapshotData {
            registry: "a".into(),
            servers: BTreeMap::from([("/motan/g/p/server".to_string(), vec![service()])]),
            commands: BTreeMap::new(),
        };
        write_atomically(&store.file, &serde_json::to_vec(&data).unwrap()).unwrap();
        assert_eq!(store.load(), data);
        std::fs::write(&store.file, b"{not json").unwrap();
        assert_eq!(store.load(), SnapshotData::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
