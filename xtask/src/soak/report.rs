//! The soak's verdict, `report.md`, `samples.csv`, `faults.csv` and SVG plots.
//!
//! Verdict (also written into the report):
//! - errors: every interval with a failed request must overlap a fault's window
//!   [start, recovered + 5 s]; any other failed request fails the run.
//! - RSS: judged on "settled" samples: after the run's warm-up, with the agent up, and at least
//!   `settle` (30 s) into its incarnation (a restarted agent starts small and grows to its
//!   working set; that is not a leak, and RSS of different incarnations at the same age is what
//!   is comparable). They are grouped per minute after warm-up; the median of the first minute
//!   is the reference; the run passes when no later minute's median exceeds it by more than 10%.
//! - fds: the same per-minute medians (agent up, settled); no minute may exceed the first by
//!   more than max(4, 10%).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::load::Sample;
use super::{Fault, FaultKind, Plan};
use crate::util::median;

/// Per mode: p50s and p99s of the intervals outside fault windows, requests ok, failed.
type ModeLatency = (Vec<f64>, Vec<f64>, u64, u64);
/// A plotted line: name, colour, (seconds, value) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

pub struct Verdict {
    pub pass: bool,
    pub reasons: Vec<String>,
}

pub struct Report {
    pub markdown: String,
    pub verdict: Verdict,
    samples_csv: String,
    faults_csv: String,
    samples: Vec<Sample>,
    faults: Vec<Fault>,
    modes: Vec<(f64, String)>,
}

fn overlaps(s: &Sample, f: &Fault) -> bool {
    s.start <= f.end() && s.end >= f.start
}

/// Per-minute (after warm-up) medians of `value` over the settled samples.
fn minute_medians(
    samples: &[Sample],
    plan: &Plan,
    settled: &[bool],
    value: impl Fn(&Sample) -> f64,
) -> Vec<(u64, f64)> {
    let warm = plan.warmup.as_secs_f64();
    let mut by: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (s, ok) in samples.iter().zip(settled) {
        if *ok {
            by.entry(((s.end - warm) / 60.0) as u64)
                .or_default()
                .push(value(s));
        }
    }
    by.into_iter().map(|(m, v)| (m, median(v))).collect()
}

impl Report {
    pub fn build(
        plan: &Plan,
        samples: &[Sample],
        faults: &[Fault],
        modes: &[(f64, String)],
        took: Duration,
        failure: Option<&anyhow::Error>,
    ) -> Report {
        let mut reasons = Vec::new();
        // Incarnation ages: from the first sample of each incarnation.
        let mut born: BTreeMap<u32, f64> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.pid != 0) {
            born.entry(s.incarnation)
                .or_insert(if s.incarnation == 1 { 0.0 } else { s.start });
        }
        let settled: Vec<bool> = samples
            .iter()
            .map(|s| {
                s.pid != 0
                    && s.rss_kib > 0
                    && s.end >= plan.warmup.as_secs_f64()
                    && s.end - born.get(&s.incarnation).copied().unwrap_or(0.0) >= plan.settle.as_secs_f64()
            })
            .collect();
        let in_fault: Vec<bool> = samples
            .iter()
            .map(|s| faults.iter().any(|f| overlaps(s, f)))
            .collect();
        let total_ok: u64 = samples.iter().map(|s| s.ok).sum();
        let total_err: u64 = samples.iter().map(|s| s.errors).sum();
        let outside: Vec<&Sample> = samples
            .iter()
            .zip(&in_fault)
            .filter(|(s, f)| s.errors > 0 && !**f)
            .map(|(s, _)| s)
            .collect();
        let outside_err: u64 = outside.iter().map(|s| s.errors).sum();
        if outside_err > 0 {
            reasons.push(format!(
                "{outside_err} failed request(s) outside the fault windows (first at {:.0} s)",
                outside[0].start
            ));
        }
        // Intervals with the same agent up before and after, outside fault windows, whose
        // connection the agent did not route: interception silently lost.
        let unrouted: Vec<f64> = samples
            .windows(2)
            .zip(&in_fault[1..])
            .filter(|(w, f)| {
                !**f && w[0].pid != 0 && w[0].pid == w[1].pid && w[1].ok > 0 && w[1].routed <= w[0].routed
            })
            .map(|(w, _)| w[1].start)
            .collect();
        if !unrouted.is_empty() {
            reasons.push(format!(
                "{} interval(s) outside fault windows did not go through the agent (first at {:.0} s)",
                unrouted.len(),
                unrouted[0]
            ));
        }
        if total_ok == 0 {
            reasons.push("no request succeeded".into());
        }
        let rss = minute_medians(samples, plan, &settled, |s| s.rss_kib as f64 / 1024.0);
        let fds = minute_medians(samples, plan, &settled, |s| s.fds as f64);
        let threads = minute_medians(samples, plan, &settled, |s| s.threads as f64);
        let (rss_ref, rss_end, rss_max) = summary(&rss);
        let (fds_ref, fds_end, fds_max) = summary(&fds);
        let rss_growth = (rss_max - rss_ref) / rss_ref * 100.0;
        if rss.len() < 2 {
            reasons.push("fewer than two settled minutes after warm-up: RSS and fds not judged".into());
        } else {
            if rss_growth.is_nan() || rss_growth > 10.0 {
                reasons.push(format!(
                    "RSS grew {rss_growth:.1}% after warm-up ({rss_ref:.1} -> max {rss_max:.1} MiB per-minute median)"
                ));
            }
            let allowed = (fds_ref * 0.1).max(4.0);
            if fds_max.is_nan() || fds_max - fds_ref > allowed {
                reasons.push(format!(
                    "fds grew from {fds_ref:.0} to {fds_max:.0} (allowed +{allowed:.0})"
                ));
            }
        }
        if let Some(e) = failure {
            reasons.push(format!("the run stopped early: {e:#}"));
        }
        let verdict = Verdict {
            pass: reasons.is_empty(),
            reasons,
        };

        // Latency outside fault windows, per mode.
        let mut lat: BTreeMap<&str, ModeLatency> = BTreeMap::new();
        for (s, f) in samples.iter().zip(&in_fault) {
            let e = lat.entry(s.mode).or_default();
            e.2 += s.ok;
            e.3 += s.errors;
            if !*f && s.ok > 0 {
                e.0.push(s.p50_us as f64);
                e.1.push(s.p99_us as f64);
            }
        }

        let mut md = String::new();
        let kernel = cmd_line("uname", &["-r"]);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let _ = writeln!(md, "# sockmesh soak run\n");
        let _ = writeln!(
            md,
            "`cargo xtask soak --minutes {}` on Linux {kernel}, {cpus} CPUs; ran {:.1} min. The machine is shared: \
             other builds and tests ran concurrently (load average at the end: {}).\n",
            fmt_minutes(plan.total),
            took.as_secs_f64() / 60.0,
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        let _ = writeln!(
            md,
            "Topology: a real ZooKeeper; the echo provider `sockmesh-loadgen serve` on 127.0.0.1; one agent (release build) \
             exporting the service to the provider and registering the export in ZooKeeper, and referring it through \
             ZooKeeper; `sockmesh-loadgen run` in an intercepted cgroup dialing the provider's address, open loop at \
             {} req/s, one {} s run (new process, new connection) per interval, back to back. Interception mode \
             alternates every {} s between ebpf-connect and ebpf-sockmap (`sockmesh intercept enable --mode`). A fault \
             {} s after the previous one recovered, rotating: provider restart, agent reload (`sockmesh reload` / SIGHUP alternately), ZooKeeper \
             flap, agent SIGKILL + restart, agent SIGTERM + restart. A fault's window runs from its start until a probe \
             through interception succeeds again (and, for the agent, its refer has an available endpoint; for \
             ZooKeeper, the agent is reconnected), plus 5 s.\n",
            plan.rate,
            plan.interval.as_secs(),
            plan.phase.as_secs(),
            plan.fault_every.as_secs()
        );
        let _ = writeln!(md, "## Verdict: {}\n", if verdict.pass { "PASS" } else { "FAIL" });
        for r in &verdict.reasons {
            let _ = writeln!(md, "- {r}");
        }
        if !verdict.reasons.is_empty() {
            md.push('\n');
        }
        let _ = writeln!(md, "| check | result |\n|---|---|");
        let _ = writeln!(
            md,
            "| errors outside fault windows | {outside_err} (of {} requests; {} failed inside the windows) |",
            total_ok + total_err,
            total_err - outside_err
        );
        let _ = writeln!(
            md,
            "| RSS after warm-up (per-minute median, settled) | first minute {rss_ref:.1} MiB, last {rss_end:.1} MiB, max {rss_max:.1} MiB ({rss_growth:+.1}%; limit +10%) |"
        );
        let _ = writeln!(
            md,
            "| fds after warm-up (per-minute median) | first minute {fds_ref:.0}, last {fds_end:.0}, max {fds_max:.0} |"
        );
        let (t_ref, t_end, t_max) = summary(&threads);
        let _ = writeln!(
            md,
            "| threads (the agent exposes no tokio task count) | first minute {t_ref:.0}, last {t_end:.0}, max {t_max:.0} |"
        );
        let _ = writeln!(
            md,
            "| faults injected | {} ({}) |",
            faults.len(),
            FaultKind::ALL
                .iter()
                .map(|k| format!("{} {}", faults.iter().filter(|f| f.kind == *k).count(), k.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            md,
            "| intervals through the agent | {} of {} (the rest: agent down or restarting, or not routed: {}) |",
            samples
                .windows(2)
                .filter(|w| w[0].pid == w[1].pid && w[1].routed > w[0].routed)
                .count(),
            samples.len(),
            unrouted.len()
        );
        let _ = writeln!(
            md,
            "| agent incarnations | {} |\n",
            samples.iter().map(|s| s.incarnation).max().unwrap_or(0)
        );
        let _ = writeln!(
            md,
            "How RSS is judged across restarts: only samples after the warm-up ({} s) and at least {} s into their \
             agent incarnation count (a restarted agent starts small); they are grouped per minute after warm-up and \
             each minute's median is compared with the first minute's. fds likewise (limit max(4, 10%)).\n",
            plan.warmup.as_secs(),
            plan.settle.as_secs()
        );
        let _ = writeln!(md, "## Agent incarnations\n");
        let _ = writeln!(
            md,
            "A leak lives within one process: RSS per incarnation (MiB) at its first sample, once settled ({} s in), at \
             its last sample, and its maximum once settled; its fds.\n",
            plan.settle.as_secs()
        );
        let _ = writeln!(
            md,
            "| # | alive (s since start) | life | RSS first | RSS settled | RSS last | RSS max settled | fds | mode at start |\n|---|---|---|---|---|---|---|---|---|"
        );
        for (i, b) in &born {
            let v: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.incarnation == *i && s.pid != 0 && s.rss_kib > 0)
                .collect();
            let (Some(first), Some(last)) = (v.first(), v.last()) else {
                continue;
            };
            let settled: Vec<&&Sample> = v
                .iter()
                .filter(|s| s.end - b >= plan.settle.as_secs_f64())
                .collect();
            let mib = |k: u64| k as f64 / 1024.0;
            let _ = writeln!(
                md,
                "| {i} | {b:.0}–{:.0} | {:.0} s | {:.1} | {} | {:.1} | {} | {}–{} | {} |",
                last.end,
                last.end - b,
                mib(first.rss_kib),
                settled
                    .first()
                    .map_or("–".into(), |s| format!("{:.1}", mib(s.rss_kib))),
                mib(last.rss_kib),
                settled
                    .iter()
                    .map(|s| s.rss_kib)
                    .max()
                    .map_or("–".into(), |k| format!("{:.1}", mib(k))),
                v.iter().map(|s| s.fds).min().unwrap_or(0),
                v.iter().map(|s| s.fds).max().unwrap_or(0),
                first.mode
            );
        }
        md.push('\n');
        let _ = writeln!(
            md,
            "## Latency per interception mode\n\nRequests and failures over every interval of the mode; latencies over \
             its intervals outside fault windows (each interval's p50 and p99 from the load generator's histogram, \
             measured from intended send times).\n"
        );
        let _ = writeln!(
            md,
            "| mode | requests ok | failed | p50 (median of intervals) | p99 (median of intervals) | worst interval p99 |\n|---|---|---|---|---|---|"
        );
        for (m, (p50, p99, ok, err)) in &lat {
            let worst = p99.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "| {m} | {ok} | {err} | {:.0} µs | {:.0} µs | {worst:.0} µs |",
                median(p50.clone()),
                median(p99.clone())
            );
        }
        let _ = writeln!(md, "\n## Faults\n");
        let _ = writeln!(
            md,
            "| # | at (s) | fault | how | recovered after | failed requests in window |\n|---|---|---|---|---|---|"
        );
        let mut faults_csv = "kind,how,start_s,recovered_s,window_end_s,errors_in_window\n".to_string();
        for (i, f) in faults.iter().enumerate() {
            let errs: u64 = samples.iter().filter(|s| overlaps(s, f)).map(|s| s.errors).sum();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {:.1} s | {errs} |",
                i + 1,
                f.start,
                f.kind.name(),
                f.how,
                f.recovered - f.start
            );
            let _ = writeln!(
                faults_csv,
                "{},\"{}\",{:.1},{:.1},{:.1},{errs}",
                f.kind.name(),
                f.how,
                f.start,
                f.recovered,
                f.end()
            );
        }
        let _ = writeln!(md, "\n## Per minute\n");
        let _ = writeln!(
            md,
            "| minute | mode | ok | failed | p50 µs (median) | p99 µs (max) | RSS MiB (median) | fds (median) | threads (median) | open conns (median) |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut by_min: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            by_min.entry((s.start / 60.0) as u64).or_default().push(s);
        }
        for (m, v) in &by_min {
            let up: Vec<&&Sample> = v.iter().filter(|s| s.pid != 0 && s.rss_kib > 0).collect();
            let mut ms: Vec<&str> = v.iter().map(|s| s.mode).collect();
            ms.sort();
            ms.dedup();
            let _ = writeln!(
                md,
                "| {m} | {} | {} | {} | {:.0} | {} | {:.1} | {:.0} | {:.0} | {:.0} |",
                ms.join(", "),
                v.iter().map(|s| s.ok).sum::<u64>(),
                v.iter().map(|s| s.errors).sum::<u64>(),
                median(v.iter().filter(|s| s.ok > 0).map(|s| s.p50_us as f64).collect()),
                v.iter().map(|s| s.p99_us).max().unwrap_or(0),
                median(up.iter().map(|s| s.rss_kib as f64 / 1024.0).collect()),
                median(up.iter().map(|s| s.fds as f64).collect()),
                median(up.iter().map(|s| s.threads as f64).collect()),
                median(up.iter().map(|s| s.conns as f64).collect()),
            );
        }
        if !outside.is_empty() {
            let _ = writeln!(md, "\n## Failed requests outside fault windows\n");
            for s in outside.iter().take(20) {
                let _ = writeln!(
                    md,
                    "- {:.1}–{:.1} s ({}): {} failed, {} ok {}",
                    s.start, s.end, s.mode, s.errors, s.ok, s.note
                );
            }
        }
        let _ = writeln!(
            md,
            "\n## Plots\n\nFault windows are shaded; the mode of each phase is written at its top.\n\n\
             ![RSS](rss.svg)\n\n![fds and threads](fds.svg)\n\n![latency](latency.svg)\n\n![errors](errors.svg)\n\n\
             Raw data: `samples.csv` (one row per interval), `faults.csv`; logs under `raw/`."
        );

        let mut samples_csv = "start_s,end_s,mode,incarnation,pid,ok,errors,p50_us,p99_us,rss_kib,threads,fds,open_conns,routed,fail_open,cpu_s,in_fault_window,settled,note\n".to_string();
        for ((s, f), st) in samples.iter().zip(&in_fault).zip(&settled) {
            let _ = writeln!(
                samples_csv,
                "{:.2},{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{},{},\"{}\"",
                s.start,
                s.end,
                s.mode,
                s.incarnation,
                s.pid,
                s.ok,
                s.errors,
                s.p50_us,
                s.p99_us,
                s.rss_kib,
                s.threads,
                s.fds,
                s.conns,
                s.routed,
                s.fail_open,
                s.cpu_s,
                *f as u8,
                *st as u8,
                s.note.replace('"', "'")
            );
        }
        Report {
            markdown: md,
            verdict,
            samples_csv,
            faults_csv,
            samples: samples.to_vec(),
            faults: faults.to_vec(),
            modes: modes.to_vec(),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("report.md"), &self.markdown)?;
        std::fs::write(dir.join("samples.csv"), &self.samples_csv)?;
        std::fs::write(dir.join("faults.csv"), &self.faults_csv)?;
        let up: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.pid != 0 && s.rss_kib > 0)
            .collect();
        let pts = |v: &[&Sample], f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
            v.iter().map(|s| (s.end, f(s))).collect()
        };
        let all: Vec<&Sample> = self.samples.iter().collect();
        let loaded: Vec<&Sample> = self.samples.iter().filter(|s| s.ok > 0).collect();
        self.plot(
            &dir.join("rss.svg"),
            "agent RSS (MiB)",
            &[("RSS", BLUE, pts(&up, &|s| s.rss_kib as f64 / 1024.0))],
        )?;
        self.plot(
            &dir.join("fds.svg"),
            "agent fds, threads, open client connections",
            &[
                ("fds", BLUE, pts(&up, &|s| s.fds as f64)),
                ("threads", GREEN, pts(&up, &|s| s.threads as f64)),
                ("open conns", MAGENTA, pts(&up, &|s| s.conns as f64)),
            ],
        )?;
        self.plot(
            &dir.join("latency.svg"),
            "latency per interval (µs)",
            &[
                ("p50", BLUE, pts(&loaded, &|s| s.p50_us as f64)),
                ("p99", RED, pts(&loaded, &|s| s.p99_us as f64)),
            ],
        )?;
        self.plot(
            &dir.join("errors.svg"),
            "failed requests per interval",
            &[("failed", RED, pts(&all, &|s| s.errors as f64))],
        )?;
        Ok(())
    }

    /// Lines over time (s) with the fault windows shaded and the phases' modes on top.
    fn plot(&self, path: &Path, title: &str, series: &[Series]) -> Result<()> {
        let e = |err: &dyn std::fmt::Debug| anyhow!("plotting {}: {err:?}", path.display());
        let max_x = self.samples.last().map(|s| s.end).unwrap_or(1.0).max(1.0);
        let max_y = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.15;
        let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .draw()
            .map_err(|x| e(&x))?;
        let shade = RGBColor(0xff, 0x99, 0x33).mix(0.25);
        chart
            .draw_series(
                self.faults
                    .iter()
                    .map(|f| Rectangle::new([(f.start, 0.0), (f.end().min(max_x), max_y)], shade.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(self.faults.iter().map(|f| {
                Text::new(
                    short(f.kind).to_string(),
                    (f.start, max_y * 0.97),
                    ("sans-serif", 11),
                )
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(self.modes.iter().map(|(t, m)| {
                Text::new(
                    m.clone(),
                    (*t, max_y * 0.90),
                    ("sans-serif", 12).into_font().color(&BLACK.mix(0.6)),
                )
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                self.modes
                    .iter()
                    .map(|(t, _)| PathElement::new(vec![(*t, 0.0), (*t, max_y)], BLACK.mix(0.3))),
            )
            .map_err(|x| e(&x))?;
        for (name, color, pts) in series {
            let c = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(1)))
                .map_err(|x| e(&x))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }
}

fn short(k: FaultKind) -> &'static str {
    match k {
        FaultKind::ProviderRestart => "prov",
        FaultKind::ZkFlap => "zk",
        FaultKind::AgentReload => "reload",
        FaultKind::AgentKill => "kill",
        FaultKind::AgentTerm => "term",
    }
}

/// (first, last, max) of per-minute medians.
fn summary(v: &[(u64, f64)]) -> (f64, f64, f64) {
    (
        v.first().map(|x| x.1).unwrap_or(f64::NAN),
        v.last().map(|x| x.1).unwrap_or(f64::NAN),
        v.iter().map(|x| x.1).fold(f64::NAN, f64::max),
    )
}

fn fmt_minutes(d: Duration) -> String {
    let m = d.as_secs_f64() / 60.0;
    if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    }
}

fn cmd_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::Options;

    /// A 6-minute run sampled every 2 s: agent up (one incarnation), 100 ok per interval,
    /// routed through the agent, RSS and fds given per sample time.
    fn run(rss: impl Fn(f64) -> u64, fds: impl Fn(f64) -> u64) -> (Plan, Vec<Sample>) {
        let plan = Plan::new(&Options {
            minutes: 6.0,
            rate: 50,
        });
        let samples = (0..180)
            .map(|i| {
                let start = i as f64 * 2.0;
                let end = start + 2.0;
                Sample {
                    start,
                    end,
                    mode: "ebpf-connect",
                    ok: 100,
                    p50_us: 100,
                    p99_us: 400,
                    pid: 42,
                    incarnation: 1,
                    rss_kib: rss(end),
                    threads: 4,
                    fds: fds(end),
                    routed: i + 1,
                    ..Sample::default()
                }
            })
            .collect();
        (plan, samples)
    }

    fn fault(start: f64, recovered: f64) -> Fault {
        Fault {
            kind: FaultKind::ProviderRestart,
            how: "test".into(),
            start,
            recovered,
        }
    }

    fn verdict(plan: &Plan, samples: &[Sample], faults: &[Fault]) -> Verdict {
        Report::build(
            plan,
            samples,
            faults,
            &[(0.0, "ebpf-connect".into())],
            Duration::from_secs(360),
            None,
        )
        .verdict
    }

    #[test]
    fn flat_run_without_errors_passes() {
        let (plan, samples) = run(|_| 20_000, |_| 30);
        let v = verdict(&plan, &samples, &[]);
        assert!(v.pass, "{:?}", v.reasons);
    }

    #[test]
    fn errors_count_only_outside_fault_windows() {
        let (plan, mut samples) = run(|_| 20_000, |_| 30);
        samples[50].errors = 7; // 100–102 s
        let inside = [fault(95.0, 96.0)]; // window until 101 s
        assert!(verdict(&plan, &samples, &inside).pass);
        let before = [fault(80.0, 90.0)]; // window until 95 s
        let v = verdict(&plan, &samples, &before);
        assert!(!v.pass);
        assert!(
            v.reasons[0].starts_with("7 failed request(s) outside"),
            "{:?}",
            v.reasons
        );
    }

    #[test]
    fn rss_growth_after_warm_up_fails_but_warm_up_and_young_incarnations_do_not_count() {
        // +20% over the run after warm-up: a leak.
        let (plan, samples) = run(|t| 20_000 + (t * 15.0) as u64, |_| 30);
        let v = verdict(&plan, &samples, &[]);
        assert!(
            v.reasons.iter().any(|r| r.starts_with("RSS grew")),
            "{:?}",
            v.reasons
        );
        // Growth during warm-up only: flat after it.
        let warm = plan.warmup.as_secs_f64();
        let (plan, samples) = run(|t| if t < warm { 5_000 } else { 20_000 }, |_| 30);
        assert!(verdict(&plan, &samples, &[]).pass);
        // A restarted agent (incarnation 2 at 200 s) is small for its first 30 s: not judged.
        let (plan, mut samples) = run(|_| 20_000, |_| 30);
        for s in samples.iter_mut().filter(|s| s.start >= 200.0) {
            s.incarnation = 2;
            s.pid = 43;
            s.routed -= 100;
            if s.start < 220.0 {
                s.rss_kib = 10_000;
            }
        }
        assert!(verdict(&plan, &samples, &[fault(198.0, 200.0)]).pass);
    }

    #[test]
    fn fd_growth_and_unrouted_intervals_fail() {
        let (plan, samples) = run(|_| 20_000, |t| 30 + (t / 10.0) as u64);
        let v = verdict(&plan, &samples, &[]);
        assert!(
            v.reasons.iter().any(|r| r.starts_with("fds grew")),
            "{:?}",
            v.reasons
        );
        let (plan, mut samples) = run(|_| 20_000, |_| 30);
        for s in samples.iter_mut().skip(100) {
            s.routed = 100;
        }
        let v = verdict(&plan, &samples, &[]);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("did not go through the agent")),
            "{:?}",
            v.reasons
        );
    }
}
