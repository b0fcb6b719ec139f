//! cgroup v2: find the mount, resolve operator paths, cgroup ids, scratch child cgroups.
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where cgroup2 is mounted, from /proc/self/mountinfo (hybrid hosts mount it at
/// /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&info).context("no cgroup2 filesystem is mounted (cgroup v2 is required)")
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    // "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw"
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Resolve an operator-given cgroup path, relative to the cgroup2 mount (a leading `/` is
/// allowed and means the same). `..` is refused so nothing outside the hierarchy is named.
pub fn resolve(mount: &Path, rel: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel.trim_start_matches('/'));
    if rel_path.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("cgroup path {rel:?} must not contain '..'");
    }
    let full = mount.join(rel_path);
    if !full.join("cgroup.procs").exists() {
        bail!(
            "cgroup {rel:?} does not exist ({} has no cgroup.procs)",
            full.display()
        );
    }
    Ok(full)
}

/// A cgroup v2 id is the inode number of its directory.
pub fn id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Every cgroup at or below `mount`, by id (for status output, and to notice deleted cgroups).
/// A directory that cannot be read fails the whole walk (one removed meanwhile is skipped), so
/// an unread subtree is never taken for deleted cgroups.
pub fn ids_below(mount: &Path) -> io::Result<HashMap<u64, PathBuf>> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let mut out = HashMap::new();
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        out.insert(meta.ino(), dir);
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(out)
}

/// The path of `full` relative to the mount, as the CLI shows it ("/" for the root).
pub fn display_rel(mount: &Path, full: &Path) -> String {
    match full.strip_prefix(mount) {
        Ok(p) if p.as_os_str().is_empty() => "/".into(),
        Ok(p) => format!("/{}", p.display()),
        Err(_) => full.display().to_string(),
    }
}

/// A child cgroup that is removed on drop (processes still inside are moved to the parent
/// first), so probes and tests never leave one behind. The test kit compiles this file too
/// (tests/kit/src/cgroup.rs), so its guards are this one.
pub struct ChildCgroup {
    path: PathBuf,
    removed: bool,
}

impl ChildCgroup {
    pub fn create(parent: &Path, name: &str) -> Result<ChildCgroup> {
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", path.display())),
        }
        Ok(ChildCgroup { path, removed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> io::Result<u64> {
        id(&self.path)
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
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("could not remove cgroup {}", self.path.display())
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove()
        {
            eprintln!("sockmesh: {e:#}");
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
            parse_cgroup2_mount(hybrid).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(pure).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert!(parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }

    #[test]
    fn resolve_refuses_parent_components() {
        let err = resolve(Path::new("/sys/fs/cgroup/unified"), "a/../../etc").unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        assert_eq!(display_rel(Path::new("/m"), Path::new("/m/a/b")), "/a/b");
        assert_eq!(display_rel(Path::new("/m"), Path::new("/m")), "/");
    }
}
