//! iptables interception mode: the classic sidecar way, for comparison and for kernels without
//! the eBPF path. nat OUTPUT jumps to a chain of our own; in it, the agent's own traffic (socket
//! mark), the agent's loopback ports and excluded ports/prefixes RETURN first, then one REDIRECT
//! rule per enabled cgroup (`-m cgroup --path`) sends TCP connects to the transparent listener,
//! where `SO_ORIGINAL_DST` comes from conntrack. State lives in the rules themselves (each
//! cgroup rule carries a `sockmesh cgroup <path>` comment), so it survives agent restarts.
//!
//! Unlike the eBPF mode this does not fail open: while the agent is down, REDIRECTed connects are
//! refused. That is the behaviour of an iptables sidecar, kept as is for honest comparison.
//! It covers IPv4 only (no ip6tables rules): IPv6 prefixes of the policy are for the eBPF modes.
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::ebpf::InterceptSettings;

const COMMENT_PREFIX: &str = "sockmesh cgroup ";

#[derive(Clone, Debug, Serialize)]
pub struct IptablesCgroup {
    pub cgroup: String,
    pub mode: &'static str,
    /// Connections redirected (nat rules see the first packet of each connection only).
    pub redirected: u64,
}

pub struct Iptables {
    chain: String,
    settings: InterceptSettings,
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("running iptables (install the iptables package: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ok(args: &[&str]) -> bool {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Iptables {
    pub fn new(chain: &str, settings: InterceptSettings) -> Result<Iptables> {
        crate::config::intercept::check_chain_name(chain).map_err(anyhow::Error::msg)?;
        Ok(Iptables {
            chain: chain.to_string(),
            settings,
        })
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Create our chain with its RETURN rules and the jump from nat OUTPUT (idempotent).
    fn ensure_chain(&self) -> Result<()> {
        let c = self.chain.as_str();
        if ok(&["-t", "nat", "-S", c]) {
            return Ok(());
        }
        run(&["-t", "nat", "-N", c])?;
        let mark = format!("0x{:x}", self.settings.mark);
        run(&[
            "-t", "nat", "-A", c, "-m", "mark", "--mark", &mark, "-j", "RETURN",
        ])?;
        let listen_port = self.settings.listen.port().to_string();
        let mut loopback_ports = vec![listen_port];
        loopback_ports.extend(self.settings.agent_ports.iter().map(|p| p.to_string()));
        for p in &loopback_ports {
            run(&[
                "-t",
                "nat",
                "-A",
                c,
                "-p",
                "tcp",
                "-d",
                "127.0.0.0/8",
                "--dport",
                p,
                "-j",
                "RETURN",
            ])?;
        }
        for p in &self.settings.exclude_ports {
            run(&[
                "-t",
                "nat",
                "-A",
                c,
                "-p",
                "tcp",
                "--dport",
                &p.to_string(),
                "-j",
                "RETURN",
            ])?;
        }
        // iptables covers IPv4 only; IPv6 prefixes are for the eBPF modes.
        for cidr in self.settings.exclude_cidrs.iter().filter(|c| c.is_v4()) {
            run(&["-t", "nat", "-A", c, "-d", &cidr.to_string(), "-j", "RETURN"])?;
        }
        run(&["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", c])?;
        Ok(())
    }

    /// Rebuild the chain for a new policy, keeping the cgroups that were enabled. Connections
    /// already redirected keep their conntrack state.
    pub fn update_policy(&mut self, settings: InterceptSettings) -> Result<()> {
        let cgroups = self.cgroups()?;
        self.settings = settings;
        if cgroups.is_empty() {
            Iptables::uninstall(&self.chain)?;
            return Ok(());
        }
        Iptables::uninstall(&self.chain)?;
        for c in cgroups {
            self.enable(&c.cgroup)?;
        }
        Ok(())
    }

    /// REDIRECT TCP connects from processes in cgroup `rel` (relative to the cgroup2 mount).
    pub fn enable(&self, rel: &str) -> Result<()> {
        let rel = format!("/{}", rel.trim_start_matches('/'));
        if self.cgroups()?.iter().any(|c| c.cgroup == rel) {
            return Ok(());
        }
        self.ensure_chain()?;
        let comment = format!("{COMMENT_PREFIX}{rel}");
        let port = self.settings.listen.port().to_string();
        // `-m cgroup --path` takes the path relative to the cgroup2 root.
        let path = rel.trim_start_matches('/');
        for cidr in self.settings.include_cidrs.iter().filter(|c| c.is_v4()) {
            run(&[
                "-t",
                "nat",
                "-A",
                &self.chain,
                "-p",
                "tcp",
                "-m",
                "cgroup",
                "--path",
                path,
                "-d",
                &cidr.to_string(),
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "REDIRECT",
                "--to-ports",
                &port,
            ])?;
        }
        tracing::info!(cgroup = %rel, chain = %self.chain, "iptables interception enabled");
        Ok(())
    }

    /// Remove the cgroup's REDIRECT rules; returns whether there were any.
    pub fn disable(&self, rel: &str) -> Result<bool> {
        let rel = format!("/{}", rel.trim_start_matches('/'));
        let comment = format!("\"{COMMENT_PREFIX}{rel}\"");
        let rules = self.rules()?;
        let mine: Vec<&String> = rules.iter().filter(|r| r.contains(&comment)).collect();
        for r in &mine {
            // "-A CHAIN ..." -> "-D CHAIN ..."; the saved form quotes the comment, undo that.
            let spec = r.strip_prefix("-A ").context("unexpected iptables -S output")?;
            let args = split_rule(spec);
            let mut argv = vec!["-t", "nat", "-D"];
            argv.extend(args.iter().map(String::as_str));
            run(&argv)?;
        }
        Ok(!mine.is_empty())
    }

    fn rules(&self) -> Result<Vec<String>> {
        if !ok(&["-t", "nat", "-S", &self.chain]) {
            return Ok(Vec::new());
        }
        Ok(run(&["-t", "nat", "-S", &self.chain])?
            .lines()
            .map(String::from)
            .collect())
    }

    /// Cgroups in iptables mode with their redirect counts.
    pub fn cgroups(&self) -> Result<Vec<IptablesCgroup>> {
        if !ok(&["-t", "nat", "-S", &self.chain]) {
            return Ok(Vec::new());
        }
        let listing = run(&["-t", "nat", "-L", &self.chain, "-v", "-x", "-n"])?;
        let mut out: Vec<IptablesCgroup> = Vec::new();
        for line in listing.lines() {
            let Some(idx) = line.find(&format!("/* {COMMENT_PREFIX}")) else {
                continue;
            };
            let rest = &line[idx + 3 + COMMENT_PREFIX.len()..];
            let cgroup = rest.split(" */").next().unwrap_or("").to_string();
            let pkts: u64 = line
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            match out.iter_mut().find(|c| c.cgroup == cgroup) {
                Some(c) => c.redirected += pkts,
                None => out.push(IptablesCgroup {
                    cgroup,
                    mode: "iptables",
                    redirected: pkts,
                }),
            }
        }
        Ok(out)
    }

    /// Remove the jump and the chain. Returns whether anything was there.
    pub fn uninstall(chain: &str) -> Result<bool> {
        let mut found = false;
        while ok(&["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", chain]) {
            found = true;
        }
        if ok(&["-t", "nat", "-S", chain]) {
            run(&["-t", "nat", "-F", chain])?;
            run(&["-t", "nat", "-X", chain])?;
            found = true;
        }
        Ok(found)
    }
}

/// Split an `iptables -S` rule into arguments, honouring double quotes.
fn split_rule(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_saved_rules_with_quoted_comments() {
        let r = split_rule(
            r#"SM -p tcp -m cgroup --path a/b -m comment --comment "sockmesh cgroup /a/b" -j REDIRECT --to-ports 15001"#,
        );
        assert_eq!(r[0], "SM");
        assert!(r.contains(&"sockmesh cgroup /a/b".to_string()), "{r:?}");
        assert_eq!(r.last().unwrap(), "15001");
    }

    #[test]
    fn rejects_bad_chain_names() {
        let s = crate::config::Config::embedded().unwrap().intercept_settings();
        assert!(Iptables::new("SOCKMESH", s.clone()).is_ok());
        assert!(Iptables::new("bad chain", s.clone()).is_err());
        assert!(Iptables::new(&"X".repeat(29), s).is_err());
    }
}
