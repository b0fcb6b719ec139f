//! The local short-cut (issue #17): an endpoint that is one of this agent's own export
//! listeners is called in-process through the server role instead of over TCP. The server role
//! lives in a higher layer (`proxy`), so the cluster only knows it as this trait.
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::protocol::motan2::Frame;
use crate::url::Url;

/// This agent's server role, as a cluster may call it.
pub trait LocalExports: Send + Sync + 'static {
    /// Whether `endpoint` (host and port) is one of this agent's own export listeners, i.e. a
    /// TCP connect to it would reach this process. Cheap: asked on every call.
    fn is_local(&self, endpoint: &Url) -> bool;

    /// Hand `req` to the export listener at `port` as if it had arrived over a connection from
    /// `peer_ip`: the server role's dispatch, filters and provider call. Always answers (an
    /// exception frame on failure).
    fn call(&self, port: u16, req: Frame, peer_ip: Bytes) -> Pin<Box<dyn Future<Output = Frame> + Send>>;
}
