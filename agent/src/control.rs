//! The agent's control state: what the admin API, `/metrics` and the signal handlers read and
//! change — the running configuration and its reload, interception control per cgroup, the
//! mesh handle, listener statistics and the typed status. The daemon's wiring (`app`) creates
//! it once.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};
use sockmesh_common::Mode;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RequestedMode};
use crate::filter::FilterShared;
use crate::intercept::EbpfInterceptor;
use crate::intercept::ebpf::mode_name;
use crate::intercept::iptables::Iptables;
use crate::intercept::selftest::SelfTest;
use crate::net::SocketFactory;
use crate::proxy::mesh::{Mesh, MeshHandle, MeshOptions};
use crate::proxy::serve::ServeStats;
use crate::proxy::transparent::Stats;
use crate::registry::dynamic::DynamicSet;
use crate::upstream::channel::Transport;

/// Replaces the process's log filter (e.g. "debug"); errors name what is wrong with it.
pub type LogReload = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

pub struct AppState {
    pub started: Instant,
    pub online: AtomicBool,
    /// The running configuration; replaced by a successful reload.
    pub config: RwLock<Config>,
    /// The file the configuration came from (None: the embedded default).
    pub config_path: Option<PathBuf>,
    /// Changes the log filter of the running process (set up by the binary).
    pub log_reload: Option<LogReload>,
    /// `--log-level` was given: a reload leaves the level alone (`/logConfig/set` still
    /// changes it, being asked for explicitly).
    pub log_level_pinned: bool,
    pub interceptor: Mutex<Option<EbpfInterceptor>>,
    pub iptables: Mutex<Iptables>,
    /// Why interception is unavailable, when it is.
    pub intercept_error: Option<String>,
    pub selftest: Option<SelfTest>,
    /// What `auto` resolves to on this kernel with the current configuration.
    pub auto_mode: RwLock<Mode>,
    pub proxy_stats: Arc<Stats>,
    pub listeners: Vec<(String, String)>,
    /// Network namespaces (inode) where a transparent listener runs besides our own.
    pub netns_listeners: Mutex<Vec<u64>>,
    pub shutdown: CancellationToken,
    /// The Motan2 mesh (client and server roles); a reload swaps it.
    pub mesh: MeshHandle,
    /// Filter state and command overrides, kept across reloads.
    pub mesh_shared: MeshShared,
    pub agent_stats: Arc<ServeStats>,
    pub export_stats: Arc<ServeStats>,
    /// Export ports listening (a reload that needs others reports a restart).
    pub export_ports: Vec<u16>,
}

/// Why a change of the dynamic registrations failed.
#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    /// The change does not pass the configuration's checks; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Applied, but the snapshot could not be written.
    #[error("{0}")]
    NotSaved(String),
}

/// How the agent's own upstream connections are made.
pub(crate) fn transport(cfg: &Config) -> Transport {
    Transport {
        sockets: sockets(cfg),
        values: cfg.sockmesh.limits.values(),
        ..Transport::default()
    }
}

/// The socket factory of every upstream connection (marked, so interception skips them).
pub(crate) fn sockets(cfg: &Config) -> SocketFactory {
    SocketFactory::new(cfg.sockmesh.intercept.mark, crate::net::DEFAULT_CONNECT_TIMEOUT)
}

/// Initial switch values from the `switcher` / `switchers` sections (name: bool).
pub(crate) fn register_switchers(cfg: &Config, filters: &FilterShared) {
    for section in ["switcher", "switchers"] {
        let Some(serde_yaml_ng::Value::Mapping(m)) = cfg.motan.get(section) else {
            continue;
        };
        for (k, v) in m {
            match (k.as_str(), v.as_bool()) {
                (Some(name), Some(on)) => {
                    filters.switchers.register(name, on);
                }
                _ => tracing::warn!(
                    "{}: section {section}: {k:?}: {v:?} is not name: true|false",
                    cfg.source
                ),
            }
        }
    }
}

/// Where registry snapshots go unless `motan-agent.snapshot_dir` says otherwise.
pub const DEFAULT_SNAPSHOT_DIR: &str = "/var/lib/sockmesh/snapshot";

/// State the mesh keeps across reloads.
pub struct MeshShared {
    /// Switches, metrics, rate limits and circuits shared by every filter chain.
    pub filters: Arc<FilterShared>,
    pub overrides: Arc<Mutex<crate::registry::command::SwitcherOverrides>>,
    /// What the admin API registered and subscribed (`/registry/register`, `/registry/subscribe`):
    /// served besides the configured entries, and kept in `dynamic_file`.
    pub dynamic: Mutex<DynamicSet>,
    /// `<runtime dir>/registry.snap`.
    pub dynamic_file: PathBuf,
    /// One mesh rebuild at a time (reload, dynamic registration).
    pub rebuild: tokio::sync::Mutex<()>,
    /// The local short-cut, attached to the running mesh once the export listeners are bound.
    pub shortcut: Arc<crate::proxy::mesh::LocalShortcut>,
}

impl MeshShared {
    /// Fresh filter state; the dynamic registrations are read from their snapshot in the
    /// runtime directory of `cfg` (those the configuration no longer accepts are dropped, each
    /// with an error in the log).
    pub fn new(cfg: &Config) -> MeshShared {
        let dynamic_file = runtime_dir(cfg).join(crate::registry::dynamic::SNAPSHOT_FILE);
        let set = match DynamicSet::load(&dynamic_file) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!("dynamic registrations not recovered: {e}");
                DynamicSet::default()
            }
        };
        let set = usable_entries(cfg, set);
        if !set.is_empty() {
            tracing::info!(
                registered = set.registers.len(),
                subscribed = set.subscribes.len(),
                file = %dynamic_file.display(),
                "dynamic registrations recovered from the snapshot"
            );
        }
        MeshShared {
            filters: FilterShared::new(),
            overrides: Arc::default(),
            dynamic: Mutex::new(set),
            dynamic_file,
            rebuild: tokio::sync::Mutex::new(()),
            shortcut: Arc::new(crate::proxy::mesh::LocalShortcut::new(
                cfg.sockmesh.export_bind,
                cfg.agent.eport,
            )),
        }
    }
}

/// The snapshot's entries that `cfg` accepts, each checked on its own.
fn usable_entries(cfg: &Config, set: DynamicSet) -> DynamicSet {
    if set.is_empty()
        || cfg
            .with_entries(&set.service_entries(), &set.refer_entries())
            .is_ok()
    {
        return set;
    }
    let mut kept = DynamicSet::default();
    for u in set.registers {
        let one = DynamicSet {
            registers: vec![u.clone()],
            ..Default::default()
        };
        match cfg.with_entries(&one.service_entries(), &[]) {
            Ok(_) => {
                kept.register(u);
            }
            Err(e) => tracing::error!(service = %u.identity(), "dynamic registration not recovered: {e}"),
        }
    }
    for u in set.subscribes {
        let one = DynamicSet {
            subscribes: vec![u.clone()],
            ..Default::default()
        };
        match cfg.with_entries(&[], &one.refer_entries()) {
            Ok(_) => {
                kept.subscribe(u);
            }
            Err(e) => tracing::error!(refer = %u.identity(), "dynamic subscription not recovered: {e}"),
        }
    }
    // Each fits, but not all together: start with the configuration alone rather than not at all.
    if let Err(e) = cfg.with_entries(&kept.service_entries(), &kept.refer_entries()) {
        tracing::error!("dynamic registrations not recovered: {e}");
        return DynamicSet::default();
    }
    kept
}

/// `motan-agent.runtime_dir` (motan-go's key), else the registry snapshot directory.
pub(crate) fn runtime_dir(cfg: &Config) -> PathBuf {
    agent_str(cfg, "runtime_dir")
        .or_else(|| agent_str(cfg, "snapshot_dir"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SNAPSHOT_DIR))
}

fn agent_str(cfg: &Config, k: &str) -> Option<String> {
    match cfg.agent.other.get(k) {
        Some(serde_yaml_ng::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The IP this agent registers its exports with: `motan-agent.localIP`, else the address that
/// reaches the first ZooKeeper registry.
pub(crate) fn local_ip(cfg: &Config) -> String {
    agent_str(cfg, "localIP").unwrap_or_else(|| local_ip_towards(&cfg.mesh))
}

/// The local address that reaches the first ZooKeeper registry (a UDP connect sends nothing),
/// else 127.0.0.1: what exports are registered with when `motan-agent.localIP` is not set.
fn local_ip_towards(mc: &crate::config::motan::MotanConfig) -> String {
    let target = mc
        .registries
        .values()
        .find(|r| r.protocol == "zookeeper")
        .and_then(|r| crate::config::registry::ZookeeperSpec::from_url(r).ok())
        .and_then(|zk| zk.servers.split(',').next().map(str::to_string));
    target
        .and_then(|t| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(t.trim()).ok()?;
            Some(s.local_addr().ok()?.ip().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// The export ports the mesh `build_mesh` would build serves (the configuration's exports and
/// the dynamic registrations'), known before the mesh is built: the listeners are bound, and
/// the kernel programs loaded, before the mesh's clusters start connecting.
pub(crate) fn export_ports(cfg: &Config, shared: &MeshShared) -> Result<std::collections::BTreeSet<u16>> {
    let set = shared.dynamic.lock().unwrap().clone();
    let cfg = cfg
        .with_entries(&set.service_entries(), &set.refer_entries())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cfg.mesh.exports.values().map(|s| s.export_port).collect())
}

/// Build the mesh from a configuration and the dynamic registrations (errors name section,
/// entry and key).
pub(crate) fn build_mesh(cfg: &Config, previous: Option<&Mesh>, shared: &MeshShared) -> Result<Mesh> {
    let set = shared.dynamic.lock().unwrap().clone();
    build_mesh_with(cfg, &set, previous, shared)
}

/// As `build_mesh`, with the dynamic registrations `set`.
fn build_mesh_with(
    cfg: &Config,
    set: &DynamicSet,
    previous: Option<&Mesh>,
    shared: &MeshShared,
) -> Result<Mesh> {
    let cfg = &cfg
        .with_entries(&set.service_entries(), &set.refer_entries())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mc = &cfg.mesh;
    for w in &mc.warnings {
        tracing::warn!("{w}");
    }
    let agent_str = |k: &str| agent_str(cfg, k);
    let opts = MeshOptions {
        transport: transport(cfg),
        local_ip: local_ip(cfg),
        application: cfg.agent.application.clone(),
        snapshot_dir: agent_str("snapshot_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SNAPSHOT_DIR)),
        filters: shared.filters.clone(),
        agent_registries: agent_str(crate::url::keys::REGISTRY)
            .map(|r| crate::url::split_list(&r).into_iter().map(String::from).collect())
            .unwrap_or_default(),
        agent_port: cfg.agent.port,
        overrides: shared.overrides.clone(),
        idc: cfg.launch.idc.clone().unwrap_or_default(),
        local: cfg.sockmesh.local_shortcut.then(|| shared.shortcut.clone()),
    };
    Mesh::build(mc, &opts, previous).map_err(|es| {
        anyhow::anyhow!(
            "{}",
            es.iter()
                .map(|e| format!("{}: {e}", cfg.source))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

impl AppState {
    /// The eBPF mode a request means, or None for iptables.
    fn resolve(&self, m: Option<RequestedMode>) -> Option<Mode> {
        let default = || {
            self.config
                .read()
                .unwrap()
                .sockmesh
                .intercept
                .default_mode
                .parse()
                .unwrap_or(RequestedMode::Auto)
        };
        match m.unwrap_or_else(default) {
            RequestedMode::Auto => Some(*self.auto_mode.read().unwrap()),
            RequestedMode::Connect => Some(Mode::Connect),
            RequestedMode::Sockmap => Some(Mode::Sockmap),
            RequestedMode::Iptables => None,
        }
    }

    /// Whether cgroup `rel` is intercepted by the eBPF programs.
    fn in_ebpf_mode(&self, rel: &str) -> bool {
        self.with_interceptor(|i| i.status())
            .unwrap_or_default()
            .iter()
            .any(|c| c.cgroup == rel)
    }

    fn with_interceptor<T>(&self, f: impl FnOnce(&mut EbpfInterceptor) -> Result<T>) -> Result<T> {
        let mut g = self.interceptor.lock().unwrap();
        match g.as_mut() {
            Some(i) => f(i),
            None => anyhow::bail!(
                "eBPF interception is unavailable: {}",
                self.intercept_error
                    .as_deref()
                    .unwrap_or("disabled in the configuration")
            ),
        }
    }

    /// Intercept `cgroup` in the requested mode; a cgroup is in one mode at a time, so switching
    /// between iptables and eBPF removes the other mode's attachment. The cgroup root means
    /// every process on the host and needs `force`.
    pub fn enable(&self, cgroup: &str, mode: Option<RequestedMode>, force: bool) -> Result<Value> {
        let mount = crate::cgroup::cgroup2_mount()?;
        let path = crate::cgroup::resolve(&mount, cgroup)?;
        let rel = crate::cgroup::display_rel(&mount, &path);
        // By identity, not by spelling: "/", "", "//" and "/." all name the root.
        if !force && crate::cgroup::id(&path)? == crate::cgroup::id(&mount)? {
            anyhow::bail!(
                "cgroup {cgroup:?} is the cgroup root: intercepting it means every process on the host \
                 (system services, sshd, the package manager) goes through sockmesh; give --force \
                 (API: force=true) if that is really meant, or name the cgroup of the apps"
            );
        }
        match self.resolve(mode) {
            None => {
                let in_ebpf = self.in_ebpf_mode(&rel);
                if in_ebpf {
                    self.with_interceptor(|i| i.disable(&rel))?;
                }
                self.iptables.lock().unwrap().enable(&rel)?;
                let st = self
                    .iptables
                    .lock()
                    .unwrap()
                    .cgroups()?
                    .into_iter()
                    .find(|c| c.cgroup == rel);
                Ok(json!({ "cgroup": rel, "mode": "iptables", "redirected": st.map_or(0, |c| c.redirected) }))
            }
            Some(m) => {
                if m == Mode::Sockmap
                    && let Some(t) = self.selftest.as_ref().filter(|t| !t.sockmap_safe())
                {
                    tracing::warn!(
                        cgroup,
                        "ebpf-sockmap requested although the kernel self-test failed: {}",
                        t.summary()
                    );
                }
                let st = self.with_interceptor(|i| i.enable(&rel, m))?;
                self.iptables.lock().unwrap().disable(&rel)?;
                Ok(serde_json::to_value(st)?)
            }
        }
    }

    pub fn disable(&self, cgroup: &str) -> Result<()> {
        let mount = crate::cgroup::cgroup2_mount()?;
        let rel = crate::cgroup::display_rel(&mount, &crate::cgroup::resolve(&mount, cgroup)?);
        let was_iptables = self.iptables.lock().unwrap().disable(&rel)?;
        let in_ebpf = self.in_ebpf_mode(&rel);
        if in_ebpf {
            self.with_interceptor(|i| i.disable(&rel))?;
        } else if !was_iptables {
            anyhow::bail!("cgroup {rel:?} is not intercepted");
        }
        Ok(())
    }

    pub fn disable_all(&self) -> Result<usize> {
        let mut n = 0;
        for c in self.iptables.lock().unwrap().cgroups()? {
            self.iptables.lock().unwrap().disable(&c.cgroup)?;
            n += 1;
        }
        if self.interceptor.lock().unwrap().is_some() {
            n += self.with_interceptor(|i| i.disable_all())?;
        }
        Ok(n)
    }

    pub fn intercept_json(&self) -> Result<Value> {
        let (ebpf, error) = match self.with_interceptor(|i| i.status()) {
            Ok(c) => (serde_json::to_value(c)?, None),
            Err(e) => (json!([]), Some(format!("{e:#}"))),
        };
        let sockhash = self
            .with_interceptor(|i| i.sockhash_status())
            .ok()
            .map(serde_json::to_value)
            .transpose()?;
        let mut cgroups = ebpf.as_array().cloned().unwrap_or_default();
        for c in self.iptables.lock().unwrap().cgroups()? {
            cgroups.push(json!({ "cgroup": c.cgroup, "mode": c.mode, "redirected": c.redirected, "passed": 0, "fail_open": 0, "fail_open_stalled": 0 }));
        }
        Ok(json!({
            "available": error.is_none(),
            "error": error,
            "auto_mode": mode_name(*self.auto_mode.read().unwrap()),
            "transparent_listener": self.config.read().unwrap().transparent_addr().to_string(),
            "iptables_chain": self.iptables.lock().unwrap().chain(),
            "netns_listeners": *self.netns_listeners.lock().unwrap(),
            "sockhash": sockhash,
            "cgroups": cgroups,
        }))
    }

    /// Re-read and validate the configuration, then apply what can change in place: the
    /// interception policy (ports/prefixes excluded or included), the default and auto modes,
    /// the log level. Listener addresses, the mark, the pin directory and the iptables chain
    /// name take effect after a restart and are reported as such. A configuration with errors
    /// is refused and the running one stays.
    pub async fn reload(&self) -> Result<Value> {
        // The same flags as at start (`-c`, `-pool`, `-port`, ...).
        let launch = self.config.read().unwrap().launch.clone();
        let new = Config::launch(&launch);
        let new = match new {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays:\n{e}");
                anyhow::bail!("{e}");
            }
        };
        let old = self.config.read().unwrap().clone();
        let (o, n) = (&old.sockmesh.intercept, &new.sockmesh.intercept);
        let mut applied = Vec::new();
        let mut restart = Vec::new();
        for (key, changed) in [
            ("motan-agent.port", old.agent.port != new.agent.port),
            ("motan-agent.eport", old.agent.eport != new.agent.eport),
            ("motan-agent.mport", old.agent.mport != new.agent.mport),
            (
                "motan-agent.unixSock",
                old.process.unix_sock != new.process.unix_sock,
            ),
            (
                "motan-agent.managementUnixSock",
                old.process.management_unix_sock != new.process.management_unix_sock,
            ),
            (
                "motan-agent.hport / httpProxyEnable",
                (old.mesh.http_proxy.enabled, old.mesh.http_proxy.port)
                    != (new.mesh.http_proxy.enabled, new.mesh.http_proxy.port),
            ),
            (
                "sockmesh.admin_bind",
                old.sockmesh.admin_bind != new.sockmesh.admin_bind,
            ),
            (
                "sockmesh.admin.control_socket",
                old.sockmesh.admin.control_socket != new.sockmesh.admin.control_socket,
            ),
            (
                "sockmesh.admin.control_group",
                old.sockmesh.admin.control_group != new.sockmesh.admin.control_group,
            ),
            (
                "sockmesh.worker_threads / shards / shard_policy",
                (
                    old.sockmesh.worker_threads,
                    old.sockmesh.shards,
                    old.sockmesh.shard_policy,
                ) != (
                    new.sockmesh.worker_threads,
                    new.sockmesh.shards,
                    new.sockmesh.shard_policy,
                ),
            ),
            ("sockmesh.intercept.enabled", o.enabled != n.enabled),
            (
                "sockmesh.intercept.transparent_port",
                o.transparent_port != n.transparent_port,
            ),
            ("sockmesh.intercept.mark", o.mark != n.mark),
            ("sockmesh.intercept.pin_dir", o.pin_dir != n.pin_dir),
            (
                "sockmesh.intercept.iptables_chain",
                o.iptables_chain != n.iptables_chain,
            ),
            (
                "sockmesh.intercept.bpf_log_level",
                o.bpf_log_level != n.bpf_log_level,
            ),
        ] {
            if changed {
                restart.push(key);
            }
        }
        let policy_changed = o.exclude_ports != n.exclude_ports
            || o.include_cidrs != n.include_cidrs
            || o.exclude_cidrs != n.exclude_cidrs
            || o.liveness_timeout_ms != n.liveness_timeout_ms
            || old.local_sockmap_ports() != new.local_sockmap_ports();
        // Keys that need a restart keep their running values.
        let mut effective = new.clone();
        effective.agent.port = old.agent.port;
        effective.agent.eport = old.agent.eport;
        effective.agent.mport = old.agent.mport;
        effective.process.unix_sock = old.process.unix_sock.clone();
        effective.process.management_unix_sock = old.process.management_unix_sock.clone();
        effective.sockmesh.admin_bind = old.sockmesh.admin_bind;
        effective.sockmesh.admin.control_socket = old.sockmesh.admin.control_socket.clone();
        effective.sockmesh.admin.control_group = old.sockmesh.admin.control_group.clone();
        {
            let (ei, oi) = (&mut effective.sockmesh.intercept, &old.sockmesh.intercept);
            ei.enabled = oi.enabled;
            ei.transparent_port = oi.transparent_port;
            ei.mark = oi.mark;
            ei.pin_dir = oi.pin_dir.clone();
            ei.iptables_chain = oi.iptables_chain.clone();
            ei.bpf_log_level = oi.bpf_log_level.clone();
        }
        if policy_changed {
            let settings = effective.intercept_settings();
            if let Some(i) = self.interceptor.lock().unwrap().as_mut() {
                i.update_policy(settings.clone())?;
            }
            self.iptables.lock().unwrap().update_policy(settings)?;
            applied.push("sockmesh.intercept policy (exclude_ports, include_cidrs, exclude_cidrs, liveness_timeout_ms, the sockmesh.sockmap ports)");
        }
        if o.default_mode != n.default_mode {
            applied.push("sockmesh.intercept.default_mode");
        }
        if o.auto_sockmap != n.auto_sockmap {
            *self.auto_mode.write().unwrap() = auto_mode_for(self.selftest.as_ref(), n.auto_sockmap);
            applied.push("sockmesh.intercept.auto_sockmap");
        }
        // The admin guard reads these per request.
        if old.sockmesh.admin.tcp_mutations != new.sockmesh.admin.tcp_mutations {
            applied.push("sockmesh.admin.tcp_mutations");
        }
        if old.sockmesh.admin.token != new.sockmesh.admin.token {
            applied.push("sockmesh.admin.token");
        }
        if old.sockmesh.log_level != new.sockmesh.log_level {
            match &self.log_reload {
                Some(f) if !self.log_level_pinned => {
                    f(&new.sockmesh.log_level)?;
                    applied.push("sockmesh.log_level");
                }
                _ => restart.push("sockmesh.log_level (pinned by --log-level)"),
            }
        }
        if old.motan != new.motan || old.agent.application != new.agent.application {
            let _one = self.mesh_shared.rebuild.lock().await;
            let current = self.mesh.load_full();
            let mesh = match build_mesh(&new, Some(&current), &self.mesh_shared) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("reload refused, the running configuration stays:\n{e:#}");
                    return Err(e);
                }
            };
            let ports: Vec<u16> = mesh.exporter.ports().iter().copied().collect();
            if ports.iter().any(|p| !self.export_ports.contains(p)) {
                restart.push("motan-service export ports (new ports listen after a restart)");
            }
            self.swap_mesh(current, mesh, new.process.init_cluster_timeout)
                .await;
            applied.push("motan sections (registries, refers, services)");
        }
        *self.config.write().unwrap() = effective;
        tracing::info!(applied = ?applied, needs_restart = ?restart, source = %new.source, "configuration reloaded");
        Ok(json!({ "source": new.source, "applied": applied, "needs_restart": restart }))
    }

    /// Put `mesh` in place of `current`: its clusters connected (bounded), its exports
    /// registered (available when the agent is online), the registrations `current` has and
    /// `mesh` not removed; requests in flight finish on `current`.
    async fn swap_mesh(&self, current: Arc<Mesh>, mesh: Mesh, init_wait: std::time::Duration) {
        mesh.wait_ready(init_wait).await;
        let online = self.online.load(std::sync::atomic::Ordering::Relaxed);
        mesh.register(online).await;
        current.unregister(Some(&mesh)).await;
        self.mesh.store(Arc::new(mesh));
        current.stop();
    }

    /// Change the dynamic registrations (admin API `/registry/register` and friends). `change`
    /// edits a copy of the set and says whether it changed anything; the mesh is then rebuilt
    /// with the copy (checked like a configuration: on an error nothing changes), swapped in as
    /// a reload's is, and the set written to its snapshot. A registry that cannot be reached
    /// is no error: it gets the registration when it can be (as after a restart).
    pub async fn update_dynamic(
        &self,
        change: impl FnOnce(&mut DynamicSet) -> bool,
    ) -> Result<bool, DynamicError> {
        let _one = self.mesh_shared.rebuild.lock().await;
        let mut set = self.mesh_shared.dynamic.lock().unwrap().clone();
        if !change(&mut set) {
            return Ok(false);
        }
        let cfg = self.config.read().unwrap().clone();
        let current = self.mesh.load_full();
        let mesh = build_mesh_with(&cfg, &set, Some(&current), &self.mesh_shared)
            .map_err(|e| DynamicError::Refused(format!("{e:#}")))?;
        self.swap_mesh(current, mesh, cfg.process.init_cluster_timeout)
            .await;
        *self.mesh_shared.dynamic.lock().unwrap() = set.clone();
        let file = &self.mesh_shared.dynamic_file;
        if let Err(e) = set.save(file) {
            tracing::error!(file = %file.display(), "dynamic registrations applied but not saved: {e}");
            return Err(DynamicError::NotSaved(format!(
                "applied, but the snapshot {} could not be written ({e}): a restart would lose it",
                file.display()
            )));
        }
        Ok(true)
    }

    /// `/status`; `view` picks which endpoints the clusters list (`Err`: no such cluster).
    pub fn status_json(&self, view: &crate::proxy::mesh::StatusView) -> Result<Value, String> {
        let mesh = self.mesh.load().status_json_view(view)?;
        let intercept = match self.intercept_json() {
            Ok(v) => v,
            Err(e) => json!({ "available": false, "error": format!("{e:#}"), "cgroups": [] }),
        };
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "status": if self.online.load(std::sync::atomic::Ordering::Relaxed) { 200 } else { 503 },
            "config": self.config.read().unwrap().source.clone(),
            "listeners": self.listeners.iter().map(|(k, v)| json!({"name": k, "address": v})).collect::<Vec<_>>(),
            "intercept": intercept,
            "selftest": self.selftest,
            "transparent_proxy": self.proxy_stats.snapshot(),
            "agent_port": self.agent_stats.snapshot(),
            "export_ports": self.export_stats.snapshot(),
            "mesh": mesh,
            "recent_errors": crate::recent::snapshot(),
        }))
    }
}

/// What `auto` means given the self-test and `sockmesh.intercept.auto_sockmap`.
pub(crate) fn auto_mode_for(test: Option<&SelfTest>, allow_sockmap: bool) -> Mode {
    match test {
        Some(t) if allow_sockmap && t.sockmap_safe() => Mode::Sockmap,
        _ => Mode::Connect,
    }
}

/// The 200/503 status motan-go keeps in `runtime_dir/status` for `-recover`.
impl AppState {
    /// `/200` and `/503`: every export becomes visible to callers or is taken back, and the
    /// status is saved for a restart with `-recover`.
    pub async fn set_online(&self, online: bool) {
        self.online.store(online, std::sync::atomic::Ordering::Relaxed);
        self.mesh.load().set_online(online).await;
        let process = self.config.read().unwrap().process.clone();
        if process.save_status {
            save_status(&process.status_file(), online);
        }
    }
}

fn save_status(file: &std::path::Path, online: bool) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(file, if online { "200" } else { "503" })
    };
    if let Err(e) = write() {
        tracing::warn!("cannot save the status in {}: {e}", file.display());
    }
}

/// The status to start with: 200 only with `-recover` and a saved 200, as motan-go.
pub fn recovered_status(p: &crate::config::launch::ProcessSettings) -> bool {
    if !p.recover {
        return false;
    }
    let file = p.status_file();
    match std::fs::read_to_string(&file) {
        Ok(s) => {
            let online = s.trim() == "200";
            tracing::info!(
                "-recover: status {} restored from {}",
                if online { 200 } else { 503 },
                file.display()
            );
            online
        }
        Err(e) => {
            tracing::warn!(
                "-recover: no saved status in {} ({e}); starting at 503",
                file.display()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::dynamic::{refer_url, service_url};
    use crate::url::Url;

    #[test]
    fn snapshot_entries_the_configuration_refuses_are_dropped_at_start() {
        let dir = std::env::temp_dir().join(format!("sockmesh-runtime-{}", std::process::id()));
        let cfg = Config::parse(
            &format!(
                "motan-agent:\n  runtime_dir: {}\nmotan-registry:\n  zk: {{protocol: direct, address: \"127.0.0.1:9\"}}\n",
                dir.display()
            ),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(runtime_dir(&cfg), dir);
        let req = Url::new("motan2", "", 8100, "S", "g");
        let mut set = DynamicSet::default();
        set.register(service_url(&req, "zk", 9982, "127.0.0.1", ""));
        set.register(service_url(
            &Url {
                group: "h".into(),
                ..req.clone()
            },
            "gone",
            9982,
            "127.0.0.1",
            "",
        ));
        set.subscribe(refer_url(&req, "zk"));
        set.subscribe(refer_url(&req, "gone"));
        set.save(&dir.join(crate::registry::dynamic::SNAPSHOT_FILE))
            .unwrap();
        let shared = MeshShared::new(&cfg);
        let kept = shared.dynamic.lock().unwrap().clone();
        let registries = |us: &[Url]| {
            us.iter()
                .map(|u| u.param("registry").unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(registries(&kept.registers), ["zk"]);
        assert_eq!(registries(&kept.subscribes), ["zk"]);
        // The entries are the configuration's own, with their checks: a taken id is refused.
        let entries = kept.service_entries();
        let with = cfg.with_entries(&entries, &kept.refer_entries()).unwrap();
        assert!(with.mesh.exports.contains_key(&entries[0].0));
        let err = with.with_entries(&entries, &[]).unwrap_err().to_string();
        assert!(err.contains("already has an entry"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
