//! What the HTTP provider's modes share (spec 4.12): meta keys with a meaning for HTTP, the
//! request's arguments, meta ↔ headers, path and query escaping, and the exceptions an HTTP
//! exchange turns into.
use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, percent_encode};

use crate::config::http::DEFAULT_MAX_CONTENT_LENGTH;
use crate::protocol::motan2::frame::serialization;
use crate::protocol::motan2::simple::{Value, ValueLimits, decode_first};
use crate::protocol::motan2::{Exception, Frame, Meta, keys};
use crate::upstream::http::HttpError;

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
pub(super) const NOT_HEADERS: [&str; 4] = [
    meta_keys::HTTP_PROXY,
    meta_keys::HTTP_METHOD,
    meta_keys::HTTP_QUERY_STRING,
    keys::HOST,
];

/// Request headers never copied from meta: the Host is chosen separately, and the
/// connection/framing headers belong to the hop the client manages (a stale `Content-Length`
/// from meta would corrupt the request).
pub(super) const REQUEST_HEADERS_NOT_FORWARDED: [HeaderName; 8] = [
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

/// Go's `url.QueryEscape`: everything but letters, digits and `-_.~` escaped, space as `+`.
const GO_QUERY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A path from `M_m` (or a rewrite of it), escaped, starting with `/`.
pub(super) fn escape_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with(b"/") {
        out.push('/');
    }
    out.extend(percent_encode(path, PATH_ESCAPES));
    out
}

pub(super) fn escape_query(query: &[u8]) -> String {
    percent_encode(query, QUERY_ESCAPES).to_string()
}

/// `url.QueryEscape` of Go.
pub(super) fn go_query_escape(s: &[u8]) -> String {
    percent_encode(s, GO_QUERY_ESCAPES)
        .to_string()
        .replace("%20", "+")
}

pub(super) fn bad_request(msg: impl std::fmt::Display) -> Exception {
    Exception::business(400, format!("HTTP provider: {msg}"))
}

/// The exception of a failed exchange: unreachable or too slow → 503, a body over the limit →
/// 500, both errtype 2 (the same answer would come back on a retry, so it is not retried).
pub(super) fn exchange_error(upstream: &dyn std::fmt::Display, e: HttpError) -> Exception {
    match e {
        HttpError::TooLarge(n) => Exception::business(
            500,
            format!("HTTP upstream {upstream}: response body larger than maxContentLength ({n} bytes)"),
        ),
        other => Exception::business(503, format!("HTTP upstream {upstream}: {other}")),
    }
}

/// Only the simple serialization can be read (and its values mapped to HTTP).
pub(super) fn check_serialization(req: &Frame) -> Result<(), Exception> {
    let number = req.header.serialization();
    if number == serialization::SIMPLE {
        return Ok(());
    }
    Err(Exception::service(
        500,
        format!(
            "HTTP provider: serialization {} ({number}) is not supported, only simple (6)",
            serialization_name(number)
        ),
    ))
}

/// The request's first `most` arguments, decoded within `limits`; more arguments than that are
/// an error and are never decoded (a body of ten million nulls costs `most` values).
pub(super) fn arguments(req: &Frame, most: usize, limits: ValueLimits) -> Result<Vec<Value>, String> {
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
    match decode_first(&body, most, limits) {
        Ok((args, false)) => Ok(args),
        Ok((_, true)) => Err(format!("more than {most} argument(s), at most {most} allowed")),
        Err(e) => Err(format!("request body is not simple-serialized: {e}")),
    }
}

/// The request's one argument (`None` for an empty body); more than one is an error.
pub(super) fn single_argument(req: &Frame, limits: ValueLimits) -> Result<Option<Value>, String> {
    Ok(arguments(req, 1, limits)?.pop())
}

/// The `MOTAN-*` header of a protocol meta key (motan-go's InnerAttachmentsConvertMap).
pub(super) fn motan_header(key: &str) -> Option<&'static str> {
    Some(match key {
        "M_p" => "MOTAN-p",
        "M_m" => "MOTAN-m",
        "M_md" => "MOTAN-md",
        "M_g" => "MOTAN-g",
        "M_pp" => "MOTAN-pp",
        "M_v" => "MOTAN-v",
        "M_mdu" => "MOTAN-mdu",
        "M_s" => "MOTAN-s",
        "M_rid" => "MOTAN-rid",
        "M_tmo" => "MOTAN-tmo",
        _ => return None,
    })
}

/// The caller's IP for X-Forwarded-For: `remoteIP`, else `host`.
pub(super) fn client_ip(meta: &Meta) -> Option<HeaderValue> {
    meta.get_bytes(meta_keys::REMOTE_IP)
        .filter(|v| !v.is_empty())
        .or_else(|| meta.get_bytes(keys::HOST).filter(|v| !v.is_empty()))
        .and_then(|v| HeaderValue::from_maybe_shared(v.clone()).ok())
}

/// X-Forwarded-For kept when present, else the caller's IP.
pub(super) fn add_forwarded_for(headers: &mut HeaderMap, meta: &Meta) {
    if !headers.contains_key(X_FORWARDED_FOR)
        && let Some(ip) = client_ip(meta)
    {
        headers.insert(X_FORWARDED_FOR, ip);
    }
}

/// Request headers from meta (proxy mode, spec 4.12): `M_x` → `MOTAN-x`, `http_X` → `X`, any
/// other key as is; Host from `http_Host`/`http_host`, else `domain`; X-Forwarded-For kept
/// when present, else `remoteIP`, else `host`. Keys or values that are not valid in HTTP are
/// left out.
pub(super) fn request_headers(meta: &Meta, domain: Option<&HeaderValue>) -> HeaderMap {
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
    add_forwarded_for(&mut headers, meta);
    headers
}

/// Response headers as response meta: names in Go's canonical form (as fasthttp and net/http
/// report them), hop-by-hop ones and names that look like protocol keys (`M_...`) dropped,
/// the last of several values winning (fasthttp's VisitAll order).
pub(super) fn response_meta(headers: &HeaderMap, into: &mut Meta) {
    for (name, value) in headers {
        if RESPONSE_HEADERS_NOT_RETURNED.contains(name) {
            continue;
        }
        let key = canonical_header_key(name.as_str());
        // Keys of this shape are protocol keys (M_e, M_pt...), which a header must not fake.
        if key.starts_with("M_") {
            continue;
        }
        into.insert(key, Bytes::copy_from_slice(value.as_bytes()));
    }
}

/// Go's canonical header key (textproto.CanonicalMIMEHeaderKey) for a valid lower-case name:
/// the first letter and every letter after `-` upper case.
pub fn canonical_header_key(name: &str) -> String {
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
pub(super) fn value_type_name(v: &Value) -> &'static str {
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
    use super::*;

    #[test]
    fn canonical_header_keys() {
        assert_eq!(canonical_header_key("content-type"), "Content-Type");
        assert_eq!(canonical_header_key("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(canonical_header_key("etag"), "Etag");
        assert_eq!(canonical_header_key("m_pt"), "M_pt");
    }

    #[test]
    fn escapes() {
        assert_eq!(go_query_escape(b"a b&c=d~*/"), "a+b%26c%3Dd~%2A%2F");
        assert_eq!(escape_path(b"v1/a b?c"), "/v1/a%20b%3Fc");
        assert_eq!(escape_path(b"/ok%2F"), "/ok%2F");
    }
}
