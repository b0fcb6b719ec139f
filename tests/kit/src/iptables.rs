//! The iptables nat chain an agent adds in iptables mode (the name is in its configuration,
//! `sockmesh.intercept.iptables_chain`), removed on drop with every jump to it from OUTPUT, as
//! `sockmesh uninstall --iptables-chain` does. The guard creates nothing itself.
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct NatChain {
    name: String,
    removed: bool,
}

/// `iptables -w ARGS`: whether it succeeded (false also without iptables: then there is no
/// chain either), or, when `must`, an error carrying its stderr.
fn iptables(args: &[&str], must: bool) -> Result<bool> {
    let out = Command::new("iptables").arg("-w").args(args).output();
    let out = match out {
        Ok(out) => out,
        Err(_) if !must => return Ok(false),
        Err(e) => return Err(e).context("running iptables"),
    };
    if must && !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.status.success())
}

impl NatChain {
    /// Guard the chain `name` (which may not exist yet).
    pub fn new(name: impl Into<String>) -> NatChain {
        NatChain {
            name: name.into(),
            removed: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delete every `-A OUTPUT -p tcp -j NAME` jump, then flush and delete the chain. Returns
    /// whether there was anything to remove.
    pub fn remove(&mut self) -> Result<bool> {
        self.removed = true;
        let chain = self.name.as_str();
        let mut found = false;
        while iptables(&["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", chain], false)? {
            found = true;
        }
        if iptables(&["-t", "nat", "-S", chain], false)? {
            iptables(&["-t", "nat", "-F", chain], true)?;
            iptables(&["-t", "nat", "-X", chain], true)?;
            found = true;
        }
        Ok(found)
    }
}

impl Drop for NatChain {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove()
        {
            eprintln!("sockmesh-testkit: iptables chain {}: {e:#}", self.name);
        }
    }
}
