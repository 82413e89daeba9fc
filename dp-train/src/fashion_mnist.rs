//! Private training of an MLP on Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 training
//! and 10,000 test images of 28x28 pixels in 10 classes, fetched by `scripts/setup.sh` from
//! Debian's `dataset-fashion-mnist`.
//!
//! The noise multiplier is calibrated (one-sided, RDP) so that the planned number of steps
//! meets the target (epsilon, delta); the ledger refuses any step beyond it.

use std::path::Path;
use std::time::Instant;

use dp_core::{NoiseMode, PrivacyRng};
use serde::Serialize;
use tch::{nn, Device, Tensor};

use crate::checkpoint::Checkpointing;
use crate::dpsgd::{
    evaluate_accuracy, train_with_hooks, Batches, DpSgdConfig, NoHooks, PrivacyTarget, StepReport,
    TrainSummary,
};
use crate::error::TrainError;
use crate::models::Mlp;
use crate::optimizer::{Optimizer, Schedule};
use crate::statement::PrivacyStatement;

/// Pixel mean and standard deviation of the Fashion-MNIST training set (public constants).
const PIXEL_MEAN: f64 = 0.2860;
const PIXEL_STD: f64 = 0.3530;

/// A private Fashion-MNIST run: privacy target and training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    /// Target epsilon: the noise multiplier is calibrated to meet it.
    pub epsilon: f64,
    /// Target delta.
    pub delta: f64,
    /// Passes over the data (in expectation): steps = ceil(epochs * N / B).
    pub epochs: f64,
    /// Expected logical batch size B.
    pub expected_batch_size: f64,
    /// Largest physical batch.
    pub physical_batch_size: usize,
    /// Per-example clip norm C.
    pub clip_norm: f64,
    /// Base learning rate.
    pub learning_rate: f64,
    /// Optimizer on the privatized gradient.
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Hidden widths of the MLP.
    pub hidden: Vec<i64>,
    /// Use only the first this many training images (all if `None`).
    pub train_subset: Option<usize>,
    /// Seed for the privacy generator (reproducible, not private); OS entropy if `None`.
    pub seed: Option<u64>,
    /// A NOT PRIVATE baseline: clipping as configured, no noise, infinite epsilon.
    pub no_noise: bool,
    /// How the noise is drawn.
    pub noise_mode: NoiseMode,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            epsilon: 3.0,
            delta: 1e-5,
            epochs: 10.0,
            expected_batch_size: 1024.0,
            physical_batch_size: 512,
            clip_norm: 1.0,
            learning_rate: 4.0,
            optimizer: Optimizer::default(),
            schedule: Schedule::default(),
            hidden: vec![256],
            train_subset: None,
            seed: None,
            no_noise: false,
            noise_mode: NoiseMode::Secure,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Accuracy on the 10,000 test images.
    pub test_accuracy: f64,
    /// What the run can claim.
    pub privacy: PrivacyStatement,
    /// Training wall time in seconds (without data loading and evaluation).
    pub train_seconds: f64,
    /// Examples whose gradient was not finite (dropped from their step).
    pub nonfinite_examples: i64,
    /// Where the model ran.
    pub device: String,
}

/// Fashion-MNIST as float images (N, 784), standardised, and labels (N).
#[derive(Debug)]
pub struct FashionMnist {
    /// Training images.
    pub train_images: Tensor,
    /// Training labels.
    pub train_labels: Tensor,
    /// Test images.
    pub test_images: Tensor,
    /// Test labels.
    pub test_labels: Tensor,
}

impl FashionMnist {
    /// Loads the IDX files from `dir` (as laid out by `scripts/setup.sh`).
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let d = tch::vision::mnist::load_dir(dir).map_err(|e| TrainError::Data {
            what: "Fashion-MNIST",
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let standardise = |x: Tensor| (x - PIXEL_MEAN) / PIXEL_STD;
        Ok(Self {
            train_images: standardise(d.train_images),
            train_labels: d.train_labels,
            test_images: standardise(d.test_images),
            test_labels: d.test_labels,
        })
    }
}

/// A trained MLP's results.
#[derive(Debug)]
pub struct TrainedMlp {
    /// The run's ledger and counters.
    pub summary: TrainSummary,
    /// Accuracy on each evaluation set, in order.
    pub accuracies: Vec<f64>,
    /// Training wall time in seconds.
    pub train_seconds: f64,
    /// The trained weights.
    pub weights: nn::VarStore,
}

/// Fashion-MNIST's inputs and classes (the MLP's first and last widths).
const MLP_INPUTS: i64 = 784;
const MLP_CLASSES: i64 = 10;

/// Widest hidden layer of an MLP.
const MAX_HIDDEN_WIDTH: i64 = 65_536;

/// Most parameters of an MLP (400 MB in f32): beyond, a CPU run is hopeless and per-example
/// gradients do not fit in memory.
const MAX_MLP_PARAMETERS: i64 = 100_000_000;

/// Checks an MLP's hidden widths (`model.hidden`, `--hidden`) before any tensor is made: each
/// between 1 and 65536, at most 1e8 parameters in all.
pub fn check_hidden(hidden: &[i64]) -> Result<(), TrainError> {
    let mut inputs = MLP_INPUTS;
    let mut parameters = 0i64;
    for &width in hidden {
        if !(1..=MAX_HIDDEN_WIDTH).contains(&width) {
            return Err(TrainError::Config(format!(
                "model.hidden (--hidden): widths must be between 1 and {MAX_HIDDEN_WIDTH}, got {width}"
            )));
        }
        parameters += (inputs + 1) * width;
        inputs = width;
    }
    parameters += (inputs + 1) * MLP_CLASSES;
    if parameters > MAX_MLP_PARAMETERS {
        return Err(TrainError::Config(format!(
            "model.hidden (--hidden): {hidden:?} makes {parameters} parameters ({:.1} GB in f32, more with per-example gradients); at most {MAX_MLP_PARAMETERS}",
            parameters as f64 * 4.0 / 1e9
        )));
    }
    Ok(())
}

/// Trains an MLP (784 -> hidden -> 10, on the training data's device) with DP-SGD and reports
/// its accuracy on each of `evaluate`.
pub fn train_mlp(
    train_data: Batches<'_>,
    evaluate: &[Batches<'_>],
    hidden: &[i64],
    dp_config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    checkpointing: Option<&Checkpointing>,
    on_step: impl FnMut(&StepReport),
) -> Result<TrainedMlp, TrainError> {
    check_hidden(hidden)?;
    let vs = nn::VarStore::new(train_data.inputs.device());
    let mut dims = vec![MLP_INPUTS];
    dims.extend(hidden);
    dims.push(MLP_CLASSES);
    let model = Mlp::new(&vs.root(), &dims);
    let forward = |x: &Tensor, tape: &mut dp_core::Tape| model.forward(x, tape);
    let start = Instant::now();
    let summary = train_with_hooks(
        &vs,
        forward,
        train_data,
        dp_config,
        rng,
        &mut NoHooks,
        checkpointing,
        on_step,
    )?;
    let train_seconds = start.elapsed().as_secs_f64();
    let accuracies = evaluate
        .iter()
        .map(|data| evaluate_accuracy(forward, *data, 2000))
        .collect();
    Ok(TrainedMlp {
        summary,
        accuracies,
        train_seconds,
        weights: vs,
    })
}

/// Trains the MLP privately on `device` and evaluates it; `on_step` sees every step.
pub fn run(
    data: &FashionMnist,
    config: &RunConfig,
    device: Device,
    checkpointing: Option<&Checkpointing>,
    on_step: impl FnMut(&StepReport),
) -> Result<RunResult, TrainError> {
    let n_total = data.train_labels.size()[0] as usize;
    let n = config.train_subset.unwrap_or(n_total).min(n_total);
    let subset = |t: &Tensor| t.narrow(0, 0, n as i64).to_device(device);
    let (images, labels) = (subset(&data.train_images), subset(&data.train_labels));
    let target = PrivacyTarget {
        epsilon: config.epsilon,
        delta: config.delta,
        dataset_size: n,
        expected_batch_size: config.expected_batch_size,
        epochs: config.epochs,
        clip_norm: config.clip_norm,
        noise: config.noise_mode,
    };
    let plan = match config.no_noise {
        true => DpSgdConfig::without_noise(target, config.learning_rate)?,
        false => DpSgdConfig::for_target(target, config.learning_rate)?,
    };
    let dp_config = DpSgdConfig {
        physical_batch_size: config.physical_batch_size,
        optimizer: config.optimizer,
        schedule: config.schedule,
        ..plan
    };
    let mut rng = crate::run_generator(config.seed);
    let (test_images, test_labels) = (
        data.test_images.to_device(device),
        data.test_labels.to_device(device),
    );
    let trained = train_mlp(
        Batches {
            inputs: &images,
            labels: &labels,
        },
        &[Batches {
            inputs: &test_images,
            labels: &test_labels,
        }],
        &config.hidden,
        &dp_config,
        &mut rng,
        checkpointing,
        on_step,
    )?;
    let (summary, test_accuracy, train_seconds) = (
        trained.summary,
        trained.accuracies[0],
        trained.train_seconds,
    );
    let privacy = PrivacyStatement::from_ledger(&summary.ledger, n, config.clip_norm, config.seed)?;
    Ok(RunResult {
        test_accuracy,
        privacy,
        train_seconds,
        nonfinite_examples: summary.nonfinite_examples,
        device: crate::device_name(device),
    })
}
