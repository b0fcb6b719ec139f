//! The HTTP provider (spec 4.12): a server agent answers a Motan2 request by making an HTTP/1.1
//! request to a local application and turning its HTTP response into the Motan2 response.
//! The modes are motan-go's: `proxyAddress` ([`proxy`]: RPC ↔ HTTP mapping, over TCP or a unix
//! socket, paths rewritten by `http-locations`), transparent ([`transparent`]: a whole HTTP
//! request carried by an hport proxy, meta `HTTP_PROXY=true`) and URL format ([`format`]:
//! `URL_FORMAT` / `HTTP_URL`, `http-service`). Connections come from the agent's socket factory
//! through [`HttpClient`], pooled and bounded.
//!
//! Status codes: an HTTP status is returned as meta `upstreamCode` and the answer is a success
//! unless `enableHttpException` is on, then a status ≥ 400 is exception errcode = status,
//! errtype 2, errmsg = body. Unreachable or too slow (`requestTimeout`) is 503 errtype 2, bad
//! arguments 400, no matching location 404, a body over `maxContentLength` 500, all errtype 2
//! (motan-go's business type: not retried, not counted against the endpoint).
//!
//! Deliberate differences from motan-go, each for a reason given where it is done:
//! - `enableRewrite` on (the default) with no `http-locations` rules for the domain sends `M_m`
//!   as the path; motan-go answers every call 404 then (a warning says so at start).
//! - `keepaliveTimeout` (maximum connection age) is accepted but not enforced: the pooled client
//!   has no such knob; idle connections still close after `idleConnectionTimeout`.
//! - Form bodies in proxy mode escape keys as well as values (motan-go writes keys raw).
//! - Response header names are in Go's canonical form (`Content-Type`), as fasthttp reports
//!   them; hop-by-hop headers and names that look like protocol keys (`M_...`) are dropped.
mod format;
pub mod mapping;
mod proxy;
mod transparent;

use std::time::Instant;

use bytes::Bytes;
use http::uri::Authority;

use self::format::FormatTarget;
use self::mapping::{check_serialization, exchange_error, meta_keys, response_meta};
use self::proxy::ProxyTarget;
use crate::config::http::{HttpMode, HttpProviderSpec, ProxyAddress};
use crate::net::SocketFactory;
use crate::protocol::motan2::frame::{FLAG_PROXY, FLAG_RESPONSE};
use crate::protocol::motan2::simple::{Value, ValueLimits, encode_args};
use crate::protocol::motan2::{Exception, Frame, Header, Meta, keys};
use crate::upstream::http::{HttpClient, HttpClientSettings, HttpTarget};
use crate::url::parse_go_bool;

enum Mode {
    Proxy(ProxyTarget),
    Format(FormatTarget),
}

/// Forwards Motan2 requests to one local HTTP application.
pub struct HttpProvider {
    client: HttpClient,
    mode: Mode,
    /// Where requests go, for messages.
    upstream: String,
    enable_http_exception: bool,
    /// `sockmesh.limits.decoded_values` and `decoded_value_bytes`: what one request's
    /// arguments may decode to.
    values: ValueLimits,
}

impl HttpProvider {
    /// The provider of `service` (its path, for messages) with checked settings; its sockets
    /// come from `sockets`.
    pub fn new(
        service: &str,
        spec: &HttpProviderSpec,
        sockets: &SocketFactory,
        values: ValueLimits,
    ) -> HttpProvider {
        if spec.keepalive_timeout_ignored {
            tracing::warn!(
                service,
                "keepaliveTimeout (maximum connection age) is not supported by sockmesh; connections close when idle"
            );
        }
        let (target, mode, upstream) = match &spec.mode {
            HttpMode::Proxy { address, rewrite } => {
                let (target, authority) = match address {
                    ProxyAddress::Tcp(a) => (HttpTarget::Authority, a.clone()),
                    ProxyAddress::Unix(p) => {
                        (HttpTarget::Unix(p.clone()), Authority::from_static("localhost"))
                    }
                };
                let mode = Mode::Proxy(ProxyTarget {
                    authority,
                    domain: spec.domain.clone(),
                    default_method: spec.default_method.clone(),
                    rewrite: rewrite.clone(),
                });
                (target, mode, address.to_string())
            }
            HttpMode::UrlFormat { url, methods } => {
                let mode = Mode::Format(FormatTarget {
                    url: url.clone(),
                    methods: methods.clone(),
                    default_method: spec.default_method.clone(),
                });
                (HttpTarget::Authority, mode, "URL_FORMAT".to_string())
            }
        };
        let settings = HttpClientSettings {
            target,
            timeout: spec.request_timeout,
            idle_timeout: spec.idle_timeout,
            max_connections: spec.max_connections,
            max_body: spec.max_content_length,
        };
        HttpProvider {
            client: HttpClient::new(sockets.clone(), settings),
            mode,
            upstream,
            enable_http_exception: spec.enable_http_exception,
            values,
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
        check_serialization(req)?;
        let transparent = req.meta.get(meta_keys::HTTP_PROXY).and_then(parse_go_bool) == Some(true);
        let http_req = match (&self.mode, transparent) {
            (Mode::Proxy(t), false) => proxy::request(req, t, self.values)?,
            (Mode::Proxy(t), true) => transparent::request(req, t, self.values)?,
            (Mode::Format(t), false) => format::request(req, t, self.values)?.0,
            (Mode::Format(_), true) => {
                return Err(Exception::business(
                    400,
                    "HTTP provider: transparent HTTP requests (HTTP_PROXY=true) need a proxyAddress provider, this one has URL_FORMAT",
                ));
            }
        };
        let reply = self
            .client
            .send(http_req)
            .await
            .map_err(|e| exchange_error(&self.upstream, e))?;
        let status = reply.status.as_u16();
        if self.enable_http_exception && status >= 400 {
            return Err(Exception::business(
                i64::from(status),
                String::from_utf8_lossy(&reply.body).into_owned(),
            ));
        }
        let (mut meta, value) = match (&self.mode, transparent) {
            (Mode::Format(_), _) => (format::reply_meta(req, &reply.headers), Value::String(reply.body)),
            (Mode::Proxy(_), true) => (Meta::with_capacity(2), transparent::reply_value(reply)),
            (Mode::Proxy(_), false) => {
                let mut meta = Meta::with_capacity(reply.headers.len() + 2);
                response_meta(&reply.headers, &mut meta);
                (meta, Value::Bytes(reply.body))
            }
        };
        meta.insert(meta_keys::UPSTREAM_CODE, status.to_string());
        Ok((meta, encode_args(&[value])))
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

    use std::time::Duration;

    use super::*;
    use crate::config::http::HttpSections;
    use crate::protocol::motan2::ErrorType;
    use crate::protocol::motan2::frame::serialization;
    use crate::protocol::motan2::simple::decode_all;
    use crate::url::Url;

    fn provider(service: &Url) -> HttpProvider {
        provider_with(service, &HttpSections::default())
    }

    fn provider_with(service: &Url, sections: &HttpSections) -> HttpProvider {
        HttpProvider::new(
            &service.path,
            &HttpProviderSpec::from_url(service, sections).unwrap(),
            &SocketFactory::default(),
            ValueLimits::default(),
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
    async fn a_body_of_millions_of_values_is_refused_without_decoding_them() {
        let addr = upstream().await;
        let svc = service(addr);
        // 10 MiB of zero bytes, gzipped: ten million null arguments once inflated.
        let mut req = request("/v1/users", &[], &[]);
        req.body = Bytes::from(vec![0u8; 10 << 20]);
        assert!(req.gzip_if_larger(1));
        assert!(req.body.len() < 64 << 10);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business), "{}", e.errmsg);
        assert!(e.errmsg.contains("at most 1"), "{}", e.errmsg);
        // One argument that holds a million values stops at sockmesh.limits.decoded_values.
        let many = Value::Map(vec![(Value::Null, Value::Null); 500_000]);
        let req = request("/v1/users", &[many], &[]);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business), "{}", e.errmsg);
        assert!(
            e.errmsg.contains("sockmesh.limits.decoded_values"),
            "{}",
            e.errmsg
        );
        // Transparent requests take two arguments, no more.
        let three = [Value::from("GET / HTTP/1.1\r\n\r\n"), Value::Null, Value::Null];
        let req = request("/v1/users", &three, &[("HTTP_PROXY", "true")]);
        let e = exception(&req, &call(&svc, &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business), "{}", e.errmsg);
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

    fn sections(yaml: &str) -> HttpSections {
        let root: std::collections::BTreeMap<String, serde_yaml_ng::Value> =
            serde_yaml_ng::from_str(yaml).unwrap();
        HttpSections {
            locations: crate::config::http_locations::HttpLocations::from_section(root.get("http-locations"))
                .0,
            formats: crate::config::http::HttpServiceFormats::from_section(root.get("http-service")).0,
        }
    }

    #[tokio::test]
    async fn locations_rewrite_the_path_and_a_miss_is_404() {
        let addr = upstream().await;
        let s = sections(
            "http-locations:\n  api.hello.com:\n    - {match: /v1, type: start, upstream: u, rewriteRules: ['regexp ^/v1/ ^/v1/(.*) /v2/$1']}\n    - {match: /exact, type: exact, upstream: u}\n    - {match: '^/re/[0-9]+$', type: regexp, upstream: u, rewriteRules: ['regexpVar ^/re ^/re/(.*) /id/$1/{who}']}\n",
        );
        let p = provider_with(&service(addr), &s);
        let path = |m: &'static str, q: &'static str| {
            let p = &p;
            async move {
                let meta: &[(&str, &str)] = if q.is_empty() {
                    &[]
                } else {
                    &[("HTTP_QueryString", q)]
                };
                let req = request(m, &[], meta);
                echoed(&req, &p.call(&req, Instant::now()).await)["path"].clone()
            }
        };
        assert_eq!(path("/v1/users", "").await, "/v2/users");
        assert_eq!(path("/exact", "").await, "/exact");
        assert_eq!(path("/re/42", "who=bob").await, "/id/42/bob");
        let req = request("/other", &[], &[]);
        let e = exception(&req, &p.call(&req, Instant::now()).await);
        assert_eq!((e.errcode, e.errtype), (404, ErrorType::Business));
        assert!(e.errmsg.contains("service not found"), "{}", e.errmsg);
        // enableRewrite: false sends M_m whatever the rules.
        let p = provider_with(&service(addr).with_param("enableRewrite", "false"), &s);
        let req = request("/other", &[], &[]);
        assert_eq!(
            echoed(&req, &p.call(&req, Instant::now()).await)["path"],
            "/other"
        );
    }

    #[tokio::test]
    async fn unix_socket_proxy_address() {
        let dir = std::env::temp_dir().join(format!("sockmesh-provider-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move { axum::serve(listener, Router::new().fallback(echo)).await.unwrap() });
        let svc = Url::new("motan2", "127.0.0.1", 9982, "api.hello.com", "g")
            .with_param("proxyAddress", &format!("unix://{}", path.display()))
            .with_param("domain", "api.hello.com");
        let req = request("/over/unix", &[string_map(&[("a", "1")])], &[]);
        let e = echoed(&req, &call(&svc, &req).await);
        assert_eq!(
            (e["path"].as_str(), e["query"].as_str()),
            (Some("/over/unix"), Some("a=1"))
        );
        assert_eq!(e["headers"]["host"], json!(["api.hello.com"]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn string_body(resp: &Frame) -> Bytes {
        match decode_all(&resp.body).unwrap().as_slice() {
            [Value::String(b)] => b.clone(),
            other => panic!("not one string: {other:?}"),
        }
    }

    #[tokio::test]
    async fn url_format_get_post_and_per_method_overrides() {
        let addr = upstream().await;
        let s = sections(&format!(
            "http-service:\n  fmt:\n    special: {{URL_FORMAT: \"http://{addr}/special/%s\", HTTP_REQUEST_METHOD: POST}}\n"
        ));
        let svc = Url::new("motan2", "127.0.0.1", 9982, "com.weibo.Hello", "g")
            .with_param("conf-id", "fmt")
            .with_param("URL_FORMAT", &format!("http://{addr}/fmt%s"));
        let p = provider_with(&svc, &s);
        let req = request(
            "/hello",
            &[string_map(&[("name", "a b")])],
            &[("M_s", "caller"), ("trace", "t1")],
        );
        let resp = p.call(&req, Instant::now()).await;
        // URL-format answers are strings (tag 01), with the request meta and response headers.
        assert_eq!(resp.body.first(), Some(&0x01));
        let body = string_body(&resp);
        let e: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(e["method"], "GET");
        assert_eq!(e["path"], "/fmt/hello");
        let rid = req.header.request_id.to_string();
        assert_eq!(e["query"], format!("requestIdFromClient={rid}&name=a+b"));
        assert_eq!(e["headers"]["motan-s"], json!(["caller"]));
        assert_eq!(e["headers"]["trace"], json!(["t1"]));
        assert_eq!(resp.meta.get("trace"), Some("t1"));
        assert_eq!(resp.meta.get("Content-Type"), Some("application/json"));
        assert_eq!(resp.meta.get("upstreamCode"), Some("200"));
        // A method's own entry: its URL and POST, the argument as a Go-encoded form body.
        let req = request("special", &[Value::from("x=1 y")], &[]);
        let resp = p.call(&req, Instant::now()).await;
        let body = string_body(&resp);
        let e: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (e["method"].as_str(), e["path"].as_str()),
            (Some("POST"), Some("/special/special"))
        );
        assert_eq!(e["body"], format!("requestIdFromClient={rid}&x%3D1+y="));
        assert_eq!(
            e["headers"]["content-type"],
            json!(["application/x-www-form-urlencoded"])
        );
    }

    #[tokio::test]
    async fn transparent_requests_carry_the_whole_http_request() {
        let addr = upstream().await;
        let head = b"PUT /v1/x?q=1 HTTP/1.1\r\nHost: api.hello.com\r\nX-Custom: c\r\nContent-Length: 4\r\nConnection: close\r\n\r\n";
        let req = request(
            "/v1/x",
            &[
                Value::Bytes(Bytes::from_static(head)),
                Value::Bytes(Bytes::from_static(b"data")),
            ],
            &[("HTTP_PROXY", "true"), ("M_s", "app"), ("host", "10.0.0.9")],
        );
        let resp = call(&service(addr), &req).await;
        assert!(!resp.is_exception(), "{:?}", resp.meta.get(keys::EXCEPTION));
        assert_eq!(resp.meta.get("upstreamCode"), Some("200"));
        let (rhead, rbody) = match decode_all(&resp.body).unwrap().as_slice() {
            [Value::Array(parts)] => match parts.as_slice() {
                [Value::Bytes(h), Value::Bytes(b)] => (h.clone(), b.clone()),
                other => panic!("not [head, body]: {other:?}"),
            },
            other => panic!("not one array: {other:?}"),
        };
        let rh = crate::protocol::http::parse_response_head(&rhead).unwrap();
        assert_eq!(rh.status, 200);
        assert_eq!(rh.headers["content-type"], "application/json");
        let e: Json = serde_json::from_slice(&rbody).unwrap();
        assert_eq!(
            (e["method"].as_str(), e["path"].as_str(), e["query"].as_str()),
            (Some("PUT"), Some("/v1/x"), Some("q=1"))
        );
        assert_eq!(e["body"], "data");
        assert_eq!(e["headers"]["x-custom"], json!(["c"]));
        assert_eq!(e["headers"]["motan-s"], json!(["app"]));
        assert_eq!(e["headers"]["x-forwarded-for"], json!(["10.0.0.9"]));
        assert_eq!(e["headers"]["connection"], Json::Null);
        // One argument only is a bad request.
        let req = request("/v1/x", &[Value::from("x")], &[("HTTP_PROXY", "true")]);
        let e = exception(&req, &call(&service(addr), &req).await);
        assert_eq!((e.errcode, e.errtype), (400, ErrorType::Business));
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
}
