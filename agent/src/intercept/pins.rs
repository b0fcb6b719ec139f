//! The pin directory of one daemon: the lock that makes that daemon the only one using it, the
//! version of the map layout pinned in it, and the ownership and permission checks done before
//! anything in it is used.
//!
//! - Lock: `/run/sockmesh/<pin dir with '/' as '-'>.lock` (e.g. `sys-fs-bpf-sockmesh.lock`),
//!   a root-owned 0600 file holding the daemon's PID and pin directory, `flock`ed exclusively for
//!   the daemon's lifetime and removed when it ends. The kernel drops the lock when the process
//!   dies, so the file a killed daemon leaves means nothing; `sockmesh uninstall` takes the same
//!   lock before it removes anything.
//! - Layout: the maps are pinned in `maps-v<N>/` (`sockmesh_common::MAP_LAYOUT_VERSION`;
//!   the unversioned `maps/` of earlier releases is layout 1). bpffs holds only BPF objects, so
//!   the version is in the directory's name: `ls` shows it, and no map has to be read to know it.
//! - Permissions: every directory we pin into is root's, not writable by group or others and
//!   not a symlink, and so is every bpffs directory above it unless it is sticky (the default
//!   bpffs root is 1777): otherwise someone else could rename or replace our pins.
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sockmesh_common::MAP_LAYOUT_VERSION;

use crate::sys;

/// The lock file of the daemon that uses `pin_dir`.
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => c,
            _ => '_',
        })
        .collect();
    Path::new(sys::RUN_DIR).join(format!("{name}.lock"))
}

/// Why the lock of a pin directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another sockmesh daemon ({}) is using the pin directory {}: it holds {}; stop that one first (or give this one its own sockmesh.intercept.pin_dir and ports)",
        .pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")),
        .pin_dir.display(),
        .lock.display()
    )]
    Held {
        pid: Option<u32>,
        pin_dir: PathBuf,
        lock: PathBuf,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The exclusive lock on a pin directory, held until dropped (or until the process dies).
#[derive(Debug)]
pub struct PinDirLock {
    file: File,
    path: PathBuf,
}

impl PinDirLock {
    /// Take the lock of `pin_dir` and write our PID into it, or say which process holds it.
    pub fn acquire(pin_dir: &Path) -> Result<PinDirLock, LockError> {
        let path = lock_path(pin_dir);
        sys::run_dir(None).with_context(|| format!("preparing {}", sys::RUN_DIR))?;
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| format!("opening the lock file {}", path.display()))?;
            let meta = file.metadata().context("lock file")?;
            if !meta.is_file() || meta.uid() != sys::euid() || meta.mode() & 0o077 != 0 {
                return Err(anyhow::anyhow!(
                    "refusing the lock file {}: it must be a regular file of uid {} with mode 0600 (it has uid {}, mode {:o})",
                    path.display(),
                    sys::euid(),
                    meta.uid(),
                    meta.mode() & 0o7777
                )
                .into());
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        pid: read_pid(&file),
                        pin_dir: pin_dir.to_path_buf(),
                        lock: path,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("locking {}", path.display()))
                        .into());
                }
            }
            // An uninstall may have removed the file between our open and our lock: a lock on
            // an unlinked file protects nothing, so start again with the file now at the path.
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
                _ => continue,
            }
            let mut me = PinDirLock { file, path };
            me.write_owner(pin_dir)?;
            return Ok(me);
        }
    }

    fn write_owner(&mut self, pin_dir: &Path) -> Result<()> {
        self.file.set_len(0)?;
        self.file
            .write_all(format!("{}\n{}\n", std::process::id(), pin_dir.display()).as_bytes())?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Let go and remove /run/sockmesh too when nothing else is in it (uninstall).
    pub fn remove(self) {
        drop(self);
        // Another lock file or a control socket keeps it.
        let _ = std::fs::remove_dir(sys::RUN_DIR);
    }
}

impl Drop for PinDirLock {
    /// The lock file goes with the lock (a killed daemon leaves it, which is harmless): unlinked
    /// while still held, and only if it is still ours, so a daemon starting meanwhile locks a
    /// file that stays (see the check in `acquire`).
    fn drop(&mut self) {
        if let (Ok(ours), Ok(there)) = (self.file.metadata(), std::fs::symlink_metadata(&self.path))
            && ours.dev() == there.dev()
            && ours.ino() == there.ino()
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The PID a lock holder wrote into its lock file. The holder writes it right after locking, so
/// an empty file is read again for a moment.
fn read_pid(mut file: &File) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let mut text = String::new();
        use std::io::Seek;
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = file.read_to_string(&mut text);
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` has `lock` open (so the PID in a lock file is really the holder's, not a
/// reused one).
pub fn holds(pid: u32, lock: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == lock))
}

/// A pin directory or one below it: ours and private ([`sys::private_dir`]).
fn private_dir(dir: &Path, create: bool) -> Result<()> {
    Ok(sys::private_dir(dir, create, None)?)
}

/// Check the bpffs directories above `dir`: root's, and not writable by group or others unless
/// sticky (then no one else can rename what is ours in them).
fn trusted_ancestors(dir: &Path) -> Result<()> {
    for a in dir.ancestors().skip(1) {
        if !sys::is_bpffs(a) {
            break;
        }
        let m = std::fs::symlink_metadata(a).with_context(|| format!("checking {}", a.display()))?;
        let sticky = m.mode() & libc::S_ISVTX != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            bail!(
                "refusing pins below {}: others may write to it (uid {}, mode {:o})",
                a.display(),
                m.uid(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// The nearest existing directory at or above `p`.
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

/// Whether `dir` is, or would be created, on a bpffs. A missing directory below
/// `/sys/fs/bpf` while no bpffs is mounted there counts too: nothing can be pinned in it then.
pub fn on_bpffs(dir: &Path) -> bool {
    match existing_ancestor(dir) {
        Some(a) if sys::is_bpffs(a) => true,
        _ => !dir.exists() && dir.starts_with("/sys/fs/bpf") && !sys::is_bpffs(Path::new("/sys/fs/bpf")),
    }
}

/// What is pinned where under a pin directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> PinLayout {
        PinLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Links: `host-*` and `cg-<cgroup id>/`.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The maps of this binary's layout.
    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{MAP_LAYOUT_VERSION}"))
    }

    /// Every map directory present, with its layout version (`maps` is layout 1).
    pub fn map_dirs(&self) -> Vec<(u32, PathBuf)> {
        let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v = match name.as_str() {
                    "maps" => 1,
                    n => n.strip_prefix("maps-v")?.parse().ok()?,
                };
                Some((v, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Refuse maps pinned by another layout: this binary's programs would read and write them
    /// with the wrong shapes.
    pub fn check_version(&self) -> Result<()> {
        let other: Vec<u32> = self
            .map_dirs()
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| *v != MAP_LAYOUT_VERSION)
            .collect();
        if let Some(v) = other.first() {
            bail!(
                "the maps pinned under {root} have layout v{v}, and this sockmesh {ver} uses map layout v{MAP_LAYOUT_VERSION}: \
                 its programs cannot run on those maps. Run `sockmesh uninstall --pin-dir {root}` (it removes the interception \
                 of every cgroup, which fails open meanwhile), then start sockmesh again and enable the cgroups again",
                root = self.root.display(),
                ver = env!("CARGO_PKG_VERSION"),
            );
        }
        Ok(())
    }

    /// Make the pin directory ready for use: on a bpffs, ours and private (created 0700 when
    /// missing), the bpffs above it safe, links and maps directories likewise, and no maps of
    /// another layout.
    pub fn prepare(&self) -> Result<()> {
        if !self.root.is_absolute() || !existing_ancestor(&self.root).is_some_and(sys::is_bpffs) {
            bail!(
                "pin directory {} is not on a bpffs (mount one, e.g. `mount -t bpf bpf /sys/fs/bpf`, or set sockmesh.intercept.pin_dir)",
                self.root.display()
            );
        }
        trusted_ancestors(&self.root)?;
        private_dir(&self.root, true)?;
        self.check_version()?;
        private_dir(&self.links(), true)?;
        private_dir(&self.maps(), true)?;
        for e in std::fs::read_dir(self.links())?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                private_dir(&e.path(), false)?;
            }
        }
        Ok(())
    }

    /// A per-cgroup links directory, created private.
    pub fn cgroup_links(&self, id: u64, create: bool) -> Result<PathBuf> {
        let dir = self.links().join(format!("cg-{id}"));
        if create {
            private_dir(&dir, true)?;
        }
        Ok(dir)
    }
}

/// Remove every pin below `dir` and the directories themselves. Unpinning a link whose last fd
/// is gone detaches it; unpinning a map frees it once no program uses it. Entries on another
/// filesystem than `dir` (a mount inside it) are refused, so this never leaves bpffs.
pub fn remove_pins(dir: &Path) -> Result<usize> {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return Ok(0);
    };
    remove_pins_on(dir, top.dev())
}

fn remove_pins_on(dir: &Path, dev: u64) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p)?;
        if m.dev() != dev {
            bail!("{} is on another filesystem; not removing it", p.display());
        }
        if m.is_dir() {
            n += remove_pins_on(&p, dev)?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
            n += 1;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(n)
}

/// Processes other than this one that hold the programs behind the links pinned under
/// `pin_dir` (a daemon using them, whether or not it holds the lock): PID and program id.
pub fn live_users(pin_dir: &Path) -> Vec<(u32, u32)> {
    let mut progs = HashSet::new();
    let mut stack = vec![PinLayout::new(pin_dir).links()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if let Ok(fd) = sys::obj_get(&e.path())
                && let Ok(ids) = sys::link_ids(fd.as_fd())
            {
                progs.insert(ids.prog_id);
            }
        }
    }
    if progs.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut users = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        for fd in std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog") {
                continue;
            }
            let info =
                std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
                && progs.contains(&id)
            {
                users.push((pid, id));
                break;
            }
        }
    }
    users
}

/// Remove all of sockmesh's pinned links and maps under `pin_dir` (links first, so programs
/// detach before their maps go), then wait until the kernel has freed those maps (it does so
/// asynchronously), so that "afterwards nothing of ours is listed" holds when this returns.
/// Maps of every layout version are removed. Returns how many pins were removed. The caller
/// checks that `pin_dir` is on bpffs and that no daemon uses it.
pub fn uninstall(pin_dir: &Path) -> Result<usize> {
    let layout = PinLayout::new(pin_dir);
    let mut map_ids = Vec::new();
    for (_, dir) in layout.map_dirs() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(fd) = sys::obj_get(&e.path())
                && let Ok(shape) = sys::map_shape(fd.as_fd())
            {
                map_ids.push(shape.id);
            }
        }
    }
    let mut n = remove_pins(&layout.links())?;
    for (_, dir) in layout.map_dirs() {
        n += remove_pins(&dir)?;
    }
    n += remove_pins(pin_dir)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = aya::maps::loaded_maps()
            .filter_map(|m| m.ok())
            .map(|m| m.id())
            .filter(|id| map_ids.contains(id))
            .collect();
        if alive.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "unpinned, but the kernel still holds map(s) {alive:?} after 10 s (a process still has them open?)"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_are_named_after_the_pin_directory() {
        assert_eq!(
            lock_path(Path::new("/sys/fs/bpf/sockmesh")),
            Path::new("/run/sockmesh/sys-fs-bpf-sockmesh.lock")
        );
        assert_eq!(
            lock_path(Path::new("/sys/fs/bpf/sockmesh-test-x-1/")),
            Path::new("/run/sockmesh/sys-fs-bpf-sockmesh-test-x-1.lock")
        );
        assert_eq!(
            lock_path(Path::new("/a b/c")),
            Path::new("/run/sockmesh/a_b-c.lock")
        );
    }

    #[test]
    fn map_directories_carry_their_layout_version() {
        let dir = std::env::temp_dir().join(format!("sockmesh-layout-{}", std::process::id()));
        let l = PinLayout::new(&dir);
        std::fs::create_dir_all(l.maps()).unwrap();
        std::fs::create_dir_all(dir.join("links")).unwrap();
        assert!(l.check_version().is_ok());
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        let err = l.check_version().unwrap_err().to_string();
        assert!(
            err.contains("layout v1")
                && err.contains(&format!("map layout v{MAP_LAYOUT_VERSION}"))
                && err.contains("sockmesh uninstall --pin-dir"),
            "{err}"
        );
        assert_eq!(
            l.map_dirs().iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, MAP_LAYOUT_VERSION]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pin_directories_off_bpffs_are_refused() {
        let dir = std::env::temp_dir().join(format!("sockmesh-notbpf-{}", std::process::id()));
        let err = PinLayout::new(&dir).prepare().unwrap_err().to_string();
        assert!(err.contains("not on a bpffs"), "{err}");
        assert!(!dir.exists(), "nothing is created off bpffs");
        assert!(!on_bpffs(&dir));
    }
}
