//! `dp-accounting curve`: epsilon versus steps for several accountants, as CSV, JSON or SVG.

use std::path::PathBuf;

use clap::Args;
use dp_accounting::plot::{line_chart, Frame, Series, XAxis};
use dp_accounting::{quiet_print as print, quiet_println as println};
use serde_json::{json, Map, Value};

use crate::common::{
    epsilon_report, finite_positive, number, plan, shown, steps_of, usage, Common, Failure, Kind,
    Length, Plan,
};

#[derive(Args, Debug)]
pub(crate) struct CurveArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    length: Length,
    /// Noise standard deviation over the clip norm (sigma).
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: f64,
    /// Accountants to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "rdp,prv")]
    accountants: Vec<Kind>,
    /// Half-width of the PRV accountant's epsilon bracket.
    #[arg(long, allow_hyphen_values = true, default_value_t = dp_accounting::DEFAULT_PRV_EPSILON_ERROR)]
    epsilon_error: f64,
    /// Number of points between 1 and the last step (log-spaced).
    #[arg(long, default_value_t = 25)]
    points: usize,
    /// Write the curve as CSV to this file ("-" for standard output).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an SVG plot to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

impl CurveArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            common,
            length,
            noise_multiplier,
            accountants,
            epsilon_error,
            points,
            csv,
            svg,
        } = self;
        let p = plan(&common)?;
        if p.json && csv.as_ref().is_some_and(|c| c.as_os_str() == "-") {
            return Err(usage(
                "csv",
                "'-' (standard output) cannot be combined with --json: give a file",
            ));
        }
        let last = steps_of(&length, p.q)?;
        let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
        let error = finite_positive("epsilon-error", epsilon_error)?;
        if points < 2 {
            return Err(usage("points", "must be at least 2"));
        }
        let grid = log_spaced_steps(last, points);
        let mut columns = Vec::new();
        for kind in &accountants {
            let kind = kind.with_error(error);
            let values = grid
                .iter()
                .map(|&s| epsilon_report(kind, p.q, sigma, s, p.delta).map(|r| r.0))
                .collect::<Result<Vec<f64>, Failure>>()?;
            columns.push((kind.name(), values));
        }
        write_curve(&p, sigma, &grid, &columns, csv, svg)?;
        Ok(())
    }
}

/// About `points` distinct step counts from 1 to `last`, evenly spaced in log scale.
fn log_spaced_steps(last: u64, points: usize) -> Vec<u64> {
    let mut steps: Vec<u64> = (0..points)
        .map(|i| (last as f64).powf(i as f64 / (points - 1) as f64).round() as u64)
        .collect();
    steps.push(last);
    steps.sort_unstable();
    steps.dedup();
    steps
}

fn write_curve(
    p: &Plan,
    sigma: f64,
    grid: &[u64],
    columns: &[(&str, Vec<f64>)],
    csv: Option<PathBuf>,
    svg: Option<PathBuf>,
) -> Result<(), Failure> {
    let write = |path: &PathBuf, text: &str| {
        std::fs::write(path, text)
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(path) = &csv {
        let mut text = String::from("steps");
        for (name, _) in columns {
            text.push_str(&format!(",epsilon_{name}"));
        }
        text.push('\n');
        for (i, s) in grid.iter().enumerate() {
            text.push_str(&s.to_string());
            for (_, values) in columns {
                text.push_str(&format!(",{}", values[i]));
            }
            text.push('\n');
        }
        if path.as_os_str() == "-" {
            print!("{text}");
        } else {
            write(path, &text)?;
        }
    }
    if let Some(path) = &svg {
        let series: Vec<Series<'_>> = columns
            .iter()
            .map(|(name, values)| Series {
                name,
                points: grid
                    .iter()
                    .zip(values)
                    .map(|(&s, &e)| (s as f64, e))
                    .collect(),
            })
            .collect();
        let title = format!(
            "epsilon vs steps (q = {}, sigma = {sigma}, delta = {:e})",
            p.q, p.delta
        );
        let frame = Frame {
            title: &title,
            x_label: "steps",
            y_label: "epsilon",
            x_axis: XAxis::Log,
        };
        write(path, &line_chart(&frame, &series, &[]))?;
    }
    if p.json {
        let rows: Vec<Value> = grid
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = Map::new();
                row.insert("steps".into(), json!(s));
                for (name, values) in columns {
                    row.insert(format!("epsilon_{name}"), number(values[i]));
                }
                Value::Object(row)
            })
            .collect();
        let mut m = Map::new();
        m.insert("sampling_rate".into(), json!(p.q));
        m.insert("noise_multiplier".into(), json!(sigma));
        m.insert("delta".into(), json!(p.delta));
        m.insert(
            "accountants".into(),
            json!(columns.iter().map(|c| c.0).collect::<Vec<_>>()),
        );
        m.insert("curve".into(), Value::Array(rows));
        println!("{}", Value::Object(m));
    } else if csv.as_ref().is_none_or(|c| c.as_os_str() != "-") {
        for (i, s) in grid.iter().enumerate() {
            let cells: Vec<String> = columns
                .iter()
                .map(|(n, v)| format!("{n} {}", shown(v[i])))
                .collect();
            println!("{s:>10} steps  {}", cells.join("  "));
        }
    }
    Ok(())
}
