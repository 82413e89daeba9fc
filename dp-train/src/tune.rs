//! Private hyperparameter tuning (Papernot and Steinke 2022): run a random number K of private
//! training runs, each with hyperparameters drawn from a search space, and release only the one
//! that does best on a validation split. K is drawn from the privacy generator (Poisson, or a
//! truncated negative binomial: logarithmic at shape 0, geometric at shape 1), and the whole
//! search is accounted as one `RepeatAndSelect` event.
//!
//! What that bound covers, and so what is released ([`Disclosure::ChosenOnly`], the default):
//! the chosen run (its model, hyperparameters and selection score) and nothing about the
//! others, K included. Each run is one mechanism: its DP-SGD steps and its selection score.
//! The score is private too: a count of correct predictions on a validation split cut from the
//! private training data, released with exact discrete Gaussian noise and accounted inside each
//! run's event (sensitivity 2 under add/remove: the split is by position, so one example added
//! to or removed from the validation split moves another across); or plain accuracy on a split the plan
//! declares public, which is then not protected ([`Selection`]). Showing every run
//! ([`Disclosure::AllTrials`], asked for explicitly) releases K and every run: the accounting is
//! then the K-fold composition of the runs, K known.
//!
//! TAN mode (Sander et al. 2023) searches at batch `k B` with noise `k sigma` (same steps, same
//! effective noise sigma/B, about k times cheaper), then trains the chosen hyperparameters once
//! at full scale. The total epsilon then composes the search's bound with the final run's: the
//! cheaper search runs are much less private when `k sigma < 2`, and the report shows it.

use dp_accounting::{
    calibrate_noise_multiplier, tnb_gamma, Accountant, AccountantKind, DpEvent, RdpAccountant,
    RunCount,
};
use dp_core::noise::noise_multiplier_for;
use dp_core::{ClippingStyle, GaussianNoise, NoiseMode, PrivacyRng};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

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
    /// How runs are scored: "noisy_count" (a private count of correct validation predictions,
    /// with `selection_noise_multiplier`) or "public" (plain accuracy; the plan declares the
    /// validation split public, and it is not protected). No default: privacy depends on it.
    pub selection: String,
    /// Standard deviation of the noisy count's noise (its sensitivity is 1), for "noisy_count".
    #[serde(default)]
    pub selection_noise_multiplier: Option<f64>,
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

    /// How runs are scored.
    pub fn selection(&self) -> Result<Selection, TrainError> {
        match (
            self.tuning.selection.as_str(),
            self.tuning.selection_noise_multiplier,
        ) {
            ("noisy_count", Some(s)) if s.is_finite() && s > 0.0 => {
                Ok(Selection::NoisyCount { noise_multiplier: s })
            }
            ("noisy_count", _) => Err(TrainError::Config(
                "tuning.selection_noise_multiplier: a positive value is required with selection = \"noisy_count\"".into(),
            )),
            ("public", None) => Ok(Selection::Public),
            ("public", Some(_)) => Err(TrainError::Config(
                "tuning.selection_noise_multiplier applies to selection = \"noisy_count\" only".into(),
            )),
            (other, _) => Err(TrainError::Config(format!(
                "tuning.selection: unknown '{other}' (noisy_count or public)"
            ))),
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
        self.selection()?;
        self.runs().map(|_| ())
    }
}

/// The noisy count's sensitivity under add/remove: the example itself, and the training
/// example the positional split then moves into the validation split.
const COUNT_SENSITIVITY: f64 = 2.0;

/// How each run's selection score is computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Selection {
    /// Correct validation predictions plus exact discrete Gaussian noise of this standard
    /// deviation, accounted in every run's event with sensitivity 2.
    NoisyCount {
        /// Noise standard deviation over the count's sensitivity (1).
        noise_multiplier: f64,
    },
    /// Plain validation accuracy: the plan declares the validation split public, and the
    /// guarantee does not cover it.
    Public,
}

/// What a search releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disclosure {
    /// The chosen run alone (the Papernot-Steinke bound's release).
    ChosenOnly,
    /// Every run and their number, accounted as K runs composed.
    AllTrials,
}

/// One search run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    /// Learning rate drawn.
    pub learning_rate: f64,
    /// Hidden widths drawn.
    pub hidden: Vec<i64>,
    /// The run's selection score: its validation accuracy, noisy under `noisy_count` (none for
    /// a TAN final run, which is not scored).
    pub selection_score: Option<f64>,
    /// Test accuracy (reported for the chosen run only; never used to choose).
    pub test_accuracy: f64,
    /// Training wall time.
    pub seconds: f64,
}

/// The outcome of a search: what it releases, and its accounting.
#[derive(Debug, Serialize)]
pub struct TuneResult {
    /// What was released.
    pub disclosure: Disclosure,
    /// How runs were scored.
    pub selection: Selection,
    /// The chosen run (none if no run was drawn: nothing is released).
    pub chosen: Option<Trial>,
    /// Every run, in order, K their number: only with [`Disclosure::AllTrials`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<Vec<Trial>>,
    /// Batch of the search runs.
    pub search_batch_size: f64,
    /// Noise multiplier of the search runs (as accounted).
    pub search_noise_multiplier: f64,
    /// Steps of every run.
    pub steps: u64,
    /// Epsilon of one search run (its training and its selection score).
    pub single_run_epsilon: f64,
    /// Epsilon of the search: the RepeatAndSelect bound, or K runs composed.
    pub tuning_epsilon: f64,
    /// The full-scale run in TAN mode.
    pub final_run: Option<Trial>,
    /// Epsilon of the full-scale run in TAN mode.
    pub final_run_epsilon: Option<f64>,
    /// Everything released, composed: the guarantee.
    pub total_epsilon: f64,
    /// The released model's weights (the chosen run's, or the TAN final run's).
    #[serde(skip)]
    pub model: Option<nn::VarStore>,
}

/// Draws K: Poisson(mean), or the truncated negative binomial (K >= 1) with
/// `P[K = k] ∝ C(k + eta - 1, k) (1 - gamma)^k` (`(1 - gamma)^k / k` at eta = 0).
pub fn draw_runs(runs: RunCount, mean: f64, rng: &mut PrivacyRng) -> usize {
    let u = rng.uniform();
    let mut cumulative = 0.0;
    match runs {
        RunCount::Poisson => {
            // Each probability in log space (exp(-mean) alone underflows above mean 745); the
            // walk ends far in the upper tail (mass beyond it below 1e-300).
            let last = (mean + 40.0 * mean.sqrt() + 50.0).ceil() as usize;
            for k in 0..=last {
                let kf = k as f64;
                cumulative += (-mean + kf * mean.ln() - libm::lgamma(kf + 1.0)).exp();
                if u <= cumulative {
                    return k;
                }
            }
            last
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

/// Runs the search on Fashion-MNIST and releases what `disclosure` says; `on_trial` sees each
/// finished run with [`Disclosure::AllTrials`] only (with the chosen run alone, nothing about
/// the others leaves this function).
pub fn tune(
    data: &FashionMnist,
    config: &TuneConfig,
    disclosure: Disclosure,
    rng: &mut PrivacyRng,
    mut on_trial: impl FnMut(&Trial),
) -> Result<TuneResult, TrainError> {
    let runs_distribution = config.runs()?;
    let selection = config.selection()?;
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
    // Events use the calibrated multipliers; the secure noise is asked for enough more that
    // what it accounts is at least them.
    let sigma = calibrate_noise_multiplier(AccountantKind::Rdp, q, steps, p.epsilon, p.delta)?
        .noise_multiplier;
    let scale = config.tuning.tan_scale.unwrap_or(1.0);
    let (search_batch, search_sigma) = (p.expected_batch_size * scale, sigma * scale);
    let training_event = DpEvent::dp_sgd(search_batch / n as f64, search_sigma, steps);
    // The split is by position (training first, validation last): adding or removing a
    // validation example also moves the last training example into the validation split, so
    // the count's sensitivity is 2 (and the training set loses one example, the DP-SGD event's
    // own neighbour). Accounted as a Gaussian of multiplier s / 2.
    let search_event = match selection {
        Selection::NoisyCount { noise_multiplier } => DpEvent::Composed {
            events: vec![
                training_event,
                DpEvent::Gaussian {
                    noise_multiplier: noise_multiplier / COUNT_SENSITIVITY,
                },
            ],
        },
        Selection::Public => training_event,
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
    // One run: trained, then scored on the validation split (noisily), then on the public test
    // split (for the report). `scored` false: the TAN final run, which is not scored at all.
    let run = |batch: f64,
               noise: f64,
               lr: f64,
               hidden: &[i64],
               budget: f64,
               scored: bool,
               rng: &mut PrivacyRng|
     -> Result<(Trial, nn::VarStore), TrainError> {
        let dp = DpSgdConfig {
            expected_batch_size: batch,
            physical_batch_size: 512,
            steps,
            clip_norm: p.clip_norm,
            noise_multiplier: noise_multiplier_for(NoiseMode::Secure, noise),
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
        let selection_score = scored
            .then(|| score(selection, trained.accuracies[0], v, rng))
            .transpose()?;
        let trial = Trial {
            learning_rate: lr,
            hidden: hidden.to_vec(),
            selection_score,
            test_accuracy: trained.accuracies[1],
            seconds: trained.train_seconds,
        };
        Ok((trial, trained.weights))
    };

    let runs = draw_runs(runs_distribution, config.tuning.mean_runs, rng);
    // A run's own budget: its training alone (the score is accounted by the search).
    let single_training_epsilon = epsilon_of(
        &DpEvent::dp_sgd(search_batch / n as f64, search_sigma, steps),
        p.delta,
    )?;
    let single_run_epsilon = epsilon_of(&search_event, p.delta)?;
    // Every run, kept only when every run is disclosed; and the best so far with its model.
    let mut trials = Vec::new();
    let mut best: Option<(Trial, nn::VarStore)> = None;
    for _ in 0..runs {
        let lr = config.search.learning_rate[rng.below(config.search.learning_rate.len())];
        let hidden = config.search.hidden[rng.below(config.search.hidden.len())].clone();
        let (trial, weights) = run(
            search_batch,
            search_sigma,
            lr,
            &hidden,
            single_training_epsilon,
            true,
            rng,
        )?;
        if disclosure == Disclosure::AllTrials {
            on_trial(&trial);
            trials.push(trial.clone());
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| trial.selection_score > b.selection_score)
        {
            best = Some((trial, weights));
        }
    }
    let tuning_event = match disclosure {
        Disclosure::ChosenOnly => DpEvent::RepeatAndSelect {
            event: Box::new(search_event.clone()),
            mean: config.tuning.mean_runs,
            runs: runs_distribution,
        },
        Disclosure::AllTrials => DpEvent::SelfComposed {
            event: Box::new(search_event.clone()),
            count: runs as u64,
        },
    };
    let tuning_epsilon = epsilon_of(&tuning_event, p.delta)?;
    let (chosen, mut model) = best.map_or((None, None), |(trial, weights)| {
        (Some(trial), Some(weights))
    });
    let (final_run, final_run_epsilon, total_event) = match (config.tuning.tan_scale, &chosen) {
        (Some(_), Some(best)) => {
            let (final_trial, weights) = run(
                p.expected_batch_size,
                sigma,
                best.learning_rate,
                &best.hidden,
                p.epsilon,
                false,
                rng,
            )?;
            model = Some(weights);
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
        disclosure,
        selection,
        chosen,
        trials: (disclosure == Disclosure::AllTrials).then_some(trials),
        search_batch_size: search_batch,
        search_noise_multiplier: search_sigma,
        steps,
        single_run_epsilon,
        tuning_epsilon,
        final_run,
        final_run_epsilon,
        total_epsilon,
        model,
    })
}

/// A run's selection score from its validation accuracy on `v` examples: the accuracy itself
/// for a public split; else the correct count plus exact discrete Gaussian noise of standard
/// deviation `noise_multiplier` (accounted with sensitivity [`COUNT_SENSITIVITY`]), over `v`.
fn score(
    selection: Selection,
    accuracy: f64,
    v: usize,
    rng: &mut PrivacyRng,
) -> Result<f64, TrainError> {
    match selection {
        Selection::Public => Ok(accuracy),
        Selection::NoisyCount { noise_multiplier } => {
            let correct = (accuracy * v as f64).round();
            let mut count = std::collections::BTreeMap::from([(
                "count".to_string(),
                Tensor::from_slice(&[correct]).to_kind(Kind::Double),
            )]);
            let mut noise = GaussianNoise::new(
                NoiseMode::Secure,
                noise_multiplier_for(NoiseMode::Secure, noise_multiplier),
                1.0,
                &count,
            )?;
            noise.add(&mut count, rng)?;
            Ok(count["count"].to_device(Device::Cpu).double_value(&[0]) / v as f64)
        }
    }
}
