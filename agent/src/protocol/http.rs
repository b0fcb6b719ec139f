//! HTTP messages carried inside Motan2 calls (spec 4.12 transparent mode, 4.13): an hport proxy
//! or an intercepted HTTP connection sends the request's raw HTTP/1.1 header block and its
//! body as two byte-array arguments (meta `HTTP_PROXY=true`); the HTTP provider answers with an
//! array of two byte arrays, the response's raw header block and its body. The blocks are
//! what fasthttp writes in motan-go: a start line, `Name: value` lines, an empty line.
//!
//! Framing headers (`Content-Length`, `Transfer-Encoding`) and `Connection` belong to the hop
//! that carries the body, so they are dropped when a block is read: each side frames the body
//! it sends itself.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Most header lines a block may have.
pub const MAX_HEADERS: usize = 128;

/// Headers a block never carries over to the next hop.
const HOP_HEADERS: [HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    HeaderName::from_static("keep-alive"),
];

/// A request's start line and headers.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The request target as sent (`/path?query`, or an absolute URI to a proxy).
    pub target: String,
    pub headers: HeaderMap,
}

/// A response's status and headers.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

fn headers_of(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("bad header name {:?}", h.name))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| format!("bad value of header {}", h.name))?;
        if !HOP_HEADERS.contains(&name) {
            headers.append(name, value);
        }
    }
    Ok(headers)
}

/// Read a request header block (it must be complete: end with an empty line).
pub fn parse_request_head(block: &[u8]) -> Result<RequestHead, String> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(block) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("request header block is incomplete".into()),
        Err(e) => return Err(format!("request header block: {e}")),
    }
    let method = req.method.unwrap_or_default();
    Ok(RequestHead {
        method: Method::from_bytes(method.as_bytes()).map_err(|_| format!("bad method {method:?}"))?,
        target: req.path.unwrap_or("/").to_string(),
        headers: headers_of(req.headers)?,
    })
}

/// Read a response header block.
pub fn parse_response_head(block: &[u8]) -> Result<ResponseHead, String> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(block) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("response header block is incomplete".into()),
        Err(e) => return Err(format!("response header block: {e}")),
    }
    let code = resp.code.unwrap_or(0);
    Ok(ResponseHead {
        status: StatusCode::from_u16(code).map_err(|_| format!("bad status {code}"))?,
        headers: headers_of(resp.headers)?,
    })
}

fn put_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        if HOP_HEADERS.contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `METHOD target HTTP/1.1`, the headers, an empty line.
pub fn write_request_head(method: &Method, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + headers.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_headers(headers, &mut out);
    out
}

/// `HTTP/1.1 code reason`, the headers, an empty line.
pub fn write_response_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + headers.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_headers(headers, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_without_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "api.x.com".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert(header::CONNECTION, "close".parse().unwrap());
        let block = write_request_head(&Method::POST, "/a/b?c=1", &h);
        assert_eq!(
            String::from_utf8(block.clone()).unwrap(),
            "POST /a/b?c=1 HTTP/1.1\r\nhost: api.x.com\r\nx-multi: 1\r\nx-multi: 2\r\n\r\n"
        );
        let r = parse_request_head(&block).unwrap();
        assert_eq!((r.method, r.target.as_str()), (Method::POST, "/a/b?c=1"));
        assert_eq!(r.headers.get_all("x-multi").iter().count(), 2);

        // As fasthttp writes a response: framing headers are dropped on reading.
        let fasthttp =
            b"HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n";
        let r = parse_response_head(fasthttp).unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.headers.len(), 2);
        let again = parse_response_head(&write_response_head(r.status, &r.headers)).unwrap();
        assert_eq!(again.headers, r.headers);
    }

    #[test]
    fn bad_blocks_are_errors() {
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n").is_err(),
            "incomplete"
        );
        assert!(parse_request_head(b"\x00\x01").is_err());
        assert!(parse_response_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
