//! What a filter is and sees: the [`Filter`] trait and its [`Next`] step, observers, the
//! [`CallInfo`] of a call, and the frame helpers filters answer with. Every filter builds on
//! this file only; the chain and the filter table are in `filter/mod.rs`.
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::motan2::frame::{FLAG_PROXY, serialization};
use crate::protocol::motan2::{Exception, Frame};
use crate::url::{Url, keys};

/// Which side of the mesh a call is on. Names as upstream logs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Outbound: a local application's request on its way to a remote service.
    ClientAgent,
    /// Inbound: a remote caller's request on its way to the local provider.
    ServerAgent,
}

impl Role {
    /// `client-agent` / `server-agent`, as upstream's access log writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ClientAgent => "client-agent",
            Role::ServerAgent => "server-agent",
        }
    }

    /// `motan-client-agent` / `motan-server-agent`, the first part of upstream's metrics keys.
    pub fn metrics_key(self) -> &'static str {
        match self {
            Role::ClientAgent => "motan-client-agent",
            Role::ServerAgent => "motan-server-agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a filter knows about the call besides the frame. Built once per request by the request
/// path (from the request's meta and the refer/service it was routed to); its text fields share
/// the request frame's buffer, so building and cloning it copies no strings.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub role: Role,
    /// `M_p`.
    pub service: ByteString,
    /// `M_m`.
    pub method: ByteString,
    /// `M_md`.
    pub method_desc: ByteString,
    pub group: ByteString,
    /// The caller's IP: the app (client side, where the chain wraps the whole cluster call, so
    /// no endpoint is chosen yet) or the calling agent (server side).
    pub peer: ByteString,
    /// The refer (client side) or service (server side) URL the chain was built from.
    pub url: Arc<Url>,
}

impl CallInfo {
    /// A call's info from a request frame's well-known keys and the URL it was routed to (group
    /// from `M_g`, else the URL's group).
    pub fn from_request(role: Role, req: &Frame, url: Arc<Url>, peer: ByteString) -> CallInfo {
        use crate::protocol::motan2::keys as mk;
        let meta = |k| req.meta.get_shared(k).unwrap_or_default();
        let group = match req.meta.get_shared(mk::GROUP).filter(|g| !g.is_empty()) {
            Some(g) => g,
            None => ByteString::from(url.group.as_str()),
        };
        CallInfo {
            role,
            service: meta(mk::SERVICE),
            method: meta(mk::METHOD),
            method_desc: meta(mk::METHOD_DESC),
            group,
            peer,
            url,
        }
    }

    /// The refer's or service's `conf-id` (switch names are derived from it).
    pub fn conf_id(&self) -> &str {
        self.url.get_str(keys::CONF_ID, "")
    }
}

/// The future a filter (or the terminal) returns: the response frame.
pub type FilterFuture<'a> = Pin<Box<dyn Future<Output = Frame> + Send + 'a>>;

pub(super) type Terminal<'a> = Box<dyn FnOnce(Frame) -> FilterFuture<'a> + Send + 'a>;

/// One filter. Implementations keep per-request work small: no string formatting or map
/// building unless they log or answer themselves.
pub trait Filter: Send + Sync {
    /// The configuration name (`accessLog`, `rateLimit`, ...).
    fn name(&self) -> &'static str;
    /// Nesting position: lower = outer (spec 4.7).
    fn index(&self) -> i32;
    /// Handle one request: answer it, or pass it on with `next.run(req, info)`.
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a>;
    /// A filter that only looks at finished calls ([`Observing`]) returns its observer here.
    /// The outermost run of such filters is then called after the call instead of wrapping it
    /// in futures of their own: the default chain (accessLog, metrics) adds no allocation or
    /// future to the request path.
    fn observer(&self) -> Option<&dyn Observer> {
        None
    }
}

/// What an observing filter learns of the request before it is passed on.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// `M_rid` when present, else the header id (the caller's logical request id).
    pub request_id: i64,
    /// Request body length.
    pub body_len: usize,
}

impl Sent {
    pub fn of(req: &Frame) -> Sent {
        Sent {
            request_id: req.as_request().map_or(0, |r| r.logical_request_id()),
            body_len: req.body.len(),
        }
    }
}

/// A filter that looks at each finished call and never answers or changes the request; it
/// goes into a chain as [`Observing`].
pub trait Observer: Send + Sync {
    /// The configuration name, as [`Filter::name`].
    fn name(&self) -> &'static str;
    /// Nesting position, as [`Filter::index`].
    fn index(&self) -> i32;
    /// One call finished with `resp` after `elapsed` (measured from entering this filter).
    fn observe(&self, info: &CallInfo, sent: Sent, resp: &Frame, elapsed: Duration);
}

/// An [`Observer`] as a [`Filter`]. Where the chain cannot call it after the call (inside a
/// filter that wraps), it times the rest of the chain and then observes.
pub struct Observing<O>(pub O);

impl<O: Observer> Filter for Observing<O> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn index(&self) -> i32 {
        self.0.index()
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let sent = Sent::of(&req);
            let resp = next.run(req, info).await;
            self.0.observe(info, sent, &resp, start.elapsed());
            resp
        })
    }
    fn observer(&self) -> Option<&dyn Observer> {
        Some(&self.0)
    }
}

/// The rest of the chain after the current filter, ending in the terminal.
pub struct Next<'a> {
    pub(super) rest: &'a [Arc<dyn Filter>],
    pub(super) terminal: Terminal<'a>,
}

impl<'a> Next<'a> {
    /// Pass the request to the next filter (or the terminal) and get its response.
    pub fn run(self, req: Frame, info: &'a CallInfo) -> FilterFuture<'a> {
        match self.rest.split_first() {
            Some((first, rest)) => first.call(
                req,
                info,
                Next {
                    rest,
                    terminal: self.terminal,
                },
            ),
            None => (self.terminal)(req),
        }
    }
}

/// The exception of a response frame (`M_e`; a status-1 frame without one gives the generic
/// remote exception), or None for a success.
pub fn exception_of(resp: &Frame) -> Option<Exception> {
    resp.as_response().and_then(|r| r.exception())
}

/// An exception answered by a filter itself, as motan-go builds it (flags 0x03, serialization 0).
pub fn reject(req: &Frame, e: &Exception) -> Frame {
    Frame::agent_exception(req.header.request_id, e)
}

/// A success answered by a filter itself with an already simple-encoded body (mock, degrade):
/// the request's id, simple serialization, proxy bit like every agent-built response.
pub fn simple_response(req: &Frame, body: Bytes) -> Frame {
    let mut resp = Frame::response_to(req, body);
    resp.header.set_serialization(serialization::SIMPLE);
    resp.header.set_flag(FLAG_PROXY, true);
    resp
}
