//! cgroup v2 for harnesses: where it is mounted, and a child cgroup that is removed on drop.
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where cgroup2 is mounted, from /proc/self/mountinfo: /sys/fs/cgroup on pure v2 hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&info).context("no cgroup2 filesystem is mounted (cgroup v2 is required)")
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    // "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw"
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount_point = mount.split_whitespace().nth(4)?;
        (fs.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A cgroup directly under the cgroup2 mount, for the processes a harness puts there. On drop
/// (or `remove`) the processes still inside are moved to the root cgroup and the directory is
/// removed.
pub struct ChildCgroup {
    path: PathBuf,
    rel: String,
    removed: bool,
}

impl ChildCgroup {
    /// Create `name` under the cgroup2 mount (an existing one is taken over and removed later).
    pub fn create(name: &str) -> Result<ChildCgroup> {
        let path = cgroup2_mount()?.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", path.display())),
        }
        Ok(ChildCgroup {
            path,
            rel: format!("/{name}"),
            removed: false,
        })
    }

    /// The directory, e.g. /sys/fs/cgroup/NAME (what a process writes its PID into).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as the sockmesh CLI takes it: relative to the mount, "/NAME".
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Move the processes still inside to the parent and remove the directory (retrying for a
    /// second while the kernel lets go of exiting processes).
    pub fn remove(&mut self) -> Result<()> {
        self.removed = true;
        if let (Ok(procs), Some(parent)) = (
            std::fs::read_to_string(self.path.join("cgroup.procs")),
            self.path.parent(),
        ) {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("cgroup {} is still there", self.path.display())
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove()
        {
            eprintln!("sockmesh-testkit: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_pure_mounts() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                      36 30 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
