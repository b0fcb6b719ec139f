//! Call errors as the agent produces and relays them (4.4–4.8): the error of a failed call,
//! the exception frame an agent answers with, and the spec 1.9 preparation of a proxied
//! request. Shared by the client role, the server role, the clusters and the filters.
use std::fmt;

use bytes::Bytes;

use super::frame::FLAG_PROXY;
use super::{ErrorType, Exception, Frame, keys};

/// errcode of "no endpoint available in the cluster" (`ENoEndpoints`).
pub const E_NO_ENDPOINTS: i32 = 1001;
/// errcode of "endpoint could not get a connection" (`ENoChannel`).
pub const E_NO_CHANNEL: i32 = 1002;

/// Exception class of a motan2 error (`M_e` errtype). This is the one place the codec's
/// exception type maps onto: `ErrorKind::from_errtype(e.errtype)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// errtype 0: framework/codec failure; retried; counts against the endpoint.
    Framework,
    /// errtype 1: service/transport failure (timeout, no endpoint, connection); retried;
    /// counts against the endpoint.
    Service,
    /// errtype 2: thrown by the business code; returned at once, never retried, resets the
    /// endpoint's error counter.
    Business,
}

impl ErrorKind {
    /// Unknown values are framework errors, as Java does.
    pub fn from_errtype(errtype: i64) -> ErrorKind {
        match errtype {
            1 => ErrorKind::Service,
            2 => ErrorKind::Business,
            _ => ErrorKind::Framework,
        }
    }

    pub fn errtype(self) -> i32 {
        match self {
            ErrorKind::Framework => 0,
            ErrorKind::Service => 1,
            ErrorKind::Business => 2,
        }
    }
}

/// A failed call as the cluster sees it: an upstream exception response, or an error the
/// agent itself produced (timeout, no endpoint...), which becomes an exception response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub code: i32,
    pub message: String,
    pub kind: ErrorKind,
}

impl CallError {
    pub fn new(code: i32, message: impl Into<String>, kind: ErrorKind) -> CallError {
        CallError {
            code,
            message: message.into(),
            kind,
        }
    }

    /// An agent-built service error (errtype 1), the kind every cluster-level failure has.
    pub fn service(code: i32, message: impl Into<String>) -> CallError {
        CallError::new(code, message, ErrorKind::Service)
    }

    /// Whether HA may try another attempt after this error (not for business errors).
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Business
    }

    /// Whether it counts toward the endpoint's consecutive error threshold.
    pub fn counts_against_endpoint(&self) -> bool {
        self.kind != ErrorKind::Business
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "errcode {} errtype {}: {}",
            self.code,
            self.kind.errtype(),
            self.message
        )
    }
}

impl std::error::Error for CallError {}

/// The error a degraded cluster answers with (4.4, 4.10).
pub fn degraded_error() -> CallError {
    CallError::service(500, "cluster not available, maybe caused by degrade")
}

/// The exception frame the agent answers a failed call with.
pub fn error_frame(request_id: u64, e: &CallError) -> Frame {
    let ex = Exception::new(
        i64::from(e.code),
        e.message.clone(),
        ErrorType::from_i64(i64::from(e.kind.errtype())),
    );
    Frame::agent_exception(request_id, &ex)
}

/// The error an upstream response or a failed call means for HA and endpoint health.
pub fn error_of(r: &Result<Frame, CallError>) -> Option<CallError> {
    match r {
        Err(e) => Some(e.clone()),
        Ok(f) => f.as_response().and_then(|v| v.exception()).map(|e| {
            CallError::new(
                e.errcode as i32,
                e.errmsg,
                ErrorKind::from_errtype(e.errtype as i64),
            )
        }),
    }
}

/// Spec 1.9 rules 1-2, as every motan-go server of an agent applies them: the request is
/// treated as proxied, keeps the caller's id in `M_rid` (the header id is replaced on the next
/// hop), and `host` is the IP it came from (`peer_ip`: the connection's, made once per
/// connection and shared by its requests).
pub fn mark_proxied(req: &mut Frame, peer_ip: &Bytes) {
    req.header.set_flag(FLAG_PROXY, true);
    if !req.meta.contains(keys::REQUEST_ID) {
        let id = req.header.request_id as i64;
        req.meta.insert(keys::REQUEST_ID, decimal(id));
    }
    req.meta.insert(keys::HOST, peer_ip.clone());
}

/// `n` in decimal, formatted on the stack (without `core::fmt`, which costs more than the rest
/// of `mark_proxied`): one exact-size allocation.
fn decimal(n: i64) -> Bytes {
    // 20 bytes hold every i64 ("-9223372036854775808").
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    Bytes::copy_from_slice(&buf[at..])
}

/// The caller IP [`mark_proxied`] recorded, sharing the request's buffer.
pub fn host(req: &Frame) -> bytestring::ByteString {
    req.meta.get_shared(keys::HOST).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errtype_mapping() {
        assert_eq!(ErrorKind::from_errtype(0), ErrorKind::Framework);
        assert_eq!(ErrorKind::from_errtype(1), ErrorKind::Service);
        assert_eq!(ErrorKind::from_errtype(2), ErrorKind::Business);
        assert_eq!(ErrorKind::from_errtype(7), ErrorKind::Framework);
        assert_eq!(ErrorKind::Business.errtype(), 2);
        assert!(!CallError::new(503, "x", ErrorKind::Business).is_retryable());
        assert!(CallError::service(400, "x").is_retryable());
        assert_eq!(degraded_error().code, 500);
    }

    #[test]
    fn mark_proxied_keeps_the_callers_id_and_sets_host() {
        let mut req = Frame::request(u64::MAX, "s", "m", Bytes::new());
        mark_proxied(&mut req, &Bytes::from_static(b"10.0.0.7"));
        assert!(req.header.is_proxy());
        assert_eq!(req.meta.get(keys::REQUEST_ID), Some("-1"));
        assert_eq!(req.meta.get(keys::HOST), Some("10.0.0.7"));
        for n in [0, 7, 10, 42, -1, -10, i64::MIN, i64::MAX] {
            assert_eq!(decimal(n), n.to_string().as_bytes());
        }
        // An M_rid set by an earlier hop stays.
        mark_proxied(&mut req, &Bytes::from_static(b"10.0.0.8"));
        assert_eq!(req.meta.get(keys::REQUEST_ID), Some("-1"));
        assert_eq!(req.meta.get(keys::HOST), Some("10.0.0.8"));
    }
}
