//! `dp-train`: differentially private training from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dp_train::data::assets_dir;
use dp_train::fashion_mnist::{self, FashionMnist, RunConfig};
use dp_train::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

/// Differentially private training of libtorch models.
///
/// Every run is Poisson-sampled DP-SGD with per-example clipping and Gaussian noise; the noise
/// multiplier is calibrated to the target (epsilon, delta) and a privacy ledger refuses any
/// step beyond it. Privacy is per example, under add/remove-one neighbours.
#[derive(Parser, Debug)]
#[command(name = "dp-train", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an MLP on Fashion-MNIST privately and report test accuracy and the privacy spent.
    ///
    /// Example: dp-train fashion-mnist --epsilon 3 --delta 1e-5 --epochs 10
    FashionMnist(FashionMnistArgs),
}

#[derive(clap::Args, Debug)]
struct FashionMnistArgs {
    /// Target epsilon; the noise multiplier is calibrated to meet it.
    #[arg(long, default_value_t = 3.0)]
    epsilon: f64,
    /// Target delta (use well below 1/N; N = 60,000).
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Passes over the data, in expectation.
    #[arg(long, default_value_t = 10.0)]
    epochs: f64,
    /// Expected logical batch size B (sampling rate q = B / N).
    #[arg(long, default_value_t = 1024.0)]
    batch_size: f64,
    /// Largest physical batch (memory only; no effect on privacy).
    #[arg(long, default_value_t = 512)]
    physical_batch_size: usize,
    /// Per-example gradient clip norm C.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// SGD learning rate.
    #[arg(long, default_value_t = 4.0)]
    learning_rate: f64,
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
    /// Folder with the Fashion-MNIST IDX files [default: $DP_ASSETS/fashion-mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to train: cpu, cuda (the first GPU), or auto (cuda when available).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FashionMnist(args) => fashion_mnist_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dp-train: error: {e}");
            match e {
                TrainError::Config(_) | TrainError::Accounting(_) => ExitCode::from(2),
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
        hidden: args.hidden,
        train_subset: args.train_subset,
        seed: args.seed,
    };
    let dir = args
        .data_dir
        .unwrap_or_else(|| assets_dir().join("fashion-mnist"));
    let data = FashionMnist::load(&dir)?;
    let n = config.train_subset.unwrap_or(60_000).min(60_000) as f64;
    let planned = (config.epochs * n / config.expected_batch_size).ceil() as u64;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(planned)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .expect("static template"),
    );
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" if !tch::Cuda::is_available() => {
            return Err(TrainError::Config(
                "--device cuda: no CUDA device is available".into(),
            ))
        }
        "cuda" => Device::Cuda(0),
        _ => Device::cuda_if_available(),
    };
    let result = fashion_mnist::run(&data, &config, device, |step| {
        bar.set_position(step.step);
        bar.set_message(format!(
            "loss {:.3}  epsilon {:.3}",
            step.mean_loss, step.epsilon
        ));
    })?;
    bar.finish_and_clear();
    if args.json {
        let out = serde_json::json!({ "config": config, "result": result });
        println!("{out}");
    } else {
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
