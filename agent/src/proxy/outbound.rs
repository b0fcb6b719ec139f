//! The client role (4.3): a request from an app (agent port or intercepted connection) is
//! routed by service/group/version to a cluster, sent through HA and the balancer, and the
//! upstream response is relayed back with the caller's request id.
use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::Cluster;
use crate::cluster::route::{RouteRequest, RouteTable, request_defaults};
use crate::filter::{CallInfo, FilterChain, Role};
use crate::protocol::motan2::call::{CallError, error_frame, host, mark_proxied};
use crate::protocol::motan2::frame::FLAG_PROXY;
use crate::protocol::motan2::{Frame, keys};

/// One refer as the client role serves it: its filter chain around the cluster's HA call (so
/// circuits are per refer, like motan-go's cluster filters).
pub struct Refer {
    pub cluster: Arc<Cluster>,
    pub chain: FilterChain,
}

pub struct Router {
    table: RouteTable,
    refers: Vec<Refer>,
}

/// The cluster's answer, or the exception frame for its error.
async fn call_cluster(cluster: &Arc<Cluster>, req: Frame, caller_id: u64) -> Frame {
    match cluster.call(req).await {
        Ok(resp) => resp,
        Err(e) => error_frame(caller_id, &e),
    }
}

impl Router {
    /// `refers` in the order the route table is built from.
    pub fn new(refers: Vec<Refer>) -> Router {
        let urls = refers.iter().map(|r| (*r.cluster.refer()).clone()).collect();
        Router {
            table: RouteTable::new(urls),
            refers,
        }
    }

    pub fn refers(&self) -> &[Refer] {
        &self.refers
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.refers.iter().map(|r| &r.cluster)
    }

    fn route(&self, req: &Frame) -> Result<&Refer, CallError> {
        let m = &req.meta;
        let r = RouteRequest {
            service: m.get(keys::SERVICE).unwrap_or(""),
            group: m.get(keys::GROUP).unwrap_or(""),
            version: m.get(keys::VERSION).unwrap_or(""),
            proxy_protocol: m.get(keys::PROXY_PROTOCOL).unwrap_or(""),
        };
        // Against each cluster's current refer: its group may have been resolved (`${idc}`).
        let current = |i: usize, r: &RouteRequest<'_>| {
            let u = self.refers[i].cluster.refer();
            u.is_match(r.service, r.group, r.proxy_protocol, r.version)
        };
        match self.table.route_by(&r, current) {
            Ok(i) => Ok(&self.refers[i]),
            Err(e) => Err(e.to_call_error()),
        }
    }

    /// Whether some cluster would take this request (intercepted connections whose first
    /// request names no known service are passed through to their original destination).
    pub fn routes(&self, req: &Frame) -> bool {
        self.route(req).is_ok()
    }

    /// Handle one request from `peer_ip`; always answers (an exception frame on failure).
    pub async fn handle(&self, mut req: Frame, peer_ip: &Bytes) -> Frame {
        mark_proxied(&mut req, peer_ip);
        match self.route(&req) {
            Ok(r) => r.call(req).await,
            Err(e) => error_frame(req.header.request_id, &e),
        }
    }
}

impl Refer {
    /// Send one (proxied) request through the refer's filters and cluster, its defaults
    /// filled (4.3 step 3); the answer carries the caller's request id.
    pub async fn call(&self, mut req: Frame) -> Frame {
        let caller_id = req.header.request_id;
        let (cluster, chain) = (&self.cluster, &self.chain);
        let refer = cluster.refer();
        let d = request_defaults(
            &refer,
            req.meta.get(keys::SOURCE),
            req.meta.get("application"),
            req.meta.get(keys::GROUP),
        );
        if let Some(s) = d.source {
            req.meta.insert(keys::SOURCE, Bytes::from(s));
        }
        if let Some(g) = d.group {
            req.meta.insert(keys::GROUP, Bytes::from(g));
        }
        // Without filters no CallInfo is built (it copies the request's well-known meta).
        let mut resp = if chain.is_empty() {
            call_cluster(cluster, req, caller_id).await
        } else {
            let info = CallInfo::from_request(Role::ClientAgent, &req, refer, host(&req));
            let terminal = |r: Frame| call_cluster(cluster, r, caller_id);
            chain.call(req, &info, terminal).await
        };
        resp.header.request_id = caller_id;
        resp.header.set_flag(FLAG_PROXY, true);
        resp
    }
}
