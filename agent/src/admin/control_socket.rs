//! The control socket's file: made so that only root (and `sockmesh.admin.control_group`) can
//! ever connect, and removed when the daemon stops.
//!
//! The directory is created 0700 (0750 root:group) when missing; an existing one must belong
//! to root and be writable by nobody else, or another user could swap the socket. The default,
//! /run/sockmesh, is sockmesh's run directory, shared with the pin directories' lock files and
//! made in one place (`sys::run_dir`). The socket is bound under a temporary name, given its
//! owner and mode (0600, 0660 with a group), and only then renamed into place, so it is never
//! reachable with the umask's permissions. A socket file left by a daemon that died is removed
//! only when nothing answers on it.
use std::fs::Permissions;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::admin::BIND_SUFFIX;
use crate::sys;
pub use crate::unix_socket::SocketFile;
use crate::unix_socket::clear_stale;

/// The bound socket and its file.
pub struct ControlSocket {
    pub listener: tokio::net::UnixListener,
    pub file: SocketFile,
}

/// Bind the control socket at `path` (`sockmesh.admin.control_socket`), open to root and, when
/// given, to group `group` (must run inside a tokio runtime).
pub fn bind(path: &Path, group: Option<u32>) -> Result<ControlSocket> {
    let key = "sockmesh.admin.control_socket";
    let dir = path
        .parent()
        .with_context(|| format!("{key}: {} has no directory", path.display()))?;
    prepare_dir(dir, group).with_context(|| format!("{key}: {}", path.display()))?;
    clear_stale(path, "control socket", key).with_context(|| format!("{key}: {}", path.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(BIND_SUFFIX);
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{key}: removing {}", tmp.display())),
    }
    let bound = bind_as(&tmp, path, group);
    if bound.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let listener = bound.with_context(|| format!("{key}: binding {}", path.display()))?;
    Ok(ControlSocket {
        listener,
        file: SocketFile::at(path)?,
    })
}

fn bind_as(tmp: &Path, path: &Path, group: Option<u32>) -> Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(tmp)?;
    if let Some(g) = group {
        chown(tmp, None, Some(g)).with_context(|| chown_hint(g))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(tmp, Permissions::from_mode(mode))?;
    std::fs::rename(tmp, path)?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

fn chown_hint(gid: u32) -> String {
    format!(
        "giving it to group {gid} (sockmesh.admin.control_group) needs CAP_CHOWN, or the daemon to be a member of that group"
    )
}

/// The socket's directory: sockmesh's own run directory (`sys::run_dir`, which lets the control
/// group in), or any other directory that is private to the daemon (`sys::private_dir`).
fn prepare_dir(dir: &Path, group: Option<u32>) -> Result<()> {
    let hint = |e: std::io::Error| {
        let ctx = match group {
            Some(g) if e.kind() == ErrorKind::PermissionDenied => chown_hint(g),
            _ => format!("preparing {}", dir.display()),
        };
        anyhow::Error::new(e).context(ctx)
    };
    if dir == Path::new(sys::RUN_DIR) {
        sys::run_dir(group).map_err(hint)?;
        return Ok(());
    }
    sys::private_dir(dir, true, group).map_err(hint)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if let Some(g) = group {
        let group_can_enter = (meta.gid() == g && meta.mode() & 0o010 != 0) || meta.mode() & 0o001 != 0;
        if !group_can_enter {
            tracing::warn!(
                "members of group {g} (sockmesh.admin.control_group) cannot reach the control socket: {} is mode {:o}, group {}",
                dir.display(),
                meta.mode() & 0o7777,
                meta.gid()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sockmesh-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn made_private_then_removed_and_a_stale_one_is_replaced() {
        let dir = scratch("bind");
        let path = dir.join("sub/control.sock");
        let s = bind(&path, None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir.join("sub")), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A second daemon on the same path is refused while the first one listens.
        let err = format!("{:#}", bind(&path, None).err().unwrap());
        assert!(err.contains("already answers"), "{err}");
        // A dead daemon's socket (nobody accepting) is replaced.
        drop(s.listener);
        std::mem::forget(s.file);
        assert!(path.exists());
        // SAFETY: getegid has no preconditions and cannot fail.
        let own_group = unsafe { libc::getegid() };
        let s = bind(&path, Some(own_group)).unwrap();
        assert_eq!(mode(&path), 0o660);
        drop(s);
        assert!(!path.exists(), "removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn shared_directories_and_other_files_are_refused() {
        let dir = scratch("shared");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        let err = format!("{:#}", bind(&dir.join("c.sock"), None).err().unwrap());
        assert!(err.contains("not be writable by group or others"), "{err}");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("c.sock"), "not a socket").unwrap();
        let err = format!("{:#}", bind(&dir.join("c.sock"), None).err().unwrap());
        assert!(err.contains("not a socket; not removing it"), "{err}");
        assert!(dir.join("c.sock").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
