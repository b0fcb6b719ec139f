//! The `sockmesh` command: the daemon and its control CLI.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use sockmesh::admin::client::AdminTarget;
use sockmesh::config::admin::DEFAULT_CONTROL_SOCKET;
use sockmesh::config::launch::{LaunchOptions, normalize_args};
use sockmesh::config::{Config, RequestedMode};

#[derive(Parser)]
#[command(
    name = "sockmesh",
    version,
    about = "Motan2 service-mesh node agent with eBPF socket interception"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// Control socket of the running daemon (its whole admin API; root and
    /// sockmesh.admin.control_group only).
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET, env = "SOCKMESH_CONTROL")]
    control: PathBuf,
    /// Use the daemon's TCP admin port at ADDR instead of the control socket: reads only, plus
    /// the mutations its sockmesh.admin.tcp_mutations enables.
    #[arg(long, global = true, env = "SOCKMESH_ADMIN")]
    admin: Option<SocketAddr>,
}

impl AdminArgs {
    fn target(&self) -> AdminTarget {
        match self.admin {
            Some(a) => AdminTarget::Tcp(a),
            None => AdminTarget::Socket(self.control.clone()),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// Configuration file (motan-go YAML layout), or a directory (pool mode); the embedded
        /// default when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log level or filter (overrides sockmesh.log_level), e.g. debug or sockmesh=trace.
        #[arg(long)]
        log_level: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
        #[command(flatten)]
        motan: MotanFlags,
    },
    /// Probe this kernel for everything interception needs.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Control interception through the running daemon.
    #[command(subcommand)]
    Intercept(InterceptCmd),
    /// Summary of the running daemon (large clusters by their counts and unavailable
    /// endpoints; `--cluster NAME` lists every endpoint of one cluster).
    Status {
        #[arg(long)]
        json: bool,
        /// List every endpoint of this cluster (the `name` of a refer), page by page.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Re-read the daemon's configuration (like SIGHUP); a bad one is refused with its errors.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Install binary, configuration and systemd unit; start it when systemd runs.
    Install {
        /// Configuration to install (default: keep an installed one, else the embedded default).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Install below this directory instead of / (packaging, tests).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Stop the daemon, remove every pinned program link and map, the iptables chain, the unit
    /// and the installed files. Only what the arguments name: none (or --root) means the
    /// installation, with the daemon, pins and chain its installed configuration names;
    /// --pin-dir or --iptables-chain alone remove just that.
    Uninstall {
        /// The installation under this directory (the one given to `install --root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Only the pins under this bpffs directory (refused while a daemon uses it).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Only this iptables nat chain.
        #[arg(long)]
        iptables_chain: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a configuration file (or pool directory) and report every problem.
    Validate {
        file: PathBuf,
        #[command(flatten)]
        motan: MotanFlags,
    },
    /// Print the embedded default configuration.
    ShowDefault,
}

#[derive(Subcommand)]
enum InterceptCmd {
    /// Intercept TCP connections made by processes in a cgroup (and its descendants).
    Enable {
        /// cgroup path relative to the cgroup v2 mount, e.g. /apps/web.
        #[arg(long)]
        cgroup: String,
        /// auto, ebpf-connect, ebpf-sockmap or iptables (default: sockmesh.intercept.default_mode).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<RequestedMode>,
        /// Allow the cgroup root `/`: every process on the host would be intercepted.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop intercepting a cgroup, or all of them.
    Disable {
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        cgroup: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Intercepted cgroups, their modes and counters.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// motan-go's agent flags, as its init scripts pass them (one dash works: see
/// `normalize_args`); each has the effect of its `motan-agent` key and wins over it.
#[derive(Args, Clone, Default)]
struct MotanFlags {
    /// Pool mode: the pool name (`app-idc-level`); pools/<app>.yaml, pools/<app-idc>.yaml ...
    #[arg(long)]
    pool: Option<String>,
    /// Pool mode: the application file (default: the pool's first part); also
    /// motan-agent.application when the configuration sets none.
    #[arg(long)]
    application: Option<String>,
    /// The IDC: `${idc}` in refer groups is tried as it (as given, lower, upper case) first.
    #[arg(long)]
    idc: Option<String>,
    /// motan-agent.localIP: the IP exports are registered with.
    #[arg(long = "localIP")]
    local_ip: Option<String>,
    /// motan-agent.port (agent port).
    #[arg(long)]
    port: Option<u16>,
    /// motan-agent.mport (admin port).
    #[arg(long)]
    mport: Option<u16>,
    /// motan-agent.eport (default export port).
    #[arg(long)]
    eport: Option<u16>,
    /// motan-agent.hport (HTTP forward proxy port).
    #[arg(long)]
    hport: Option<u16>,
    /// Start with the 200/503 status saved in motan-agent.runtime_dir (instead of 503);
    /// `-recover=false` as Go's flags take it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    recover: Option<bool>,
    /// motan-agent.pidfile.
    #[arg(long)]
    pidfile: Option<PathBuf>,
}

impl MotanFlags {
    fn launch(self, config: Option<PathBuf>) -> LaunchOptions {
        LaunchOptions {
            config,
            pool: self.pool,
            application: self.application,
            idc: self.idc,
            local_ip: self.local_ip,
            port: self.port,
            mport: self.mport,
            eport: self.eport,
            hport: self.hport,
            recover: self.recover.unwrap_or(false),
            pidfile: self.pidfile,
        }
    }
}

fn go_bool(s: &str) -> Result<bool, String> {
    sockmesh::url::parse_go_bool(s).ok_or_else(|| format!("{s:?} is not a boolean (true or false)"))
}

fn parse_mode(s: &str) -> Result<RequestedMode, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockmesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set up tracing; returns a function that swaps the log filter of the running process, and the
/// guard that flushes the log writer when dropped (keep it until the daemon ends).
fn init_logging(
    filter: &str,
    json: bool,
) -> Result<(sockmesh::control::LogReload, sockmesh::log_writer::FlushGuard)> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad log level {filter:?}"))?;
    // Logs go to stderr; colours only on a terminal, so log files and journald stay greppable.
    // Lines are buffered and written in batches (see log_writer.rs); warnings at once.
    let (writer, guard) = sockmesh::log_writer::LogWriter::stderr();
    let ansi = std::io::stderr().is_terminal();
    if !ansi {
        // Access lines (one per request and role) are formatted by the filter's writer thread in
        // this subscriber's format, without tracing's per-field machinery.
        sockmesh::filter::access_log::write_directly(writer.clone(), json);
    }
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer)
        .with_ansi(ansi);
    let parse =
        |f: &str| tracing_subscriber::EnvFilter::try_new(f).with_context(|| format!("bad log level {f:?}"));
    // aya-log (kernel program logs) speaks `log`; it is routed into tracing below.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let recent = sockmesh::recent::RecentErrors;
    let reload: sockmesh::control::LogReload = if json {
        let b = base.json().with_filter_reloading();
        let h = b.reload_handle();
        b.finish().with(recent).init();
        Box::new(move |f| {
            h.reload(parse(f)?)
                .map_err(|e| anyhow::anyhow!("changing the log level: {e}"))
        })
    } else {
        let b = base.with_filter_reloading();
        let h = b.reload_handle();
        b.finish().with(recent).init();
        Box::new(move |f| {
            h.reload(parse(f)?)
                .map_err(|e| anyhow::anyhow!("changing the log level: {e}"))
        })
    };
    let _ = tracing_log::LogTracer::init();
    Ok((reload, guard))
}

fn query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Call the admin API; non-2xx answers become errors carrying the daemon's message.
fn admin_call(admin: &AdminArgs, method: &str, path: &str) -> Result<serde_json::Value> {
    let (code, body) = admin.target().request(method, path)?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if !(200..300).contains(&code) {
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or(&body)
            .to_string();
        bail!("{msg}");
    }
    Ok(v)
}

/// One cluster's status and all its endpoints, fetched page by page from `/status?cluster=`.
fn cluster_endpoints(admin: &AdminArgs, name: &str) -> Result<(serde_json::Value, Vec<serde_json::Value>)> {
    let mut endpoints = Vec::new();
    let mut offset = 0;
    loop {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("cluster", name)
            .append_pair("offset", &offset.to_string())
            .finish();
        let mut v = admin_call(admin, "GET", &format!("/sockmesh/status?{query}"))?;
        let mut c = v["mesh"]["clusters"][0].take();
        endpoints.extend(
            c["endpoints"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default(),
        );
        match c["page"]["next_offset"].as_u64() {
            Some(next) if next as usize > offset => offset = next as usize,
            _ => return Ok((c, endpoints)),
        }
    }
}

/// A cluster's line of `sockmesh status`; `listed` endpoints follow it.
fn print_cluster(c: &serde_json::Value, listed: usize) {
    let total = c["endpoint_count"].as_u64().unwrap_or(0) as usize;
    println!(
        "  cluster {:<20} {} group {} ({}, {}): {}/{} endpoints available{}",
        c["name"].as_str().unwrap_or("?"),
        c["service"].as_str().unwrap_or("?"),
        c["group"].as_str().unwrap_or("?"),
        c["ha"].as_str().unwrap_or("?"),
        c["loadbalance"].as_str().unwrap_or("?"),
        c["available_endpoints"],
        total,
        if c["degraded"].as_bool() == Some(true) {
            ", DEGRADED"
        } else {
            ""
        }
    );
    if listed < total {
        let which = match c["endpoints_listed"].as_str() {
            Some("unavailable") => "only unavailable ones are listed",
            _ => "listed",
        };
        println!(
            "    ({listed} of {total}: {which}; `sockmesh status --cluster {}` lists all)",
            c["name"].as_str().unwrap_or("?")
        );
    }
}

fn print_endpoint(e: &serde_json::Value) {
    println!(
        "    {:<24} {:<11} errors {} active {} channels {}",
        e["address"].as_str().unwrap_or("?"),
        if e["available"].as_bool() == Some(true) {
            "available"
        } else {
            "UNAVAILABLE"
        },
        e["consecutive_errors"],
        e["active"],
        e["channels"]
    );
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run {
            config,
            log_level,
            log_json,
            motan,
        } => {
            let cfg = Config::launch(&motan.launch(config.clone())).map_err(|e| anyhow::anyhow!("{e}"))?;
            // Before the logging thread and the runtime's threads make arenas of their own.
            let workers = match cfg.sockmesh.worker_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            sockmesh::sys::tune_malloc(workers);
            let (log_reload, _log_flush) =
                init_logging(log_level.as_deref().unwrap_or(&cfg.sockmesh.log_level), log_json)?;
            tracing::info!(config = %cfg.source, version = env!("CARGO_PKG_VERSION"), "sockmesh starting");
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if cfg.sockmesh.worker_threads > 0 {
                rt.worker_threads(cfg.sockmesh.worker_threads);
            }
            let rt = rt.enable_all().build()?;
            let opts = sockmesh::app::RunOptions {
                config_path: config.clone(),
                log_reload: Some(log_reload),
                log_level_pinned: log_level.is_some(),
            };
            if cfg.sockmesh.shards {
                sockmesh::shard::start(workers, cfg.sockmesh.shard_policy)
                    .context("starting the data-plane shards")?;
            }
            let ran = rt.block_on(sockmesh::app::run(cfg, opts));
            // The runtime first (its tasks are drained by now), then the shards' threads.
            drop(rt);
            sockmesh::shard::stop();
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { json } => {
            let report = sockmesh::check::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print();
            }
            Ok(if report.full_ebpf {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Config(ConfigCmd::Validate { file, motan }) => match Config::launch(&motan.launch(Some(file))) {
            Ok(c) => {
                println!(
                    "{}: ok ({} motan section(s), admin {} and {}, transparent listener {})",
                    c.source,
                    c.motan.len(),
                    c.admin_addr(),
                    c.sockmesh.admin.control_socket.display(),
                    c.transparent_addr()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprint!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Config(ConfigCmd::ShowDefault) => {
            print!("{}", sockmesh::config::EMBEDDED_DEFAULT);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Intercept(InterceptCmd::Enable {
            cgroup,
            mode,
            force,
            admin,
        }) => {
            let mut path = format!("/intercept/enable?cgroup={}", query(&cgroup));
            if let Some(m) = mode {
                path.push_str(&format!("&mode={}", m.name()));
            }
            if force {
                path.push_str("&force=true");
            }
            let v = admin_call(&admin, "POST", &path)?;
            println!(
                "intercepting {} (mode {})",
                v["cgroup"].as_str().unwrap_or(&cgroup),
                v["mode"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Intercept(InterceptCmd::Disable { cgroup, all, admin }) => {
            let path = if all {
                "/intercept/disable?all=true".to_string()
            } else {
                format!(
                    "/intercept/disable?cgroup={}",
                    query(cgroup.as_deref().unwrap_or(""))
                )
            };
            let v = admin_call(&admin, "POST", &path)?;
            println!("disabled interception for {} cgroup(s)", v["disabled"]);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Intercept(InterceptCmd::Status { json, admin }) => {
            let v = admin_call(&admin, "GET", "/intercept/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "auto mode: {}   transparent listener: {}",
                    v["auto_mode"].as_str().unwrap_or("?"),
                    v["transparent_listener"].as_str().unwrap_or("?")
                );
                println!(
                    "{:<32} {:<14} {:>10} {:>10} {:>10} {:>8}",
                    "CGROUP", "MODE", "REDIRECTED", "PASSED", "FAIL-OPEN", "STALLED"
                );
                for c in v["cgroups"].as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:<14} {:>10} {:>10} {:>10} {:>8}",
                        c["cgroup"].as_str().unwrap_or("?"),
                        c["mode"].as_str().unwrap_or("?"),
                        c["redirected"].as_u64().unwrap_or(0),
                        c["passed"].as_u64().unwrap_or(0),
                        c["fail_open"].as_u64().unwrap_or(0),
                        c["fail_open_stalled"].as_u64().unwrap_or(0)
                    );
                }
                let h = &v["sockhash"];
                if h.is_object() {
                    let n = |k: &str| h[k].as_u64().unwrap_or(0);
                    println!(
                        "sockhash: local-leg ports {}   sockets app {} local {}   sk_msg redirected {} msgs / {} bytes, passed {}, insert failures {}",
                        h["local_ports"],
                        n("app_leg_sockets"),
                        n("local_leg_sockets"),
                        n("msg_redirected"),
                        n("bytes_redirected"),
                        n("msg_passed"),
                        n("insert_failed")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload { admin } => {
            let v = admin_call(&admin, "POST", "/reload")?;
            println!("reloaded {}", v["source"].as_str().unwrap_or("?"));
            for k in v["applied"].as_array().into_iter().flatten() {
                println!("  applied: {}", k.as_str().unwrap_or("?"));
            }
            for k in v["needs_restart"].as_array().into_iter().flatten() {
                println!("  needs a restart: {}", k.as_str().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status {
            json,
            cluster: Some(name),
            admin,
        } => {
            let (cluster, endpoints) = cluster_endpoints(&admin, &name)?;
            if json {
                let mut c = cluster;
                c["endpoints"] = serde_json::Value::Array(endpoints);
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_cluster(&cluster, endpoints.len());
                endpoints.iter().for_each(print_endpoint);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status {
            json,
            cluster: None,
            admin,
        } => {
            let v = admin_call(&admin, "GET", "/sockmesh/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "sockmesh {}  up {} s  status {}",
                    v["version"].as_str().unwrap_or("?"),
                    v["uptime_seconds"],
                    v["status"]
                );
                for l in v["listeners"].as_array().into_iter().flatten() {
                    println!(
                        "  listener {:<12} {}",
                        l["name"].as_str().unwrap_or("?"),
                        l["address"].as_str().unwrap_or("?")
                    );
                }
                let i = &v["intercept"];
                if i["available"].as_bool() == Some(true) {
                    println!(
                        "  interception: eBPF available, auto = {}, {} cgroup(s)",
                        i["auto_mode"].as_str().unwrap_or("?"),
                        i["cgroups"].as_array().map_or(0, |a| a.len())
                    );
                } else {
                    println!(
                        "  interception: eBPF unavailable: {}",
                        i["error"].as_str().unwrap_or("?")
                    );
                }
                for c in i["cgroups"].as_array().into_iter().flatten() {
                    println!(
                        "    {:<30} {:<13} redirected {} passed {} fail-open {}",
                        c["cgroup"].as_str().unwrap_or("?"),
                        c["mode"].as_str().unwrap_or("?"),
                        c["redirected"],
                        c["passed"],
                        c["fail_open"]
                    );
                }
                let mesh = &v["mesh"];
                for c in mesh["clusters"].as_array().into_iter().flatten() {
                    print_cluster(c, c["endpoints"].as_array().map_or(0, |a| a.len()));
                    c["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .for_each(print_endpoint);
                }
                for r in mesh["registries"].as_array().into_iter().flatten() {
                    let state = match (r["protocol"].as_str(), r["connected"].as_bool()) {
                        (Some("zookeeper"), Some(true)) => "connected".to_string(),
                        (Some("zookeeper"), _) => match r["serving_from_snapshot_since"].as_u64() {
                            Some(t) => format!("DISCONNECTED, serving from the snapshot since {t} (unix s)"),
                            None => "DISCONNECTED".to_string(),
                        },
                        _ => "static".to_string(),
                    };
                    println!(
                        "  registry {:<19} {} {}",
                        r["name"].as_str().unwrap_or("?"),
                        r["protocol"].as_str().unwrap_or("?"),
                        state
                    );
                }
                for e in mesh["exports"].as_array().into_iter().flatten() {
                    println!(
                        "  export  {:<20} {} group {} on port {} -> {} {}",
                        e["name"].as_str().unwrap_or("?"),
                        e["service"].as_str().unwrap_or("?"),
                        e["group"].as_str().unwrap_or("?"),
                        e["port"],
                        e["provider"]["type"].as_str().unwrap_or("?"),
                        e["provider"]["address"].as_str().unwrap_or("")
                    );
                }
                let a = &v["agent_port"];
                println!(
                    "  agent port: {} connections ({} open), {} requests, {} heartbeats, {} bad frames",
                    a["connections"],
                    a["active_connections"],
                    a["requests"],
                    a["heartbeats"],
                    a["bad_frames"]
                );
                let errors = v["recent_errors"].as_array().cloned().unwrap_or_default();
                if errors.is_empty() {
                    println!("  recent errors: none");
                } else {
                    println!("  recent errors (last {}):", errors.len());
                    for e in errors.iter().rev().take(5) {
                        println!(
                            "    {} {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("?")
                        );
                    }
                }
                let p = &v["transparent_proxy"];
                println!(
                    "  transparent proxy: {} accepted, {} active, {} upstream errors",
                    p["accepted"], p["active"], p["upstream_errors"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Install { config, root } => {
            for line in sockmesh::install::install(&sockmesh::install::Layout::new(root), config.as_deref())?
            {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Uninstall {
            root,
            pin_dir,
            iptables_chain,
        } => {
            let whole = root.is_some() || (pin_dir.is_none() && iptables_chain.is_none());
            let scope = sockmesh::install::UninstallScope {
                install: whole.then(|| sockmesh::install::Layout::new(root)),
                pin_dirs: pin_dir.into_iter().collect(),
                chains: iptables_chain.into_iter().collect(),
            };
            sockmesh::install::uninstall(&scope, &mut |line| println!("{line}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
