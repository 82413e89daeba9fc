//! A minimal SVG line chart (no plotting dependency): x and y axes with ticks (x linear, linear
//! to an exact end, or logarithmic), one polyline per series, a legend, and labelled vertical or
//! horizontal markers (a claimed epsilon, a budget, a test accuracy).

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

/// A labelled line across the chart.
#[derive(Debug, Clone, Copy)]
pub enum Marker<'a> {
    /// A vertical line at an x value (e.g. a claimed epsilon).
    AtX {
        /// Where.
        x: f64,
        /// Label drawn beside it.
        label: &'a str,
    },
    /// A horizontal line at a y value (e.g. a budget, a test accuracy).
    AtY {
        /// Where.
        y: f64,
        /// Label drawn above it.
        label: &'a str,
    },
}

/// How the x axis runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XAxis {
    /// From 0 to the largest x rounded up to 1, 2 or 5 times a power of ten.
    Linear,
    /// From 0 to exactly this value (a run's last step), so the curve ends at the axis' end.
    LinearTo(f64),
    /// Logarithmic from the smallest positive x to the largest, ticked at powers of ten: for
    /// log-spaced points.
    Log,
}

/// A chart's title, axis labels and x axis.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Title, drawn on top.
    pub title: &'a str,
    /// The x axis' label.
    pub x_label: &'a str,
    /// The y axis' label.
    pub y_label: &'a str,
    /// How the x axis runs.
    pub x_axis: XAxis,
}

/// Renders the chart as an SVG document.
pub fn line_chart(frame: &Frame<'_>, series: &[Series<'_>], markers: &[Marker<'_>]) -> String {
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .filter(|p| frame.x_axis != XAxis::Log || p.0 > 0.0)
        .collect();
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    let mut x_min = f64::INFINITY;
    for &(x, y) in &finite {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
    }
    for m in markers {
        match *m {
            Marker::AtX { x, .. } if x.is_finite() => x_max = x_max.max(x),
            Marker::AtY { y, .. } if y.is_finite() => y_max = y_max.max(y),
            _ => {}
        }
    }
    let y_max = nice_ceiling(y_max);
    let width = WIDTH - LEFT - RIGHT;
    // The x axis: where a value is drawn, and the ticks.
    let (to_unit, x_ticks): (Box<dyn Fn(f64) -> f64>, Vec<f64>) = match frame.x_axis {
        XAxis::Log => {
            let lo = if x_min.is_finite() { x_min } else { 1.0 };
            let hi = x_max.max(lo * 10.0);
            let (l, h) = (lo.log10(), hi.log10());
            let ticks = (l.floor() as i32..=h.ceil() as i32)
                .map(|e| 10f64.powi(e))
                .filter(|&t| t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9))
                .collect();
            (Box::new(move |x: f64| (x.log10() - l) / (h - l)), ticks)
        }
        XAxis::LinearTo(end) if end > 0.0 && end.is_finite() => {
            let step = nice_ceiling(end / 5.0);
            let mut ticks: Vec<f64> = (0..)
                .map(|i| i as f64 * step)
                .take_while(|&t| t < end * (1.0 - 0.08))
                .collect();
            ticks.push(end);
            (Box::new(move |x: f64| x / end), ticks)
        }
        XAxis::Linear | XAxis::LinearTo(_) => {
            let end = nice_ceiling(x_max);
            let ticks = (0..=5).map(|i| end * i as f64 / 5.0).collect();
            (Box::new(move |x: f64| x / end), ticks)
        }
    };
    let px = |x: f64| LEFT + to_unit(x) * width;
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
        escape(frame.title),
        py(0.0),
        WIDTH - RIGHT,
        py(0.0),
        py(0.0)
    );
    for x in x_ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(x),
            HEIGHT - BOTTOM + 18.0,
            tick(x)
        );
    }
    for i in 0..=5 {
        let y = y_max * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="lightgray"/>"#,
            LEFT - 6.0,
            py(y) + 4.0,
            tick(y),
            py(y),
            WIDTH - RIGHT,
            py(y)
        );
    }
    let log_note = if frame.x_axis == XAxis::Log {
        " (log scale)"
    } else {
        ""
    };
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}{log_note}</text><text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 12.0,
        escape(frame.x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(frame.y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .filter(|p| frame.x_axis != XAxis::Log || p.0 > 0.0)
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
    for m in markers {
        match *m {
            Marker::AtX { x, label } if x.is_finite() => {
                let x = px(x);
                let _ = writeln!(
                    svg,
                    r#"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{:.2}" stroke="black" stroke-dasharray="5,4"/><text x="{:.2}" y="{:.2}">{}</text>"#,
                    py(0.0),
                    x + 4.0,
                    TOP + 12.0,
                    escape(label)
                );
            }
            Marker::AtY { y, label } if y.is_finite() => {
                let y = py(y);
                let _ = writeln!(
                    svg,
                    r#"<line x1="{LEFT}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="black" stroke-dasharray="5,4"/><text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"#,
                    WIDTH - RIGHT,
                    WIDTH - RIGHT - 4.0,
                    y - 5.0,
                    escape(label)
                );
            }
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(x_axis: XAxis) -> Frame<'static> {
        Frame {
            title: "t",
            x_label: "steps",
            y_label: "epsilon",
            x_axis,
        }
    }

    #[test]
    fn a_run_s_axis_ends_at_its_last_step_and_a_log_axis_is_ticked_at_powers_of_ten() {
        let series = [Series {
            name: "s",
            points: vec![(1.0, 0.5), (10.0, 1.0), (117.0, 2.0)],
        }];
        let linear = line_chart(&frame(XAxis::LinearTo(117.0)), &series, &[]);
        // The last point is drawn at the axis' right end, which is labelled 117.
        assert!(
            linear.contains(&format!("{:.2},", WIDTH - RIGHT)),
            "{linear}"
        );
        assert!(linear.contains(">117</text>"), "{linear}");
        assert!(!linear.contains(">200</text>"), "{linear}");
        let log = line_chart(&frame(XAxis::Log), &series, &[]);
        assert!(
            log.contains(">1</text>") && log.contains(">10</text>") && log.contains(">100</text>")
        );
        assert!(log.contains("steps (log scale)"));
        assert!(log.contains(&format!("{:.2},", WIDTH - RIGHT)), "{log}");
    }

    #[test]
    fn a_horizontal_marker_is_drawn_with_its_label_and_raises_the_y_axis() {
        let series = [Series {
            name: "s",
            points: vec![(0.0, 0.5), (10.0, 1.0)],
        }];
        let markers = [Marker::AtY {
            y: 3.0,
            label: "budget 3",
        }];
        let svg = line_chart(&frame(XAxis::Linear), &series, &markers);
        assert!(svg.contains(">budget 3</text>"), "{svg}");
        // The y axis reaches the budget (its top tick is 5, not 1).
        assert!(svg.contains(">5</text>"), "{svg}");
    }
}
