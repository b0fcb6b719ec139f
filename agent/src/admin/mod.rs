//! Admin API (JSON over HTTP): health and status, online/offline, filter state, the
//! interception control calls the CLI uses, motan-go's dynamic registration (`dynamic.rs`) and
//! dynamic meta (`meta.rs`).
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
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod access;
pub mod client;
pub mod control_socket;
pub mod dynamic;
pub mod filters;
pub mod form;
pub mod meta;
pub mod motan;
pub mod state_metrics;

use self::access::{Access, Caller};
use self::control_socket::ControlSocket;
use self::form::Form;

use crate::config::RequestedMode;
use crate::config::sections::LimitsSection;
use crate::control::AppState;
use crate::proxy::mesh::StatusView;
use crate::proxy::serve::{Accept, AcceptGate, next_connection};

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
        .merge(crate::admin::meta::routes())
}

/// The router with every request checked by `access.rs` first.
pub fn guarded_router(access: Arc<Access>) -> Router {
    router(access.state.clone()).layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// Serve the admin API on the TCP port and on the control socket until `shutdown`; the socket
/// file is removed at the end. Each door accepts at most `sockmesh.limits.admin_connections`
/// at once and closes a connection that sends no complete request head for
/// `admin_idle_timeout_ms`, so thousands of idle peers on the TCP port cannot keep root out
/// of the control socket.
pub async fn serve(
    tcp: TcpListener,
    control: ControlSocket,
    access: Arc<Access>,
    limits: LimitsSection,
    shutdown: CancellationToken,
) {
    let door = Door {
        app: guarded_router(access),
        connections: limits.admin_connections,
        idle: Duration::from_millis(limits.admin_idle_timeout_ms),
        shutdown,
    };
    let ControlSocket { listener, file } = control;
    tokio::join!(
        door.serve("admin", &tcp, |_, peer| Caller::Tcp(peer)),
        door.serve("control socket", &listener, |io, _| Caller::unix(io)),
    );
    drop(file);
}

/// One way into the admin API.
struct Door {
    app: Router,
    connections: u32,
    idle: Duration,
    shutdown: CancellationToken,
}

impl Door {
    async fn serve<L: Accept>(
        &self,
        name: &'static str,
        listener: &L,
        caller: impl Fn(&L::Conn, L::Addr) -> Caller,
    ) where
        L::Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut gate = AcceptGate::with_cap(self.connections);
        let tasks = TaskTracker::new();
        while let Some((io, addr, slot)) = next_connection(name, listener, &mut gate, &self.shutdown).await {
            let info = ConnectInfo(caller(&io, addr));
            let app = self.app.clone();
            let service = hyper::service::service_fn(move |mut req: axum::extract::Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                tower_service::Service::call(&mut app.clone(), req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(self.idle);
            let shutdown = self.shutdown.clone();
            tasks.spawn(async move {
                let _slot = slot;
                let conn = builder.serve_connection(TokioIo::new(io), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { tracing::debug!("{name} connection ended: {e}") },
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    }
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

async fn status(State(s): State<Arc<AppState>>, Form(q): Params) -> Response {
    let view = match status_view(&q) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.status_json(&view) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// Most endpoints one `/sockmesh/status?cluster=NAME` page lists (and the default page size).
pub const STATUS_PAGE_MAX: usize = 1000;

/// `/sockmesh/status` lists a summary of the clusters' endpoints; `cluster=NAME` (with `offset=` and
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
