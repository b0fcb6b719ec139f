//! Admin API (JSON over HTTP): health and status, online/offline, filter state, and the
//! interception control calls the CLI uses. One router behind two doors, the control socket
//! and the loopback TCP port; `access.rs` decides who may call what on each. Bad requests get
//! a 4xx with a message.
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

pub mod access;
pub mod client;
pub mod control_socket;
pub mod filters;
pub mod state_metrics;

use self::access::{Access, Caller};
use self::control_socket::ControlSocket;

use crate::config::RequestedMode;
use crate::control::AppState;
use crate::proxy::mesh::StatusView;

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

/// The router with every request checked by `access.rs` first.
pub fn guarded_router(access: Arc<Access>) -> Router {
    router(access.state.clone()).layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// Serve the admin API on the TCP port and on the control socket until `shutdown`; the socket
/// file is removed at the end.
pub async fn serve(
    tcp: TcpListener,
    control: ControlSocket,
    access: Arc<Access>,
    shutdown: CancellationToken,
) {
    let app = guarded_router(access);
    let ControlSocket { listener, file } = control;
    let (stop_tcp, stop_socket) = (shutdown.clone(), shutdown);
    let tcp = axum::serve(tcp, app.clone().into_make_service_with_connect_info::<Caller>())
        .with_graceful_shutdown(async move { stop_tcp.cancelled().await });
    let socket = axum::serve(listener, app.into_make_service_with_connect_info::<Caller>())
        .with_graceful_shutdown(async move { stop_socket.cancelled().await });
    let (t, s) = tokio::join!(tcp.into_future(), socket.into_future());
    for (door, r) in [("TCP admin port", t), ("control socket", s)] {
        if let Err(e) = r {
            tracing::error!("admin server on the {door} failed: {e}");
        }
    }
    drop(file);
}

/// A boolean parameter such as `all=true` or `force=1`.
fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
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

async fn status(State(s): State<Arc<AppState>>, Query(q): Params) -> Response {
    let view = match status_view(&q) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.status_json(&view) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// Most endpoints one `/status?cluster=NAME` page lists (and the default page size).
pub const STATUS_PAGE_MAX: usize = 1000;

/// `/status` lists a summary of the clusters' endpoints; `cluster=NAME` (with `offset=` and
/// `limit=`, at most [`STATUS_PAGE_MAX`]) pages through one cluster's endpoints instead.
fn status_view(q: &HashMap<String, String>) -> Result<StatusView, String> {
    let number = |key: &str, default: usize| -> Result<usize, String> {
        q.get(key).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{key}={v:?} is not a non-negative integer"))
        })
    };
    let (offset, limit) = (number("offset", 0)?, number("limit", STATUS_PAGE_MAX)?);
    match q.get("cluster") {
        None if q.contains_key("offset") || q.contains_key("limit") => {
            Err("offset= and limit= page one cluster's endpoints: give cluster=NAME too".into())
        }
        None => Ok(StatusView::Summary),
        Some(_) if limit == 0 || limit > STATUS_PAGE_MAX => {
            Err(format!("limit={limit} is out of range 1..={STATUS_PAGE_MAX}"))
        }
        Some(name) => Ok(StatusView::Cluster {
            name: name.clone(),
            offset,
            limit,
        }),
    }
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
    match s.enable(cgroup, mode, flag(&q, "force")) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn intercept_disable(State(s): State<Arc<AppState>>, Query(q): Params) -> Response {
    let r = if flag(&q, "all") {
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

/// Only root and the control group reach this (see access.rs); the daemon then drains and exits
/// 0, as on SIGTERM, so systemd's Restart=on-failure leaves it stopped, as asked.
async fn shutdown(State(s): State<Arc<AppState>>) -> &'static str {
    tracing::info!("shutdown requested through the control socket");
    s.shutdown.cancel();
    "shutting down"
}
