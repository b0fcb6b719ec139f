//! Trust boundaries of the kernel side (issue #15), on the real kernel with real cgroups and
//! network namespaces: only the agent's listener receives intercepted connections, only the
//! agent reads original destinations, the host-wide getsockopt hook leaves every other
//! getsockopt as the kernel answered it, and native IPv6 is intercepted. Traffic only goes to
//! 127.0.0.0/8, [::1] or addresses inside namespaces these tests create.
mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use aya::maps::{HashMap, Map, MapData};
use common::*;
use sockmesh_common::{CgroupPolicy, DEFAULT_AGENT_MARK, EndpointKey, OrigDst, ip6_of};

const MIB: usize = 1 << 20;
const NOBODY: u32 = 65534;

/// `sockmesh-testpeer untrusted-listener` as uid/gid nobody, in `ns` when given.
struct UntrustedListener {
    process: ChildProcess,
    addrs: Vec<SocketAddr>,
}

impl UntrustedListener {
    /// Started, or the line it said instead of `ready` (e.g. `bind-failed ...`).
    fn start(ns: Option<&VethNetNs>, addrs: &[String]) -> Result<UntrustedListener, String> {
        let mut cmd = match ns {
            // nsenter enters the namespace as root, then becomes nobody.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.ns.path().display()))
                    .args(["--setuid", &NOBODY.to_string(), "--setgid", &NOBODY.to_string()])
                    .arg("--")
                    .arg(peer_bin());
                c
            }
            None => {
                let mut c = Command::new(peer_bin());
                c.uid(NOBODY).gid(NOBODY);
                c
            }
        };
        cmd.arg("untrusted-listener")
            .args(addrs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut process = ChildProcess::spawn("untrusted listener", &mut cmd).unwrap();
        let line = process.read_line().unwrap();
        let Some(rest) = line.strip_prefix("ready ") else {
            return Err(line);
        };
        let mut words = rest.split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("uid={NOBODY}").as_str()),
            "the listener must not be privileged: {line}"
        );
        let addrs = words.map(|a| a.parse().unwrap()).collect();
        Ok(UntrustedListener { process, addrs })
    }

    /// The next connection it accepted, as it reported it.
    fn next_accepted(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.process.read_line().unwrap()).unwrap()
    }

    /// Connect to each of its addresses ourselves (`connect` runs where the listener lives) and
    /// check that those connections are the first it ever accepted: nothing intercepted reached
    /// it before.
    fn assert_received_nothing_but(&mut self, connect: impl Fn(SocketAddr) -> TcpStream) {
        for addr in self.addrs.clone() {
            let sentinel = connect(addr);
            let got = self.next_accepted();
            assert_eq!(
                got["peer"],
                sentinel.local_addr().unwrap().to_string(),
                "an untrusted listener on {addr} received a connection that was not ours: {got}"
            );
        }
    }
}

/// (redirected, passed, fail_open) of an intercepted cgroup, read from the daemon's pinned map
/// (works while the daemon is down).
fn pinned_counters(d: &Daemon, cgroup: &Path) -> (u64, u64, u64) {
    let id = std::fs::metadata(cgroup).unwrap().ino();
    let data = MapData::from_pin(maps_dir(&d.pin_dir).join("SM_CGROUPS")).unwrap();
    let map: HashMap<_, u64, CgroupPolicy> = HashMap::try_from(Map::HashMap(data)).unwrap();
    let p = map.get(&id, 0).unwrap();
    (p.redirected, p.passed, p.fail_open)
}

#[test]
fn untrusted_listener_on_the_transparent_address_gets_no_connection() {
    if !privileged("untrusted_listener_on_the_transparent_address_gets_no_connection") {
        return;
    }
    let _g = serial();
    let echo = EchoServer::start("127.0.0.9:0", None);
    let echo6 = EchoServer::start("[::1]:0", None);
    let ns = VethNetNs::create("trust", 11);
    let echo_ns = EchoServer::start("127.0.0.2:0", Some(&ns));
    let mut d = Daemon::start("untrusted");
    let (cg, rel) = test_cgroup("smt-untrusted");
    d.enable(&rel, "ebpf-connect");
    let _resident = Resident::start(Some(&ns), cg.path());
    d.wait_netns_listener();
    let tport = d.transparent_port;
    let transparent = [format!("127.0.0.1:{tport}"), format!("[::1]:{tport}")];

    // While the agent runs, its addresses are taken.
    for a in &transparent {
        let err = UntrustedListener::start(None, std::slice::from_ref(a))
            .err()
            .expect("the agent's transparent address must be taken while it runs");
        assert!(err.contains("bind-failed"), "{err}");
    }
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(pinned_counters(&d, cg.path()), (1, 0, 0));

    // Agent down: unprivileged listeners take its addresses, in the root namespace and in the
    // app's namespace.
    d.kill9();
    let mut squatter = UntrustedListener::start(None, &transparent).unwrap();
    let mut squatter_ns = UntrustedListener::start(Some(&ns), &transparent).unwrap();

    // The apps reach their real destinations directly, over TCP, and it is counted as fail-open.
    for dst in [echo.addr, echo6.addr] {
        let r = client(Some(cg.path()), dst, 65536, "blocking");
        assert_eq!(r["ok"], true, "{dst}: {r}");
        assert_eq!(r["peer"], dst.to_string(), "{r}");
        assert!(r["tcp_bytes_received"].as_u64().unwrap() >= 65536, "{r}");
    }
    let r = client_in(Some(&ns), Some(cg.path()), echo_ns.addr, 65536, "blocking");
    assert_eq!(r["ok"], true, "in the namespace: {r}");
    assert_eq!(pinned_counters(&d, cg.path()), (1, 0, 3));

    // Neither listener ever got one of those connections.
    squatter.assert_received_nothing_but(|a| TcpStream::connect(a).unwrap());
    squatter_ns.assert_received_nothing_but(|a| ns.ns.within(|| TcpStream::connect(a).unwrap()).unwrap());
    drop((squatter, squatter_ns));

    // Back with the agent: intercepted again.
    d.spawn();
    d.wait_netns_listener();
    assert_eq!(client(Some(cg.path()), echo.addr, 4096, "blocking")["ok"], true);
    assert_eq!(d.counters(&rel), (2, 0, 3));
}

/// A socket bound to `bind` (so its address is known before it connects), connected to `to`.
fn connect_from(bind: &str, to: SocketAddr) -> (SocketAddr, impl FnOnce() -> TcpStream) {
    let s = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None).unwrap();
    s.bind(&bind.parse::<SocketAddr>().unwrap().into()).unwrap();
    let local = s.local_addr().unwrap().as_socket().unwrap();
    (local, move || {
        s.connect(&to.into()).unwrap();
        s.into()
    })
}

/// Record `orig` as the original destination of a connection whose app end is `app` (what
/// `sockops` does for an intercepted connection), in the daemon's pinned map.
fn record_original_dst(d: &Daemon, app: SocketAddr, netns: u64, orig: SocketAddr) {
    let data = MapData::from_pin(maps_dir(&d.pin_dir).join("SM_PEER_ORIG")).unwrap();
    let mut map: HashMap<_, EndpointKey, OrigDst> = HashMap::try_from(Map::LruHashMap(data)).unwrap();
    let key = EndpointKey {
        addr: ip6_of(app.ip()),
        port: app.port() as u32,
        _pad: 0,
        netns,
    };
    let value = OrigDst {
        addr: ip6_of(orig.ip()),
        port: orig.port() as u32,
        mode: 1,
        cgroup_id: 0,
    };
    map.insert(key, value, 0).unwrap();
}

/// A listener with the agent's mark, as the agent makes them.
fn marked_listener(addr: &str) -> std::net::TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    s.set_mark(DEFAULT_AGENT_MARK).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(16).unwrap();
    s.into()
}

#[test]
fn only_the_agents_sockets_read_original_destinations() {
    if !privileged("only_the_agents_sockets_read_original_destinations") {
        return;
    }
    let _g = serial();
    let d = Daemon::start("origdst");
    let netns = sockmesh::sys::netns_cookie(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let cases = [
        ("127.0.0.1:0", "127.0.0.6:0", "10.9.9.9:80"),
        ("[::1]:0", "[::1]:0", "[fd00:213:77::5]:443"),
    ];
    for (app_bind, listen, orig) in cases {
        let orig: SocketAddr = orig.parse().unwrap();
        // An unprivileged process's accepted connection whose peer has a record.
        let mut nobody = UntrustedListener::start(None, &[listen.to_string()]).unwrap();
        let (app, connect) = connect_from(app_bind, nobody.addrs[0]);
        record_original_dst(&d, app, netns, orig);
        let _app = connect();
        let got = nobody.next_accepted();
        assert_eq!(got["peer"], app.to_string(), "{got}");
        let answer = got["original_dst"].as_str().unwrap();
        // The kernel's own answer: no conntrack entry, ENOENT.
        assert!(
            answer.starts_with("error") && answer.contains("os error 2"),
            "an unprivileged process read an original destination: {got}"
        );

        // The same record on a socket accepted from a listener with the agent's mark: answered.
        let agent = marked_listener(listen);
        let (app, connect) = connect_from(app_bind, agent.local_addr().unwrap());
        record_original_dst(&d, app, netns, orig);
        let _app = connect();
        let (accepted, _) = agent.accept().unwrap();
        assert_eq!(
            sockmesh::sys::original_dst(&accepted).unwrap(),
            orig,
            "the agent's socket reads the record"
        );
    }
}

const IP_MSFILTER: libc::c_int = 41;
/// `struct ip_msfilter` without its source list: group, interface, fmode, numsrc.
const MSFILTER_HEADER: usize = 16;

/// What a getsockopt returned: (return value, errno, optlen, optval[..optlen]).
type Answer = (i32, i32, usize, Vec<u8>);

/// A UDP socket in a source-specific multicast group with `sources` sources, and what
/// `getsockopt(IP_MSFILTER)` with a 64 KiB optval returns.
fn msfilter_with_64k_optval(sources: u32) -> Answer {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let group = u32::from_ne_bytes([239, 1, 2, 3]);
    let lo = u32::from_ne_bytes([127, 0, 0, 1]);
    for i in 0..sources {
        let mreq = libc::ip_mreq_source {
            imr_multiaddr: libc::in_addr { s_addr: group },
            imr_interface: libc::in_addr { s_addr: lo },
            imr_sourceaddr: libc::in_addr {
                s_addr: (0x0a00_0001 + i).to_be(),
            },
        };
        // SAFETY: a valid ip_mreq_source of its own size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_ADD_SOURCE_MEMBERSHIP,
                (&raw const mreq).cast(),
                std::mem::size_of_val(&mreq) as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "source {i}: {}", std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    buf[..4].copy_from_slice(&group.to_ne_bytes());
    buf[4..8].copy_from_slice(&lo.to_ne_bytes());
    buf[12..16].copy_from_slice(&16000u32.to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_MSFILTER,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let len = len as usize;
    (
        r,
        if r == 0 { 0 } else { errno },
        len,
        buf[..len.min(buf.len())].to_vec(),
    )
}

/// What the large-optval calls answer inside `ns`: IP_MSFILTER with 1500 and with 10 sources,
/// and `iptables-legacy -S` (its IPT_SO_GET_ENTRIES optval is the whole ruleset).
fn large_optval_answers(ns: &sockmesh_testkit::NetNs) -> (Vec<Answer>, String) {
    let ms = ns
        .within(|| vec![msfilter_with_64k_optval(1500), msfilter_with_64k_optval(10)])
        .unwrap();
    let out = ns.command("iptables-legacy").args(["-w", "-S"]).output().unwrap();
    assert!(
        out.status.success(),
        "iptables-legacy -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (ms, String::from_utf8(out.stdout).unwrap())
}

fn root_getsockopt_programs() -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup_mount())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("getsockopt"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn getsockopt_with_a_large_optval_is_answered_as_without_sockmesh() {
    if !privileged("getsockopt_with_a_large_optval_is_answered_as_without_sockmesh") {
        return;
    }
    let _g = serial();
    let ns = sockmesh_testkit::NetNs::add(format!("smt-optval-{}", std::process::id())).unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let st = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.igmp_max_msf=2048"])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl igmp_max_msf in the test namespace");
    // A legacy ruleset of about 16 KiB (4 pages) in the namespace.
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..100 {
        rules.push_str(&format!(
            "-A INPUT -s 10.7.{}.{}/32 -p tcp -m tcp --dport {} -j ACCEPT\n",
            i / 250,
            i % 250 + 1,
            1000 + i
        ));
    }
    rules.push_str("COMMIT\n");
    let mut restore = ns
        .command("iptables-legacy-restore")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut restore.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success());

    let others = root_getsockopt_programs();
    if !others.is_empty() {
        eprintln!("note: getsockopt programs already attached at the cgroup root:\n{others}");
    }
    let (ms_before, ipt_before) = large_optval_answers(&ns);
    // The kernel's own answers, whatever else is attached: every source, optlen past a page.
    let (r, _, len, v) = &ms_before[0];
    assert_eq!(
        (*r, *len),
        (0, MSFILTER_HEADER + 4 * 1500),
        "IP_MSFILTER, 1500 sources"
    );
    assert_eq!(u32::from_ne_bytes(v[12..16].try_into().unwrap()), 1500);
    assert_eq!(ms_before[1].2, MSFILTER_HEADER + 4 * 10);
    assert_eq!(ipt_before.matches("-A INPUT").count(), 100, "{ipt_before}");

    let d = Daemon::start("optval");
    assert!(
        root_getsockopt_programs().contains("sm_getsockopt"),
        "sm_getsockopt is attached at the cgroup root:\n{}",
        root_getsockopt_programs()
    );
    let (ms_after, ipt_after) = large_optval_answers(&ns);
    for (i, (b, a)) in ms_before.iter().zip(&ms_after).enumerate() {
        assert_eq!(
            (b.0, b.1, b.2),
            (a.0, a.1, a.2),
            "IP_MSFILTER case {i}: return value, errno, optlen"
        );
        assert!(b.3 == a.3, "IP_MSFILTER case {i}: optval bytes differ");
    }
    assert_eq!(
        ipt_before, ipt_after,
        "iptables-legacy -S differs with sockmesh attached"
    );
    drop(d);
}

#[test]
fn native_ipv6_is_intercepted_in_both_modes() {
    if !privileged("native_ipv6_is_intercepted_in_both_modes") {
        return;
    }
    let _g = serial();
    let ns = VethNetNs::create("ip6", 12);
    let (_, ns_ip6) = ns.add_ipv6();
    let loopback6 = EchoServer::start("[::1]:0", None);
    let remote6 = EchoServer::start(&format!("[{ns_ip6}]:0"), Some(&ns));
    // An IPv4 service reached through a dual-stack socket (IPv4-mapped).
    let mapped4 = EchoServer::start("127.0.0.10:0", None);
    let mapped: SocketAddr = format!("[::ffff:127.0.0.10]:{}", mapped4.addr.port())
        .parse()
        .unwrap();
    // An app inside the namespace dialling the namespace's own ::1.
    let inner6 = EchoServer::start("[::1]:0", Some(&ns));

    let d = Daemon::start("ipv6");
    let (cg, rel) = test_cgroup("smt-ipv6");
    d.enable(&rel, "ebpf-connect");
    let _resident = Resident::start(Some(&ns), cg.path());
    d.wait_netns_listener();
    let mut n = 0;
    for mode in ["ebpf-connect", "ebpf-sockmap"] {
        d.enable(&rel, mode);
        for dst in [loopback6.addr, remote6.addr, mapped] {
            let r = client(Some(cg.path()), dst, MIB, "blocking");
            assert_eq!(r["ok"], true, "{mode} {dst}: {r}");
            assert_eq!(r["received"], MIB, "{mode} {dst}: {r}");
            assert_eq!(
                r["peer"],
                dst.to_string(),
                "{mode}: getpeername shows the original destination"
            );
            if mode == "ebpf-sockmap" {
                assert!(
                    r["tcp_bytes_received"].as_u64().unwrap() < 4096,
                    "{mode} {dst}: data took the TCP path: {r}"
                );
            }
        }
        let r = client_in(Some(&ns), Some(cg.path()), inner6.addr, MIB, "blocking");
        assert_eq!(r["ok"], true, "{mode}, app in the namespace: {r}");
        assert_eq!(r["peer"], inner6.addr.to_string());
        n += 4;
        assert_eq!(d.counters(&rel).0, n, "{mode}: every connect redirected");
    }
    let log = d.log();
    for want in [loopback6.addr, remote6.addr, mapped4.addr, inner6.addr] {
        // The agent read each original destination and dialled it (v4-mapped ones as IPv4).
        assert!(
            log.contains(&format!("original_dst={want}")),
            "{want} not in the log:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("sockmesh: redirected connect to {}", remote6.addr)),
        "no BPF log record for the IPv6 redirect:\n{log}"
    );
    assert!(
        log.contains(&format!("listen=[::1]:{}", d.transparent_port)),
        "no IPv6 listener in the app's namespace:\n{log}"
    );
}
