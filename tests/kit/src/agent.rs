//! Starting an agent the way every harness does: `sockmesh run --config FILE` with its output
//! in a log file, then waiting until its admin API answers `GET /sockmesh/status`.
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::proc::{ChildProcess, log_tail};

/// How long an agent may take to answer after it was started (BPF loading included).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Start `sockmesh run --config CONFIG`. `cmd` runs the binary (`Command::new(sockmesh)`, or
/// `NetNs::command(sockmesh)` inside a namespace); its stdout and stderr are appended to `log`.
pub fn spawn(what: &str, cmd: Command, config: &Path, log: &Path) -> Result<ChildProcess> {
    spawn_with_flags(what, cmd, config, log, &[])
}

/// As `spawn`, with motan-go style `flags` after the configuration (e.g. `-idc`, `yf`).
pub fn spawn_with_flags(
    what: &str,
    mut cmd: Command,
    config: &Path,
    log: &Path,
    flags: &[String],
) -> Result<ChildProcess> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.args(["run", "--config"])
        .arg(config)
        .args(flags)
        .stdout(out.try_clone()?)
        .stderr(out);
    ChildProcess::spawn(what, &mut cmd)
}

/// Whether the admin API at `admin` answers `GET /sockmesh/status` with 200.
pub fn answers(admin: SocketAddr) -> bool {
    matches!(crate::http::get(admin, "/sockmesh/status"), Ok((200, _)))
}

/// Wait until the agent's admin API (reachable from here) answers; an error carries the end of
/// its log.
pub fn await_admin(agent: &mut ChildProcess, admin: SocketAddr, log: &Path) -> Result<()> {
    agent
        .wait_until(START_TIMEOUT, || Ok(answers(admin)))
        .with_context(|| {
            format!(
                "its admin API {admin} did not answer; log:\n{}",
                log_tail(log, 40)
            )
        })
}
