//! `proxyAddress` mode ("DoProxy", spec 4.12): a Motan2 request from an RPC client becomes an
//! HTTP request to the application. Method from meta `HTTP_Method`, else the service's
//! `HTTP_REQUEST_METHOD`; path `M_m`, rewritten by the domain's `http-locations` when
//! rewriting is on; query `HTTP_QueryString`; headers from meta; body from the one argument.
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request};
use http_body_util::Full;

use super::mapping::{
    bad_request, escape_path, escape_query, meta_keys, request_headers, single_argument, value_type_name,
};
use crate::config::http_locations::LocationMatcher;
use crate::protocol::motan2::simple::{Value, ValueLimits};
use crate::protocol::motan2::{Exception, Frame, keys};

/// Where and how proxy-mode (and transparent) requests go.
pub(super) struct ProxyTarget {
    /// The URI authority (`host:port`; `localhost` for a unix socket, which the connector
    /// reaches whatever the URI says).
    pub authority: Authority,
    pub domain: Option<HeaderValue>,
    pub default_method: Method,
    pub rewrite: Option<Arc<LocationMatcher>>,
}

impl ProxyTarget {
    /// The path sent upstream: `M_m`, rewritten when rewriting is on; no matching location is
    /// exception 404 errtype 2, as motan-go answers.
    pub(super) fn path(&self, req: &Frame, query: &str) -> Result<String, Exception> {
        let method = req
            .meta
            .get_bytes(keys::METHOD)
            .map(Bytes::as_ref)
            .unwrap_or_default();
        let Some(matcher) = &self.rewrite else {
            return Ok(escape_path(method));
        };
        let path = String::from_utf8_lossy(method);
        match matcher.pick(&path, query) {
            Some((_, rewritten)) => Ok(escape_path(rewritten.as_bytes())),
            None => Err(Exception::business(
                404,
                format!(
                    "HTTP provider: service not found: no http-locations rule of domain {} matches {path:?}",
                    self.domain
                        .as_ref()
                        .map(|d| String::from_utf8_lossy(d.as_bytes()).into_owned())
                        .unwrap_or_default()
                ),
            )),
        }
    }

    pub(super) fn uri(&self, path_and_query: String) -> Result<Uri, Exception> {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| bad_request(format!("path/query cannot form a URL: {e}")))
    }
}

/// Map the Motan2 request to the HTTP request (spec 4.12 table).
pub(super) fn request(
    req: &Frame,
    t: &ProxyTarget,
    values: ValueLimits,
) -> Result<Request<Full<Bytes>>, Exception> {
    let method = match req.meta.get_non_empty(meta_keys::HTTP_METHOD) {
        Some(m) => Method::from_bytes(m.as_bytes())
            .map_err(|_| bad_request(format!("{m:?} is not an HTTP method")))?,
        None => t.default_method.clone(),
    };
    let arg = single_argument(req, values).map_err(bad_request)?;
    let mut headers = request_headers(&req.meta, t.domain.as_ref());
    let mut query = req
        .meta
        .get_bytes(meta_keys::HTTP_QUERY_STRING)
        .map(|q| escape_query(q))
        .unwrap_or_default();
    let body = match arg {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(b) | Value::Bytes(b)) => b,
        Some(Value::StringMap(entries)) => {
            // Keys are escaped too (motan-go writes them raw).
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
    // The rewrite sees the final query (regexpVar rules read it), as in motan-go.
    let mut path_and_query = t.path(req, &query)?;
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&query);
    }
    let mut http_req = Request::new(Full::new(body));
    *http_req.method_mut() = method;
    *http_req.uri_mut() = t.uri(path_and_query)?;
    *http_req.headers_mut() = headers;
    Ok(http_req)
}
