//! Admin API (JSON over HTTP): health and status, online/offline, filter state, the
//! interception control calls the CLI uses, and motan-go's dynamic registration (`dynamic.rs`).
//! One router behind two doors, the control socket and the loopback TCP port; `access.rs`
//! decides who may call what on each. Bad requests get a 4xx with a message.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod access;
pub mod client;
pub mod control_socket;
pub mod dynamic;
pub mod filters;
pub mod form;
pub mod motan;
pub mod state_metrics;

use self::access::{Access, Caller, ManagementSocket};
use self::control_socket::{ControlSocket, SocketFile};
use self::form::Form;

use crate::config::RequestedMode;
use crate::control::AppState;

type Params = Form;

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, axum::Json(json!({ "error": msg.to_string() }))).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(health))
        .route("/200", any(set_online))
        .route("/503", any(set_offline))
        // sockmesh's own status (the CLI's `sockmesh status`); motan-go's `/status` is in motan.rs.
        .route("/sockmesh/status", get(status))
        .route("/intercept/status", get(intercept_status))
        .route("/intercept/enable", post(intercept_enable))
        .route("/intercept/disable", post(intercept_disable))
        .route("/shutdown", post(shutdown))
        .route("/reload", post(reload))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such admin endpoint; see /sockmesh/status",
            )
        })
        .with_state(state.clone())
        .merge(crate::admin::filters::routes(state.mesh_shared.filters.clone()))
        .merge(crate::admin::dynamic::routes(state.clone()))
        .merge(crate::admin::motan::routes(state.clone()))
}

/// The router with every request checked by `access.rs` first.
pub fn guarded_router(access: Arc<Access>) -> Router {
    router(access.state.clone()).layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// Where motan-go's tooling reaches the admin API: the TCP port (mport), or the Unix socket
/// `managementUnixSock` instead (with its file, removed when serving ends).
pub enum ManagementDoor {
    Tcp(TcpListener),
    Unix(ManagementSocket, SocketFile),
}

/// Serve the admin API on the management door and on the control socket until `shutdown`; the
/// socket files are removed at the end.
pub async fn serve(
    door: ManagementDoor,
    control: ControlSocket,
    access: Arc<Access>,
    shutdown: CancellationToken,
) {
    let app = guarded_router(access);
    let ControlSocket { listener, file } = control;
    let (stop_tcp, stop_socket) = (shutdown.clone(), shutdown);
    let stop = async move { stop_tcp.cancelled().await };
    let service = app.clone().into_make_service_with_connect_info::<Caller>();
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
    let (tcp, management_file): (Serving, _) = match door {
        ManagementDoor::Tcp(l) => (
            Box::pin(axum::serve(l, service).with_graceful_shutdown(stop).into_future()),
            None,
        ),
        ManagementDoor::Unix(l, f) => (
            Box::pin(axum::serve(l, service).with_graceful_shutdown(stop).into_future()),
            Some(f),
        ),
    };
    let socket = axum::serve(listener, app.into_make_service_with_connect_info::<Caller>())
        .with_graceful_shutdown(async move { stop_socket.cancelled().await });
    let (t, s) = tokio::join!(tcp, socket.into_future());
    for (door, r) in [("management port", t), ("control socket", s)] {
        if let Err(e) = r {
            tracing::error!("admin server on the {door} failed: {e}");
        }
    }
    drop(file);
    drop(management_file);
}

/// A boolean parameter such as `all=true` or `force=1`.
fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.online.load(Ordering::Relaxed) {
        (StatusCode::OK, "OK").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
    }
}

async fn set_online(State(s): State<Arc<AppState>>) -> &'static str {
    s.set_online(true).await;
    tracing::info!("status set to 200 (online)");
    "ok."
}

async fn set_offline(State(s): State<Arc<AppState>>) -> &'static str {
    s.set_online(false).await;
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

async fn intercept_enable(State(s): State<Arc<AppState>>, Form(q): Params) -> Response {
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

async fn intercept_disable(State(s): State<Arc<AppState>>, Form(q): Params) -> Response {
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
