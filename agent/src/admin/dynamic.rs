//! motan-go's dynamic registration routes (dynamicConfig.go), with its paths, parameters and
//! answers: `POST /registry/register`, `/registry/unregister`, `/registry/subscribe` (mutations:
//! the control socket, or the TCP port when `sockmesh.admin.tcp_mutations` lists them),
//! `/registry/list` and `/registry/info` (reads).
//!
//! A request describes one service: as motan-go's mesh registry sends it, a JSON body of its
//! URL (`{"protocol":"motan2","host":"10.0.0.5","port":8100,"path":"com.weibo.Hello",
//! "group":"g","parameters":{"proxyRegistry":"zookeeper://10.0.0.11:2181",...}}`), or as form
//! fields (the body, then the query, as Go's `FormValue`): `path`, `group`, `port`, `protocol`,
//! `host`, every other field a parameter; or one field `url` holding the URL in registry node
//! form (`motan2://10.0.0.5:8100/com.weibo.Hello?group=g&proxyRegistry=...`). A group list
//! (`g1,g2`) means one service per group. Answers are motan-go's: `{"code":200,
//! "message":"ok"}`, or the HTTP status of a failure with its reason in `message` (and in
//! `error`, as every other admin error).
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::form::Form;
use crate::control::{AppState, DynamicError, local_ip};
use crate::registry::dynamic::{check_name, refer_url, resolve_registry, service_url};
use crate::url::Url;

pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/registry/register", post(register))
        .route("/registry/unregister", post(unregister))
        .route("/registry/subscribe", post(subscribe))
        .route("/registry/list", any(list))
        .route("/registry/info", any(info))
        .with_state(state)
}

/// motan-go's `writeHandlerResponse`: `code` (the HTTP status), `message`, optional `body`.
fn answer(code: StatusCode, message: &str, body: Option<Value>) -> Response {
    let mut m = json!({ "code": code.as_u16(), "message": message });
    if let Some(b) = body {
        m["body"] = b;
    }
    if !code.is_success() {
        m["error"] = json!(message);
    }
    (code, axum::Json(m)).into_response()
}

fn bad(message: impl std::fmt::Display) -> Response {
    answer(StatusCode::BAD_REQUEST, &message.to_string(), None)
}

/// motan-go's core.URL as JSON (Go writes a nil map as `null`).
#[derive(Deserialize)]
struct WireUrl {
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    path: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    parameters: Option<BTreeMap<String, Value>>,
}

fn port(v: i64) -> Result<u16, String> {
    u16::try_from(v).map_err(|_| format!("port {v} is not in 0..65535"))
}

/// The services a request describes (one per group), or why it describes none.
fn parse_request(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Result<Vec<Url>, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let json = content_type.contains("json") || body.trim_ascii_start().starts_with(b"{");
    let mut url = if json {
        let w: WireUrl = serde_json::from_slice(body).map_err(|e| {
            format!(
                "the body is not a motan URL as JSON ({e}); expected \
                 {{\"protocol\":\"motan2\",\"port\":8100,\"path\":\"...\",\"group\":\"...\",\"parameters\":{{...}}}}"
            )
        })?;
        let params = w
            .parameters
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        Url {
            protocol: w.protocol,
            host: w.host,
            port: port(w.port)?,
            path: w.path,
            group: w.group,
            params,
        }
    } else {
        // The body whatever its Content-Type: motan-go reads it whatever the header says, and
        // a form sent without the header is taken as one rather than refused.
        form_url(Form::from_parts(body, uri.query().unwrap_or("")))?
    };
    // motan-go: the group may also come as a parameter.
    if url.group.is_empty() {
        url.group = url.params.remove("group").unwrap_or_default();
    }
    check_name("path", &url.path)?;
    let mut groups: Vec<&str> = crate::url::split_list(&url.group);
    groups.dedup();
    if groups.is_empty() {
        return Err("missing parameter group".into());
    }
    let mut urls = Vec::new();
    for g in groups {
        check_name("group", g)?;
        urls.push(Url {
            group: g.to_string(),
            ..url.clone()
        });
    }
    Ok(urls)
}

/// The service that form fields describe.
fn form_url(Form(mut fields): Form) -> Result<Url, String> {
    fields.remove("token");
    let mut url = match fields.remove("url") {
        Some(text) => Url::parse_node(&text).map_err(|e| format!("parameter url: {e}"))?,
        None => Url::default(),
    };
    for (k, v) in fields {
        match k.as_str() {
            "protocol" => url.protocol = v,
            "host" => url.host = v,
            "path" => url.path = v,
            "group" => url.group = v,
            "port" => {
                url.port = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("port {v:?} is not a number"))
                    .and_then(port)?
            }
            _ => {
                url.params.insert(k, v);
            }
        }
    }
    Ok(url)
}

/// The running configuration's registries, export port, IP and application.
struct Agent {
    registries: BTreeMap<String, Url>,
    eport: u16,
    port: u16,
    local_ip: String,
    application: String,
}

fn agent(s: &AppState) -> Agent {
    let cfg = s.config.read().unwrap();
    Agent {
        registries: cfg.mesh.registries.clone(),
        eport: cfg.agent.eport,
        port: cfg.agent.port,
        local_ip: local_ip(&cfg),
        application: cfg.agent.application.clone(),
    }
}

/// The service URLs a register or unregister request means.
fn services(
    s: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
    need_port: bool,
) -> Result<Vec<Url>, String> {
    let a = agent(s);
    let mut out = Vec::new();
    for u in parse_request(headers, uri, body)? {
        if need_port && u.port == 0 {
            return Err("missing parameter port (the provider's port on this host)".into());
        }
        let registry = resolve_registry(&u, &a.registries)?;
        out.push(service_url(&u, &registry, a.eport, &a.local_ip, &a.application));
    }
    Ok(out)
}

fn outcome(what: &str, r: Result<bool, DynamicError>, uri: &Uri) -> Response {
    match r {
        Ok(changed) => {
            tracing::info!(path = %uri.path(), changed, "dynamic {what}");
            answer(StatusCode::OK, "ok", None)
        }
        Err(DynamicError::Refused(e)) => bad(e),
        Err(e @ DynamicError::NotSaved(_)) => answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

async fn register(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let urls = match services(&s, &headers, &uri, &body, true) {
        Ok(u) => u,
        Err(e) => return bad(e),
    };
    let r = s
        .update_dynamic(|set| {
            urls.into_iter()
                .fold(false, |changed, u| set.register(u) | changed)
        })
        .await;
    outcome("registration", r, &uri)
}

/// Unregistering what is not registered is no error (as in motan-go).
async fn unregister(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let urls = match services(&s, &headers, &uri, &body, false) {
        Ok(u) => u,
        Err(e) => return bad(e),
    };
    let r = s
        .update_dynamic(|set| urls.iter().fold(false, |changed, u| set.unregister(u) | changed))
        .await;
    outcome("unregistration", r, &uri)
}

async fn subscribe(State(s): State<Arc<AppState>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let a = agent(&s);
    let urls = match parse_request(&headers, &uri, &body).and_then(|us| {
        us.iter()
            .map(|u| resolve_registry(u, &a.registries).map(|r| refer_url(u, &r)))
            .collect::<Result<Vec<_>, _>>()
    }) {
        Ok(u) => u,
        Err(e) => return bad(e),
    };
    let r = s
        .update_dynamic(|set| {
            urls.into_iter()
                .fold(false, |changed, u| set.subscribe(u) | changed)
        })
        .await;
    outcome("subscription", r, &uri)
}

/// motan-go's answer (`body`: `register_nodes`, `subscribe_nodes`), and at the top level what
/// sockmesh's `/registry/list` always showed: each registry's state, every registration and
/// subscription of the mesh (configured and dynamic).
async fn list(State(s): State<Arc<AppState>>) -> Response {
    let set = s.mesh_shared.dynamic.lock().unwrap().clone();
    let mut m = json!({ "code": 200, "message": "ok", "body": set });
    if let (Some(o), Value::Object(extra)) = (m.as_object_mut(), s.mesh.load().registry_json()) {
        o.extend(extra);
    }
    axum::Json(m).into_response()
}

async fn info(State(s): State<Arc<AppState>>) -> Response {
    answer(StatusCode::OK, "ok", Some(json!({ "mesh_port": agent(&s).port })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ct: &str, query: &str, body: &str) -> Result<Vec<Url>, String> {
        let mut h = HeaderMap::new();
        if !ct.is_empty() {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        let uri: Uri = format!("/registry/register{query}").parse().unwrap();
        parse_request(&h, &uri, body.as_bytes())
    }

    #[test]
    fn json_as_motan_go_sends_it() {
        // dynamicConfig_test.go's body.
        let body = r#"{"protocol":"motan2","host":"10.10.64.11","port":1880,"path":"com.company.HelloService","group":"hello,hello1","parameters":{"conf-id":"com.company.HelloService","export":"motan2:1880","nodeType":"service","proxyRegistry":"direct://127.0.0.1:1880","registry":"mesh-registry","requestTimeout":"600000","serialization":"breeze"}}"#;
        let urls = parse("application/json", "", body).unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(
            (urls[0].group.as_str(), urls[1].group.as_str()),
            ("hello", "hello1")
        );
        assert_eq!(urls[0].port, 1880);
        assert_eq!(urls[0].param("proxyRegistry"), Some("direct://127.0.0.1:1880"));
        // Without a content type too; Go's null map.
        let urls = parse("", "", r#"{"port":1,"path":"S","group":"g","parameters":null}"#).unwrap();
        assert!(urls[0].params.is_empty());
        assert!(
            parse("application/json", "", "}")
                .unwrap_err()
                .contains("not a motan URL as JSON")
        );
        assert!(
            parse("", "", "{\"path\"")
                .unwrap_err()
                .contains("not a motan URL as JSON")
        );
        assert!(
            parse(
                "application/json",
                "",
                "{\"port\":70000,\"path\":\"S\",\"group\":\"g\"}"
            )
            .unwrap_err()
            .contains("port 70000")
        );
    }

    #[test]
    fn form_fields_body_first_then_query() {
        let urls = parse(
            "application/x-www-form-urlencoded",
            "?group=fromquery&registry=zk&token=t",
            "path=com.weibo.Hello&group=g&port=8100&serialization=breeze",
        )
        .unwrap();
        assert_eq!(urls.len(), 1);
        let u = &urls[0];
        assert_eq!(
            (u.path.as_str(), u.group.as_str(), u.port),
            ("com.weibo.Hello", "g", 8100)
        );
        assert_eq!(u.param("registry"), Some("zk"));
        assert_eq!(u.param("serialization"), Some("breeze"));
        assert_eq!(u.param("token"), None);
        let u = &parse(
            "",
            "",
            "url=motan2%3A%2F%2F127.0.0.1%3A8100%2FS%3Fgroup%3Dg%26registry%3Dzk",
        )
        .unwrap()[0];
        assert_eq!((u.path.as_str(), u.group.as_str(), u.port), ("S", "g", 8100));
        assert!(
            parse("", "", "group=g&port=1")
                .unwrap_err()
                .contains("missing parameter path")
        );
        assert!(
            parse("", "", "path=S&port=1")
                .unwrap_err()
                .contains("missing parameter group")
        );
        assert!(
            parse("", "", "path=S&group=g&port=x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse("", "", "url=nonsense")
                .unwrap_err()
                .contains("parameter url")
        );
        assert!(
            parse("", "", "path=a/b&group=g")
                .unwrap_err()
                .contains("registry node name")
        );
    }
}
