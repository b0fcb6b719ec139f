//! eBPF interception: load the embedded programs, pin maps and links under the pin directory,
//! attach the host programs once, and enable/disable per cgroup.
//!
//! Every attachment is a bpf_link pinned under `<pin>/links/`, so interception outlives the
//! agent process (fail-open covers the time it is down, see `connect.rs` in the BPF crate). A
//! restarted agent swaps its freshly loaded programs into the existing links with
//! `BPF_LINK_UPDATE`: no detach gap, and aya-log output goes to the new process.
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use aya::programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use sockmesh_common::{CgroupPolicy, GlobalConfig, Ip6, MAX_AGENT_PORTS, Mode, ip6_of};

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

pub struct EbpfInterceptor {
    settings: InterceptSettings,
    cgroup_mount: PathBuf,
    bpf: Ebpf,
}

impl EbpfInterceptor {
    /// Load, configure and attach the host programs; re-adopt interception pinned by an earlier
    /// run. Mounts bpffs at /sys/fs/bpf when it is not mounted.
    pub fn start(settings: InterceptSettings) -> Result<EbpfInterceptor> {
        let bpffs = Path::new("/sys/fs/bpf");
        if settings.pin_dir.starts_with(bpffs) && sys::ensure_bpffs(bpffs).context("mounting bpffs")? {
            tracing::info!("mounted bpffs at /sys/fs/bpf");
        }
        let cgroup_mount = cgroup::cgroup2_mount()?;
        let links = settings.pin_dir.join("links");
        std::fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
        let bpf = load_object(&settings.pin_dir.join("maps"), settings.bpf_log_level)?;
        let mut me = EbpfInterceptor {
            settings,
            cgroup_mount,
            bpf,
        };
        me.write_policy()?;
        me.attach_host()?;
        let adopted = me.adopt_cgroups()?;
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
        };
        let mut ports: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(self.bpf.map_mut("SM_EXCLUDE_PORTS").context("SM_EXCLUDE_PORTS")?)?;
        let old: Vec<u32> = ports.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = ports.remove(&k);
        }
        for p in &s.exclude_ports {
            ports.insert(*p as u32, 1, 0)?;
        }
        let (include, exclude) = (s.include_cidrs.clone(), s.exclude_cidrs.clone());
        for (map, list, v4) in [
            ("SM_INCLUDE_V4", &include, true),
            ("SM_EXCLUDE_V4", &exclude, true),
            ("SM_INCLUDE_V6", &include, false),
            ("SM_EXCLUDE_V6", &exclude, false),
        ] {
            let mine = list.iter().filter(|c| c.is_v4() == v4);
            if v4 {
                // The IPv4 address is the last word of its mapped form.
                let keys = mine.map(|c| Key::new(c.len as u32, ip6_of(c.addr)[3])).collect();
                self.replace_trie::<u32>(map, keys)?;
            } else {
                let keys = mine.map(|c| Key::new(c.len as u32, ip6_of(c.addr))).collect();
                self.replace_trie::<Ip6>(map, keys)?;
            }
        }
        let mut arr: Array<&mut MapData, GlobalConfig> =
            Array::try_from(self.bpf.map_mut("SM_CONFIG").context("SM_CONFIG")?)?;
        arr.set(0, cfg, 0)?;
        Ok(())
    }

    /// Make the LPM trie `map` hold exactly `keys`.
    fn replace_trie<K: aya::Pod>(&mut self, map: &str, keys: Vec<Key<K>>) -> Result<()> {
        let mut trie: LpmTrie<&mut MapData, K, u8> =
            LpmTrie::try_from(self.bpf.map_mut(map).context(map.to_string())?)?;
        let old: Vec<Key<K>> = trie.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = trie.remove(&k);
        }
        for k in keys {
            trie.insert(&k, 1, 0)?;
        }
        Ok(())
    }

    /// sock_ops and getsockopt at the cgroup v2 root (they must see the agent's accepted sockets
    /// wherever the agent runs), sk_msg on the sockhash.
    fn attach_host(&mut self) -> Result<()> {
        let links = self.settings.pin_dir.join("links");
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

    /// Swap our programs into the per-cgroup links an earlier run pinned.
    fn adopt_cgroups(&mut self) -> Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(self.settings.pin_dir.join("links"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("cg-").and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            for (prog, _, file) in CGROUP_PROGRAMS {
                let pin = e.path().join(file);
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

    fn cgroup_links_dir(&self, id: u64) -> PathBuf {
        self.settings.pin_dir.join("links").join(format!("cg-{id}"))
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
        let dir = self.cgroup_links_dir(id);
        std::fs::create_dir_all(&dir)?;
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
        if !self.cgroup_links_dir(id).exists() {
            bail!("cgroup {rel:?} is not intercepted");
        }
        self.disable_id(id)?;
        tracing::info!(cgroup = rel, id, "interception disabled");
        Ok(())
    }

    fn disable_id(&mut self, id: u64) -> Result<()> {
        let dir = self.cgroup_links_dir(id);
        if dir.exists() {
            remove_pins(&dir)?;
        }
        let mut cgroups: HashMap<&mut MapData, u64, CgroupPolicy> =
            HashMap::try_from(self.bpf.map_mut("SM_CGROUPS").context("SM_CGROUPS")?)?;
        let _ = cgroups.remove(&id);
        Ok(())
    }

    /// Disable every intercepted cgroup.
    pub fn disable_all(&mut self) -> Result<usize> {
        let ids: Vec<u64> = self.status()?.iter().map(|s| s.cgroup_id).collect();
        for id in &ids {
            self.disable_id(*id)?;
        }
        Ok(ids.len())
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
        let mut out = Vec::new();
        for item in cgroups.iter() {
            let (id, p) = item?;
            let cgroup = cgroup::path_of(&self.cgroup_mount, id)
                .map(|p| cgroup::display_rel(&self.cgroup_mount, &p))
                .unwrap_or_else(|| format!("(removed cgroup {id})"));
            out.push(CgroupStatus {
                cgroup,
                cgroup_id: id,
                mode: mode_name(Mode::from_u32(p.mode)).into(),
                redirected: p.redirected,
                passed: p.passed,
                fail_open: p.fail_open,
            });
        }
        out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        Ok(out)
    }
}

/// Remove every pin below `dir` and the directories themselves. Unpinning a link whose last fd
/// is gone detaches it; unpinning a map frees it once no program uses it.
pub fn remove_pins(dir: &Path) -> Result<usize> {
    let mut n = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            n += remove_pins(&p)?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
            n += 1;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(n)
}

/// Remove all of sockmesh's pinned links and maps under `pin_dir` (links first, so programs
/// detach before their maps go), then wait until the kernel has freed those maps (it does so
/// asynchronously), so that "afterwards nothing of ours is listed" holds when this returns.
/// Returns how many pins were removed.
pub fn uninstall(pin_dir: &Path) -> Result<usize> {
    let mut map_ids = Vec::new();
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("maps")) {
        for e in rd.flatten() {
            if let Ok(info) = aya::maps::MapData::from_pin(e.path()).and_then(|m| m.info()) {
                map_ids.push(info.id());
            }
        }
    }
    let mut n = remove_pins(&pin_dir.join("links"))?;
    n += remove_pins(&pin_dir.join("maps"))?;
    if pin_dir.exists() {
        n += remove_pins(pin_dir)?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = aya::maps::loaded_maps()
            .filter_map(|m| m.ok())
            .map(|m| m.id())
            .filter(|id| map_ids.contains(id))
            .collect();
        if alive.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "unpinned, but the kernel still holds map(s) {alive:?} after 10 s (a process still has them open?)"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
