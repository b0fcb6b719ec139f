//! The HTTP provider (spec 4.12): a server agent answers a Motan2 request by making an HTTP/1.1
//! request to a local application and turning its HTTP response into the Motan2 response.
//!
//! Only motan-go's `proxyAddress` mode ("DoProxy") is implemented. The "URL format" mode (no
//! `proxyAddress`) and the transparent mode (meta `HTTP_PROXY=true`, requests from an hport
//! proxy) answer with exception 501 errtype 1 saying so.
//!
//! Deliberate differences from motan-go, each for a reason given where it is done:
//! - `enableRewrite` / `http-locations` are not supported: the HTTP path is always `M_m`
//!   unchanged (motan-go defaults `enableRewrite` to true and would rewrite or answer 404 when no
//!   location matches; a configured `enableRewrite: true` only logs a warning here).
//! - `keepaliveTimeout` (maximum connection age) is accepted but not enforced: the pooled client
//!   has no such knob; idle connections still close after `idleConnectionTimeout`.
//! - Form bodies escape keys as well as values (motan-go writes keys raw).
//! - Response header names are in Go's canonical form (`Content-Type`), as fasthttp reports
//!   them; hop-by-hop headers and names that look like protocol keys (`M_...`) are dropped.
//! - A response body over `maxContentLength` (default 10 MiB) is an exception 500 errtype 2
//!   (the same answer would come back on a retry, so it must not be retried).
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};
use tokio::sync::Semaphore;

use crate::config::http::{DEFAULT_MAX_CONTENT_LENGTH, HttpProviderSpec};
use crate::protocol::motan2::frame::{FLAG_PROXY, FLAG_RESPONSE, serialization};
use crate::protocol::motan2::simple::{Value, decode_all, encode_args};
use crate::protocol::motan2::{Exception, Frame, Header, Meta, keys};
use crate::url::parse_go_bool;

/// Request meta keys with a meaning for HTTP providers (spec 1.11).
pub mod meta_keys {
    /// `true`: transparent mode (two byte-array arguments), sent by an hport proxy.
    pub const HTTP_PROXY: &str = "HTTP_PROXY";
    pub const HTTP_METHOD: &str = "HTTP_Method";
    pub const HTTP_QUERY_STRING: &str = "HTTP_QueryString";
    /// Prefix of meta keys forwarded as headers with the prefix removed.
    pub const HEADER_PREFIX: &str = "http_";
    /// Caller IP, preferred over `host` for X-Forwarded-For.
    pub const REMOTE_IP: &str = "remoteIP";
    /// Response: the upstream HTTP status code.
    pub const UPSTREAM_CODE: &str = "upstreamCode";
}

/// Meta keys that are instructions to the provider, never headers (compared ignoring case, as
/// motan-go does). `host` is the caller's IP, not a Host header.
const NOT_HEADERS: [&str; 4] = [
    meta_keys::HTTP_PROXY,
    meta_keys::HTTP_METHOD,
    meta_keys::HTTP_QUERY_STRING,
    keys::HOST,
];

/// Request headers never copied from meta: the Host is chosen separately, and the
/// connection/framing headers belong to the hop the client manages (a stale `Content-Length`
/// from meta would corrupt the request).
const REQUEST_HEADERS_NOT_FORWARDED: [HeaderName; 8] = [
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Hop-by-hop response headers: meaningless once the body is inside a Motan2 frame.
const RESPONSE_HEADERS_NOT_RETURNED: [HeaderName; 3] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
];

/// Characters escaped in the path taken from `M_m` (the WHATWG path set: `?` and `#` would
/// otherwise start a query or fragment). `%` is kept, so an already escaped path stays as is.
const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Characters escaped in the raw `HTTP_QueryString` (the WHATWG query set).
const QUERY_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>');

/// Forwards Motan2 requests to one local HTTP application through a pool of HTTP/1.1
/// connections.
pub struct HttpProvider {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `proxyAddress`.
    upstream: Authority,
    /// `domain`: the Host header when the request sets none.
    domain: Option<HeaderValue>,
    default_method: Method,
    request_timeout: Duration,
    max_content_length: usize,
    enable_http_exception: bool,
    /// One permit per connection: with HTTP/1.1 each request in flight holds a connection, so
    /// this caps the connections at `maxConnections` (the pool alone only caps idle ones).
    connections: Semaphore,
}

impl HttpProvider {
    /// The provider of `service` (its path, for messages) with checked settings.
    pub fn new(service: &str, spec: &HttpProviderSpec) -> HttpProvider {
        if spec.keepalive_timeout_ignored {
            tracing::warn!(
                service,
                "keepaliveTimeout (maximum connection age) is not supported by sockmesh; connections close when idle"
            );
        }
        let max_connections = spec.max_connections.min(Semaphore::MAX_PERMITS);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.request_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(spec.idle_timeout)
            .pool_max_idle_per_host(max_connections)
            .build(connector);
        HttpProvider {
            client,
            upstream: spec.upstream.clone(),
            domain: spec.domain.clone(),
            default_method: spec.default_method.clone(),
            request_timeout: spec.request_timeout,
            max_content_length: spec.max_content_length,
            enable_http_exception: spec.enable_http_exception,
            connections: Semaphore::new(max_connections),
        }
    }

    /// Answer one Motan2 request. Never panics, never returns an error: every failure is an
    /// exception frame. The frame has the request's header request id and serialization,
    /// flags response|proxy, and `M_pt` (milliseconds since `started`).
    pub async fn call(&self, req: &Frame, started: Instant) -> Frame {
        let mut resp = match self.exchange(req).await {
            Ok((meta, body)) => Frame {
                header: Header::new(FLAG_RESPONSE | FLAG_PROXY, 0, req.header.request_id),
                meta,
                body,
            },
            Err(e) => {
                tracing::debug!(
                    rid = req.header.request_id,
                    method = req.meta.get(keys::METHOD).unwrap_or(""),
                    "HTTP provider: {e}"
                );
                Frame::exception_response(req.header.request_id, &e, 0, true)
            }
        };
        // The byte as received, so serialization bits we do not know pass through unchanged.
        resp.header.serialization_byte = req.header.serialization_byte;
        // Overwrite rather than keep: nothing upstream may claim the process time.
        resp.meta
            .insert(keys::PROCESS_TIME, started.elapsed().as_millis().to_string());
        resp
    }

    /// The response meta and body of a success, or the exception to answer with.
    async fn exchange(&self, req: &Frame) -> Result<(Meta, Bytes), Exception> {
        if req.meta.get(meta_keys::HTTP_PROXY).and_then(parse_go_bool) == Some(true) {
            return Err(Exception::service(
                501,
                "HTTP provider: transparent HTTP proxy mode (HTTP_PROXY=true) is not supported by sockmesh",
            ));
        }
        let upstream = &self.upstream;
        let http_req = self.build_request(req, upstream)?;
        let (status, headers, body) =
            match tokio::time::timeout(self.request_timeout, self.send(upstream, http_req)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Exception::business(
                        503,
                        format!(
                            "HTTP upstream {upstream} did not answer within {} ms",
                            self.request_timeout.as_millis()
                        ),
                    ));
                }
            };
        if self.enable_http_exception && status.as_u16() >= 400 {
            return Err(Exception::business(
                i64::from(status.as_u16()),
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        let mut meta = Meta::with_capacity(headers.len() + 2);
        for (name, value) in &headers {
            if RESPONSE_HEADERS_NOT_RETURNED.contains(name) {
                continue;
            }
            let key = canonical_header_key(name.as_str());
            // Keys of this shape are protocol keys (M_e, M_pt...), which a header must not fake.
            if key.starts_with("M_") {
                continue;
            }
            // Several values under one name: the last wins, as in motan-go (fasthttp VisitAll).
            meta.insert(key, Bytes::copy_from_slice(value.as_bytes()));
        }
        meta.insert(meta_keys::UPSTREAM_CODE, status.as_u16().to_string());
        Ok((meta, encode_args(&[Value::Bytes(body)])))
    }

    /// Map the Motan2 request to the HTTP request (spec 4.12 table).
    fn build_request(&self, req: &Frame, upstream: &Authority) -> Result<Request<Full<Bytes>>, Exception> {
        let number = req.header.serialization();
        if number != serialization::SIMPLE {
            return Err(Exception::service(
                500,
                format!(
                    "HTTP provider: serialization {} ({number}) is not supported, only simple (6)",
                    serialization_name(number)
                ),
            ));
        }
        let bad_request = |msg: String| Exception::business(400, format!("HTTP provider: {msg}"));
        let method = match req.meta.get_non_empty(meta_keys::HTTP_METHOD) {
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| bad_request(format!("{m:?} is not an HTTP method")))?,
            None => self.default_method.clone(),
        };
        let arg = single_argument(req).map_err(bad_request)?;

        let mut headers = request_headers(&req.meta, self.domain.as_ref());
        let mut query = req
            .meta
            .get_bytes(meta_keys::HTTP_QUERY_STRING)
            .map(|q| percent_encode(q, QUERY_ESCAPES).to_string())
            .unwrap_or_default();
        let body = match arg {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(b) | Value::Bytes(b)) => b,
            Some(Value::StringMap(entries)) => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &entries {
                    form.append_pair(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
                }
                let form = form.finish();
                if method == Method::GET {
                    if !query.is_empty() && !form.is_empty() {
                        query.push('&');
                    }
                    query.push_str(&form);
                    Bytes::new()
                } else {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-www-form-urlencoded"),
                    );
                    Bytes::from(form)
                }
            }
            Some(other) => {
                return Err(bad_request(format!(
                    "unsupported argument type {}: one map<string,string>, string or bytes argument is allowed",
                    value_type_name(&other)
                )));
            }
        };

        let method_path = req
            .meta
            .get_bytes(keys::METHOD)
            .map(Bytes::as_ref)
            .unwrap_or_default();
        let mut path_and_query = String::with_capacity(method_path.len() + query.len() + 2);
        if !method_path.starts_with(b"/") {
            path_and_query.push('/');
        }
        let _ = write!(path_and_query, "{}", percent_encode(method_path, PATH_ESCAPES));
        if !query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&query);
        }
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(upstream.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| bad_request(format!("path/query cannot form a URL: {e}")))?;

        let mut http_req = Request::new(Full::new(body));
        *http_req.method_mut() = method;
        *http_req.uri_mut() = uri;
        *http_req.headers_mut() = headers;
        Ok(http_req)
    }

    /// Send the request and read the whole response (no timeout here: the caller sets one).
    async fn send(
        &self,
        upstream: &Authority,
        http_req: Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, HeaderMap, Bytes), Exception> {
        let unreachable = |e: &dyn std::error::Error| {
            Exception::business(503, format!("HTTP upstream {}: {}", upstream, chain(e)))
        };
        // The semaphore is never closed, so acquire only fails if it were; treat as unreachable.
        let _permit = self.connections.acquire().await.map_err(|e| unreachable(&e))?;
        let resp: Response<Incoming> = self.client.request(http_req).await.map_err(|e| unreachable(&e))?;
        let (parts, body) = resp.into_parts();
        let body = match Limited::new(body, self.max_content_length).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(Exception::business(
                    500,
                    format!(
                        "HTTP upstream {}: response body larger than maxContentLength ({} bytes)",
                        upstream, self.max_content_length
                    ),
                ));
            }
            Err(e) => return Err(unreachable(e.as_ref())),
        };
        Ok((parts.status, parts.headers, body))
    }
}

/// An error and its sources, `a: b: c` (hyper's top-level messages alone say little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

/// The request's one argument (`None` for an empty body); more than one is an error.
fn single_argument(req: &Frame) -> Result<Option<Value>, String> {
    let body = if req.header.is_gzip() {
        // Normally the server gunzips on receipt (spec 1.6); this keeps the provider correct
        // if it is handed a compressed frame anyway.
        let mut plain = req.clone();
        plain
            .gunzip(DEFAULT_MAX_CONTENT_LENGTH)
            .map_err(|e| format!("request body: {e}"))?;
        plain.body
    } else {
        req.body.clone()
    };
    let mut args = decode_all(&body).map_err(|e| format!("request body is not simple-serialized: {e}"))?;
    if args.len() > 1 {
        return Err(format!("{} arguments, at most one is allowed", args.len()));
    }
    Ok(args.pop())
}

/// Request headers from meta (spec 4.12): `M_x` → `MOTAN-x`, `http_X` → `X`, any other key as
/// is; Host from `http_Host`/`http_host`, else `domain`; X-Forwarded-For kept when present,
/// else `remoteIP`, else `host`. Keys or values that are not valid in HTTP are left out.
fn request_headers(meta: &Meta, domain: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(meta.len() + 2);
    for (key, value) in meta.iter() {
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        if NOT_HEADERS.iter().any(|k| key.eq_ignore_ascii_case(k)) {
            continue;
        }
        let name: Cow<'_, str> = if let Some(rest) = key.strip_prefix("M_") {
            Cow::Owned(format!("MOTAN-{rest}"))
        } else {
            Cow::Borrowed(key.strip_prefix(meta_keys::HEADER_PREFIX).unwrap_or(key))
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) else {
            tracing::debug!(key, "meta entry is not a valid HTTP header; not forwarded");
            continue;
        };
        if !REQUEST_HEADERS_NOT_FORWARDED.contains(&name) {
            headers.append(name, value);
        }
    }
    let host = ["http_Host", "http_host"]
        .iter()
        .find_map(|k| meta.get_bytes(k).filter(|v| !v.is_empty()))
        .and_then(|v| HeaderValue::from_maybe_shared(v.clone()).ok())
        .or_else(|| domain.cloned());
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    if !headers.contains_key(X_FORWARDED_FOR) {
        let client_ip = meta
            .get_bytes(meta_keys::REMOTE_IP)
            .filter(|v| !v.is_empty())
            .or_else(|| meta.get_bytes(keys::HOST).filter(|v| !v.is_empty()))
            .and_then(|v| HeaderValue::from_maybe_shared(v.clone()).ok());
        if let Some(ip) = client_ip {
            headers.insert(X_FORWARDED_FOR, ip);
        }
    }
    headers
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Go's canonical header key (textproto.CanonicalMIMEHeaderKey) for a valid lower-case name:
/// the first letter and every letter after `-` upper case.
fn canonical_header_key(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c };
            upper = c == '-';
            out
        })
        .collect()
}

/// Name of a serialization number (spec 1.2), for error messages.
fn serialization_name(number: u8) -> &'static str {
    match number {
        serialization::HESSIAN2 => "hessian2",
        serialization::GRPC_PB => "grpc-pb",
        serialization::JSON => "json",
        serialization::MSGPACK => "msgpack",
        serialization::HPROSE => "hprose",
        serialization::PROTOBUF => "protobuf",
        serialization::SIMPLE => "simple",
        serialization::GRPC_PB_JSON => "grpc-pb-json",
        serialization::BREEZE => "breeze",
        _ => "unknown",
    }
}

/// Name of a simple value's type, for error messages.
fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::String(_) => "string",
        Value::StringMap(_) => "map<string,string>",
        Value::Bytes(_) => "bytes",
        Value::StringArray(_) => "array<string>",
        Value::Bool(_) => "bool",
        Value::Byte(_) => "byte",
        Value::I16(_) => "int16",
        Value::I32(_) => "int32",
        Value::I64(_) => "int64",
        Value::F32(_) => "float32",
        Value::F64(_) => "float64",
        Value::Map(_) => "map",
        Value::Array(_) => "array",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{ConnectInfo, Request as AxumRequest};
    use axum::http::StatusCode;
    use axum::routing::any;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::protocol::motan2::ErrorType;
    use crate::url::Url;

    fn provider(service: &Url) -> HttpProvider {
        HttpProvider::new(
            &service.path,
            &HttpProviderSpec::from_url(service, false).unwrap(),
        )
    }
    use crate::protocol::motan2::frame::FLAG_GZIP;

    /// Echo of what the upstream received: method, path, query, headers (name → values), body.
    async fn echo(req: AxumRequest) -> axum::Json<Json> {
        let (parts, body) = req.into_parts();
        let mut headers = serde_json::Map::new();
        for (name, value) in &parts.headers {
            let entry = headers.entry(name.as_str()).or_insert_with(|| json!([]));
            entry
                .as_array_mut()
                .unwrap()
                .push(json!(String::from_utf8_lossy(value.as_bytes())));
        }
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        axum::Json(json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }))
    }

    /// A test HTTP application on 127.0.0.1, port chosen by the kernel.
    async fn upstream() -> SocketAddr {
        let app = Router::new()
            .route(
                "/missing",
                any(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        [("x-reason", "no such user")],
                        "user 7 not found",
                    )
                }),
            )
            .route(
                "/slow",
                any(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/raw",
                any(|req: AxumRequest| async move {
                    let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
                    ([("content-type", "application/octet-stream")], Body::from(body))
                }),
            )
            .route("/big", any(|| async { vec![b'x'; 4096] }))
            .route(
                "/peer",
                any(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    peer.port().to_string()
                }),
            )
            .fallback(echo);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn service(addr: SocketAddr) -> Url {
        Url::new("motan2", "127.0.0.1", 9982, "api.hello.com", "g")
            .with_param("proxyAddress", &addr.to_string())
            .with_param("domain", "api.hello.com")
    }

    fn request(path: &str, args: &[Value], meta: &[(&str, &str)]) -> Frame {
        let mut f = Frame::request(0x0102_0304_0506_0708, "api.hello.com", path, encode_args(args));
        f.header.flags |= FLAG_PROXY;
        for (k, v) in meta {
            f.meta.insert(k.to_string(), v.to_string());
        }
        f
    }

    fn string_map(entries: &[(&str, &str)]) -> Value {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into()
    }

    async fn call(service: &Url, req: &Frame) -> Frame {
        provider(service).call(req, Instant::now()).await
    }

    /// A success: checks the header and `M_pt`, returns the body bytes.
    fn success_body(req: &Frame, resp: &Frame) -> Bytes {
        assert!(
            !resp.is_exception(),
            "unexpected exception {:?}",
            resp.meta.get(keys::EXCEPTION)
        );
        assert_eq!(resp.header.flags, FLAG_RESPONSE | FLAG_PROXY);
        assert_eq!(resp.header.request_id, req.header.request_id);
        assert_eq!(resp.header.serialization_byte, req.header.serialization_byte);
        assert!(resp.meta.get(keys::PROCESS_TIME).unwrap().parse::<u64>().is_ok());
        // The body is one simple byte array (tag 03).
        assert_eq!(resp.body.first(), Some(&0x03));
        match decode_all(&resp.body).unwrap().as_slice() {
            [Value::Bytes(b)] => b.clone(),
            other => panic!("body is not one byte array: {other:?}"),
        }
    }

    fn echoed(req: &Frame, resp: &Frame) -> Json {
        serde_json::from_slice(&success_body(req, resp)).unwrap()
    }

    fn exception(req: &Frame, resp: &Frame) -> Exception {
        assert!(resp.is_exception());
        assert_eq!(resp.header.flags, FLAG_RESPONSE | FLAG_PROXY);
        assert_eq!(resp.header.request_id, req.header.request_id);
        assert_eq!(resp.header.serialization_byte, req.header.serialization_byte);
        assert!(resp.body.is_empty());
        assert!(resp.meta.get(keys::PROCESS_TIME).unwrap().parse::<u64>().is_ok());
        resp.as_response().unwrap().exception().unwrap()
    }

    #[tokio::test]
    async fn get_with_map_argument_sends_query_args() {
        let addr = upstream().await;
        let req = request(
            "/v1/users",
            &[string_map(&[("id", "7"), ("name", "a b&c")])],
            &[("HTTP_QueryString", "x=1")],
        );
        let resp = call(&service(addr), &req).await;
        let e = echoed(&req, &resp);
        assert_eq!(e["method"], "GET");
        assert_eq!(e["path"], "/v1/users");
        assert_eq!(e["query"], "x=1&id=7&name=a+b%26c");
        assert_eq!(e["body"], "");
        assert_eq!(resp.meta.get("upstreamCode"), Some("200"));
        assert_eq!(resp.meta.get("Content-Type"), Some("application/json"));
    }

    #[tokio::test]
    async fn post_with_map_argument_sends_a_form() {
        let addr = upstream().await;
        let req = request(
            "/v1/users",
            &[string_map(&[("id", "7"), ("note", "x=y z")])],
            &[("HTTP_Method", "POST"), ("Content-Type", "text/plain")],
        );
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["method"], "POST");
        assert_eq!(e["query"], Json::Null);
        assert_eq!(e["body"], "id=7&note=x%3Dy+z");
        assert_eq!(
            e["headers"]["content-type"],
            json!(["application/x-www-form-urlencoded"])
        );
        assert_eq!(e["headers"]["content-length"], json!(["17"]));
    }

    #[tokio::test]
    async fn default_method_comes_from_the_service_url() {
        let addr = upstream().await;
        let svc = service(addr).with_param("HTTP_REQUEST_METHOD", "PUT");
        let req = request("/v1/users", &["payload".into()], &[]);
        let e = echoed(&req, &call(&svc, &req).await);
        assert_eq!(e["method"], "PUT");
        assert_eq!(e["body"], "payload");
        // Meta wins over the service default.
        let req = request("/v1/users", &[], &[("HTTP_Method", "DELETE")]);
        let e = echoed(&req, &call(&svc, &req).await);
        assert_eq!(e["method"], "DELETE");
        assert_eq!(e["body"], "");
    }

    #[tokio::test]
    async fn string_argument_is_the_raw_body() {
        let addr = upstream().await;
        let req = request(
            "/v1/echo",
            &[r#"{"user":"ä & b"}"#.into()],
            &[("HTTP_Method", "POST"), ("content-type", "application/json")],
        );
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["body"], r#"{"user":"ä & b"}"#);
        assert_eq!(e["headers"]["content-type"], json!(["application/json"]));
    }

    #[tokio::test]
    async fn bytes_argument_is_the_raw_body_and_bytes_come_back() {
        let addr = upstream().await;
        let raw: Vec<u8> = vec![0x00, 0xFF, 0xFE, b'\n', 0x80, b'z'];
        let req = request("/raw", &[raw.clone().into()], &[("HTTP_Method", "POST")]);
        let resp = call(&service(addr), &req).await;
        assert_eq!(success_body(&req, &resp).as_ref(), raw.as_slice());
        assert_eq!(resp.meta.get("Content-Type"), Some("application/octet-stream"));
        assert_eq!(resp.meta.get("Content-Length"), Some("6"));
        assert_eq!(resp.meta.get("upstreamCode"), Some("200"));
    }

    #[tokio::test]
    async fn meta_maps_to_headers_and_host() {
        let addr = upstream().await;
        let req = request(
            "/v1/headers",
            &[],
            &[
                ("M_g", "g1"),
                ("M_s", "caller-app"),
                ("M_rid", "-42"),
                ("http_X-Trace", "t-1"),
                ("http_Host", "www.example.test"),
                ("custom", "kept"),
                ("host", "10.1.1.1"),
                ("HTTP_QueryString", "q=1"),
                ("HTTP_PROXY", "false"),
                ("Connection", "close"),
                ("http_Content-Length", "999"),
                ("bad key", "dropped"),
                ("ok", "bad\rvalue"),
            ],
        );
        let e = echoed(&req, &call(&service(addr), &req).await);
        let h = &e["headers"];
        assert_eq!(h["motan-p"], json!(["api.hello.com"]));
        assert_eq!(h["motan-m"], json!(["/v1/headers"]));
        assert_eq!(h["motan-g"], json!(["g1"]));
        assert_eq!(h["motan-s"], json!(["caller-app"]));
        assert_eq!(h["motan-rid"], json!(["-42"]));
        assert_eq!(h["x-trace"], json!(["t-1"]));
        assert_eq!(h["custom"], json!(["kept"]));
        assert_eq!(h["host"], json!(["www.example.test"]));
        // `host` is the caller IP: X-Forwarded-For, never Host.
        assert_eq!(h["x-forwarded-for"], json!(["10.1.1.1"]));
        assert_eq!(h["content-length"], Json::Null);
        assert_eq!(e["query"], "q=1");
        for absent in [
            "http_proxy",
            "http_querystring",
            "http_x-trace",
            "m_g",
            "bad key",
            "ok",
        ] {
            assert_eq!(h[absent], Json::Null, "{absent} was forwarded");
        }
        assert_eq!(h["connection"], Json::Null);

        // Without http_Host the domain is the Host.
        let req = request("/v1/headers", &[], &[("http_host", "")]);
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["headers"]["host"], json!(["api.hello.com"]));
        let req = request("/v1/headers", &[], &[("http_host", "lower.test")]);
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["headers"]["host"], json!(["lower.test"]));
    }

    #[tokio::test]
    async fn x_forwarded_for_precedence() {
        let addr = upstream().await;
        let svc = service(addr);
        let xff = |meta: &'static [(&'static str, &'static str)]| {
            let svc = svc.clone();
            async move {
                let req = request("/v1/xff", &[], meta);
                echoed(&req, &call(&svc, &req).await)["headers"]["x-forwarded-for"].clone()
            }
        };
        let all = &[
            ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("remoteIP", "3.3.3.3"),
            ("host", "4.4.4.4"),
        ];
        assert_eq!(xff(all).await, json!(["1.1.1.1, 2.2.2.2"]));
        assert_eq!(
            xff(&[("x-forwarded-for", "5.5.5.5"), ("host", "4.4.4.4")]).await,
            json!(["5.5.5.5"])
        );
        assert_eq!(
            xff(&[("remoteIP", "3.3.3.3"), ("host", "4.4.4.4")]).await,
            json!(["3.3.3.3"])
        );
        assert_eq!(xff(&[("host", "4.4.4.4")]).await, json!(["4.4.4.4"]));
        assert_eq!(xff(&[]).await, Json::Null);
    }

    #[tokio::test]
    async fn status_404_is_a_success_with_upstream_code() {
        let addr = upstream().await;
        let req = request("/missing", &[], &[]);
        let resp = call(&service(addr), &req).await;
        assert_eq!(success_body(&req, &resp).as_ref(), b"user 7 not found");
        assert_eq!(resp.meta.get("upstreamCode"), Some("404"));
        assert_eq!(resp.meta.get("X-Reason"), Some("no such user"));
    }

    #[tokio::test]
    async fn status_404_is_an_exception_with_enable_http_exception() {
        let addr = upstream().await;
        let svc = service(addr).with_param("enableHttpException", "true");
        let req = request("/missing", &[], &[]);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!(e, Exception::new(404, "user 7 not found", ErrorType::Business));
        // A 200 is still a success.
        let req = request("/ok", &[], &[]);
        assert_eq!(echoed(&req, &call(&svc, &req).await)["path"], "/ok");
    }

    /// The client port the upstream saw for one call to `/peer`.
    async fn peer_port(provider: &HttpProvider) -> String {
        let req = request("/peer", &[], &[]);
        let resp = provider.call(&req, Instant::now()).await;
        String::from_utf8(success_body(&req, &resp).to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_are_pooled_and_capped_at_max_connections() {
        let addr = upstream().await;
        // One after the other: the idle connection is reused.
        let pooled = provider(&service(addr));
        let first = peer_port(&pooled).await;
        assert_eq!(peer_port(&pooled).await, first);
        // At the same time: two connections, unless maxConnections is 1.
        let (a, b) = tokio::join!(peer_port(&pooled), peer_port(&pooled));
        assert_ne!(a, b);
        let capped = provider(&service(addr).with_param("maxConnections", "1"));
        let started = Instant::now();
        let (a, b) = tokio::join!(peer_port(&capped), peer_port(&capped));
        assert_eq!(a, b);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "calls were not serialised"
        );
    }

    #[tokio::test]
    async fn unreachable_upstream_is_503_business() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let req = request("/v1/users", &[], &[]);
        let e = exception(&req, &call(&service(port), &req).await);
        assert_eq!((e.errcode, e.errtype), (503, ErrorType::Business));
        assert!(e.errmsg.contains(&port.to_string()), "{}", e.errmsg);
    }

    #[tokio::test]
    async fn timeout_is_503_business() {
        let addr = upstream().await;
        let svc = service(addr).with_param("requestTimeout", "200");
        let req = request("/slow", &[], &[]);
        let started = Instant::now();
        let resp = provider(&svc).call(&req, started).await;
        let took = started.elapsed();
        let e = exception(&req, &resp);
        assert_eq!((e.errcode, e.errtype), (503, ErrorType::Business));
        assert!(e.errmsg.contains("200 ms"), "{}", e.errmsg);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let pt: u64 = resp.meta.get(keys::PROCESS_TIME).unwrap().parse().unwrap();
        assert!(pt >= 200, "M_pt {pt}");
    }

    #[tokio::test]
    async fn bad_arguments_are_400_business() {
        let addr = upstream().await;
        let svc = service(addr);
        for args in [
            vec![Value::I32(7)],
            vec![Value::StringArray(vec![Bytes::from("a")])],
            vec![Value::from("a"), Value::from("b")],
        ] {
            let req = request("/v1/users", &args, &[]);
            let e = exception(&req, &call(&svc, &req).await);
            assert_eq!(
                (e.errcode, e.errtype),
                (400, ErrorType::Business),
                "{args:?}: {}",
                e.errmsg
            );
        }
        let mut req = request("/v1/users", &[], &[]);
        req.body = Bytes::from_static(&[0x01, 0, 0, 0, 9, b'x']);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business));
        let req = request("/v1/users", &[], &[("HTTP_Method", "G E T")]);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business));
        assert!(e.errmsg.contains("G E T"), "{}", e.errmsg);
    }

    #[tokio::test]
    async fn null_argument_is_an_empty_body() {
        let addr = upstream().await;
        let req = request("/v1/users", &[Value::Null], &[("HTTP_Method", "POST")]);
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["body"], "");
    }

    #[tokio::test]
    async fn non_simple_serialization_is_500_service() {
        let addr = upstream().await;
        let mut req = request("/v1/users", &[], &[]);
        req.header.set_serialization(serialization::HESSIAN2);
        req.body = Bytes::from_static(b"\x53\x00\x01x");
        let e = exception(&req, &call(&service(addr), &req).await);
        assert_eq!((e.errcode, e.errtype), (500, ErrorType::Service));
        assert!(e.errmsg.contains("hessian2"), "{}", e.errmsg);
    }

    #[tokio::test]
    async fn response_over_max_content_length_is_500() {
        let addr = upstream().await;
        let svc = service(addr).with_param("maxContentLength", "1000");
        let req = request("/big", &[], &[]);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (500, ErrorType::Business));
        assert!(e.errmsg.contains("maxContentLength"), "{}", e.errmsg);
        let req = request("/big", &[], &[]);
        assert_eq!(success_body(&req, &call(&service(addr), &req).await).len(), 4096);
    }

    #[tokio::test]
    async fn path_is_escaped_and_gzip_bodies_are_read() {
        let addr = upstream().await;
        let mut req = request("v1/a b?c", &["zipped".into()], &[("HTTP_Method", "POST")]);
        assert!(req.gzip_if_larger(1));
        assert_ne!(req.header.flags & FLAG_GZIP, 0);
        let e = echoed(&req, &call(&service(addr), &req).await);
        assert_eq!(e["path"], "/v1/a%20b%3Fc");
        assert_eq!(e["query"], Json::Null);
        assert_eq!(e["body"], "zipped");
    }

    #[tokio::test]
    async fn unsupported_modes_are_501() {
        let addr = upstream().await;
        let req = request("/v1/users", &[], &[("HTTP_PROXY", "true")]);
        let e = exception(&req, &call(&service(addr), &req).await);
        assert_eq!((e.errcode, e.errtype), (501, ErrorType::Service));
        assert!(e.errmsg.contains("not supported by sockmesh"), "{}", e.errmsg);
    }

    #[test]
    fn provider_is_shareable_and_call_is_spawnable() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let provider = provider(&service("127.0.0.1:1".parse().unwrap()));
        send_sync(&provider);
        let req = request("/", &[], &[]);
        send(&provider.call(&req, Instant::now()));
    }

    #[test]
    fn canonical_header_keys() {
        assert_eq!(canonical_header_key("content-type"), "Content-Type");
        assert_eq!(canonical_header_key("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(canonical_header_key("etag"), "Etag");
        assert_eq!(canonical_header_key("m_pt"), "M_pt");
    }
}
