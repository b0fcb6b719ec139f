//! Transparent mode (spec 4.12, meta `HTTP_PROXY=true`): the request is an HTTP request carried
//! whole by an hport proxy or an intercepted HTTP connection (two byte-array arguments: the raw
//! header block and the body). It goes to the application with its own method, headers, query
//! and body; the path is `M_m`, rewritten as in proxy mode; `MOTAN-*` headers and
//! X-Forwarded-For are added. The answer is an array of two byte arrays: the response's raw
//! header block and its body.
use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::Full;

use super::mapping::{add_forwarded_for, arguments, bad_request, motan_header};
use super::proxy::ProxyTarget;
use crate::protocol::http::{parse_request_head, write_response_head};
use crate::protocol::motan2::simple::{Value, ValueLimits};
use crate::protocol::motan2::{Exception, Frame};
use crate::upstream::http::HttpReply;

pub(super) fn request(
    req: &Frame,
    t: &ProxyTarget,
    values: ValueLimits,
) -> Result<Request<Full<Bytes>>, Exception> {
    let mut args = arguments(req, 2, values).map_err(bad_request)?.into_iter();
    let (Some(head), body) = (args.next(), args.next()) else {
        return Err(bad_request(
            "transparent HTTP requests (HTTP_PROXY=true) carry two byte arrays: header block and body",
        ));
    };
    let bytes_of = |v: Value| match v {
        Value::Bytes(b) | Value::String(b) => Ok(b),
        Value::Null => Ok(Bytes::new()),
        other => Err(bad_request(format!(
            "transparent HTTP request argument {other:?} is not bytes"
        ))),
    };
    let head = bytes_of(head)?;
    let body = body.map(bytes_of).transpose()?.unwrap_or_default();
    let head = parse_request_head(&head).map_err(bad_request)?;
    let query = head.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut path_and_query = t.path(req, query)?;
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut headers = head.headers;
    for (key, value) in req.meta.iter() {
        let Some(name) = std::str::from_utf8(key).ok().and_then(motan_header) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            headers.insert(n, v);
        }
    }
    if !headers.contains_key(header::HOST)
        && let Some(d) = &t.domain
    {
        headers.insert(header::HOST, d.clone());
    }
    add_forwarded_for(&mut headers, &req.meta);
    let mut http_req = Request::new(Full::new(body));
    *http_req.method_mut() = head.method;
    *http_req.uri_mut() = t.uri(path_and_query)?;
    *http_req.headers_mut() = headers;
    Ok(http_req)
}

/// The answer's value: [raw response header block, body].
pub(super) fn reply_value(reply: HttpReply) -> Value {
    let head = write_response_head(reply.status, &reply.headers);
    Value::Array(vec![Value::Bytes(Bytes::from(head)), Value::Bytes(reply.body)])
}
