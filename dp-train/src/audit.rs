//! Privacy audits of the DP-SGD loop: train with and without canaries, attack, count, and turn
//! the counts into lower bounds on epsilon (`dp_accounting::audit`).
//!
//! Canaries:
//! - **gradient canaries** (after Nasr et al. 2023's Dirac canaries): canary `i` is a training
//!   example whose input is 0 everywhere except an extra feature of its own, which no real
//!   image has, set to a large value, so its gradient reaches a column of the first layer's
//!   weight that no real example touches, with a norm far above C. It goes through the same
//!   path as every example: Poisson-sampled at rate q, run through the model, clipped by the
//!   run's clipping engine and summed. The attack is white-box: at every step it computes the
//!   canary's clipped gradient with its own copy of the engine at the current weights, and
//!   scores the noisy update's column against that direction, summed over steps: the strongest
//!   threat model of DP-SGD. A bug in the model's or the engine's clipping of that layer shows.
//! - **input canaries**: a real image with a wrong label, in the training set or not; the attack
//!   scores minus its loss under the final model (Yeom et al. 2018). Black-box and weak.
//!
//! Two designs: K trials, each training one model with (b = 1) or without (b = 0) the canary,
//! a threshold fixed on the first 20% of trials and counts on the rest (Zanella-Béguelin et al.
//! 2023 estimate); or one run with m gradient canaries each included with probability 1/2,
//! guessing the r/2 highest and r/2 lowest scores (Steinke, Nasr, Jagielski 2023).
//! Sabotaged runs (noise off, clipping off, one layer left unclipped by the engine) show what a
//! broken implementation looks like; a failure of the canaries themselves fails the audit.

use dp_accounting::audit::{
    estimate_epsilon, one_run_epsilon_lower_bound, AuditCounts, AuditEstimate,
};
use dp_core::{ClippingEngine, ClippingStyle, NoiseMode, PrivacyRng, Tape};
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::dpsgd::{train_with_hooks, Batches, DpSgdConfig, StepHooks};
use crate::error::TrainError;
use crate::fashion_mnist::FashionMnist;
use crate::models::Mlp;
use crate::plan::{
    default_max_length, DataSection, Dataset, ModelSection, NoiseKind, PerformanceSection,
    PlanAccountant, PrivacySection, Sampling, TrainConfig, TrainingSection,
};

/// The clip norm of the no-clipping sabotage, in units of C.
const CANARY_NORM_OVER_CLIP: f64 = 1000.0;

/// A gradient canary's feature value: its gradient norm is then far above C (clipping must cut
/// it), and mostly on its own column of the first layer's weight.
const CANARY_FEATURE: f64 = 100.0;

/// The class every gradient canary is labelled with.
const CANARY_LABEL: i64 = 0;

/// The first layer's weight, whose extra columns the gradient canaries own.
const CANARY_PARAMETER: &str = "linear0.weight";

/// Share of the K trials used to fix the attack's threshold (not counted).
const CALIBRATION_SHARE: f64 = 0.2;

/// What kind of canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CanaryKind {
    /// A Dirac gradient canary, scored on every noisy update.
    Gradient,
    /// A mislabelled image, scored by its final loss.
    Input,
}

impl std::fmt::Display for CanaryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CanaryKind::Gradient => "gradient (Dirac) canary",
            CanaryKind::Input => "input (mislabelled example) canary",
        })
    }
}

/// A deliberate bug, to check that the audit catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Sabotage {
    /// The run as claimed.
    None,
    /// No noise is added (the claim is still the calibrated epsilon).
    NoNoise,
    /// Clipping at 1000 C while the noise is still calibrated to C.
    NoClipping,
    /// The clipping engine leaves the first layer unclipped (the canaries' layer), everything
    /// else as claimed.
    UnclippedLayer,
}

display_as_value_name!(Sabotage);

/// The private training run being audited, and the audit's size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditConfig {
    /// Claimed epsilon (the noise is calibrated to it).
    pub epsilon: f64,
    /// Claimed delta.
    pub delta: f64,
    /// Training images used (the first N of Fashion-MNIST).
    pub dataset_size: usize,
    /// Expected batch size.
    pub expected_batch_size: f64,
    /// Steps of each run.
    pub steps: u64,
    /// Clip norm C.
    pub clip_norm: f64,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// Hidden widths of the MLP.
    pub hidden: Vec<i64>,
    /// Credible / confidence level of the bounds.
    pub level: f64,
    /// The bug to plant, if any.
    pub sabotage: Sabotage,
    /// Seed of the experiment (challenge bits, canary sampling, noise, initialisation).
    pub seed: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            epsilon: 2.0,
            delta: 1e-5,
            dataset_size: 1000,
            expected_batch_size: 50.0,
            steps: 100,
            clip_norm: 1.0,
            learning_rate: 2.0,
            hidden: vec![32],
            level: 0.95,
            sabotage: Sabotage::None,
            seed: 0,
        }
    }
}

/// The outcome of a K-trial audit.
#[derive(Debug, Clone, Serialize)]
pub struct TrialAudit {
    /// Canary kind.
    pub canary: CanaryKind,
    /// The noise multiplier of the claimed run.
    pub noise_multiplier: f64,
    /// Trials run (the first 20% fix the threshold).
    pub trials: usize,
    /// The threshold on the score above which the attack says "member".
    pub threshold: f64,
    /// (canary included, score) for every trial.
    pub scores: Vec<(bool, f64)>,
    /// Counts and epsilon estimates from the counted trials.
    pub estimate: AuditEstimate,
    /// Whether the Bayesian one-sided lower bound exceeds the claimed epsilon.
    pub claim_refuted: bool,
}

/// The outcome of a one-run audit.
#[derive(Debug, Clone, Serialize)]
pub struct OneRunAudit {
    /// The noise multiplier of the claimed run.
    pub noise_multiplier: f64,
    /// Canaries m.
    pub canaries: u64,
    /// Guesses r (half "in" for the highest scores, half "out" for the lowest).
    pub guesses: u64,
    /// Correct guesses v.
    pub correct: u64,
    /// Lower bound on epsilon at the configured level.
    pub epsilon_lower_bound: f64,
    /// Whether it exceeds the claimed epsilon.
    pub claim_refuted: bool,
}

/// The white-box attack on gradient canaries (see the module docs): per canary, its clipped
/// gradient's direction on its own column at the current step, and the running score.
struct EngineCanaries<'a> {
    model: &'a Mlp,
    /// The attacker's engine: the claimed clipping, whatever the run's engine does.
    engine: ClippingEngine,
    /// Every canary's input (m, width) and label, included in the run or not.
    inputs: Tensor,
    labels: Tensor,
    /// The first canary's column of [`CANARY_PARAMETER`] (the rest follow).
    first_column: i64,
    /// (width of the layer's output, m) unit directions of this step, zero where undefined.
    directions: Option<Tensor>,
    scores: Vec<f64>,
    /// The planted bug, if any: the run's engine leaves the canaries' layer unclipped.
    unclipped_layer: bool,
}

impl<'a> EngineCanaries<'a> {
    /// `m` canaries after the `first_column` real features, for `model` (whose variables are
    /// in `vs`), clipped at `clip_norm`.
    fn new(
        model: &'a Mlp,
        vs: &nn::VarStore,
        first_column: i64,
        m: i64,
        clip_norm: f64,
        unclipped_layer: bool,
    ) -> Result<Self, TrainError> {
        let inputs = canary_inputs(first_column, m);
        Ok(Self {
            model,
            engine: ClippingEngine::new(vs, clip_norm)?,
            labels: Tensor::full([m], CANARY_LABEL, (Kind::Int64, Device::Cpu)),
            inputs,
            first_column,
            directions: None,
            scores: vec![0.0; m as usize],
            unclipped_layer,
        })
    }

    /// The canaries' columns of `sums`' [`CANARY_PARAMETER`], (width of its output, m).
    fn columns(&self, sums: &BTreeMap<String, Tensor>) -> Result<Tensor, TrainError> {
        let weight = sums.get(CANARY_PARAMETER).ok_or_else(|| {
            TrainError::Internal(format!(
                "audit: the canaries' parameter {CANARY_PARAMETER} is not among the step's sums"
            ))
        })?;
        Ok(weight.f_narrow(1, self.first_column, self.scores.len() as i64)?)
    }
}

impl StepHooks for EngineCanaries<'_> {
    fn engine(&mut self, engine: ClippingEngine) -> ClippingEngine {
        if self.unclipped_layer {
            engine.with_unclipped_layer_for_audit(CANARY_PARAMETER)
        } else {
            engine
        }
    }

    fn before_noise(
        &mut self,
        _step: u64,
        _sums: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        // Each canary's clipped gradient at the current weights; its own column carries only
        // its own contribution.
        let mut tape = Tape::recording();
        let losses = self
            .model
            .forward(&self.inputs, &mut tape)
            .f_cross_entropy_loss::<Tensor>(&self.labels, None, Reduction::None, -100, 0.0)?;
        let clipped = self.engine.clip(tape.take(), &losses)?;
        let columns = self.columns(&clipped.sums)?.f_to_kind(Kind::Double)?;
        let norms = columns.f_norm_scalaropt_dim(2.0, [0].as_slice(), true)?;
        let directions = columns.f_div(&norms.f_clamp_min(f64::MIN_POSITIVE)?)?;
        self.directions = Some(directions);
        Ok(())
    }

    fn after_noise(
        &mut self,
        _step: u64,
        noisy: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        let directions = self.directions.take().ok_or_else(|| {
            TrainError::Internal("audit: a step was released without its canary directions".into())
        })?;
        let scores = self
            .columns(noisy)?
            .f_to_kind(Kind::Double)?
            .f_mul(&directions)?
            .f_sum_dim_intlist([0].as_slice(), false, Kind::Double)?;
        let scores = Vec::<f64>::try_from(scores)?;
        if scores.len() != self.scores.len() || scores.iter().any(|s| !s.is_finite()) {
            return Err(TrainError::Config(
                "audit: a canary's score could not be read (not finite or missing)".into(),
            ));
        }
        for (total, score) in self.scores.iter_mut().zip(scores) {
            *total += score;
        }
        Ok(())
    }
}

/// `m` canary inputs (m, `first_column + m`): canary `i` is 0 except feature `first_column + i`.
fn canary_inputs(first_column: i64, m: i64) -> Tensor {
    let eye = Tensor::eye(m, (Kind::Float, Device::Cpu)) * CANARY_FEATURE;
    Tensor::cat(
        &[
            Tensor::zeros([m, first_column], (Kind::Float, Device::Cpu)),
            eye,
        ],
        1,
    )
}

/// The audited claim: the sampling rate and the noise multiplier the run accounts.
struct Plan {
    q: f64,
    sigma: f64,
}

/// The audited run as a plan like any other (Fashion-MNIST, an MLP, DP-SGD with Poisson
/// sampling and secure noise, accounted with RDP), resolved once: the claim, and the DP-SGD
/// settings that run it with the sabotage (if any) applied. A sabotaged run's own ledger then
/// accounts what really happens (an infinite budget lets a broken run finish).
fn plan(config: &AuditConfig) -> Result<(Plan, DpSgdConfig), TrainError> {
    let train = TrainConfig {
        data: DataSection {
            dataset: Dataset::FashionMnist,
            dataset_size: config.dataset_size,
            max_length: default_max_length(),
            train_file: None,
            test_file: None,
        },
        privacy: PrivacySection {
            epsilon: config.epsilon,
            delta: config.delta,
            noise_multiplier: None,
            expected_batch_size: config.expected_batch_size,
            epochs: None,
            steps: Some(config.steps),
            clip_norm: config.clip_norm,
            noise: NoiseKind::Gaussian,
            mf: None,
            noise_mode: NoiseMode::Secure,
            accountant: PlanAccountant::Rdp,
            sampling: Sampling::Poisson,
            seed: None,
        },
        model: ModelSection {
            hidden: config.hidden.clone(),
            ..ModelSection::default()
        },
        training: TrainingSection {
            learning_rate: config.learning_rate,
            head_learning_rate: None,
            optimizer: Default::default(),
            schedule: Default::default(),
            average_decay: None,
            clipping: ClippingStyle::Flat,
        },
        performance: PerformanceSection {
            physical_batch_size: 256,
            ..PerformanceSection::default()
        },
    };
    let resolved = train.resolve()?;
    let claim = Plan {
        q: resolved.sampling_rate,
        sigma: resolved.ledger(config.delta)?.noise_multiplier(),
    };
    let mut run = train.dp_sgd_config(&resolved);
    match config.sabotage {
        Sabotage::None => {}
        Sabotage::UnclippedLayer => run.epsilon_budget = f64::INFINITY,
        Sabotage::NoNoise => {
            run.noise_multiplier = 0.0;
            run.epsilon_budget = f64::INFINITY;
        }
        Sabotage::NoClipping => {
            run.clip_norm = config.clip_norm * CANARY_NORM_OVER_CLIP;
            run.noise_multiplier = claim.sigma / CANARY_NORM_OVER_CLIP;
            run.epsilon_budget = f64::INFINITY;
        }
    }
    Ok((claim, run))
}

/// A fresh MLP for inputs of `width` features, initialised from `seed`.
fn new_model(config: &AuditConfig, width: i64, seed: u64) -> (nn::VarStore, Mlp) {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut dims = vec![width];
    dims.extend(&config.hidden);
    dims.push(10);
    let model = Mlp::new(&vs.root(), &dims);
    (vs, model)
}

/// Trains `model` on `(images, labels)` with `hooks`. The run's expected batch size is scaled
/// to the examples given, so that every example (canaries included) is sampled at the plan's
/// rate `q`.
fn train_model(
    run: &DpSgdConfig,
    q: f64,
    (vs, model): (&nn::VarStore, &Mlp),
    images: &Tensor,
    labels: &Tensor,
    hooks: &mut impl StepHooks,
    seed: u64,
) -> Result<(), TrainError> {
    let run = DpSgdConfig {
        expected_batch_size: q * images.size()[0] as f64,
        ..run.clone()
    };
    let forward = |x: &Tensor, tape: &mut Tape| model.forward(x, tape);
    let mut rng = PrivacyRng::from_seed(seed ^ 0x5eed);
    train_with_hooks(
        vs,
        forward,
        Batches {
            inputs: images,
            labels,
        },
        &run,
        &mut rng,
        hooks,
        None,
        |_| {},
    )?;
    Ok(())
}

/// `(images, labels)` with the included gradient canaries appended as examples, the images
/// widened by the `m` canary features (0 for every real image).
fn with_canaries(images: &Tensor, labels: &Tensor, included: &[bool]) -> (Tensor, Tensor) {
    let (n, m) = (images.size()[0], included.len() as i64);
    let width = images.size()[1];
    let widened = Tensor::cat(
        &[
            images.shallow_clone(),
            Tensor::zeros([n, m], (images.kind(), images.device())),
        ],
        1,
    );
    let rows: Vec<i64> = (0..m).filter(|&i| included[i as usize]).collect();
    let picked = Tensor::from_slice(&rows);
    let canaries = canary_inputs(width, m)
        .to_kind(images.kind())
        .index_select(0, &picked);
    let canary_labels = Tensor::full(
        [rows.len() as i64],
        CANARY_LABEL,
        (Kind::Int64, Device::Cpu),
    );
    (
        Tensor::cat(&[widened, canaries], 0),
        Tensor::cat(&[labels.to_kind(Kind::Int64), canary_labels], 0),
    )
}

/// Gradient canaries' scores after one run of `config` on the first N images, with canary `i`
/// in the training set when `included[i]`.
fn gradient_canary_scores(
    data: &FashionMnist,
    config: &AuditConfig,
    plan: &Plan,
    run: &DpSgdConfig,
    included: &[bool],
    seed: u64,
) -> Result<Vec<f64>, TrainError> {
    let n = config.dataset_size as i64;
    let (images, labels) = with_canaries(
        &data.train_images.narrow(0, 0, n),
        &data.train_labels.narrow(0, 0, n),
        included,
    );
    let width = data.train_images.size()[1];
    let (vs, model) = new_model(config, width + included.len() as i64, seed);
    let mut canaries = EngineCanaries::new(
        &model,
        &vs,
        width,
        included.len() as i64,
        config.clip_norm,
        config.sabotage == Sabotage::UnclippedLayer,
    )?;
    train_model(
        run,
        plan.q,
        (&vs, &model),
        &images,
        &labels,
        &mut canaries,
        seed,
    )?;
    Ok(canaries.scores)
}

/// Refuses fewer than 10 trials: a fifth of them fix the attack's threshold, and the counted
/// rest must hold both groups.
pub fn check_trials(trials: usize) -> Result<(), TrainError> {
    if trials < 10 {
        return Err(TrainError::Config("audit: need at least 10 trials".into()));
    }
    Ok(())
}

/// Runs `trials` training runs with or without one canary and estimates epsilon from the
/// attack's errors. `on_trial` sees the number of finished trials.
pub fn audit_trials(
    data: &FashionMnist,
    config: &AuditConfig,
    canary: CanaryKind,
    trials: usize,
    mut on_trial: impl FnMut(usize),
) -> Result<TrialAudit, TrainError> {
    check_trials(trials)?;
    let (plan, run) = plan(config)?;
    let n = config.dataset_size as i64;
    let mut bits = PrivacyRng::from_seed(config.seed);
    let mut scores = Vec::with_capacity(trials);
    for k in 0..trials {
        let included = bits.bernoulli(0.5);
        let seed = config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(k as u64 + 1);
        let score = match canary {
            CanaryKind::Gradient => {
                gradient_canary_scores(data, config, &plan, &run, &[included], seed)?[0]
            }
            CanaryKind::Input => {
                // The canary: the first test image with its label shifted by one class.
                let x = data.test_images.narrow(0, 0, 1);
                let y = (data.test_labels.narrow(0, 0, 1) + 1).remainder(10);
                let (images, labels) = if included {
                    (
                        Tensor::cat(&[data.train_images.narrow(0, 0, n), x.shallow_clone()], 0),
                        Tensor::cat(&[data.train_labels.narrow(0, 0, n), y.shallow_clone()], 0),
                    )
                } else {
                    (
                        data.train_images.narrow(0, 0, n),
                        data.train_labels.narrow(0, 0, n),
                    )
                };
                let (vs, model) = new_model(config, images.size()[1], seed);
                let mut hooks = crate::dpsgd::NoHooks;
                train_model(
                    &run,
                    plan.q,
                    (&vs, &model),
                    &images,
                    &labels,
                    &mut hooks,
                    seed,
                )?;
                -tch::no_grad(|| {
                    model
                        .forward(&x, &mut Tape::off())
                        .f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)
                        .map(|loss| loss.double_value(&[]))
                })?
            }
        };
        scores.push((included, score));
        on_trial(k + 1);
    }
    count_trials(
        canary,
        plan.sigma,
        scores,
        config.delta,
        config.epsilon,
        config.level,
    )
}

/// Fixes the attack's threshold on the first fifth of `scores` ((canary included, score) per
/// trial), counts its errors on the rest and bounds epsilon from below at `level`; the claim
/// (`epsilon`, `delta`) of a run with `noise_multiplier` is refuted when the Bayesian
/// one-sided bound exceeds it.
pub(crate) fn count_trials(
    canary: CanaryKind,
    noise_multiplier: f64,
    scores: Vec<(bool, f64)>,
    delta: f64,
    epsilon: f64,
    level: f64,
) -> Result<TrialAudit, TrainError> {
    let trials = scores.len();
    let calibration = ((trials as f64 * CALIBRATION_SHARE).ceil() as usize).max(2);
    let threshold = midpoint_threshold(&scores[..calibration]);
    let mut counts = AuditCounts {
        false_positives: 0,
        false_negatives: 0,
        positives: 0,
        negatives: 0,
    };
    for &(included, score) in &scores[calibration..] {
        let says_member = score > threshold;
        if included {
            counts.positives += 1;
            counts.false_negatives += u64::from(!says_member);
        } else {
            counts.negatives += 1;
            counts.false_positives += u64::from(says_member);
        }
    }
    if counts.positives == 0 || counts.negatives == 0 {
        return Err(TrainError::Config(
            "audit: the counted trials lack members or non-members; run more trials".into(),
        ));
    }
    let estimate = estimate_epsilon(counts, delta, level)?;
    let claim_refuted = estimate.bayes.eps_lo_one_sided > epsilon;
    Ok(TrialAudit {
        canary,
        noise_multiplier,
        trials,
        threshold,
        scores,
        estimate,
        claim_refuted,
    })
}

/// Halfway between the mean scores of members and non-members (0 if one group is empty).
fn midpoint_threshold(scores: &[(bool, f64)]) -> f64 {
    let mean = |member: bool| {
        let v: Vec<f64> = scores
            .iter()
            .filter(|s| s.0 == member)
            .map(|s| s.1)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    match (mean(true), mean(false)) {
        (Some(a), Some(b)) => 0.5 * (a + b),
        _ => 0.0,
    }
}

/// One training run with `canaries` gradient canaries, each included with probability 1/2;
/// `guesses` guesses (half for the highest scores, half for the lowest).
pub fn audit_one_run(
    data: &FashionMnist,
    config: &AuditConfig,
    canaries: u64,
    guesses: u64,
) -> Result<OneRunAudit, TrainError> {
    if canaries == 0 || guesses == 0 || guesses > canaries {
        return Err(TrainError::Config(
            "audit: need 0 < guesses <= canaries".into(),
        ));
    }
    let (plan, run) = plan(config)?;
    let mut bits = PrivacyRng::from_seed(config.seed);
    let included: Vec<bool> = (0..canaries).map(|_| bits.bernoulli(0.5)).collect();
    let scores = gradient_canary_scores(
        data,
        config,
        &plan,
        &run,
        &included,
        config.seed.wrapping_add(1),
    )?;
    let mut order: Vec<usize> = (0..canaries as usize).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (k_in, k_out) = (guesses.div_ceil(2) as usize, (guesses / 2) as usize);
    let correct = order[..k_in].iter().filter(|&&i| included[i]).count()
        + order[order.len() - k_out..]
            .iter()
            .filter(|&&i| !included[i])
            .count();
    let level = config.level;
    let epsilon_lower_bound =
        one_run_epsilon_lower_bound(canaries, guesses, correct as u64, config.delta, 1.0 - level)?;
    Ok(OneRunAudit {
        noise_multiplier: plan.sigma,
        canaries,
        guesses,
        correct: correct as u64,
        epsilon_lower_bound,
        claim_refuted: epsilon_lower_bound > config.epsilon,
    })
}
