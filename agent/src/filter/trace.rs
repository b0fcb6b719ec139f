//! `trace`: carry the trace context across this hop and log one span line per request.
//!
//! motan-go's trace filter is OpenTracing with a pluggable tracer, whose meta keys depend on
//! the tracer (spec 6 lists it as unspecified). Here the context is W3C Trace Context in meta
//! `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), which tracing
//! libraries read as they are:
//! - no (valid) `traceparent`: a new trace starts here (random trace and span ids, sampled);
//! - otherwise the trace id and flags are kept and the parent id becomes this hop's span id, so
//!   the next hop's span is a child of ours; `tracestate` and other keys pass unchanged.
//!
//! The request id travels in `M_rid` (spec 1.9): it is added from the header id when absent, so
//! the id in every hop's logs is the caller's.
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::call::{CallInfo, Filter, FilterFuture, Next, exception_of};
use crate::protocol::motan2::{Frame, keys as meta_keys};
use crate::url::Url;

pub const NAME: &str = "trace";
pub const INDEX: i32 = 2;
/// Meta key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

struct Trace;

pub fn build(_url: &Url) -> Arc<dyn Filter> {
    Arc::new(Trace)
}

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Version 00 fields (future versions: the first four fields are read the same way).
    pub fn parse(v: &str) -> Option<TraceParent> {
        let mut parts = v.split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then_some(s)
        }
        if hex(version, 2)? == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let parent_id = u64::from_str_radix(hex(parent, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// Set this hop's context on `req`: returns (trace id, this span's id, the parent span id (0
/// for a new trace)).
fn propagate(req: &mut Frame) -> (u128, u64, u64) {
    let span_id = nonzero_u64();
    let incoming = req.meta.get(TRACEPARENT).and_then(TraceParent::parse);
    let (trace_id, parent_id, flags) = match incoming {
        Some(tp) => (tp.trace_id, tp.parent_id, tp.flags),
        None => (
            (u128::from(nonzero_u64()) << 64) | u128::from(fastrand::u64(..)),
            0,
            1,
        ),
    };
    let out = TraceParent {
        trace_id,
        parent_id: span_id,
        flags,
    };
    req.meta.insert(TRACEPARENT, Bytes::from(out.encode()));
    if !req.meta.contains(meta_keys::REQUEST_ID) {
        let rid = (req.header.request_id as i64).to_string();
        req.meta.insert(meta_keys::REQUEST_ID, Bytes::from(rid));
    }
    (trace_id, span_id, parent_id)
}

impl Filter for Trace {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn call<'a>(&'a self, mut req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let (trace_id, span_id, parent_id) = propagate(&mut req);
            let request_id = req.as_request().map_or(0, |r| r.logical_request_id());
            let resp = next.run(req, info).await;
            let exception = exception_of(&resp);
            tracing::info!(
                target: "sockmesh::trace",
                trace_id = %format_args!("{trace_id:032x}"),
                span_id = %format_args!("{span_id:016x}"),
                parent_id = %format_args!("{parent_id:016x}"),
                role = info.role.as_str(),
                service = %info.service,
                method = %info.method,
                group = %info.group,
                peer = %info.peer,
                request_id,
                duration_us = start.elapsed().as_micros() as u64,
                error = exception.is_some(),
                error_kind = exception.as_ref().map_or(-1, |e| e.errtype as i64),
                "span"
            );
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;

    #[test]
    fn traceparent_parse_and_encode() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(v).unwrap();
        assert_eq!(
            (tp.trace_id, tp.parent_id, tp.flags),
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)
        );
        assert_eq!(tp.encode(), v);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x").is_some());
    }

    #[tokio::test]
    async fn starts_a_trace_and_adds_the_request_id() {
        let (logs, _guard) = capture_logs();
        let chain = FilterChain::build(&refer(&[("filter", "trace")]), &FilterShared::new()).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(refer(&[]), "hello");
        call(&chain, &i, &up, request(u64::MAX, "hello")).await;
        let sent = up.last_request.lock().unwrap().clone().unwrap();
        let tp = TraceParent::parse(sent.meta.get(TRACEPARENT).unwrap()).unwrap();
        assert!(tp.trace_id != 0 && tp.parent_id != 0);
        assert_eq!(tp.flags, 1);
        assert_eq!(sent.meta.get("M_rid"), Some("-1"), "header id as signed decimal");
        let spans = logs.lines("sockmesh::trace");
        assert_eq!(spans.len(), 1);
        let f = &spans[0]["fields"];
        assert_eq!(f["trace_id"], format!("{:032x}", tp.trace_id));
        assert_eq!(
            f["span_id"],
            format!("{:016x}", tp.parent_id),
            "our span is the next parent"
        );
        assert_eq!(f["parent_id"], "0000000000000000");
        assert_eq!(
            (&f["request_id"], &f["method"], &f["error"]),
            (&(-1).into(), &"hello".into(), &false.into())
        );
    }

    #[tokio::test]
    async fn continues_an_incoming_trace_and_keeps_the_callers_request_id() {
        let chain = FilterChain::build(&refer(&[("filter", "trace")]), &FilterShared::new()).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(refer(&[]), "hello");
        let mut req = request(5, "hello");
        req.meta.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        req.meta.insert("tracestate", "k=v");
        req.meta.insert("M_rid", "123");
        call(&chain, &i, &up, req).await;
        let sent = up.last_request.lock().unwrap().clone().unwrap();
        let tp = TraceParent::parse(sent.meta.get(TRACEPARENT).unwrap()).unwrap();
        assert_eq!((tp.trace_id, tp.flags), (0x4bf92f3577b34da6a3ce929d0e0e4736, 0));
        assert_ne!(
            tp.parent_id, 0x00f067aa0ba902b7,
            "our span is the next hop's parent"
        );
        assert_eq!(sent.meta.get("tracestate"), Some("k=v"));
        assert_eq!(sent.meta.get("M_rid"), Some("123"));
    }
}
