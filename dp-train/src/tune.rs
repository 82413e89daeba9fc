//! Private hyperparameter tuning (Papernot and Steinke 2022): run a random number K of private
//! training runs, each with hyperparameters drawn from a search space, and release only the one
//! that does best on a validation split. K is drawn from the privacy generator (Poisson, or a
//! truncated negative binomial: logarithmic at shape 0, geometric at shape 1), and the whole
//! search is accounted as one `RepeatAndSelect` event.
//!
//! TAN mode (Sander et al. 2023) searches at batch `k B` with noise `k sigma` (same steps, same
//! effective noise sigma/B, about k times cheaper), then trains the chosen hyperparameters once
//! at full scale. The total epsilon then composes the search's bound with the final run's: the
//! cheaper search runs are much less private when `k sigma < 2`, and the report shows it.

use std::time::Instant;

use dp_accounting::{
    calibrate_noise_multiplier, tnb_gamma, Accountant, AccountantKind, DpEvent, RdpAccountant,
    RunCount,
};
use dp_core::{ClippingStyle, NoiseMode, PrivacyRng};
use serde::{Deserialize, Serialize};

use crate::dpsgd::{Batches, DpSgdConfig, Mechanism};
use crate::error::TrainError;
use crate::fashion_mnist::{train_mlp, FashionMnist};

/// `[privacy]`: the final run's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunePrivacy {
    /// Epsilon of one full-scale run (the noise is calibrated to it).
    pub epsilon: f64,
    /// Delta.
    pub delta: f64,
    /// Expected batch size B of a full-scale run.
    pub expected_batch_size: f64,
    /// Epochs in expectation: steps = ceil(epochs / q).
    pub epochs: f64,
    /// Clip norm C.
    pub clip_norm: f64,
}

/// `[tuning]`: how many runs, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSettings {
    /// Distribution of the number of runs: "poisson" or "truncated_negative_binomial".
    pub runs: String,
    /// Mean number of runs.
    pub mean_runs: f64,
    /// Shape of the truncated negative binomial.
    #[serde(default)]
    pub shape: Option<f64>,
    /// TAN mode: search at batch k B and noise k sigma, then one full-scale run.
    #[serde(default)]
    pub tan_scale: Option<f64>,
    /// Images held out of training to choose the best run.
    pub validation_size: usize,
    /// Use only the first this many training images (validation included).
    #[serde(default)]
    pub train_subset: Option<usize>,
}

/// `[search]`: the values to draw from (uniformly, independently).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpace {
    /// Learning rates.
    pub learning_rate: Vec<f64>,
    /// Hidden layer widths of the MLP.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<Vec<i64>>,
}

fn default_hidden() -> Vec<Vec<i64>> {
    vec![vec![256]]
}

/// A tuning configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneConfig {
    /// The final run's privacy plan.
    pub privacy: TunePrivacy,
    /// The search's size and mode.
    pub tuning: TuneSettings,
    /// The hyperparameters searched.
    pub search: SearchSpace,
}

impl TuneConfig {
    /// Parses TOML; unknown keys and bad values are errors naming them.
    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        let config: Self =
            toml::from_str(text).map_err(|e| TrainError::Config(e.message().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn runs(&self) -> Result<RunCount, TrainError> {
        match (self.tuning.runs.as_str(), self.tuning.shape) {
            ("poisson", None) => Ok(RunCount::Poisson),
            ("truncated_negative_binomial", Some(shape)) if shape.is_finite() && shape >= 0.0 => {
                Ok(RunCount::TruncatedNegativeBinomial { shape })
            }
            ("truncated_negative_binomial", _) => Err(TrainError::Config("tuning.shape: a finite shape >= 0 is required".into())),
            ("poisson", Some(_)) => Err(TrainError::Config("tuning.shape applies to truncated_negative_binomial only".into())),
            (other, _) => Err(TrainError::Config(format!("tuning.runs: unknown distribution '{other}' (poisson or truncated_negative_binomial)"))),
        }
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: &str| Err(TrainError::Config(msg.to_string()));
        let p = &self.privacy;
        if !(p.epsilon.is_finite() && p.epsilon > 0.0) {
            return bad("privacy.epsilon must be > 0");
        }
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return bad("privacy.delta must be in (0, 1)");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(p.epochs) || !positive(p.clip_norm) || !positive(p.expected_batch_size) {
            return bad(
                "privacy.epochs, privacy.clip_norm and privacy.expected_batch_size must be > 0",
            );
        }
        if !(self.tuning.mean_runs.is_finite() && self.tuning.mean_runs >= 1.0) {
            return bad("tuning.mean_runs must be >= 1");
        }
        if let Some(k) = self.tuning.tan_scale {
            if !(k > 0.0 && k <= 1.0) {
                return bad("tuning.tan_scale must be in (0, 1]");
            }
        }
        if self.search.learning_rate.is_empty()
            || self
                .search
                .learning_rate
                .iter()
                .any(|lr| !(lr.is_finite() && *lr > 0.0))
        {
            return bad("search.learning_rate must list positive values");
        }
        if self.search.hidden.is_empty() {
            return bad("search.hidden must list at least one architecture");
        }
        self.runs().map(|_| ())
    }
}

/// One search run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    /// Learning rate drawn.
    pub learning_rate: f64,
    /// Hidden widths drawn.
    pub hidden: Vec<i64>,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Test accuracy (reported for the chosen run only; never used to choose).
    pub test_accuracy: f64,
    /// Training wall time.
    pub seconds: f64,
}

/// The outcome of a search.
#[derive(Debug, Clone, Serialize)]
pub struct TuneResult {
    /// Runs drawn (K).
    pub runs: usize,
    /// Every search run.
    pub trials: Vec<Trial>,
    /// Index of the chosen run (none if K = 0: nothing is released).
    pub chosen: Option<usize>,
    /// Batch and noise multiplier of the search runs.
    pub search_batch_size: f64,
    /// Noise multiplier of the search runs.
    pub search_noise_multiplier: f64,
    /// Steps of every run.
    pub steps: u64,
    /// Epsilon of one search run.
    pub single_run_epsilon: f64,
    /// Epsilon of the search (RepeatAndSelect bound).
    pub tuning_epsilon: f64,
    /// The full-scale run in TAN mode.
    pub final_run: Option<Trial>,
    /// Epsilon of the full-scale run in TAN mode.
    pub final_run_epsilon: Option<f64>,
    /// Everything released, composed: the guarantee.
    pub total_epsilon: f64,
    /// Wall time of the search runs.
    pub search_seconds: f64,
}

/// Draws K: Poisson(mean), or the truncated negative binomial (K >= 1) with
/// `P[K = k] ∝ C(k + eta - 1, k) (1 - gamma)^k` (`(1 - gamma)^k / k` at eta = 0).
fn draw_runs(runs: RunCount, mean: f64, rng: &mut PrivacyRng) -> usize {
    let u = rng.uniform();
    let mut cumulative = 0.0;
    match runs {
        RunCount::Poisson => {
            let mut p = (-mean).exp();
            for k in 0..10_000 {
                cumulative += p;
                if u <= cumulative {
                    return k;
                }
                p *= mean / (k as f64 + 1.0);
            }
            10_000
        }
        RunCount::TruncatedNegativeBinomial { shape } => {
            let gamma = tnb_gamma(shape, mean);
            let log_weight = |k: f64| {
                let binom = if shape == 0.0 {
                    -k.ln()
                } else {
                    libm::lgamma(k + shape) - libm::lgamma(shape) - libm::lgamma(k + 1.0)
                };
                binom + k * (1.0 - gamma).ln()
            };
            let weights: Vec<f64> = (1..=100_000).map(|k| log_weight(k as f64).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (k, w) in weights.iter().enumerate() {
                cumulative += w / total;
                if u <= cumulative {
                    return k + 1;
                }
            }
            weights.len()
        }
    }
}

fn epsilon_of(event: &DpEvent, delta: f64) -> Result<f64, TrainError> {
    let mut acc = RdpAccountant::default();
    acc.compose(event)?;
    Ok(acc.epsilon(delta)?)
}

/// Runs the search on Fashion-MNIST; `on_trial` sees each finished run.
pub fn tune(
    data: &FashionMnist,
    config: &TuneConfig,
    rng: &mut PrivacyRng,
    mut on_trial: impl FnMut(&Trial),
) -> Result<TuneResult, TrainError> {
    let runs_distribution = config.runs()?;
    let p = &config.privacy;
    let total_images = data.train_labels.size()[0] as usize;
    let available = config
        .tuning
        .train_subset
        .unwrap_or(total_images)
        .min(total_images);
    let v = config.tuning.validation_size;
    if v == 0 || v >= available {
        return Err(TrainError::Config(format!(
            "tuning.validation_size must be in (0, {available})"
        )));
    }
    let n = available - v;
    let q = p.expected_batch_size / n as f64;
    if !(q > 0.0 && q <= 1.0) {
        return Err(TrainError::Config(format!(
            "privacy.expected_batch_size must be in (0, {n}]"
        )));
    }
    let steps = (p.epochs / q).ceil() as u64;
    let sigma = calibrate_noise_multiplier(AccountantKind::Rdp, q, steps, p.epsilon, p.delta)?
        .noise_multiplier;
    let scale = config.tuning.tan_scale.unwrap_or(1.0);
    let (search_batch, search_sigma) = (p.expected_batch_size * scale, sigma * scale);
    let search_event = DpEvent::dp_sgd(search_batch / n as f64, search_sigma, steps);
    let tuning_event = DpEvent::RepeatAndSelect {
        event: Box::new(search_event.clone()),
        mean: config.tuning.mean_runs,
        runs: runs_distribution,
    };

    let (train_x, train_y) = (
        data.train_images.narrow(0, 0, n as i64),
        data.train_labels.narrow(0, 0, n as i64),
    );
    let (val_x, val_y) = (
        data.train_images.narrow(0, n as i64, v as i64),
        data.train_labels.narrow(0, n as i64, v as i64),
    );
    let train_data = Batches {
        inputs: &train_x,
        labels: &train_y,
    };
    let evaluate = [
        Batches {
            inputs: &val_x,
            labels: &val_y,
        },
        Batches {
            inputs: &data.test_images,
            labels: &data.test_labels,
        },
    ];
    let run = |batch: f64,
               noise: f64,
               lr: f64,
               hidden: &[i64],
               budget: f64,
               rng: &mut PrivacyRng|
     -> Result<Trial, TrainError> {
        let dp = DpSgdConfig {
            expected_batch_size: batch,
            physical_batch_size: 512,
            steps,
            clip_norm: p.clip_norm,
            noise_multiplier: noise,
            noise: NoiseMode::Secure,
            learning_rate: lr,
            optimizer: Default::default(),
            schedule: Default::default(),
            delta: p.delta,
            epsilon_budget: budget,
            mechanism: Mechanism::PoissonGaussian,
            clipping: ClippingStyle::Flat,
        };
        let trained = train_mlp(train_data, &evaluate, hidden, &dp, rng, None, |_| {})?;
        Ok(Trial {
            learning_rate: lr,
            hidden: hidden.to_vec(),
            validation_accuracy: trained.accuracies[0],
            test_accuracy: trained.accuracies[1],
            seconds: trained.train_seconds,
        })
    };

    let runs = draw_runs(runs_distribution, config.tuning.mean_runs, rng);
    let single_run_epsilon = epsilon_of(&search_event, p.delta)?;
    let start = Instant::now();
    let mut trials = Vec::with_capacity(runs);
    for _ in 0..runs {
        let lr = config.search.learning_rate[rng.below(config.search.learning_rate.len())];
        let hidden = config.search.hidden[rng.below(config.search.hidden.len())].clone();
        let trial = run(
            search_batch,
            search_sigma,
            lr,
            &hidden,
            single_run_epsilon,
            rng,
        )?;
        on_trial(&trial);
        trials.push(trial);
    }
    let search_seconds = start.elapsed().as_secs_f64();
    let chosen = (0..trials.len()).max_by(|&a, &b| {
        trials[a]
            .validation_accuracy
            .total_cmp(&trials[b].validation_accuracy)
    });
    let tuning_epsilon = epsilon_of(&tuning_event, p.delta)?;
    let (final_run, final_run_epsilon, total_event) = match (config.tuning.tan_scale, chosen) {
        (Some(_), Some(best)) => {
            let best = &trials[best];
            let final_trial = run(
                p.expected_batch_size,
                sigma,
                best.learning_rate,
                &best.hidden,
                p.epsilon,
                rng,
            )?;
            let final_event = DpEvent::dp_sgd(q, sigma, steps);
            let final_eps = epsilon_of(&final_event, p.delta)?;
            (
                Some(final_trial),
                Some(final_eps),
                DpEvent::Composed {
                    events: vec![tuning_event, final_event],
                },
            )
        }
        _ => (None, None, tuning_event),
    };
    let total_epsilon = epsilon_of(&total_event, p.delta)?;
    Ok(TuneResult {
        runs,
        trials,
        chosen,
        search_batch_size: search_batch,
        search_noise_multiplier: search_sigma,
        steps,
        single_run_epsilon,
        tuning_epsilon,
        final_run,
        final_run_epsilon,
        total_epsilon,
        search_seconds,
    })
}
