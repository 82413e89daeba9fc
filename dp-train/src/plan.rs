//! A training plan from a TOML file: `[data]` and `[privacy]` decide the mechanism (what is
//! accounted), `[training]` the optimisation, `[performance]` only how fast and where it runs.
//! The dataset size is declared, never inferred from a loader; the noise multiplier is
//! calibrated to the target epsilon (one-sided) unless given. `--set section.key=value`
//! overrides any value before validation (`--set model.finetune.blocks=4` reaches into an
//! inline table). `docs/plan.md` lists every key.

use dp_accounting::mf::{
    gaussian_noise_multiplier, optimize_banded, optimize_blt, Objective, Participation, Strategy,
    Workload,
};
use dp_accounting::{
    calibrate_noise_multiplier, prv_epsilon_error_for, AccountantKind, DpEvent, PRV_MIN_DELTA,
};
use dp_core::noise::{accounted_at_least, noise_multiplier_for};
use dp_core::{ClippingStyle, NoiseMode};
use serde::{Deserialize, Serialize};

use crate::dpsgd::{DpSgdConfig, Mechanism};
use crate::error::TrainError;
use crate::ledger::PrivacyLedger;
use crate::models::{Finetune, Precision};
use crate::optimizer::{Optimizer, Schedule};

/// The datasets a plan can name.
pub const DATASETS: &str = "fashion-mnist, rotten-tomatoes or text-csv";

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The dataset: "fashion-mnist" (images), "rotten-tomatoes" (text), or "text-csv" (your
    /// own text: `train_file` and `test_file` with `text` and `label` columns).
    pub dataset: String,
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

fn default_max_length() -> usize {
    64
}

/// `[model]`: what is trained. Cannot change the mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// "mlp" (Fashion-MNIST) or "encoder" (a pretrained BERT-style encoder, text datasets).
    pub kind: String,
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
            kind: "mlp".into(),
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
    /// "gaussian" (independent, DP-SGD), "mf" (correlated: matrix factorization, with
    /// `sampling = "cyclic"` and an `mf` table), or "none" for a NOT PRIVATE baseline.
    #[serde(default = "gaussian")]
    pub noise: String,
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
    /// The accountant: "prv" (the PRV accountant, bounded by RDP; the default) or "rdp" for
    /// DP-SGD, "gaussian" (exact) for correlated noise.
    #[serde(default = "prv")]
    pub accountant: String,
    /// How batches are drawn: "poisson" (DP-SGD), or "cyclic" (fixed batches visited in turn,
    /// no amplification; with noise = "mf").
    #[serde(default = "poisson")]
    pub sampling: String,
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

fn gaussian() -> String {
    "gaussian".into()
}
fn secure() -> NoiseMode {
    NoiseMode::Secure
}
fn prv() -> String {
    "prv".into()
}
fn poisson() -> String {
    "poisson".into()
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
    /// "cpu", "cuda" or "auto".
    pub device: String,
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
            device: "auto".into(),
            physical_batch_size: 512,
            threads: 0,
            checkpoint_every: 50,
        }
    }
}

/// A whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The data.
    pub data: DataSection,
    /// The privacy plan.
    pub privacy: PrivacySection,
    /// The model.
    #[serde(default)]
    pub model: ModelSection,
    /// The optimisation.
    pub training: TrainingSection,
    /// Speed and placement.
    #[serde(default)]
    pub performance: PerformanceSection,
}

/// The mechanism a plan resolves to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedPlan {
    /// q = B / N.
    pub sampling_rate: f64,
    /// Steps.
    pub steps: u64,
    /// Noise multiplier (0 without noise).
    pub noise_multiplier: f64,
    /// Epsilon no step may exceed (infinite without noise).
    pub epsilon_budget: f64,
    /// The accounted event, with the least noise multiplier the run's noise will account (for
    /// secure noise, up to `2^-20` below `noise_multiplier`).
    pub event: DpEvent,
    /// How batches are formed and noised.
    pub mechanism: Mechanism,
    /// The accountant of Poisson-sampled steps (RDP for correlated noise, which is accounted
    /// exactly as one Gaussian mechanism).
    pub accountant: AccountantKind,
}

impl ResolvedPlan {
    /// The ledger of this plan before its first step, at `delta`: it accounts what the run's
    /// ledger will, and its [`PrivacyLedger::epsilon_for`] the plan's steps is the plan's claim.
    pub fn ledger(&self, delta: f64) -> Result<PrivacyLedger, TrainError> {
        match (&self.mechanism, &self.event) {
            (Mechanism::PoissonGaussian, DpEvent::SelfComposed { event, .. }) => {
                PrivacyLedger::for_step(event, delta, f64::INFINITY)?
                    .with_accountant(self.accountant)
            }
            (Mechanism::CyclicCorrelated { .. }, _) => PrivacyLedger::correlated(
                self.sampling_rate,
                self.noise_multiplier,
                self.steps,
                delta,
                f64::INFINITY,
            ),
            _ => Err(config_error(
                "the plan's event is not one the ledger accounts",
            )),
        }
    }
}

fn config_error(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

impl TrainConfig {
    /// Parses TOML after applying `section.key=value` overrides.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            // The message alone does not say where ("duplicate key"): add the line.
            let place = e.span().map_or(String::new(), |span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" at line {line} (`{shown}`)")
            });
            config_error(format!("plan: {}{place}", e.message().trim()))
        })?;
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .ok_or_else(|| config_error(format!("--set {o}: expected section.key=value")))?;
            if value.contains(['\n', '\r']) {
                return Err(config_error(format!(
                    "--set {path}: the value must be one line (a line break could add tables to the plan)"
                )));
            }
            // `section.key`, or deeper into an inline table: `model.finetune.kind`.
            let parts: Vec<&str> = path.split('.').collect();
            let Some((key, tables)) = parts.split_last().filter(|(_, t)| !t.is_empty()) else {
                return Err(config_error(format!(
                    "--set {o}: expected section.key=value"
                )));
            };
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut at = &mut table;
            for (depth, name) in tables.iter().enumerate() {
                let entry = at
                    .entry(name.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(inner) = entry else {
                    return Err(config_error(format!(
                        "--set {o}: '{}' is not a table",
                        tables[..=depth].join(".")
                    )));
                };
                at = inner;
            }
            at.insert(key.to_string(), parsed);
        }
        let config: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| config_error(e.to_string().trim().replace('\n', " ")))?;
        config.check()?;
        Ok(config)
    }

    /// The training loop's settings for this plan, resolved as `plan`.
    pub fn dp_sgd_config(&self, plan: &ResolvedPlan) -> DpSgdConfig {
        DpSgdConfig {
            expected_batch_size: self.privacy.expected_batch_size,
            physical_batch_size: self.performance.physical_batch_size.max(1),
            steps: plan.steps,
            clip_norm: self.privacy.clip_norm,
            noise_multiplier: plan.noise_multiplier,
            noise: self.privacy.noise_mode,
            learning_rate: self.training.learning_rate,
            prefix_rates: self
                .training
                .head_learning_rate
                .map(|rate| vec![(crate::models::HEAD_PREFIX.to_string(), rate)])
                .unwrap_or_default(),
            optimizer: self.training.optimizer,
            schedule: self.training.schedule,
            delta: self.privacy.delta,
            epsilon_budget: plan.epsilon_budget,
            mechanism: plan.mechanism.clone(),
            clipping: self.training.clipping,
            accountant: plan.accountant,
        }
    }

    /// The plan a run folder's `config.resolved.toml` records (its `[resolved]` numbers are
    /// dropped: they follow from the rest).
    pub fn from_resolved(text: &str) -> Result<Self, TrainError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| config_error(format!("plan: {}", e.message())))?;
        table.remove("resolved");
        let text = toml::to_string(&table).map_err(|e| config_error(e.to_string()))?;
        Self::from_toml(&text, &[])
    }

    /// The plan as `config.resolved.toml` records it: every key with its value, less those
    /// that do not apply to the model (an encoder has no `hidden`).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        let mut table = toml::Table::try_from(self).map_err(|e| config_error(e.to_string()))?;
        if self.model.kind != "mlp" {
            if let Some(toml::Value::Table(model)) = table.get_mut("model") {
                model.remove("hidden");
            }
        }
        toml::to_string(&table).map_err(|e| config_error(e.to_string()))
    }

    /// Checks the values that do not decide the mechanism (the model's size, the optimizer,
    /// `[performance]`) before any tensor is made.
    fn check_values(&self) -> Result<(), TrainError> {
        if self.model.kind == "mlp" {
            crate::fashion_mnist::check_hidden(&self.model.hidden)?;
        }
        if !(1..=512).contains(&self.data.max_length) {
            return Err(config_error(format!(
                "data.max_length must be between 1 and 512 (the encoder's positions), got {}",
                self.data.max_length
            )));
        }
        let t = &self.training;
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(config_error(format!(
                "training.learning_rate must be a finite number > 0, got {}",
                t.learning_rate
            )));
        }
        if let Some(rate) = t.head_learning_rate {
            if self.model.kind != "encoder" {
                return Err(config_error(
                    "training.head_learning_rate is for encoder models (the new head on a pretrained encoder)",
                ));
            }
            if !(rate.is_finite() && rate > 0.0) {
                return Err(config_error(format!(
                    "training.head_learning_rate must be a finite number > 0, got {rate}"
                )));
            }
        }
        t.optimizer.check()?;
        let perf = &self.performance;
        if perf.physical_batch_size == 0 {
            return Err(config_error(
                "performance.physical_batch_size must be at least 1",
            ));
        }
        if !(0..=1024).contains(&perf.threads) {
            return Err(config_error(format!(
                "performance.threads must be between 0 (libtorch's default) and 1024, got {}",
                perf.threads
            )));
        }
        if perf.checkpoint_every == 0 {
            return Err(config_error(
                "performance.checkpoint_every must be at least 1",
            ));
        }
        Ok(())
    }

    /// Checks every value and every combination of values without computing anything: what
    /// parsing a plan ([`TrainConfig::from_toml`]) and building its job ([`crate::job::Job::load`])
    /// ask. [`TrainConfig::resolve`] does this first, then calibrates the noise (or optimizes the
    /// correlated-noise strategy), once.
    pub fn check(&self) -> Result<(), TrainError> {
        self.check_values()?;
        let (d, p) = (&self.data, &self.privacy);
        match (d.dataset.as_str(), self.model.kind.as_str()) {
            ("fashion-mnist", "mlp") | ("rotten-tomatoes" | "text-csv", "encoder") => {}
            ("fashion-mnist" | "rotten-tomatoes" | "text-csv", kind) => {
                return Err(config_error(format!(
                    "model.kind: '{kind}' does not fit data.dataset '{}' (fashion-mnist: mlp; text: encoder)",
                    d.dataset
                )))
            }
            (other, _) => {
                return Err(config_error(format!(
                    "data.dataset: unknown dataset '{other}' ({DATASETS})"
                )))
            }
        }
        if let ClippingStyle::Automatic { stability } = self.training.clipping {
            if !(stability.is_finite() && stability > 0.0) {
                return Err(config_error(
                    "training.clipping: automatic clipping needs a stability > 0 (0.01 in Bu et al.)",
                ));
            }
        }
        if self.model.kind == "mlp" && self.model.precision != Precision::F32 {
            return Err(config_error(
                "model.precision: bf16 is offered for encoder models only",
            ));
        }

        if (d.dataset == "text-csv") != (d.train_file.is_some() && d.test_file.is_some())
            || (d.dataset != "text-csv" && (d.train_file.is_some() || d.test_file.is_some()))
        {
            return Err(config_error(
                "data.train_file and data.test_file are given together, for dataset text-csv only",
            ));
        }
        if d.dataset_size == 0 {
            return Err(config_error("data.dataset_size must be at least 1"));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return Err(config_error("privacy.delta must be in (0, 1)"));
        }
        if p.delta * d.dataset_size as f64 >= 1.0 {
            return Err(config_error(format!(
                "privacy.delta {} is at least 1/N = 1/{}: a mechanism that publishes a random example whole meets it; take delta well below 1/N",
                p.delta, d.dataset_size
            )));
        }
        if !positive(p.clip_norm) {
            return Err(config_error("privacy.clip_norm must be > 0"));
        }
        if !(positive(p.expected_batch_size) && p.expected_batch_size <= d.dataset_size as f64) {
            return Err(config_error(
                "privacy.expected_batch_size must be in (0, data.dataset_size]",
            ));
        }
        if !matches!(p.noise.as_str(), "gaussian" | "mf" | "none") {
            return Err(config_error(format!(
                "privacy.noise: unknown '{}' (gaussian, mf or none)",
                p.noise
            )));
        }
        match (p.noise.as_str(), p.accountant.as_str()) {
            ("mf", "gaussian") | ("gaussian" | "none", "rdp" | "prv") => {}
            ("mf", other) => {
                return Err(config_error(format!(
                    "privacy.accountant: '{other}' cannot account correlated noise; it is one Gaussian mechanism over the whole plan: set accountant = \"gaussian\""
                )))
            }
            (_, other) => {
                return Err(config_error(format!(
                    "privacy.accountant: '{other}' is not available for DP-SGD training runs (prv or rdp)"
                )))
            }
        }
        match (p.sampling.as_str(), p.noise.as_str()) {
            ("poisson", "gaussian" | "none") | ("cyclic", "mf") => {}
            ("poisson" | "cyclic", noise) => {
                return Err(config_error(format!(
                    "privacy.sampling '{}' does not fit noise '{noise}' (poisson: gaussian or none; cyclic: mf)",
                    p.sampling
                )))
            }
            (other, _) => {
                return Err(config_error(format!(
                    "privacy.sampling: '{other}' is not offered (poisson or cyclic)"
                )))
            }
        }
        if p.noise == "mf" && p.noise_mode == NoiseMode::Secure {
            return Err(config_error(
                "privacy.noise_mode: secure (grid) noise is not offered for correlated noise, which is floating-point; set noise_mode = \"fast\" to accept that",
            ));
        }
        self.shape().map(|_| ())
    }

    /// The mechanism's shape from `[data]` and `[privacy]`, every value checked, nothing
    /// computed yet (what [`TrainConfig::check`] ends with).
    fn shape(&self) -> Result<Shape, TrainError> {
        let (d, p) = (&self.data, &self.privacy);
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if p.noise == "mf" {
            let Some(mf) = p.mf else {
                return Err(config_error(
                    "privacy.mf: noise = \"mf\" needs a strategy, e.g. mf = { strategy = \"blt\", buffers = 4 }",
                ));
            };
            let batches = ((d.dataset_size as f64 / p.expected_batch_size).round() as u64).max(1);
            let epochs = match (p.epochs, p.steps) {
                (Some(e), None) if e >= 1.0 && e.fract() == 0.0 => e as u64,
                _ => return Err(config_error(
                    "privacy.epochs: correlated noise needs a whole number of epochs (>= 1), not steps",
                )),
            };
            if p.noise_multiplier.is_some_and(|sigma| !positive(sigma)) {
                return Err(config_error("privacy.noise_multiplier must be > 0"));
            }
            return Ok(Shape::Cyclic {
                mf,
                batches,
                epochs,
            });
        }
        if p.mf.is_some() {
            return Err(config_error("privacy.mf is only read with noise = \"mf\""));
        }
        let q = p.expected_batch_size / d.dataset_size as f64;
        let steps = match (p.steps, p.epochs) {
            (Some(s), None) if s > 0 => s,
            (None, Some(e)) if positive(e) => (e / q).ceil() as u64,
            _ => {
                return Err(config_error(
                    "privacy: give exactly one of steps (>= 1) or epochs (> 0)",
                ))
            }
        };
        let accountant = match p.accountant.as_str() {
            "prv" if p.delta < PRV_MIN_DELTA => {
                return Err(config_error(format!(
                    "privacy.accountant: the PRV accountant resolves delta down to {PRV_MIN_DELTA:e} only (floating-point FFT), not {:e}: set accountant = \"rdp\"",
                    p.delta
                )))
            }
            "prv" => AccountantKind::Prv {
                epsilon_error: prv_epsilon_error_for(p.epsilon),
            },
            _ => AccountantKind::Rdp,
        };
        let noise = match (p.noise.as_str(), p.noise_multiplier) {
            ("none", None) if p.epsilon == f64::INFINITY => PoissonNoise::None,
            ("none", None) => {
                return Err(config_error(format!(
                    "privacy.epsilon: noise = \"none\" trains WITHOUT privacy, which epsilon {} would not describe: set epsilon = inf too (--set privacy.epsilon=inf)",
                    p.epsilon
                )))
            }
            ("none", Some(_)) => {
                return Err(config_error(
                    "privacy.noise_multiplier cannot be set with noise = \"none\"",
                ))
            }
            ("gaussian", Some(sigma)) if positive(sigma) && positive(p.epsilon) => {
                PoissonNoise::Given(sigma)
            }
            ("gaussian", None) if positive(p.epsilon) => PoissonNoise::Calibrated,
            ("gaussian", _) => {
                return Err(config_error(
                    "privacy.epsilon and privacy.noise_multiplier must be > 0",
                ))
            }
            (other, _) => {
                return Err(config_error(format!(
                    "privacy.noise: unknown '{other}' (gaussian or none)"
                )))
            }
        };
        Ok(Shape::Poisson {
            q,
            steps,
            accountant,
            noise,
        })
    }

    /// Validates and resolves the mechanism from `[data]` and `[privacy]` alone (after checking
    /// every value): the steps, the calibrated noise multiplier (or the optimized
    /// correlated-noise strategy), the event and the accountant.
    pub fn resolve(&self) -> Result<ResolvedPlan, TrainError> {
        self.check()?;
        let p = &self.privacy;
        let (q, steps, accountant, noise) = match self.shape()? {
            Shape::Cyclic {
                mf,
                batches,
                epochs,
            } => return self.resolve_correlated(mf, batches, epochs),
            Shape::Poisson {
                q,
                steps,
                accountant,
                noise,
            } => (q, steps, accountant, noise),
        };
        let (noise_multiplier, epsilon_budget) = match noise {
            PoissonNoise::None => (0.0, f64::INFINITY),
            PoissonNoise::Given(sigma) => (sigma, p.epsilon),
            PoissonNoise::Calibrated => (
                noise_multiplier_for(
                    p.noise_mode,
                    calibrate_noise_multiplier(accountant, q, steps, p.epsilon, p.delta)?
                        .noise_multiplier,
                ),
                p.epsilon,
            ),
        };
        let event = if noise_multiplier == 0.0 {
            DpEvent::SelfComposed {
                event: Box::new(DpEvent::NonPrivate),
                count: steps,
            }
        } else {
            // What the run's noise will account at least (never more than it).
            let accounted = accounted_at_least(p.noise_mode, noise_multiplier);
            DpEvent::dp_sgd(q, accounted, steps)
        };
        Ok(ResolvedPlan {
            sampling_rate: q,
            steps,
            noise_multiplier,
            epsilon_budget,
            event,
            mechanism: Mechanism::PoissonGaussian,
            accountant,
        })
    }

    /// Correlated noise over cyclic batches: `b = round(N / B)` fixed batches, `k` whole epochs
    /// (n = k b steps, each example in at most k steps at least b apart), the strategy
    /// optimized for that participation (prefix-sum workload, mean error), and the noise
    /// multiplier of one Gaussian mechanism meeting (epsilon, delta).
    fn resolve_correlated(
        &self,
        mf: MfSection,
        batches: u64,
        epochs: u64,
    ) -> Result<ResolvedPlan, TrainError> {
        let p = &self.privacy;
        let steps = epochs * batches;
        let n = steps as usize;
        let participation = Participation::epochs(n, epochs)?;
        let workload = Workload::prefix();
        let strategy = match mf {
            MfSection::Identity => Strategy::identity(n)?,
            MfSection::Bsr { bands } => Strategy::banded_square_root(n, bands, &workload)?,
            MfSection::Banded { bands } => {
                optimize_banded(n, bands, &workload, &participation, Objective::Mean)?
            }
            MfSection::Blt { buffers } => Strategy::blt(
                n,
                &optimize_blt(n, buffers, &workload, &participation, Objective::Mean)?,
            )?,
        };
        let noise_multiplier = match p.noise_multiplier {
            Some(sigma) => sigma,
            None => gaussian_noise_multiplier(p.epsilon, p.delta)?,
        };
        Ok(ResolvedPlan {
            sampling_rate: 1.0 / batches as f64,
            steps,
            noise_multiplier,
            epsilon_budget: p.epsilon,
            event: strategy.dp_event(noise_multiplier, None)?,
            mechanism: Mechanism::CyclicCorrelated {
                batches,
                recurrence: strategy.recurrence().clone(),
                sensitivity: strategy.sensitivity(&participation).value(),
            },
            accountant: AccountantKind::Rdp,
        })
    }
}

/// What a plan's `[privacy]` section asks for, checked but not yet computed.
enum Shape {
    /// DP-SGD with Poisson sampling.
    Poisson {
        q: f64,
        steps: u64,
        accountant: AccountantKind,
        noise: PoissonNoise,
    },
    /// Correlated noise over cyclic batches.
    Cyclic {
        mf: MfSection,
        batches: u64,
        epochs: u64,
    },
}

/// Where a Poisson-sampled plan's noise multiplier comes from.
enum PoissonNoise {
    /// None: NOT PRIVATE.
    None,
    /// Given by the plan.
    Given(f64),
    /// Calibrated to the plan's epsilon.
    Calibrated,
}

/// The sections of a resolved plan that may differ between a run and its resumption: they
/// decide how fast the same computation runs, never what it computes or releases.
pub const RESUMABLE_SECTIONS: [&str; 1] = ["performance"];

/// The first key (as `section.key`, in sorted order) whose value differs between two resolved
/// plans (the `config.resolved.toml` of a run folder), outside [`RESUMABLE_SECTIONS`]; `None`
/// when they agree. A plan that does not parse is reported as the key `(the whole plan)`.
pub fn first_plan_difference(saved: &str, new: &str) -> Option<String> {
    let parse = |text: &str| text.parse::<toml::Table>().ok();
    let (Some(mut saved), Some(mut new)) = (parse(saved), parse(new)) else {
        return Some("(the whole plan)".into());
    };
    for section in RESUMABLE_SECTIONS {
        saved.remove(section);
        new.remove(section);
    }
    first_difference("", &toml::Value::Table(saved), &toml::Value::Table(new))
}

fn first_difference(path: &str, a: &toml::Value, b: &toml::Value) -> Option<String> {
    match (a, b) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(&here, x, y),
                    _ => Some(here),
                }
            })
        }
        _ => (a != b).then(|| path.to_string()),
    }
}
