//! The registry snapshot: every discovered server list and command text, kept in
//! `<snapshot_dir>/zookeeper_<address>.d/`, one file per list or command node (written
//! atomically), so that subscriptions made while ZooKeeper cannot be reached start from the
//! last known state. Written by a background task, coalesced and incremental: a change marks
//! its node, and at most once per interval the marked nodes' latest values are written; a
//! list update never waits for the disk, and a change of one service rewrites one file.
//! The single file of earlier versions (`<snapshot_dir>/zookeeper_<address>.json`) is read
//! at start and replaced by the per-node files.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::registry::ServerList;
use crate::url::{ParamsPool, Url};

/// The snapshot's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct SnapshotData {
    pub(super) registry: String,
    /// `.../server` path → discovered servers (the published lists themselves, shared).
    #[serde(with = "shared_lists")]
    pub(super) servers: BTreeMap<String, ServerList>,
    /// Command node path → text.
    pub(super) commands: BTreeMap<String, String>,
}

/// At most one snapshot write per this interval (the latest state wins).
const WRITE_INTERVAL: Duration = Duration::from_secs(2);

/// The servers of one list, its parameter maps shared as the registry shares them.
fn shared_list(mut list: Vec<Url>) -> ServerList {
    let mut pool = ParamsPool::default();
    list.iter_mut().for_each(|u| pool.share(u));
    std::sync::Arc::new(list)
}

/// `ServerList`s (de)serialised as plain lists (serde's `rc` feature is not enabled).
mod shared_lists {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::registry::ServerList;
    use crate::url::Url;

    pub(super) fn serialize<S: Serializer>(
        m: &BTreeMap<String, ServerList>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &**v)?;
        }
        map.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, ServerList>, D::Error> {
        let m = BTreeMap::<String, Vec<Url>>::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, super::shared_list(v))).collect())
    }
}

/// One node's file.
#[derive(Serialize)]
struct NodeFileOut<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers: Option<&'a [Url]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
}

#[derive(Deserialize)]
struct NodeFileIn {
    path: String,
    servers: Option<Vec<Url>>,
    command: Option<String>,
}

/// The latest value of a marked node, as the writer gets it.
#[derive(Debug, Clone)]
pub(super) enum NodeValue {
    Servers(ServerList),
    Command(String),
    /// Not in the snapshot any more: its file is removed.
    Gone,
}

impl SnapshotData {
    /// The value of `path` to write.
    pub(super) fn value(&self, path: &str) -> NodeValue {
        match (self.servers.get(path), self.commands.get(path)) {
            (Some(list), _) => NodeValue::Servers(list.clone()),
            (None, Some(text)) => NodeValue::Command(text.clone()),
            (None, None) => NodeValue::Gone,
        }
    }
}

#[derive(Debug)]
pub(super) struct SnapshotStore {
    /// The single file of earlier versions: read at start, removed once replaced.
    pub(super) file: PathBuf,
    /// One file per node.
    pub(super) dir: PathBuf,
    /// Nodes whose value changed since the last write (`mark_dirty`), taken by the writer.
    dirty: Mutex<BTreeSet<String>>,
    /// The single file is still there: removed after the next write.
    legacy: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl SnapshotStore {
    /// The store of the registry at `servers` (its connect string) in `dir`.
    pub(super) fn new(dir: &Path, servers: &str) -> SnapshotStore {
        let file = dir.join(snapshot_file_name(servers));
        SnapshotStore {
            dir: file.with_extension("d"),
            file,
            dirty: Mutex::new(BTreeSet::new()),
            legacy: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The snapshot as last written: the single file of earlier versions if there is one,
    /// then the per-node files (newer). Unreadable files are skipped with a warning. The
    /// single file's nodes are marked, so the next write moves them into per-node files.
    pub(super) fn load(&self) -> SnapshotData {
        let mut data = match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %self.file.display(), "registry snapshot unreadable, ignored: {e}");
                SnapshotData::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SnapshotData::default(),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), "registry snapshot unreadable, ignored: {e}");
                SnapshotData::default()
            }
        };
        if self.file.exists() {
            self.legacy.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut dirty = self.dirty.lock().unwrap();
            dirty.extend(data.servers.keys().cloned());
            dirty.extend(data.commands.keys().cloned());
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(_) => return data,
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let node = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<NodeFileIn>(&b).map_err(|e| e.to_string()));
            match node {
                Ok(NodeFileIn {
                    path: node,
                    servers: Some(list),
                    ..
                }) => {
                    data.servers.insert(node, shared_list(list));
                }
                Ok(NodeFileIn {
                    path: node,
                    command: Some(text),
                    ..
                }) => {
                    data.commands.insert(node, text);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), "registry snapshot file unreadable, ignored: {e}")
                }
            }
        }
        data
    }

    /// Ask for the newest value of node `path` to be written (soon, in the background):
    /// never waits.
    pub(super) fn mark_dirty(&self, path: &str) {
        self.dirty.lock().unwrap().insert(path.to_string());
        self.wake.notify_one();
    }

    /// The writer: after each `mark_dirty`, write the marked nodes' newest values (which
    /// `newest` gives when the write starts), at most once per `WRITE_INTERVAL`, so a burst
    /// of changes costs one write per node changed, of its latest value; a last write on
    /// `shutdown` if something is pending.
    pub(super) async fn run_writer(&self, shutdown: CancellationToken, newest: impl Fn(&str) -> NodeValue) {
        if !self.dirty.lock().unwrap().is_empty() {
            self.wake.notify_one();
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Nodes marked but not written yet are not lost at shutdown.
                    self.write_dirty(&newest).await;
                    return;
                }
                _ = self.wake.notified() => {}
            }
            self.write_dirty(&newest).await;
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Changes made during the interval are not lost at shutdown.
                    self.write_dirty(&newest).await;
                    return;
                }
                _ = tokio::time::sleep(WRITE_INTERVAL) => {}
            }
        }
    }

    async fn write_dirty(&self, newest: &impl Fn(&str) -> NodeValue) {
        let marked = std::mem::take(&mut *self.dirty.lock().unwrap());
        if marked.is_empty() {
            return;
        }
        let values: Vec<(String, NodeValue)> = marked
            .into_iter()
            .map(|p| {
                let v = newest(&p);
                (p, v)
            })
            .collect();
        let (dir, legacy) = (self.dir.clone(), self.file.clone());
        let remove_legacy = self.legacy.swap(false, std::sync::atomic::Ordering::Relaxed);
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            for (path, value) in &values {
                let file = dir.join(node_file_name(path));
                let out = match value {
                    NodeValue::Servers(list) => NodeFileOut {
                        path,
                        servers: Some(list),
                        command: None,
                    },
                    NodeValue::Command(text) => NodeFileOut {
                        path,
                        servers: None,
                        command: Some(text),
                    },
                    NodeValue::Gone => {
                        match std::fs::remove_file(&file) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                        continue;
                    }
                };
                // Not synced file by file (a burst touches every service): the directory is,
                // below; a file a crash cut short is skipped at load.
                write_atomically_with(&file, false, |w| {
                    serde_json::to_writer(w, &out).map_err(std::io::Error::other)
                })?;
            }
            // The renames themselves are durable once the directory is.
            std::fs::File::open(&dir)?.sync_all()?;
            if remove_legacy {
                std::fs::remove_file(&legacy)?;
            }
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(dir = %self.dir.display(), "registry snapshot not written: {e}"),
            Err(e) => tracing::warn!("registry snapshot writer failed: {e}"),
        }
    }
}

/// Write `bytes` to `file` so that a reader sees the old or the new content, never a mix.
#[cfg(test)]
pub(super) fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    write_atomically_with(file, true, |w| w.write_all(bytes))
}

/// Write to `file` so that a reader sees the old or the new content, never a mix: the content
/// is written by `write` (streamed), synced if `sync`, and renamed over the file.
fn write_atomically_with(
    file: &Path,
    sync: bool,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("json.tmp.{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write(&mut w)?;
    w.flush()?;
    if sync {
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, file)
}

/// `[A-Za-z0-9.-]` of `s`, anything else replaced by `_`.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `zookeeper_<address>.json` with anything but `[A-Za-z0-9._-]` replaced by `_`.
pub(super) fn snapshot_file_name(servers: &str) -> String {
    format!("zookeeper_{}.json", safe_name(servers))
}

/// A node's file in the snapshot directory: its path made safe, and a hash of the path so
/// that two paths made alike stay apart (the file also holds the path itself).
fn node_file_name(path: &str) -> String {
    let safe = safe_name(path.trim_start_matches('/'));
    let keep = safe.char_indices().nth(150).map_or(safe.len(), |(i, _)| i);
    format!(
        "{}-{:016x}.json",
        &safe[..keep],
        xxhash_rust::xxh64::xxh64(path.as_bytes(), 0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::zookeeper::tests::{service, temp_dir};

    #[test]
    fn snapshot_file_names_are_safe() {
        assert_eq!(
            snapshot_file_name("10.0.0.1:2181,zk-2.example:2181"),
            "zookeeper_10.0.0.1_2181_zk-2.example_2181.json"
        );
        assert_eq!(snapshot_file_name("../x:1"), "zookeeper_.._x_1.json");
    }

    #[test]
    fn snapshot_round_trip_and_bad_files() {
        let dir = temp_dir("rt");
        let store = SnapshotStore::new(&dir, "127.0.0.1:2181");
        assert_eq!(store.load(), SnapshotData::default());
        let data = SnapshotData {
            registry: "a".into(),
            servers: BTreeMap::from([(
                "/motan/g/p/server".to_string(),
                std::sync::Arc::new(vec![service()]),
            )]),
            commands: BTreeMap::new(),
        };
        // The single file of earlier versions is read.
        write_atomically(&store.file, &serde_json::to_vec(&data).unwrap()).unwrap();
        assert_eq!(store.load(), data);
        std::fs::write(&store.file, b"{not json").unwrap();
        assert_eq!(store.load(), SnapshotData::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_file_names_are_safe_and_distinct() {
        let a = node_file_name("/motan/a_b/x/server");
        let b = node_file_name("/motan/a/b_x/server");
        assert!(
            a.starts_with("motan_a_b_x_server-") && a.ends_with(".json"),
            "{a}"
        );
        assert_ne!(a, b);
        assert!(!node_file_name("/../../etc").contains('/'));
        assert!(node_file_name(&"x".repeat(1000)).len() < 200);
    }

    #[tokio::test]
    async fn single_file_snapshots_move_into_per_node_files() {
        let dir = temp_dir("migrate");
        let store = SnapshotStore::new(&dir, "127.0.0.1:2181");
        let data = SnapshotData {
            registry: String::new(),
            servers: BTreeMap::from([(
                "/motan/g/p/server".to_string(),
                std::sync::Arc::new(vec![service()]),
            )]),
            commands: BTreeMap::from([("/motan/g/command".to_string(), "{}".to_string())]),
        };
        write_atomically(&store.file, &serde_json::to_vec(&data).unwrap()).unwrap();
        let loaded = store.load();
        assert_eq!(loaded, data);
        let stop = CancellationToken::new();
        stop.cancel();
        // Cancelled at once: the pending nodes are written on the way out.
        store.run_writer(stop, |p| loaded.value(p)).await;
        assert!(!store.file.exists(), "the single file is replaced");
        assert_eq!(std::fs::read_dir(&store.dir).unwrap().count(), 2);
        assert_eq!(SnapshotStore::new(&dir, "127.0.0.1:2181").load(), data);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn snapshot_writes_are_coalesced_per_node_and_the_latest_state_wins() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = temp_dir("coalesce");
        let store = Arc::new(SnapshotStore::new(&dir, "127.0.0.1:2181"));
        let version = Arc::new(AtomicUsize::new(0));
        let writes = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let writer = {
            let (store, version, writes, stop) =
                (store.clone(), version.clone(), writes.clone(), stop.clone());
            tokio::spawn(async move {
                let newest = |path: &str| {
                    writes.fetch_add(1, Ordering::Relaxed);
                    match path {
                        "/motan/g/command" => NodeValue::Command(version.load(Ordering::Relaxed).to_string()),
                        _ => NodeValue::Gone,
                    }
                };
                store.run_writer(stop, newest).await;
            })
        };
        for v in 1..=100 {
            version.store(v, Ordering::Relaxed);
            store.mark_dirty("/motan/g/command");
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One write for the burst, within the interval (marking never waited for it).
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        // Another node: its own file only.
        store.mark_dirty("/motan/h/command");
        version.store(101, Ordering::Relaxed);
        store.mark_dirty("/motan/g/command");
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 3);
        let loaded = store.load();
        assert_eq!(
            loaded.commands,
            BTreeMap::from([("/motan/g/command".to_string(), "101".to_string())]),
            "the last state is written at shutdown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
