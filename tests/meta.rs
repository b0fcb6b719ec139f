//! Dynamic meta and the wrr weight refresher with real processes on loopback: two providers,
//! each behind its own server agent; a client agent refers both with `loadbalance: wrr` and
//! `weightRefreshPeriodSecond: 1`. `META_WEIGHT` set on the server agents through `/meta/update`
//! reaches the client agent through the MetaService within a refresh period and the split
//! follows it, both ways. Interception is off in these daemons.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::motan::{self, Value};
use common::{Daemon, Ports, Provider, SVC, agent_addr, client_agent, export_addr};
use sockmesh::protocol::motan2::breeze::decode_string_map;
use sockmesh::protocol::motan2::frame::serialization;

const META_SERVICE: &str = "com.weibo.api.motan.runtime.meta.MetaService";

/// A server agent exporting SVC (group g1) on its eport, backed by `provider`.
fn server_agent(name: &str, provider: SocketAddr) -> Daemon {
    let ports = Ports::pick();
    let motan = format!(
        "motan-service:\n  echo:\n    path: {SVC}\n    group: g1\n    export: \"motan2:{}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n",
        ports.eport,
        provider.port()
    );
    Daemon::mesh(name, ports, &motan)
}

/// `n` sequential calls through the client agent; answers counted by provider name.
async fn split(ch: &motan::Channel, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for i in 0..n {
        let r = motan::call(ch, motan::request(SVC, "echo", &[], &[Value::from(i as i64)])).await;
        assert_eq!(motan::exception(&r), None);
        *by.entry(motan::meta(&r, "provider").to_string()).or_default() += 1;
    }
    by
}

fn set_weight(server: &Daemon, w: u32) {
    let (code, body) = server.control_post(&format!("/meta/update?META_WEIGHT={w}"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"result": "ok", "data": "ok"}));
}

/// Keep calling until `heavy` gets at least 80% of a batch of 50; the time that took.
async fn until_heavy(ch: &motan::Channel, heavy: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let by = split(ch, 50).await;
        if by.get(heavy).copied().unwrap_or(0) >= 40 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{heavy} still not heavy after {limit:?}: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn wrr_follows_dynamic_meta_weights_set_on_the_server_agents() {
    let _serial = common::serial();
    let rt = motan::rt();
    let p0 = Provider::start("p0", 0);
    let p1 = Provider::start("p1", 0);
    let s0 = server_agent("meta-s0", p0.addr);
    let s1 = server_agent("meta-s1", p1.addr);
    let client = client_agent(
        "meta-client",
        &[export_addr(&s0), export_addr(&s1)],
        "    loadbalance: wrr\n    weightRefreshPeriodSecond: 1\n",
    );

    // The admin routes: reads on the TCP port, mutations only on the control socket (not in
    // sockmesh.admin.tcp_mutations here), bad input a 400.
    let (code, body) = sockmesh_testkit::http::post_form(s0.admin, "/meta/update", "META_WEIGHT=3").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("tcp_mutations"), "{body}");
    let (code, body) = s0.control_post("/meta/update");
    assert_eq!(code, 400, "{body}");
    let (code, body) = s0.control_post("/meta/delete");
    assert_eq!(code, 400, "{body}");
    let (code, body) = s0.control_post("/meta/update?x=1&y=2");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        s0.admin_json("/meta/getAll")["data"]["meta"],
        serde_json::json!({"x":"1","y":"2"})
    );
    assert_eq!(
        s0.admin_json("/meta/get?key=y")["data"],
        serde_json::json!({"y":"2"})
    );
    assert_eq!(s0.control_post("/meta/delete?key=x").0, 200);
    assert_eq!(s0.control_post("/meta/delete?key=y").0, 200);
    assert_eq!(
        s0.admin_json("/meta/getAll")["data"]["meta"],
        serde_json::json!({})
    );

    rt.block_on(async {
        let ch = motan::connect(agent_addr(&client)).await;
        // No dynamic weights: both endpoints weigh 10, an exact alternation.
        let by = split(&ch, 200).await;
        assert_eq!((by["p0"], by["p1"]), (100, 100), "{by:?}");

        // The MetaService on a server agent's export port, as an agent calls it.
        set_weight(&s0, 1);
        let meta = motan::connect(export_addr(&s0)).await;
        let mut req = motan::request(META_SERVICE, "getDynamicMeta", &[("M_fws", "y")], &[]);
        req.header.set_serialization(serialization::BREEZE);
        let r = motan::call(&meta, req).await;
        assert_eq!(motan::exception(&r), None);
        assert_eq!(r.header.serialization(), serialization::BREEZE);
        let m = decode_string_map(&r.body).unwrap();
        assert_eq!(m.get("META_WEIGHT").map(String::as_str), Some("1"), "{m:?}");
        // Other framework services are not served.
        let r = motan::call(&meta, motan::request("x.Other", "m", &[("M_fws", "y")], &[])).await;
        assert_eq!(
            motan::exception(&r).map(|e| e.1),
            Some("service not support".to_string())
        );

        // 1 : 9, under load: the split follows within a refresh period (1 s, plus a round).
        set_weight(&s1, 9);
        let took = until_heavy(&ch, "p1", Duration::from_millis(2500)).await;
        let by = split(&ch, 500).await;
        println!("weights 1:9 after {took:?}: {by:?}");
        let light = by.get("p0").copied().unwrap_or(0);
        assert!(
            (30..=70).contains(&light),
            "p0 (weight 1) got {light} of 500: {by:?}"
        );

        // 9 : 1: the split flips.
        set_weight(&s0, 9);
        set_weight(&s1, 1);
        let took = until_heavy(&ch, "p0", Duration::from_millis(2500)).await;
        let by = split(&ch, 500).await;
        println!("weights 9:1 after {took:?}: {by:?}");
        let light = by.get("p1").copied().unwrap_or(0);
        assert!(
            (30..=70).contains(&light),
            "p1 (weight 1) got {light} of 500: {by:?}"
        );

        // Deleting the key falls back to the static weight (10 each): even again.
        assert_eq!(s0.control_post("/meta/delete?key=META_WEIGHT").0, 200);
        assert_eq!(s1.control_post("/meta/delete?key=META_WEIGHT").0, 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let by = split(&ch, 200).await;
        assert_eq!((by["p0"], by["p1"]), (100, 100), "{by:?}");
    });
    assert!(client.log().contains("wrr weights changed"), "{}", client.log());
}
