//! Private hyperparameter tuning (Papernot and Steinke 2022) of any plan `dp-train train`
//! accepts: run a random number K of private training runs of the plan, each with
//! hyperparameters drawn from a search space of plan keys, and release only the one that does
//! best on a validation split. K is drawn from the privacy generator (Poisson, or a truncated
//! negative binomial: logarithmic at shape 0, geometric at shape 1), and the whole search is
//! accounted as one `RepeatAndSelect` event.
//!
//! What that bound covers, and so what is released ([`Disclosure::ChosenOnly`], the default):
//! the chosen run (its model, hyperparameters and selection score) and nothing about the
//! others, K included. Each run is one mechanism: its DP-SGD steps and its selection score,
//! the same for every run (the searched keys may not change what is accounted: only `[model]`,
//! `[training]` and `privacy.clip_norm`, and each run's accounted event is checked against the
//! search's). The score is private too: a count of correct predictions on a validation split of
//! the private training data (the examples after the plan's first N, in file order), released
//! with exact discrete Gaussian noise and accounted inside each run's event (sensitivity 2
//! under add/remove: the split is by position, so one example added to or removed from the
//! validation split moves another across); or plain accuracy on a split the configuration
//! declares public, which is then not protected ([`Selection`]). Showing every run
//! ([`Disclosure::AllTrials`], asked for explicitly) releases K and every run: the accounting is
//! then the K-fold composition of the runs, K known.
//!
//! The search is accounted with RDP whatever the plan's accountant: the RepeatAndSelect bound
//! is an RDP bound, and every event of the search (runs, scores, a TAN final run) composes
//! under it.
//!
//! TAN mode (Sander et al. 2023) searches at batch `k B` with noise `k sigma` (same steps, same
//! effective noise sigma/B, about k times cheaper), then trains the chosen hyperparameters once
//! at full scale. The total epsilon then composes the search's bound with the final run's: the
//! cheaper search runs are much less private when `k sigma < 2`, and the report shows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dp_accounting::{tnb_gamma, Accountant, DpEvent, RdpAccountant, RunCount};
use dp_core::noise::noise_multiplier_for;
use dp_core::{GaussianNoise, NoiseMode, PrivacyRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dpsgd::{evaluate_accuracy, train_with_hooks, Mechanism, NoHooks};
use crate::error::TrainError;
use crate::job::Job;
use crate::plan::TrainConfig;

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
    /// Training examples after the plan's first N held out to choose the best run.
    pub validation_size: usize,
    /// How runs are scored: "noisy_count" (a private count of correct validation predictions,
    /// with `selection_noise_multiplier`) or "public" (plain accuracy; the configuration
    /// declares the validation split public, and it is not protected). No default: privacy
    /// depends on it.
    pub selection: String,
    /// Standard deviation of the noisy count's noise (its sensitivity is 1), for "noisy_count".
    #[serde(default)]
    pub selection_noise_multiplier: Option<f64>,
}

/// A tuning configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneConfig {
    /// The plan searched (a `dp-train train` plan; a relative path is relative to the tuning
    /// file). Its `[privacy]` is every run's (and the TAN final run's) privacy plan.
    pub plan: PathBuf,
    /// Changes to the plan for every run, as `dp-train train --set` takes them
    /// (`"data.dataset_size=50000"`), applied before the drawn values.
    #[serde(default)]
    pub set: Vec<String>,
    /// The search's size and mode.
    pub tuning: TuneSettings,
    /// The values to draw from (uniformly, independently), by plan key: `training.learning_rate
    /// = [0.5, 1.0]`, `"model.finetune" = [{ kind = "top", blocks = 0 }, ...]`.
    pub search: toml::Table,
}

/// Plan keys a search may vary: they do not change what a run's privacy accounts.
const SEARCHABLE: [&str; 3] = ["model.", "training.", "privacy.clip_norm"];

/// The search space as `--set` overrides: each key with its values written as TOML.
pub type SearchSpace = BTreeMap<String, Vec<String>>;

/// Flattens a `[search]` table into plan keys: nested tables become dotted keys, down to arrays.
fn flatten(prefix: &str, table: &toml::Table, out: &mut SearchSpace) -> Result<(), TrainError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&path, inner, out)?,
            toml::Value::Array(values) if !values.is_empty() => {
                out.insert(path, values.iter().map(|v| v.to_string()).collect());
            }
            _ => {
                return Err(TrainError::Config(format!(
                    "search.{path}: expected a non-empty list of values"
                )))
            }
        }
    }
    Ok(())
}

impl TuneConfig {
    /// Parses TOML; unknown keys and bad values are errors naming them.
    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        let config: Self =
            toml::from_str(text).map_err(|e| TrainError::Config(e.message().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The plan's path, relative to the tuning file at `tuning_file`.
    pub fn plan_path(&self, tuning_file: &Path) -> PathBuf {
        tuning_file
            .parent()
            .map_or_else(|| self.plan.clone(), |dir| dir.join(&self.plan))
    }

    /// The searched keys and their values.
    pub fn space(&self) -> Result<SearchSpace, TrainError> {
        let mut space = SearchSpace::new();
        flatten("", &self.search, &mut space)?;
        if space.is_empty() {
            return Err(TrainError::Config(
                "search: list at least one plan key with its values".into(),
            ));
        }
        if let Some(key) = space
            .keys()
            .find(|k| !SEARCHABLE.iter().any(|s| k.starts_with(s)))
        {
            return Err(TrainError::Config(format!(
                "search.{key}: only [model], [training] and privacy.clip_norm may be searched (the rest of [data] and [privacy] decides what every run accounts)"
            )));
        }
        Ok(space)
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
        if !(self.tuning.mean_runs.is_finite() && self.tuning.mean_runs >= 1.0) {
            return bad("tuning.mean_runs must be >= 1");
        }
        if let Some(k) = self.tuning.tan_scale {
            if !(k > 0.0 && k <= 1.0) {
                return bad("tuning.tan_scale must be in (0, 1]");
            }
        }
        if self.tuning.validation_size == 0 {
            return bad("tuning.validation_size must be at least 1");
        }
        self.space()?;
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
    /// The values drawn, by plan key (as TOML).
    pub values: BTreeMap<String, String>,
    /// The run's selection score: its validation accuracy, noisy under `noisy_count` (none for
    /// a TAN final run, which is not scored).
    pub selection_score: Option<f64>,
    /// Test accuracy (reported for the chosen run only; never used to choose).
    pub test_accuracy: f64,
    /// Training wall time.
    pub seconds: f64,
}

impl Trial {
    /// The values drawn, as one line (`key = value, ...`).
    pub fn describe(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The released model: the plan it was trained with (as `config.resolved.toml` records it) and
/// its weights.
#[derive(Debug)]
pub struct ReleasedModel {
    /// The chosen run's plan, with its drawn values.
    pub plan: TrainConfig,
    /// Its weights, by variable name.
    pub weights: Vec<(String, Tensor)>,
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
    /// Validation examples each run is scored on.
    pub validation_size: usize,
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
    /// The released model (the chosen run's, or the TAN final run's).
    #[serde(skip)]
    pub model: Option<ReleasedModel>,
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

/// Where the runs happen: the plan's text, the device and the data folder.
#[derive(Debug, Clone, Copy)]
pub struct Workspace<'a> {
    /// The plan's TOML.
    pub plan: &'a str,
    /// The device every run trains on.
    pub device: Device,
    /// The dataset's folder, if not the assets'.
    pub data_dir: Option<&'a Path>,
}

/// The loaded job of the latest run, reused while the next run's `[data]` and `[model]` are the
/// same (the frozen blocks then run once for the whole search), with its initial weights.
struct LoadedJob {
    key: String,
    job: Job,
    initial: Vec<(String, Tensor)>,
}

impl LoadedJob {
    fn for_config(
        slot: &mut Option<LoadedJob>,
        config: &TrainConfig,
        place: Workspace<'_>,
        validation: usize,
    ) -> Result<(), TrainError> {
        let written = |e: toml::ser::Error| TrainError::Config(format!("tune: {e}"));
        let key = format!(
            "{}{}",
            toml::to_string(&config.data).map_err(written)?,
            toml::to_string(&config.model).map_err(written)?
        );
        if slot.as_ref().is_some_and(|loaded| loaded.key == key) {
            return Ok(());
        }
        *slot = None;
        let job =
            Job::load_with_validation(config, place.device, place.data_dir, validation, |_, _| {})?;
        let initial = job.snapshot();
        *slot = Some(LoadedJob { key, job, initial });
        Ok(())
    }

    fn reset(&self) {
        self.job.restore(&self.initial);
    }
}

/// Runs the search on the plan and releases what `disclosure` says; `on_trial` sees each
/// finished run with [`Disclosure::AllTrials`] only (with the chosen run alone, nothing about
/// the others leaves this function).
pub fn tune(
    place: Workspace<'_>,
    config: &TuneConfig,
    disclosure: Disclosure,
    rng: &mut PrivacyRng,
    mut on_trial: impl FnMut(&Trial),
) -> Result<TuneResult, TrainError> {
    let runs_distribution = config.runs()?;
    let selection = config.selection()?;
    let space = config.space()?;
    let v = config.tuning.validation_size;
    let with_set =
        |more: &[String]| -> Vec<String> { config.set.iter().chain(more).cloned().collect() };
    let base = TrainConfig::from_toml(place.plan, &with_set(&[]))?;
    let full = base.resolve()?;
    if full.mechanism != Mechanism::PoissonGaussian || full.noise_multiplier == 0.0 {
        return Err(TrainError::Config(
            "tune: the plan must be private DP-SGD with Poisson sampling (noise = \"gaussian\")"
                .into(),
        ));
    }
    let delta = base.privacy.delta;
    // TAN: the search runs at batch k B and noise k sigma, for the same steps; their budget
    // never binds (their cost is the search's event, computed below).
    let scale = config.tuning.tan_scale.unwrap_or(1.0);
    let at_search_scale = |mut run: TrainConfig| -> TrainConfig {
        if scale < 1.0 {
            run.privacy.expected_batch_size *= scale;
            run.privacy.noise_multiplier = Some(full.noise_multiplier * scale);
            run.privacy.epochs = None;
            run.privacy.steps = Some(full.steps);
            run.privacy.epsilon = f64::MAX;
        }
        run
    };
    let search_plan = at_search_scale(base.clone()).resolve()?;
    // Events use what the noise accounts (for secure noise, slightly less than asked).
    let training_event = search_plan.event.clone();
    let search_event = match selection {
        Selection::NoisyCount { noise_multiplier } => DpEvent::Composed {
            events: vec![
                training_event.clone(),
                DpEvent::Gaussian {
                    noise_multiplier: noise_multiplier / COUNT_SENSITIVITY,
                },
            ],
        },
        Selection::Public => training_event.clone(),
    };
    let single_run_epsilon = epsilon_of(&search_event, delta)?;
    let mut loaded: Option<LoadedJob> = None;
    // One run: trained from the plan's initial weights, scored on the validation split
    // (noisily) and on the public test split (for the report). `scored` false: the TAN final
    // run, which is not scored at all.
    let mut run = |values: &BTreeMap<String, String>,
                   scored: bool,
                   rng: &mut PrivacyRng|
     -> Result<(Trial, ReleasedModel), TrainError> {
        let drawn: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let run_config = TrainConfig::from_toml(place.plan, &with_set(&drawn))?;
        let run_config = if scored {
            at_search_scale(run_config)
        } else {
            run_config
        };
        let run_plan = run_config.resolve()?;
        let accounted = if scored { &training_event } else { &full.event };
        if &run_plan.event != accounted {
            return Err(TrainError::Config(format!(
                "tune: the values {values:?} change what a run accounts; search only [model], [training] and privacy.clip_norm"
            )));
        }
        LoadedJob::for_config(&mut loaded, &run_config, place, v)?;
        let current = loaded
            .as_ref()
            .ok_or_else(|| TrainError::Internal("tune: no job".into()))?;
        current.reset();
        let job = &current.job;
        let logits = |x: &Tensor, tape: &mut dp_core::Tape| job.model.logits(x, tape);
        let dp = run_config.dp_sgd_config(&run_plan);
        let start = Instant::now();
        train_with_hooks(
            &job.vs,
            logits,
            job.train_data(),
            &dp,
            rng,
            &mut NoHooks,
            None,
            |_| {},
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let selection_score = scored
            .then(|| {
                let accuracy = evaluate_accuracy(logits, job.validation_data(), 256);
                score(selection, accuracy, v, rng)
            })
            .transpose()?;
        let trial = Trial {
            values: values.clone(),
            selection_score,
            test_accuracy: evaluate_accuracy(logits, job.test_data(), 256),
            seconds,
        };
        let weights = job.snapshot();
        Ok((
            trial,
            ReleasedModel {
                plan: run_config,
                weights,
            },
        ))
    };
    let draws = draw_runs(runs_distribution, config.tuning.mean_runs, rng);
    // Every run, kept only when every run is disclosed; and the best so far with its model.
    let mut trials = Vec::new();
    let mut best: Option<(Trial, ReleasedModel)> = None;
    for _ in 0..draws {
        let values: BTreeMap<String, String> = space
            .iter()
            .map(|(key, choices)| (key.clone(), choices[rng.below(choices.len())].clone()))
            .collect();
        let (trial, model) = run(&values, true, rng)?;
        if disclosure == Disclosure::AllTrials {
            on_trial(&trial);
            trials.push(trial.clone());
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| trial.selection_score > b.selection_score)
        {
            best = Some((trial, model));
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
            count: draws as u64,
        },
    };
    let tuning_epsilon = epsilon_of(&tuning_event, delta)?;
    let (chosen, mut model) =
        best.map_or((None, None), |(trial, model)| (Some(trial), Some(model)));
    let (final_run, final_run_epsilon, total_event) = match (config.tuning.tan_scale, &chosen) {
        (Some(_), Some(best)) => {
            let (final_trial, final_model) = run(&best.values, false, rng)?;
            model = Some(final_model);
            let final_eps = epsilon_of(&full.event, delta)?;
            (
                Some(final_trial),
                Some(final_eps),
                DpEvent::Composed {
                    events: vec![tuning_event, full.event.clone()],
                },
            )
        }
        _ => (None, None, tuning_event),
    };
    let total_epsilon = epsilon_of(&total_event, delta)?;
    Ok(TuneResult {
        disclosure,
        selection,
        chosen,
        trials: (disclosure == Disclosure::AllTrials).then_some(trials),
        search_batch_size: base.privacy.expected_batch_size * scale,
        search_noise_multiplier: search_plan.ledger(delta)?.noise_multiplier(),
        steps: search_plan.steps,
        validation_size: v,
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
