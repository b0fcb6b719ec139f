//! Wiring and lifecycle of the daemon: interception, listeners, admin API, graceful shutdown.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sockmesh_common::Mode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::ManagementDoor;
use crate::config::Config;
use crate::config::intercept::HEARTBEAT_INTERVAL;
use crate::control::{AppState, LogReload, MeshShared, build_mesh, register_switchers, sockets};
use crate::drain::{DRAIN_DEADLINE, Drain};
use crate::intercept::ebpf::{Heartbeat, mode_name, mount_bpffs};
use crate::intercept::iptables::Iptables;
use crate::intercept::netns::{self, NamespaceWatcher};
use crate::intercept::pins::PinDirLock;
use crate::intercept::selftest::{self, SelfTest};
use crate::intercept::{EbpfInterceptor, StartError};
use crate::proxy::budget::Budget;
use crate::proxy::http_proxy::HttpProxyServer;
use crate::proxy::mesh::{ClientHandler, MeshHandle, ServerHandler};
use crate::proxy::serve::{
    Accept, AcceptGate, AcceptProgress, AgentPeer, ConnectionLimits, Handler, Inbound, ServeStats,
    accept_loop,
};
use crate::proxy::transparent::{Stats, TransparentProxy};

/// How the binary started the daemon.
#[derive(Default)]
pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub log_reload: Option<LogReload>,
    /// A --log-level given on the command line wins over the configuration, also on reload.
    pub log_level_pinned: bool,
}

/// Probe sk_msg redirect and pick what `auto` means on this kernel.
fn kernel_selftest(allow_sockmap: bool) -> (Option<SelfTest>, Mode) {
    match selftest::run(std::path::Path::new("/sys/fs/bpf")) {
        Ok(t) if t.sockmap_safe() && !allow_sockmap => {
            tracing::info!(
                "kernel self-test: {}; auto mode = ebpf-connect (set sockmesh.intercept.auto_sockmap: true to let auto use ebpf-sockmap)",
                t.summary()
            );
            (Some(t), Mode::Connect)
        }
        Ok(t) if t.sockmap_safe() => {
            if t.failed().is_empty() {
                tracing::info!(
                    "kernel self-test passed ({}); auto mode = ebpf-sockmap",
                    t.summary()
                );
            } else {
                tracing::warn!(
                    "kernel self-test: {}; auto mode = ebpf-sockmap, but apps that use {} must be enabled with --mode ebpf-connect",
                    t.summary(),
                    t.failed().join(", ")
                );
            }
            (Some(t), Mode::Sockmap)
        }
        Ok(t) => {
            tracing::warn!(
                "kernel self-test: {}; sk_msg redirect is unsafe here, auto mode = ebpf-connect",
                t.summary()
            );
            (Some(t), Mode::Connect)
        }
        Err(e) => {
            tracing::warn!("kernel self-test could not run ({e:#}); auto mode = ebpf-connect");
            (None, Mode::Connect)
        }
    }
}

/// A data-plane listener: one socket per shard (`net::listen_group`), non-blocking.
fn bind_group(name: &str, addr: std::net::SocketAddrV4) -> Result<Vec<std::net::TcpListener>> {
    let group = crate::net::listen_group(addr.into(), crate::shard::count())
        .with_context(|| format!("binding the {name} listener on {addr}"))?;
    for l in &group {
        l.set_nonblocking(true)?;
    }
    Ok(group)
}

async fn bind(name: &str, addr: std::net::SocketAddrV4) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {name} listener on {addr}"))
}

/// Run the daemon until SIGINT/SIGTERM or an admin shutdown.
///
/// Start-up order: the pin directory's lock, then every listener bound, and only then any BPF
/// state touched (self-test, programs, pins, maps); the mesh (whose clusters connect at once)
/// last, so its connections to `sockmesh.sockmap` local legs meet the programs. A second daemon with the same pin directory
/// stops at the lock, one with another pin directory but the same ports at its first bind;
/// neither swaps programs or rewrites maps of the running one.
pub async fn run(config: Config, opts: RunOptions) -> Result<()> {
    match crate::sys::raise_nofile_limit() {
        Ok((old, new)) if old != new => tracing::info!("open file limit raised from {old} to {new}"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let drain = Drain::new();
    let (shutdown, tasks) = (drain.token(), drain.tracker());
    let mut listeners = Vec::new();

    let pin_dir = config.sockmesh.intercept.pin_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || PinDirLock::acquire(&pin_dir)).await??;

    let mesh_shared = MeshShared::new(&config);
    register_switchers(&config, &mesh_shared.filters);
    crate::observe::start_access_log(&config, &mesh_shared.filters);
    // The mesh itself is built once interception is up: its clusters connect at once (warm
    // endpoints), and a `sockmesh.sockmap` local leg joins the sockhash only when it is
    // established after the programs know its port.
    // The default export port listens even with nothing exported yet (server role ready; a
    // reload can add services on it).
    let mut export_ports: Vec<u16> = crate::control::export_ports(&config, &mesh_shared)?
        .into_iter()
        .collect();
    if !export_ports.contains(&config.agent.eport) {
        export_ports.insert(0, config.agent.eport);
    }
    // motan-go's unixSock: the agent port listens on the Unix socket instead of TCP. Mode 0666:
    // any local app may call the mesh, as any local app reaches a loopback port.
    let agent = match &config.process.unix_sock {
        Some(path) => AgentListener::Unix(crate::unix_socket::bind(
            path,
            0o666,
            "agent socket",
            "motan-agent.unixSock",
        )?),
        None => AgentListener::Tcp(bind_group("agent", config.agent_addr())?),
    };
    let mut exports = Vec::new();
    for port in &export_ports {
        exports.push((*port, bind_group("export", config.export_addr(*port))?));
    }
    // The transparent listeners (IPv4 and IPv6) listen from here on, so their addresses are the
    // agent's; the kernel programs redirect to them only once they carry the agent's mark
    // (`ready` below, when they are served): until then intercepted apps fail open.
    let transparent = sockets(&config)
        .bind_listeners(&config.intercept_settings().listeners())
        .await?;
    // The hport forward proxy's listener (served once the mesh handle exists, below).
    let hport = if config.mesh.http_proxy.enabled {
        let addr = config.http_proxy_addr();
        Some((addr, bind("hport", addr).await?))
    } else {
        None
    };
    // motan-go's managementUnixSock: the admin API on the Unix socket instead of mport. Mode
    // 0666: callers other than root get what the TCP port gives them (access.rs).
    let admin = match &config.process.management_unix_sock {
        Some(path) => {
            let (l, f) =
                crate::unix_socket::bind(path, 0o666, "management socket", "motan-agent.managementUnixSock")?;
            ManagementDoor::Unix(l, f)
        }
        None => ManagementDoor::Tcp(bind("admin", config.admin_addr()).await?),
    };
    // The control socket is a listener too: a second daemon with the same socket stops here.
    let admin_cfg = &config.sockmesh.admin;
    let control_group = match &admin_cfg.control_group {
        Some(g) => Some(
            crate::config::admin::resolve_group(g)
                .map_err(|m| anyhow::anyhow!("sockmesh.admin.control_group: {m}"))?,
        ),
        None => None,
    };
    let control = crate::admin::control_socket::bind(&admin_cfg.control_socket, control_group)?;

    // Interception next: the self-test decides what `auto` means.
    let (mut interceptor, intercept_error, test, auto_mode) = if config.sockmesh.intercept.enabled {
        let allow = config.sockmesh.intercept.auto_sockmap;
        let settings = config.intercept_settings();
        // Blocking work, off the runtime's workers; what it parsed (kernel BTF, the object, the
        // self-test's buffers) is freed at its end and handed back to the kernel.
        let (test, auto_mode, started) = tokio::task::spawn_blocking(move || {
            // The self-test pins under /sys/fs/bpf too.
            if let Err(e) = mount_bpffs(&settings.pin_dir) {
                tracing::warn!("{e:#}");
            }
            let (test, auto_mode) = kernel_selftest(allow);
            let started = EbpfInterceptor::start(settings);
            crate::sys::release_free_memory();
            (test, auto_mode, started)
        })
        .await?;
        match started {
            Ok(i) => (Some(i), None, test, auto_mode),
            Err(StartError::Refused(e)) => {
                return Err(e.context("refusing to use the pinned interception state"));
            }
            Err(StartError::Unavailable(e)) => {
                tracing::error!("eBPF interception unavailable: {e:#}");
                (None, Some(format!("{e:#}")), test, auto_mode)
            }
        }
    } else {
        (
            None,
            Some("sockmesh.intercept.enabled is false".to_string()),
            None,
            Mode::Connect,
        )
    };
    if let Some(logger) = interceptor.as_mut().and_then(|i| i.take_logger()) {
        tasks.spawn(forward_bpf_logs(logger, shutdown.clone()));
    }

    let mesh = build_mesh(&config, None, &mesh_shared)?;
    for p in mesh.exporter.ports().iter().filter(|p| !export_ports.contains(p)) {
        tracing::warn!(
            port = p,
            "export port not bound at start; its exports are not served"
        );
    }
    let mesh: MeshHandle = Arc::new(arc_swap::ArcSwap::from_pointee(mesh));
    let agent_stats = Arc::new(ServeStats::default());
    let export_stats = Arc::new(ServeStats::default());
    let budget = Budget::new(config.sockmesh.limits);
    mesh_shared.filters.registry.register(
        "overload_rejected",
        "Requests refused with a 503 exception because the agent was over its sockmesh.limits budget",
        budget.rejected.clone(),
    );
    let loops = AcceptLoops {
        limits: ConnectionLimits {
            decode: crate::protocol::motan2::DecodeLimits::default(),
            budget: budget.clone(),
            drained_reads: false,
        },
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    };
    let client = Arc::new(ClientHandler(mesh.clone()));
    match agent {
        AgentListener::Tcp(l) => {
            listeners.push(("agent".to_string(), config.agent_addr().to_string()));
            // Apps' connections to the agent port are never in the sockhash (intercepted ones
            // arrive on the transparent listeners).
            loops.spawn_group("agent", l, true, client, agent_stats.clone());
        }
        AgentListener::Unix((l, file)) => {
            listeners.push(("agent".to_string(), format!("unix://{}", file.path().display())));
            loops.spawn("agent", l, true, client, agent_stats.clone(), file);
        }
    }
    mesh_shared.shortcut.attach(&mesh);
    for (port, l) in exports {
        listeners.push((format!("export:{port}"), config.export_addr(port).to_string()));
        let handler = Arc::new(ServerHandler {
            mesh: mesh.clone(),
            port,
        });
        // An export port's connections may join the sockhash (`sockmesh.sockmap`, also after a
        // reload) whenever the BPF programs run.
        let drained = !config.sockmesh.intercept.enabled;
        loops.spawn_group("export", l, drained, handler, export_stats.clone());
    }

    // Listeners are bound first: a refer may point at this agent's own export port.
    mesh.load().wait_ready(config.process.init_cluster_timeout).await;
    // Server role: exports are registered unavailable until /200 (4.15), unless -recover
    // finds a saved 200.
    let online = crate::control::recovered_status(&config.process);
    mesh.load().register(online).await;

    let stats = Arc::new(Stats::default());
    let proxy = Arc::new(TransparentProxy {
        stats: stats.clone(),
        mesh: Some((mesh.clone(), agent_stats.clone())),
        sniff_timeout: Duration::from_millis(config.sockmesh.sniff_timeout_ms),
        budget: budget.clone(),
        shutdown: shutdown.clone(),
    });
    // Whether the transparent listeners keep up: the heartbeat stops while one does not.
    let mut accept_progress = Vec::new();
    for l in transparent {
        listeners.push(("transparent".to_string(), l.addr().to_string()));
        // One socket per shard, each accepted on its shard, sharing the listener's cap.
        let gate = AcceptGate::new(&budget);
        serve_group("transparent", l.ready()?, tasks, || {
            let progress = Arc::new(AcceptProgress::default());
            accept_progress.push(progress.clone());
            let gate = gate.sibling().watched_by(Some(progress));
            let (proxy, shutdown, t, sockets) =
                (proxy.clone(), shutdown.clone(), tasks.clone(), sockets(&config));
            move |listener| proxy.run_watched(listener, gate, shutdown, t, sockets)
        });
    }
    // Stuck-agent fail-open: a task on the main runtime keeps the heartbeat fresh while every
    // data-plane shard runs and the transparent listeners keep up; a stopped process, a stalled
    // runtime or shard, or a listener that cannot accept lets it go stale, and apps connect
    // directly.
    if let Some(heartbeat) = interceptor.as_mut().and_then(|i| i.take_heartbeat()) {
        tasks.spawn(keep_heartbeat(heartbeat, accept_progress, shutdown.clone()));
    }

    // The hport forward proxy (motan-go's httpProxyEnable; bound at start with the other
    // listeners, a reload reports a changed port as needing a restart).
    if let Some((addr, l)) = hport {
        listeners.push(("hport".to_string(), addr.to_string()));
        let server = Arc::new(HttpProxyServer::new(
            mesh.clone(),
            sockets(&config),
            addr.port(),
            budget.clone(),
        ));
        tasks.spawn(server.run(l, shutdown.clone(), tasks.clone()));
    }

    let admin_addr = match &config.process.management_unix_sock {
        Some(p) => format!("unix://{}", p.display()),
        None => config.admin_addr().to_string(),
    };
    listeners.push(("admin".to_string(), admin_addr));
    listeners.push((
        "control".to_string(),
        admin_cfg.control_socket.display().to_string(),
    ));

    let state = Arc::new(AppState {
        started: Instant::now(),
        online: AtomicBool::new(online),
        config: RwLock::new(config.clone()),
        config_path: opts.config_path,
        log_reload: opts.log_reload,
        log_level_pinned: opts.log_level_pinned,
        interceptor: Mutex::new(interceptor),
        iptables: Mutex::new(Iptables::new(
            &config.sockmesh.intercept.iptables_chain,
            config.intercept_settings(),
        )?),
        intercept_error,
        selftest: test,
        auto_mode: RwLock::new(auto_mode),
        proxy_stats: stats,
        listeners: listeners.clone(),
        netns_listeners: Mutex::new(Vec::new()),
        shutdown: shutdown.clone(),
        mesh,
        mesh_shared,
        agent_stats,
        export_stats,
        export_ports,
    });
    if state.intercept_error.is_none() {
        let (s, r) = (state.clone(), state.clone());
        let watcher = NamespaceWatcher {
            cgroups: Box::new(move || s.interceptor.lock().unwrap().as_ref().map(netns::enabled_cgroups)),
            listen: config.intercept_settings().listeners().to_vec(),
            sockets: sockets(&config),
            proxy,
            report: Box::new(move |netns| *r.netns_listeners.lock().unwrap() = netns),
            max_listeners: config.sockmesh.intercept.max_netns_listeners,
        };
        tasks.spawn(watcher.run(shutdown.clone(), tasks.clone()));
        tasks.spawn(forget_removed_cgroups(state.clone(), shutdown.clone()));
    }
    crate::admin::state_metrics::register(&state);
    crate::observe::start_graphite(&config, &state, shutdown.clone(), tasks);
    let access = crate::admin::access::Access::new(
        state.clone(),
        control_group,
        config.sockmesh.admin.control_socket.clone(),
    );
    tasks.spawn(crate::admin::serve(
        admin,
        control,
        access,
        config.sockmesh.limits,
        shutdown.clone(),
    ));

    for (name, addr) in &listeners {
        tracing::info!(listener = %name, %addr, "listening");
    }
    if state.intercept_error.is_none() {
        tracing::info!(
            "interception ready (auto = {}); enable it for a cgroup with: sockmesh intercept enable --cgroup <PATH relative to {}> [--mode auto|ebpf-connect|ebpf-sockmap]",
            mode_name(auto_mode),
            crate::cgroup::cgroup2_mount()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    } else {
        tracing::warn!("running without interception: apps can still use the agent on purpose");
    }

    let _pidfile = config.process.pidfile.as_deref().and_then(PidFile::write);
    wait_for_signal(&state).await;
    // Callers stop choosing this agent's exports first (ephemeral nodes would go with the
    // session anyway).
    state.mesh.load().unregister(None).await;
    tracing::info!("shutting down: no new connections; in-flight ones get {DRAIN_DEADLINE:?}");
    drain.signal();
    if !drain.drained(DRAIN_DEADLINE).await {
        tracing::warn!("drain deadline passed with connections still open; closing them");
    }
    // Access lines of the last answered requests, before the log writer's final flush.
    state.mesh_shared.filters.access_log.flush();
    // Pinned interception stays attached; while no listener exists, apps connect directly.
    tracing::info!("stopped; interception stays pinned and fails open until the agent is back");
    Ok(())
}

async fn wait_for_signal(state: &AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return }
            _ = int.recv() => { tracing::info!("SIGINT received"); return }
            _ = state.shutdown.cancelled() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                // Errors are logged by reload itself; the running configuration stays.
                let _ = state.reload().await;
            }
        }
    }
}

/// How often deleted cgroups are looked for.
const CGROUP_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Drop the interception state of cgroups that were deleted (their policy entry and links), so
/// cgroup churn leaves nothing behind.
async fn forget_removed_cgroups(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CGROUP_SWEEP_PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = state.clone();
        let swept = tokio::task::spawn_blocking(move || {
            s.interceptor
                .lock()
                .unwrap()
                .as_mut()
                .map(|i| i.forget_removed_cgroups())
        })
        .await;
        match swept {
            Ok(None) => return,
            Ok(Some(Err(e))) => tracing::debug!("looking for deleted cgroups: {e:#}"),
            _ => {}
        }
    }
}

/// A shard that has not ticked (every 100 ms) for this long is stalled.
const SHARD_STALL: Duration = Duration::from_millis(500);

/// Refresh the kernel's view of the agent's liveness every `HEARTBEAT_INTERVAL` while every
/// transparent listener keeps up and every data-plane shard runs, until shutdown (then the
/// listeners close, and a missing listener fails open as before).
async fn keep_heartbeat(
    mut heartbeat: Heartbeat,
    listeners: Vec<Arc<AcceptProgress>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // Since when a listener has been behind, and whether that was logged (after a second, so
    // that a listener brushing its cap now and then does not fill the log).
    let mut behind: Option<(Instant, bool)> = None;
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A listener at its connection cap or failing to accept: new connections would wait in
        // its backlog, so no heartbeat; after liveness_timeout_ms apps connect directly.
        if listeners.iter().any(|p| p.is_behind()) {
            let (since, logged) = behind.get_or_insert((Instant::now(), false));
            if !*logged && since.elapsed() >= Duration::from_secs(1) {
                *logged = true;
                tracing::warn!(
                    "a transparent listener cannot accept (connection cap or accept errors): heartbeat paused, apps connect directly after sockmesh.intercept.liveness_timeout_ms"
                );
            }
            continue;
        }
        if let Some((_, true)) = behind.take() {
            tracing::info!("the transparent listeners accept again: heartbeat resumed");
        }
        // A data-plane shard that has not run for a while serves nobody it was handed.
        let stall = crate::shard::longest_stall();
        if stall >= SHARD_STALL {
            if !stalled {
                stalled = true;
                tracing::warn!(
                    "a data-plane shard has not run for {} ms: heartbeat paused, apps connect directly after sockmesh.intercept.liveness_timeout_ms",
                    stall.as_millis()
                );
            }
            continue;
        }
        if std::mem::take(&mut stalled) {
            tracing::info!("the data-plane shards run again: heartbeat resumed");
        }
        match heartbeat.beat() {
            Ok(()) => failing = false,
            // Logged once per run of failures: apps fail open while it lasts.
            Err(e) if !failing => {
                failing = true;
                tracing::error!("{e:#}: apps fail open once the liveness timeout passes");
            }
            Err(_) => {}
        }
    }
}

/// aya-log records from the kernel programs go through `log` into tracing.
async fn forward_bpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>, shutdown: CancellationToken) {
    // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd holds the logger.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("BPF log forwarding unavailable: {}", e.into_parts().1);
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            _ = shutdown.cancelled() => return,
            g = fd.readable_mut() => match g { Ok(g) => g, Err(_) => return },
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// What the accept loops of the Motan2 listeners (agent port, export ports) share.
struct AcceptLoops {
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl AcceptLoops {
    /// The limits of a listener's connections (`ConnectionLimits::drained_reads`).
    fn limits(&self, drained_reads: bool) -> ConnectionLimits {
        ConnectionLimits {
            drained_reads,
            ..self.limits.clone()
        }
    }

    /// `listener`'s accept loop as a tracked task. `keep` lives as long as the loop: the agent
    /// socket's file goes when its listener stops (at shutdown).
    fn spawn<H: Handler, L>(
        &self,
        name: &'static str,
        listener: L,
        drained_reads: bool,
        handler: Arc<H>,
        stats: Arc<ServeStats>,
        keep: impl Send + 'static,
    ) where
        L: Accept + Send + Sync + 'static,
        L::Conn: Inbound + crate::shard::Rehome,
        L::Addr: AgentPeer + Send,
    {
        let serving = accept_loop(
            name,
            listener,
            AcceptGate::new(&self.limits.budget),
            handler,
            self.limits(drained_reads),
            stats,
            self.shutdown.clone(),
            self.tasks.clone(),
        );
        self.tasks.spawn(async move {
            serving.await;
            drop(keep);
        });
    }

    /// The accept loops of a listener group (`bind_group`), one on each shard, sharing the
    /// listener's connection cap.
    fn spawn_group<H: Handler>(
        &self,
        name: &'static str,
        group: Vec<std::net::TcpListener>,
        drained_reads: bool,
        handler: Arc<H>,
        stats: Arc<ServeStats>,
    ) {
        let gate = AcceptGate::new(&self.limits.budget);
        serve_group(name, group, &self.tasks, || {
            let (gate, handler, limits, stats) = (
                gate.sibling(),
                handler.clone(),
                self.limits(drained_reads),
                stats.clone(),
            );
            let (shutdown, tasks) = (self.shutdown.clone(), self.tasks.clone());
            move |listener| accept_loop(name, listener, gate, handler, limits, stats, shutdown, tasks)
        });
    }
}

/// An accept loop for each socket of a listener group (`net::listen_group`), made by `make`
/// and tracked by `tasks`: on its shard when each shard has a socket, on the current runtime
/// when the group is one socket (`shard::spawn_accept`). The socket is registered with the
/// reactor of the runtime that runs its loop.
fn serve_group<F, G, Fut>(
    name: &'static str,
    group: Vec<std::net::TcpListener>,
    tasks: &TaskTracker,
    mut make: F,
) where
    F: FnMut() -> G,
    G: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let n = group.len();
    for (k, socket) in group.into_iter().enumerate() {
        let serve = make();
        let serving = async move {
            match TcpListener::from_std(socket) {
                Ok(l) => serve(l).await,
                Err(e) => tracing::error!("a {name} listener socket is not served (shard {k}): {e}"),
            }
        };
        crate::shard::spawn_accept(k, n, tasks.track_future(serving));
    }
}

/// The agent port: TCP, or motan-go's `unixSock` instead.
enum AgentListener {
    Tcp(Vec<std::net::TcpListener>),
    Unix((tokio::net::UnixListener, crate::unix_socket::SocketFile)),
}

/// motan-go's `pidfile`: this process's PID, removed at a clean exit.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Option<PidFile> {
        match std::fs::write(path, std::process::id().to_string()) {
            Ok(()) => Some(PidFile(path.to_path_buf())),
            Err(e) => {
                tracing::error!("cannot write the pidfile {}: {e}", path.display());
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
