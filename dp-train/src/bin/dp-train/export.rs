//! `dp-train export`: a run's model written where other tools load it, with its privacy statement.

use std::path::PathBuf;

use dp_accounting::quiet_println as println;
use dp_train::plan::DeviceChoice;
use dp_train::TrainError;

use crate::common::{evaluate, load_trained};

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    /// The run folder (its latest checkpoint is exported).
    run_dir: PathBuf,
    /// The folder to write (new, or empty).
    #[arg(long)]
    out: PathBuf,
    /// Where to evaluate the model for its card: cpu, cuda, or auto.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ExportArgs) -> Result<(), TrainError> {
    let (model, line) = load_trained(&args.run_dir, args.device)?;
    let test = model.test_set()?;
    let scores = evaluate(&model, &test)?;
    let files = dp_train::export::export(&model, &scores, &args.out)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "out": args.out, "files": files, "steps": model.ledger.steps, "test_accuracy": scores.accuracy, "privacy": model.statement()?.withhold_seed() })
        );
    } else {
        println!("{line}");
        println!(
            "Exported to {}: {} (test accuracy {:.2}% on {})",
            args.out.display(),
            files.join(", "),
            100.0 * scores.accuracy,
            scores.source
        );
        println!("  The privacy statement is in README.md and in the metadata of model.safetensors; no generator state, checkpoint or seed was exported.");
    }
    Ok(())
}
