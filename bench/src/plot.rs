//! SVG line charts (plotters) for the benchmark reports: latency percentiles, throughput
//! over time, hit ratio against cache size.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is labelled.
#[derive(Debug, Clone, Copy)]
pub enum XAxis {
    /// Plain numbers.
    Linear,
    /// Positions 0, 1, 2… named by these labels (e.g. percentiles).
    Named(&'static [&'static str]),
    /// x is log2 of the value shown (cache sizes doubling from point to point).
    Log2,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(32, 96, 160),
    RGBColor(200, 80, 40),
    RGBColor(48, 160, 112),
    RGBColor(106, 76, 147),
    RGBColor(224, 160, 48),
    RGBColor(90, 90, 90),
];

/// Draws `series` as lines with markers into the SVG file `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_axis: XAxis,
    series: &[Series],
) -> Result<()> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label).y_desc(y_label);
        let names = |x: &f64| match x_axis {
            XAxis::Linear => format!("{x}"),
            XAxis::Log2 => format!("{}", 2f64.powf(*x).round()),
            XAxis::Named(labels) => {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    labels
                        .get(i as usize)
                        .map_or(String::new(), |s| s.to_string())
                } else {
                    String::new()
                }
            }
        };
        if let XAxis::Named(labels) = x_axis {
            mesh.x_labels(labels.len());
        }
        mesh.x_label_formatter(&names).draw()?;
        for (i, s) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_series_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        line_chart(
            &p,
            "Latency",
            "percentile",
            "ms",
            XAxis::Named(&["p50", "p95", "p99"]),
            &[
                Series {
                    name: "reads".into(),
                    points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 9.0)],
                },
                Series {
                    name: "writes".into(),
                    points: vec![(0.0, 2.0), (1.0, 4.0), (2.0, 12.0)],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["Latency", "reads", "writes", "p95"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
