//! Agent state on `/metrics` besides the per-request families of the metrics filter: endpoint
//! and pool health of every cluster, the agent port's connection counters, and the
//! interception counters read from the BPF maps (or the iptables chain) at scrape time.
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::Value;

use crate::control::AppState;

type Labels = Vec<(&'static str, String)>;

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
        let mesh = state.mesh.load().status_json();
        let mut available = Vec::new();
        let mut active = Vec::new();
        let mut errors = Vec::new();
        let mut channels = Vec::new();
        for c in mesh["clusters"].as_array().into_iter().flatten() {
            for e in c["endpoints"].as_array().into_iter().flatten() {
                let l: Labels = vec![
                    ("cluster", c["name"].as_str().unwrap_or("").to_string()),
                    ("service", c["service"].as_str().unwrap_or("").to_string()),
                    ("endpoint", e["address"].as_str().unwrap_or("").to_string()),
                ];
                available.push((l.clone(), num(&e["available"])));
                active.push((l.clone(), num(&e["active"])));
                errors.push((l.clone(), num(&e["consecutive_errors"])));
                channels.push((l, num(&e["channels"])));
            }
        }
        family(
            &mut enc,
            "endpoint_available",
            "1 when the endpoint takes requests",
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
