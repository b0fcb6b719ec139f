//! Network namespaces a harness creates by name (`ip netns add`), deleted on drop together with
//! what lives only in them (veth ends, addresses, routes).
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

/// Run `ip ARGS` (iproute2); an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct NetNs {
    name: String,
    deleted: bool,
}

impl NetNs {
    /// `ip netns add NAME`.
    pub fn add(name: impl Into<String>) -> Result<NetNs> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        Ok(NetNs { name, deleted: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, /run/netns/NAME (what `nsenter --net=` and setns take).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `program` run inside this namespace, stdin closed. nsenter switches only the network
    /// namespace: `ip netns exec` would also remount /sys and hide the cgroup mount that a
    /// process inside has to join.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Run `f` on a thread inside this namespace (setns changes only the calling thread, and
    /// that thread ends when `f` returns).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this scoped thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(std::io::Error::last_os_error()).context("setns"));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread inside {} panicked", self.name))?
        })
    }

    /// `ip netns del NAME` now (drop does it otherwise).
    pub fn delete(&mut self) -> Result<()> {
        self.deleted = true;
        ip(&["netns", "del", &self.name])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(e) = self.delete()
        {
            eprintln!("sockmesh-testkit: {e:#}");
        }
    }
}
