//! cgroup v2 for tests: the agent's own helpers and guard (agent/src/cgroup.rs, compiled into
//! the kit from that one source file, since the kit cannot depend on the agent crate: xtask
//! builds it before the BPF object the agent embeds exists), plus the CLI form of a test
//! cgroup's path.
use std::path::Path;

use anyhow::Result;

// The agent's resolve/id helpers are not needed here.
#[allow(dead_code)]
#[path = "../../../agent/src/cgroup.rs"]
mod agent_cgroup;

pub use agent_cgroup::cgroup2_mount;

/// A child cgroup of the cgroup2 root, removed on drop (or by `remove`): the processes still
/// inside are moved to the root cgroup and the directory is removed.
pub struct ChildCgroup {
    inner: agent_cgroup::ChildCgroup,
    rel: String,
}

impl ChildCgroup {
    /// Create `name` under the cgroup2 mount (an existing one is taken over and removed later).
    pub fn create(name: &str) -> Result<ChildCgroup> {
        Ok(ChildCgroup {
            inner: agent_cgroup::ChildCgroup::create(&cgroup2_mount()?, name)?,
            rel: format!("/{name}"),
        })
    }

    /// The directory, e.g. /sys/fs/cgroup/NAME (what a process writes its PID into).
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The path as the sockmesh CLI takes it: relative to the mount, "/NAME".
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Move the processes still inside out and remove the directory now.
    pub fn remove(&mut self) -> Result<()> {
        self.inner.remove()
    }
}
