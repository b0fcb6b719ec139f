//! `cargo xtask scale`: discovery at fleet scale (issue #21). The experiment itself is the
//! ignored test `discovery_at_scale` (tests/zk_scale.rs), which reuses the test harness: it
//! starts ZooKeeper, creates the providers with a ZooKeeper client, starts one agent referring
//! every service and measures; this runs it in release mode and says where the report is.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{Step, cargo, project_root};

pub fn run(sizes: &str) -> Result<()> {
    if !crate::ebpf_object().exists() {
        crate::build_ebpf()?;
    }
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .context("running date")?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let out = project_root().join(format!("bench/results/scale-{date}"));
    let step = Step::start(&format!("scale: sizes {sizes}"));
    let status = cargo(None)
        .args([
            "test",
            "--release",
            "-p",
            "sockmesh",
            "--test",
            "zk_scale",
            "--",
            "--ignored",
            "--nocapture",
            "discovery_at_scale",
        ])
        .env("SOCKMESH_SCALE_SIZES", sizes)
        .env("SOCKMESH_SCALE_OUT", &out)
        .status()
        .context("running the scale experiment")?;
    if !status.success() {
        bail!("the scale experiment failed");
    }
    step.done(&format!("{}/report.md, results.json", out.display()));
    Ok(())
}
