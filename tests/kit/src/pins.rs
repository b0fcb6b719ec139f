//! The BPF pin directory of an agent a harness started (`sockmesh.intercept.pin_dir`, under
//! /sys/fs/bpf). Removing the pins detaches the agent's programs from every cgroup and frees its
//! maps. The kit does not link the agent, so this runs the agent's own removal:
//! `sockmesh uninstall --pin-dir DIR`, which removes only that directory's pins (and the lock
//! file the agent keeps for it under /run/sockmesh) and waits until the kernel has freed the
//! maps. It refuses while an agent still uses the directory: stop the agent first.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct PinDir {
    sockmesh: PathBuf,
    dir: PathBuf,
    removed: bool,
}

impl PinDir {
    /// Guard `dir` (which the agent creates later), removed with the `sockmesh` binary at
    /// `sockmesh`.
    pub fn new(sockmesh: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> PinDir {
        PinDir {
            sockmesh: sockmesh.into(),
            dir: dir.into(),
            removed: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Remove the pins now. Returns what `sockmesh uninstall` said about them ("removed N
    /// pinned BPF object(s) under DIR ..."), or None when the directory does not exist.
    /// Stop the agent first: the uninstall refuses while it uses the directory.
    pub fn remove(&mut self) -> Result<Option<String>> {
        self.removed = true;
        // Also without a directory (an agent without interception pins nothing): the agent's
        // lock file for it may be left by a killed agent, and the uninstall removes it.
        let existed = self.dir.exists();
        let out = Command::new(&self.sockmesh)
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(&self.dir)
            .output()
            .with_context(|| format!("running {} uninstall", self.sockmesh.display()))?;
        if !out.status.success() {
            bail!(
                "removing the BPF pins under {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !existed {
            return Ok(None);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let said = stdout
            .lines()
            .find(|l| l.contains("pinned BPF object"))
            .unwrap_or("pins removed");
        Ok(Some(said.to_string()))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove()
        {
            eprintln!("sockmesh-testkit: {e:#}");
        }
    }
}
