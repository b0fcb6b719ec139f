//! HTTP from apps (spec 4.13): the hport forward proxy and intercepted HTTP connections.
//!
//! Each request is served the way motan-go's HTTPProxyServer serves it:
//! - `/proxy_to_rpc` (hport only; form fields `service`, `method`, `group`,
//!   `arg_type=string`, `arg`): a Motan2 call through the client role; the answer's value is
//!   the body.
//! - `CONNECT host:port` (hport only): a tunnel.
//! - a Host that an `http-client` entry serves (hport: else `httpProxyDefaultDomain`), on a path
//!   a location of the domain maps to a service whose cluster has endpoints: the whole request
//!   goes over Motan2 in transparent mode (meta `HTTP_PROXY=true`, the raw header block and the
//!   body as two byte arrays) and the answer's header block and body are the response. A
//!   cluster that answers "no endpoints" (1001) falls back to plain HTTP.
//! - anything else is plain HTTP: hport to the request's host (never to the proxy itself), an
//!   intercepted connection to its original destination.
//!
//! Every request is bounded: the head by `MAX_HEAD`, the body by `httpProxyMaxRequestBodySize`
//! (413), the whole exchange by `httpProxyTimeout` (504), an idle client connection by
//! `httpProxyKeepaliveTimeout`; each failure is an HTTP error with a one-line body saying why.
//! Upstream sockets come from the socket factory.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::Budget;
use super::http_route::HttpRouter;
use super::mesh::MeshHandle;
use super::read_hook::{Hooked, ReadHook};
use super::serve::{AcceptGate, next_connection};
use crate::config::http_client::{HttpProxySpec, MAX_RESPONSE_BODY};
use crate::net::SocketFactory;
use crate::protocol::http::{parse_response_head, write_request_head};
use crate::protocol::motan2::call::{E_NO_ENDPOINTS, mark_proxied};
use crate::protocol::motan2::simple::{Value, ValueLimits, decode_first, encode_args};
use crate::protocol::motan2::{Frame, keys};
use crate::provider::http::mapping::{canonical_header_key, meta_keys};
use crate::upstream::http::{HttpClient, HttpClientSettings, HttpError, HttpTarget};

/// Plain HTTP requests in flight at once through one client (hport's, or an intercepted
/// connection's).
const PLAIN_CONNECTIONS: usize = 1024;
/// Largest request head (request line and headers) a client may send.
pub const MAX_HEAD: usize = 64 << 10;
const PROXY_TO_RPC: &str = "/proxy_to_rpc";

/// Hop-by-hop headers (RFC 9110 7.6.1 and the proxy ones): never forwarded.
const HOP_HEADERS: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

type Reply = Response<Full<Bytes>>;

/// An HTTP error with a one-line explanation.
fn error(status: StatusCode, msg: impl std::fmt::Display) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn without_hop_headers(headers: &mut HeaderMap) {
    for h in &HOP_HEADERS {
        headers.remove(h);
    }
}

/// One connection's context.
struct Session {
    mesh: MeshHandle,
    spec: HttpProxySpec,
    peer_ip: Bytes,
    /// Plain HTTP: by the request's host (hport) or to the original destination (intercepted).
    plain: Arc<HttpClient>,
    sockets: SocketFactory,
    /// hport's own addresses (`host:port`), refused as plain destinations.
    deny: Vec<String>,
    /// hport: apply `httpProxyDefaultDomain`, allow CONNECT.
    forward_proxy: bool,
    /// `sockmesh.limits`: each request counts against the agent's requests in flight; one
    /// beyond it (or arriving while the agent is over its bytes) is answered 503.
    budget: Arc<Budget>,
}

/// The plain HTTP client of hport (shared by its connections) or of one intercepted
/// connection (`target` its original destination).
fn plain_client(spec: &HttpProxySpec, sockets: &SocketFactory, target: HttpTarget) -> Arc<HttpClient> {
    Arc::new(HttpClient::new(
        sockets.clone(),
        HttpClientSettings {
            target,
            timeout: spec.timeout,
            idle_timeout: spec.keepalive_timeout,
            max_connections: PLAIN_CONNECTIONS,
            max_body: MAX_RESPONSE_BODY,
        },
    ))
}

impl Session {
    fn new(
        mesh: MeshHandle,
        peer: SocketAddr,
        sockets: SocketFactory,
        plain: Arc<HttpClient>,
        hport: Option<u16>,
        budget: Arc<Budget>,
    ) -> Session {
        let spec = mesh.load().http.proxy.clone();
        Session {
            mesh,
            peer_ip: Bytes::from(peer.ip().to_string()),
            plain,
            sockets,
            deny: hport
                .map(|p| vec![format!("127.0.0.1:{p}"), format!("localhost:{p}")])
                .unwrap_or_default(),
            forward_proxy: hport.is_some(),
            spec,
            budget,
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Reply, Infallible> {
        let Some(_lease) = self.budget.admit(0) else {
            return Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "sockmesh: agent overloaded (sockmesh.limits)",
            ));
        };
        if req.method() == Method::CONNECT {
            return Ok(self.connect(req).await);
        }
        let timeout = self.spec.timeout;
        Ok(tokio::time::timeout(timeout, self.dispatch(req))
            .await
            .unwrap_or_else(|_| {
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "sockmesh: no answer within httpProxyTimeout ({} ms)",
                        timeout.as_millis()
                    ),
                )
            }))
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let max = self.spec.max_request_body;
        let body = match Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("sockmesh: request body larger than httpProxyMaxRequestBodySize ({max} bytes)"),
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("sockmesh: reading the request body: {e}"),
                );
            }
        };
        // Only the proxy's own endpoint: an intercepted app that asks a server for this path
        // means that server.
        if self.forward_proxy && parts.uri.path() == PROXY_TO_RPC {
            return self.proxy_to_rpc(&parts, &body).await;
        }
        if parts.uri.scheme().is_some_and(|s| s != &Scheme::HTTP) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "sockmesh: only http:// URLs are proxied (use CONNECT for {})",
                    parts.uri
                ),
            );
        }
        let Some(authority) = request_authority(&parts) else {
            return error(
                StatusCode::BAD_REQUEST,
                "sockmesh: the request names no host (Host header)",
            );
        };
        let mesh = self.mesh.load_full();
        let mut host_header = None;
        let mut domain = mesh.http.domain(authority.host());
        if domain.is_none()
            && self.forward_proxy
            && let Some(d) = &self.spec.default_domain
        {
            domain = mesh.http.domain(d);
            host_header = HeaderValue::from_str(d).ok();
        }
        let mut headers = parts.headers.clone();
        if let Some(h) = host_header {
            headers.insert(header::HOST, h);
        } else if !headers.contains_key(header::HOST)
            && let Ok(h) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, h);
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some((service, refer)) = domain.and_then(|d| d.route(parts.uri.path())) {
            let head = {
                let mut h = headers.clone();
                without_hop_headers(&mut h);
                write_request_head(&parts.method, path_and_query, &h)
            };
            let args = encode_args(&[Value::Bytes(Bytes::from(head)), Value::Bytes(body.clone())]);
            let mut req = Frame::request(next_id(), service, parts.uri.path(), args);
            req.meta.insert(meta_keys::HTTP_PROXY, "true");
            mark_proxied(&mut req, &self.peer_ip);
            let resp = refer.call(req).await;
            match transparent_reply(&resp, self.budget.limits.values()) {
                Ok(reply) => return reply,
                Err(Fallback::NoEndpoints) => {
                    tracing::debug!(
                        service,
                        "http-client cluster has no endpoints; plain HTTP instead"
                    );
                }
                Err(Fallback::Failed(msg)) => {
                    return error(StatusCode::BAD_GATEWAY, format!("err_msg: {msg}"));
                }
            }
        }
        self.plain(parts.method, &authority, path_and_query, headers, body)
            .await
    }

    /// Plain HTTP to the request's host (hport) or the original destination (intercepted).
    async fn plain(
        &self,
        method: Method,
        authority: &Authority,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Reply {
        let host_port = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        if self.deny.contains(&host_port) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "sockmesh: {host_port} is this proxy; name the destination in the Host header or the URL"
                ),
            );
        }
        let uri: Uri = match format!("http://{authority}{path_and_query}").parse() {
            Ok(u) => u,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("sockmesh: bad request target: {e}"),
                );
            }
        };
        without_hop_headers(&mut headers);
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        match self.plain.send(req).await {
            Ok(r) => {
                let mut headers = r.headers;
                without_hop_headers(&mut headers);
                let mut resp = Response::new(Full::new(r.body));
                *resp.status_mut() = r.status;
                *resp.headers_mut() = headers;
                resp
            }
            Err(HttpError::Timeout(t)) => error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("sockmesh: {host_port} did not answer within {} ms", t.as_millis()),
            ),
            Err(e) => error(StatusCode::BAD_GATEWAY, format!("sockmesh: {host_port}: {e}")),
        }
    }

    /// motan-go's `/proxy_to_rpc`: a Motan2 call with one string argument through the client
    /// role; the answer's value is the body.
    async fn proxy_to_rpc(&self, parts: &http::request::Parts, body: &Bytes) -> Reply {
        let mut form: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/x-www-form-urlencoded"))
        {
            form.extend(form_urlencoded::parse(body).into_owned());
        }
        let field = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let (service, method) = (field("service"), field("method"));
        if service.is_empty() || method.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("service:{service} or method:{method} musn't be empty"),
            );
        }
        if field("arg_type") != "string" {
            return error(
                StatusCode::BAD_REQUEST,
                format!("arg_type {} not support now", field("arg_type")),
            );
        }
        let mut req = Frame::request(
            next_id(),
            service,
            method,
            encode_args(&[Value::from(field("arg"))]),
        );
        for (name, value) in &parts.headers {
            if value.is_empty() || name == header::HOST {
                continue;
            }
            req.meta.insert(
                canonical_header_key(name.as_str()),
                Bytes::copy_from_slice(value.as_bytes()),
            );
        }
        req.meta.insert(keys::GROUP, field("group").to_string());
        req.meta.insert(keys::PROXY_PROTOCOL, "motan2");
        let resp = self.mesh.load_full().router.handle(req, &self.peer_ip).await;
        if let Some(e) = resp.as_response().and_then(|r| r.exception()) {
            return error(StatusCode::BAD_GATEWAY, e.errmsg);
        }
        let body = match response_values(&resp, self.budget.limits.values()).as_deref() {
            Ok([Value::String(b) | Value::Bytes(b)]) => b.clone(),
            Ok(other) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("get response body failed: the value is not a string or bytes: {other:?}"),
                );
            }
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("get response body failed: {e}")),
        };
        let mut r = Response::new(Full::new(body));
        for (k, v) in resp.meta.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(k),
                HeaderValue::from_maybe_shared(v.clone()),
            ) {
                r.headers_mut().insert(n, v);
            }
        }
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }

    /// `CONNECT host:port`: a tunnel (hport only; an intercepted connection already has its
    /// destination).
    async fn connect(&self, req: Request<Incoming>) -> Reply {
        if !self.forward_proxy {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "sockmesh: CONNECT only through the forward proxy",
            );
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return error(StatusCode::BAD_REQUEST, "sockmesh: CONNECT needs host:port");
        };
        let port = authority.port_u16().unwrap_or(443);
        let addr = match tokio::net::lookup_host((authority.host(), port))
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            _ => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("sockmesh: cannot resolve {authority}"),
                );
            }
        };
        let mut upstream = match self.sockets.connect_within(addr, self.spec.timeout).await {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("sockmesh: {e:#}")),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
            }
        });
        Response::new(Full::new(Bytes::new()))
    }
}

fn next_id() -> u64 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
}

/// The host of a request: an absolute URI's authority, else the Host header.
fn request_authority(parts: &http::request::Parts) -> Option<Authority> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.clone());
    }
    parts.headers.get(header::HOST)?.to_str().ok()?.parse().ok()
}

/// The value of a Motan2 answer (one at most), decoded within `sockmesh.limits`.
fn response_values(resp: &Frame, limits: ValueLimits) -> Result<Vec<Value>, String> {
    let mut plain = resp.clone();
    if plain.header.is_gzip() {
        plain
            .gunzip(MAX_RESPONSE_BODY)
            .map_err(|e| format!("response body: {e}"))?;
    }
    match decode_first(&plain.body, 1, limits) {
        Ok((v, false)) => Ok(v),
        Ok((_, true)) => Err("the answer has more than one value".into()),
        Err(e) => Err(e.to_string()),
    }
}

enum Fallback {
    /// The cluster has no endpoints: plain HTTP instead, as motan-go.
    NoEndpoints,
    Failed(String),
}

/// The HTTP response carried by a transparent-mode answer ([header block, body]).
fn transparent_reply(resp: &Frame, limits: ValueLimits) -> Result<Reply, Fallback> {
    if let Some(e) = resp.as_response().and_then(|r| r.exception()) {
        if e.errcode == i64::from(E_NO_ENDPOINTS) {
            return Err(Fallback::NoEndpoints);
        }
        return Err(Fallback::Failed(e.errmsg));
    }
    let values = response_values(resp, limits).map_err(Fallback::Failed)?;
    let (head, body) = match values.as_slice() {
        [Value::Array(parts)] => match parts.as_slice() {
            [Value::Bytes(h), Value::Bytes(b)] => (h.clone(), b.clone()),
            [Value::Bytes(h), Value::Null] => (h.clone(), Bytes::new()),
            _ => return Err(Fallback::Failed("the answer is not [header block, body]".into())),
        },
        _ => return Err(Fallback::Failed("the answer is not [header block, body]".into())),
    };
    let head = parse_response_head(&head).map_err(Fallback::Failed)?;
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = head.status;
    *r.headers_mut() = head.headers;
    Ok(r)
}

/// Serve one client connection until it closes, idles out or `shutdown` (then gracefully).
async fn serve<IO>(io: IO, session: Arc<Session>, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let spec = session.spec.clone();
    let service = service_fn(move |req| session.clone().handle(req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // One request at a time per connection (hyper reads the next only once the answer is
    // written), a head within MAX_HEAD and `httpProxyKeepaliveTimeout` (idle and slowloris
    // alike), a body within `httpProxyTimeout`, and an answer the client takes nothing of for
    // `httpProxyTimeout` ends the connection: a client that pipelines and never reads holds
    // one answer, for a while.
    builder
        .timer(TokioTimer::new())
        .keep_alive(spec.keepalive)
        .header_read_timeout(spec.keepalive_timeout)
        .max_buf_size(MAX_HEAD);
    let io = WriteStall {
        inner: io,
        limit: spec.timeout,
        stalled: None,
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!("HTTP connection ended: {e}") },
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        }
    }
}

/// The hport listener. Its port and plain HTTP client are made at start; a reload changes the
/// domains it routes and its timeouts for RPCs.
pub struct HttpProxyServer {
    mesh: MeshHandle,
    sockets: SocketFactory,
    port: u16,
    plain: Arc<HttpClient>,
    /// `sockmesh.limits`: the listener's connection cap.
    budget: Arc<Budget>,
}

impl HttpProxyServer {
    pub fn new(mesh: MeshHandle, sockets: SocketFactory, port: u16, budget: Arc<Budget>) -> HttpProxyServer {
        let plain = plain_client(&mesh.load().http.proxy, &sockets, HttpTarget::Authority);
        HttpProxyServer {
            mesh,
            sockets,
            port,
            plain,
            budget,
        }
    }

    /// Accept until `shutdown`; connections are tracked by `tasks` for draining.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let mut gate = AcceptGate::new(&self.budget);
        while let Some((conn, peer, slot)) = next_connection("hport", &listener, &mut gate, &shutdown).await {
            let _ = conn.set_nodelay(true);
            let session = Arc::new(Session::new(
                self.mesh.clone(),
                peer,
                self.sockets.clone(),
                self.plain.clone(),
                Some(self.port),
                self.budget.clone(),
            ));
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let _slot = slot;
                serve(conn, session, shutdown).await
            });
        }
    }
}

/// Whether `buf` (read further from `conn` until `deadline` when needed) starts an HTTP/1.x
/// request whose host an `http-client` entry serves. Anything else (not HTTP, another host, a
/// head over `MAX_HEAD`, a quiet peer) is not ours.
pub async fn sniff(
    conn: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
    http: &HttpRouter,
) -> bool {
    loop {
        if !starts_like_http(buf) {
            return false;
        }
        let mut storage = [httparse::EMPTY_HEADER; crate::protocol::http::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                let host = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|h| h.parse::<Authority>().ok());
                return host.is_some_and(|h| http.domain(h.host()).is_some());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return false,
        }
        match tokio::time::timeout_at(deadline, conn.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

/// A method token (upper-case letters) and a space, as far as the bytes go.
fn starts_like_http(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    for (i, b) in buf.iter().enumerate().take(16) {
        match b {
            b'A'..=b'Z' => {}
            b' ' => return i > 0,
            _ => return false,
        }
    }
    buf.len() < 16
}

/// Serve an intercepted HTTP connection (its first bytes in `prefix`): requests for
/// `http-client` domains over Motan2, everything else as plain HTTP to `orig`, with sockets
/// from `sockets` (the app's network namespace); `(orig, peer)` are the original destination
/// and the app's address.
pub async fn serve_intercepted(
    conn: TcpStream,
    prefix: BytesMut,
    (orig, peer): (SocketAddr, SocketAddr),
    sockets: SocketFactory,
    mesh: MeshHandle,
    budget: Arc<Budget>,
    shutdown: CancellationToken,
) {
    let _ = conn.set_nodelay(true);
    let plain = plain_client(&mesh.load().http.proxy, &sockets, HttpTarget::Addr(orig));
    let session = Arc::new(Session::new(mesh, peer, sockets, plain, None, budget));
    let conn = Hooked {
        inner: conn,
        hook: Prefix(prefix),
    };
    serve(conn, session, shutdown).await;
}

/// A stream whose writes fail once the peer has taken nothing for `limit`.
struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Since when a write has been waiting for the peer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    fn waited<T>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing for {} ms", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.waited(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.waited(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first reads return bytes already read from it (the sniffed ones).
struct Prefix(BytesMut);

impl ReadHook for Prefix {
    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.0.is_empty() {
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_starts() {
        assert!(starts_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(starts_like_http(b"POS"), "too short to tell: read on");
        assert!(!starts_like_http(b"\xf1\xf1"));
        assert!(!starts_like_http(b" GET"));
        assert!(!starts_like_http(b"get / HTTP/1.1"));
        assert!(!starts_like_http(b"SSH-2.0-OpenSSH"));
        assert!(!starts_like_http(b""));
    }
}
