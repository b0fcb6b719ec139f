//! "URL format" mode (spec 4.12, motan-go's DoFormatURLQuery; also the early provider's
//! `HTTP_URL`): the URL is `URL_FORMAT` with `%s` replaced by `M_m` (a method's own
//! `http-service` entry, else the `http_default_motan_method` entry, overrides URL and HTTP
//! method; meta `HTTP_Method` overrides the method). The argument becomes
//! `requestIdFromClient=<id>&k=v...`: the query of a GET, the form body of a POST (other
//! methods send neither, as motan-go). Every meta entry is sent as a header with `M_` replaced
//! by `MOTAN-`; the answer's value is the body as a string (tag 01, not motan-go's proxy-mode
//! byte array: sharp edge 15), its meta the request's meta plus the response headers.
use std::collections::HashMap;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;

use super::mapping::{
    REQUEST_HEADERS_NOT_FORWARDED, add_forwarded_for, bad_request, escape_path, go_query_escape, meta_keys,
    response_meta, single_argument, value_type_name,
};
use crate::config::http::{DEFAULT_METHOD_CONF, MethodFormat, UrlFormat};
use crate::protocol::motan2::simple::{Value, ValueLimits};
use crate::protocol::motan2::{Exception, Frame, Meta, keys};

/// motan-go's query key for the caller's request id.
const REQUEST_ID_KEY: &str = "requestIdFromClient";

pub(super) struct FormatTarget {
    pub url: Option<UrlFormat>,
    pub methods: HashMap<String, MethodFormat>,
    pub default_method: Method,
}

/// The HTTP request and its URL (for messages).
pub(super) fn request(
    req: &Frame,
    t: &FormatTarget,
    values: ValueLimits,
) -> Result<(Request<Full<Bytes>>, String), Exception> {
    let m = req.meta.get(keys::METHOD).unwrap_or_default();
    let own = t.methods.get(m).or_else(|| t.methods.get(DEFAULT_METHOD_CONF));
    let url = own
        .and_then(|f| f.url.as_ref())
        .or(t.url.as_ref())
        .ok_or_else(|| Exception::business(503, format!("HTTP provider: no URL_FORMAT for method {m:?}")))?;
    let mut method = own
        .and_then(|f| f.method.clone())
        .unwrap_or_else(|| t.default_method.clone());
    if let Some(over) = req.meta.get_non_empty(meta_keys::HTTP_METHOD) {
        method = Method::from_bytes(over.as_bytes())
            .map_err(|_| bad_request(format!("{over:?} is not an HTTP method")))?;
    }
    // The method goes into the URL as a path piece: escaped, without the leading `/` that
    // escape_path adds (a format like `http://h/api/%s` decides about slashes itself).
    let method_piece = escape_path(m.as_bytes());
    let method_piece = if m.starts_with('/') {
        &method_piece[..]
    } else {
        &method_piece[1..]
    };
    let mut url = url.url(method_piece);
    let query = query_string(req, values)?;
    let body = if method == Method::GET {
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query);
        }
        Bytes::new()
    } else if method == Method::POST {
        Bytes::from(go_form_encode(&query))
    } else {
        Bytes::new()
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| Exception::business(503, format!("HTTP provider: {url:?} is not a URL: {e}")))?;
    let mut headers = HeaderMap::with_capacity(req.meta.len() + 2);
    // Set whatever the method, as motan-go does (form bodies need it).
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    for (key, value) in req.meta.iter() {
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.replace("M_", "MOTAN-").as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) else {
            continue;
        };
        // `host` is the caller's IP (Go's client ignores a Host header anyway).
        if !REQUEST_HEADERS_NOT_FORWARDED.contains(&name) && name != header::CONTENT_TYPE {
            headers.append(name, value);
        }
    }
    add_forwarded_for(&mut headers, &req.meta);
    let mut http_req = Request::new(Full::new(body));
    *http_req.method_mut() = method;
    *http_req.uri_mut() = uri;
    *http_req.headers_mut() = headers;
    Ok((http_req, url))
}

/// `requestIdFromClient=<id>` and the argument: a map as `&k=v` pairs (values escaped, keys
/// raw, as motan-go), a string (or bytes) as `&<escaped>`; nothing without an argument.
fn query_string(req: &Frame, values: ValueLimits) -> Result<String, Exception> {
    let arg = single_argument(req, values).map_err(bad_request)?;
    let mut q = String::new();
    let rid = |q: &mut String| {
        q.push_str(REQUEST_ID_KEY);
        q.push('=');
        q.push_str(&req.header.request_id.to_string());
    };
    match arg {
        None | Some(Value::Null) => {}
        Some(Value::StringMap(entries)) => {
            rid(&mut q);
            for (k, v) in &entries {
                q.push('&');
                q.push_str(&String::from_utf8_lossy(k));
                q.push('=');
                q.push_str(&go_query_escape(v));
            }
        }
        Some(Value::String(s) | Value::Bytes(s)) => {
            rid(&mut q);
            q.push('&');
            q.push_str(&go_query_escape(&s));
        }
        Some(other) => {
            return Err(bad_request(format!(
                "unsupported argument type {}: one map<string,string> or string argument is allowed",
                value_type_name(&other)
            )));
        }
    }
    Ok(q)
}

/// Go's `url.ParseQuery(q).Encode()`: keys sorted, keys and values escaped, `k=` for a key
/// without value.
fn go_form_encode(q: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                go_query_escape(k.as_bytes()),
                go_query_escape(v.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The answer's meta: the request's meta, then the response headers.
pub(super) fn reply_meta(req: &Frame, headers: &HeaderMap) -> Meta {
    let mut meta = Meta::with_capacity(req.meta.len() + headers.len() + 2);
    for (k, v) in req.meta.iter() {
        meta.insert(k.clone(), v.clone());
    }
    response_meta(headers, &mut meta);
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_bodies_are_go_form_encoded() {
        assert_eq!(
            go_form_encode("requestIdFromClient=7&b=2&a=x+y"),
            "a=x+y&b=2&requestIdFromClient=7"
        );
        assert_eq!(
            go_form_encode("requestIdFromClient=7&hello+world"),
            "hello+world=&requestIdFromClient=7"
        );
    }
}
