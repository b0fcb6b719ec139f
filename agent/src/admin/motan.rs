//! motan-go's management routes (issue #19), with its paths and response shapes (field names
//! and JSON types as upstream's handlers write them; each handler cites the upstream source,
//! github.com/weibocom/motan-go at d08de97). Parameters are read as Go's `FormValue` reads them:
//! query and urlencoded POST body (`form.rs`). Who may call them is decided by `access.rs` like
//! every admin route: `/logConfig/set` is a mutation (TCP only when listed in
//! `sockmesh.admin.tcp_mutations`), `/reload/clusters` is served on the control socket only
//! (as `/reload`); the rest only read.
//!
//! | route | answer |
//! | --- | --- |
//! | `/status` | `{"code":200,"body":{"status":int,"service_period_call_count":int,"services":[{"group","name","methods":[{"name","period_call_count"}]}]}}` |
//! | `/version` | the version, plain text |
//! | `/registry/status` | `{"status":str,"registryStatus":[{"group","service","registry","status","errMsg","isCheck"}] or null}` |
//! | `/getReferService` | `{"code":200,"body":{"service":[{"name":str,"status":bool}]}}` |
//! | `/getAllService` | `{"services":[URL] or null,"dynamic_services":[URL] or null}` |
//! | `/getConfig` | the running configuration as YAML (`sockmesh.admin.token` redacted) |
//! | `/runtime/info[?keys=a,b]` | `{"result":"ok","instanceType":"motan-agent",<key>:{..}}` |
//! | `/logConfig/get` | `{"code":200,"body":"{\"level\":..,\"accessLog\":..,\"metricsLog\":..}"}` |
//! | `/logConfig/set?level=\|access=\|metrics=` | `{"code":200,"body":"set log level:debug"}` |
//! | `/reload/clusters` | `{"code":200,"body":"<JSON of the refer URLs by name>"}` |
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::form::Form;
use crate::control::AppState;
use crate::filter::Role;
use crate::locks::Locked;
use crate::proxy::inbound::{Export, Provider};
use crate::proxy::mesh::{
    Mesh, NOT_REGISTER, REGISTER_FAILED, REGISTER_SUCCESS, UNREGISTER_FAILED, UNREGISTER_SUCCESS,
};
use crate::url::{Url, parse_go_bool};

/// The window `period_call_count` covers (motan-go's metrics snapshot period).
pub const CALL_PERIOD: Duration = Duration::from_secs(5);

type St = State<Arc<MotanAdmin>>;

/// What the routes read: the agent state and the call counts of the last period.
pub struct MotanAdmin {
    state: Arc<AppState>,
    periods: CallPeriods,
}

pub fn routes(state: Arc<AppState>) -> Router {
    let admin = Arc::new(MotanAdmin {
        state,
        periods: CallPeriods::default(),
    });
    admin.periods.roll(&admin.state);
    let ticker = admin.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CALL_PERIOD);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = ticker.state.shutdown.cancelled() => break,
                _ = tick.tick() => ticker.periods.roll(&ticker.state),
            }
        }
    });
    // Any method, as on Go's mux; access.rs refuses a GET of a mutation.
    Router::new()
        .route("/status", any(status))
        .route("/version", any(|| async { env!("CARGO_PKG_VERSION") }))
        .route("/registry/status", any(registry_status))
        .route("/getReferService", any(get_refer_service))
        .route("/getAllService", any(get_all_service))
        .route("/getConfig", any(get_config))
        .route("/runtime/info", any(runtime_info))
        .route("/logConfig/get", any(log_config_get))
        .route("/logConfig/set", any(log_config_set))
        .route("/reload/clusters", any(reload_clusters))
        .with_state(admin)
}

/// JSON as upstream's `json.Marshal` writes it; `encoder` adds the newline of Go's
/// `json.NewEncoder(w).Encode`.
fn json_response(status: StatusCode, v: &Value, encoder: bool) -> Response {
    let mut body = v.to_string();
    if encoder {
        body.push('\n');
    }
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"code":..,"body":"..."}` (manageHandler.go `logResponse`), written by a Go encoder.
fn log_response(status: StatusCode, code: u16, body: String) -> Response {
    json_response(status, &json!({ "code": code, "body": body }), true)
}

/// motan-go's `URL.ToExtInfo`: `protocol://host:port/path?group=G&k=v...`, keys sorted.
pub fn ext_info(u: &Url) -> String {
    let mut s = format!(
        "{}://{}:{}/{}?group={}",
        u.protocol, u.host, u.port, u.path, u.group
    );
    for (k, v) in &u.params {
        s.push('&');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

// ---- /status (manageHandler.go StatusHandler.getStatus) ----

/// Requests per (group, service, method) counted in the last [`CALL_PERIOD`], from the metrics
/// filter's cumulative counters of the server role: motan-go reads its exporters' metrics
/// snapshot, so deploy scripts can wait after `/503` until the period count is 0.
#[derive(Default)]
struct CallPeriods {
    inner: Mutex<PeriodState>,
}

#[derive(Default)]
struct PeriodState {
    /// Cumulative count per (group, service, method) at the last roll.
    totals: HashMap<(String, String, String), u64>,
    /// Requests in the last period per (group, service): (method, count).
    last: HashMap<(String, String), Vec<(String, u64)>>,
}

impl CallPeriods {
    fn roll(&self, state: &AppState) {
        let mesh = state.mesh.load();
        let metrics = &state.mesh_shared.filters.metrics;
        let mut p = self.inner.locked();
        let mut last = HashMap::new();
        for e in mesh.exporter.exports() {
            let (group, service) = (&e.service.group, &e.service.path);
            let methods = metrics.request_totals(Role::ServerAgent, group, service);
            if methods.is_empty() {
                continue;
            }
            let counts = methods
                .into_iter()
                .map(|(m, total)| {
                    // A series first seen now started within this period (counters are
                    // never removed, and the first roll runs before any request).
                    let key = (group.clone(), service.clone(), m.clone());
                    let before = p.totals.insert(key, total).unwrap_or(0);
                    (m, total.saturating_sub(before))
                })
                .collect();
            last.insert((group.clone(), service.clone()), counts);
        }
        p.last = last;
    }
}

#[derive(Serialize)]
struct MethodStatus {
    name: String,
    period_call_count: i64,
}

#[derive(Serialize)]
struct ServiceStatus {
    group: String,
    name: String,
    methods: Vec<MethodStatus>,
}

async fn status(State(a): St) -> Response {
    let mesh = a.state.mesh.load();
    let last = a.periods.inner.locked().last.clone();
    let mut total = 0i64;
    let mut services = Vec::new();
    for e in mesh.exporter.exports() {
        // No metrics for the service: upstream skips it (`statItem == nil`).
        let Some(methods) = last.get(&(e.service.group.clone(), e.service.path.clone())) else {
            continue;
        };
        let methods: Vec<MethodStatus> = methods
            .iter()
            .map(|(m, n)| {
                total += *n as i64;
                MethodStatus {
                    name: m.clone(),
                    period_call_count: *n as i64,
                }
            })
            .collect();
        services.push(ServiceStatus {
            group: e.service.group.clone(),
            name: e.service.path.clone(),
            methods,
        });
    }
    let v = json!({
        "code": 200,
        "body": {
            "status": online_status(&a.state),
            "service_period_call_count": total,
            "services": services,
        },
    });
    // Upstream uses json.MarshalIndent(v, "", "    ").
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = v.serialize(&mut ser);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], out).into_response()
}

fn online_status(state: &AppState) -> u16 {
    if state.online.load(std::sync::atomic::Ordering::Relaxed) {
        200
    } else {
        503
    }
}

// ---- /registry/status (manageHandler.go StatusHandler.getRegistryStatus) ----

async fn registry_status(State(a): St) -> Response {
    let mesh = a.state.mesh.load();
    let online = online_status(&a.state) == 200;
    let mut overall = if online {
        REGISTER_SUCCESS
    } else {
        UNREGISTER_SUCCESS
    };
    let mut entries = Vec::new();
    for (url, st) in mesh.registrations_with_status() {
        let is_check = url.param("check").and_then(parse_go_bool).unwrap_or(false);
        entries.push(json!({
            "group": url.group,
            "service": url.path,
            "registry": url.get_str(crate::url::keys::REGISTRY, ""),
            "status": st.status,
            "errMsg": st.error,
            "isCheck": is_check,
        }));
        // The overall status is the worst of the checked registrations (upstream's rule).
        if is_check {
            let failed = if online {
                REGISTER_FAILED
            } else {
                UNREGISTER_FAILED
            };
            if st.status == failed {
                overall = failed;
            } else if st.status == NOT_REGISTER && overall != failed {
                overall = NOT_REGISTER;
            }
        }
    }
    // Go marshals an empty (nil) slice as null.
    let list = if entries.is_empty() {
        Value::Null
    } else {
        Value::Array(entries)
    };
    json_response(
        StatusCode::OK,
        &json!({ "status": overall, "registryStatus": list }),
        false,
    )
}

// ---- /getReferService, /getAllService, /getConfig (manageHandler.go InfoHandler) ----

/// motan-go's cluster key (agent.go `getClusterKey`): `group_version_protocol_path`.
fn cluster_key(refer: &Url) -> String {
    let protocol = match refer.protocol.as_str() {
        "cedrus" => "motan2",
        p => p,
    };
    let version = refer.get_str("version", "1.0");
    format!("{}_{}_{}_{}", refer.group, version, protocol, refer.path)
}

async fn get_refer_service(State(a): St) -> Response {
    let mesh = a.state.mesh.load();
    let service: Vec<Value> = mesh
        .router
        .clusters()
        .map(|c| json!({ "name": cluster_key(&c.refer()), "status": c.is_available() }))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "code": 200, "body": { "service": service } }),
        false,
    )
}

async fn get_all_service(State(a): St) -> Response {
    let mesh = a.state.mesh.load();
    let services: Vec<&Url> = mesh.exporter.exports().map(|e| &*e.service).collect();
    let services = if services.is_empty() {
        Value::Null
    } else {
        serde_json::to_value(services).unwrap_or(Value::Null)
    };
    // `dynamic_services`: services registered through /registry/register; none here.
    json_response(
        StatusCode::OK,
        &json!({ "services": services, "dynamic_services": Value::Null }),
        false,
    )
}

/// The configuration document as YAML, the admin token replaced (the TCP port serves this to
/// every local user).
pub fn config_yaml(origin: &serde_yaml_ng::Value) -> String {
    let mut doc = origin.clone();
    if let Some(admin) = doc
        .get_mut("sockmesh")
        .and_then(|s| s.get_mut("admin"))
        .and_then(|a| a.as_mapping_mut())
        && admin.contains_key("token")
    {
        admin.insert("token".into(), "<redacted>".into());
    }
    serde_yaml_ng::to_string(&doc).unwrap_or_else(|e| e.to_string())
}

async fn get_config(State(a): St) -> Response {
    let text = config_yaml(&a.state.config.read().unwrap().origin);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

// ---- /runtime/info (manageHandler.go RuntimeHandler) ----

const RUNTIME_KEYS: [&str; 6] = [
    "clusters",
    "httpClusters",
    "exporters",
    "servers",
    "extensionFactory",
    "basic",
];

/// motan-go's filter index and type (0 endpoint filter, 1 cluster filter), filter/*.go.
fn filter_info(name: &str) -> Value {
    let (index, kind) = match name {
        "accessLog" | "failfast" => (1, 0),
        "metrics" | "trace" => (2, 0),
        "rateLimit" => (3, 0),
        "circuitBreaker" => (20, 0),
        "clusterAccessLog" => (1, 1),
        "clusterMetrics" => (5, 1),
        "clusterCircuitBreaker" => (20, 1),
        _ => (0, 0),
    };
    json!({ "name": name, "index": index, "type": kind })
}

fn filters_into(info: &mut Map<String, Value>, names: &[&str]) {
    if !names.is_empty() {
        info.insert("filters".into(), names.iter().map(|n| filter_info(n)).collect());
    }
}

fn clusters_info(mesh: &Mesh) -> Value {
    let mut out = Map::new();
    for r in mesh.router.refers() {
        let c = &r.cluster;
        let (size, referers) = c.referers_runtime_info();
        let refer = c.refer();
        let registries: Map<String, Value> = refer
            .get_list(crate::url::keys::REGISTRY)
            .into_iter()
            .filter_map(|id| mesh.registries.get(id))
            .map(|reg| (reg.url().identity(), json!({ "name": reg.url().protocol })))
            .collect();
        let mut info = Map::new();
        info.insert("name".into(), json!("MotanCluster"));
        info.insert("refererSize".into(), json!(size));
        info.insert("url".into(), json!(ext_info(&c.refer())));
        info.insert("referers".into(), referers);
        info.insert("registries".into(), Value::Object(registries));
        filters_into(&mut info, &r.chain.names());
        out.insert(cluster_key(&c.refer()), Value::Object(info));
    }
    Value::Object(out)
}

fn http_clusters_info(mesh: &Mesh) -> Value {
    let mut out = Map::new();
    for d in mesh.http.status_json().as_array().into_iter().flatten() {
        if let Some(domain) = d["domain"].as_str() {
            out.insert(domain.to_string(), json!({ "name": "HTTPCluster" }));
        }
    }
    Value::Object(out)
}

fn provider_info(e: &Export, online: bool) -> Value {
    let mut info = Map::new();
    match &e.provider {
        Provider::Motan2 { pool } => {
            info.insert("url".into(), json!(ext_info(&e.service)));
            info.insert("available".into(), json!(online));
            let ep = json!({
                "name": format!("motan2://{}", pool.address()),
                "errorCount": 0,
                "keepaliveRunning": false,
                "keepaliveType": 0,
            });
            info.insert("endpoint".into(), ep);
        }
        Provider::Http(_) => {
            info.insert("name".into(), json!("HTTPProvider"));
            info.insert("url".into(), json!(ext_info(&e.service)));
        }
    }
    filters_into(&mut info, &e.chain.names());
    Value::Object(info)
}

fn exporters_info(mesh: &Mesh, online: bool) -> Value {
    let mut out = Map::new();
    for e in mesh.exporter.exports() {
        // agent.go keys exporters by `URL.GetIdentityWithRegistry`.
        let key = format!(
            "{}&registry={}",
            e.service.identity(),
            e.service.get_str(crate::url::keys::REGISTRY, "")
        );
        let info = json!({
            "url": ext_info(&e.service),
            "provider": provider_info(e, online),
            "isAvailable": online,
        });
        out.insert(key, info);
    }
    Value::Object(out)
}

fn servers_info(a: &MotanAdmin, mesh: &Mesh, online: bool) -> Value {
    let cfg = a.state.config.read().unwrap();
    let max = mesh.limits.max_body;
    let mut ports = Map::new();
    for port in &a.state.export_ports {
        let providers: Map<String, Value> = mesh
            .exporter
            .exports()
            .filter(|e| e.port == *port)
            .map(|e| {
                (
                    format!("{}_{}", e.service.group, e.service.path),
                    provider_info(e, online),
                )
            })
            .collect();
        ports.insert(
            port.to_string(),
            json!({
                "proxy": false,
                "maxContentLength": max,
                "heartbeatEnabled": true,
                "messageHandler": {
                    "messageHandlerType": "serverAgentMessageHandler",
                    "providers": providers,
                },
            }),
        );
    }
    let hp = &cfg.mesh.http_proxy;
    let http_proxy = if hp.enabled {
        json!({ "deny": Vec::<String>::new(), "keepalive": true, "defaultDomain": "" })
    } else {
        json!({})
    };
    json!({
        "agentServer": {
            "proxy": true,
            "maxContentLength": max,
            "heartbeatEnabled": true,
            "messageHandler": { "messageHandlerType": "agentMessageHandler" },
        },
        "agentPortServer": ports,
        "httpProxyServer": http_proxy,
    })
}

fn extension_factory_info(mesh: &Mesh) -> Value {
    let registries: Map<String, Value> = mesh
        .registries
        .values()
        .map(|r| (r.url().identity(), json!({ "name": r.url().protocol })))
        .collect();
    json!({ "registries": registries })
}

/// agent.go `GetRuntimeInfo`: start time (Go's time.Time JSON, RFC 3339), CPU percent since
/// start and resident memory in MiB, both integers.
fn basic_info(state: &AppState) -> Value {
    let up = state.started.elapsed();
    let start = SystemTime::now().checked_sub(up).unwrap_or(UNIX_EPOCH);
    let (cpu, rss) = crate::sys::self_usage().unwrap_or((0.0, 0));
    let secs = up.as_secs_f64();
    let cpu_percent = if secs > 0.0 {
        (cpu / secs * 100.0) as i64
    } else {
        0
    };
    json!({
        "startTime": rfc3339(start),
        "cpuPercent": cpu_percent,
        "rssMemory": (rss >> 20) as i64,
    })
}

/// `2026-12-01T04:15:07.123456789Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

async fn runtime_info(State(a): St, Form(q): Form) -> Response {
    let mesh = a.state.mesh.load();
    let online = online_status(&a.state) == 200;
    let keys: Vec<&str> = match q.get("keys").map(String::as_str) {
        None | Some("") => RUNTIME_KEYS.to_vec(),
        Some(k) => k.split(',').collect(),
    };
    let mut out = Map::new();
    out.insert("result".into(), json!("ok"));
    out.insert("instanceType".into(), json!("motan-agent"));
    for key in keys {
        let info = match key {
            "clusters" => clusters_info(&mesh),
            "httpClusters" => http_clusters_info(&mesh),
            "exporters" => exporters_info(&mesh, online),
            "servers" => servers_info(&a, &mesh, online),
            "extensionFactory" => extension_factory_info(&mesh),
            "basic" => basic_info(&a.state),
            // Unknown keys are left out, as upstream does.
            _ => continue,
        };
        out.insert(key.to_string(), info);
    }
    json_response(StatusCode::OK, &Value::Object(out), false)
}

// ---- /logConfig/get, /logConfig/set (manageHandler.go LogHandler) ----

/// The most verbose level the running filter lets through, in motan-go's names.
fn current_level() -> String {
    tracing::level_filters::LevelFilter::current()
        .to_string()
        .to_ascii_lowercase()
}

async fn log_config_get(State(a): St) -> Response {
    // The body is itself JSON text, as upstream writes it.
    let body = json!({
        "level": current_level(),
        "accessLog": a.state.mesh_shared.filters.access_log.enabled(),
        // sockmesh writes no metrics log (metrics are /metrics and the Graphite push).
        "metricsLog": false,
    });
    log_response(StatusCode::OK, 200, body.to_string())
}

/// motan-go's level names (log/level.go `LogLevel.Set`, case-insensitive) as a tracing filter;
/// tracing has nothing above error, so dpanic, panic and fatal mean error. A tracing
/// directive with `=` (e.g. `info,sockmesh=debug`) is taken as it is.
pub fn level_filter(level: &str) -> Result<String, String> {
    let l = level.to_ascii_lowercase();
    match l.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(l),
        "dpanic" | "panic" | "fatal" => Ok("error".into()),
        _ if level.contains('=') => Ok(level.to_string()),
        _ => Err(format!("unrecognized level:{level}")),
    }
}

async fn log_config_set(State(a): St, Form(q): Form) -> Response {
    let non_empty = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(level) = non_empty("level") {
        let set = level_filter(level).and_then(|f| match &a.state.log_reload {
            Some(reload) => reload(&f).map_err(|e| format!("{e:#}")),
            None => Err("this process has no reloadable log filter".into()),
        });
        return match set {
            Ok(()) => {
                tracing::info!("set log level:{level}");
                log_response(StatusCode::OK, 200, format!("set log level:{level}"))
            }
            Err(e) => {
                tracing::warn!("set log level failed. err:{e}");
                log_response(
                    StatusCode::BAD_REQUEST,
                    500,
                    format!("set log level failed. err:{e}"),
                )
            }
        };
    }
    let (log_type, value) = match (non_empty("access"), non_empty("metrics")) {
        (Some(v), _) => ("accessLog", v),
        (None, Some(v)) => ("metricsLog", v),
        (None, None) => {
            return log_response(
                StatusCode::BAD_REQUEST,
                500,
                "missing parameter: give level=, access= or metrics=".into(),
            );
        }
    };
    let on = match parse_go_bool(value) {
        Some(on) => on,
        None => {
            return log_response(
                StatusCode::BAD_REQUEST,
                500,
                format!("set {log_type} status failed. err:{value:?} is not a bool (true/false)"),
            );
        }
    };
    if log_type == "metricsLog" {
        return log_response(
            StatusCode::BAD_REQUEST,
            500,
            "set metricsLog status failed. err:sockmesh writes no metrics log (see /metrics)".into(),
        );
    }
    a.state.mesh_shared.filters.access_log.set_enabled(on);
    tracing::info!("set accessLog status:{on}");
    log_response(StatusCode::OK, 200, format!("set accessLog status:{value}"))
}

// ---- /reload/clusters (manageHandler.go HotReload) ----

/// Re-reads the configuration file and applies it like `/reload` (validated first; a bad file
/// changes nothing); the body is the refer URLs by refer name, as JSON text.
async fn reload_clusters(State(a): St) -> Response {
    match a.state.reload().await {
        Ok(_) => {
            let mesh = a.state.mesh.load();
            let refers: Map<String, Value> = mesh
                .router
                .clusters()
                .map(|c| {
                    (
                        c.conf_id.clone(),
                        serde_json::to_value(&*c.refer()).unwrap_or_default(),
                    )
                })
                .collect();
            log_response(StatusCode::OK, 200, Value::Object(refers).to_string())
        }
        Err(e) => log_response(
            StatusCode::BAD_REQUEST,
            500,
            format!("reload refused, running configuration kept: {e:#}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_info_matches_upstream() {
        let mut u = Url::new("motan2", "10.0.0.1", 8002, "com.a.B", "g");
        u.params.insert("z".into(), "1".into());
        u.params.insert("a".into(), "x".into());
        assert_eq!(ext_info(&u), "motan2://10.0.0.1:8002/com.a.B?group=g&a=x&z=1");
        assert_eq!(cluster_key(&u), "g_1.0_motan2_com.a.B");
    }

    #[test]
    fn levels_and_times() {
        assert_eq!(level_filter("DEBUG").unwrap(), "debug");
        assert_eq!(level_filter("fatal").unwrap(), "error");
        assert_eq!(
            level_filter("info,sockmesh=trace").unwrap(),
            "info,sockmesh=trace"
        );
        assert_eq!(level_filter("verbose").unwrap_err(), "unrecognized level:verbose");
        let t = UNIX_EPOCH + Duration::new(1_764_562_507, 5);
        assert_eq!(rfc3339(t), "2025-12-01T04:15:07.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn config_yaml_redacts_the_token() {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("sockmesh:\n  admin:\n    token: secret\nmotan-agent:\n  port: 9981\n")
                .unwrap();
        let y = config_yaml(&doc);
        assert!(!y.contains("secret"), "{y}");
        assert!(y.contains("<redacted>") && y.contains("port: 9981"), "{y}");
    }
}
