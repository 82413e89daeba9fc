//! `dp-train`: differentially private training from the command line.

mod audit;
mod bench;
mod common;
mod evaluate;
mod export;
mod fashion_mnist;
mod launch;
mod predict;
mod report;
mod train;
mod tune;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Differentially private training of libtorch models.
///
/// Every run clips each example's gradient and adds Gaussian noise: DP-SGD with Poisson
/// sampling and independent noise, or (`noise = "mf"`) correlated matrix-factorization noise
/// over fixed batches visited cyclically. The noise multiplier is calibrated to the target
/// (epsilon, delta) and a privacy ledger refuses any step beyond it. Privacy is per example:
/// add/remove-one neighbours for Poisson-sampled runs, zero-out neighbours for cyclic ones.
#[derive(Parser, Debug)]
#[command(name = "dp-train", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train from a TOML plan into a run folder (resumable): config.resolved.toml, ledger.json,
    /// metrics.jsonl, privacy_report.txt, checkpoints/.
    ///
    /// Example: dp-train train --config examples/fashion_mnist.toml --run-dir runs/fmnist
    ///          --set privacy.epsilon=1 --set performance.threads=2
    Train(train::TrainArgs),
    /// Reprint a run's privacy report and draw its curves (epsilon, loss and batch accuracy
    /// against steps) as SVG files in the run folder.
    Report {
        /// The run folder.
        run_dir: PathBuf,
    },
    /// Score a run's model on its test split (or a labelled CSV): accuracy, loss, per-class
    /// precision and recall, and the confusion matrix. The scores are computed from the
    /// evaluation examples without noise: they are not private with respect to them.
    ///
    /// Example: dp-train evaluate runs/minilm --data my_labelled.csv
    Evaluate(evaluate::EvaluateArgs),
    /// Label texts with a run's model: one text per line (or a CSV with a `text` column)
    /// from --input or stdin; writes CSV (label, its probability, every class's probability,
    /// text) or JSON lines. Predictions are post-processing of the private weights.
    ///
    /// Example: echo "a gorgeous, witty film" | dp-train predict runs/minilm
    Predict(predict::PredictArgs),
    /// Write a run's model where other tools load it: for an encoder a Hugging Face BERT
    /// folder (LoRA merged into the weights, the tokenizer, the head), for every model the
    /// privacy statement in the safetensors metadata and a README.md model card. Nothing
    /// secret is exported (no generator state, no checkpoints, no seed).
    ///
    /// Example: dp-train export runs/minilm --out exported/minilm-rt
    Export(export::ExportArgs),
    /// Train an MLP on Fashion-MNIST privately and report test accuracy and the privacy spent.
    ///
    /// Example: dp-train fashion-mnist --epsilon 3 --delta 1e-5 --epochs 10
    FashionMnist(fashion_mnist::FashionMnistArgs),
    /// Audit the DP-SGD loop empirically: train with and without canaries, attack, and bound
    /// epsilon from below (Bayesian and Clopper-Pearson, or the one-run bound).
    ///
    /// A correct run's lower bound stays below the claimed epsilon; --sabotage no-noise or
    /// no-clipping plants a bug that the audit should catch. With --config, the audited run is
    /// your plan as `dp-train train` runs it (the MiniLM encoder included). Examples:
    ///   dp-train audit --canary gradient --trials 200 --epsilon 2 --out runs/audit
    ///   dp-train audit --config examples/minilm_rotten_tomatoes.toml --trials 200
    Audit(audit::AuditArgs),
    /// Private hyperparameter search on any plan `train` accepts: a random number of private
    /// runs of the plan with values drawn from the config's [search] space (plan keys of
    /// [model], [training] and privacy.clip_norm), each scored on a validation split (a noisy
    /// count, or a split the config declares public); only the best run is released (its
    /// model, hyperparameters and score, nothing about the others, not even how many), and the
    /// total epsilon covers the whole search (Papernot and Steinke 2022). --show-trials
    /// releases every run instead, accounted as that many runs composed. Optional TAN mode.
    ///
    /// Examples: dp-train tune --config examples/tune_fashion_mnist.toml --run-dir runs/tuned
    ///           dp-train tune --config examples/tune_minilm.toml --run-dir runs/minilm-tuned
    Tune(tune::TuneArgs),
    /// Time DP steps (secure and/or fast noise) against a non-private step of the same
    /// BERT-style encoder on the same batch (one process, in rounds of one step per mode; each
    /// ratio is the median of the rounds' own ratios, so drifts in the machine's speed cancel),
    /// time the noise alone (on the CPU: secure and fast releases against libtorch's randn
    /// alone and its normal_ in place; on CUDA: both releases on the device, the secure one
    /// checked bit for bit against the host's), and measure each mode's peak memory in a child
    /// process of its own: resident host memory, and on CUDA the peak bytes allocated on the
    /// device (as torch.cuda.max_memory_allocated).
    ///
    /// Example: dp-train bench --shape bert-base --batch 32 --seq 128 --device cuda --noise both
    Bench(bench::BenchArgs),
}

const EXIT_CODES: &str = "Exit codes: 0 done; 1 the run failed (a file that cannot be read or \
written, a damaged run folder, a data-parallel process that died, libtorch); 2 invalid input (a \
plan key or flag, with its reason; the data; a run folder made by another plan); 70 an internal \
error of the toolkit (a bug: please report it). Errors are one line on stderr.";

fn main() -> ExitCode {
    let cli: Cli = match dp_accounting::cli::parse("dp-train") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Report { run_dir } => report::run(&run_dir),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        Command::FashionMnist(args) => fashion_mnist::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dp-train: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
