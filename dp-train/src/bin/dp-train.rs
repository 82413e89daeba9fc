//! `dp-train`: differentially private training from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dp_accounting::audit::posterior_cdf;
use dp_accounting::plot::{line_chart, Frame, Marker, Series, XAxis};
use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_core::{NoiseMode, PrivacyRng};
use dp_train::audit::{self, AuditConfig, CanaryKind, Sabotage};
use dp_train::audit_plan::{audit_plan, PlanAuditConfig};
use dp_train::bench::{self, BenchConfig, StepMode};
use dp_train::checkpoint::Checkpointing;
use dp_train::data::assets_dir;
use dp_train::evaluation::{predicted, probabilities, Evaluation};
use dp_train::fashion_mnist::{self, FashionMnist, RunConfig};
use dp_train::job::Job;
use dp_train::models::{EncoderShape, Precision};
use dp_train::optimizer::{Optimizer, Schedule};
use dp_train::plan::TrainConfig;
use dp_train::trained::{Examples, Labelled, TrainedModel};
use dp_train::tune::{self, Disclosure, TuneConfig};
use dp_train::TrainError;
use dp_train::{evaluate_accuracy, train_with_hooks, AtPath, NoHooks, PrivacyStatement};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

/// Differentially private training of libtorch models.
///
/// Every run clips each example's gradient and adds Gaussian noise: DP-SGD with Poisson
/// sampling and independent noise, or (`noise = "mf"`) correlated matrix-factorization noise
/// over fixed batches visited cyclically. The noise multiplier is calibrated to the target
/// (epsilon, delta) and a privacy ledger refuses any step beyond it. Privacy is per example:
/// add/remove-one neighbours for Poisson-sampled runs, zero-out neighbours for cyclic ones.
#[derive(Parser, Debug)]
#[command(name = "dp-train", version)]
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
    Train(TrainArgs),
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
    Evaluate(EvaluateArgs),
    /// Label texts with a run's model: one text per line (or a CSV with a `text` column)
    /// from --input or stdin; writes CSV (label, its probability, every class's probability,
    /// text) or JSON lines. Predictions are post-processing of the private weights.
    ///
    /// Example: echo "a gorgeous, witty film" | dp-train predict runs/minilm
    Predict(PredictArgs),
    /// Write a run's model where other tools load it: for an encoder a Hugging Face BERT
    /// folder (LoRA merged into the weights, the tokenizer, the head), for every model the
    /// privacy statement in the safetensors metadata and a README.md model card. Nothing
    /// secret is exported (no generator state, no checkpoints, no seed).
    ///
    /// Example: dp-train export runs/minilm --out exported/minilm-rt
    Export(ExportArgs),
    /// Train an MLP on Fashion-MNIST privately and report test accuracy and the privacy spent.
    ///
    /// Example: dp-train fashion-mnist --epsilon 3 --delta 1e-5 --epochs 10
    FashionMnist(FashionMnistArgs),
    /// Audit the DP-SGD loop empirically: train with and without canaries, attack, and bound
    /// epsilon from below (Bayesian and Clopper-Pearson, or the one-run bound).
    ///
    /// A correct run's lower bound stays below the claimed epsilon; --sabotage no-noise or
    /// no-clipping plants a bug that the audit should catch. With --config, the audited run is
    /// your plan as `dp-train train` runs it (the MiniLM encoder included). Examples:
    ///   dp-train audit --canary gradient --trials 200 --epsilon 2 --out runs/audit
    ///   dp-train audit --config examples/minilm_rotten_tomatoes.toml --trials 200
    Audit(AuditArgs),
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
    Tune(TuneArgs),
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
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct EvaluateArgs {
    /// The run folder (its latest checkpoint is evaluated).
    run_dir: PathBuf,
    /// A CSV with `text` and `label` columns to score instead of the plan's test split (text
    /// models).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu, cuda, or auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct PredictArgs {
    /// The run folder (its latest checkpoint predicts).
    run_dir: PathBuf,
    /// Texts to label: a .csv file with a `text` column, or any other file with one text per
    /// line [default: stdin, one text per line].
    #[arg(long)]
    input: Option<PathBuf>,
    /// cpu, cuda, or auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Write JSON lines ({"text", "label", "probabilities"}) instead of CSV.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// The run folder (its latest checkpoint is exported).
    run_dir: PathBuf,
    /// The folder to write (new, or empty).
    #[arg(long)]
    out: PathBuf,
    /// Where to evaluate the model for its card: cpu, cuda, or auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Encoder shape: minilm (all-MiniLM-L6-v2) or bert-base.
    #[arg(long, default_value = "minilm", value_parser = ["minilm", "bert-base"])]
    shape: String,
    /// Examples per step.
    #[arg(long, allow_hyphen_values = true, default_value_t = 32)]
    batch: i64,
    /// Tokens per example.
    #[arg(long, allow_hyphen_values = true, default_value_t = 64)]
    seq: i64,
    /// Timed rounds: one step per mode each, after a warm-up round (medians reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// cpu, cuda, or auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Activation precision of both modes: f32, or bf16 (parameters, per-example norms and
    /// clipped sums stay f32; meant for CUDA).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
    /// Instead of DP vs non-private: time a DP step with independent noise against one with
    /// correlated BLT noise of this many buffers (matrix factorization), side by side.
    #[arg(long, value_name = "BUFFERS")]
    correlated: Option<usize>,
    /// Noise of the DP steps: secure, fast, or both (timed side by side, interleaved). A DP
    /// step that only clips (no noise) is always timed too, to show the engine's own cost.
    #[arg(long, default_value = "both", value_parser = ["secure", "fast", "both"])]
    noise: String,
    /// Internal: run one mode only (a DP step with --noise, one that only clips, or a
    /// non-private one) and report its peak memory.
    #[arg(long, hide = true, value_parser = ["dp", "clip", "nonprivate"])]
    only: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TuneArgs {
    /// TOML file naming the plan searched (`plan = "..."`, relative to this file) with
    /// [tuning] and [search] (plan keys and their values) sections.
    #[arg(long)]
    config: PathBuf,
    /// Override [tuning] tan_scale (search at k B and k sigma, then one full-scale run); 1 turns
    /// TAN mode off.
    #[arg(long, allow_hyphen_values = true)]
    tan_scale: Option<f64>,
    /// Seed the privacy generator (the number of runs, the draws, the noise): reproducible,
    /// not private. Without it, the operating system seeds it.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder with the plan's dataset [default: its folder under $DP_ASSETS].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Release every run (their hyperparameters, scores and number) instead of the chosen one
    /// alone: the search is then accounted as that many runs composed, which costs more
    /// epsilon than the random-count bound.
    #[arg(long)]
    show_trials: bool,
    /// Save the released model (model.safetensors, with the plan it was trained with in
    /// config.resolved.toml), the privacy report and tune.json here.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// Audit this TOML plan as `dp-train train` runs it (its data, model, sampling, clipping,
    /// noise and optimizer, the MiniLM encoder included) instead of the built-in Fashion-MNIST
    /// run; the canary is one more row, given an inserted gradient (gradient) or a wrong label
    /// (input). The flags below that describe the built-in run do not apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: override a plan value, section.key=value (repeatable).
    #[arg(long = "set", requires = "config")]
    set: Vec<String>,
    /// gradient: an example whose gradient owns one column of the first layer, trained and
    /// clipped like any example, scored on every noisy update against its clipped gradient
    /// (white-box, strong; with --config: a gradient of norm 100 C inserted on the trained
    /// coordinate the real examples touch least whenever the run samples the canary's row,
    /// cut to the run's clip norm); input: a mislabelled example scored by its final loss
    /// (black-box, weak).
    #[arg(long, default_value = "gradient", value_parser = ["gradient", "input"])]
    canary: String,
    /// Training runs, each with or without the canary (a fair coin each); 20% fix the
    /// attack's threshold, the rest are counted.
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Instead of trials: one run with this many gradient canaries, each included with
    /// probability 1/2 (Steinke, Nasr, Jagielski 2023).
    #[arg(long, conflicts_with = "config")]
    one_run_canaries: Option<u64>,
    /// Guesses in the one-run audit (half on the highest scores, half on the lowest).
    #[arg(long, default_value_t = 100)]
    guesses: u64,
    /// Claimed epsilon: the noise is calibrated to it.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 2.0,
        conflicts_with = "config"
    )]
    epsilon: f64,
    /// Claimed delta.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 1e-5,
        conflicts_with = "config"
    )]
    delta: f64,
    /// Steps of each training run.
    #[arg(long, default_value_t = 100, conflicts_with = "config")]
    steps: u64,
    /// Training images used (the first N).
    #[arg(long, default_value_t = 1000, conflicts_with = "config")]
    dataset_size: usize,
    /// Expected batch size.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 50.0,
        conflicts_with = "config"
    )]
    batch_size: f64,
    /// Credible / confidence level of the bounds.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.95)]
    level: f64,
    /// Plant a bug: none, no-noise, no-clipping (clip at 1000 C), unclipped-layer (the
    /// clipping engine leaves the first layer, the gradient canaries' layer, unclipped).
    #[arg(long, default_value = "none", value_parser = ["none", "no-noise", "no-clipping", "unclipped-layer"])]
    sabotage: String,
    /// Seed of the experiment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for report.txt, audit.json and posterior.svg.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder with the Fashion-MNIST IDX files [default: $DP_ASSETS/fashion-mnist].
    #[arg(long, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// TOML plan with [data], [privacy], [training] and optional [performance] sections.
    #[arg(long)]
    config: PathBuf,
    /// Override a value: section.key=value (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The run folder (created; resumed if it holds a checkpoint).
    #[arg(long)]
    run_dir: PathBuf,
    /// The dataset's folder [default: $DP_ASSETS/fashion-mnist or $DP_ASSETS/rotten-tomatoes].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct FashionMnistArgs {
    /// Target epsilon; the noise multiplier is calibrated to meet it.
    #[arg(long, allow_hyphen_values = true, default_value_t = 3.0)]
    epsilon: f64,
    /// Target delta (use well below 1/N; N = 60,000).
    #[arg(long, allow_hyphen_values = true, default_value_t = 1e-5)]
    delta: f64,
    /// Passes over the data, in expectation.
    #[arg(long, allow_hyphen_values = true, default_value_t = 10.0)]
    epochs: f64,
    /// Expected logical batch size B (sampling rate q = B / N).
    #[arg(long, allow_hyphen_values = true, default_value_t = 1024.0)]
    batch_size: f64,
    /// Largest physical batch (memory only; no effect on privacy).
    #[arg(long, default_value_t = 512)]
    physical_batch_size: usize,
    /// Per-example gradient clip norm C.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0)]
    clip_norm: f64,
    /// Base learning rate.
    #[arg(long, allow_hyphen_values = true, default_value_t = 4.0)]
    learning_rate: f64,
    /// Optimizer on the privatized gradient: sgd (with --momentum, --nesterov), adam, adamw.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adam", "adamw"])]
    optimizer: String,
    /// SGD momentum.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    momentum: f64,
    /// Nesterov momentum (with --momentum).
    #[arg(long)]
    nesterov: bool,
    /// AdamW weight decay.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.01)]
    weight_decay: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Cosine decay of the learning rate to 0 over the run.
    #[arg(long)]
    cosine: bool,
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    hidden: Vec<i64>,
    /// Train on the first N images only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Seed the privacy generator: reproducible, but the noise is then known to anyone with the
    /// seed. Without it, the generator is seeded from the operating system.
    #[arg(long)]
    seed: Option<u64>,
    /// How the noise is drawn: secure (discrete noise on a grid, for real runs) or fast
    /// (libtorch's floating-point randn, research only).
    #[arg(long, default_value = "secure", value_parser = ["secure", "fast"])]
    noise_mode: String,
    /// Folder with the Fashion-MNIST IDX files [default: $DP_ASSETS/fashion-mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A NOT PRIVATE baseline: the same training without noise (epsilon is infinite).
    #[arg(long)]
    no_noise: bool,
    /// Run folder: checkpoints (weights, optimizer, generator state, ledger) are saved there
    /// atomically, and a folder holding one is resumed where its ledger stopped. The generator
    /// state is as sensitive as a seed.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Steps between checkpoints (with --run-dir).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Where to train: cpu, cuda (the first GPU), or auto (cuda when available).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli: Cli = match dp_accounting::cli::parse("dp-train") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Train(args) => train_command(args),
        Command::Report { run_dir } => report_command(&run_dir),
        Command::Evaluate(args) => evaluate_command(args),
        Command::Predict(args) => predict_command(args),
        Command::Export(args) => export_command(args),
        Command::FashionMnist(args) => fashion_mnist_command(args),
        Command::Audit(args) => audit_command(args),
        Command::Tune(args) => tune_command(args),
        Command::Bench(args) => bench_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dp-train: error: {e}");
            match e {
                TrainError::Config(_) | TrainError::Accounting(_) | TrainError::Data { .. } => {
                    ExitCode::from(2)
                }
                TrainError::Io(_) => ExitCode::FAILURE,
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn fashion_mnist_command(args: FashionMnistArgs) -> Result<(), TrainError> {
    let config = RunConfig {
        epsilon: args.epsilon,
        delta: args.delta,
        epochs: args.epochs,
        expected_batch_size: args.batch_size,
        physical_batch_size: args.physical_batch_size,
        clip_norm: args.clip_norm,
        learning_rate: args.learning_rate,
        optimizer: match args.optimizer.as_str() {
            "adam" => Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            "adamw" => Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: args.weight_decay,
            },
            _ => Optimizer::Sgd {
                momentum: args.momentum,
                nesterov: args.nesterov,
            },
        },
        schedule: Schedule {
            warmup_steps: args.warmup_steps,
            cosine: args.cosine,
        },
        hidden: args.hidden,
        train_subset: args.train_subset,
        seed: args.seed,
        no_noise: args.no_noise,
        noise_mode: args.noise_mode.parse().map_err(TrainError::Config)?,
    };
    let dir = args
        .data_dir
        .unwrap_or_else(|| assets_dir().join("fashion-mnist"));
    let data = FashionMnist::load(&dir)?;
    let n = config.train_subset.unwrap_or(60_000).min(60_000) as f64;
    let planned = (config.epochs * n / config.expected_batch_size).ceil() as u64;
    let bar = step_bar(planned, args.json);
    let device = parse_device(&args.device)?;
    let checkpointing = args.run_dir.clone().map(|dir| Checkpointing {
        dir,
        every: args.checkpoint_every,
        resolved_config: None,
    });
    let result = fashion_mnist::run(&data, &config, device, checkpointing.as_ref(), |step| {
        bar.set_position(step.step);
        bar.set_message(format!(
            "loss {:.3}  epsilon {:.3}",
            step.mean_loss, step.epsilon
        ));
    })?;
    bar.finish_and_clear();
    if args.json {
        let out =
            serde_json::json!({ "config": config, "result": result, "private": !config.no_noise });
        println!("{out}");
    } else {
        if config.no_noise {
            println!("NOT PRIVATE (--no-noise): no noise is added; epsilon is infinite");
        }
        println!(
            "Fashion-MNIST MLP {:?} on {}: test accuracy {:.2}% after {} steps ({:.1} s, {:.1} steps/s)",
            config.hidden,
            result.device,
            100.0 * result.test_accuracy,
            result.privacy.steps,
            result.train_seconds,
            result.privacy.steps as f64 / result.train_seconds
        );
        if result.nonfinite_examples > 0 {
            println!(
                "warning: {} examples had non-finite gradients and were dropped from their step",
                result.nonfinite_examples
            );
        }
        print!("{}", result.privacy);
    }
    Ok(())
}

fn audit_command(args: AuditArgs) -> Result<(), TrainError> {
    let sabotage = match args.sabotage.as_str() {
        "no-noise" => Sabotage::NoNoise,
        "no-clipping" => Sabotage::NoClipping,
        "unclipped-layer" => Sabotage::UnclippedLayer,
        _ => Sabotage::None,
    };
    let config = AuditConfig {
        epsilon: args.epsilon,
        delta: args.delta,
        dataset_size: args.dataset_size,
        expected_batch_size: args.batch_size,
        steps: args.steps,
        level: args.level,
        sabotage,
        seed: args.seed,
        ..AuditConfig::default()
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| assets_dir().join("fashion-mnist"));
    let start = std::time::Instant::now();
    let broken = if sabotage == Sabotage::None {
        String::new()
    } else {
        format!(" (SABOTAGED: {}, NOT PRIVATE)", args.sabotage)
    };
    let canary = if args.canary == "input" {
        CanaryKind::Input
    } else {
        CanaryKind::Gradient
    };
    let (report, json, plot) = if let Some(plan) = &args.config {
        let (report, json, plot) = audit_plan_report(&args, plan, sabotage, canary, &broken)?;
        (report, json, Some(plot))
    } else if let Some(m) = args.one_run_canaries {
        let data = FashionMnist::load(&dir)?;
        let r = audit::audit_one_run(&data, &config, m, args.guesses)?;
        let verdict = if r.claim_refuted {
            "REFUTED: the lower bound exceeds the claim"
        } else {
            "consistent: the lower bound is below the claim"
        };
        let report = format!(
            "One-run audit{broken}: {} gradient canaries, {} guesses, {} correct\n  epsilon >= {:.3} at {}% confidence (Steinke, Nasr, Jagielski 2023)\n  claimed epsilon {} (noise multiplier {:.4}, delta {:e}): {verdict}\n",
            r.canaries, r.guesses, r.correct, (r.epsilon_lower_bound * 1000.0).floor() / 1000.0, 100.0 * config.level, config.epsilon, r.noise_multiplier, config.delta
        );
        (
            report,
            serde_json::json!({ "config": config, "one_run": r }),
            None,
        )
    } else {
        let data = FashionMnist::load(&dir)?;
        audit::check_trials(args.trials)?;
        let bar = if args.json {
            ProgressBar::hidden()
        } else {
            eprintln!(
                "Auditing epsilon {}: {} training runs x {} steps = {} steps ({} examples, batch {}); 200 runs of the default plan take about 2 minutes on 2 cores",
                config.epsilon,
                args.trials,
                config.steps,
                args.trials as u64 * config.steps,
                config.dataset_size,
                config.expected_batch_size
            );
            ProgressBar::new(args.trials as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} trials  [{elapsed} < {eta}]")
                .expect("static template"),
        );
        let r = audit::audit_trials(&data, &config, canary, args.trials, |k| {
            bar.set_position(k as u64)
        })?;
        bar.finish_and_clear();
        let (report, plot) = trials_report(&r, config.epsilon, config.delta, config.level, &broken);
        (
            report,
            serde_json::json!({ "config": config, "audit": r }),
            Some(plot),
        )
    };
    let seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).at("create", out)?;
        write_file(&out.join("report.txt"), report.as_bytes())?;
        write_file(&out.join("audit.json"), json.to_string().as_bytes())?;
        if let Some(svg) = &plot {
            write_file(&out.join("posterior.svg"), svg.as_bytes())?;
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{report}");
        println!(
            "  wall time {seconds:.1} s{}",
            args.out
                .as_ref()
                .map(|o| format!("; written to {}", o.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Audits the plan at `path` (see `dp_train::audit_plan`): its report, JSON and posterior plot.
fn audit_plan_report(
    args: &AuditArgs,
    path: &std::path::Path,
    sabotage: Sabotage,
    canary: CanaryKind,
    broken: &str,
) -> Result<(String, serde_json::Value, String), TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", path.display())))?;
    let config = TrainConfig::from_toml(&text, &args.set)?;
    let plan = config.resolve()?;
    audit::check_trials(args.trials)?;
    let device = parse_device(&config.performance.device)?;
    if config.performance.threads > 0 {
        tch::set_num_threads(config.performance.threads);
    }
    let job = Job::load(&config, device, None, |_, _| {})?;
    let audit = PlanAuditConfig {
        canary,
        trials: args.trials,
        level: args.level,
        sabotage,
        seed: args.seed,
    };
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        eprintln!(
            "Auditing the plan {} ({}): {} training runs x {} steps = {} steps of {} examples (q = {:.6}, noise multiplier {:.4}); each run costs what `dp-train train` of this plan costs, the bar's estimate follows the first runs",
            path.display(),
            job.description,
            args.trials,
            plan.steps,
            args.trials as u64 * plan.steps,
            config.data.dataset_size,
            plan.sampling_rate,
            plan.noise_multiplier
        );
        ProgressBar::new(args.trials as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} trials  [{elapsed} < {eta}]")
            .expect("static template"),
    );
    let r = audit_plan(&job, &config, &audit, |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    let (report, plot) = trials_report(
        &r.audit,
        r.claimed_epsilon,
        config.privacy.delta,
        args.level,
        broken,
    );
    let report = format!("Plan {} ({})\n{report}", path.display(), job.description);
    let json = serde_json::json!({ "plan": config, "audit_config": audit, "claimed_epsilon": r.claimed_epsilon, "audit": r.audit });
    Ok((report, json, plot))
}

/// The report of a K-trial audit of a claim (`epsilon`, `delta`), and the posterior's plot.
fn trials_report(
    r: &dp_train::audit::TrialAudit,
    epsilon: f64,
    delta: f64,
    level: f64,
    broken: &str,
) -> (String, String) {
    let e = &r.estimate;
    let verdict = if r.claim_refuted {
        "REFUTED: the Bayesian lower bound exceeds the claim"
    } else {
        "consistent: the lower bounds are below the claim"
    };
    let report = format!(
        "Audit{broken}: {}, {} trials ({} counted: {} with, {} without); FP {}, FN {}\n  Bayesian         P[epsilon >= {:.3}] = {}%; credible interval [{:.3}, {:.3}]\n  Clopper-Pearson  epsilon >= {:.3}\n  claimed epsilon {} (noise multiplier {:.4}, delta {:e}): {verdict}\n",
        r.canary, r.trials, e.counts.positives + e.counts.negatives, e.counts.positives, e.counts.negatives,
        e.counts.false_positives, e.counts.false_negatives,
        (e.bayes.eps_lo_one_sided * 1000.0).floor() / 1000.0, 100.0 * level,
        (e.bayes.eps_lo_two_sided * 1000.0).floor() / 1000.0, (e.bayes.eps_hi_two_sided * 1000.0).ceil() / 1000.0,
        (e.clopper_pearson.eps_lo_one_sided * 1000.0).floor() / 1000.0,
        dp_accounting::round_up(epsilon, 3), r.noise_multiplier, delta
    );
    let xs: Vec<f64> = (0..=120)
        .map(|i| i as f64 * (2.0 * epsilon).max(8.0) / 120.0)
        .collect();
    let cdf = posterior_cdf(e.counts, delta, &xs);
    let series = [Series {
        name: "posterior P[epsilon <= x]",
        points: xs.iter().copied().zip(cdf).collect(),
    }];
    let markers = [Marker::AtX {
        x: epsilon,
        label: "claimed epsilon",
    }];
    let frame = Frame {
        title: "Audit: posterior of epsilon",
        x_label: "epsilon",
        y_label: "P[epsilon <= x]",
        x_axis: XAxis::Linear,
    };
    (report, line_chart(&frame, &series, &markers))
}

fn tune_command(args: TuneArgs) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", args.config.display())))?;
    let mut config = TuneConfig::from_toml(&text)?;
    if let Some(k) = args.tan_scale {
        config.tuning.tan_scale = (k != 1.0).then_some(k);
    }
    let plan_path = config.plan_path(&args.config);
    let plan_text = std::fs::read_to_string(&plan_path)
        .map_err(|e| TrainError::Config(format!("plan {}: {e}", plan_path.display())))?;
    let plan = TrainConfig::from_toml(&plan_text, &config.set)?;
    let device = parse_device(&plan.performance.device)?;
    if plan.performance.threads > 0 {
        tch::set_num_threads(plan.performance.threads);
    }
    let seed = args.seed.or(plan.privacy.seed);
    let mut rng = match seed {
        Some(seed) => {
            tch::manual_seed(seed as i64);
            PrivacyRng::from_seed(seed)
        }
        None => PrivacyRng::from_os(),
    };
    let disclosure = if args.show_trials {
        Disclosure::AllTrials
    } else {
        Disclosure::ChosenOnly
    };
    let place = tune::Workspace {
        plan: &plan_text,
        device,
        data_dir: args.data_dir.as_deref(),
    };
    let result = tune::tune(place, &config, disclosure, &mut rng, |t| {
        if !args.json {
            eprintln!(
                "  run: {}  selection score {:.2}%  ({:.1} s)",
                t.describe(),
                100.0 * t.selection_score.unwrap_or(f64::NAN),
                t.seconds
            );
        }
    })?;
    let up = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).ceil() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    let mut report = String::new();
    {
        use std::fmt::Write as _;
        let w = &mut report;
        let _ = match disclosure {
            Disclosure::ChosenOnly => writeln!(w, "Released: the best of a random number of private runs (mean {}; how many ran is not released), each at batch {} and noise multiplier {:.4}, {} steps", config.tuning.mean_runs, result.search_batch_size, result.search_noise_multiplier, result.steps),
            Disclosure::AllTrials => writeln!(w, "Released: all {} runs (--show-trials), each at batch {} and noise multiplier {:.4}, {} steps", result.trials.as_ref().map_or(0, Vec::len), result.search_batch_size, result.search_noise_multiplier, result.steps),
        };
        for t in result.trials.iter().flatten() {
            let _ = writeln!(
                w,
                "  run: {}: selection score {:.2}%, test accuracy {:.2}%",
                t.describe(),
                100.0 * t.selection_score.unwrap_or(f64::NAN),
                100.0 * t.test_accuracy
            );
        }
        let _ = match &result.chosen {
            None => writeln!(w, "No run was drawn: nothing is released."),
            Some(best) => writeln!(
                w,
                "Chosen: {}: selection score {:.2}%, test accuracy {:.2}%",
                best.describe(),
                100.0 * best.selection_score.unwrap_or(f64::NAN),
                100.0 * best.test_accuracy
            ),
        };
        if let (Some(f), Some(eps)) = (&result.final_run, result.final_run_epsilon) {
            let _ = writeln!(
                w,
                "Final full-scale run (TAN), released: test accuracy {:.2}%, epsilon {} (RDP)",
                100.0 * f.test_accuracy,
                up(eps)
            );
        }
        let _ = writeln!(
            w,
            "Privacy (delta {:e}, add/remove one example, RDP):",
            plan.privacy.delta
        );
        let _ = match result.selection {
            tune::Selection::NoisyCount { noise_multiplier } => writeln!(w, "  selection    a count of correct predictions on {} private validation examples plus exact discrete Gaussian noise of standard deviation {noise_multiplier}, accounted in every run with sensitivity 2 (the split is by position)", config.tuning.validation_size),
            tune::Selection::Public => writeln!(w, "  selection    accuracy on {} validation examples the plan declares PUBLIC: they are not protected by this guarantee", config.tuning.validation_size),
        };
        let _ = writeln!(
            w,
            "  one search run       epsilon {} (its training and its selection score)",
            up(result.single_run_epsilon)
        );
        let _ = match disclosure {
            Disclosure::ChosenOnly => writeln!(w, "  the whole search     epsilon {} (Papernot-Steinke bound for a random number of runs, only the chosen one released)", up(result.tuning_epsilon)),
            Disclosure::AllTrials => writeln!(w, "  the whole search     epsilon {} (every run released: the runs composed)", up(result.tuning_epsilon)),
        };
        let _ = writeln!(
            w,
            "  total released       epsilon {}   epsilon rounded up",
            up(result.total_epsilon)
        );
        if let Some(seed) = seed {
            let _ = writeln!(w, "  randomness   seeded with {seed}: reproducible, so anyone who knows the seed can remove the noise");
        }
    }
    if let Some(run_dir) = &args.run_dir {
        std::fs::create_dir_all(run_dir).at("create the run folder", run_dir)?;
        if let Some(model) = &result.model {
            let path = run_dir.join("model.safetensors");
            tch::Tensor::write_safetensors(&model.weights, &path).at("write", &path)?;
            write_file(
                &run_dir.join("config.resolved.toml"),
                model.plan.to_toml()?.as_bytes(),
            )?;
        }
        write_file(&run_dir.join("privacy_report.txt"), report.as_bytes())?;
        write_file(
            &run_dir.join("tune.json"),
            serde_json::json!({ "config": config, "result": result })
                .to_string()
                .as_bytes(),
        )?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "config": config, "result": result })
        );
    } else {
        print!("{report}");
    }
    Ok(())
}

fn bench_command(args: BenchArgs) -> Result<(), TrainError> {
    let device = parse_device(&args.device)?;
    if args.batch < 1 || args.seq < 1 || args.seq > 512 {
        return Err(TrainError::Config(
            "--batch must be >= 1 and --seq in 1..=512".into(),
        ));
    }
    let shape = if args.shape == "bert-base" {
        EncoderShape::BERT_BASE
    } else {
        EncoderShape::MINILM
    };
    let config = BenchConfig {
        shape,
        batch: args.batch,
        seq: args.seq,
        steps: args.steps,
        device,
        precision: if args.precision == "bf16" {
            Precision::Bf16
        } else {
            Precision::F32
        },
    };
    if let Some(buffers) = args.correlated {
        let (independent, correlated) = bench::time_correlated_noise(&config, buffers)?;
        let overhead = correlated / independent - 1.0;
        let out = serde_json::json!({
            "shape": args.shape, "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"),
            "buffers": buffers, "independent_dp_step_s": independent, "correlated_dp_step_s": correlated,
            "correlated_overhead": overhead,
        });
        if args.json {
            println!("{out}");
        } else {
            println!("{} encoder, batch {}, seq {}, {}: DP step with independent noise {:.3} s, with BLT noise ({buffers} buffers) {:.3} s: {:+.1}%", args.shape, args.batch, args.seq, dp_train::device_name(device), independent, correlated, 100.0 * overhead);
        }
        return Ok(());
    }
    let mut noises: Vec<Option<NoiseMode>> = match args.noise.as_str() {
        "both" => vec![Some(NoiseMode::Secure), Some(NoiseMode::Fast)],
        one => vec![Some(one.parse().map_err(TrainError::Config)?)],
    };
    if let Some(only) = &args.only {
        let (mode, noise) = match only.as_str() {
            "dp" => (StepMode::Dp, noises[0]),
            "clip" => (StepMode::Dp, None),
            _ => (StepMode::NonPrivate, None),
        };
        let run = bench::time_mode(&config, mode, noise)?;
        println!(
            "{}",
            serde_json::json!({
                "step_s": run.step_s, "peak_bytes": bench::peak_resident_bytes(),
                "device_peak_bytes": run.device_peak_bytes,
            })
        );
        return Ok(());
    }
    noises.push(None);
    let numel = bench::trainable_coordinates(&config);
    let on_device = device != Device::Cpu;
    let rates = (!on_device)
        .then(|| bench::noise_throughput(numel, 5))
        .transpose()?;
    let times = bench::time_all(&config, &noises)?;
    // The step table is the point of the bench: a failure of the device-noise timing is
    // reported beside it rather than losing it.
    let device_noise = on_device.then(|| bench::device_noise(numel, device, 5));
    // The peaks of one mode run alone: "dp" with a noise, "clip", "nonprivate".
    let peak = |mode: &str, noise: NoiseMode| -> Option<bench::ModePeak> {
        let exe = std::env::current_exe().ok()?;
        let out = std::process::Command::new(exe)
            .args([
                "bench",
                "--shape",
                &args.shape,
                "--batch",
                &args.batch.to_string(),
                "--seq",
                &args.seq.to_string(),
                "--steps",
                "1",
                "--device",
                &args.device,
                "--precision",
                &args.precision,
                "--noise",
                noise.name(),
                "--only",
                mode,
            ])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(bench::ModePeak {
            host: v["peak_bytes"].as_u64()?,
            device: v["device_peak_bytes"].as_u64(),
        })
    };
    let first_noise = noises[0].unwrap_or(NoiseMode::Fast);
    let mut peaks: Vec<(String, Option<bench::ModePeak>)> = noises
        .iter()
        .map(|n| match n {
            Some(mode) => (mode.name().to_string(), peak("dp", *mode)),
            None => ("clip_only".to_string(), peak("clip", first_noise)),
        })
        .collect();
    peaks.push(("nonprivate".into(), peak("nonprivate", first_noise)));
    let host_peak = |name: &str| peaks.iter().find(|(n, _)| n == name)?.1.map(|p| p.host);
    let device_peak = |name: &str| peaks.iter().find(|(n, _)| n == name)?.1?.device;
    let (dp_peak, nonprivate_peak) = (host_peak(first_noise.name()), host_peak("nonprivate"));
    let memory_ratio = dp_peak
        .zip(nonprivate_peak)
        .map(|(d, n)| d as f64 / n as f64);
    let device_memory: serde_json::Map<String, serde_json::Value> = peaks
        .iter()
        .filter_map(|(name, _)| Some((name.clone(), device_peak(name)?.into())))
        .collect();
    let device_memory_ratio: serde_json::Map<String, serde_json::Value> = device_peak("nonprivate")
        .map(|plain| {
            peaks
                .iter()
                .filter(|(name, _)| name != "nonprivate")
                .filter_map(|(name, _)| {
                    Some((
                        name.clone(),
                        (device_peak(name)? as f64 / plain as f64).into(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let name = |m: &Option<NoiseMode>| m.map_or("clip_only", NoiseMode::name).to_string();
    let step_s: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .map(|t| (name(&t.noise), t.step_s.into()))
        .collect();
    let ratio: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .map(|t| (name(&t.noise), t.throughput_ratio.into()))
        .collect();
    let noise_share: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .filter_map(|t| Some((name(&t.noise), t.noise_share?.into())))
        .collect();
    let nonprivate = times.nonprivate_s;
    let mut out = serde_json::json!({
        "shape": args.shape, "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"),
        "precision": args.precision,
        "dp_step_s": step_s, "nonprivate_step_s": nonprivate, "throughput_ratio": ratio,
        "noise_share_of_dp_step": noise_share,
        "secure_over_fast_step": times.secure_over_fast,
        "noise_coordinates": numel,
        "dp_peak_bytes": dp_peak, "nonprivate_peak_bytes": nonprivate_peak, "peak_memory_ratio": memory_ratio,
        "peak_memory_of": "the host process's resident memory",
        "device_peak_allocated_bytes": device_memory,
        "device_peak_memory_ratio": device_memory_ratio,
    });
    if let Some(rates) = &rates {
        out["noise_gsamples_per_s"] = serde_json::json!({
            "secure": rates.secure / 1e9, "fast": rates.fast / 1e9,
            "libtorch_randn": rates.randn / 1e9, "libtorch_normal_in_place": rates.normal_in_place / 1e9,
        });
        out["secure_over_randn"] = rates.secure_over_randn.into();
        out["secure_over_normal_in_place"] = rates.secure_over_normal_in_place.into();
    }
    match &device_noise {
        Some(Ok(d)) => {
            out["device_noise"] = serde_json::json!({
                "fast_release_s": d.fast_release_s, "secure_release_s": d.secure_release_s,
                "secure_matches_host": d.secure_matches_host,
            })
        }
        Some(Err(e)) => out["device_noise_error"] = e.to_string().into(),
        None => {}
    }
    if args.json {
        println!("{out}");
    } else {
        for t in &times.dp {
            let what = match t.noise {
                Some(mode) => format!("DP step ({mode} noise)"),
                None => "DP step without noise (clipping only)".to_string(),
            };
            println!("{} encoder, batch {}, seq {}, {}, {} activations: {what} {:.3} s, non-private step {:.3} s, throughput ratio {:.3}", args.shape, args.batch, args.seq, dp_train::device_name(device), args.precision, t.step_s, nonprivate, t.throughput_ratio);
        }
        if let Some(r) = times.secure_over_fast {
            println!("secure / fast DP step time: {r:.3}");
        }
        for t in &times.dp {
            if let (Some(mode), Some(share)) = (t.noise, t.noise_share) {
                println!(
                    "{mode} noise: {:.1}% of the DP step beyond clipping",
                    100.0 * share
                );
            }
        }
        if let Some(rates) = &rates {
            println!("noise on {numel} coordinates (CPU, Gsamples/s): secure release {:.3}, fast release {:.3}, libtorch randn alone {:.3}, libtorch normal_ in place {:.3}; secure / randn {:.2}, secure / normal_ {:.2}", rates.secure / 1e9, rates.fast / 1e9, rates.randn / 1e9, rates.normal_in_place / 1e9, rates.secure_over_randn, rates.secure_over_normal_in_place);
        }
        if let Some(Err(e)) = &device_noise {
            println!(
                "noise on {}: not measured ({e})",
                dp_train::device_name(device)
            );
        }
        if let Some(Ok(d)) = &device_noise {
            println!("noise on {numel} coordinates on {}: fast release {:.4} s, secure release {:.4} s (drawn on the host, copied, released on the device; not overlapped here); secure release equals the host's bit for bit: {}", dp_train::device_name(device), d.fast_release_s, d.secure_release_s, d.secure_matches_host);
        }
        if let (Some(d), Some(n), Some(r)) = (dp_peak, nonprivate_peak, memory_ratio) {
            let scope = match device {
                Device::Cpu => "whole process, libtorch included",
                _ => "host memory only",
            };
            println!(
                "peak resident memory: DP {:.2} GiB, non-private {:.2} GiB, ratio {:.2} ({scope})",
                d as f64 / 1073741824.0,
                n as f64 / 1073741824.0,
                r
            );
        }
        let gib = |b: u64| b as f64 / 1073741824.0;
        if let Some(plain) = device_peak("nonprivate") {
            let modes: Vec<String> = peaks
                .iter()
                .filter(|(name, _)| name != "nonprivate")
                .filter_map(|(name, _)| {
                    let p = device_peak(name)?;
                    Some(format!(
                        "{name} {:.2} GiB ({:.2}x)",
                        gib(p),
                        p as f64 / plain as f64
                    ))
                })
                .collect();
            println!(
                "peak allocated device memory: non-private {:.2} GiB; DP {}",
                gib(plain),
                modes.join(", ")
            );
        }
    }
    Ok(())
}

/// What a run folder holds that must not be shared, printed with every training report.
const SECRETS_NOTE: &str = "  secrets       checkpoints/step-*/generator.json (and noise.safetensors for correlated noise) hold the privacy generator's state, readable by you only (mode 0600): whoever reads them can remove the noise. Share what `dp-train export` writes (the model, its card and statement), not the run folder.\n";

/// A progress bar over `steps` training steps (hidden when the output is JSON).
fn step_bar(steps: u64, hidden: bool) -> ProgressBar {
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

fn parse_device(name: &str) -> Result<Device, TrainError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !tch::Cuda::is_available() => Err(TrainError::Config(
            "device cuda: no CUDA device is available".into(),
        )),
        "cuda" => Ok(Device::Cuda(0)),
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(TrainError::Config(format!(
            "performance.device: unknown '{other}' (cpu, cuda or auto)"
        ))),
    }
}

fn train_command(args: TrainArgs) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", args.config.display())))?;
    let config = TrainConfig::from_toml(&text, &args.set)?;
    let plan = config.resolve()?;
    let device = parse_device(&config.performance.device)?;
    if config.performance.threads > 0 {
        tch::set_num_threads(config.performance.threads);
    }
    let mut rng = match config.privacy.seed {
        Some(seed) => {
            tch::manual_seed(seed as i64);
            PrivacyRng::from_seed(seed)
        }
        None => PrivacyRng::from_os(),
    };
    let resolved = format!(
        "{}\n# Resolved from [data] and [privacy] only.\n[resolved]\nsampling_rate = {}\nsteps = {}\nnoise_multiplier = {}\nepsilon_budget = {}\n",
        config.to_toml()?,
        plan.sampling_rate,
        plan.steps,
        plan.noise_multiplier,
        if plan.epsilon_budget.is_finite() { plan.epsilon_budget.to_string() } else { "inf".into() }
    );
    let checkpointing = Checkpointing {
        dir: args.run_dir.clone(),
        every: config.performance.checkpoint_every,
        resolved_config: Some(resolved.clone()),
    };
    // A folder holding another plan's checkpoint is refused before anything is loaded or written.
    checkpointing.check_resumed_plan(&resolved)?;
    let cache_bar = ProgressBar::hidden();
    let job = Job::load(&config, device, args.data_dir.as_deref(), |done, total| {
        if cache_bar.is_hidden() && !args.json {
            cache_bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            cache_bar.set_length(total as u64);
            cache_bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} examples through the frozen layers  [{elapsed} < {eta}]",
                )
                .expect("static template"),
            );
        }
        cache_bar.set_position(done as u64);
    })?;
    cache_bar.finish_and_clear();
    let n = config.data.dataset_size;
    let run_dir = &args.run_dir;
    std::fs::create_dir_all(run_dir).at("create the run folder", run_dir)?;
    write_file(&run_dir.join("config.resolved.toml"), resolved.as_bytes())?;
    let dp = config.dp_sgd_config(&plan);
    let (trainable, total) = job.parameter_counts();
    if !args.json {
        println!(
            "{}: {trainable} of {total} parameters trained on {n} examples, {} steps, noise multiplier {:.4}, on {}",
            job.description, plan.steps, plan.noise_multiplier, dp_train::device_name(device)
        );
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .at("open", &metrics_path)?;
    let bar = step_bar(plan.steps, args.json);
    let private = plan.noise_multiplier > 0.0;
    let started = std::time::Instant::now();
    let mut write_error = None;
    let logits = |x: &tch::Tensor, tape: &mut dp_core::Tape| job.model.logits(x, tape);
    let steps_per_epoch = ((1.0 / plan.sampling_rate).round() as u64).max(1);
    let mut last_test = String::new();
    let summary = train_with_hooks(
        &job.vs,
        logits,
        job.train_data(),
        &dp,
        &mut rng,
        &mut NoHooks,
        Some(&checkpointing),
        |step| {
            use std::io::Write as _;
            let mut line = serde_json::to_value(step).unwrap_or_default();
            // At the end of each epoch: accuracy on the public test split.
            if step.step % steps_per_epoch == 0 {
                let accuracy = evaluate_accuracy(logits, job.test_data(), 256);
                line["test_accuracy"] = serde_json::json!(accuracy);
                last_test = format!("  test acc {accuracy:.3}");
            }
            if let Err(e) = writeln!(metrics, "{line}") {
                write_error = Some(e);
            }
            bar.set_position(step.step);
            let samples = step.step as f64 * dp.expected_batch_size
                / started.elapsed().as_secs_f64().max(1e-9);
            let eps = if private {
                format!("{:.3}", step.epsilon)
            } else {
                "NOT PRIVATE".into()
            };
            bar.set_message(format!(
                "loss {:.3}  acc {:.3}{last_test}  epsilon {eps}  {samples:.0} samples/s",
                step.mean_loss, step.accuracy
            ));
        },
    )?;
    bar.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let test_accuracy = evaluate_accuracy(logits, job.test_data(), 256);
    {
        use std::io::Write as _;
        let last = serde_json::json!({ "test_accuracy": test_accuracy, "after_step": summary.ledger.steps() });
        writeln!(metrics, "{last}").at("write", &metrics_path)?;
    }
    let statement = PrivacyStatement::from_ledger(
        &summary.ledger,
        n,
        config.privacy.clip_norm,
        config.privacy.seed,
    )?;
    let mut header = if private {
        String::new()
    } else {
        "NOT PRIVATE: no noise was added.\n".to_string()
    };
    if summary.stopped_by_budget {
        header.push_str(&format!(
            "Stopped after {} of {} steps: the next step would have exceeded the budget epsilon {}.\n",
            summary.ledger.steps(),
            plan.steps,
            plan.epsilon_budget
        ));
    }
    let report = format!(
        "{header}{}: test accuracy {:.2}% after {} steps ({train_seconds:.0} s of training)\n{statement}{}",
        job.description,
        100.0 * test_accuracy,
        statement.steps,
        SECRETS_NOTE
    );
    write_file(&run_dir.join("privacy_report.txt"), report.as_bytes())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "test_accuracy": test_accuracy, "privacy": statement, "private": private, "stopped_by_budget": summary.stopped_by_budget, "train_seconds": train_seconds, "trainable_parameters": trainable, "run_dir": run_dir })
        );
    } else {
        print!("{report}");
        println!(
            "Run folder: {} (dp-train report {} draws the curves)",
            run_dir.display(),
            run_dir.display()
        );
    }
    Ok(())
}

/// Writes a file, naming it in the error.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).at("write", path)
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

fn report_command(run_dir: &std::path::Path) -> Result<(), TrainError> {
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

/// The model of a run folder, and one line saying which weights they are and what they claim.
fn load_trained(
    run_dir: &std::path::Path,
    device: &str,
) -> Result<(TrainedModel, String), TrainError> {
    let model = TrainedModel::load(run_dir, parse_device(device)?)?;
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
fn evaluate(model: &TrainedModel, set: &Labelled) -> Result<Evaluation, TrainError> {
    let logits =
        Vec::<Vec<f64>>::try_from(model.logits(&set.examples)?.to_kind(tch::Kind::Double))?;
    Evaluation::from_logits(&logits, &set.labels, &model.class_names, &set.source)
}

fn evaluate_command(args: EvaluateArgs) -> Result<(), TrainError> {
    let (model, line) = load_trained(&args.run_dir, &args.device)?;
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

fn predict_command(args: PredictArgs) -> Result<(), TrainError> {
    let (model, _) = load_trained(&args.run_dir, &args.device)?;
    if model.pretrained_dir().is_none() {
        return Err(TrainError::Config(
            "predict labels texts; this run is a Fashion-MNIST MLP (score it with dp-train evaluate)".into(),
        ));
    }
    let texts: Vec<String> = match &args.input {
        Some(path)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            dp_train::text::read_texts_csv(path)?
        }
        Some(path) => std::fs::read_to_string(path)
            .at("read", path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => std::io::read_to_string(std::io::stdin())?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    };
    if texts.is_empty() {
        return Err(TrainError::Config("predict: no texts to label".into()));
    }
    let logits = Vec::<Vec<f64>>::try_from(
        model
            .logits(&Examples::Texts(texts.clone()))?
            .to_kind(tch::Kind::Double),
    )?;
    let names = &model.class_names;
    let mut csv = csv::Writer::from_writer(Vec::new());
    if !args.json {
        let mut header = vec!["label".to_string(), "probability".to_string()];
        header.extend(names.iter().map(|n| format!("p_{n}")));
        header.push("text".into());
        csv.write_record(&header).map_err(std::io::Error::other)?;
    }
    for (text, row) in texts.iter().zip(&logits) {
        let p = probabilities(row);
        let label = predicted(row);
        if args.json {
            let by_class: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(&p)
                .map(|(n, p)| (n.clone(), (*p).into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "text": text, "label": names[label], "probabilities": by_class })
            );
        } else {
            let mut record = vec![names[label].clone(), format!("{:.6}", p[label])];
            record.extend(p.iter().map(|x| format!("{x:.6}")));
            record.push(text.clone());
            csv.write_record(&record).map_err(std::io::Error::other)?;
        }
    }
    if !args.json {
        let bytes = csv
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        print!("{}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}

fn export_command(args: ExportArgs) -> Result<(), TrainError> {
    let (model, line) = load_trained(&args.run_dir, &args.device)?;
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
