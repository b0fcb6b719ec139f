//! motan-go's management routes on a real agent (issue #19): each answer has the field names and
//! JSON types of upstream's handler (github.com/weibocom/motan-go at d08de97, manageHandler.go
//! unless said otherwise; the expected shapes below are read from the Go structs and maps those
//! handlers marshal), parameters come from the query or an urlencoded POST body (Go's
//! `FormValue`), and the trust model of issue #15 holds: `/logConfig/set` is a mutation
//! (control socket; TCP only when `sockmesh.admin.tcp_mutations` lists it), `/reload/clusters`
//! is control-socket only. The agent refers and exports one service (through its own export
//! port, to a real Motan2 provider), so every route has something to show.
mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmesh_testkit::http;

use common::motan::{self, Value as MValue};
use common::{Daemon, Ports, Provider, SVC, agent_addr};

/// A JSON type as Go's encoding/json writes it.
#[derive(Clone, Copy, Debug)]
enum T {
    Str,
    Int,
    Bool,
    Obj,
    Arr,
    /// A Go slice: an array, or null when nil (empty).
    ArrOrNull,
}

impl T {
    fn matches(self, v: &Value) -> bool {
        match self {
            T::Str => v.is_string(),
            T::Int => v.is_i64() || v.is_u64(),
            T::Bool => v.is_boolean(),
            T::Obj => v.is_object(),
            T::Arr => v.is_array(),
            T::ArrOrNull => v.is_array() || v.is_null(),
        }
    }
}

/// `v` is an object with exactly these fields, of these types.
fn exact(v: &Value, fields: &[(&str, T)]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    let mut want: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "field names of {v}");
    has(v, fields);
}

/// `v` has at least these fields, of these types.
fn has(v: &Value, fields: &[(&str, T)]) {
    for (k, t) in fields {
        let f = v.get(k).unwrap_or_else(|| panic!("no field {k} in {v}"));
        assert!(t.matches(f), "{k}: {f} is not {t:?} in {v}");
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// An answer's body, once its status is `code` (and the body says `says`).
fn answered((got, body): (u16, String), code: u16, says: &str) -> String {
    assert_eq!(got, code, "{body}");
    assert!(body.contains(says), "{body:?} should say {says:?}");
    body
}

/// The answer a handler's json.Encoder writes, `{code int, body string}` (and its newline).
fn encoded(text: &str) -> Value {
    assert!(text.ends_with('\n'), "json.Encoder's newline: {text:?}");
    let v = json(text);
    exact(&v, &[("code", T::Int), ("body", T::Str)]);
    v
}

/// core/url.go URL: {protocol, host string, port int, path, group string, parameters
/// map[string]string}.
const URL: &[(&str, T)] = &[
    ("protocol", T::Str),
    ("host", T::Str),
    ("port", T::Int),
    ("path", T::Str),
    ("group", T::Str),
    ("parameters", T::Obj),
];

const TOKEN: &str = "sekrit-admin-token-19";

/// A provider and an agent that refers SVC (group g1) through a direct registry naming its own
/// export port, and exports SVC there (metrics filter, `check: true`) to the provider.
struct Fixture {
    _provider: Provider,
    agent: Daemon,
}

fn fixture(name: &str) -> Fixture {
    let provider = Provider::start(name, 0);
    let ports = Ports::pick();
    let motan = format!(
        "motan-registry:\n  servers:\n    protocol: direct\n    address: \"127.0.0.1:{eport}\"\n\
         motan-refer:\n  echo:\n    path: {SVC}\n    group: g1\n    protocol: motan2\n    registry: servers\n    requestTimeout: 3000\n\
         motan-service:\n  echo:\n    path: {SVC}\n    group: g1\n    registry: servers\n    export: \"motan2:{eport}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n    filter: metrics\n    check: \"true\"\n",
        provider.addr.port(),
        eport = ports.eport,
    );
    let admin = format!("    token: {TOKEN}\n");
    let agent = Daemon::launch_admin(name, ports, "", &admin, &motan, "    enabled: false\n");
    Fixture {
        _provider: provider,
        agent,
    }
}

impl Fixture {
    fn get(&self, path: &str) -> (u16, String) {
        http::get(self.agent.admin, path).unwrap()
    }

    fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        json(&body)
    }

    /// POST an urlencoded form on the control socket (root: every route).
    fn control_form(&self, path: &str, form: &str) -> (u16, String) {
        http::unix_post_form(&self.agent.control, path, form).unwrap()
    }

    /// `n` calls through the agent port (client role → own export → provider), once the
    /// cluster has an available endpoint (the export port listens after the refers start).
    fn calls(&self, n: usize) {
        self.wait(10, "the cluster never became available", || {
            self.get_json("/getReferService")["body"]["service"][0]["status"] == true
        });
        let rt = motan::rt();
        rt.block_on(async {
            let ch = motan::connect(agent_addr(&self.agent)).await;
            for i in 0..n {
                let req = motan::request(SVC, "echo", &[], &[MValue::from(i as i64)]);
                let resp = motan::call(&ch, req).await;
                assert_eq!(motan::exception(&resp), None, "{resp:?}");
            }
        });
    }

    /// Wait until `f` holds (polling the admin API), at most `secs`.
    fn wait(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "{what}; log:\n{}", self.agent.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn version_is_plain_text_on_any_method() {
    let _serial = common::serial();
    let f = fixture("madm-version");
    // StatusHandler: `rw.Write([]byte(Version))`, whatever the method.
    assert_eq!(f.get("/version"), (200, env!("CARGO_PKG_VERSION").to_string()));
    let (code, body) = http::post(f.agent.admin, "/version", "").unwrap();
    assert_eq!((code, body.as_str()), (200, env!("CARGO_PKG_VERSION")));
}

#[test]
fn status_has_motan_go_shape_and_counts_the_last_period() {
    let _serial = common::serial();
    let f = fixture("madm-status");
    // StatusHandler.getStatus: {code int, body {status int, service_period_call_count int64,
    // services [{group, name, methods [{name, period_call_count int64}]}]}}.
    let v = f.get_json("/status");
    exact(&v, &[("code", T::Int), ("body", T::Obj)]);
    assert_eq!(v["code"], 200);
    let body = &v["body"];
    exact(
        body,
        &[
            ("status", T::Int),
            ("service_period_call_count", T::Int),
            ("services", T::Arr),
        ],
    );
    assert_eq!(body["status"], 503, "not online before /200");
    f.calls(7);
    // The calls show in the next 5 s period (all of them, unless they straddled its start).
    let mut last = Value::Null;
    f.wait(15, "the calls never showed in a period", || {
        last = f.get_json("/status");
        last["body"]["service_period_call_count"].as_i64() > Some(0)
    });
    let n = last["body"]["service_period_call_count"].as_i64().unwrap();
    assert!(n <= 7, "{last}");
    let s = &last["body"]["services"][0];
    exact(s, &[("group", T::Str), ("name", T::Str), ("methods", T::Arr)]);
    assert_eq!((s["group"].as_str(), s["name"].as_str()), (Some("g1"), Some(SVC)));
    let m = &s["methods"][0];
    exact(m, &[("name", T::Str), ("period_call_count", T::Int)]);
    assert_eq!(
        (m["name"].as_str(), m["period_call_count"].as_i64()),
        (Some("echo"), Some(n))
    );
    // With no traffic the next period counts 0 again (what deploy scripts wait for).
    f.wait(15, "the period count did not fall back to 0", || {
        f.get_json("/status")["body"]["service_period_call_count"] == 0
    });
    // sockmesh's own status moved to /sockmesh/status; `sockmesh status` reads it there.
    let ours = f.get_json("/sockmesh/status");
    has(
        &ours,
        &[("version", T::Str), ("mesh", T::Obj), ("listeners", T::Arr)],
    );
    let (ok, out, err) = f.agent.cli(&["status", "--json"]);
    assert!(ok, "sockmesh status: {out}{err}");
    has(&json(&out), &[("mesh", T::Obj), ("uptime_seconds", T::Int)]);
}

#[test]
fn registry_status_follows_online_and_offline() {
    let _serial = common::serial();
    let f = fixture("madm-regst");
    // StatusHandler.getRegistryStatus: {status string, registryStatus [{group, service,
    // registry, status, errMsg string, isCheck bool}]} (a nil slice is null).
    let entry = [
        ("group", T::Str),
        ("service", T::Str),
        ("registry", T::Str),
        ("status", T::Str),
        ("errMsg", T::Str),
        ("isCheck", T::Bool),
    ];
    let v = f.get_json("/registry/status");
    exact(&v, &[("status", T::Str), ("registryStatus", T::ArrOrNull)]);
    assert_eq!(v["status"], "unregister-success", "{v}");
    let e = &v["registryStatus"][0];
    exact(e, &entry);
    assert_eq!(
        (
            &e["group"],
            &e["service"],
            &e["registry"],
            &e["status"],
            &e["isCheck"]
        ),
        (
            &Value::from("g1"),
            &Value::from(SVC),
            &Value::from("servers"),
            &Value::from("unregister-success"),
            &Value::from(true)
        ),
        "{v}"
    );
    let (code, _) = f.agent.control_post("/200");
    assert_eq!(code, 200);
    let v = f.get_json("/registry/status");
    assert_eq!(v["status"], "register-success", "{v}");
    assert_eq!(v["registryStatus"][0]["status"], "register-success", "{v}");
}

#[test]
fn get_refer_service_lists_clusters_by_motan_go_key() {
    let _serial = common::serial();
    let f = fixture("madm-refer");
    // InfoHandler.getReferService: {code int, body {service [{name string, status bool}]}},
    // name = agent.go getClusterKey(group, version, protocol, path).
    let mut v = Value::Null;
    f.wait(10, "the cluster never became available", || {
        v = f.get_json("/getReferService");
        v["body"]["service"][0]["status"] == true
    });
    exact(&v, &[("code", T::Int), ("body", T::Obj)]);
    exact(&v["body"], &[("service", T::Arr)]);
    let s = &v["body"]["service"][0];
    exact(s, &[("name", T::Str), ("status", T::Bool)]);
    assert_eq!(s["name"], format!("g1_1.0_motan2_{SVC}"));
}

#[test]
fn get_all_service_lists_the_service_urls() {
    let _serial = common::serial();
    let f = fixture("madm-allsvc");
    // InfoHandler.getAllServices: {services []*URL, dynamic_services []*URL}; core/url.go URL:
    // {protocol, host string, port int, path, group string, parameters map[string]string}.
    let v = f.get_json("/getAllService");
    exact(
        &v,
        &[("services", T::ArrOrNull), ("dynamic_services", T::ArrOrNull)],
    );
    let u = &v["services"][0];
    exact(u, URL);
    assert_eq!((&u["path"], &u["group"]), (&Value::from(SVC), &Value::from("g1")));
    assert!(
        u["parameters"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string),
        "{u}"
    );
    assert!(v["dynamic_services"].is_null(), "{v}");
}

#[test]
fn get_config_is_the_running_yaml_without_the_token() {
    let _serial = common::serial();
    let f = fixture("madm-config");
    // agent.go getConfigData: yaml.Marshal of the configuration's origin map.
    let body = answered(f.get("/getConfig"), 200, "");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&body).unwrap();
    assert_eq!(doc["motan-service"]["echo"]["path"].as_str(), Some(SVC), "{body}");
    assert_eq!(
        doc["motan-agent"]["mport"].as_u64(),
        Some(f.agent.ports.mport as u64)
    );
    assert!(!body.contains(TOKEN), "the admin token leaked:\n{body}");
    assert_eq!(doc["sockmesh"]["admin"]["token"].as_str(), Some("<redacted>"));
}

#[test]
fn runtime_info_has_upstream_keys_and_reads_keys_from_query_and_form() {
    let _serial = common::serial();
    let f = fixture("madm-runtime");
    f.wait(10, "the cluster never became available", || {
        f.get_json("/getReferService")["body"]["service"][0]["status"] == true
    });
    // RuntimeHandler: {"result":"ok","instanceType":"motan-agent"} plus one object per key
    // (core/constants.go Runtime*Key): clusters, httpClusters, exporters, servers,
    // extensionFactory, basic.
    let v = f.get_json("/runtime/info");
    exact(
        &v,
        &[
            ("result", T::Str),
            ("instanceType", T::Str),
            ("clusters", T::Obj),
            ("httpClusters", T::Obj),
            ("exporters", T::Obj),
            ("servers", T::Obj),
            ("extensionFactory", T::Obj),
            ("basic", T::Obj),
        ],
    );
    assert_eq!(
        (v["result"].as_str(), v["instanceType"].as_str()),
        (Some("ok"), Some("motan-agent"))
    );
    // cluster/motanCluster.go GetRuntimeInfo.
    let c = &v["clusters"][format!("g1_1.0_motan2_{SVC}")];
    has(
        c,
        &[
            ("name", T::Str),
            ("refererSize", T::Int),
            ("url", T::Str),
            ("referers", T::Obj),
            ("registries", T::Obj),
        ],
    );
    exact(&c["referers"], &[("available", T::Obj), ("unavailable", T::Obj)]);
    let (_, ep) = c["referers"]["available"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    // endpoint/motanCommonEndpoint.go GetRuntimeInfo.
    exact(
        ep,
        &[
            ("name", T::Str),
            ("errorCount", T::Int),
            ("keepaliveRunning", T::Bool),
            ("keepaliveType", T::Int),
        ],
    );
    // server/server.go DefaultExporter: {url string, provider {..}, isAvailable bool}.
    let (key, e) = v["exporters"].as_object().unwrap().iter().next().unwrap();
    assert!(key.ends_with("&registry=servers"), "{key}");
    exact(
        e,
        &[("url", T::Str), ("provider", T::Obj), ("isAvailable", T::Bool)],
    );
    // provider/motanProvider.go + FilterProviderWrapper: {url, available, endpoint, filters}.
    has(
        &e["provider"],
        &[
            ("url", T::Str),
            ("available", T::Bool),
            ("endpoint", T::Obj),
            ("filters", T::Arr),
        ],
    );
    exact(
        &e["provider"]["filters"][0],
        &[("name", T::Str), ("index", T::Int), ("type", T::Int)],
    );
    // agent.go startMServer servers: agentServer, agentPortServer (by port), httpProxyServer.
    let s = &v["servers"];
    exact(
        s,
        &[
            ("agentServer", T::Obj),
            ("agentPortServer", T::Obj),
            ("httpProxyServer", T::Obj),
        ],
    );
    has(
        &s["agentServer"],
        &[
            ("proxy", T::Bool),
            ("maxContentLength", T::Int),
            ("heartbeatEnabled", T::Bool),
            ("messageHandler", T::Obj),
        ],
    );
    let port = &s["agentPortServer"][f.agent.ports.eport.to_string()];
    has(
        &port["messageHandler"],
        &[("messageHandlerType", T::Str), ("providers", T::Obj)],
    );
    exact(&v["extensionFactory"], &[("registries", T::Obj)]);
    // agent.go GetRuntimeInfo: startTime (time.Time: RFC 3339 text), cpuPercent and rssMemory int64.
    let b = &v["basic"];
    exact(
        b,
        &[
            ("startTime", T::Str),
            ("cpuPercent", T::Int),
            ("rssMemory", T::Int),
        ],
    );
    assert!(b["rssMemory"].as_i64().unwrap() > 0, "{b}");
    assert!(b["startTime"].as_str().unwrap().ends_with('Z'), "{b}");

    // keys= from the query, and from a POST form body (which wins over the query, as in Go).
    let v = f.get_json("/runtime/info?keys=basic,nosuchkey");
    exact(
        &v,
        &[("result", T::Str), ("instanceType", T::Str), ("basic", T::Obj)],
    );
    let body = answered(
        http::post_form(
            f.agent.admin,
            "/runtime/info?keys=basic",
            "keys=clusters%2Cservers",
        )
        .unwrap(),
        200,
        "",
    );
    exact(
        &json(&body),
        &[
            ("result", T::Str),
            ("instanceType", T::Str),
            ("clusters", T::Obj),
            ("servers", T::Obj),
        ],
    );
}

#[test]
fn log_config_get_and_set_change_the_level_at_runtime() {
    let _serial = common::serial();
    let f = fixture("madm-log");
    // LogHandler: a json.Encoder writes {code int, body string}; /logConfig/get's body is itself
    // JSON text {level string, accessLog bool, metricsLog bool}.
    let get = || {
        let (code, text) = f.get("/logConfig/get");
        assert_eq!(code, 200, "{text}");
        let b = json(encoded(&text)["body"].as_str().unwrap());
        exact(
            &b,
            &[("level", T::Str), ("accessLog", T::Bool), ("metricsLog", T::Bool)],
        );
        b
    };
    assert_eq!(get()["level"], "debug", "the test daemons run at debug");
    assert_eq!(get()["accessLog"], true);

    // A mutation: refused over TCP unless listed in tcp_mutations (with the token).
    answered(
        http::post_form(f.agent.admin, "/logConfig/set", "level=info").unwrap(),
        403,
        "tcp_mutations",
    );

    // On the control socket, `level` from a form body (the query's value loses, as in Go).
    let body = answered(
        f.control_form("/logConfig/set?level=trace", "level=info"),
        200,
        "",
    );
    assert_eq!(
        encoded(&body),
        serde_json::json!({"code": 200, "body": "set log level:info"})
    );
    assert_eq!(get()["level"], "info");

    // Runtime effect: a connection to the agent port that ends logs a debug line; at info it
    // does not, after level=debug (no restart) it does.
    let ended = || f.agent.log().matches("connection ended").count();
    let touch = || drop(TcpStream::connect(agent_addr(&f.agent)).unwrap());
    let before = ended();
    touch();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ended(), before, "a debug line was written at level info");
    let (code, body) = f.control_form("/logConfig/set", "level=DEBUG");
    assert_eq!(
        (code, json(&body)["body"].as_str()),
        (200, Some("set log level:DEBUG"))
    );
    touch();
    f.wait(5, "no debug line after level=debug", || ended() > before);
    assert_eq!(get()["level"], "debug");

    // A level motan-go does not know: 400 with upstream's {code: 500} body; nothing changes.
    let body = answered(f.control_form("/logConfig/set", "level=verbose"), 400, "");
    assert_eq!(
        encoded(&body),
        serde_json::json!({"code": 500, "body": "set log level failed. err:unrecognized level:verbose"})
    );
    assert_eq!(get()["level"], "debug");

    // access= toggles the access log (query parameter this time).
    let (code, body) = f.agent.control_post("/logConfig/set?access=false");
    assert_eq!(
        (code, json(&body)["body"].as_str()),
        (200, Some("set accessLog status:false"))
    );
    assert_eq!(get()["accessLog"], false);
}

#[test]
fn reload_clusters_is_a_control_socket_mutation() {
    let _serial = common::serial();
    let f = fixture("madm-reload");
    // Never over TCP, whatever tcp_mutations says (it re-reads the configuration, as /reload).
    answered(
        http::post(f.agent.admin, "/reload/clusters", "").unwrap(),
        403,
        "only on the control socket",
    );
    let (code, _) = f.agent.control_request("GET", "/reload/clusters");
    assert_eq!(code, 405, "a mutation is a POST");
    // HotReload: a json.Encoder writes {code int, body string}; the body is the JSON of the
    // refer URLs by name (core Context.RefersURLs: map[string]*URL).
    let v = encoded(&answered(f.agent.control_post("/reload/clusters"), 200, ""));
    let refers = json(v["body"].as_str().unwrap());
    has(&refers["echo"], URL);
    assert_eq!(refers["echo"]["path"], SVC);
    // The mesh still serves after the reload.
    f.calls(1);
}
