//! Agent state on `/metrics` besides the per-request families of the metrics filter: endpoint
//! and pool health of every cluster (totals per cluster; rows per endpoint only for small
//! clusters and endpoints with something to say, bounded, so a fleet's 100,000 idle endpoints
//! are not 400,000 rows), the agent port's connection counters, and the interception counters
//! read from the BPF maps (or the iptables chain) at scrape time.
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::Value;

use crate::control::AppState;

type Labels = Vec<(&'static str, String)>;

/// At most this many per-endpoint rows per family (`Cluster::health` says which endpoints).
const ENDPOINT_ROWS: usize = 1000;

/// Registered once the agent state exists; holds it weakly so the registry does not keep it.
pub struct AgentCollector(pub Weak<AppState>);

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_bool().map(u64::from)).unwrap_or(0)
}

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let fam = m.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v).encode(fam)?,
            _ => ConstGauge::new(*v as i64).encode(fam)?,
        }
    }
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self.0.upgrade() else {
            return Ok(());
        };
        let health = state.mesh.load().endpoint_health(ENDPOINT_ROWS);
        let mut per_cluster: [Vec<(Labels, u64)>; 4] = Default::default();
        let mut available = Vec::new();
        let mut active = Vec::new();
        let mut errors = Vec::new();
        let mut channels = Vec::new();
        for (cluster, service, h) in &health {
            let c: Labels = vec![("cluster", cluster.clone()), ("service", service.clone())];
            for (rows, v) in per_cluster
                .iter_mut()
                .zip([h.endpoints, h.available, h.active, h.channels])
            {
                rows.push((c.clone(), v as u64));
            }
            for e in &h.listed {
                let mut l = c.clone();
                l.push(("endpoint", e.address.clone()));
                available.push((l.clone(), u64::from(e.available)));
                active.push((l.clone(), e.active as u64));
                errors.push((l.clone(), u64::from(e.consecutive_errors)));
                channels.push((l, e.channels as u64));
            }
        }
        let [c_endpoints, c_available, c_active, c_channels] = &per_cluster;
        family(
            &mut enc,
            "cluster_endpoints",
            "Endpoints of the cluster",
            MetricType::Gauge,
            c_endpoints,
        )?;
        family(
            &mut enc,
            "cluster_available_endpoints",
            "Endpoints of the cluster that take requests",
            MetricType::Gauge,
            c_available,
        )?;
        family(
            &mut enc,
            "cluster_active_requests",
            "Requests in flight to the cluster's endpoints",
            MetricType::Gauge,
            c_active,
        )?;
        family(
            &mut enc,
            "cluster_pool_channels",
            "Live upstream connections to the cluster's endpoints",
            MetricType::Gauge,
            c_channels,
        )?;
        family(
            &mut enc,
            "endpoint_available",
            "1 when the endpoint takes requests (rows: see endpoint_rows_omitted)",
            MetricType::Gauge,
            &available,
        )?;
        family(
            &mut enc,
            "endpoint_active_requests",
            "Requests in flight per endpoint",
            MetricType::Gauge,
            &active,
        )?;
        family(
            &mut enc,
            "endpoint_consecutive_errors",
            "Consecutive failed calls per endpoint",
            MetricType::Gauge,
            &errors,
        )?;
        family(
            &mut enc,
            "pool_channels",
            "Live upstream connections per endpoint",
            MetricType::Gauge,
            &channels,
        )?;
        let omitted: usize = health.iter().map(|(_, _, h)| h.endpoints - h.listed.len()).sum();
        family(
            &mut enc,
            "endpoint_rows_omitted",
            "Endpoints without rows of their own: idle and healthy in a cluster of more than 32, or past the 1,000-row bound",
            MetricType::Gauge,
            &[(Vec::new(), omitted as u64)],
        )?;

        let listeners: [(&str, &crate::proxy::serve::ServeStats); 2] =
            [("agent", &state.agent_stats), ("export", &state.export_stats)];
        let mut conns = Vec::new();
        let mut reqs = Vec::new();
        let mut bad = Vec::new();
        for (name, st) in listeners {
            let s = st.snapshot();
            let l: Labels = vec![("listener", name.to_string())];
            conns.push((l.clone(), s.active_connections));
            reqs.push((l.clone(), s.requests));
            bad.push((l, s.bad_frames));
        }
        family(
            &mut enc,
            "listener_open_connections",
            "Open inbound Motan2 connections",
            MetricType::Gauge,
            &conns,
        )?;
        family(
            &mut enc,
            "listener_requests",
            "Motan2 requests received",
            MetricType::Counter,
            &reqs,
        )?;
        family(
            &mut enc,
            "listener_bad_frames",
            "Connections closed for a malformed or oversized frame",
            MetricType::Counter,
            &bad,
        )?;

        if let Ok(i) = state.intercept_json() {
            let mut by = [
                (
                    "intercept_redirected",
                    "Connects steered to the agent, per cgroup",
                    Vec::new(),
                ),
                (
                    "intercept_passed",
                    "Connects left alone by policy, per cgroup",
                    Vec::new(),
                ),
                (
                    "intercept_fail_open",
                    "Connects sent directly because the agent was not listening or was stuck, per cgroup",
                    Vec::new(),
                ),
                (
                    "intercept_fail_open_stalled",
                    "The part of intercept_fail_open sent directly because the agent's heartbeat was stale, per cgroup",
                    Vec::new(),
                ),
            ];
            for c in i["cgroups"].as_array().into_iter().flatten() {
                let l: Labels = vec![
                    ("cgroup", c["cgroup"].as_str().unwrap_or("").to_string()),
                    ("mode", c["mode"].as_str().unwrap_or("").to_string()),
                ];
                by[0].2.push((l.clone(), num(&c["redirected"])));
                by[1].2.push((l.clone(), num(&c["passed"])));
                by[2].2.push((l.clone(), num(&c["fail_open"])));
                by[3].2.push((l, num(&c["fail_open_stalled"])));
            }
            for (name, help, rows) in &by {
                family(&mut enc, name, help, MetricType::Counter, rows)?;
            }
            let h = &i["sockhash"];
            if h.is_object() {
                for (key, name, help) in [
                    (
                        "app_leg_sockets",
                        "sockhash_app_leg_sockets",
                        "Sockets of app<->agent connections (ebpf-sockmap) put into the sockhash",
                    ),
                    (
                        "local_leg_sockets",
                        "sockhash_local_leg_sockets",
                        "Sockets of local legs (exports with sockmesh.sockmap) put into the sockhash",
                    ),
                    (
                        "msg_redirected",
                        "sockhash_msg_redirected",
                        "Messages sk_msg moved into the peer socket without TCP",
                    ),
                    (
                        "bytes_redirected",
                        "sockhash_bytes_redirected",
                        "Bytes sk_msg moved into the peer socket without TCP",
                    ),
                    (
                        "msg_passed",
                        "sockhash_msg_passed",
                        "Messages left to TCP because the peer socket was not in the sockhash",
                    ),
                    (
                        "insert_failed",
                        "sockhash_insert_failed",
                        "Sockhash inserts that failed (those sockets keep the TCP path)",
                    ),
                ] {
                    family(
                        &mut enc,
                        name,
                        help,
                        MetricType::Counter,
                        &[(Vec::new(), num(&h[key]))],
                    )?;
                }
            }
        }
        let p = state.proxy_stats.snapshot();
        let l: Labels = Vec::new();
        family(
            &mut enc,
            "transparent_routed_connections",
            "Intercepted connections handed to the mesh",
            MetricType::Counter,
            &[(l.clone(), p.routed)],
        )?;
        family(
            &mut enc,
            "transparent_forwarded_connections",
            "Intercepted connections forwarded as plain TCP",
            MetricType::Counter,
            &[(l, p.forwarded)],
        )?;
        Ok(())
    }
}

/// Register the agent collector with the filter metrics registry.
pub fn register(state: &Arc<AppState>) {
    state
        .mesh_shared
        .filters
        .registry
        .register_collector(Box::new(AgentCollector(Arc::downgrade(state))));
}
