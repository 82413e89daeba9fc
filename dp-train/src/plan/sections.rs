//! The sections of a plan, as TOML spells them. Every choice among named values is an enum:
//! a misspelt value is refused by the parser with the key and the values it accepts.

use dp_core::{ClippingStyle, NoiseMode};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::TrainError;
use crate::models::{Finetune, Precision};
use crate::optimizer::{Optimizer, Schedule};

display_as_value_name!(
    Dataset,
    ModelKind,
    NoiseKind,
    PlanAccountant,
    Sampling,
    DeviceChoice
);

/// `data.dataset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Fashion-MNIST's 60,000 training images (Xiao, Rasul, Vollgraf 2017), for `mlp` models.
    FashionMnist,
    /// Rotten Tomatoes review snippets (Pang and Lee 2005), for `encoder` models.
    RottenTomatoes,
    /// Your own text: `train_file` and `test_file` with `text` and `label` columns, for
    /// `encoder` models.
    TextCsv,
}

impl Dataset {
    /// The model kind that reads this dataset: images an MLP, text an encoder.
    pub fn model_kind(self) -> ModelKind {
        match self {
            Dataset::FashionMnist => ModelKind::Mlp,
            Dataset::RottenTomatoes | Dataset::TextCsv => ModelKind::Encoder,
        }
    }
}

/// `model.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A multi-layer perceptron (Fashion-MNIST).
    Mlp,
    /// A pretrained BERT-style encoder with a new classification head (text datasets).
    Encoder,
}

/// `privacy.noise`: what is added to the clipped sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseKind {
    /// Independent Gaussian noise each step (DP-SGD), with Poisson sampling.
    #[default]
    Gaussian,
    /// Correlated noise (matrix factorization), with cyclic batches and a `privacy.mf` table.
    Mf,
    /// No noise: a NOT PRIVATE baseline, with `epsilon = inf`.
    #[serde(rename = "none")]
    #[value(name = "none")]
    NotPrivate,
}

/// `privacy.accountant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PlanAccountant {
    /// The PRV accountant (Gopi et al. 2021), bounded by RDP, for DP-SGD.
    #[default]
    Prv,
    /// Renyi DP (Mironov 2017), for DP-SGD.
    Rdp,
    /// One Gaussian mechanism over the whole plan, exact, for correlated noise.
    Gaussian,
}

/// `privacy.sampling`: how batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Each example joins each batch independently with probability q (DP-SGD).
    #[default]
    Poisson,
    /// Fixed batches visited in turn, no amplification (with correlated noise).
    Cyclic,
}

/// `performance.device`, and `--device` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// The first CUDA device when there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device (refused when there is none).
    Cuda,
}

impl DeviceChoice {
    /// The libtorch device.
    pub fn device(self) -> Result<Device, TrainError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if !tch::Cuda::is_available() => Err(TrainError::Config(
                "device cuda: no CUDA device is available".into(),
            )),
            DeviceChoice::Cuda => Ok(Device::Cuda(0)),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The dataset.
    pub dataset: Dataset,
    /// Training examples used (the first N): the N of the sampling rate.
    pub dataset_size: usize,
    /// Text datasets: tokens kept per example (longer ones are truncated).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// text-csv: the training CSV.
    #[serde(default)]
    pub train_file: Option<std::path::PathBuf>,
    /// text-csv: the test CSV.
    #[serde(default)]
    pub test_file: Option<std::path::PathBuf>,
}

/// `data.max_length` when a plan leaves it out.
pub(crate) fn default_max_length() -> usize {
    64
}

/// `[model]`: what is trained. Cannot change the mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// What is trained on the dataset.
    pub kind: ModelKind,
    /// MLP hidden widths.
    pub hidden: Vec<i64>,
    /// Encoder: the folder with `config.json` and `model.safetensors` [default:
    /// $DP_ASSETS/minilm].
    pub pretrained: Option<std::path::PathBuf>,
    /// Encoder: which weights are trained (`{ kind = "all" }`, `{ kind = "top", blocks = 2 }`,
    /// `{ kind = "lora", rank = 8, alpha = 16 }`).
    pub finetune: Finetune,
    /// Encoder: activation precision, "f32" or "bf16" (parameters, norms and clipped sums stay
    /// f32) [default: f32].
    pub precision: Precision,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            kind: ModelKind::Mlp,
            hidden: vec![256],
            pretrained: None,
            finetune: Finetune::All,
            precision: Precision::F32,
        }
    }
}

/// `[privacy]`: everything that changes the accounted mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// Target epsilon (the noise is calibrated to it), or the budget when the noise is given.
    pub epsilon: f64,
    /// Delta.
    pub delta: f64,
    /// Noise multiplier; calibrated to `epsilon` when absent.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// Expected batch size B (q = B / N).
    pub expected_batch_size: f64,
    /// Passes over the data in expectation (or give `steps`).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Number of steps (or give `epochs`).
    #[serde(default)]
    pub steps: Option<u64>,
    /// Per-example clip norm C.
    pub clip_norm: f64,
    /// Which noise is added to the clipped sums [default: gaussian].
    #[serde(default)]
    pub noise: NoiseKind,
    /// With noise = "mf": the strategy (`{ strategy = "blt", buffers = 4 }`,
    /// `{ strategy = "banded", bands = 8 }`, `{ strategy = "bsr", bands = 8 }` or
    /// `{ strategy = "identity" }`), optimized for the plan's steps and epochs.
    #[serde(default)]
    pub mf: Option<MfSection>,
    /// How the noise is drawn: "secure" (discrete noise on a grid, for real runs) or "fast"
    /// (floating-point normals, research only; required by noise = "mf", whose correlated
    /// noise is floating-point).
    #[serde(default = "secure")]
    pub noise_mode: NoiseMode,
    /// The accountant [default: prv].
    #[serde(default)]
    pub accountant: PlanAccountant,
    /// How batches are drawn [default: poisson].
    #[serde(default)]
    pub sampling: Sampling,
    /// Seed of the privacy generator (reproducible, not private); the OS seeds it if absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `[privacy.mf]`: a correlated-noise strategy that streams with bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum MfSection {
    /// Independent noise over cyclic batches (DP-SGD without amplification), for comparison.
    Identity,
    /// Banded square root with `bands` bands (Kalinin and Lampert 2024).
    Bsr {
        /// Bands p.
        bands: usize,
    },
    /// Optimal banded Toeplitz with `bands` bands (McKenna 2024).
    Banded {
        /// Bands p.
        bands: usize,
    },
    /// Optimized buffered linear Toeplitz with `buffers` buffers (Dvijotham et al. 2024).
    Blt {
        /// Buffers m.
        buffers: usize,
    },
}

fn secure() -> NoiseMode {
    NoiseMode::Secure
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Base learning rate.
    pub learning_rate: f64,
    /// The rate of an encoder's classification head (`classifier.*`, trained from scratch)
    /// when it should differ from `learning_rate` (then the rate of the pretrained weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_learning_rate: Option<f64>,
    /// Optimizer (`{ kind = "sgd", momentum = 0.9, nesterov = false }`, `"adam"`, `"adam_w"`).
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Release an exponential moving average of the weights with this decay in (0, 1)
    /// (`a = d a + (1 - d) theta` after each step) instead of the last iterate. Absent: the
    /// last iterate. Post-processing: no effect on privacy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_decay: Option<f64>,
    /// How each example's gradient is bounded by C: `{ kind = "flat" }` (default),
    /// `{ kind = "per_layer" }` (each of K layers to C / sqrt(K)) or
    /// `{ kind = "automatic", stability = 0.01 }` (C / (norm + stability)). Every style keeps
    /// each example's contribution within C, so the accounting does not change.
    #[serde(default)]
    pub clipping: ClippingStyle,
}

/// `[performance]`: cannot change the mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceSection {
    /// Where the computation runs.
    pub device: DeviceChoice,
    /// Largest physical batch.
    pub physical_batch_size: usize,
    /// libtorch threads (0: libtorch's default).
    pub threads: i32,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
}

impl Default for PerformanceSection {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            physical_batch_size: 512,
            threads: 0,
            checkpoint_every: 50,
        }
    }
}
