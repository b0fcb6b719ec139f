//! `cargo xtask setup`: idempotent installation of the build and test prerequisites.
//! Every step checks first and does nothing when the thing is already there.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{Step, project_root};

/// bpf-linker release verified on these machines, built against the nightly's LLVM 22 (its default
/// feature is `llvm-23`, so `ensure_bpf_linker` picks the feature from the nightly's LLVM major).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and benchmarks use, each with a file that proves it is installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "/usr/sbin/bpftool"),
    ("iproute2", "/usr/bin/ip"),
    ("iptables", "/usr/sbin/iptables"),
    ("haproxy", "/usr/sbin/haproxy"),
    ("zookeeper", "/usr/share/java/zookeeper.jar"),
    ("default-jre-headless", "/usr/bin/java"),
    ("curl", "/usr/bin/curl"),
    // perf stat: the bench's per-request task-clock, context switches and syscalls.
    ("linux-perf", "/usr/bin/perf"),
];

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cargo"))
}

/// PATH with `$CARGO_HOME/bin` first, so the freshly installed bpf-linker is found.
pub fn path_with_cargo_bin() -> String {
    let old = std::env::var("PATH").unwrap_or_default();
    format!("{}:{old}", cargo_home().join("bin").display())
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    println!("xtask: setup: checking build and test prerequisites");
    let llvm_major = ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(llvm_major)?;
    ensure_apt_packages()?;
    println!("xtask: setup complete ({:.2} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly toolchain builds the BPF crate; returns the major version of its LLVM.
fn ensure_nightly() -> Result<u32> {
    let vv = match output(Command::new("rustc").args(["+nightly", "-vV"])) {
        Ok(v) => v,
        Err(_) => {
            let step = Step::start("setup: installing the nightly toolchain (rustup)");
            let st = Command::new("rustup")
                .args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ])
                .status()?;
            if !st.success() {
                bail!("rustup could not install the nightly toolchain");
            }
            step.done("installed");
            output(Command::new("rustc").args(["+nightly", "-vV"]))?
        }
    };
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    let major: u32 = llvm
        .split('.')
        .next()
        .unwrap_or("")
        .parse()
        .context("parsing LLVM version")?;
    println!("xtask: setup: nightly toolchain present (LLVM {llvm})");
    Ok(major)
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

fn ensure_rust_src() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        println!("xtask: setup: rust-src present");
        return Ok(());
    }
    let step = Step::start("setup: rustup component add rust-src --toolchain nightly");
    let st = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()?;
    if !st.success() {
        bail!("rustup could not add rust-src to the nightly toolchain");
    }
    step.done("installed");
    Ok(())
}

fn ensure_bpf_linker(llvm_major: u32) -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if let Ok(v) = output(Command::new(&bin).arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        println!("xtask: setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    // Build bpf-linker against the nightly's own libLLVM, so no system LLVM of a matching
    // version is needed: a prefix whose lib/ holds libLLVM.so links to the sysroot's copy.
    let step = Step::start(&format!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about 1-2 min)"
    ));
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let libllvm = std::fs::read_dir(&sysroot_lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", sysroot_lib.display()))?;
    let prefix = project_root().join("target/xtask/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(libllvm.file_name().unwrap()),
    ] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    let st = Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
            "--root",
        ])
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .current_dir(std::env::temp_dir())
        .status()?;
    if !st.success() {
        bail!("building bpf-linker failed (see the cargo output above)");
    }
    step.done(&format!("{}", bin.display()));
    Ok(())
}

fn ensure_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        println!(
            "xtask: setup: Debian packages present ({})",
            APT_PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    let step = Step::start(&format!("setup: apt-get install {}", missing.join(" ")));
    let st = Command::new("apt-get").arg("update").arg("-qq").status()?;
    if !st.success() {
        bail!("apt-get update failed");
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !st.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    step.done("installed");
    Ok(())
}

pub fn ensure_cargo_fuzz() -> Result<()> {
    if output(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "--version"])
            .env("PATH", path_with_cargo_bin()),
    )
    .is_ok()
    {
        return Ok(());
    }
    let step = Step::start("setup: cargo install cargo-fuzz");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    step.done("installed");
    Ok(())
}
