//! Admin API (JSON over HTTP on the management port, loopback by default): health and status,
//! online/offline, and the interception control calls the CLI uses. Bad requests get a 4xx
//! with a message.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod filters;
pub mod state_metrics;

use crate::config::RequestedMode;
use crate::control::AppState;

type Params = Query<HashMap<String, String>>;

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, axum::Json(json!({ "error": msg.to_string() }))).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(health))
        .route("/200", any(set_online))
        .route("/503", any(set_offline))
        .route("/version", get(|| async { env!("CARGO_PKG_VERSION") }))
        .route("/status", get(status))
        .route("/registry/list", get(registry_list))
        .route("/intercept/status", get(intercept_status))
        .route("/intercept/enable", post(intercept_enable))
        .route("/intercept/disable", post(intercept_disable))
        .route("/shutdown", post(shutdown))
        .route("/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint; see /status") })
        .with_state(state.clone())
        .merge(crate::admin::filters::routes(state.mesh_shared.filters.clone()))
}

pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let app = router(state);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!("admin server failed: {e}");
    }
}

async fn registry_list(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(s.mesh.load().registry_json()).into_response()
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.online.load(Ordering::Relaxed) {
        (StatusCode::OK, "OK").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
    }
}

async fn set_online(State(s): State<Arc<AppState>>) -> &'static str {
    s.online.store(true, Ordering::Relaxed);
    s.mesh.load().set_online(true).await;
    tracing::info!("status set to 200 (online)");
    "ok."
}

async fn set_offline(State(s): State<Arc<AppState>>) -> &'static str {
    s.online.store(false, Ordering::Relaxed);
    s.mesh.load().set_online(false).await;
    tracing::info!("status set to 503 (offline)");
    "ok."
}

async fn status(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(s.status_json()).into_response()
}

async fn intercept_status(State(s): State<Arc<AppState>>) -> Response {
    match s.intercept_json() {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn intercept_enable(State(s): State<Arc<AppState>>, Query(q): Params) -> Response {
    let Some(cgroup) = q.get("cgroup") else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing parameter cgroup (path relative to the cgroup v2 mount)",
        );
    };
    let mode = match q.get("mode").map(|m| m.parse::<RequestedMode>()) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.enable(cgroup, mode) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn intercept_disable(State(s): State<Arc<AppState>>, Query(q): Params) -> Response {
    let r = if q.get("all").is_some_and(|v| v == "true" || v == "1") {
        s.disable_all().map(|n| json!({ "disabled": n }))
    } else if let Some(cg) = q.get("cgroup") {
        s.disable(cg).map(|_| json!({ "disabled": 1, "cgroup": cg }))
    } else {
        return error(StatusCode::BAD_REQUEST, "give cgroup=PATH or all=true");
    };
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn reload(State(s): State<Arc<AppState>>) -> Response {
    match s.reload().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("reload refused, running configuration kept: {e:#}"),
        ),
    }
}

async fn shutdown(State(s): State<Arc<AppState>>) -> &'static str {
    tracing::info!("shutdown requested through the admin API");
    s.shutdown.cancel();
    "shutting down"
}

/// Minimal HTTP/1.0 client for the CLI (`sockmesh intercept ...`, `status`, `uninstall`).
pub fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).with_context(
        || format!("cannot reach the sockmesh daemon's admin API at {addr}; is `sockmesh run` running?"),
    )?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    Ok((code, body.to_string()))
}
