//! Admin routes of the filter state (spec 4.14), to merge into the management server:
//!
//! | path | does |
//! | --- | --- |
//! | `/switcher/list` (also upstream's `/switcher/getAll`) | every switch: JSON `{name: bool}` |
//! | `/switcher/get?name=` | `Switcher value for <name> is <bool>!` |
//! | `/switcher/set?name=&value=` | set a registered switch (or any `*.degrade` switch) |
//! | `/ratelimit/list` | every rate-limited service's buckets, JSON |
//! | `/ratelimit/set?service=&rate=[&method=]` | change a rate (0.001..=1e9 per second, else 400); `rate=off` removes the limit |
//! | `/circuitBreaker/list` | every circuit's state and window counts, JSON |
//! | `/metrics` | Prometheus text (`text/plain; version=0.0.4`) |
//!
//! Any method is accepted (upstream serves them on Go's mux); parameters come from the query
//! or a urlencoded POST body (`form.rs`). A missing or bad parameter is a 400 whose text names
//! the parameter. `/logConfig/*` is in motan.rs.
use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::json;

use super::form::Form;
use crate::filter::FilterShared;
use crate::filter::rate_limit::check_rate;
use crate::url::parse_go_bool;

type Params = Form;
type Shared = State<Arc<FilterShared>>;

/// Content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes(shared: Arc<FilterShared>) -> Router {
    Router::new()
        .route("/switcher/list", any(switcher_list))
        .route("/switcher/getAll", any(switcher_list))
        .route("/switcher/get", any(switcher_get))
        .route("/switcher/set", any(switcher_set))
        .route("/ratelimit/list", any(ratelimit_list))
        .route("/ratelimit/set", any(ratelimit_set))
        .route("/circuitBreaker/list", any(breaker_list))
        .route("/metrics", any(metrics))
        .with_state(shared)
}

/// A 400 answer naming the bad parameter.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

type Handled = Result<Response, BadRequest>;

/// A required, non-empty parameter.
fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, BadRequest> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| BadRequest(format!("missing parameter {name}")))
}

fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<bool, BadRequest> {
    let v = required(q, name)?;
    parse_go_bool(v).ok_or_else(|| BadRequest(format!("parameter {name}: {v:?} is not a bool (true/false)")))
}

fn not_registered(name: &str) -> BadRequest {
    BadRequest(format!("parameter name: {name} is not a registered switcher"))
}

async fn switcher_list(State(s): Shared) -> Response {
    axum::Json(s.switchers.all()).into_response()
}

async fn switcher_get(State(s): Shared, Form(q): Params) -> Handled {
    let name = required(&q, "name")?;
    let v = s.switchers.get(name).ok_or_else(|| not_registered(name))?;
    Ok(format!("Switcher value for {name} is {v}!").into_response())
}

async fn switcher_set(State(s): Shared, Form(q): Params) -> Handled {
    let name = required(&q, "name")?;
    let value = bool_param(&q, "value")?;
    if !s.switchers.set(name, value) {
        return Err(not_registered(name));
    }
    Ok(format!("Set switcher {name} value to {value} !").into_response())
}

async fn ratelimit_list(State(s): Shared) -> Response {
    axum::Json(s.rate_limits.list()).into_response()
}

async fn ratelimit_set(State(s): Shared, Form(q): Params) -> Handled {
    let service = required(&q, "service")?;
    let text = required(&q, "rate")?;
    let rate = match text {
        "off" => None,
        t => Some(
            t.parse::<f64>()
                .map_err(|_| BadRequest(format!("parameter rate: {text:?} is not a number")))
                .and_then(|r| check_rate(r).map_err(|e| BadRequest(format!("parameter rate: {e}"))))?,
        ),
    };
    let method = q.get("method").map(String::as_str).filter(|m| !m.is_empty());
    s.rate_limits
        .set(service, method, rate)
        .map_err(|e| BadRequest(format!("parameter service: {e}")))?;
    let body = json!({ "service": service, "method": method, "rate": rate });
    Ok(axum::Json(json!({ "code": 200, "body": body })).into_response())
}

async fn breaker_list(State(s): Shared) -> Response {
    axum::Json(s.breakers.list()).into_response()
}

async fn metrics(State(s): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.registry.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::test_support::*;

    async fn get(shared: &Arc<FilterShared>, uri: &str) -> (StatusCode, String, String) {
        let resp = routes(shared.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn assert_bad(shared: &Arc<FilterShared>, uri: &str, needle: &str) {
        let (st, _, body) = get(shared, uri).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{uri}");
        assert!(body.contains(needle), "{uri}: {body}");
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn switcher_routes() {
        let shared = FilterShared::new();
        shared.switchers.register("feature.a", true);
        let (st, _, body) = get(&shared, "/switcher/list").await;
        assert_eq!((st, json(&body)), (StatusCode::OK, json!({"feature.a": true})));
        let (st, _, body) = get(&shared, "/switcher/get?name=feature.a").await;
        assert_eq!(
            (st, body.as_str()),
            (StatusCode::OK, "Switcher value for feature.a is true!")
        );
        let (st, _, body) = get(&shared, "/switcher/set?name=feature.a&value=false").await;
        assert_eq!(
            (st, body.as_str()),
            (StatusCode::OK, "Set switcher feature.a value to false !")
        );
        assert_eq!(shared.switchers.get("feature.a"), Some(false));
        // A degrade switch may be set before anything registered it.
        let (st, _, _) = get(&shared, "/switcher/set?name=hello.hi.degrade&value=true").await;
        assert_eq!(st, StatusCode::OK);
        let (_, _, body) = get(&shared, "/switcher/getAll").await;
        assert_eq!(json(&body), json!({"feature.a": false, "hello.hi.degrade": true}));

        for (uri, needle) in [
            ("/switcher/get", "missing parameter name"),
            (
                "/switcher/get?name=nope",
                "parameter name: nope is not a registered switcher",
            ),
            ("/switcher/set?name=feature.a", "missing parameter value"),
            ("/switcher/set?value=true", "missing parameter name"),
            (
                "/switcher/set?name=feature.a&value=yes",
                "parameter value: \"yes\" is not a bool",
            ),
            (
                "/switcher/set?name=nope&value=true",
                "parameter name: nope is not a registered",
            ),
        ] {
            assert_bad(&shared, uri, needle).await;
        }
        assert_eq!(shared.switchers.get("nope"), None);
    }

    #[tokio::test]
    async fn ratelimit_routes() {
        let shared = FilterShared::new();
        FilterChain::build(&refer(&[("filter", "rateLimit"), ("rateLimit", "100")]), &shared).unwrap();
        let (st, _, body) = get(&shared, "/ratelimit/list").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            json(&body),
            json!({"com.example.Hello": {"service": {"rate": 100.0, "capacity": 1000}, "methods": {}}})
        );
        let (st, _, body) = get(
            &shared,
            "/ratelimit/set?service=com.example.Hello&method=hi&rate=3000",
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(json(&body)["body"]["method"], "hi");
        let (_, _, body) = get(&shared, "/ratelimit/list").await;
        assert_eq!(
            json(&body)["com.example.Hello"]["methods"]["hi"],
            json!({"rate": 3000.0, "capacity": 5000})
        );
        for (uri, needle) in [
            ("/ratelimit/set?rate=1", "missing parameter service"),
            (
                "/ratelimit/set?service=com.example.Hello",
                "missing parameter rate",
            ),
            (
                "/ratelimit/set?service=com.example.Hello&rate=fast",
                "parameter rate: \"fast\"",
            ),
            (
                "/ratelimit/set?service=other&rate=1",
                "parameter service: service other has no rateLimit",
            ),
        ] {
            assert_bad(&shared, uri, needle).await;
        }
    }

    #[tokio::test]
    async fn metrics_and_circuits_over_a_real_listener() {
        let shared = FilterShared::new();
        let url = refer(&[("filter", "metrics,circuitBreaker")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url.clone(), "hello");
        for id in 0..4 {
            call(&chain, &i, &up, request(id, "hello")).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, routes(shared)).await });
        let fetch = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let resp = fetch("/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{resp}"
        );
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        let total = scrape
            .samples
            .iter()
            .find(|s| s.metric == "sockmesh_requests_total" && s.labels.get("method") == Some("hello"))
            .unwrap();
        assert_eq!(total.value, prometheus_parse::Value::Counter(4.0));

        let resp = fetch("/circuitBreaker/list").await;
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        let v = json(body);
        let c = &v[url.identity()];
        assert_eq!(
            (&c["open"], &c["requests"], &c["errors"]),
            (&json!(false), &json!(4), &json!(0))
        );
        assert_eq!(c["settings"]["sleep_window"], 5000);
        server.abort();
    }
}
