//! SVG plots for the benchmark report: a latency CDF per case (one line per mode), and bars
//! for throughput (closed-loop case) and proxy CPU per 1,000 requests.
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::bench::{Case, Mode, Run};

const COLORS: [RGBColor; 15] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0xae, 0xc7, 0xe8),
    RGBColor(0xff, 0xbb, 0x78),
    RGBColor(0x98, 0xdf, 0x8a),
    RGBColor(0xc5, 0xb0, 0xd5),
];

fn color(m: Mode) -> RGBColor {
    let index = Mode::ALL
        .iter()
        .chain(&[Mode::AgentBaseline])
        .position(|x| *x == m);
    COLORS[index.unwrap_or(0) % COLORS.len()]
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting: {err:?}")
}

pub fn write_all(dir: &Path, runs: &[Run], cases: &[Case], modes: &[Mode]) -> Result<()> {
    for case in cases {
        cdf(
            &dir.join(format!("latency-cdf-{}.svg", case.name)),
            runs,
            case,
            modes,
        )?;
    }
    bars(
        &dir.join("throughput-closed-loop.svg"),
        "closed-loop throughput (req/s, median over rounds)",
        runs,
        modes,
        |r| (r.case == "closed-100B-16conn").then(|| r.get(&["throughput"])),
    )?;
    bars(
        &dir.join("proxy-cpu.svg"),
        "proxy CPU ms per 1,000 requests (open-1k-100B-1conn)",
        runs,
        modes,
        |r| {
            let n = r.get(&["requests"]);
            (r.case == "open-1k-100B-1conn" && r.mode != Mode::Direct && n > 0.0)
                .then(|| r.proxy_cpu_s * 1e6 / n)
        },
    )?;
    Ok(())
}

/// Latency CDF (log-scaled x axis) of the first round of each mode.
fn cdf(path: &Path, runs: &[Run], case: &Case, modes: &[Mode]) -> Result<()> {
    let series: Vec<(Mode, Vec<(f64, f64)>)> = modes
        .iter()
        .filter_map(|m| {
            let r = runs.iter().find(|r| r.mode == *m && r.case == case.name)?;
            let pts = r.json["cdf"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?.max(1.0), p[1].as_f64()?)))
                .collect::<Vec<_>>();
            (!pts.is_empty()).then_some((*m, pts))
        })
        .collect();
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(10.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("latency CDF: {}", case.name), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((10.0f64..max_x * 1.1).log_scale(), 0.0f64..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("round-trip latency (µs, log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(e)?;
    for (m, pts) in series {
        let c = color(m);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(m.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

fn bars(
    path: &Path,
    title: &str,
    runs: &[Run],
    modes: &[Mode],
    value: impl Fn(&Run) -> Option<f64>,
) -> Result<()> {
    let vals: Vec<(Mode, f64)> = modes
        .iter()
        .filter_map(|m| {
            let mut v: Vec<f64> = runs
                .iter()
                .filter(|r| r.mode == *m)
                .filter_map(&value)
                .filter(|x| x.is_finite())
                .collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            Some((*m, v[v.len() / 2]))
        })
        .collect();
    let max_y = vals.iter().map(|v| v.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let n = vals.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..n as f64, 0.0f64..max_y * 1.2)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .draw()
        .map_err(e)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, (m, v))| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                color(*m).filled(),
            )
        }))
        .map_err(e)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.1}"),
                (i as f64 + 0.35, *v * 1.02 + max_y * 0.02),
                ("sans-serif", 14),
            )
        }))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
