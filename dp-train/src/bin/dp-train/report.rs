//! `dp-train report`: a run's privacy report again, and its curves as SVG files.

use dp_accounting::plot::{line_chart, Frame, Marker, Series, XAxis};
use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_train::AtPath;
use dp_train::TrainError;

use crate::common::write_file;

pub(crate) fn run(run_dir: &std::path::Path) -> Result<(), TrainError> {
    match std::fs::read_to_string(run_dir.join("privacy_report.txt")) {
        Ok(report) => print!("{report}"),
        Err(_) => print!("{}", unfinished_report(run_dir)?),
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).at("read", &metrics_path)?;
    // Steps replayed after a resume appear twice with identical values: keep the last.
    let mut by_step = std::collections::BTreeMap::new();
    let mut final_test = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(step) = v["step"].as_u64() {
                by_step.insert(step, v);
            } else if let Some(accuracy) = v["test_accuracy"].as_f64() {
                final_test = Some((v["after_step"].as_f64().unwrap_or(f64::NAN), accuracy));
            }
        }
    }
    // What the titles and lines say: the dataset, the run's (epsilon, delta) and budget.
    let ledger: Option<dp_train::LedgerRecord> =
        std::fs::read_to_string(run_dir.join("ledger.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let dataset = std::fs::read_to_string(run_dir.join("config.resolved.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("data")?.get("dataset")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "training".into());
    let guarantee = match &ledger {
        Some(l) => match l.epsilon_spent {
            Some(e) => format!(
                " (epsilon {:.3}, delta {:e})",
                dp_accounting::round_up(e, 3),
                l.delta
            ),
            None => " (NOT PRIVATE)".into(),
        },
        None => String::new(),
    };
    let last_step = by_step
        .keys()
        .last()
        .copied()
        .max(ledger.as_ref().map(|l| l.steps))
        .unwrap_or(1)
        .max(1);
    let series = |key: &str| -> Vec<(f64, f64)> {
        by_step
            .iter()
            .filter_map(|(s, v)| v[key].as_f64().map(|y| (*s as f64, y)))
            .collect()
    };
    // The test accuracy at each epoch and after the last step.
    let mut test_points: Vec<(f64, f64)> = series("test_accuracy");
    test_points.extend(
        final_test.filter(|&(step, _)| test_points.last().is_none_or(|&(last, _)| step > last)),
    );
    let test_accuracy = final_test.map(|(_, accuracy)| accuracy);
    let budget = ledger.as_ref().and_then(|l| l.budget);
    let budget_label = format!("budget {}", budget.unwrap_or(f64::NAN));
    let test_label = format!(
        "test accuracy {:.1}%",
        100.0 * test_accuracy.unwrap_or(f64::NAN)
    );
    for (file, key, label, marker) in [
        (
            "epsilon.svg",
            "epsilon",
            "epsilon spent",
            budget.map(|y| Marker::AtY {
                y,
                label: &budget_label,
            }),
        ),
        ("loss.svg", "mean_loss", "training-batch loss", None),
        (
            "accuracy.svg",
            "accuracy",
            "training-batch accuracy",
            test_accuracy.map(|y| Marker::AtY {
                y,
                label: &test_label,
            }),
        ),
    ] {
        let title = format!("{dataset}: {label} vs steps{guarantee}");
        let frame = Frame {
            title: &title,
            x_label: "steps",
            y_label: if key == "accuracy" { "accuracy" } else { label },
            x_axis: XAxis::LinearTo(last_step as f64),
        };
        let mut curves = vec![Series {
            name: label,
            points: series(key),
        }];
        if key == "accuracy" && !test_points.is_empty() {
            curves.push(Series {
                name: "test accuracy at each epoch (public test split)",
                points: test_points.clone(),
            });
        }
        let svg = line_chart(&frame, &curves, marker.as_slice());
        write_file(&run_dir.join(file), svg.as_bytes())?;
    }
    println!(
        "Curves written to {} (epsilon.svg, loss.svg, accuracy.svg)",
        run_dir.display()
    );
    Ok(())
}

/// What the ledger of a run without a privacy report (still running, or killed) holds.
fn unfinished_report(run_dir: &std::path::Path) -> Result<String, TrainError> {
    let path = run_dir.join("ledger.json");
    let text = std::fs::read_to_string(&path).at("read", &path)?;
    let ledger: dp_train::LedgerRecord =
        serde_json::from_str(&text).map_err(|e| TrainError::Damaged {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    let spent = ledger
        .epsilon_spent
        .map_or("infinite (NOT PRIVATE)".into(), |e| {
            format!("{:.3}", dp_accounting::round_up(e, 3))
        });
    Ok(format!(
        "Unfinished run (no privacy_report.txt yet): its ledger records {} steps, epsilon {spent} at delta {:e} (sampling rate {}, noise multiplier {}). Resume it with the same command to finish it; the curves below hold the steps its metrics.jsonl recorded.\n",
        ledger.steps, ledger.delta, ledger.sampling_rate, ledger.noise_multiplier
    ))
}
