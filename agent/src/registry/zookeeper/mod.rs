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
//!   to `<snapshot_dir>/zookeeper_<address>.d/`, a file per node (atomically: temp file,
//!   rename, directory fsync), in the background, at most once per interval and only the
//!   nodes that changed, so no list update waits for it (`snapshot.rs`).
//! - Exact lists: a server node is read once (bounded reads in flight, per-read timeouts,
//!   failed reads retried with back-off, never dropped); the children are listed again
//!   periodically and when the connection comes back, so a list always converges to
//!   ZooKeeper's children. Upstream drops a child whose read failed until the next event.
//!   Subscriptions made while ZooKeeper cannot be reached start from it.
//! - `registrySessionTimeout` is in seconds as in motan-go, but clamped to 2..=60 s (absent:
//!   30 s). Upstream's default of 1000 s only works because servers cap it (40 s by default);
//!   demo configs that write `10000` meaning milliseconds get 60 s. `config::registry` reads
//!   it, the servers and `snapshot_dir` from the URL (`ZookeeperSpec`).
//!
//! Files, each using only those before it: `layout` (node paths, server nodes as URLs),
//! `snapshot` (the snapshot file), `session` (the connection and the requests made in it),
//! `reads` (server nodes read with bounded concurrency and retries), `state` (what the handle, the session loop and the watches share), `register` (the server
//! role's nodes), `subscriptions` (server-list and command watches), `run` (the session loop);
//! this file is the handle.
mod layout;
mod reads;
mod register;
mod run;
mod session;
mod snapshot;
mod state;
mod subscriptions;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CommandScope, Registry, RegistryError, RegistryFuture, ServerList};
use crate::config::registry::ZookeeperSpec;
use crate::url::{Url, keys};
pub use layout::{agent_node_path, command_path, node_path, node_type_path, server_from_node};
use reads::NodeReader;
use register::{apply_services, check_service, delete_service_nodes, set_available};
use run::run_sessions;
use session::ensure_node;
use snapshot::SnapshotStore;
use state::{Live, Registered, Registrations, Shared, Source};

/// Options that do not come from the registry URL (or override it).
#[derive(Clone, Debug, Default)]
pub struct ZkOptions {
    /// Where snapshots are kept; `None` = the spec's (the URL's `snapshot_dir`), and no
    /// snapshot without it.
    pub snapshot_dir: Option<PathBuf>,
    /// The IP written into client nodes of refers without a host (motan-go's `-localIP`).
    /// `None`: the local address of a connection to the registry.
    pub local_ip: Option<String>,
    /// Tests only: this many reads of server nodes per thousand fail (without being sent),
    /// to show that lists still converge. 0 (the default) in production.
    pub inject_read_failures: u32,
}

#[derive(Debug)]
pub struct ZkRegistry {
    url: Url,
    shared: Arc<Shared>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ZkRegistry {
    /// Starts connecting in the background (needs a tokio runtime); never fails because
    /// ZooKeeper is unreachable, only for a bad URL (as [`ZookeeperSpec::from_url`] says). The
    /// first calls wait for a first session (up to a few seconds; about one second when
    /// ZooKeeper refuses connections).
    pub fn new(url: Url, options: ZkOptions) -> Result<ZkRegistry, RegistryError> {
        let spec = ZookeeperSpec::from_url(&url).map_err(|e| RegistryError::setting(&url, e))?;
        ZkRegistry::with_spec(url, spec, options)
    }

    /// As `new`, with the URL's settings already read.
    pub fn with_spec(url: Url, spec: ZookeeperSpec, options: ZkOptions) -> Result<ZkRegistry, RegistryError> {
        let name = url.get_str(keys::CONF_ID, &url.identity()).to_string();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RegistryError::Config {
            registry: name.clone(),
            message: "the zookeeper registry must be created inside a tokio runtime".into(),
        })?;
        let ZookeeperSpec {
            servers,
            session_timeout,
            snapshot_dir,
        } = spec;
        let snapshot = options
            .snapshot_dir
            .or(snapshot_dir)
            .map(|dir| SnapshotStore::new(&dir, &servers));
        let mut snapshot_data = snapshot.as_ref().map(SnapshotStore::load).unwrap_or_default();
        snapshot_data.registry = servers.clone();
        let shared = Arc::new(Shared {
            name,
            session_timeout,
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
            reader: NodeReader::new(options.inject_read_failures),
            resync: watch::channel(0).0,
        });
        if shared.snapshot.is_some() {
            let s = shared.clone();
            runtime.spawn(async move {
                if let Some(store) = &s.snapshot {
                    let newest = |path: &str| s.live.lock().unwrap().snapshot.value(path);
                    store.run_writer(s.shutdown.clone(), newest).await;
                }
            });
        }
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
        self.shared.subscribe_command(scope).await
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
            "snapshot_dir": s.snapshot.as_ref().map(|f| f.dir.display().to_string()),
            "subscriptions": subscriptions,
            "commands": commands,
            "registered": registered,
            "agent": regs.agent.as_ref().map(agent_node_path),
            "pending_writes": regs.dirty || !regs.removed.is_empty(),
        });
        out[since_key] = json!(unix_secs(live.since));
        out
    }

    /// A connected session, waiting for the first connection attempt; `Unavailable` without.
    async fn connected_session(&self) -> Result<session::Session, RegistryError> {
        self.shared.wait_first_attempt().await;
        self.shared.session().ok_or_else(|| RegistryError::Unavailable {
            registry: self.shared.name.clone(),
            message: "not connected to ZooKeeper".into(),
        })
    }

    fn unavailable(&self, what: &str, e: zookeeper_client::Error) -> RegistryError {
        RegistryError::Unavailable {
            registry: self.shared.name.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// The servers of `refer` now: the children of its `server` node, each read once (no
    /// watch, no subscription, no snapshot). A service without the node has none.
    pub async fn discover_once(&self, refer: &Url) -> Result<Vec<Url>, RegistryError> {
        let s = self.connected_session().await?;
        let path = node_type_path(refer, layout::NODE_SERVER);
        let children = match session::op(s.client.list_children(&path)).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(self.unavailable(&format!("listing {path}"), e)),
        };
        let reads = self.shared.reader.read(&s, &path, refer, children).await;
        Ok(reads.servers.into_values().flatten().collect())
    }

    /// The groups: the children of `/motan` except `agent` (the agents' own nodes).
    pub async fn groups(&self) -> Result<Vec<String>, RegistryError> {
        let s = self.connected_session().await?;
        let root = layout::NAMESPACE;
        match session::op(s.client.list_children(root)).await {
            Ok(mut c) => {
                c.retain(|g| g != layout::AGENT_NODE);
                c.sort();
                Ok(c)
            }
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.unavailable(&format!("listing {root}"), e)),
        }
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
            Ok(shared.subscribe_servers(refer).await)
        })
    }

    fn discover<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, Vec<Url>> {
        Box::pin(self.discover_once(refer))
    }

    fn list_groups(&self) -> RegistryFuture<'_, Option<Vec<String>>> {
        Box::pin(async move { self.groups().await.map(Some) })
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

#[cfg(test)]
mod tests {
    use super::layout::NODE_SERVER;
    use super::snapshot::{SnapshotData, snapshot_file_name, write_atomically};
    use super::*;
    use crate::config::registry::SNAPSHOT_DIR;

    pub(super) fn service() -> Url {
        Url::new("motan2", "10.0.0.1", 9982, "com.weibo.Hello", "g1").with_param("nodeType", "service")
    }

    pub(super) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sockmesh-zk-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A port nothing listens on (bound, then released).
    pub(super) fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
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

    #[tokio::test]
    async fn unreachable_zookeeper_serves_the_snapshot() {
        let dir = temp_dir("snap");
        let port = dead_port();
        let servers = format!("127.0.0.1:{port}");
        let refer = Url::new("motan2", "", 0, "com.weibo.Hello", "g1");
        let data = SnapshotData {
            registry: servers.clone(),
            servers: BTreeMap::from([(node_type_path(&refer, NODE_SERVER), Arc::new(vec![service()]))]),
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
}
