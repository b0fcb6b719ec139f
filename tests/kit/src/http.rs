//! A blocking HTTP/1.1 client for the agent's admin API, just enough for harnesses: one request
//! per connection (`Connection: close`), the answer read to the end, a chunked body decoded. The
//! TCP admin port serves reads (and the mutations an agent's configuration enables); the whole
//! API is on the agent's control socket, reached with [`unix_request`] and friends.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for the slowest admin call (a reload that loads BPF programs).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `method path` with `body` to `addr`; returns the status code and the body.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    exchange(s, &addr.to_string(), method, path, "", body)
        .with_context(|| format!("{method} {path} at {addr}"))
}

/// The `Content-Type` header of an HTML form's POST (what Go's `FormValue` reads besides the query).
const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\n";

/// POST `form` (`a=1&b=2`) as an urlencoded form body to `addr`.
pub fn post_form(addr: SocketAddr, path: &str, form: &str) -> Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    exchange(s, &addr.to_string(), "POST", path, FORM, form).with_context(|| format!("POST {path} at {addr}"))
}

/// POST `form` as an urlencoded form body on the Unix socket `socket`.
pub fn unix_post_form(socket: &Path, path: &str, form: &str) -> Result<(u16, String)> {
    let s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the control socket {}", socket.display()))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    exchange(s, "localhost", "POST", path, FORM, form)
        .with_context(|| format!("POST {path} at {}", socket.display()))
}

pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(addr, "GET", path, "")
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, String)> {
    request(addr, "POST", path, body)
}

/// `method path` with `body` on the Unix socket `socket` (an agent's control socket).
pub fn unix_request(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the control socket {}", socket.display()))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    exchange(s, "localhost", method, path, "", body)
        .with_context(|| format!("{method} {path} at {}", socket.display()))
}

pub fn unix_get(socket: &Path, path: &str) -> Result<(u16, String)> {
    unix_request(socket, "GET", path, "")
}

pub fn unix_post(socket: &Path, path: &str, body: &str) -> Result<(u16, String)> {
    unix_request(socket, "POST", path, body)
}

/// Send one request (`headers`: extra header lines, each ending in CRLF) on a fresh connection
/// and read the whole answer.
fn exchange(
    mut s: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String)> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    parse_response(&answer)
}

/// The status code and the (de-chunked) body of a whole HTTP/1.1 answer.
pub fn parse_response(answer: &[u8]) -> Result<(u16, String)> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("malformed status line")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A chunked body: hex size line, data, CRLF, up to the zero-size chunk.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (200, "hello".into()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, "abcde".into()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn speaks_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("sockmesh-testkit-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&req).ends_with("\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        assert_eq!(unix_post(&path, "/reload", "").unwrap(), (200, "ok".into()));
        let req = server.join().unwrap();
        assert!(
            req.starts_with("POST /reload HTTP/1.1\r\nHost: localhost\r\n"),
            "{req}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn posts_its_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&req).ends_with("ping") {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        assert_eq!(post(addr, "/reload", "ping").unwrap(), (200, "pong".into()));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /reload HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 4\r\n"), "{req}");
    }
}
