//! `sockmesh install` / `sockmesh uninstall`: put the daemon on a host the conventional way and
//! take it off without a trace. Both are idempotent and say what they did.
//!
//! Uninstall touches only what its arguments name: the installation (`--root`, or no argument
//! at all: the one at /) with the daemon, pin directory and iptables chain its installed
//! configuration names; or a pin directory (`--pin-dir`) or chain (`--iptables-chain`) alone.
//! Nothing is unpinned while a daemon uses the pins: the installation's daemon is stopped first
//! (its systemd unit, else SIGTERM to the PID in the pin directory's lock file, then waiting for
//! the lock), and a pin directory named alone while a daemon uses it is refused.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::intercept::iptables::Iptables;
use crate::intercept::pins::{self, LockError, PinDirLock};

/// How long a daemon has to stop after SIGTERM (it drains for up to 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub const UNIT_NAME: &str = "sockmesh.service";

/// Where things go. `root` prefixes every path (like DESTDIR), for packaging and tests.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: Option<PathBuf>) -> Layout {
        Layout {
            root: root.unwrap_or_else(|| PathBuf::from("/")),
        }
    }
    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
    pub fn binary(&self) -> PathBuf {
        self.at("/usr/local/bin/sockmesh")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.at("/etc/sockmesh")
    }
    pub fn config(&self) -> PathBuf {
        self.at("/etc/sockmesh/sockmesh.yaml")
    }
    /// Agent state (registry snapshots, `crate::control::DEFAULT_SNAPSHOT_DIR`).
    pub fn state_dir(&self) -> PathBuf {
        self.at("/var/lib/sockmesh")
    }
    pub fn unit(&self) -> PathBuf {
        self.at(&format!("/etc/systemd/system/{UNIT_NAME}"))
    }
    /// Paths as the running system sees them (without the root prefix).
    fn installed_binary(&self) -> &'static str {
        "/usr/local/bin/sockmesh"
    }
    fn installed_config(&self) -> &'static str {
        "/etc/sockmesh/sockmesh.yaml"
    }
    fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// The unit: only the capabilities the daemon uses, restart on failure, SIGHUP reloads.
pub fn unit_text(layout: &Layout) -> String {
    format!(
        "[Unit]\n\
         Description=sockmesh Motan2 service-mesh node agent (eBPF interception)\n\
         Documentation=https://example.invalid/sockmesh\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={bin} run --config {cfg}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         # SIGTERM drains: the listener closes first, so apps fail open to direct connects.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=20\n\
         # CAP_BPF: load programs and maps. CAP_NET_ADMIN: attach cgroup socket programs, SO_MARK,\n\
         # iptables mode. CAP_SYS_ADMIN: mount bpffs, setns() into app network namespaces.\n\
         # CAP_SYS_PTRACE: open /proc/PID/ns/net of apps run by other users. CAP_CHOWN: give the\n\
         # control socket to sockmesh.admin.control_group.\n\
         CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_CHOWN\n\
         AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_CHOWN\n\
         NoNewPrivileges=yes\n\
         LimitNOFILE=1048576\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin = layout.installed_binary(),
        cfg = layout.installed_config(),
    )
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    anyhow::ensure!(st.success(), "systemctl {} failed", args.join(" "));
    Ok(())
}

/// Write `data` to `path` through a temporary file and a rename (never a half-written file).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("path without parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

/// Install binary, configuration and unit; enable and start the unit when systemd runs.
/// Returns the lines it reports.
pub fn install(layout: &Layout, config: Option<&Path>) -> Result<Vec<String>> {
    let mut report = Vec::new();
    // The configuration first: a bad one stops the install before anything is written.
    let (text, from) = match config {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None if layout.config().exists() => (std::fs::read_to_string(layout.config())?, "kept".into()),
        None => (
            crate::config::EMBEDDED_DEFAULT.to_string(),
            "embedded default".into(),
        ),
    };
    Config::parse(&text, &from).map_err(|e| anyhow::anyhow!("{e}"))?;

    let exe = std::fs::read("/proc/self/exe").context("reading our own binary")?;
    let same = std::fs::read(layout.binary()).is_ok_and(|b| b == exe);
    if same {
        report.push(format!("binary {} already up to date", layout.binary().display()));
    } else {
        write_atomic(&layout.binary(), &exe, 0o755)?;
        report.push(format!("installed binary {}", layout.binary().display()));
    }
    if from == "kept" {
        report.push(format!(
            "kept existing configuration {}",
            layout.config().display()
        ));
    } else {
        write_atomic(&layout.config(), text.as_bytes(), 0o644)?;
        report.push(format!(
            "wrote configuration {} ({from})",
            layout.config().display()
        ));
    }
    write_atomic(&layout.unit(), unit_text(layout).as_bytes(), 0o644)?;
    report.push(format!("wrote systemd unit {}", layout.unit().display()));

    if layout.is_real_root() && systemd_running() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
        report.push(format!("enabled and started {UNIT_NAME}"));
    } else {
        report.push(format!(
            "systemd is not running here, so nothing was started; run the daemon with: {} run --config {}",
            layout.binary().display(),
            layout.config().display()
        ));
    }
    Ok(report)
}

/// Stop and disable the unit when systemd runs it.
pub fn stop_unit(layout: &Layout) -> Result<Option<String>> {
    if layout.is_real_root() && systemd_running() && layout.unit().exists() {
        systemctl(&["disable", "--now", UNIT_NAME])?;
        return Ok(Some(format!("stopped and disabled {UNIT_NAME}")));
    }
    Ok(None)
}

/// What `sockmesh uninstall` removes.
#[derive(Clone, Debug, Default)]
pub struct UninstallScope {
    /// The installation under this root: its files and unit, and the daemon, pin directory and
    /// chain its configuration names.
    pub install: Option<Layout>,
    /// Pin directories named on the command line.
    pub pin_dirs: Vec<PathBuf>,
    /// iptables chains named on the command line.
    pub chains: Vec<String>,
}

/// The pin directory and iptables chain an installed configuration names (the defaults for keys
/// it does not set). Read leniently: an installed file that no longer validates still says where
/// its pins are.
fn installed_targets(layout: &Layout) -> Result<Option<(PathBuf, String)>> {
    let defaults = crate::config::InterceptSection::default();
    let path = layout.config();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A daemon run without an installed file uses the defaults; an empty install root
            // names nothing.
            return Ok(layout
                .is_real_root()
                .then_some((defaults.pin_dir, defaults.iptables_chain)));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let key = |k: &str| {
        v.get("sockmesh")?
            .get("intercept")?
            .get(k)?
            .as_str()
            .map(str::to_string)
    };
    Ok(Some((
        key("pin_dir").map(PathBuf::from).unwrap_or(defaults.pin_dir),
        key("iptables_chain").unwrap_or(defaults.iptables_chain),
    )))
}

/// Stop the daemon that holds `pin_dir`'s lock (SIGTERM to the PID in it, then wait for the
/// lock); returns the lock, held. `stoppable` false: refuse instead of stopping it.
fn take_pin_dir(pin_dir: &Path, stoppable: bool, report: &mut dyn FnMut(String)) -> Result<PinDirLock> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut signalled = None;
    loop {
        match PinDirLock::acquire(pin_dir) {
            Ok(lock) => {
                if let Some(pid) = signalled {
                    report(format!("the daemon (pid {pid}) stopped"));
                }
                return Ok(lock);
            }
            Err(LockError::Other(e)) => return Err(e),
            Err(LockError::Held { pid, lock, .. }) => {
                let Some(pid) = pid.filter(|p| pins::holds(*p, &lock)) else {
                    bail!(
                        "a process holds {} but its PID is unknown; stop the sockmesh daemon using {}, then run uninstall again",
                        lock.display(),
                        pin_dir.display()
                    );
                };
                if !stoppable {
                    bail!(
                        "the sockmesh daemon with pid {pid} uses the pin directory {}: refusing to unpin under it (stop that daemon first, or run `sockmesh uninstall` without --pin-dir to remove the installation with its daemon)",
                        pin_dir.display()
                    );
                }
                if signalled != Some(pid) {
                    // SAFETY: kill(2); the PID holds the lock file open right now (checked above).
                    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("stopping the daemon (pid {pid})"));
                    }
                    report(format!(
                        "stopping the daemon (pid {pid}) that uses {}",
                        pin_dir.display()
                    ));
                    signalled = Some(pid);
                }
                if Instant::now() > deadline {
                    bail!(
                        "the daemon (pid {pid}) did not stop within {STOP_TIMEOUT:?}; stop it, then run uninstall again"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `sockmesh uninstall`: stop what uses the named things, then remove them. Reports each step
/// through `report` as it happens.
pub fn uninstall(scope: &UninstallScope, report: &mut dyn FnMut(String)) -> Result<()> {
    let mut stoppable = Vec::new();
    let mut chains = Vec::new();
    if let Some(layout) = &scope.install
        && let Some((pin_dir, chain)) = installed_targets(layout)?
    {
        stoppable.push(pin_dir);
        chains.push(chain);
    }
    let mut pin_dirs = stoppable.clone();
    for p in &scope.pin_dirs {
        if !pin_dirs.contains(p) {
            pin_dirs.push(p.clone());
        }
    }
    for c in &scope.chains {
        if !chains.contains(c) {
            chains.push(c.clone());
        }
    }
    // Refuse before anything changes.
    for p in &pin_dirs {
        if !p.is_absolute() || !pins::on_bpffs(p) {
            bail!(
                "{} is not on a bpffs: refusing to remove anything under it (a pin directory is a directory on a bpffs, e.g. /sys/fs/bpf/sockmesh)",
                p.display()
            );
        }
    }
    if let Some(layout) = &scope.install
        && let Some(line) = stop_unit(layout)?
    {
        report(line);
    }
    let mut locks = Vec::new();
    for p in &pin_dirs {
        let lock = take_pin_dir(p, stoppable.contains(p), report)?;
        let users = pins::live_users(p);
        if let Some((pid, prog)) = users.first() {
            lock.remove();
            bail!(
                "process {pid} holds program {prog} attached through the links pinned under {}: a sockmesh daemon still uses them; stop it, then run uninstall again",
                p.display()
            );
        }
        locks.push(lock);
    }
    for (p, lock) in pin_dirs.iter().zip(locks) {
        let n = pins::uninstall(p)?;
        report(format!(
            "removed {n} pinned BPF object(s) under {} (programs detach with their links)",
            p.display()
        ));
        lock.remove();
    }
    for c in &chains {
        match Iptables::uninstall(c) {
            Ok(true) => report(format!("removed iptables nat chain {c} and its jump from OUTPUT")),
            Ok(false) => report(format!("no iptables chain {c}")),
            Err(e) => report(format!("iptables chain {c} not removed: {e:#}")),
        }
    }
    if let Some(layout) = &scope.install {
        for line in remove_files(layout)? {
            report(line);
        }
    }
    Ok(())
}

/// Remove unit, binary and configuration (call `stop_unit` first).
pub fn remove_files(layout: &Layout) -> Result<Vec<String>> {
    let mut report = Vec::new();
    for f in [layout.unit(), layout.binary(), layout.config()] {
        match std::fs::remove_file(&f) {
            Ok(()) => report.push(format!("removed {}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    if layout.config_dir().exists() {
        match std::fs::remove_dir(layout.config_dir()) {
            Ok(()) => report.push(format!("removed {}", layout.config_dir().display())),
            Err(_) => report.push(format!(
                "left {} (it holds other files)",
                layout.config_dir().display()
            )),
        }
    }
    if layout.state_dir().exists() {
        std::fs::remove_dir_all(layout.state_dir())
            .with_context(|| format!("removing {}", layout.state_dir().display()))?;
        report.push(format!(
            "removed {} (registry snapshots)",
            layout.state_dir().display()
        ));
    }
    if layout.is_real_root() && systemd_running() {
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_only_the_needed_capabilities() {
        let u = unit_text(&Layout::new(None));
        assert!(u.contains("ExecStart=/usr/local/bin/sockmesh run --config /etc/sockmesh/sockmesh.yaml"));
        assert!(u.contains("Restart=on-failure"));
        let caps = u
            .lines()
            .find(|l| l.starts_with("CapabilityBoundingSet="))
            .unwrap();
        assert_eq!(
            caps,
            "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_CHOWN"
        );
    }

    #[test]
    fn install_and_remove_under_a_root_are_idempotent() {
        let root = std::env::temp_dir().join(format!("sockmesh-install-unit-{}", std::process::id()));
        let l = Layout::new(Some(root.clone()));
        let first = install(&l, None).unwrap();
        assert!(
            first.iter().any(|r| r.starts_with("installed binary")),
            "{first:?}"
        );
        assert!(
            first
                .iter()
                .any(|r| r.contains("systemd is not running here") || r.contains("enabled")),
            "{first:?}"
        );
        let second = install(&l, None).unwrap();
        assert!(
            second.iter().any(|r| r.contains("already up to date")),
            "{second:?}"
        );
        assert!(
            second.iter().any(|r| r.contains("kept existing configuration")),
            "{second:?}"
        );
        let removed = remove_files(&l).unwrap();
        assert_eq!(
            removed.iter().filter(|r| r.starts_with("removed")).count(),
            4,
            "{removed:?}"
        );
        assert!(
            remove_files(&l).unwrap().is_empty(),
            "second removal has nothing to do"
        );
        assert!(!l.binary().exists() && !l.config().exists() && !l.unit().exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn install_refuses_a_bad_config_before_writing() {
        let root = std::env::temp_dir().join(format!("sockmesh-install-bad-{}", std::process::id()));
        let bad = std::env::temp_dir().join(format!("sockmesh-bad-{}.yaml", std::process::id()));
        std::fs::write(&bad, "sockmesh:\n  intercept:\n    default_mode: nope\n").unwrap();
        let err = install(&Layout::new(Some(root.clone())), Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_mode"), "{err}");
        assert!(!root.exists(), "nothing may be written for a bad config");
        let _ = std::fs::remove_file(&bad);
    }
}
