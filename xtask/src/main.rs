//! `cargo xtask`: everything a contributor or CI needs, from a fresh clone, as root.
mod bench;
mod lint;
mod plots;
mod scale;
mod setup;
mod soak;
mod util;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::util::{Step, cargo, project_root, run_streaming};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "sockmesh build, set-up, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (idempotent; a second run is a quick no-op).
    Setup,
    /// Compile the BPF programs for bpfel-unknown-none (needs nightly + bpf-linker: run setup).
    BuildEbpf,
    /// Setup, fmt check, lint, clippy, build-ebpf, then every test (privileged ones included).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The module layers and import cycles of agent/src (the layer table is in xtask/src/lint/mod.rs).
    Lint,
    /// Setup, build, and run the daemon in the foreground with the embedded default config.
    Run {
        /// Arguments passed to `sockmesh run` (e.g. `--config FILE`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The multi-host demo: two hosts as network namespaces, an intercepted app and a client
    /// agent on one, a server agent and a Motan2 provider on the other; prints a summary and
    /// removes everything it created (also on failure or Ctrl-C).
    Demo {
        /// Arguments passed to `sockmesh-demo` (e.g. `--json`, `--rate 1000`, `--duration-ms 5000`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The interception benchmark (BENCH.md): every mode side by side, report under bench/results/.
    Bench {
        /// Every mode and case briefly (one round, 1 s per run): for CI and smoke tests.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds (default 5).
        #[arg(long)]
        rounds: Option<u32>,
        /// Seconds per run (default 5).
        #[arg(long)]
        seconds: Option<u64>,
        /// The agent's runtime worker threads (default: one per CPU).
        #[arg(long, default_value_t = 0)]
        agent_workers: usize,
        /// Only these modes, comma separated (e.g. `agent-explicit,agent-filters`); default all.
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Another build of `sockmesh` (e.g. the previous release) for the agent-baseline mode:
        /// the same agent-explicit path through that binary, compared per round.
        #[arg(long)]
        baseline_bin: Option<PathBuf>,
    },
    /// Run every fuzz target for N seconds each (installs cargo-fuzz when missing).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Discovery at fleet scale through a real ZooKeeper (issue #21): report under
    /// bench/results/scale-<date>/.
    Scale {
        /// Services x providers per service, comma-separated.
        #[arg(long, default_value = "100x10,500x50,1000x100")]
        sizes: String,
    },
    /// Soak (issue #16): open-loop load through eBPF interception (ebpf-connect and
    /// ebpf-sockmap in turn) while provider restarts, ZooKeeper flaps, agent reloads and agent
    /// kills are injected; RSS, fds, threads, p50/p99 and errors sampled every 2 s; report and
    /// plots under bench/results/soak-<date>/. Fails on errors outside the injected faults or
    /// RSS/fds growth after warm-up.
    Soak {
        /// Length of the run in minutes (at least 1).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Open-loop request rate of the load (req/s).
        #[arg(long, default_value_t = 500)]
        rate: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Lint => lint(),
        Cmd::Test { args } => test(&args),
        Cmd::Run { args } => run(&args),
        Cmd::Demo { args } => demo(&args),
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Scale { sizes } => scale::run(&sizes),
        Cmd::Soak { minutes, rate } => soak::run(soak::Options { minutes, rate }),
        Cmd::Bench {
            quick,
            rounds,
            seconds,
            agent_workers,
            modes,
            baseline_bin,
        } => bench::run(bench::Options {
            baseline_bin,
            quick,
            agent_workers,
            modes: bench::Mode::parse_list(&modes)?,
            rounds: rounds.unwrap_or(if quick { 1 } else { 5 }),
            duration: std::time::Duration::from_secs(seconds.unwrap_or(if quick { 1 } else { 5 })),
            warmup: std::time::Duration::from_millis(if quick { 200 } else { 1000 }),
        }),
    }
}

/// Path of the BPF object the agent embeds (see agent/build.rs).
fn ebpf_object() -> PathBuf {
    project_root().join("target/bpfel-unknown-none/bpf/sockmesh-ebpf")
}

pub(crate) fn build_ebpf() -> Result<()> {
    let step = Step::start("build-ebpf: compiling BPF programs for bpfel-unknown-none");
    let mut cmd = cargo(Some("nightly"));
    cmd.args([
        "build",
        "--package",
        "sockmesh-ebpf",
        "--profile",
        "bpf",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
    ])
    // --btf: emit .BTF/.BTF.ext so the verifier log and bpftool show types and source lines.
    .env("CARGO_ENCODED_RUSTFLAGS", "-Clink-arg=--btf")
    .env("PATH", setup::path_with_cargo_bin());
    let status = cmd.status().context("running cargo +nightly build")?;
    if !status.success() {
        bail!("BPF build failed. If bpf-linker or rust-src is missing, run `cargo xtask setup` first.");
    }
    step.done(&format!("{}", ebpf_object().display()));
    Ok(())
}

fn lint() -> Result<()> {
    let step = Step::start("lint: module layers and import cycles of agent/src");
    step.done(&lint::run()?);
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    let step = Step::start("fmt: cargo fmt --all --check");
    let st = cargo(None).args(["fmt", "--all", "--", "--check"]).status()?;
    if !st.success() {
        bail!("cargo fmt --check found unformatted code: run `cargo fmt --all`");
    }
    step.done("clean");
    lint()?;
    build_ebpf()?;
    let step = Step::start("clippy: cargo clippy --all-targets -- -D warnings");
    let st = cargo(None)
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .status()?;
    if !st.success() {
        bail!("clippy reported warnings");
    }
    step.done("clean");
    let step = Step::start("test: cargo test (unit, integration and privileged tests)");
    let mut cmd = cargo(None);
    // Every test binary runs even after one fails, so one run reports every failure.
    cmd.args(["test", "--no-fail-fast"]).args(extra);
    let summary = run_streaming(&mut cmd)?;
    step.done(&format!(
        "{} passed, {} failed, {} ignored",
        summary.passed, summary.failed, summary.ignored
    ));
    if !summary.success || summary.failed > 0 {
        bail!("tests failed");
    }
    if summary.passed == 0 {
        bail!("no test ran");
    }
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(())
}

/// Setup, the BPF object, then the release binaries of the sockmesh package (the agent, the
/// load generator, the test peer) and of the test kit (the demo), all in target/release.
fn build_release() -> Result<PathBuf> {
    setup::run()?;
    build_ebpf()?;
    let step = Step::start("build: cargo build --release --package sockmesh --package sockmesh-testkit");
    let st = cargo(None)
        .args([
            "build",
            "--release",
            "--package",
            "sockmesh",
            "--package",
            "sockmesh-testkit",
        ])
        .status()?;
    if !st.success() {
        bail!("building the agent failed");
    }
    let dir = project_root().join("target/release");
    step.done(&format!("{}", dir.display()));
    Ok(dir)
}

fn run(args: &[String]) -> Result<()> {
    let bin = build_release()?.join("sockmesh");
    println!(
        "xtask: starting `{} run {}` (Ctrl-C stops it)",
        bin.display(),
        args.join(" ")
    );
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&bin).arg("run").args(args).exec();
    Err(err).context("exec sockmesh")
}

fn demo(args: &[String]) -> Result<()> {
    if !sockmesh_testkit::is_root() {
        bail!("cargo xtask demo needs root (network namespaces, cgroups, BPF)");
    }
    // With --json, stdout carries only the demo's summary: the set-up and build lines go to
    // stderr (fd 1 points there until the exec; println! flushes every line, nothing lingers).
    let json = args.iter().any(|a| a == "--json");
    // SAFETY: dup/dup2/close on the standard descriptors of this single-threaded process.
    let saved_stdout = json.then(|| unsafe {
        let fd = libc::dup(1);
        libc::dup2(2, 1);
        fd
    });
    let built = build_release();
    let bin = built.map(|dir| dir.join("sockmesh-demo"));
    if let Ok(bin) = &bin {
        println!("xtask: starting `{} {}`", bin.display(), args.join(" "));
    }
    if let Some(fd) = saved_stdout {
        // SAFETY: as above; `fd` is the duplicate made there.
        unsafe {
            libc::dup2(fd, 1);
            libc::close(fd);
        }
    }
    let bin = bin?;
    // exec, so that Ctrl-C reaches the demo itself and its teardown finishes in the foreground.
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(err).context("exec sockmesh-demo")
}

fn fuzz(seconds: u64) -> Result<()> {
    setup::ensure_cargo_fuzz()?;
    let fuzz_dir = project_root().join("agent/fuzz");
    let out = std::process::Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&fuzz_dir)
        .env("PATH", setup::path_with_cargo_bin())
        .output()
        .context("cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("no fuzz targets found in {}", fuzz_dir.display());
    }
    for t in &targets {
        let step = Step::start(&format!("fuzz: {t} for {seconds} s"));
        let st = std::process::Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(&fuzz_dir)
            .env("PATH", setup::path_with_cargo_bin())
            .status()?;
        if !st.success() {
            bail!("fuzz target {t} found a failure (see agent/fuzz/artifacts/{t})");
        }
        step.done("no crash");
    }
    Ok(())
}
