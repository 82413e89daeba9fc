//! A minimal SVG line chart (no plotting dependency): x and y axes with ticks, one polyline per
//! series, a legend, and optional vertical markers (e.g. a claimed epsilon).

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// The points, in drawing order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A labelled vertical line at an x value.
#[derive(Debug, Clone, Copy)]
pub struct Marker<'a> {
    /// Where.
    pub x: f64,
    /// Label drawn beside it.
    pub label: &'a str,
}

/// Renders the chart as an SVG document.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    markers: &[Marker<'_>],
) -> String {
    let finite = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for &(x, y) in finite {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    for m in markers.iter().filter(|m| m.x.is_finite()) {
        x_max = x_max.max(m.x);
    }
    let (x_max, y_max) = (nice_ceiling(x_max), nice_ceiling(y_max));
    let px = |x: f64| LEFT + x / x_max * (WIDTH - LEFT - RIGHT);
    let py = |y: f64| HEIGHT - BOTTOM - y / y_max * (HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>
"#,
        WIDTH / 2.0,
        escape(title),
        py(0.0),
        WIDTH - RIGHT,
        py(0.0),
        py(0.0)
    );
    for i in 0..=5 {
        let (x, y) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="lightgray"/>"#,
            px(x),
            HEIGHT - BOTTOM + 18.0,
            tick(x),
            LEFT - 6.0,
            py(y) + 4.0,
            tick(y),
            py(y),
            WIDTH - RIGHT,
            py(y)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.2},{:.2}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            points.join(" "),
            LEFT + 12.0,
            TOP + 16.0 * (i as f64 + 1.0),
            escape(s.name)
        );
    }
    for m in markers.iter().filter(|m| m.x.is_finite()) {
        let x = px(m.x);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{:.2}" stroke="black" stroke-dasharray="5,4"/><text x="{:.2}" y="{:.2}">{}</text>"#,
            py(0.0),
            x + 4.0,
            TOP + 12.0,
            escape(m.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2, 5 times a power of ten at or above `x` (1 for x <= 0).
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let base = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|&v| v >= x)
        .unwrap_or(10.0 * base)
}

fn tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e5) {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.1e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
