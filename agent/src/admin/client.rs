//! The CLI's side of the admin API: one HTTP/1.1 request to the running daemon, on its control
//! socket (the default: the whole API, for root and the control group) or on its TCP admin port
//! (`--admin ADDR`: reads, and only the mutations its configuration enables).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for the slowest admin call (a reload that rebuilds the mesh).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon's admin API is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminTarget {
    Socket(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTarget::Socket(p) => write!(f, "{}", p.display()),
            AdminTarget::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl AdminTarget {
    /// `method path`; returns the status code and the body.
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            match self {
                AdminTarget::Socket(p) => {
                    let s = connect(tokio::net::UnixStream::connect(p)).await.with_context(|| {
                        format!(
                            "cannot reach the sockmesh daemon's control socket {}: is `sockmesh run` running, \
                             and are you root or in its sockmesh.admin.control_group? (--control PATH names another socket)",
                            p.display()
                        )
                    })?;
                    // Any Host: the socket's peer credentials decide, not the name.
                    exchange(s, "localhost", method, path).await
                }
                AdminTarget::Tcp(a) => {
                    let s = connect(tokio::net::TcpStream::connect(a)).await.with_context(|| {
                        format!("cannot reach the sockmesh daemon's admin API at {a}; is `sockmesh run` running?")
                    })?;
                    exchange(s, &a.to_string(), method, path).await
                }
            }
            .with_context(|| format!("{method} {path} at {self}"))
        })
    }

    /// Whether something accepts connections there still.
    pub fn answers(&self) -> bool {
        match self {
            AdminTarget::Socket(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            AdminTarget::Tcp(a) => std::net::TcpStream::connect_timeout(a, CONNECT_TIMEOUT).is_ok(),
        }
    }
}

async fn connect<S>(c: impl Future<Output = std::io::Result<S>>) -> Result<S> {
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, c)
        .await
        .context("timed out connecting")??)
}

async fn exchange<S>(io: S, host: &str, method: &str, path: &str) -> Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let answer = async {
        let resp = sender.send_request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&body).into_owned()))
    };
    let r = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .context("no answer within 30 s")?;
    conn.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_http_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("sockmesh-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut head = Vec::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == "\r\n" {
                    break;
                }
                head.push(l);
            }
            r.get_mut()
                .write_all(
                    b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
                )
                .unwrap();
            head
        });
        let target = AdminTarget::Socket(path.clone());
        assert_eq!(target.request("POST", "/reload").unwrap(), (403, "no".into()));
        let head = server.join().unwrap();
        assert_eq!(head[0], "POST /reload HTTP/1.1\r\n");
        assert!(
            head.iter().any(|l| l.eq_ignore_ascii_case("host: localhost\r\n")),
            "{head:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = format!("{:#}", target.request("GET", "/sockmesh/status").unwrap_err());
        assert!(
            err.contains("cannot reach the sockmesh daemon's control socket"),
            "{err}"
        );
    }
}
