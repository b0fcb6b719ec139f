//! motan-go's dynamic meta routes (manageHandler.go `MetaInfo`), with its paths, parameters and
//! answers (`{"result":"ok","data":...}`): `POST /meta/update` sets every form field as a meta
//! key (`META_WEIGHT=9&a=b`), `POST /meta/delete` removes `key` (both mutations: the control
//! socket, or the TCP port when `sockmesh.admin.tcp_mutations` lists them), `/meta/get?key=K`
//! answers `{"K":"value"}` (`""` when unset), `/meta/getAll` answers `{"meta":{...}}`.
//! Parameters are read as Go's `FormValue` (query and form body). Unlike motan-go, an update
//! without fields and a delete without `key` are 400s instead of silent no-ops.
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};

use super::form::Form;
use crate::meta;

pub fn routes() -> Router {
    Router::new()
        .route("/meta/update", post(update))
        .route("/meta/delete", post(delete))
        .route("/meta/get", any(get))
        .route("/meta/getAll", any(get_all))
}

/// motan-go's `JSONSuccess`.
fn success(data: Value) -> Response {
    axum::Json(json!({ "result": "ok", "data": data })).into_response()
}

/// motan-go's `JSONError`, with a 400.
fn fail(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "result": "fail", "error": msg })),
    )
        .into_response()
}

async fn update(Form(q): Form) -> Response {
    if q.is_empty() {
        return fail("give the meta as form fields, e.g. META_WEIGHT=9");
    }
    let keys: Vec<String> = q.keys().cloned().collect();
    meta::put_all(q);
    tracing::info!(?keys, "dynamic meta updated");
    success(json!("ok"))
}

async fn delete(Form(q): Form) -> Response {
    let Some(key) = q.get("key").filter(|k| !k.is_empty()) else {
        return fail("missing parameter key");
    };
    meta::remove(key);
    tracing::info!(key, "dynamic meta deleted");
    success(json!("ok"))
}

async fn get(Form(q): Form) -> Response {
    let key = q.get("key").cloned().unwrap_or_default();
    let value = meta::get(&key).unwrap_or_default();
    success(json!({ key: value }))
}

async fn get_all() -> Response {
    success(json!({ "meta": meta::all() }))
}
