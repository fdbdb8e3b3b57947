//! `netpath bench --plot FILE`: the comparison as an SVG bar chart.
//!
//! plotters without its `ttf` feature needs no font files: it estimates
//! text sizes for the layout and leaves the glyphs to the SVG viewer.

use anyhow::{Context, Result};
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::report::{Metric, Report, Row, Target, extremes};

const SIZE: (u32, u32) = (980, 420);
/// Heights of the heading above the plot and the legend below it.
const HEADING: i32 = 50;
const LEGEND: i32 = 30;
const FONT: &str = "sans-serif";
/// plotters writes text at 1/1.24 of the size asked: these come out as
/// 15 px and 12 px.
const TITLE_SIZE: f64 = 18.6;
const TEXT_SIZE: f64 = 14.9;
/// By target, in `Target` order: bridge grey, the bridge with the policy
/// in nftables dark grey and in iptables brown, xdp blue, tc green, netkit
/// purple, wire red; across hosts alike, netpath's overlay green, the
/// kernel's vxlan design (the baseline) grey, the underlay (the bound) red;
/// tc with a policy orange.
const COLORS: [RGBColor; 11] = [
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x40, 0x40, 0x40),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// A row's median relative to the baseline's, inverted for latency so
/// that taller is better everywhere; 0 without a baseline to compare with.
fn relative(row: &Row) -> f64 {
    match row.vs_baseline {
        Some(v) if row.metric.higher_is_better() => v,
        Some(v) if v > 0.0 => 1.0 / v,
        _ => 0.0,
    }
}

/// The worst and the best run of a row on [`relative`]'s scale: the
/// whisker over its bar.
fn relative_range(row: &Row) -> Option<(f64, f64)> {
    let baseline = row.median / row.vs_baseline.filter(|v| *v > 0.0)?;
    let scaled = row.runs.iter().map(|run| {
        if row.metric.higher_is_better() {
            run.value / baseline
        } else {
            baseline / run.value
        }
    });
    extremes(scaled)
}

/// A grouped bar chart: per metric, one bar per target, relative to the
/// baseline (the line at 1.0), a whisker over each from its worst run to
/// its best.
pub fn svg(report: &Report) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, report).context("drawing the benchmark chart")?;
        root.present().context("drawing the benchmark chart")?;
    }
    Ok(out)
}

type DrawResult =
    Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, report: &Report) -> DrawResult {
    let mut targets: Vec<Target> = report.rows.iter().map(|r| r.target).collect();
    targets.sort();
    targets.dedup();
    let groups = Metric::ALL.len() as f64;
    let max = report
        .rows
        .iter()
        .map(|row| relative_range(row).map_or(relative(row), |(_, high)| high))
        .fold(1.2_f64, f64::max)
        * 1.1;

    root.fill(&WHITE)?;
    let (heading, rest) = root.split_vertically(HEADING);
    let (body, legend) = rest.split_vertically(SIZE.1 as i32 - HEADING - LEGEND);
    heading.draw(&Text::new(
        format!(
            "netpath vs {} (1.0) and {}; higher is better (latency inverted)",
            report.reference.baseline.described(),
            report.reference.bound.described()
        ),
        (60, 8),
        (FONT, TITLE_SIZE),
    ))?;
    heading.draw(&Text::new(
        format!(
            "kernel {}, {} CPUs, medians of {} runs of {} s; whiskers: worst to best run",
            report.kernel, report.cpus, report.repeat, report.seconds
        ),
        (60, 28),
        (FONT, TEXT_SIZE)
            .into_font()
            .color(&RGBColor(0x55, 0x55, 0x55)),
    ))?;

    let mut chart = ChartBuilder::on(&body)
        .margin_right(20)
        .x_label_area_size(25)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups, 0.0..max)?;
    // The metrics' names go under their groups below, not at plotters' ticks.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels((max * 4.0) as usize + 1)
        .y_label_formatter(&|v| format!("{v:.2}x"))
        .y_label_style((FONT, TEXT_SIZE))
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (groups, 1.0)],
        BLACK,
    )))?;

    let bar_w = 0.8 / targets.len().max(1) as f64;
    for (i, target) in targets.iter().enumerate() {
        let color = COLORS[*target as usize];
        let bars = Metric::ALL.iter().enumerate().filter_map(|(g, metric)| {
            let row = report
                .rows
                .iter()
                .find(|r| r.metric == *metric && r.target == *target)?;
            let x = g as f64 + 0.1 + i as f64 * bar_w;
            Some(Rectangle::new(
                [(x, 0.0), (x + bar_w * 0.95, relative(row))],
                color.filled(),
            ))
        });
        chart.draw_series(bars)?;
        let whiskers = Metric::ALL.iter().enumerate().filter_map(|(g, metric)| {
            let row = report
                .rows
                .iter()
                .find(|r| r.metric == *metric && r.target == *target)?;
            let (low, high) = relative_range(row)?;
            let x = g as f64 + 0.1 + i as f64 * bar_w + bar_w * 0.475;
            Some(PathElement::new(vec![(x, low), (x, high)], BLACK))
        });
        chart.draw_series(whiskers)?;
        // Below the plot, where no bar can hide it.
        let x = 60 + i as i32 * 110;
        legend.draw(&Rectangle::new([(x, 8), (x + 14, 22)], color.filled()))?;
        legend.draw(&Text::new(
            target.to_string(),
            (x + 20, 8),
            (FONT, TEXT_SIZE),
        ))?;
    }
    for (g, metric) in Metric::ALL.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        let style = (FONT, TEXT_SIZE)
            .into_font()
            .into_text_style(root)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(metric.short(), (x, y + 6), style))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{super::*, *};

    #[test]
    fn draws_a_bar_per_target_and_names_them() {
        let sample = |value| Sample { value, cpu: None };
        let mut samples = BTreeMap::new();
        for (target, gbps, rtt) in [
            (Target::Bridge, 10.0, 40.0),
            (Target::Tc, 15.0, 30.0),
            (Target::Wire, 16.0, 28.0),
        ] {
            samples.insert((Metric::Tcp1Gbps, target), vec![sample(gbps)]);
            samples.insert((Metric::RttP50Us, target), vec![sample(rtt)]);
        }
        let report = Report {
            kernel: "6.18.0-test".into(),
            cpus: 2,
            seconds: 1,
            repeat: 1,
            udp_generator: "none",
            reference: Reference::for_targets(&[Target::Bridge]),
            rows: rows(&samples, Reference::for_targets(&[Target::Bridge])),
            scale: Vec::new(),
            notes: Vec::new(),
        };
        let svg = svg(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // plotters puts each text on a line of its own.
        for text in [
            "\nbridge\n",
            "\ntc\n",
            "\nwire\n",
            "\nTCP 1\n",
            "\nRTT p50\n",
            "kernel 6.18.0-test",
        ] {
            assert!(svg.contains(text), "no {text:?} in\n{svg}");
        }
        // tc: two bars (TCP 1, RTT p50) and its legend swatch.
        let filled = |c: RGBColor| {
            svg.matches(&format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2))
                .count()
        };
        assert_eq!(filled(COLORS[Target::Tc as usize]), 3, "{svg}");
    }

    #[test]
    fn whiskers_span_the_worst_and_the_best_run_relative_to_the_baseline() {
        let runs = |values: &[f64]| -> Vec<Sample> {
            values
                .iter()
                .map(|&value| Sample { value, cpu: None })
                .collect()
        };
        let mut samples = BTreeMap::new();
        samples.insert((Metric::Tcp1Gbps, Target::Bridge), runs(&[10.0]));
        samples.insert((Metric::Tcp1Gbps, Target::Tc), runs(&[16.0, 14.0, 15.0]));
        samples.insert((Metric::RttP50Us, Target::Bridge), runs(&[40.0]));
        samples.insert((Metric::RttP50Us, Target::Tc), runs(&[20.0, 32.0]));
        let rows = rows(&samples, Reference::for_targets(&[Target::Bridge]));
        let tc = |metric| {
            let row = rows
                .iter()
                .find(|r| r.metric == metric && r.target == Target::Tc)
                .unwrap();
            relative_range(row).unwrap()
        };
        assert_eq!(tc(Metric::Tcp1Gbps), (1.4, 1.6));
        // Latency inverted: the slowest run is the lowest point.
        assert_eq!(tc(Metric::RttP50Us), (1.25, 2.0));
    }
}
