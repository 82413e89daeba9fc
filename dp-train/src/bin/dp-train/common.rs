//! What the subcommands share: progress bars, files, trained models.

use dp_train::evaluation::Evaluation;
use dp_train::plan::DeviceChoice;
use dp_train::trained::{Labelled, TrainedModel};
use dp_train::AtPath;
use dp_train::TrainError;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `steps` training steps (hidden when the output is JSON).
pub(crate) fn step_bar(steps: u64, hidden: bool) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("static template"),
    );
    bar
}

/// The name a command-line choice is given by (`bert-base`), to pass it on to a child process.
pub(crate) fn arg_name(value: &impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// Writes a file, naming it in the error.
pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).at("write", path)
}

/// The model of a run folder, and one line saying which weights they are and what they claim.
pub(crate) fn load_trained(
    run_dir: &std::path::Path,
    device: DeviceChoice,
) -> Result<(TrainedModel, String), TrainError> {
    let model = TrainedModel::load(run_dir, device.device()?)?;
    let statement = model.statement()?;
    let guarantee = if statement.noise_multiplier > 0.0 {
        format!("({:.3}, {:e})-DP", statement.epsilon, statement.delta)
    } else {
        "NOT PRIVATE".into()
    };
    let line = format!(
        "{}: weights after step {} of {}, {guarantee}",
        run_dir.display(),
        model.ledger.steps,
        model.planned_steps
    );
    Ok((model, line))
}

/// Scores `set` with `model`.
pub(crate) fn evaluate(model: &TrainedModel, set: &Labelled) -> Result<Evaluation, TrainError> {
    let logits =
        Vec::<Vec<f64>>::try_from(model.logits(&set.examples)?.to_kind(tch::Kind::Double))?;
    Evaluation::from_logits(&logits, &set.labels, &model.class_names, &set.source)
}
