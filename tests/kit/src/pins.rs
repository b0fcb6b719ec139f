//! The BPF pin directory of an agent a harness started (`sockmesh.intercept.pin_dir`, under
//! /sys/fs/bpf). Removing the pins detaches the agent's programs from every cgroup and frees its
//! maps. The kit does not link the agent, so this runs the agent's own removal:
//! `sockmesh uninstall --pin-dir DIR`, which unpins links and maps and waits until the kernel
//! has freed the maps. The subcommand also stops a daemon, removes an iptables chain and the
//! installed files; the guard points each of those at nothing (an admin address that refuses, a
//! chain name no one uses, an empty install root), so only the pins go.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// An admin address where nothing can listen: the uninstall finds no daemon to stop.
const NO_ADMIN: &str = "127.0.0.1:0";
/// A chain name no configuration uses: the uninstall finds no iptables chain to remove.
const NO_CHAIN: &str = "SMKIT-NO-CHAIN";

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
    /// Stop the agent first: the maps are freed only when no process holds them.
    pub fn remove(&mut self) -> Result<Option<String>> {
        self.removed = true;
        if !self.dir.exists() {
            return Ok(None);
        }
        // An empty install root: nothing installed there, so no unit is stopped and no file goes.
        let root = std::env::temp_dir().join(format!(
            "sockmesh-testkit-no-install-{}-{}",
            std::process::id(),
            self.dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let out = Command::new(&self.sockmesh)
            .arg("uninstall")
            .arg("--root")
            .arg(&root)
            .arg("--pin-dir")
            .arg(&self.dir)
            .args(["--iptables-chain", NO_CHAIN, "--admin", NO_ADMIN])
            .output()
            .with_context(|| format!("running {} uninstall", self.sockmesh.display()));
        let _ = std::fs::remove_dir(&root);
        let out = out?;
        if !out.status.success() {
            bail!(
                "removing the BPF pins under {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
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
