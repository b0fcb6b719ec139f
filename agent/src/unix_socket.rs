//! Unix socket files the daemon listens on (the control socket, motan-go's `unixSock` and
//! `managementUnixSock`): a stale socket is removed only when it is a socket nothing answers
//! on, the file gets its mode before anyone can reach it, and it is removed when the daemon
//! stops.
use std::fs::Permissions;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A bound socket's path; dropping it removes the file if it is still the one we bound.
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The file now at `path` (just bound by us).
    pub fn at(path: &Path) -> std::io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("removing the socket {}: {e}", self.path.display());
        }
    }
}

/// A socket file at `path` that nothing answers on is a dead daemon's: remove it. Anything
/// else there (a live socket, a regular file, a link) is left alone and refused.
/// `what` names the socket in messages ("control socket"), `key` its configuration key.
pub fn clear_stale(path: &Path, what: &str, key: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        bail!("the path exists and is not a socket; not removing it");
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "something already answers on this {what}: is another sockmesh daemon running? Stop it, or give this one another {key}"
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)?;
            tracing::info!("removed the stale {what} {}", path.display());
            Ok(())
        }
        Err(e) => Err(e).context("probing the existing socket"),
    }
}

/// Bind a socket at `path` (configuration key `key`) with file mode `mode`. Its directory must
/// exist, belong to the daemon's user and be writable by nobody else (so no other user can
/// swap the file); the socket is bound under a temporary name, given `mode`, then renamed into
/// place. Must run inside a tokio runtime.
pub fn bind(path: &Path, mode: u32, what: &str, key: &str) -> Result<(tokio::net::UnixListener, SocketFile)> {
    let ctx = || format!("{key}: {}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .with_context(|| format!("{key}: {} has no directory", path.display()))?;
    crate::sys::private_dir(dir, false, None).with_context(ctx)?;
    clear_stale(path, what, key).with_context(ctx)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".binding");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{key}: removing {}", tmp.display())),
    }
    let bound = (|| -> std::io::Result<tokio::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    })();
    if bound.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let listener = bound.with_context(|| format!("{key}: binding {}", path.display()))?;
    let file = SocketFile::at(path).with_context(ctx)?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_with_its_mode_removed_on_drop_and_shared_dirs_refused() {
        let dir = std::env::temp_dir().join(format!("sockmesh-unixsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("a.sock");
        let (l, f) = bind(&path, 0o666, "agent socket", "unixSock").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o666);
        let err = format!(
            "{:#}",
            bind(&path, 0o666, "agent socket", "unixSock").err().unwrap()
        );
        assert!(
            err.contains("already answers") && err.contains("unixSock"),
            "{err}"
        );
        // A dead daemon's socket is replaced.
        drop(l);
        std::mem::forget(f);
        let (_l, f) = bind(&path, 0o600, "agent socket", "unixSock").unwrap();
        drop(f);
        assert!(!path.exists(), "removed on drop");
        let err = format!(
            "{:#}",
            bind(&dir.join("missing/a.sock"), 0o666, "agent socket", "unixSock")
                .err()
                .unwrap()
        );
        assert!(err.contains("unixSock"), "{err}");
        std::fs::write(&path, "x").unwrap();
        let err = format!(
            "{:#}",
            bind(&path, 0o666, "agent socket", "unixSock").err().unwrap()
        );
        assert!(err.contains("not a socket"), "{err}");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        let err = format!(
            "{:#}",
            bind(&dir.join("b.sock"), 0o666, "agent socket", "unixSock")
                .err()
                .unwrap()
        );
        assert!(err.contains("not be writable by group or others"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
