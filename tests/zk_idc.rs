//! `${idc}` in a refer's group, resolved when the cluster starts (issue #20) against a real
//! ZooKeeper: with `-idc` the value's case variants are probed; without it the matching groups'
//! servers are pinged (ICMP, from the agent) and the lowest RTT wins. The servers of the
//! RTT test live in network namespaces the test creates (10.213.41-43.0/30), one of which
//! answers echoes slowly (its kernel ignores them; a userspace responder answers late) and one
//! not at all. Also: ZooKeeper down at start, and the pinger without CAP_NET_RAW.
mod common;
#[path = "common/zk.rs"]
mod zk_server;

use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, IcmpResponder, Ports, Provider, SVC, VethNetNs, agent_addr};
use sockmesh::url::Url;
use zk_server::{ZkServer, raw_client, zookeeper};
use zookeeper_client as zk;

/// How late the slow namespace answers an echo: far above a veth round trip, so the choice
/// holds on a loaded machine.
const SLOW_MS: u64 = 20;

fn motan(zk: &ZkServer) -> String {
    format!(
        "motan-registry:\n  zk:\n    protocol: zookeeper\n    host: 127.0.0.1\n    port: {}\n    registrySessionTimeout: 4\n\
         motan-refer:\n  echo:\n    path: {SVC}\n    group: \"api-${{idc}}\"\n    registry: zk\n    requestTimeout: 3000\n",
        zk.port()
    )
}

fn agent_keys(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sockmesh-test-snap-{name}-{}", std::process::id()));
    format!("  snapshot_dir: {}\n  localIP: 127.0.0.1\n", dir.display())
}

/// Register `host:port` as a server of SVC in `group` (persistent nodes: the test's ZooKeeper
/// goes away with the test).
async fn register(c: &zk::Client, group: &str, host: &str, port: u16) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let parent = format!("/motan/{group}/{SVC}/server");
    let _ = c.mkdir(&parent, &persistent).await;
    let url = Url::new("motan2", host, port, SVC, group).with_param("nodeType", "service");
    let path = format!("{parent}/{host}:{port}");
    c.create(&path, url.to_node_string().as_bytes(), &persistent)
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

/// The first cluster's status once its group no longer holds `${idc}`.
fn resolved(d: &Daemon) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let st = d.admin_json("/sockmesh/status");
        let c = st["mesh"]["clusters"][0].clone();
        if c["group"] != "api-${idc}" && !c["idc"].is_null() {
            return c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "group not resolved: {c}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Calls through the agent (once the cluster has an endpoint): all answered by `provider`.
fn calls_reach(d: &Daemon, provider: &str) {
    let t0 = Instant::now();
    while d.admin_json("/sockmesh/status")["mesh"]["clusters"][0]["available_endpoints"] == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no endpoint:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = motan::rt();
    rt.block_on(async {
        let ch = motan::connect(agent_addr(d)).await;
        for i in 0..5 {
            let r = motan::call(&ch, motan::request(SVC, "echo", &[], &[Value::from(i as i64)])).await;
            assert_eq!(motan::exception(&r), None, "call {i}");
            assert_eq!(motan::meta(&r, "provider"), provider, "call {i}");
        }
    });
}

#[test]
fn idc_flag_probes_the_value_as_given_then_lower_and_upper_case() {
    let Some(zk) = zookeeper("zk-idc-flag") else {
        return;
    };
    let p = Provider::start("p-yf", 0);
    let rt = motan::rt();
    rt.block_on(async {
        let c = raw_client(&zk).await;
        register(&c, "api-yf", "127.0.0.1", p.addr.port()).await;
        // A group with servers that only the pattern matches: -idc wins over RTT.
        register(&c, "api-other", "127.0.0.1", 1).await;
    });
    let d = Daemon::mesh_with_flags(
        "idcflag",
        Ports::pick(),
        &agent_keys("idcflag"),
        &motan(&zk),
        &["-idc", "YF"],
    );
    let c = resolved(&d);
    assert_eq!(c["group"], "api-yf", "{c}");
    assert_eq!(c["configured_group"], "api-${idc}", "{c}");
    assert_eq!(c["idc"]["rule"], "candidate", "{c}");
    assert_eq!(
        c["idc"]["candidates"],
        serde_json::json!(["api-YF", "api-yf"]),
        "{c}"
    );
    calls_reach(&d, "p-yf");
    let reg = d.admin_json("/registry/list");
    assert_eq!(reg["subscriptions"][0]["group"], "api-yf", "{reg}");
    let refs = d.admin_json("/getReferService");
    assert_eq!(
        refs["body"]["service"][0]["name"],
        format!("api-yf_1.0_motan2_{SVC}"),
        "{refs}"
    );
    d.wait_log("idc: group resolved to api-yf", 1);
}

#[test]
fn without_idc_the_group_with_the_lowest_ping_rtt_wins() {
    if !common::privileged("without_idc_the_group_with_the_lowest_ping_rtt_wins") {
        return;
    }
    let Some(zk) = zookeeper("zk-idc-rtt") else {
        return;
    };
    // a and b hold a provider each; c's server never answers ping (its kernel ignores echoes,
    // nobody else answers).
    let (na, nb, nc) = (
        VethNetNs::create("idca", 41),
        VethNetNs::create("idcb", 42),
        VethNetNs::create("idcc", 43),
    );
    nc.sysctl("net.ipv4.icmp_echo_ignore_all", "1");
    let pa = Provider::start_in(Some(&na), &format!("{}:0", na.ns_ip), "pa", 0, 1);
    let pb = Provider::start_in(Some(&nb), &format!("{}:0", nb.ns_ip), "pb", 0, 1);
    let rt = motan::rt();
    rt.block_on(async {
        let c = raw_client(&zk).await;
        register(&c, "api-a", &na.ns_ip, pa.addr.port()).await;
        register(&c, "api-b", &nb.ns_ip, pb.addr.port()).await;
        register(&c, "api-c", &nc.ns_ip, 9).await;
        // Not matching the pattern: never a candidate.
        register(&c, "other-a", "127.0.0.1", 1).await;
    });

    for (round, slow, fast, fast_group, fast_provider) in
        [(1, &na, &nb, "api-b", "pb"), (2, &nb, &na, "api-a", "pa")]
    {
        fast.sysctl("net.ipv4.icmp_echo_ignore_all", "0");
        let responder = IcmpResponder::start(slow, SLOW_MS);
        let name = format!("idcrtt{round}");
        let t0 = Instant::now();
        let d = Daemon::mesh_with_agent(&name, Ports::pick(), &agent_keys(&name), &motan(&zk));
        let c = resolved(&d);
        let took = t0.elapsed();
        assert_eq!(c["group"], fast_group, "round {round}: {c}");
        let idc = &c["idc"];
        assert_eq!(idc["rule"], "rtt", "{c}");
        assert_eq!(idc["candidates"], serde_json::json!([]), "{c}");
        let rtt = |g: &str| idc["rtts"][g]["rtt_us"].as_u64();
        let (f, s) = (
            rtt(fast_group).unwrap(),
            rtt(if round == 1 { "api-a" } else { "api-b" }).unwrap(),
        );
        assert!(s >= SLOW_MS * 1000, "the slow group answered within {s} us: {c}");
        assert!(f < s, "{c}");
        assert!(
            idc["rtts"]["api-c"]["error"].is_string(),
            "the silent group is skipped: {c}"
        );
        assert!(idc["rtts"]["other-a"].is_null(), "{c}");
        eprintln!(
            "round {round}: chose {fast_group}: rtt {f} us vs {s} us (slow), resolved {took:?} after start"
        );
        calls_reach(&d, fast_provider);
        drop(d);
        drop(responder);
    }
}

/// ZooKeeper down when the agent starts: without `-idc` nothing can be decided, so the cluster
/// asks again until ZooKeeper answers (then pings, as always); with `-idc` the value as given is
/// used at once (a registry snapshot may serve it).
#[test]
fn unreachable_zookeeper_at_start_resolves_once_it_answers() {
    if !common::privileged("unreachable_zookeeper_at_start_resolves_once_it_answers") {
        return;
    }
    let Some(mut zk) = zookeeper("zk-idc-late") else {
        return;
    };
    let p = Provider::start("p-late", 0);
    motan::rt().block_on(async {
        register(&raw_client(&zk).await, "api-late", "127.0.0.1", p.addr.port()).await;
    });
    zk.stop();
    let d = Daemon::mesh_with_agent("idclate", Ports::pick(), &agent_keys("idclate"), &motan(&zk));
    let f = Daemon::mesh_with_flags(
        "idclatef",
        Ports::pick(),
        &agent_keys("idclatef"),
        &motan(&zk),
        &["-idc", "Late"],
    );
    d.wait_log("idc: cannot resolve \"api-${idc}\" yet", 1);
    let c = d.admin_json("/sockmesh/status")["mesh"]["clusters"][0].clone();
    assert_eq!(
        c["group"], "api-${idc}",
        "not decided while ZooKeeper is down: {c}"
    );
    let cf = resolved(&f);
    assert_eq!(cf["group"], "api-Late", "{cf}");
    assert_eq!(cf["idc"]["rule"], "registry-unreachable", "{cf}");
    zk.spawn().unwrap();
    let c = resolved(&d);
    assert_eq!(c["group"], "api-late", "{c}");
    assert_eq!(c["idc"]["rule"], "rtt", "{c}");
    calls_reach(&d, "p-late");
}

/// Drop CAP_NET_RAW from the calling thread's effective set (capabilities are per thread).
fn drop_net_raw_on_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_RAW: u32 = 13;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the kernel expects.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_NET_RAW);
        assert_eq!(libc::syscall(libc::SYS_capset, &h, d.as_ptr()), 0);
    }
}

/// Without CAP_NET_RAW the pinger uses an unprivileged ICMP datagram socket (allowed here by
/// `net.ipv4.ping_group_range` inside a namespace the test creates), and still measures.
#[test]
fn ping_without_cap_net_raw_uses_an_icmp_datagram_socket() {
    if !common::privileged("ping_without_cap_net_raw_uses_an_icmp_datagram_socket") {
        return;
    }
    let ns = sockmesh_testkit::NetNs::add(format!("smt-idcping-{}", std::process::id())).unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let out = ns
        .command("sysctl")
        .args(["-w", "net.ipv4.ping_group_range=0 0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (raw, rtts) = ns
        .within(|| {
            drop_net_raw_on_this_thread();
            let raw = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::ICMPV4),
            );
            let opts = sockmesh::ping::PingOptions::default();
            (
                raw.map(|_| ()),
                sockmesh::ping::ping("127.0.0.1".parse().unwrap(), &opts),
            )
        })
        .unwrap();
    assert_eq!(
        raw.unwrap_err().raw_os_error(),
        Some(libc::EPERM),
        "no raw socket without CAP_NET_RAW"
    );
    let rtts = rtts.expect("the datagram socket pings");
    assert_eq!(rtts.len(), 5, "{rtts:?}");
}
