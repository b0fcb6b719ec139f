//! eBPF interception: load the embedded programs, pin maps and links under the pin directory,
//! attach the host programs once, and enable/disable per cgroup.
//!
//! Every attachment is a bpf_link pinned under `<pin>/links/`, so interception outlives the
//! agent process (fail-open covers the time it is down, see `connect.rs` in the BPF crate). A
//! restarted agent swaps its freshly loaded programs into the existing links with
//! `BPF_LINK_UPDATE`: no detach gap, and aya-log output goes to the new process. It only does so
//! on maps of its own layout (`pins.rs`): maps pinned by another layout, or whose shape differs
//! from this object's definitions, are refused before anything is loaded.
use std::collections::{HashMap as StdHashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use sockmesh_common::{
    CgroupPolicy, GlobalConfig, Ip6, MAX_AGENT_PORTS, MAX_EXCLUDE_CIDRS, MAX_EXCLUDE_CIDRS_V6,
    MAX_EXCLUDE_PORTS, MAX_INCLUDE_CIDRS, MAX_INCLUDE_CIDRS_V6, MAX_LOCAL_PORTS, Mode, STAT_COUNT, Stat,
    ip6_of,
};

use super::pins::{PinLayout, remove_pins};
use crate::cgroup;
pub use crate::config::intercept::{Cidr, InterceptSettings};
use crate::sys::{self, AttachType};

/// Programs attached per enabled cgroup: (program name, kind, attach type, pin file name).
const CGROUP_PROGRAMS: &[(&str, AttachType, &str)] = &[
    ("sm_connect4", AttachType::Inet4Connect, "connect4"),
    ("sm_connect6", AttachType::Inet6Connect, "connect6"),
    ("sm_getpeername4", AttachType::Inet4Getpeername, "getpeername4"),
    ("sm_getpeername6", AttachType::Inet6Getpeername, "getpeername6"),
    ("sm_sock_release", AttachType::InetSockRelease, "sock_release"),
];

/// Per-cgroup interception state as `intercept status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CgroupStatus {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub mode: String,
    pub redirected: u64,
    pub passed: u64,
    pub fail_open: u64,
    /// The part of `fail_open` sent direct because the agent's heartbeat was stale.
    pub fail_open_stalled: u64,
}

/// The sockhash's counters (`SM_STATS`, summed over the CPUs) and the ports whose local legs
/// it takes, as `intercept status` shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SockhashStatus {
    /// `sockmesh.sockmap` ports (exports' export and provider ports, refers' loopback endpoints)
    /// in `SM_LOCAL_PORTS`.
    pub local_ports: Vec<u16>,
    /// Sockets of app<->agent connections (ebpf-sockmap cgroups) put into the sockhash.
    pub app_leg_sockets: u64,
    /// Sockets of local legs put into the sockhash (both ends counted).
    pub local_leg_sockets: u64,
    /// sk_msg messages redirected into the peer socket, and their bytes.
    pub msg_redirected: u64,
    pub bytes_redirected: u64,
    /// sk_msg messages left to TCP (the peer was not in the sockhash).
    pub msg_passed: u64,
    /// Sockhash inserts that failed (those sockets keep the TCP path).
    pub insert_failed: u64,
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Off => "off",
        Mode::Connect => "ebpf-connect",
        Mode::Sockmap => "ebpf-sockmap",
    }
}

/// Load the embedded object with `maps_dir` as the pin directory of its maps, with every
/// program loaded (verified) but nothing attached.
pub fn load_object(maps_dir: &Path, log_level: u8) -> Result<Ebpf> {
    std::fs::create_dir_all(maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
    let mut bpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .override_global("AYA_LOG_LEVEL", &log_level, true)
        .load(crate::EBPF_OBJECT)
        .context("loading the BPF object (maps)")?;
    for (name, _, _) in CGROUP_PROGRAMS {
        if *name == "sm_sock_release" {
            let p: &mut CgroupSock = prog(&mut bpf, name)?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        } else {
            let p: &mut CgroupSockAddr = prog(&mut bpf, name)?.try_into()?;
            p.load().with_context(|| format!("verifier rejected {name}"))?;
        }
    }
    let p: &mut SockOps = prog(&mut bpf, "sm_sockops")?.try_into()?;
    p.load().context("verifier rejected sm_sockops")?;
    let p: &mut CgroupSockopt = prog(&mut bpf, "sm_getsockopt")?.try_into()?;
    p.load().context("verifier rejected sm_getsockopt")?;
    let p: &mut SkMsg = prog(&mut bpf, "sm_skmsg")?.try_into()?;
    p.load().context("verifier rejected sm_skmsg")?;
    Ok(bpf)
}

fn prog<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    bpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))
}

/// Attach `name` to `target` through a new link (returned, not pinned).
pub fn attach_link(
    bpf: &Ebpf,
    name: &str,
    target: impl AsFd,
    at: AttachType,
) -> Result<std::os::fd::OwnedFd> {
    let p = bpf
        .program(name)
        .with_context(|| format!("program {name} missing"))?;
    let fd = p.fd().with_context(|| format!("program {name} not loaded"))?;
    sys::link_create(fd.as_fd(), target.as_fd(), at).with_context(|| format!("attaching {name} ({at:?})"))
}

/// Attach through the link pinned at `pin` (swapping in our program) or create and pin one.
fn attach_pinned(bpf: &Ebpf, name: &str, target: impl AsFd, at: AttachType, pin: &Path) -> Result<bool> {
    let p = bpf
        .program(name)
        .with_context(|| format!("program {name} missing"))?;
    let prog_fd = p.fd().with_context(|| format!("program {name} not loaded"))?;
    if pin.exists() {
        let link = sys::obj_get(pin).with_context(|| format!("reopening {}", pin.display()))?;
        sys::link_update(link.as_fd(), prog_fd.as_fd())
            .with_context(|| format!("updating link {}", pin.display()))?;
        return Ok(false);
    }
    let link = sys::link_create(prog_fd.as_fd(), target.as_fd(), at)
        .with_context(|| format!("attaching {name} ({at:?})"))?;
    sys::obj_pin(link.as_fd(), pin).with_context(|| format!("pinning {}", pin.display()))?;
    Ok(true)
}

/// Why interception could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pin directory must not be used (not ours, writable by others, maps of another layout
    /// or shape): the daemon stops, so that nothing runs on state it cannot trust.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// Something the kernel or host lacks: the daemon runs without interception.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// Mount bpffs at /sys/fs/bpf (mode 0700) when `pin_dir` is below it and none is mounted.
pub fn mount_bpffs(pin_dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs) && sys::ensure_bpffs(bpffs).context("mounting bpffs")? {
        tracing::info!("mounted bpffs at /sys/fs/bpf (mode 0700)");
    }
    Ok(())
}

/// Check the maps pinned in `maps_dir` against this object's definitions (type, key and value
/// size, capacity, flags): aya reuses a pinned map by name without comparing, so a map of
/// another shape would be read and written by programs that expect this one.
pub fn check_pinned_maps(maps_dir: &Path) -> Result<()> {
    let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).context("parsing the embedded BPF object")?;
    for (name, def) in &obj.maps {
        if def.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let pin = maps_dir.join(name);
        if std::fs::symlink_metadata(&pin).is_err() {
            continue;
        }
        let fd = sys::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let have = sys::map_shape(fd.as_fd()).with_context(|| format!("map info of {}", pin.display()))?;
        let want = sys::MapShape {
            map_type: def.map_type(),
            id: have.id,
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            map_flags: def.map_flags(),
        };
        if have != want {
            bail!(
                "pinned map {} does not match this sockmesh's definition (pinned: type {}, key {} B, value {} B, {} entries, flags {:#x}; \
                 expected: type {}, key {} B, value {} B, {} entries, flags {:#x}); the map layout changed without a new \
                 MAP_LAYOUT_VERSION. Run `sockmesh uninstall --pin-dir {}`, then start sockmesh again",
                pin.display(),
                have.map_type,
                have.key_size,
                have.value_size,
                have.max_entries,
                have.map_flags,
                want.map_type,
                want.key_size,
                want.value_size,
                want.max_entries,
                want.map_flags,
                maps_dir.parent().unwrap_or(maps_dir).display()
            );
        }
    }
    Ok(())
}

/// One step of a policy map update.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change<T> {
    Insert(T),
    Remove(T),
}

/// The steps that make a policy map holding `current` hold exactly `want`: entries in both stay,
/// new ones go in before stale ones come out, so the programs never see less than the old and
/// the new policy together (port 22 is never un-excluded for a moment, the include list never
/// empty). Only when both do not fit in the map together do the stale ones go first.
fn policy_changes<T: PartialEq + Clone>(
    map: &str,
    capacity: u32,
    current: &[T],
    want: &[T],
) -> Vec<Change<T>> {
    let mut fresh: Vec<T> = Vec::new();
    for w in want {
        if !current.contains(w) && !fresh.contains(w) {
            fresh.push(w.clone());
        }
    }
    let stale = current
        .iter()
        .filter(|c| !want.contains(c))
        .cloned()
        .map(Change::Remove);
    let fresh = fresh.into_iter().map(Change::Insert);
    if current.len() + fresh.len() <= capacity as usize {
        fresh.chain(stale).collect()
    } else {
        tracing::warn!(
            map,
            capacity,
            "old and new policy entries do not fit together; removing the stale ones first"
        );
        stale.chain(fresh).collect()
    }
}

/// Make the LPM trie `map` hold exactly `want` ((prefix length, address with host bits
/// cleared)), through [`policy_changes`].
fn update_trie<K: aya::Pod + PartialEq + std::fmt::Debug>(
    bpf: &mut Ebpf,
    map: &str,
    capacity: u32,
    want: &[(u32, K)],
) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, u8> =
        LpmTrie::try_from(bpf.map_mut(map).with_context(|| map.to_string())?)?;
    let current: Vec<(u32, K)> = trie
        .keys()
        .filter_map(|k| k.ok())
        .map(|k| (k.prefix_len(), k.data()))
        .collect();
    for c in policy_changes(map, capacity, &current, want) {
        match &c {
            Change::Insert((len, addr)) => trie.insert(&Key::new(*len, *addr), 1, 0),
            Change::Remove((len, addr)) => trie.remove(&Key::new(*len, *addr)),
        }
        .with_context(|| format!("{map}: {c:?}"))?;
    }
    Ok(())
}

/// The agent's side of stuck-agent fail-open: writes `SM_HEARTBEAT`, which the connect hook
/// compares with `sockmesh.intercept.liveness_timeout_ms`. Whoever holds it calls
/// [`Heartbeat::beat`] every `HEARTBEAT_INTERVAL` from the runtime that serves the transparent
/// listeners: when that runtime stops, the heartbeat goes stale and apps connect directly.
pub struct Heartbeat {
    map: Array<MapData, sockmesh_common::Heartbeat>,
}

impl Heartbeat {
    fn new(bpf: &mut Ebpf) -> Result<Heartbeat> {
        let map = bpf.take_map("SM_HEARTBEAT").context("SM_HEARTBEAT")?;
        Ok(Heartbeat {
            map: Array::try_from(map)?,
        })
    }

    /// Record "alive now" (`CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`).
    pub fn beat(&mut self) -> Result<()> {
        self.map
            .set(0, sys::monotonic_ns(), 0)
            .context("writing SM_HEARTBEAT")
    }
}

pub struct EbpfInterceptor {
    settings: InterceptSettings,
    layout: PinLayout,
    cgroup_mount: PathBuf,
    bpf: Ebpf,
    heartbeat: Option<Heartbeat>,
}

impl EbpfInterceptor {
    /// Load, configure and attach the host programs; re-adopt interception pinned by an earlier
    /// run. The pin directory is checked first (owner, mode, layout version, map shapes). The
    /// caller holds the pin directory's lock (`pins::PinDirLock`).
    pub fn start(settings: InterceptSettings) -> Result<EbpfInterceptor, StartError> {
        mount_bpffs(&settings.pin_dir).map_err(StartError::Unavailable)?;
        let layout = PinLayout::new(&settings.pin_dir);
        layout.prepare().map_err(StartError::Refused)?;
        check_pinned_maps(&layout.maps()).map_err(StartError::Refused)?;
        let cgroup_mount = cgroup::cgroup2_mount().map_err(StartError::Unavailable)?;
        let bpf = load_object(&layout.maps(), settings.bpf_log_level).map_err(StartError::Unavailable)?;
        let mut me = EbpfInterceptor {
            settings,
            layout,
            cgroup_mount,
            bpf,
            heartbeat: None,
        };
        let attached = (|| {
            // A heartbeat left by an earlier run is stale (the programs still attached send apps
            // direct): a fresh one goes in before the policy, links and redirects are ours.
            let mut heartbeat = Heartbeat::new(&mut me.bpf)?;
            heartbeat.beat()?;
            me.heartbeat = Some(heartbeat);
            me.write_policy()?;
            me.attach_host()?;
            me.adopt_cgroups()
        })();
        let adopted = attached.map_err(StartError::Unavailable)?;
        if adopted > 0 {
            tracing::info!(
                cgroups = adopted,
                "interception from the previous run is active again"
            );
        }
        Ok(me)
    }

    pub fn settings(&self) -> &InterceptSettings {
        &self.settings
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    /// The heartbeat writer, for the task that proves the agent alive (once).
    pub fn take_heartbeat(&mut self) -> Option<Heartbeat> {
        self.heartbeat.take()
    }

    /// Start forwarding aya-log records of the programs into `log` (and so into tracing).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.bpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("BPF log forwarding unavailable: {e}");
                None
            }
        }
    }

    /// Apply a new interception policy (exclusions, inclusions) to the running programs. The pin
    /// directory stays what it was.
    pub fn update_policy(&mut self, mut settings: InterceptSettings) -> Result<()> {
        settings.pin_dir = self.settings.pin_dir.clone();
        self.settings = settings;
        self.write_policy()
    }

    fn write_policy(&mut self) -> Result<()> {
        let s = &self.settings;
        if s.agent_ports.len() > MAX_AGENT_PORTS {
            bail!(
                "{} agent ports, the programs know at most {MAX_AGENT_PORTS}",
                s.agent_ports.len()
            );
        }
        let mut agent_ports = [0u32; MAX_AGENT_PORTS];
        for (slot, p) in agent_ports.iter_mut().zip(&s.agent_ports) {
            *slot = *p as u32;
        }
        let cfg = GlobalConfig {
            listen_ip4: u32::from_ne_bytes(s.listen.ip().octets()),
            listen_port: s.listen.port() as u32,
            agent_mark: s.mark,
            enabled: 1,
            agent_ports,
            listen_ip6: ip6_of((*s.listen6().ip()).into()),
            liveness_timeout_ns: u64::try_from(s.liveness_timeout.as_nanos()).unwrap_or(u64::MAX),
        };
        let want_ports: Vec<u32> = s.exclude_ports.iter().map(|p| *p as u32).collect();
        let mut ports: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(self.bpf.map_mut("SM_EXCLUDE_PORTS").context("SM_EXCLUDE_PORTS")?)?;
        let current: Vec<u32> = ports.keys().filter_map(|k| k.ok()).collect();
        for c in policy_changes("SM_EXCLUDE_PORTS", MAX_EXCLUDE_PORTS, &current, &want_ports) {
            match &c {
                Change::Insert(p) => ports.insert(*p, 1, 0),
                Change::Remove(p) => ports.remove(p),
            }
            .with_context(|| format!("SM_EXCLUDE_PORTS: {c:?}"))?;
        }
        let want_local: Vec<u32> = s.local_ports.iter().map(|p| *p as u32).collect();
        let mut local: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(self.bpf.map_mut("SM_LOCAL_PORTS").context("SM_LOCAL_PORTS")?)?;
        let current: Vec<u32> = local.keys().filter_map(|k| k.ok()).collect();
        for c in policy_changes("SM_LOCAL_PORTS", MAX_LOCAL_PORTS, &current, &want_local) {
            match &c {
                Change::Insert(p) => local.insert(*p, 1, 0),
                Change::Remove(p) => local.remove(p),
            }
            .with_context(|| format!("SM_LOCAL_PORTS: {c:?}"))?;
        }
        let (include, exclude) = (&s.include_cidrs, &s.exclude_cidrs);
        for (map, capacity, list) in [
            ("SM_INCLUDE_V4", MAX_INCLUDE_CIDRS, include),
            ("SM_EXCLUDE_V4", MAX_EXCLUDE_CIDRS, exclude),
        ] {
            // (prefix length, address in network order, host bits cleared); the IPv4 address is
            // the last word of its mapped form.
            let want: Vec<(u32, u32)> = list
                .iter()
                .filter(|c| c.is_v4())
                .map(|c| (c.len as u32, ip6_of(c.network())[3]))
                .collect();
            update_trie(&mut self.bpf, map, capacity, &want)?;
        }
        for (map, capacity, list) in [
            ("SM_INCLUDE_V6", MAX_INCLUDE_CIDRS_V6, include),
            ("SM_EXCLUDE_V6", MAX_EXCLUDE_CIDRS_V6, exclude),
        ] {
            let want: Vec<(u32, Ip6)> = list
                .iter()
                .filter(|c| !c.is_v4())
                .map(|c| (c.len as u32, ip6_of(c.network())))
                .collect();
            update_trie(&mut self.bpf, map, capacity, &want)?;
        }
        let mut arr: Array<&mut MapData, GlobalConfig> =
            Array::try_from(self.bpf.map_mut("SM_CONFIG").context("SM_CONFIG")?)?;
        arr.set(0, cfg, 0)?;
        Ok(())
    }

    /// sock_ops and getsockopt at the cgroup v2 root (they must see the agent's accepted sockets
    /// wherever the agent runs), sk_msg on the sockhash.
    fn attach_host(&mut self) -> Result<()> {
        let links = self.layout.links();
        let root = std::fs::File::open(&self.cgroup_mount)?;
        attach_pinned(
            &self.bpf,
            "sm_sockops",
            &root,
            AttachType::SockOps,
            &links.join("host-sockops"),
        )?;
        attach_pinned(
            &self.bpf,
            "sm_getsockopt",
            &root,
            AttachType::CgroupGetsockopt,
            &links.join("host-getsockopt"),
        )?;
        let socks = self.bpf.map("SM_SOCKS").context("SM_SOCKS")?;
        let map_fd = match socks {
            aya::maps::Map::SockHash(m) => m.fd().as_fd().try_clone_to_owned()?,
            _ => bail!("SM_SOCKS is not a sockhash"),
        };
        attach_pinned(
            &self.bpf,
            "sm_skmsg",
            &map_fd,
            AttachType::SkMsgVerdict,
            &links.join("host-skmsg"),
        )?;
        Ok(())
    }

    /// The cgroup ids with a links directory (`cg-<id>`).
    fn linked_cgroups(&self) -> Vec<u64> {
        std::fs::read_dir(self.layout.links())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("cg-")
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .collect()
    }

    /// Swap our programs into the per-cgroup links an earlier run pinned.
    fn adopt_cgroups(&mut self) -> Result<usize> {
        let mut n = 0;
        for id in self.linked_cgroups() {
            let dir = self.layout.cgroup_links(id, false)?;
            for (prog, _, file) in CGROUP_PROGRAMS {
                let pin = dir.join(file);
                if pin.exists() {
                    let p = self.bpf.program(prog).context("program missing")?;
                    let link = sys::obj_get(&pin)?;
                    sys::link_update(link.as_fd(), p.fd()?.as_fd())
                        .with_context(|| format!("updating link {}", pin.display()))?;
                }
            }
            tracing::debug!(cgroup_id = id, "re-adopted pinned interception");
            n += 1;
        }
        Ok(n)
    }

    /// Intercept connections made by processes in `rel` (relative to the cgroup2 mount) and
    /// its descendants. Re-enabling changes the mode in place.
    pub fn enable(&mut self, rel: &str, mode: Mode) -> Result<CgroupStatus> {
        if mode == Mode::Off {
            bail!("mode off: use disable");
        }
        let path = cgroup::resolve(&self.cgroup_mount, rel)?;
        let id = cgroup::id(&path)?;
        let mut cgroups: HashMap<&mut MapData, u64, CgroupPolicy> =
            HashMap::try_from(self.bpf.map_mut("SM_CGROUPS").context("SM_CGROUPS")?)?;
        let mut policy = cgroups.get(&id, 0).unwrap_or_default();
        policy.mode = mode as u32;
        cgroups
            .insert(id, policy, 0)
            .context("recording the cgroup policy")?;
        let dir = self.layout.cgroup_links(id, true)?;
        let cg = std::fs::File::open(&path)?;
        for (prog, at, file) in CGROUP_PROGRAMS {
            attach_pinned(&self.bpf, prog, &cg, *at, &dir.join(file))?;
        }
        tracing::info!(cgroup = %cgroup::display_rel(&self.cgroup_mount, &path), id, mode = mode_name(mode), "interception enabled");
        self.status_of(id)
    }

    /// Stop intercepting `rel`: its links are unpinned (detaching them) and its policy removed.
    pub fn disable(&mut self, rel: &str) -> Result<()> {
        let path = cgroup::resolve(&self.cgroup_mount, rel)?;
        let id = cgroup::id(&path)?;
        if !self.layout.cgroup_links(id, false)?.exists() {
            bail!("cgroup {rel:?} is not intercepted");
        }
        self.disable_id(id)?;
        tracing::info!(cgroup = rel, id, "interception disabled");
        Ok(())
    }

    /// Unpin the links of cgroup `id` and drop its policy entry; returns how many links went.
    fn disable_id(&mut self, id: u64) -> Result<usize> {
        let dir = self.layout.cgroup_links(id, false)?;
        let links = if dir.exists() { remove_pins(&dir)? } else { 0 };
        let mut cgroups: HashMap<&mut MapData, u64, CgroupPolicy> =
            HashMap::try_from(self.bpf.map_mut("SM_CGROUPS").context("SM_CGROUPS")?)?;
        let _ = cgroups.remove(&id);
        Ok(links)
    }

    /// Disable every intercepted cgroup.
    pub fn disable_all(&mut self) -> Result<usize> {
        let mut ids: Vec<u64> = self.policy_ids()?;
        ids.extend(self.linked_cgroups());
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            self.disable_id(*id)?;
        }
        Ok(ids.len())
    }

    fn policy_ids(&self) -> Result<Vec<u64>> {
        let cgroups: HashMap<&MapData, u64, CgroupPolicy> =
            HashMap::try_from(self.bpf.map("SM_CGROUPS").context("SM_CGROUPS")?)?;
        Ok(cgroups.keys().filter_map(|k| k.ok()).collect())
    }

    /// Forget cgroups that were deleted: a cgroup id (policy entry or links directory) that no
    /// longer resolves to a directory of the hierarchy loses its entry and links. Returns the ids
    /// removed. A hierarchy that could not be read completely removes nothing.
    pub fn forget_removed_cgroups(&mut self) -> Result<Vec<u64>> {
        let mut ids: HashSet<u64> = self.policy_ids()?.into_iter().collect();
        ids.extend(self.linked_cgroups());
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let live = cgroup::ids_below(&self.cgroup_mount)?;
        let mut gone: Vec<u64> = ids.into_iter().filter(|id| !live.contains_key(id)).collect();
        gone.sort_unstable();
        for id in &gone {
            let links = self.disable_id(*id)?;
            tracing::info!(
                cgroup_id = id,
                links,
                "intercepted cgroup was deleted: its policy entry and links are removed"
            );
        }
        Ok(gone)
    }

    /// The sockhash's counters and local-leg ports.
    pub fn sockhash_status(&self) -> Result<SockhashStatus> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.bpf.map("SM_STATS").context("SM_STATS")?)?;
        let mut sums = [0u64; STAT_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = stats.get(&(i as u32), 0)?.iter().sum();
        }
        let local: HashMap<&MapData, u32, u8> =
            HashMap::try_from(self.bpf.map("SM_LOCAL_PORTS").context("SM_LOCAL_PORTS")?)?;
        let mut local_ports: Vec<u16> = local.keys().filter_map(|k| k.ok()).map(|p| p as u16).collect();
        local_ports.sort_unstable();
        let at = |s: Stat| sums[s as usize];
        Ok(SockhashStatus {
            local_ports,
            app_leg_sockets: at(Stat::AppLegSocks),
            local_leg_sockets: at(Stat::LocalLegSocks),
            msg_redirected: at(Stat::MsgRedirected),
            bytes_redirected: at(Stat::BytesRedirected),
            msg_passed: at(Stat::MsgPassed),
            insert_failed: at(Stat::InsertFailed),
        })
    }

    fn status_of(&self, id: u64) -> Result<CgroupStatus> {
        self.status()?
            .into_iter()
            .find(|s| s.cgroup_id == id)
            .context("cgroup vanished from the policy map")
    }

    pub fn status(&self) -> Result<Vec<CgroupStatus>> {
        let cgroups: HashMap<&MapData, u64, CgroupPolicy> =
            HashMap::try_from(self.bpf.map("SM_CGROUPS").context("SM_CGROUPS")?)?;
        let entries: Vec<(u64, CgroupPolicy)> = cgroups.iter().collect::<Result<_, _>>()?;
        // One walk of the hierarchy names them all.
        let paths: StdHashMap<u64, PathBuf> = if entries.is_empty() {
            StdHashMap::new()
        } else {
            cgroup::ids_below(&self.cgroup_mount).unwrap_or_default()
        };
        let mut out = Vec::new();
        for (id, p) in entries {
            let cgroup = paths
                .get(&id)
                .map(|p| cgroup::display_rel(&self.cgroup_mount, p))
                .unwrap_or_else(|| format!("(removed cgroup {id})"));
            out.push(CgroupStatus {
                cgroup,
                cgroup_id: id,
                mode: mode_name(Mode::from_u32(p.mode)).into(),
                redirected: p.redirected,
                passed: p.passed,
                fail_open: p.fail_open,
                fail_open_stalled: p.fail_open_stalled,
            });
        }
        out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        Ok(out)
    }
}

/// The pinned maps' definitions in this object, one `NAME type key value entries flags` line
/// each, sorted: what `MAP_LAYOUT_VERSION` stands for.
pub fn pinned_map_layout() -> Result<String> {
    let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).context("parsing the embedded BPF object")?;
    let mut lines: Vec<String> = obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == aya_obj::maps::PinningType::ByName)
        .map(|(name, m)| {
            format!(
                "{name} {} {} {} {} {:#x}",
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags()
            )
        })
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changing a pinned map (its shape here, or the meaning of a field) needs a new
    /// `sockmesh_common::MAP_LAYOUT_VERSION`, so that agents refuse maps of the old layout
    /// instead of running new programs on them. When this fails: bump the version, then copy
    /// the new layout below.
    #[test]
    fn map_layout_is_versioned() {
        const LAYOUT: (u32, &str) = (
            5,
            "SM_CGROUPS 1 8 40 1024 0x0\n\
             SM_CONFIG 2 4 72 1 0x0\n\
             SM_EXCLUDE_PORTS 1 4 1 256 0x0\n\
             SM_EXCLUDE_V4 11 8 1 256 0x1\n\
             SM_EXCLUDE_V6 11 20 1 256 0x1\n\
             SM_HEARTBEAT 2 4 8 1 0x0\n\
             SM_INCLUDE_V4 11 8 1 256 0x1\n\
             SM_INCLUDE_V6 11 20 1 256 0x1\n\
             SM_LOCAL_DIALS 9 48 1 4096 0x0\n\
             SM_LOCAL_PORTS 1 4 1 256 0x0\n\
             SM_ORIG_DST 9 8 32 65536 0x0\n\
             SM_PEER_ORIG 9 32 32 65536 0x0\n\
             SM_SOCKS 18 48 4 65536 0x0\n\
             SM_STATS 6 4 8 6 0x0",
        );
        let now = pinned_map_layout().unwrap();
        assert_eq!(
            (sockmesh_common::MAP_LAYOUT_VERSION, now.as_str()),
            LAYOUT,
            "the pinned maps changed: bump MAP_LAYOUT_VERSION in ebpf/common/src/lib.rs and put this layout into the test:\n{now}"
        );
    }

    #[test]
    fn policy_updates_insert_before_they_remove() {
        use Change::{Insert, Remove};
        // 22 stays untouched; 80 goes in before 443 comes out.
        assert_eq!(
            policy_changes("T", 8, &[22, 443], &[22, 80, 80]),
            vec![Insert(80), Remove(443)]
        );
        assert_eq!(policy_changes("T", 8, &[22], &[22]), vec![]);
        // Old and new do not fit together: the stale ones make room first.
        assert_eq!(
            policy_changes("T", 2, &[1, 2], &[3, 4]),
            vec![Remove(1), Remove(2), Insert(3), Insert(4)]
        );
    }

    #[test]
    fn cidr_parses_and_rejects() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().len, 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().unwrap_err().contains("banana"));
        let v6 = "fd00:213::/32".parse::<Cidr>().unwrap();
        assert!(!v6.is_v4());
        assert_eq!(v6.to_string(), "fd00:213::/32");
        assert_eq!("::1".parse::<Cidr>().unwrap().len, 128);
        assert!("::/129".parse::<Cidr>().unwrap_err().contains("0..128"));
        assert!("10.0.0.0/x".parse::<Cidr>().unwrap_err().contains("0..32"));
        // Policy keys are the network address: one prefix is one key however it is written.
        let net = |s: &str| s.parse::<Cidr>().unwrap().network().to_string();
        assert_eq!(net("10.1.2.3/8"), "10.0.0.0");
        assert_eq!(net("10.1.2.3/32"), "10.1.2.3");
        assert_eq!(net("10.1.2.3/0"), "0.0.0.0");
        assert_eq!(net("fd00:213::1/32"), "fd00:213::");
        assert_eq!(net("fd00:213::1"), "fd00:213::1");
        assert_eq!(net("fd00::1/0"), "::");
    }
}
