//! A child process a harness started. It is signalled only by the PID it was started with, and
//! only while it is not yet reaped (until then the PID cannot belong to anyone else); on drop it
//! gets SIGTERM, a grace period, then SIGKILL, and is reaped, so a failing harness leaves no
//! process behind.
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long a process has to exit after SIGTERM before it gets SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// How often `wait_until` asks again.
const POLL: Duration = Duration::from_millis(100);

pub struct ChildProcess {
    what: String,
    child: Child,
    /// Its stdout when piped, buffered here so that successive reads see every line.
    stdout: Option<BufReader<ChildStdout>>,
    grace: Duration,
    /// Set once it is reaped: from then on its PID may be someone else's.
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawn `cmd`; `what` names the process in errors ("the provider on host-b").
    pub fn spawn(what: impl Into<String>, cmd: &mut Command) -> Result<ChildProcess> {
        let what = what.into();
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(ChildProcess {
            what,
            child,
            stdout,
            grace: DEFAULT_GRACE,
            status: None,
        })
    }

    /// Another grace period between SIGTERM and SIGKILL for `stop` and drop.
    pub fn with_grace(mut self, grace: Duration) -> ChildProcess {
        self.grace = grace;
        self
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of its (piped) stdout, without the line end; an error at end of file.
    pub fn read_line(&mut self) -> Result<String> {
        let what = &self.what;
        let out = self
            .stdout
            .as_mut()
            .with_context(|| format!("{what}: stdout is not piped"))?;
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            bail!("{what} closed its output without a line");
        }
        Ok(line.trim_end().to_string())
    }

    /// Its first line must be `ready ADDR` (the test peer's and the load generator's servers
    /// say so once they listen); returns ADDR.
    pub fn ready(&mut self) -> Result<String> {
        let line = self.read_line()?;
        match line.strip_prefix("ready ") {
            Some(addr) => Ok(addr.to_string()),
            None => bail!("{} said {line:?} instead of `ready ADDR`", self.what),
        }
    }

    /// The rest of its stdout, up to end of file.
    pub fn read_rest(&mut self) -> Result<String> {
        let mut rest = String::new();
        if let Some(out) = self.stdout.as_mut() {
            out.read_to_string(&mut rest)?;
        }
        Ok(rest)
    }

    /// Its stderr when piped (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Its exit status once it has exited (it is then reaped), without waiting.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Ask `ready` every 100 ms until it says yes. Fails when the process exits first, when
    /// `ready` fails (e.g. the harness was interrupted) or after `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready()? {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!("{} exited ({status}) before it was ready", self.what);
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within {timeout:?}", self.what);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until `addr` accepts TCP connections (from this network namespace).
    pub fn await_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, || Ok(crate::ports::accepts(addr)))
            .with_context(|| format!("waiting for {addr} to accept"))
    }

    /// Send `signal` (e.g. `libc::SIGHUP`) to it. Refused once it is reaped.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        if self.status.is_some() {
            bail!("{} has already exited", self.what);
        }
        // SAFETY: kill(2) on the PID of our own child, not yet reaped, so still ours.
        if unsafe { libc::kill(self.pid() as libc::pid_t, signal) } != 0 {
            return Err(anyhow!(std::io::Error::last_os_error()))
                .with_context(|| format!("signalling {} (pid {})", self.what, self.pid()));
        }
        Ok(())
    }

    /// Wait until it exits.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, up to the grace period for it to exit, then SIGKILL; reaps it. A no-op once it
    /// has exited.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if self.exited()?.is_none() {
            self.signal(libc::SIGTERM)?;
            let deadline = Instant::now() + self.grace;
            while self.exited()?.is_none() {
                if Instant::now() > deadline {
                    return self.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.wait()
    }

    /// SIGKILL now (a crash, as far as the process can tell) and reap it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if self.exited()?.is_none() {
            self.signal(libc::SIGKILL)?;
        }
        self.wait()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "sockmesh-testkit: stopping {} (pid {}): {e:#}",
                self.what,
                self.pid()
            );
        }
    }
}

/// The last `lines` lines of a log file (empty when it cannot be read), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn ready_line_and_exit() {
        let mut p = ChildProcess::spawn(
            "echo",
            Command::new("sh")
                .args(["-c", "echo 'ready 127.0.0.1:1'; echo more"])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        assert_eq!(p.ready().unwrap(), "127.0.0.1:1");
        assert_eq!(p.read_line().unwrap(), "more");
        assert!(p.wait().unwrap().success());
        assert!(
            p.signal(libc::SIGTERM).is_err(),
            "a reaped PID is not ours any more"
        );
    }

    #[test]
    fn stop_escalates_to_sigkill_after_the_grace_period() {
        // The shell ignores SIGTERM, so only SIGKILL ends it.
        let mut p = ChildProcess::spawn(
            "stubborn",
            Command::new("sh")
                .args(["-c", "trap '' TERM; echo ready x; sleep 30"])
                .stdout(Stdio::piped()),
        )
        .unwrap()
        .with_grace(Duration::from_millis(200));
        p.ready().unwrap();
        let started = Instant::now();
        let status = p.stop().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn wait_until_reports_an_early_exit() {
        let mut p = ChildProcess::spawn("quitter", Command::new("true").stdout(Stdio::null())).unwrap();
        let err = p.wait_until(Duration::from_secs(5), || Ok(false)).unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
