//! Admin-route parameters as Go's `Request.FormValue` reads them (motan-go's manageHandler.go
//! calls `r.FormValue` on every route): the query string and, for a POST/PUT/PATCH with
//! `Content-Type: application/x-www-form-urlencoded`, the body too. The body wins over the
//! query, and of a repeated name the first value counts, as in Go (`ParseForm` puts the body's
//! values before the query's). Multipart bodies are not read.
use std::collections::HashMap;

use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Largest form body read (Go's `ParseForm` reads up to 10 MB; these forms are a few names).
pub const MAX_FORM_BODY: usize = 64 * 1024;

/// The parameters of one admin request, query and form body merged.
#[derive(Debug, Default, Clone)]
pub struct Form(pub HashMap<String, String>);

/// A form body that could not be read: a 400 or 413 whose JSON `error` says why.
pub struct FormRejection(StatusCode, String);

impl IntoResponse for FormRejection {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl Form {
    /// The urlencoded pairs of `body`, then those of `query`, the first value of a name counting
    /// (Go's `ParseForm` order). For a handler that has read the body itself.
    pub fn from_parts(body: &[u8], query: &str) -> Form {
        let mut out = HashMap::new();
        for (k, v) in form_urlencoded::parse(body).chain(form_urlencoded::parse(query.as_bytes())) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(out)
    }
}

fn is_form(req: &Request) -> bool {
    let body_method = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    body_method && mime.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = FormRejection;

    async fn from_request(req: Request, _state: &S) -> Result<Form, FormRejection> {
        let query = req.uri().query().unwrap_or("").to_string();
        let body = if is_form(&req) {
            axum::body::to_bytes(req.into_body(), MAX_FORM_BODY)
                .await
                .map_err(|e| {
                    FormRejection(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("form body unreadable or over {MAX_FORM_BODY} bytes: {e}"),
                    )
                })?
        } else {
            Default::default()
        };
        Ok(Form::from_parts(&body, &query))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    async fn form(method: &str, uri: &str, ctype: Option<&str>, body: &str) -> HashMap<String, String> {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if let Some(c) = ctype {
            b = b.header(header::CONTENT_TYPE, c);
        }
        let req = b.body(Body::from(body.to_string())).unwrap();
        match Form::from_request(req, &()).await {
            Ok(Form(f)) => f,
            Err(FormRejection(s, m)) => panic!("{s} {m}"),
        }
    }

    #[tokio::test]
    async fn body_before_query_first_value_wins() {
        let ct = Some("application/x-www-form-urlencoded; charset=utf-8");
        let f = form(
            "POST",
            "/x?level=info&keys=a",
            ct,
            "level=debug&level=trace&n=a%20b+c",
        )
        .await;
        assert_eq!(f["level"], "debug");
        assert_eq!(f["keys"], "a");
        assert_eq!(f["n"], "a b c");
        // A GET's body, or a body of another type, is not read.
        let f = form("GET", "/x?level=info", ct, "level=debug").await;
        assert_eq!(f["level"], "info");
        let f = form("POST", "/x", Some("application/json"), "level=debug").await;
        assert!(f.is_empty());
        let f = form("POST", "/x?a=1&a=2", None, "").await;
        assert_eq!(f["a"], "1");
    }

    #[tokio::test]
    async fn oversized_body_is_refused() {
        let big = "a=".to_string() + &"x".repeat(MAX_FORM_BODY + 1);
        let req = axum::http::Request::post("/x")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(big))
            .unwrap();
        let Err(FormRejection(s, _)) = Form::from_request(req, &()).await else {
            panic!("accepted")
        };
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
