//! The bench report: per case and mode the medians over rounds, paired per-round differences
//! and ratios, as results.json and a Markdown table.
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use super::{Case, Counters, Mode, Options, Run};
use crate::util::median;

fn spread(v: &[f64]) -> (f64, f64) {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    (
        f.iter().copied().fold(f64::INFINITY, f64::min),
        f.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

pub struct Report {
    pub json: serde_json::Value,
    pub markdown: String,
}

impl Report {
    pub fn build(
        runs: &[Run],
        cases: &[Case],
        modes: &[Mode],
        unavailable: &[(Mode, &str)],
        opts: &Options,
        took: Duration,
        agent_idle_rss_kib: u64,
    ) -> Report {
        use std::fmt::Write as _;
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let haproxy = Command::new("haproxy")
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        let cmd = if opts.quick {
            "cargo xtask bench --quick".to_string()
        } else {
            format!("cargo xtask bench --rounds {}", opts.rounds)
        };
        let cmd = if opts.agent_workers > 0 {
            format!("{cmd} --agent-workers {}", opts.agent_workers)
        } else {
            cmd
        };
        let cmd = if opts.modes.is_empty() {
            cmd
        } else {
            let names: Vec<&str> = opts.modes.iter().map(|m| m.name()).collect();
            format!("{cmd} --modes {}", names.join(","))
        };
        let mut md = String::new();
        let _ = writeln!(md, "# sockmesh interception benchmark\n");
        let _ = writeln!(
            md,
            "- command: `{cmd}` ({} round(s), {} ms per run after {} ms warm-up; took {} s)",
            opts.rounds,
            opts.duration.as_millis(),
            opts.warmup.as_millis(),
            took.as_secs()
        );
        let _ = writeln!(
            md,
            "- kernel {kernel}, {} cores; sockmesh {}; {haproxy}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            md,
            "- latency is the full request round trip measured from the intended send time (no coordinated omission); medians over rounds, [min..max] of the per-round values"
        );
        let _ = writeln!(
            md,
            "- proxy CPU = utime+stime of the agent (haproxy in haproxy mode) per 1,000 requests. agent-explicit and the intercepted modes take the full mesh path: the agent's client role routes the Motan2 request to its own export port (server role), which forwards it to the provider (two Motan2 hops in one process); haproxy is one L4 hop"
        );
        let counted_runs = runs.iter().filter(|r| r.counters.is_some()).count();
        let _ = writeln!(
            md,
            "- task-clock, context switches and syscalls per request: `perf stat -p` of the proxy over the measured window, divided by the requests answered in it (counted in {counted_runs} of {} runs; `-` where perf could not count); task-clock is the scheduler's CPU time, finer than the tick-sampled utime+stime of the CPU column",
            runs.iter().filter(|r| r.mode != Mode::Direct).count()
        );
        let _ = writeln!(
            md,
            "- agent-client is the client role alone (agent port -> provider) and agent-server the server role alone (export port -> provider): one Motan2 hop each, like haproxy's one L4 hop"
        );
        let _ = writeln!(
            md,
            "- agent-client serves its connections on the data-plane shards (`sockmesh.shards: true`, the default: one single-threaded runtime per worker thread); agent-client-shared is the same hop through a second agent with `sockmesh.shards: false` (the multi-threaded runtime), agent-client-batch through a second agent with `sockmesh.shard_policy: batch` (the shards' threads SCHED_BATCH: no preemption on wake-up)"
        );
        let _ = writeln!(
            md,
            "- agent-explicit serves its own export in-process (local short-cut); agent-two-hop-tcp and agent-two-hop-skmsg (a second agent, short-cut off) dial their own export port over loopback TCP, the latter with `sockmesh.sockmap: true` on the export, so sk_msg carries both local legs (agent -> export port, export -> provider); the app -> agent port leg is TCP in all three"
        );
        let _ = writeln!(
            md,
            "- agent-explicit-skmsg is agent-explicit (local short-cut) to a service whose export sets `sockmesh.sockmap: true` (its own export port and provider), so sk_msg carries the provider leg; ebpf-sockmap-client is the intercepted app through the client role alone (one hop: app -> agent by sk_msg, agent -> provider over TCP), ebpf-sockmap-legs the same hop to a refer with `sockmesh.sockmap: true` (sk_msg on both local legs)"
        );
        let load_rss = runs
            .iter()
            .filter(|r| {
                !matches!(
                    r.mode,
                    Mode::Direct
                        | Mode::Haproxy
                        | Mode::AgentBaseline
                        | Mode::AgentClientShared
                        | Mode::AgentClientBatch
                )
            })
            .map(|r| r.proxy_rss_kib)
            .max();
        let _ = writeln!(
            md,
            "- agent RSS (interception on): idle {:.1} MiB after start-up, under load {} (peak sampled every 100 ms during the runs)",
            agent_idle_rss_kib as f64 / 1024.0,
            load_rss.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
        for (m, why) in unavailable {
            let _ = writeln!(md, "- mode `{}` not run: {why}", m.name());
        }
        let mut cases_json = BTreeMap::new();
        for case in cases {
            let _ = writeln!(md, "\n## {}\n", case.name);
            let _ = writeln!(
                md,
                "| mode | p50 µs | p90 µs | p99 µs | p99.9 µs | req/s | errors | proxy CPU ms / 1k req | RSS MiB |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            let mut modes_json = BTreeMap::new();
            let per = |m: Mode| -> Vec<&Run> {
                runs.iter()
                    .filter(|r| r.mode == m && r.case == case.name)
                    .collect()
            };
            for m in modes {
                let rs = per(*m);
                let col = |path: &[&str]| rs.iter().map(|r| r.get(path)).collect::<Vec<f64>>();
                let cpu: Vec<f64> = rs
                    .iter()
                    .map(|r| {
                        let n = r.get(&["requests"]);
                        if n > 0.0 {
                            r.proxy_cpu_s * 1e6 / n
                        } else {
                            f64::NAN
                        }
                    })
                    .collect();
                let p = |k: &str| {
                    let v = col(&["latency_us", k]);
                    let (lo, hi) = spread(&v);
                    (median(v), lo, hi)
                };
                let (p50, p90, p99, p999) = (p("p50"), p("p90"), p("p99"), p("p999"));
                let tput = median(col(&["throughput"]));
                let errors: u64 = rs.iter().map(|r| r.errors()).sum();
                let rss = rs.iter().map(|r| r.proxy_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
                let cpu_m = median(cpu.clone());
                let _ = writeln!(
                    md,
                    "| {} | {:.0} [{:.0}..{:.0}] | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                    m.name(),
                    p50.0,
                    p50.1,
                    p50.2,
                    p90.0,
                    p99.0,
                    p999.0,
                    tput,
                    errors,
                    if cpu_m.is_finite() && *m != Mode::Direct {
                        format!("{cpu_m:.1}")
                    } else {
                        "-".into()
                    },
                    if *m == Mode::Direct {
                        "-".to_string()
                    } else {
                        format!("{rss:.1}")
                    }
                );
                modes_json.insert(m.name(), serde_json::json!({
                    "p50_us": p50.0, "p50_min": p50.1, "p50_max": p50.2, "p90_us": p90.0, "p99_us": p99.0, "p999_us": p999.0,
                    "throughput": tput, "errors": errors, "proxy_cpu_ms_per_1k": cpu_m, "proxy_rss_mib": rss,
                    "rounds": rs.iter().map(|r| serde_json::json!({"round": r.round, "result": r.json, "proxy_cpu_s": r.proxy_cpu_s, "proxy_rss_kib": r.proxy_rss_kib})).collect::<Vec<_>>(),
                }));
            }
            // Paired per-round differences against direct and haproxy at p50.
            // `f` of each run of mode `a` with the run of mode `b` in the same round.
            let by_round = |a: Mode, b: Mode, f: &dyn Fn(&Run, &Run) -> Option<f64>| -> Vec<f64> {
                let rb = per(b);
                per(a)
                    .iter()
                    .filter_map(|x| rb.iter().find(|y| y.round == x.round).and_then(|y| f(x, y)))
                    .collect()
            };
            let paired = |a: Mode, b: Mode| -> Option<(f64, f64, f64)> {
                if per(a).is_empty() || per(b).is_empty() {
                    return None;
                }
                let d = by_round(a, b, &|x, y| {
                    Some(x.get(&["latency_us", "p50"]) - y.get(&["latency_us", "p50"]))
                });
                let (lo, hi) = spread(&d);
                Some((median(d), lo, hi))
            };
            let _ = writeln!(
                md,
                "\nPaired per-round p50 differences (median [min..max], µs):\n"
            );
            let mut diffs = BTreeMap::new();
            for (a, b, label) in [
                (
                    Mode::AgentExplicit,
                    Mode::Direct,
                    "proxy overhead: agent-explicit - direct (client role + server role, two Motan2 hops)",
                ),
                (
                    Mode::Haproxy,
                    Mode::Direct,
                    "haproxy hop: haproxy - direct (one L4 hop)",
                ),
                (
                    Mode::AgentTwoHopSkmsg,
                    Mode::AgentTwoHopTcp,
                    "sk_msg on both local legs: agent-two-hop-skmsg - agent-two-hop-tcp",
                ),
                (
                    Mode::AgentExplicit,
                    Mode::AgentBaseline,
                    "this build - baseline build (agent-explicit path, --baseline-bin)",
                ),
                (
                    Mode::AgentFilters,
                    Mode::AgentExplicit,
                    "default filter chain (accessLog, metrics): agent-filters - agent-explicit",
                ),
                (
                    Mode::Iptables,
                    Mode::AgentExplicit,
                    "interception overhead: iptables - agent-explicit",
                ),
                (
                    Mode::EbpfConnect,
                    Mode::AgentExplicit,
                    "interception overhead: ebpf-connect - agent-explicit",
                ),
                (
                    Mode::EbpfSockmap,
                    Mode::AgentExplicit,
                    "interception overhead: ebpf-sockmap - agent-explicit",
                ),
                (
                    Mode::Iptables,
                    Mode::EbpfConnect,
                    "iptables - ebpf-connect (netfilter rule cost)",
                ),
                (
                    Mode::EbpfSockmap,
                    Mode::EbpfConnect,
                    "ebpf-sockmap - ebpf-connect (loopback bypass)",
                ),
                (
                    Mode::AgentClient,
                    Mode::AgentClientShared,
                    "data-plane shards: agent-client - agent-client-shared",
                ),
                (
                    Mode::AgentClientBatch,
                    Mode::AgentClient,
                    "SCHED_BATCH shards: agent-client-batch - agent-client",
                ),
                (
                    Mode::AgentExplicitSkmsg,
                    Mode::AgentExplicit,
                    "sk_msg on the provider leg: agent-explicit-skmsg - agent-explicit",
                ),
                (
                    Mode::EbpfSockmapClient,
                    Mode::AgentClient,
                    "interception overhead, one hop: ebpf-sockmap-client - agent-client",
                ),
                (
                    Mode::EbpfSockmapLegs,
                    Mode::EbpfSockmapClient,
                    "sk_msg on the provider leg, intercepted one hop: ebpf-sockmap-legs - ebpf-sockmap-client",
                ),
            ] {
                if let Some((m, lo, hi)) = paired(a, b) {
                    let _ = writeln!(md, "- {label}: {m:+.1} [{lo:+.1}..{hi:+.1}]");
                    diffs.insert(label, serde_json::json!({"median": m, "min": lo, "max": hi}));
                }
            }
            // Ratios of the median paired differences.
            let mut ratios = BTreeMap::new();
            for (num, den, label) in [
                (
                    (Mode::AgentExplicit, Mode::Direct),
                    (Mode::Haproxy, Mode::Direct),
                    "proxy overhead ratio: (agent-explicit - direct) / (haproxy - direct)",
                ),
                (
                    (Mode::Iptables, Mode::AgentExplicit),
                    (Mode::EbpfConnect, Mode::AgentExplicit),
                    "interception overhead ratio: (iptables - agent-explicit) / (ebpf-connect - agent-explicit)",
                ),
            ] {
                if let (Some(n), Some(d)) = (paired(num.0, num.1), paired(den.0, den.1))
                    && d.0.abs() > f64::EPSILON
                {
                    let r = n.0 / d.0;
                    let _ = writeln!(md, "- {label}: {r:.2}");
                    ratios.insert(label, r);
                }
            }
            // The filter chain's cost relative to the same path without filters, per round.
            let rel = by_round(Mode::AgentFilters, Mode::AgentExplicit, &|x, y| {
                let base = y.get(&["latency_us", "p50"]);
                (base > 0.0).then(|| 100.0 * (x.get(&["latency_us", "p50"]) / base - 1.0))
            });
            if !rel.is_empty() {
                let (lo, hi) = spread(&rel);
                let m = median(rel);
                let label =
                    "default filter chain p50 cost: agent-filters / agent-explicit - 1, per round (%)";
                let _ = writeln!(md, "- {label}: {m:+.1}% [{lo:+.1}..{hi:+.1}]");
                diffs.insert(label, serde_json::json!({"median": m, "min": lo, "max": hi}));
            }
            // Per hop against haproxy: what each proxy adds over direct (paired per round) and
            // its CPU per request, and the ratio of each to haproxy's.
            let added = |m: Mode, key: &str| -> f64 {
                median(by_round(m, Mode::Direct, &|x, y| {
                    Some(x.get(&["latency_us", key]) - y.get(&["latency_us", key]))
                }))
            };
            let cpu_per_req = |m: Mode| -> f64 {
                median(
                    per(m)
                        .iter()
                        .map(|r| {
                            let n = r.get(&["requests"]);
                            if n > 0.0 {
                                r.proxy_cpu_s * 1e6 / n
                            } else {
                                f64::NAN
                            }
                        })
                        .collect(),
                )
            };
            // perf stat's counters per request (median over rounds): task-clock µs, context
            // switches, syscalls.
            let counted = |m: Mode, f: fn(&Counters) -> f64| -> f64 {
                median(
                    per(m)
                        .iter()
                        .filter_map(|r| {
                            let c = r.counters.as_ref()?;
                            let n = r.get(&["throughput"]) * c.window_s;
                            (n > 0.0).then(|| f(c) / n)
                        })
                        .collect(),
                )
            };
            let hop_modes: Vec<Mode> = [
                Mode::Haproxy,
                Mode::AgentClient,
                Mode::AgentClientShared,
                Mode::AgentClientBatch,
                Mode::AgentServer,
                Mode::AgentExplicit,
                Mode::AgentBaseline,
                Mode::AgentExplicitSkmsg,
                Mode::AgentTwoHopTcp,
                Mode::AgentTwoHopSkmsg,
                Mode::EbpfSockmap,
                Mode::EbpfSockmapClient,
                Mode::EbpfSockmapLegs,
            ]
            .into_iter()
            .filter(|m| modes.contains(m))
            .collect();
            if modes.contains(&Mode::Direct) && hop_modes.len() > 1 {
                let (h50, h99, hcpu) = (
                    added(Mode::Haproxy, "p50"),
                    added(Mode::Haproxy, "p99"),
                    cpu_per_req(Mode::Haproxy),
                );
                let ratio = |x: f64, base: f64| {
                    if x.is_finite() && base.is_finite() && base.abs() > f64::EPSILON {
                        format!("{:.2}", x / base)
                    } else {
                        "-".to_string()
                    }
                };
                let _ = writeln!(
                    md,
                    "
Per hop against haproxy (added = mode - direct, paired per round, median; agent-explicit*, agent-two-hop-* and ebpf-sockmap (the agent-explicit path behind interception) are two Motan2 hops; req/s x haproxy is paired per round):
"
                );
                let _ = writeln!(
                    md,
                    "| mode | hops | added p50 µs | x haproxy | added p99 µs | x haproxy | CPU ms / 1k req | x haproxy | task-clock µs / req | x haproxy | context switches / req | syscalls / req | req/s x haproxy |"
                );
                let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
                let htc = counted(Mode::Haproxy, |c| c.task_clock_ms * 1e3);
                let mut hops_json = BTreeMap::new();
                for m in &hop_modes {
                    let (a50, a99, cpu) = (added(*m, "p50"), added(*m, "p99"), cpu_per_req(*m));
                    let tc = counted(*m, |c| c.task_clock_ms * 1e3);
                    let cs = counted(*m, |c| c.context_switches);
                    let sc = counted(*m, |c| c.syscalls);
                    let num = |x: f64, digits: usize| {
                        if x.is_finite() {
                            format!("{x:.digits$}")
                        } else {
                            "-".to_string()
                        }
                    };
                    let hops = match m {
                        Mode::Haproxy
                        | Mode::AgentClient
                        | Mode::AgentClientShared
                        | Mode::AgentClientBatch
                        | Mode::AgentServer
                        | Mode::EbpfSockmapClient
                        | Mode::EbpfSockmapLegs => 1,
                        _ => 2,
                    };
                    // Throughput against haproxy's in the same round (closed loop: what the
                    // proxy lets through; open loop: the offered rate, so about 1).
                    let tput = median(by_round(*m, Mode::Haproxy, &|x, h| {
                        let ht = h.get(&["throughput"]);
                        (ht > 0.0).then(|| x.get(&["throughput"]) / ht)
                    }));
                    let _ = writeln!(
                        md,
                        "| {} | {hops} | {a50:+.0} | {} | {a99:+.0} | {} | {cpu:.1} | {} | {} | {} | {} | {} | {} |",
                        m.name(),
                        ratio(a50, h50),
                        ratio(a99, h99),
                        ratio(cpu, hcpu),
                        num(tc, 1),
                        ratio(tc, htc),
                        num(cs, 2),
                        num(sc, 1),
                        num(tput, 2)
                    );
                    hops_json.insert(m.name(), serde_json::json!({
                        "hops": hops, "added_p50_us": a50, "added_p99_us": a99, "cpu_ms_per_1k": cpu,
                        "p50_x_haproxy": a50 / h50, "p99_x_haproxy": a99 / h99, "cpu_x_haproxy": cpu / hcpu,
                        "task_clock_us_per_req": tc, "task_clock_x_haproxy": tc / htc,
                        "context_switches_per_req": cs, "syscalls_per_req": sc, "throughput_x_haproxy": tput,
                    }));
                }
                diffs.insert("per_hop_vs_haproxy", serde_json::json!(hops_json));
            }
            diffs.insert("ratios", serde_json::json!(ratios));
            cases_json.insert(case.name, serde_json::json!({
                "rate": case.rate, "conns": case.conns, "payload": case.payload, "conn_per_request": case.conn_per_request,
                "modes": modes_json, "paired_p50_diff_us": diffs,
            }));
        }
        let json = serde_json::json!({
            "command": cmd, "kernel": kernel, "haproxy": haproxy, "sockmesh": env!("CARGO_PKG_VERSION"),
            "agent_idle_rss_kib": agent_idle_rss_kib, "rounds": opts.rounds, "duration_ms": opts.duration.as_millis() as u64, "warmup_ms": opts.warmup.as_millis() as u64,
            "unavailable_modes": unavailable.iter().map(|(m, w)| serde_json::json!({"mode": m.name(), "why": w})).collect::<Vec<_>>(),
            "cases": cases_json,
        });
        Report { json, markdown: md }
    }
}
