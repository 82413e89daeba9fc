//! `dp-train evaluate`: a run's model scored on its test split or a labelled CSV.

use std::path::PathBuf;

use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_train::plan::DeviceChoice;
use dp_train::TrainError;

use crate::common::{evaluate, load_trained};

#[derive(clap::Args, Debug)]
pub(crate) struct EvaluateArgs {
    /// The run folder (its latest checkpoint is evaluated).
    run_dir: PathBuf,
    /// A CSV with `text` and `label` columns to score instead of the plan's test split (text
    /// models).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu, cuda, or auto.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: EvaluateArgs) -> Result<(), TrainError> {
    let (model, line) = load_trained(&args.run_dir, args.device)?;
    let set = match &args.data {
        Some(path) => model.labelled_csv(path)?,
        None => model.test_set()?,
    };
    let scores = evaluate(&model, &set)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "run_dir": args.run_dir, "steps": model.ledger.steps, "evaluation": scores })
        );
    } else {
        print!("{line}\n{scores}");
        println!("  (computed from these examples without noise: not private with respect to them; the run's guarantee covers its training data)");
    }
    Ok(())
}
