//! Pooled HTTP/1.1 upstream connections: the HTTP provider's application (TCP or a unix socket),
//! the hport proxy's destinations and intercepted HTTP's original destinations. Every TCP
//! socket comes from the agent's socket factory ([`SocketFactory`]: the agent's mark, so
//! interception never catches the agent, and the right network namespace), through a
//! hyper-util connector ([`SocketConnector`]).
//!
//! An exchange is bounded: one timeout covers connect, request and the whole response, the
//! response body is read up to a byte limit, and at most `max_connections` requests are in
//! flight (with HTTP/1.1 each holds a connection, so that caps the connections; the pool
//! itself only caps idle ones).
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Semaphore;

use crate::net::SocketFactory;

/// Where the connector connects, whatever the request's URI says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpTarget {
    /// The URI's host (resolved) and port (80 when absent).
    Authority,
    /// Always this address (an intercepted connection's original destination).
    Addr(SocketAddr),
    /// A unix socket (`proxyAddress: unix://path`).
    Unix(PathBuf),
}

/// A stream to an HTTP upstream.
pub enum HttpStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for HttpStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// hyper-util's connector over the socket factory.
#[derive(Clone, Debug)]
pub struct SocketConnector {
    sockets: SocketFactory,
    target: Arc<HttpTarget>,
    connect_timeout: Duration,
}

impl SocketConnector {
    async fn connect(self, uri: Uri) -> std::io::Result<HttpStream> {
        let addrs: Vec<SocketAddr> = match &*self.target {
            HttpTarget::Unix(path) => {
                let s = tokio::time::timeout(self.connect_timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| {
                        std::io::Error::other(format!(
                            "connecting to unix:{}: timed out after {:?}",
                            path.display(),
                            self.connect_timeout
                        ))
                    })?
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("connecting to unix:{}: {e}", path.display()))
                    })?;
                return Ok(HttpStream::Unix(s));
            }
            HttpTarget::Addr(a) => vec![*a],
            HttpTarget::Authority => {
                let host = uri
                    .host()
                    .ok_or_else(|| std::io::Error::other(format!("{uri}: no host to connect to")))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(80);
                tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("resolving {host}: {e}")))?
                    .collect()
            }
        };
        // Each address in turn (`localhost` may be ::1 first while the server has 127.0.0.1).
        let mut last = std::io::Error::other(format!("{uri}: the name resolved to no address"));
        for addr in addrs {
            match self.sockets.connect_within(addr, self.connect_timeout).await {
                Ok(s) => return Ok(HttpStream::Tcp(s)),
                Err(e) => last = std::io::Error::other(format!("{e:#}")),
            }
        }
        Err(last)
    }
}

impl tower_service::Service<Uri> for SocketConnector {
    type Response = TokioIo<HttpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<HttpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect(uri).await.map(TokioIo::new) })
    }
}

/// How an [`HttpClient`] connects and what it allows.
#[derive(Clone, Debug)]
pub struct HttpClientSettings {
    pub target: HttpTarget,
    /// Connect plus request plus the whole response.
    pub timeout: Duration,
    /// Idle pooled connections close after this.
    pub idle_timeout: Duration,
    /// Requests (and so connections) at once.
    pub max_connections: usize,
    /// Largest response body read.
    pub max_body: usize,
}

/// A whole response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unreachable(String),
}

/// A pool of HTTP/1.1 connections to one target (or, for [`HttpTarget::Authority`], to each
/// URI authority).
pub struct HttpClient {
    client: Client<SocketConnector, Full<Bytes>>,
    settings: HttpClientSettings,
    connections: Semaphore,
}

impl HttpClient {
    pub fn new(sockets: SocketFactory, settings: HttpClientSettings) -> HttpClient {
        let max_connections = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let connector = SocketConnector {
            sockets,
            target: Arc::new(settings.target.clone()),
            connect_timeout: settings.timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(max_connections)
            // Never resend: the upstream may have acted on the request already.
            .retry_canceled_requests(false)
            .build(connector);
        HttpClient {
            client,
            settings,
            connections: Semaphore::new(max_connections),
        }
    }

    pub fn settings(&self) -> &HttpClientSettings {
        &self.settings
    }

    /// Send `req` (absolute URI: the pool is keyed by its scheme and authority) and read the
    /// whole response, within the timeout and the body limit.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<HttpReply, HttpError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.exchange(req))
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout)))
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<HttpReply, HttpError> {
        // The semaphore is never closed.
        let _permit = self
            .connections
            .acquire()
            .await
            .map_err(|e| HttpError::Unreachable(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| HttpError::Unreachable(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = match Limited::new(body, self.settings.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(HttpError::TooLarge(self.settings.max_body));
            }
            Err(e) => return Err(HttpError::Unreachable(error_chain(e.as_ref()))),
        };
        Ok(HttpReply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

/// An error and its sources, `a: b: c` (hyper's top-level messages alone say little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    use std::fmt::Write as _;
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(target: HttpTarget) -> HttpClientSettings {
        HttpClientSettings {
            target,
            timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(5),
            max_connections: 4,
            max_body: 64,
        }
    }

    /// A one-shot HTTP/1.1 server answering `body` on every request of its connections.
    async fn serve<L, S>(listener: L, body: &'static str)
    where
        L: Accept<S> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            while let Some(mut s) = listener.accept_one().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }

    trait Accept<S> {
        fn accept_one(&self) -> impl Future<Output = Option<S>> + Send;
    }
    impl Accept<TcpStream> for tokio::net::TcpListener {
        async fn accept_one(&self) -> Option<TcpStream> {
            self.accept().await.ok().map(|(s, _)| s)
        }
    }
    impl Accept<UnixStream> for tokio::net::UnixListener {
        async fn accept_one(&self) -> Option<UnixStream> {
            self.accept().await.ok().map(|(s, _)| s)
        }
    }

    fn get(uri: &str) -> Request<Full<Bytes>> {
        Request::get(uri).body(Full::new(Bytes::new())).unwrap()
    }

    #[tokio::test]
    async fn tcp_unix_and_fixed_targets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, "tcp").await;
        let c = HttpClient::new(SocketFactory::default(), settings(HttpTarget::Authority));
        let r = c.send(get(&format!("http://{addr}/x"))).await.unwrap();
        assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, &b"tcp"[..]));
        // A fixed target ignores the URI's authority.
        let c = HttpClient::new(SocketFactory::default(), settings(HttpTarget::Addr(addr)));
        let r = c.send(get("http://elsewhere.test/x")).await.unwrap();
        assert_eq!(r.body.as_ref(), b"tcp");

        let dir = std::env::temp_dir().join(format!("sockmesh-http-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let _ = std::fs::remove_file(&path);
        serve(tokio::net::UnixListener::bind(&path).unwrap(), "unix").await;
        let c = HttpClient::new(SocketFactory::default(), settings(HttpTarget::Unix(path.clone())));
        let r = c.send(get("http://localhost/x")).await.unwrap();
        assert_eq!(r.body.as_ref(), b"unix");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn limits_and_failures_are_typed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        serve(
            l,
            "this body is longer than the sixty-four bytes the client accepts, by far",
        )
        .await;
        let c = HttpClient::new(SocketFactory::default(), settings(HttpTarget::Authority));
        let e = c.send(get(&format!("http://{addr}/"))).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge(64)), "{e}");

        // Accepts but never answers: the timeout covers the whole exchange.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let e = c.send(get(&format!("http://{silent_addr}/"))).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(silent);

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = c.send(get(&format!("http://{closed}/"))).await.unwrap_err();
        assert!(
            matches!(&e, HttpError::Unreachable(m) if m.contains(&closed.to_string())),
            "{e}"
        );
    }
}
