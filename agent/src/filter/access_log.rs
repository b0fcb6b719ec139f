//! `accessLog` (motan-go filter/accessLog.go, spec 4.7): one structured line per request,
//! target `sockmesh::access`, with the fields upstream's access log has: role, conf id,
//! service, method, method descriptor, peer address, request id, response code (the
//! exception's errcode, else the response's `upstreamCode`, else 200), success, request and
//! response body sizes, process time reported by upstream (`M_pt`, ms), total latency (µs), and
//! the exception JSON. `/logConfig/set?access=false` silences every accessLog filter at once.
use std::sync::Arc;
use std::time::Instant;

use super::{CallInfo, Filter, FilterFuture, FilterShared, Next};
use crate::protocol::motan2::{Frame, keys as meta_keys};
use crate::url::Url;

pub const NAME: &str = "accessLog";
pub const INDEX: i32 = 1;
/// Meta key of an HTTP upstream's status (set by HTTP providers).
pub const UPSTREAM_CODE: &str = "upstreamCode";
/// Tracing target of the lines.
pub const TARGET: &str = "sockmesh::access";

struct AccessLog {
    shared: Arc<FilterShared>,
}

pub fn build(_url: &Url, shared: &Arc<FilterShared>) -> Arc<dyn Filter> {
    Arc::new(AccessLog {
        shared: shared.clone(),
    })
}

/// The response code upstream's access log shows: errcode, else `upstreamCode`, else 200.
pub fn response_code(resp: &Frame) -> i64 {
    if let Some(e) = super::exception_of(resp) {
        return e.errcode;
    }
    resp.meta
        .get(UPSTREAM_CODE)
        .and_then(|c| c.parse().ok())
        .unwrap_or(200)
}

impl Filter for AccessLog {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        if !self.shared.access_log_enabled() {
            return next.run(req, info);
        }
        Box::pin(async move {
            let start = Instant::now();
            let request_id = req.as_request().map_or(0, |r| r.logical_request_id());
            let req_size = req.body.len();
            let resp = next.run(req, info).await;
            let latency_us = start.elapsed().as_micros() as u64;
            let exception = resp
                .meta
                .get(meta_keys::EXCEPTION)
                .filter(|_| resp.is_exception());
            tracing::info!(
                target: TARGET,
                role = info.role.as_str(),
                conf_id = %info.conf_id,
                service = %info.service,
                method = %info.method,
                desc = %info.method_desc,
                peer = %info.peer,
                request_id,
                code = response_code(&resp),
                success = !resp.is_exception(),
                req_size,
                res_size = resp.body.len(),
                biz_time_ms = resp.as_response().and_then(|r| r.process_time()).map_or(0, |d| d.as_millis() as u64),
                latency_us,
                exception = exception.unwrap_or(""),
                "access"
            );
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::test_support::*;
    use crate::protocol::motan2::ErrorType;

    #[tokio::test]
    async fn one_line_per_request_with_the_call_fields() {
        let (lines, _guard) = capture_logs();
        let shared = FilterShared::new();
        let url = refer(&[("filter", "accessLog")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"twelve bytes"));
        let i = info(url, "hello");
        let mut req = request(42, "hello");
        req.meta.insert("M_rid", "-9");
        call(&chain, &i, &up, req).await;
        up.set(Answer::Fail(ErrorType::Business, 503));
        call(&chain, &i, &up, request(43, "hello")).await;

        let logged = lines.access_lines();
        assert_eq!(logged.len(), 2, "{logged:?}");
        let f = &logged[0]["fields"];
        assert_eq!(f["message"], "access");
        assert_eq!(f["role"], "client-agent");
        assert_eq!(f["conf_id"], "hello");
        assert_eq!(f["service"], "com.example.Hello");
        assert_eq!(f["method"], "hello");
        assert_eq!(f["peer"], "127.0.0.1:9982");
        assert_eq!(f["request_id"], -9, "M_rid is the logical id");
        assert_eq!(f["code"], 200);
        assert_eq!(f["success"], true);
        assert_eq!(f["req_size"], 7);
        assert_eq!(f["res_size"], 12);
        assert_eq!(f["biz_time_ms"], 1);
        assert!(f["latency_us"].as_u64().is_some());
        assert_eq!(f["exception"], "");
        let f = &logged[1]["fields"];
        assert_eq!(
            (&f["request_id"], &f["code"], &f["success"]),
            (&43.into(), &503.into(), &false.into())
        );
        assert_eq!(
            f["exception"],
            r#"{"errcode":503,"errmsg":"upstream failed","errtype":2}"#
        );
        assert_eq!(logged[1]["target"], TARGET);
    }

    #[tokio::test]
    async fn toggled_off_writes_nothing_and_on_again_resumes() {
        let (lines, _guard) = capture_logs();
        let shared = FilterShared::new();
        let url = refer(&[("filter", "accessLog")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        shared.set_access_log(false);
        call(&chain, &i, &up, request(1, "hello")).await;
        assert_eq!((lines.access_lines().len(), up.calls()), (0, 1));
        shared.set_access_log(true);
        call(&chain, &i, &up, request(2, "hello")).await;
        assert_eq!(lines.access_lines().len(), 1);
    }

    #[test]
    fn code_prefers_errcode_then_upstream_code() {
        let req = request(1, "m");
        let mut ok = Frame::response_to(&req, bytes::Bytes::new());
        assert_eq!(response_code(&ok), 200);
        ok.meta.insert(UPSTREAM_CODE, "404");
        assert_eq!(response_code(&ok), 404);
        ok.meta.insert(UPSTREAM_CODE, "x");
        assert_eq!(response_code(&ok), 200);
        let e = crate::filter::reject(&req, &crate::protocol::motan2::Exception::service(1001, "none"));
        assert_eq!(response_code(&e), 1001);
    }
}
