//! The demo's findings: per-role numbers from an agent's /metrics, and the human summary.
use serde_json::{Value, json};

use crate::SERVICE;

/// Request count and mean latency (µs) of one role from the agent's /metrics text.
pub fn role_metrics(text: &str, role: &str) -> Value {
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains(&format!("role=\"{role}\"")) && l.contains(SERVICE))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let count = value("sockmesh_request_duration_seconds_count");
    let sum = value("sockmesh_request_duration_seconds_sum");
    json!({
        "requests": count as u64,
        "mean_us": if count > 0.0 { (sum / count * 1e6).round() as u64 } else { 0 },
    })
}

pub fn yes_no(call: &Value) -> &'static str {
    if call["seen_proxy"] == "1" { "yes" } else { "no" }
}

pub fn print_summary(v: &Value) {
    let n = |x: &Value| x.as_i64().map_or("?".to_string(), |n| n.to_string());
    println!("\nsummary");
    println!(
        "  hosts: host-a {} (client agent, app), host-b {} (server agent, provider), netns removed",
        v["hosts"][0]["address"].as_str().unwrap_or("?"),
        v["hosts"][1]["address"].as_str().unwrap_or("?")
    );
    println!(
        "\n  latency seen by the app on host-a (µs; open loop {} req/s, 1 connection, {} ms per path)",
        v["load"]["rate"], v["load"]["duration_ms"]
    );
    println!(
        "  {:<14} {:<64} {:>8} {:>6} {:>6} {:>6} {:>6}",
        "run", "path", "requests", "errors", "p50", "p90", "p99"
    );
    for label in ["direct", "server_agent", "mesh"] {
        let l = &v["latency"][label];
        let r = &l["result"];
        println!(
            "  {:<14} {:<64} {:>8} {:>6} {:>6} {:>6} {:>6}",
            label,
            l["path"].as_str().unwrap_or("?"),
            n(&r["ok"]),
            n(&r["errors"]),
            n(&r["latency_us"]["p50"]),
            n(&r["latency_us"]["p90"]),
            n(&r["latency_us"]["p99"])
        );
    }
    let h = &v["hops_p50_us"];
    println!("\n  per hop (differences of the p50s)");
    println!(
        "    server agent on host-b (export -> provider)           {:>+6} µs",
        h["server_agent"].as_i64().unwrap_or(0)
    );
    println!(
        "    client agent on host-a, with the eBPF redirect        {:>+6} µs",
        h["client_agent_and_interception"].as_i64().unwrap_or(0)
    );
    println!(
        "    whole mesh vs direct                                  {:>+6} µs",
        h["mesh_total"].as_i64().unwrap_or(0)
    );
    let (cm, sm) = (&v["client_agent"]["metrics"], &v["server_agent"]["metrics"]);
    println!("\n  inside the agents (metrics filter, mean over every request)");
    println!(
        "    client agent: request to host-b and back             {:>7} µs over {} requests",
        n(&cm["mean_us"]),
        n(&cm["requests"])
    );
    println!(
        "    server agent: request to the provider and back       {:>7} µs over {} requests",
        n(&sm["mean_us"]),
        n(&sm["requests"])
    );
    let c = &v["client_agent"];
    let s = &v["server_agent"];
    println!("\n  counters (sockmesh status --json)");
    println!(
        "    client agent  cgroup {}: redirected {}, passed {}, fail-open {}",
        v["cgroup"].as_str().unwrap_or("?"),
        n(&c["cgroup"]["redirected"]),
        n(&c["cgroup"]["passed"]),
        n(&c["cgroup"]["fail_open"])
    );
    println!(
        "                  transparent listener: accepted {}, routed by the mesh {}, passed through {}; client role: {} requests on {} connections",
        n(&c["transparent_proxy"]["accepted"]),
        n(&c["transparent_proxy"]["routed"]),
        n(&c["transparent_proxy"]["forwarded"]),
        n(&c["agent_port"]["requests"]),
        n(&c["agent_port"]["connections"])
    );
    let ep = &c["cluster"]["endpoints"][0];
    println!(
        "                  cluster {} ({}): endpoint {} available={}",
        c["cluster"]["name"].as_str().unwrap_or("?"),
        c["cluster"]["service"].as_str().unwrap_or("?"),
        ep["address"].as_str().unwrap_or("?"),
        ep["available"]
    );
    println!(
        "    server agent  export {}: {} requests on {} connections -> provider {}",
        v["addresses"]["export"].as_str().unwrap_or("?"),
        n(&s["export_ports"]["requests"]),
        n(&s["export_ports"]["connections"]),
        s["exports"][0]["provider"]["address"].as_str().unwrap_or("?")
    );
    println!(
        "\ndemo ok: the intercepted app reached {} through both agents; teardown problems: {}",
        v["addresses"]["provider"].as_str().unwrap_or("?"),
        n(&v["teardown"]["problems"])
    );
}
