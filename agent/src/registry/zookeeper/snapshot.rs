//! The registry snapshot: every discovered server list and command text, kept in
//! `<snapshot_dir>/zookeeper_<address>.json` (written atomically) so that subscriptions made
//! while ZooKeeper cannot be reached start from the last known state. Written by a background
//! task, coalesced: a list update never waits for the disk.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::registry::ServerList;

/// The snapshot file's content.
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

/// `ServerList`s (de)serialised as plain lists (serde's `rc` feature is not enabled).
mod shared_lists {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::registry::ServerList;
    use crate::url::{ParamsPool, Url};

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
        let share = |mut list: Vec<Url>| {
            let mut pool = ParamsPool::default();
            list.iter_mut().for_each(|u| pool.share(u));
            Arc::new(list)
        };
        Ok(m.into_iter().map(|(k, v)| (k, share(v))).collect())
    }
}

#[derive(Debug)]
pub(super) struct SnapshotStore {
    pub(super) file: PathBuf,
    /// Set by `mark_dirty`, taken by the writer (`run_writer`).
    dirty: Notify,
}

impl SnapshotStore {
    /// The store of the registry at `servers` (its connect string) in `dir`.
    pub(super) fn new(dir: &Path, servers: &str) -> SnapshotStore {
        SnapshotStore {
            file: dir.join(snapshot_file_name(servers)),
            dirty: Notify::new(),
        }
    }

    pub(super) fn load(&self) -> SnapshotData {
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

    /// Ask for the newest data to be written (soon, in the background): never waits.
    pub(super) fn mark_dirty(&self) {
        self.dirty.notify_one();
    }

    /// The writer: after each `mark_dirty`, write the newest data (which `newest` reads when
    /// the write starts), at most once per `WRITE_INTERVAL`, so a burst of changes costs one
    /// write of the latest state; a last write on `shutdown` if something is pending.
    pub(super) async fn run_writer(&self, shutdown: CancellationToken, newest: impl Fn() -> SnapshotData) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.dirty.notified() => {}
            }
            self.write(newest()).await;
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Changes made during the interval are not lost at shutdown.
                    if tokio::time::timeout(Duration::ZERO, self.dirty.notified()).await.is_ok() {
                        self.write(newest()).await;
                    }
                    return;
                }
                _ = tokio::time::sleep(WRITE_INTERVAL) => {}
            }
        }
    }

    async fn write(&self, data: SnapshotData) {
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_atomically_with(&file, |w| {
                serde_json::to_writer(w, &data).map_err(std::io::Error::other)
            })
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(file = %self.file.display(), "registry snapshot not written: {e}"),
            Err(e) => tracing::warn!("registry snapshot writer failed: {e}"),
        }
    }
}

/// Write `bytes` to `file` so that a reader sees the old or the new content, never a mix.
#[cfg(test)]
pub(super) fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    write_atomically_with(file, |w| w.write_all(bytes))
}

/// Write to `file` so that a reader sees the old or the new content, never a mix: the content
/// is written by `write`, streamed (a fleet's snapshot is tens of MB, which a buffer of its
/// own would add to the agent's peak memory).
fn write_atomically_with(
    file: &Path,
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
    w.get_ref().sync_all()?;
    std::fs::rename(&tmp, file)
}

/// `zookeeper_<address>.json` with anything but `[A-Za-z0-9._-]` replaced by `_`.
pub(super) fn snapshot_file_name(servers: &str) -> String {
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
        let store = SnapshotStore {
            file: dir.join("z.json"),
            dirty: Notify::new(),
        };
        assert_eq!(store.load(), SnapshotData::default());
        let data = SnapshotData {
            registry: "a".into(),
            servers: BTreeMap::from([(
                "/motan/g/p/server".to_string(),
                std::sync::Arc::new(vec![service()]),
            )]),
            commands: BTreeMap::new(),
        };
        write_atomically(&store.file, &serde_json::to_vec(&data).unwrap()).unwrap();
        assert_eq!(store.load(), data);
        std::fs::write(&store.file, b"{not json").unwrap();
        assert_eq!(store.load(), SnapshotData::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn snapshot_writes_are_coalesced_and_the_latest_state_wins() {
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
                let newest = || {
                    writes.fetch_add(1, Ordering::Relaxed);
                    SnapshotData {
                        registry: version.load(Ordering::Relaxed).to_string(),
                        ..SnapshotData::default()
                    }
                };
                store.run_writer(stop, newest).await;
            })
        };
        for v in 1..=100 {
            version.store(v, Ordering::Relaxed);
            store.mark_dirty();
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One write for the burst, within the interval (marking never waited for it).
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        version.store(101, Ordering::Relaxed);
        store.mark_dirty();
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        assert_eq!(
            store.load().registry,
            "101",
            "the last state is written at shutdown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
