//! sk_msg on the local legs (issue #17): an export with `sockmesh.sockmap: true` has both ends
//! of the connections the agents dial to its export port and to its provider on this host put
//! into the sockhash, so their data skips the loopback TCP stack; an export without it (here in
//! front of a blocking std::net provider) keeps the TCP path. Real kernel programs, real agents
//! and providers on loopback; the sockhash is read from its pin.
mod common;

use std::net::SocketAddr;
use std::path::Path;

use aya::maps::{Map, MapData, SockHash};
use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, agent_addr, direct_registry, export_addr, privileged, serial};
use futures_util::StreamExt;
use sockmesh_common::SockKey;

const FAST: &str = "com.example.SkmsgFast";
const PLAIN: &str = "com.example.SkmsgPlain";
const REQUESTS: usize = 2000;
const BODY: usize = 4096;

/// The server agent's motan sections: FAST (opted in) in front of `fast`, PLAIN in front of
/// `plain`, both on export port `eport`.
fn server_motan(eport: u16, fast: SocketAddr, plain: SocketAddr, opt_in: bool) -> String {
    let sockmap = if opt_in {
        "    sockmesh.sockmap: true\n"
    } else {
        ""
    };
    format!(
        "motan-service:\n  fast:\n    path: {FAST}\n    group: g1\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n{sockmap}\
         \x20 plain:\n    path: {PLAIN}\n    group: g1\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n",
        fast.port(),
        plain.port()
    )
}

/// The ports (local, remote) of every socket in the daemon's pinned sockhash.
fn sockhash_ports(pin_dir: &Path) -> Vec<(u32, u32)> {
    let data = MapData::from_pin(common::maps_dir(pin_dir).join("SM_SOCKS")).expect("SM_SOCKS pin");
    let map: SockHash<MapData, SockKey> = SockHash::try_from(Map::SockHash(data)).unwrap();
    map.keys()
        .map(|k| k.unwrap())
        .map(|k| (k.local_port, k.remote_port))
        .collect()
}

/// Whether both ends of some connection to `port` are in the sockhash: the dialler's
/// (remote port `port`) and the server end's (local port `port`).
fn both_ends(socks: &[(u32, u32)], port: u16) -> bool {
    let port = port as u32;
    socks
        .iter()
        .any(|(l, r)| *r == port && socks.contains(&(port, *l)))
}

fn touches(socks: &[(u32, u32)], port: u16) -> bool {
    socks.iter().any(|(l, r)| *l == port as u32 || *r == port as u32)
}

/// `n` pipelined calls of `service` (64 in flight on one channel) with distinct 4 KiB bodies;
/// every answer must carry its own body back byte for byte.
fn pipelined_load(client: SocketAddr, service: &str, n: usize) {
    let rt = motan::rt();
    rt.block_on(async {
        let ch = motan::connect(client).await;
        let ch = &ch;
        let bad = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let body: Vec<u8> = (0..BODY).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
                let args = vec![Value::Bytes(body.into())];
                let resp = motan::call(ch, motan::request(service, "echo", &[], &args)).await;
                let ok = motan::exception(&resp).is_none()
                    && motan::simple::decode_all(&resp.body).ok().as_ref() == Some(&args);
                usize::from(!ok)
            })
            .buffer_unordered(64)
            .fold(0, |a, b| async move { a + b })
            .await;
        assert_eq!(bad, 0, "{bad} of {n} answers of {service} were wrong");
    });
}

#[test]
fn opted_in_export_legs_go_through_sk_msg_and_others_keep_tcp() {
    if !privileged("opted_in_export_legs_go_through_sk_msg_and_others_keep_tcp") {
        return;
    }
    let _g = serial();
    let fast = Provider::start("skmsg-fast", 0);
    let plain = Provider::start_blocking("skmsg-blocking");
    let ports = Ports::pick();
    // The server agent has interception (its sock_ops and sk_msg programs); the client agent
    // has none: its sockets carry the same (default) agent mark, which is what the server
    // agent's sock_ops program looks for.
    let server = Daemon::launch(
        "skmsg-server",
        ports,
        &server_motan(ports.eport, fast.addr, plain.addr, true),
        "",
    );
    let refers = format!(
        "motan-registry:\n{}motan-refer:\n  fast:\n    path: {FAST}\n    group: g1\n    registry: server\n    requestTimeout: 5000\n\
         \x20 plain:\n    path: {PLAIN}\n    group: g1\n    registry: server\n    requestTimeout: 5000\n",
        direct_registry("server", &[export_addr(&server)])
    );
    let client = Daemon::mesh("skmsg-client", Ports::pick(), &refers);

    let mut want_ports = vec![ports.eport, fast.addr.port()];
    want_ports.sort_unstable();
    let st = &server.intercept_status()["sockhash"];
    assert_eq!(st["local_ports"], serde_json::json!(want_ports), "{st}");

    pipelined_load(agent_addr(&client), FAST, REQUESTS);
    let socks = sockhash_ports(&server.pin_dir);
    assert!(
        both_ends(&socks, ports.eport),
        "client agent -> export port: both ends in the sockhash: {socks:?}"
    );
    assert!(
        both_ends(&socks, fast.addr.port()),
        "export -> opted-in provider: both ends in the sockhash: {socks:?}"
    );
    let st = server.intercept_status()["sockhash"].clone();
    eprintln!("sockhash after {REQUESTS} x {BODY} B: {st}");
    let n = |k: &str| st[k].as_u64().unwrap_or_else(|| panic!("{k} in {st}"));
    assert!(n("local_leg_sockets") >= 4, "{st}");
    assert_eq!(n("app_leg_sockets"), 0, "{st}");
    assert_eq!(n("insert_failed"), 0, "{st}");
    // Requests and answers on both legs: 4 x 2000 x 4 KiB, beyond a few first messages that
    // may have been sent before the server end joined.
    let payload = (4 * REQUESTS * BODY) as u64;
    assert!(
        n("bytes_redirected") >= payload * 9 / 10,
        "sk_msg redirected {} bytes, want about {payload}: {st}",
        n("bytes_redirected")
    );
    assert!(n("msg_redirected") > 0, "{st}");
    let metrics = server.metrics();
    assert!(
        metrics.contains("sockmesh_sockhash_bytes_redirected_total"),
        "sockhash counters in /metrics:\n{metrics}"
    );

    // The blocking provider's export did not opt in: its leg stays on TCP, and it keeps
    // answering (the client agent -> export leg is shared and short-circuited).
    pipelined_load(agent_addr(&client), PLAIN, REQUESTS);
    let socks = sockhash_ports(&server.pin_dir);
    assert!(
        !touches(&socks, plain.addr.port()),
        "the blocking provider's sockets are not in the sockhash: {socks:?}"
    );
    let after = server.intercept_status()["sockhash"].clone();
    assert_eq!(
        after["local_leg_sockets"], st["local_leg_sockets"],
        "no new local-leg sockets for the export without the opt-in: {after}"
    );

    // A reload without the opt-in takes the ports out of the kernel's list.
    server.rewrite_motan(&server_motan(ports.eport, fast.addr, plain.addr, false));
    let (ok, out, err) = server.cli(&["reload"]);
    assert!(ok, "reload: {out}{err}");
    assert_eq!(
        server.intercept_status()["sockhash"]["local_ports"],
        serde_json::json!([]),
        "{out}"
    );
}

#[test]
fn without_the_opt_in_no_local_leg_enters_the_sockhash() {
    if !privileged("without_the_opt_in_no_local_leg_enters_the_sockhash") {
        return;
    }
    let _g = serial();
    let fast = Provider::start("skmsg-off-fast", 0);
    let plain = Provider::start_blocking("skmsg-off-blocking");
    let ports = Ports::pick();
    let server = Daemon::launch(
        "skmsg-off",
        ports,
        &server_motan(ports.eport, fast.addr, plain.addr, false),
        "",
    );
    let refers = format!(
        "motan-registry:\n{}motan-refer:\n  plain:\n    path: {PLAIN}\n    group: g1\n    registry: server\n    requestTimeout: 5000\n\
         \x20 fast:\n    path: {FAST}\n    group: g1\n    registry: server\n    requestTimeout: 5000\n",
        direct_registry("server", &[export_addr(&server)])
    );
    let client = Daemon::mesh("skmsg-off-client", Ports::pick(), &refers);
    pipelined_load(agent_addr(&client), PLAIN, REQUESTS);
    pipelined_load(agent_addr(&client), FAST, 200);
    let socks = sockhash_ports(&server.pin_dir);
    for p in [ports.eport, fast.addr.port(), plain.addr.port()] {
        assert!(!touches(&socks, p), "port {p} in the sockhash: {socks:?}");
    }
    let st = server.intercept_status()["sockhash"].clone();
    assert_eq!(st["local_ports"], serde_json::json!([]), "{st}");
    assert_eq!(st["local_leg_sockets"], 0, "{st}");
    assert_eq!(st["msg_redirected"], 0, "{st}");
}

#[test]
fn opted_in_refer_to_a_local_provider_goes_through_sk_msg() {
    if !privileged("opted_in_refer_to_a_local_provider_goes_through_sk_msg") {
        return;
    }
    let _g = serial();
    // The client role dials a provider on loopback directly (no server agent): the refer's
    // opt-in covers that leg; the agent's interception supplies the programs.
    let provider = Provider::start("skmsg-refer-provider", 0);
    let refers = format!(
        "motan-registry:\n{}motan-refer:\n  fast:\n    path: {FAST}\n    group: g1\n    registry: local\n    requestTimeout: 5000\n    sockmesh.sockmap: true\n",
        direct_registry("local", &[provider.addr])
    );
    let client = Daemon::launch("skmsg-refer", Ports::pick(), &refers, "");
    let st = client.intercept_status()["sockhash"].clone();
    assert_eq!(
        st["local_ports"],
        serde_json::json!([provider.addr.port()]),
        "{st}"
    );
    pipelined_load(agent_addr(&client), FAST, REQUESTS);
    let socks = sockhash_ports(&client.pin_dir);
    assert!(
        both_ends(&socks, provider.addr.port()),
        "client role -> local provider: both ends in the sockhash: {socks:?}"
    );
    let st = client.intercept_status()["sockhash"].clone();
    let redirected = st["bytes_redirected"].as_u64().unwrap();
    assert!(
        redirected >= (2 * REQUESTS * BODY) as u64 * 9 / 10,
        "requests and answers on the one leg: {st}"
    );
}
