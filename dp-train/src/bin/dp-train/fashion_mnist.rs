//! `dp-train fashion-mnist`: an MLP on Fashion-MNIST trained privately.

use std::path::PathBuf;

use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_core::NoiseMode;
use dp_train::checkpoint::Checkpointing;
use dp_train::data::assets_dir;
use dp_train::fashion_mnist::{self, FashionMnist, RunConfig};
use dp_train::optimizer::{Optimizer, Schedule};
use dp_train::plan::DeviceChoice;
use dp_train::TrainError;

use crate::common::step_bar;

#[derive(clap::Args, Debug)]
pub(crate) struct FashionMnistArgs {
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
    /// Optimizer on the privatized gradient (sgd with --momentum and --nesterov; adamw with
    /// --weight-decay).
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Sgd)]
    optimizer: OptimizerChoice,
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
    #[arg(long, value_enum, default_value_t = NoiseMode::Secure)]
    noise_mode: NoiseMode,
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
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

/// The optimizers `--optimizer` offers, with Adam's usual betas and epsilon.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OptimizerChoice {
    /// SGD, with --momentum and --nesterov.
    Sgd,
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8).
    Adam,
    /// AdamW, with --weight-decay.
    Adamw,
}

pub(crate) fn run(args: FashionMnistArgs) -> Result<(), TrainError> {
    let config = RunConfig {
        epsilon: args.epsilon,
        delta: args.delta,
        epochs: args.epochs,
        expected_batch_size: args.batch_size,
        physical_batch_size: args.physical_batch_size,
        clip_norm: args.clip_norm,
        learning_rate: args.learning_rate,
        optimizer: match args.optimizer {
            OptimizerChoice::Adam => Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            OptimizerChoice::Adamw => Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: args.weight_decay,
            },
            OptimizerChoice::Sgd => Optimizer::Sgd {
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
        noise_mode: args.noise_mode,
    };
    let dir = args
        .data_dir
        .unwrap_or_else(|| assets_dir().join("fashion-mnist"));
    let data = FashionMnist::load(&dir)?;
    let n = config.train_subset.unwrap_or(60_000).min(60_000) as f64;
    let planned = (config.epochs * n / config.expected_batch_size).ceil() as u64;
    let bar = step_bar(planned, args.json);
    let device = args.device.device()?;
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
