//! The bench's set-up: a Motan2 provider, the agent (both roles, with interception) and haproxy,
//! each a guarded process, the agent's pins and iptables chain, and the client cgroup; and one
//! load-generator run in a mode.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sockmesh_testkit::{ChildCgroup, ChildProcess, NatChain, PinDir, agent, free_ports};

use super::{Case, Counters, Mode, Options, Run};
use crate::util::{proc_cpu_rss, project_root};

/// How long the agent may drain after SIGTERM before it is killed (as `sockmesh uninstall`
/// would wait for it).
const AGENT_GRACE: Duration = Duration::from_secs(15);

/// The provider, the agent and haproxy, and the cgroup the load generator runs in. Dropping it
/// removes everything (fields drop in declaration order): the processes first, so the agent lets
/// go of its BPF maps, then the agent's pins and iptables chain, then the cgroup.
pub struct Env {
    bin: PathBuf,
    loadgen: PathBuf,
    provider_addr: String,
    /// SKMSG_SERVICE's provider (the ebpf-sockmap-legs app dials it).
    skmsg_provider_addr: String,
    /// The agent's control socket (interception is switched there).
    agent_control: PathBuf,
    /// The agent port (client role), for agent-explicit and agent-client.
    agent_port_addr: String,
    /// The export port (server role), for agent-server.
    export_port_addr: String,
    agent_pid: u32,
    /// The agent's RSS (KiB) idle, after start-up (interception loaded and self-tested).
    pub agent_idle_rss_kib: u64,
    /// The agents of one mode each, with their agent port and PID, for those that run: the
    /// baseline build (agent-baseline, when given), this build with `shards: false`
    /// (agent-client-shared) and with `shard_policy: batch` (agent-client-batch).
    side: BTreeMap<Mode, (String, u32)>,
    /// The "legs" agent's port and PID (agent-two-hop-* modes), when one of them runs.
    legs: Option<(String, u32)>,
    /// The legs agent's control socket.
    legs_control: PathBuf,
    haproxy_addr: String,
    haproxy_pid: u32,
    _procs: Vec<ChildProcess>,
    _pins: PinDir,
    _chain: NatChain,
    _legs_pins: PinDir,
    _legs_chain: NatChain,
    cgroup: ChildCgroup,
}

/// The bench service through both roles of the agent: a refer (client role) whose direct
/// registry is the agent's own export port, and that export (server role) in front of the
/// provider. Agent-explicit and the intercepted modes all take this path; interception
/// overhead = mode - agent-explicit.
const SERVICE: &str = "com.weibo.bench.EchoService";
/// The same echo service behind the default filter chain (agent-filters mode).
const FILTERED_SERVICE: &str = "com.weibo.bench.FilteredEchoService";
/// The echo service through the client role alone (agent-client mode): a refer whose direct
/// registry is the provider itself, one Motan2 hop like haproxy's one L4 hop.
const CLIENT_SERVICE: &str = "com.weibo.bench.ClientEchoService";
/// The echo service through the legs agent's client role to its own export port over TCP
/// (agent-two-hop-tcp), and the same with sk_msg on both local legs (agent-two-hop-skmsg).
const TWO_HOP_TCP_SERVICE: &str = "com.weibo.bench.TwoHopTcpEchoService";
const TWO_HOP_SKMSG_SERVICE: &str = "com.weibo.bench.TwoHopSkmsgEchoService";
/// The echo service through both roles of the main agent (local short-cut) to a provider of its
/// own, with `sockmesh.sockmap: true` on the export, so sk_msg carries the provider leg
/// (agent-explicit-skmsg). Its export port and provider are its own: the kernel's list is by
/// port, and the other modes' legs must stay TCP.
const SKMSG_SERVICE: &str = "com.weibo.bench.SkmsgEchoService";
/// The echo service through the client role alone to that provider, with `sockmesh.sockmap:
/// true` on the refer (its direct endpoint is on loopback): ebpf-sockmap-legs, one hop with sk_msg
/// on both local legs (app -> agent, agent -> provider).
const SKMSG_CLIENT_SERVICE: &str = "com.weibo.bench.SkmsgClientEchoService";
/// What sockmesh calls its default filter chain: an access-log line and metrics per call, on
/// both roles.
const DEFAULT_FILTERS: &str = "accessLog,metrics";

/// The bench mesh of an agent whose export port is `eport`; `skmsg` (the main agent only): the
/// SKMSG_SERVICE export's own port and provider.
fn mesh_sections(eport: u16, provider: &str, skmsg: Option<(u16, &str)>) -> Result<String> {
    let (host, port) = provider.rsplit_once(':').context("provider address")?;
    let mut registries = String::new();
    let mut refers = String::new();
    let mut services = String::new();
    if let Some((sk_eport, sk_provider)) = skmsg {
        let (sk_host, sk_port) = sk_provider.rsplit_once(':').context("provider address")?;
        registries += &format!(
            "  self_skmsg:\n    protocol: direct\n    address: \"127.0.0.1:{sk_eport}\"\n\
             \x20 provider_skmsg:\n    protocol: direct\n    address: \"{sk_provider}\"\n"
        );
        refers += &format!(
            "  skmsg:\n    path: {SKMSG_SERVICE}\n    group: bench\n    registry: self_skmsg\n    requestTimeout: 5000\n\
             \x20 skmsg_client:\n    path: {SKMSG_CLIENT_SERVICE}\n    group: bench\n    registry: provider_skmsg\n    requestTimeout: 5000\n    sockmesh.sockmap: true\n"
        );
        services += &format!(
            "  skmsg:\n    path: {SKMSG_SERVICE}\n    group: bench\n    export: \"motan2:{sk_eport}\"\n    provider: motan2\n    proxy: \"motan2:{sk_port}\"\n    proxy.host: {sk_host}\n    requestTimeout: 5000\n    sockmesh.sockmap: true\n"
        );
    }
    for (id, path, filters) in [
        ("bench", SERVICE, ""),
        ("filtered", FILTERED_SERVICE, DEFAULT_FILTERS),
    ] {
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("    filter: \"{filters}\"\n")
        };
        refers += &format!(
            "  {id}:\n    path: {path}\n    group: bench\n    registry: self\n    requestTimeout: 5000\n{filter}"
        );
        services += &format!(
            "  {id}:\n    path: {path}\n    group: bench\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{port}\"\n    proxy.host: {host}\n    requestTimeout: 5000\n{filter}"
        );
    }
    refers += &format!(
        "  client:\n    path: {CLIENT_SERVICE}\n    group: bench\n    registry: provider\n    requestTimeout: 5000\n"
    );
    Ok(format!(
        "motan-registry:\n  self:\n    protocol: direct\n    address: \"127.0.0.1:{eport}\"\n\
         \x20 provider:\n    protocol: direct\n    address: \"{provider}\"\n{registries}\
         motan-refer:\n{refers}motan-service:\n{services}"
    ))
}

/// Start the provider, the agent and haproxy with their configs and logs in `dir`.
pub fn start_env(
    dir: &Path,
    agent_workers: usize,
    baseline_bin: Option<&Path>,
    legs: bool,
    shared: bool,
    batch: bool,
) -> Result<Env> {
    let root = project_root();
    let bin = root.join("target/release/sockmesh");
    let loadgen = root.join("target/release/sockmesh-loadgen");
    // 0 provider, 1-4 agent (agent port, eport, mport, transparent), 5 haproxy, 7-10 baseline,
    // 11-17 legs, 18-21 shared, 22 the SKMSG_SERVICE export port, 23 its provider, 24-27 batch.
    let ports = free_ports(28);
    // Declared before the processes, so that on an early return they go after them.
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-bench-{}", std::process::id()));
    let pins = PinDir::new(&bin, &pin_dir);
    let chain = NatChain::new(format!("SMBENCH{}", std::process::id()));
    let legs_pin_dir = PathBuf::from(format!("/sys/fs/bpf/sockmesh-bench-legs-{}", std::process::id()));
    let legs_pins = PinDir::new(&bin, &legs_pin_dir);
    let legs_chain = NatChain::new(format!("SMBLEGS{}", std::process::id()));
    let mut procs = Vec::new();

    // The provider listens on its own loopback address; that is what clients dial.
    let provider_addr = start_provider(&loadgen, "the ", &format!("127.0.0.10:{}", ports[0]), &mut procs)?;
    let skmsg_provider_addr = start_provider(
        &loadgen,
        "the sk_msg provider leg's ",
        &format!("127.0.0.11:{}", ports[23]),
        &mut procs,
    )?;

    let cfg = dir.join("agent.yaml");
    // The agent removes it when it stops, so nothing is left among the results.
    let agent_control = dir.join("agent.sock");
    std::fs::write(
        &cfg,
        format!(
            "motan-agent:\n  port: {}\n  eport: {}\n  mport: {}\n  application: bench\n\
             sockmesh:\n  log_level: \"warn,sockmesh::access=info\"\n  worker_threads: {agent_workers}\n\
             \x20 admin:\n    control_socket: {}\n  intercept:\n    transparent_port: {}\n    pin_dir: {}\n    iptables_chain: {}\n    bpf_log_level: warn\n{}",
            ports[1],
            ports[2],
            ports[3],
            agent_control.display(),
            ports[4],
            pin_dir.display(),
            chain.name(),
            mesh_sections(ports[2], &provider_addr, Some((ports[22], &skmsg_provider_addr)))?
        ),
    )?;
    let agent_log = dir.join("agent.log");
    // SIGTERM drains the agent; idle, it stops at once.
    let mut agent = agent::spawn("the agent", Command::new(&bin), &cfg, &agent_log)?.with_grace(AGENT_GRACE);
    let agent_pid = agent.pid();
    let agent_admin: SocketAddr = ([127, 0, 0, 1], ports[3]).into();
    let started = agent::await_admin(&mut agent, agent_admin, &agent_log);
    procs.push(agent);
    started?;
    // Start-up work (BPF load, self-test) is done once the admin port answers; let it settle.
    std::thread::sleep(Duration::from_secs(1));
    let agent_idle_rss_kib = proc_cpu_rss(agent_pid).1;

    // Another agent with the same mesh on its own ports, without interception: `ports` are its
    // agent port, export port, mport and transparent port; `extra` goes into its sockmesh section.
    // Each with its own control socket and pin directory (whose lock says one daemon per pin
    // directory; nothing is pinned with interception off), so several can run at once.
    let mut side_agent = |name: &str, bin: &Path, ports: &[u16], extra: &str| -> Result<(String, u32)> {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "motan-agent:\n  port: {}\n  eport: {}\n  mport: {}\n  application: bench-{name}\n\
                 sockmesh:\n  log_level: \"warn,sockmesh::access=info\"\n  worker_threads: {agent_workers}\n{extra}\
                 \x20 admin:\n    control_socket: {}\n\
                 \x20 intercept:\n    enabled: false\n    transparent_port: {}\n    pin_dir: /sys/fs/bpf/sockmesh-bench-{name}-{}\n{}",
                ports[0],
                ports[1],
                ports[2],
                dir.join(format!("{name}.sock")).display(),
                ports[3],
                std::process::id(),
                mesh_sections(ports[1], &provider_addr, None)?
            ),
        )?;
        let log = dir.join(format!("{name}.log"));
        let mut a = agent::spawn(&format!("the {name} agent"), Command::new(bin), &cfg, &log)?
            .with_grace(AGENT_GRACE);
        let pid = a.pid();
        let started = agent::await_admin(&mut a, ([127, 0, 0, 1], ports[2]).into(), &log);
        procs.push(a);
        started?;
        Ok((format!("127.0.0.1:{}", ports[0]), pid))
    };
    let mut side = BTreeMap::new();
    // The baseline build (agent-baseline mode).
    if let Some(bbin) = baseline_bin {
        side.insert(
            Mode::AgentBaseline,
            side_agent("baseline", bbin, &ports[7..11], "")?,
        );
    }
    // This build with its connections on the multi-threaded runtime (agent-client-shared mode).
    if shared {
        side.insert(
            Mode::AgentClientShared,
            side_agent("shared", &bin, &ports[18..22], "  shards: false\n")?,
        );
    }
    // This build with its shards' threads SCHED_BATCH (agent-client-batch mode).
    if batch {
        side.insert(
            Mode::AgentClientBatch,
            side_agent("batch", &bin, &ports[24..28], "  shard_policy: batch\n")?,
        );
    }

    let legs = if legs {
        Some(start_legs_agent(
            dir,
            &bin,
            &loadgen,
            agent_workers,
            &ports[11..18],
            &legs_pin_dir,
            legs_chain.name(),
            &provider_addr,
            &mut procs,
        )?)
    } else {
        None
    };

    let haproxy_addr: SocketAddr = ([127, 0, 0, 1], ports[5]).into();
    let hcfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n    nbthread 1\n    maxconn 8000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             listen bench\n    bind {haproxy_addr}\n    server provider {provider_addr}\n"
        ),
    )?;
    let mut haproxy = ChildProcess::spawn(
        "haproxy (installed by cargo xtask setup)",
        Command::new("haproxy")
            .arg("-f")
            .arg(&hcfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?),
    )?;
    let haproxy_pid = haproxy.pid();
    haproxy
        .await_port(haproxy_addr, agent::START_TIMEOUT)
        .with_context(|| format!("haproxy did not start; see {}", dir.join("haproxy.log").display()))?;
    procs.push(haproxy);

    let cgroup = ChildCgroup::create(&format!("sockmesh-bench-{}", std::process::id()))?;
    Ok(Env {
        bin,
        loadgen,
        provider_addr,
        skmsg_provider_addr,
        agent_control,
        agent_port_addr: format!("127.0.0.1:{}", ports[1]),
        export_port_addr: format!("127.0.0.1:{}", ports[2]),
        agent_pid,
        agent_idle_rss_kib,
        side,
        legs,
        legs_control: dir.join("legs.sock"),
        haproxy_addr: haproxy_addr.to_string(),
        haproxy_pid,
        _procs: procs,
        _pins: pins,
        _chain: chain,
        _legs_pins: legs_pins,
        _legs_chain: legs_chain,
        cgroup,
    })
}

/// The "legs" agent of the agent-two-hop-* modes: the local short-cut off, so its client role
/// dials its own export ports over loopback; one export (TWO_HOP_TCP_SERVICE) in front of the
/// bench provider, one (TWO_HOP_SKMSG_SERVICE) with `sockmesh.sockmap: true` in front of a
/// provider of its own (the kernel's list is by port, so the opted-in provider must not be the
/// one the other modes use). Interception on (its own pins), for the sock_ops and sk_msg
/// programs; no cgroup is enabled. `ports`: agent, mport, transparent, two export ports, the
/// own provider, spare. Returns the agent port and PID.
#[allow(clippy::too_many_arguments)]
fn start_legs_agent(
    dir: &Path,
    bin: &Path,
    loadgen: &Path,
    agent_workers: usize,
    ports: &[u16],
    pin_dir: &Path,
    chain: &str,
    bench_provider: &str,
    procs: &mut Vec<ChildProcess>,
) -> Result<(String, u32)> {
    let own_provider = start_provider(
        loadgen,
        "the sk_msg legs' ",
        &format!("127.0.0.10:{}", ports[5]),
        procs,
    )?;
    let service = |id: &str, path: &str, eport: u16, provider: &str, extra: &str| -> Result<String> {
        let (host, port) = provider.rsplit_once(':').context("provider address")?;
        Ok(format!(
            "  {id}:\n    path: {path}\n    group: bench\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{port}\"\n    proxy.host: {host}\n    requestTimeout: 5000\n{extra}"
        ))
    };
    let (tcp_eport, skmsg_eport) = (ports[3], ports[4]);
    let cfg = dir.join("legs.yaml");
    std::fs::write(
        &cfg,
        format!(
            "motan-agent:\n  port: {}\n  eport: {tcp_eport}\n  mport: {}\n  application: bench-legs\n\
             sockmesh:\n  log_level: warn\n  worker_threads: {agent_workers}\n  local_shortcut: false\n\
             \x20 admin:\n    control_socket: {}\n  intercept:\n    transparent_port: {}\n    pin_dir: {}\n    iptables_chain: {chain}\n    bpf_log_level: warn\n\
             motan-registry:\n  tcp:\n    protocol: direct\n    address: \"127.0.0.1:{tcp_eport}\"\n\
             \x20 skmsg:\n    protocol: direct\n    address: \"127.0.0.1:{skmsg_eport}\"\n\
             motan-refer:\n  tcp:\n    path: {TWO_HOP_TCP_SERVICE}\n    group: bench\n    registry: tcp\n    requestTimeout: 5000\n\
             \x20 skmsg:\n    path: {TWO_HOP_SKMSG_SERVICE}\n    group: bench\n    registry: skmsg\n    requestTimeout: 5000\n\
             motan-service:\n{}{}",
            ports[0],
            ports[1],
            dir.join("legs.sock").display(),
            ports[2],
            pin_dir.display(),
            service("tcp", TWO_HOP_TCP_SERVICE, tcp_eport, bench_provider, "")?,
            service(
                "skmsg",
                TWO_HOP_SKMSG_SERVICE,
                skmsg_eport,
                &own_provider,
                "    sockmesh.sockmap: true\n"
            )?,
        ),
    )?;
    let log = dir.join("legs.log");
    let mut agent = agent::spawn("the legs agent", Command::new(bin), &cfg, &log)?.with_grace(AGENT_GRACE);
    let pid = agent.pid();
    let started = agent::await_admin(&mut agent, ([127, 0, 0, 1], ports[1]).into(), &log);
    procs.push(agent);
    started?;
    Ok((format!("127.0.0.1:{}", ports[0]), pid))
}

/// A Motan2 echo provider (`sockmesh-loadgen serve`) listening on `listen`, kept in `procs`;
/// returns the address it listens on. `whose` prefixes its name in errors.
fn start_provider(
    loadgen: &Path,
    whose: &str,
    listen: &str,
    procs: &mut Vec<ChildProcess>,
) -> Result<String> {
    let mut provider = ChildProcess::spawn(
        format!("{whose}Motan2 provider (sockmesh-loadgen serve)"),
        Command::new(loadgen)
            .args(["serve", "--listen", listen])
            .stdout(Stdio::piped()),
    )?;
    let addr = provider.ready()?;
    procs.push(provider);
    Ok(addr)
}

impl Env {
    /// The legs agent's sockhash counters (`sockmesh intercept status --json`), when it runs.
    pub fn legs_sockhash(&self) -> Result<Option<serde_json::Value>> {
        if self.legs.is_none() {
            return Ok(None);
        }
        sockhash(&self.bin, &self.legs_control).map(Some)
    }

    /// How many messages the main agent's sk_msg program has redirected so far.
    fn msg_redirected(&self) -> Result<u64> {
        let h = sockhash(&self.bin, &self.agent_control)?;
        h["msg_redirected"]
            .as_u64()
            .with_context(|| format!("no msg_redirected in the agent's sockhash counters: {h}"))
    }

    fn cli(&self, args: &[&str]) -> Result<()> {
        control_cli(&self.bin, &self.agent_control, args).map(drop)
    }

    /// Put the client cgroup into the mode's interception state.
    fn prepare(&self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Iptables
            | Mode::EbpfConnect
            | Mode::EbpfSockmap
            | Mode::EbpfSockmapClient
            | Mode::EbpfSockmapLegs => self.cli(&[
                "intercept",
                "enable",
                "--cgroup",
                self.cgroup.rel(),
                "--mode",
                match mode {
                    Mode::EbpfSockmapClient | Mode::EbpfSockmapLegs => Mode::EbpfSockmap.name(),
                    m => m.name(),
                },
            ]),
            _ => {
                let _ = self.cli(&["intercept", "disable", "--all"]);
                Ok(())
            }
        }
    }

    pub fn target(&self, mode: Mode) -> Option<String> {
        match mode {
            Mode::Haproxy => Some(self.haproxy_addr.clone()),
            Mode::AgentExplicit | Mode::AgentExplicitSkmsg | Mode::AgentFilters | Mode::AgentClient => {
                Some(self.agent_port_addr.clone())
            }
            Mode::AgentServer => Some(self.export_port_addr.clone()),
            Mode::AgentBaseline | Mode::AgentClientShared | Mode::AgentClientBatch => {
                self.side.get(&mode).map(|a| a.0.clone())
            }
            Mode::AgentTwoHopTcp | Mode::AgentTwoHopSkmsg => self.legs.as_ref().map(|l| l.0.clone()),
            Mode::EbpfSockmapLegs => Some(self.skmsg_provider_addr.clone()),
            _ => Some(self.provider_addr.clone()),
        }
    }

    fn proxy_pid(&self, mode: Mode) -> Option<u32> {
        match mode {
            Mode::Direct => None,
            Mode::Haproxy => Some(self.haproxy_pid),
            Mode::AgentBaseline | Mode::AgentClientShared | Mode::AgentClientBatch => {
                self.side.get(&mode).map(|a| a.1)
            }
            Mode::AgentTwoHopTcp | Mode::AgentTwoHopSkmsg => self.legs.as_ref().map(|l| l.1),
            _ => Some(self.agent_pid),
        }
    }

    pub fn run(&self, mode: Mode, case: &Case, round: u32, opts: &Options) -> Result<Run> {
        let target = self.target(mode).context("mode unavailable")?;
        self.prepare(mode)?;
        let pid = self.proxy_pid(mode);
        // agent-explicit-skmsg has no intercepted app leg: whatever sk_msg redirects during its
        // run is the provider leg's traffic, the proof that it took the sk_msg path.
        let redirected_before = match mode {
            Mode::AgentExplicitSkmsg => Some(self.msg_redirected()?),
            _ => None,
        };
        let before = pid.map(proc_cpu_rss).unwrap_or_default();
        let mut cmd = Command::new(&self.loadgen);
        cmd.args(["run", "--target", &target, "--conns", &case.conns.to_string()])
            .args([
                "--service",
                match mode {
                    Mode::AgentFilters => FILTERED_SERVICE,
                    Mode::AgentClient
                    | Mode::AgentClientShared
                    | Mode::AgentClientBatch
                    | Mode::EbpfSockmapClient => CLIENT_SERVICE,
                    Mode::AgentTwoHopTcp => TWO_HOP_TCP_SERVICE,
                    Mode::AgentTwoHopSkmsg => TWO_HOP_SKMSG_SERVICE,
                    Mode::AgentExplicitSkmsg => SKMSG_SERVICE,
                    Mode::EbpfSockmapLegs => SKMSG_CLIENT_SERVICE,
                    _ => SERVICE,
                },
            ])
            .args(["--payload", &case.payload.to_string()])
            .args(["--duration-ms", &opts.duration.as_millis().to_string()])
            .args(["--warmup-ms", &opts.warmup.as_millis().to_string()])
            .arg("--cgroup")
            .arg(self.cgroup.path());
        match case.rate {
            Some(r) => cmd.args(["--rate", &r.to_string()]),
            None => cmd.arg("--closed"),
        };
        if case.conn_per_request {
            cmd.arg("--conn-per-request");
        }
        // The proxy's RSS is sampled while the load runs; the report shows the peak.
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running sockmesh-loadgen")?;
        // The counters cover the measured window: from the end of the warm-up to shortly before
        // the end of the run.
        let counting = pid.map(|p| PerfStat::start_after(p, opts.warmup, opts.duration));
        let mut peak_rss = 0;
        while child.try_wait()?.is_none() {
            if let Some(p) = pid {
                peak_rss = peak_rss.max(proc_cpu_rss(p).1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().context("running sockmesh-loadgen")?;
        if !out.status.success() {
            bail!(
                "loadgen failed in mode {}: {}",
                mode.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let after = pid.map(proc_cpu_rss).unwrap_or_default();
        if let Some(b) = redirected_before {
            let a = self.msg_redirected()?;
            if a <= b {
                bail!(
                    "mode {} ran but sk_msg redirected nothing on its provider leg (msg_redirected stayed {b}); is sockmesh.sockmap on its export in effect?",
                    mode.name()
                );
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("loadgen output")?;
        Ok(Run {
            mode,
            case: case.name.to_string(),
            round,
            json,
            proxy_cpu_s: after.0 - before.0,
            proxy_rss_kib: after.1.max(peak_rss),
            counters: counting.and_then(PerfStat::finish),
        })
    }
}

/// A `perf stat -p PID` counting in the background (started after a delay, for a window).
struct PerfStat {
    child: Option<std::process::Child>,
    window: Duration,
}

impl PerfStat {
    fn start_after(pid: u32, delay: Duration, duration: Duration) -> PerfStat {
        // Stop counting a little before the load generator stops sending.
        let window = duration
            .saturating_sub(Duration::from_millis(200))
            .max(Duration::from_millis(100));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {:.3}; exec perf stat -x, -p {pid} -e task-clock,context-switches,raw_syscalls:sys_enter -- sleep {:.3}",
                delay.as_secs_f64(),
                window.as_secs_f64()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        PerfStat { child, window }
    }

    /// The counters, or None when perf is missing or could not count (the report says so).
    fn finish(self) -> Option<Counters> {
        let out = self.child?.wait_with_output().ok()?;
        if !out.status.success() {
            return None;
        }
        let mut c = Counters {
            window_s: self.window.as_secs_f64(),
            ..Counters::default()
        };
        let mut seen = 0;
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            // value,unit,event,...
            let f: Vec<&str> = line.split(',').collect();
            let (Some(v), Some(ev)) = (f.first().and_then(|v| v.parse::<f64>().ok()), f.get(2)) else {
                continue;
            };
            match *ev {
                "task-clock" => c.task_clock_ms = v,
                "context-switches" => c.context_switches = v,
                "raw_syscalls:sys_enter" => c.syscalls = v,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 3).then_some(c)
    }
}

/// `sockmesh ARGS --control CONTROL` against an agent's control socket; its stdout, or an
/// error with its stderr.
fn control_cli(bin: &Path, control: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()?;
    if !out.status.success() {
        bail!(
            "sockmesh {} --control {}: {}",
            args.join(" "),
            control.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// An agent's sockhash counters (`sockmesh intercept status --json` on its control socket).
fn sockhash(bin: &Path, control: &Path) -> Result<serde_json::Value> {
    let out = control_cli(bin, control, &["intercept", "status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out).context("intercept status")?;
    Ok(v["sockhash"].clone())
}
