//! DP-SGD (Abadi et al. 2016) with true Poisson sampling.
//!
//! Each step: draw a logical batch by Poisson sampling (rate `q = B / N`); split it into
//! physical batches of at most `P` examples (memory bound, no effect on privacy); clip each
//! example's gradient to `C` and sum (book-keeping, one backward pass per physical batch);
//! record the step in the ledger; add Gaussian noise of standard deviation `sigma C` in the
//! configured [`NoiseMode`] (the ledger accounts the event the sampler and the noise mechanism
//! report, and each release is checked against it); divide by the *expected* batch size
//! `B` (never the realised one, which would leak it); take an SGD step. Empty batches still add
//! noise and count as a step. The optimizer (SGD with momentum, Adam, AdamW) steps on the
//! privatized mean gradient. The run releases the last iterate, or an exponential moving
//! average of the iterates ([`DpSgdConfig::average_decay`]).
//!
//! With [`Mechanism::CyclicCorrelated`] (matrix-factorization DP-SGD, Choquette-Choo et al.
//! 2023) the data is cut into `b` fixed batches (example `i` in batch `i mod b`) visited in
//! turn, so each example takes part in at most `k` steps at least `b` apart, and step `t` adds
//! the correlated noise `(C^{-1} Z)_t` of a factorization chosen for that participation
//! pattern. There is no sampling, so no amplification: the run is accounted as one Gaussian
//! mechanism over the whole plan.
//! Correlated noise is floating-point (ChaCha20 normals combined by `C^{-1}`), so it runs
//! only in the fast noise mode.

use std::collections::BTreeMap;

use dp_accounting::mf::NoiseRecurrence;
use dp_accounting::{
    calibrate_noise_multiplier, prv_epsilon_error_for, AccountantKind, DpEvent, PRV_MIN_DELTA,
};
use dp_core::noise::noise_multiplier_for;
use dp_core::{
    ClippingEngine, ClippingStyle, Collectives, CorrelatedNoise, GaussianNoise, NoiseMode,
    PoissonSampler, PrivacyRng, Tape,
};
use tch::{nn, Kind, Tensor};

use crate::averaging::WeightAverage;
use crate::checkpoint::Checkpointing;
use crate::data_parallel::Protocol;
use crate::error::TrainError;
use crate::ledger::PrivacyLedger;
use crate::optimizer::{Optimizer, OptimizerState, Schedule};
use crate::per_example_loss::{CrossEntropy, PerExampleLoss};

/// Everything that shapes a DP-SGD run.
#[derive(Debug, Clone, PartialEq)]
pub struct DpSgdConfig {
    /// Expected logical batch size B; the sampling rate is `B / N`.
    pub expected_batch_size: f64,
    /// Largest physical batch run through the model at once.
    pub physical_batch_size: usize,
    /// Number of noised steps.
    pub steps: u64,
    /// Per-example gradient norm bound C.
    pub clip_norm: f64,
    /// Noise standard deviation over C; 0 adds no noise (NOT PRIVATE: the ledger then reports
    /// an infinite epsilon and only an infinite budget lets the run proceed).
    pub noise_multiplier: f64,
    /// How the noise is drawn: `Secure` for real runs, `Fast` for research.
    pub noise: NoiseMode,
    /// Base learning rate.
    pub learning_rate: f64,
    /// Base rates of the variables whose name starts with a prefix, in place of
    /// `learning_rate` (the first matching prefix wins; the schedule scales them alike): a
    /// pretrained encoder's new head (`classifier.`) can learn at a linear probe's rate while
    /// the pretrained blocks move slowly. Empty: one rate for all. No effect on privacy.
    pub prefix_rates: Vec<(String, f64)>,
    /// The optimizer stepping on the privatized gradient.
    pub optimizer: Optimizer,
    /// Learning-rate schedule over the run.
    pub schedule: Schedule,
    /// Release an exponential moving average of the weights with this decay in (0, 1)
    /// (`a = d a + (1 - d) theta` after each step) instead of the last iterate; `None` releases
    /// the last iterate. Post-processing of the accounted iterates: no effect on privacy.
    pub average_decay: Option<f64>,
    /// The delta at which epsilon is tracked.
    pub delta: f64,
    /// Training stops before any step that would take epsilon above this.
    pub epsilon_budget: f64,
    /// How batches are formed and noised.
    pub mechanism: Mechanism,
    /// How each example's gradient is bounded by `clip_norm` (every style keeps the
    /// sensitivity at `clip_norm`).
    pub clipping: ClippingStyle,
    /// The accountant of Poisson-sampled steps (correlated noise is accounted exactly, as one
    /// Gaussian mechanism).
    pub accountant: AccountantKind,
}

/// The privacy target of a DP-SGD run with Poisson sampling, from which
/// [`DpSgdConfig::for_target`] derives the steps and calibrates the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyTarget {
    /// Epsilon of the whole run (at `delta`).
    pub epsilon: f64,
    /// Delta, below `1 / dataset_size`.
    pub delta: f64,
    /// How many examples the training data holds (N).
    pub dataset_size: usize,
    /// Expected logical batch size B: each example is sampled with probability `B / N`.
    pub expected_batch_size: f64,
    /// Passes over the data: the run takes `ceil(epochs N / B)` steps.
    pub epochs: f64,
    /// Per-example gradient norm bound C.
    pub clip_norm: f64,
    /// How the noise is drawn: `Secure` for a release, `Fast` for research.
    pub noise: NoiseMode,
}

impl DpSgdConfig {
    /// DP-SGD with Poisson sampling meeting `target`: the smallest noise multiplier (to the
    /// accountant's tolerance, never below) with which `ceil(epochs N / B)` steps are
    /// (epsilon, delta)-DP under the PRV accountant (RDP where delta is below
    /// [`dp_accounting::PRV_MIN_DELTA`]), the ledger's budget set to epsilon. The rest are
    /// settings of the optimization, with no effect on privacy: plain SGD at
    /// `learning_rate`, a constant rate, flat clipping, physical batches of up to 256; change
    /// them with struct update syntax.
    ///
    /// ```
    /// use dp_core::NoiseMode;
    /// use dp_train::{DpSgdConfig, PrivacyTarget};
    ///
    /// let target = PrivacyTarget {
    ///     epsilon: 3.0,
    ///     delta: 1e-5,
    ///     dataset_size: 60_000,
    ///     expected_batch_size: 256.0,
    ///     epochs: 10.0,
    ///     clip_norm: 1.0,
    ///     noise: NoiseMode::Secure,
    /// };
    /// let config = DpSgdConfig {
    ///     physical_batch_size: 64,
    ///     ..DpSgdConfig::for_target(target, 0.1)?
    /// };
    /// assert_eq!(config.steps, 2344);
    /// # Ok::<(), dp_train::TrainError>(())
    /// ```
    pub fn for_target(target: PrivacyTarget, learning_rate: f64) -> Result<Self, TrainError> {
        let steps = target.steps()?;
        let q = target.expected_batch_size / target.dataset_size as f64;
        let calibrated = calibrate_noise_multiplier(
            target.accountant(),
            q,
            steps,
            target.epsilon,
            target.delta,
        )?;
        let config = DpSgdConfig {
            noise_multiplier: noise_multiplier_for(target.noise, calibrated.noise_multiplier),
            ..DpSgdConfig::without_noise(target, learning_rate)?
        };
        Ok(DpSgdConfig {
            epsilon_budget: target.epsilon,
            ..config
        })
    }

    /// The NOT PRIVATE baseline of `target`'s plan: the same steps and batches, no noise, an
    /// infinite budget (the ledger reports an infinite epsilon). For measuring what privacy
    /// costs, never for a release.
    pub fn without_noise(target: PrivacyTarget, learning_rate: f64) -> Result<Self, TrainError> {
        let config = DpSgdConfig {
            expected_batch_size: target.expected_batch_size,
            physical_batch_size: 256,
            steps: target.steps()?,
            clip_norm: target.clip_norm,
            noise_multiplier: 0.0,
            noise: target.noise,
            learning_rate,
            prefix_rates: Vec::new(),
            optimizer: Optimizer::default(),
            schedule: Schedule::default(),
            average_decay: None,
            delta: target.delta,
            epsilon_budget: f64::INFINITY,
            mechanism: Mechanism::PoissonGaussian,
            clipping: ClippingStyle::Flat,
            accountant: target.accountant(),
        };
        validate(&config, target.dataset_size as i64)?;
        Ok(config)
    }
}

impl PrivacyTarget {
    /// PRV (bounded by RDP), or RDP alone below the smallest delta PRV resolves.
    fn accountant(&self) -> AccountantKind {
        if self.delta < PRV_MIN_DELTA {
            AccountantKind::Rdp
        } else {
            AccountantKind::Prv {
                epsilon_error: prv_epsilon_error_for(self.epsilon),
            }
        }
    }

    /// `ceil(epochs N / B)`, once the batch size and the epochs are checked.
    fn steps(&self) -> Result<u64, TrainError> {
        let n = self.dataset_size as f64;
        if !(self.expected_batch_size > 0.0 && self.expected_batch_size <= n) {
            return Err(TrainError::Config(format!(
                "expected batch size {} must be in (0, {n}]",
                self.expected_batch_size
            )));
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0) {
            return Err(TrainError::Config(format!(
                "epochs must be a finite number > 0, got {}",
                self.epochs
            )));
        }
        Ok((self.epochs / (self.expected_batch_size / n)).ceil() as u64)
    }
}

/// How batches are formed and noised: what the ledger accounts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mechanism {
    /// DP-SGD: Poisson sampling with rate `expected_batch_size / N` and independent Gaussian
    /// noise of std `noise_multiplier x clip_norm` at every step.
    PoissonGaussian,
    /// Fixed batches visited cyclically (`batches` per epoch; `expected_batch_size` should be
    /// `N / batches`) with correlated noise `(C^{-1} Z)_t`, each `z_t` of std
    /// `noise_multiplier x clip_norm x sensitivity`.
    CyclicCorrelated {
        /// Batches per epoch b (the minimum separation between an example's steps).
        batches: u64,
        /// How `C^{-1} Z` streams.
        recurrence: NoiseRecurrence,
        /// The sensitivity of C under the plan's participation.
        sensitivity: f64,
    },
}

/// Training examples: inputs (N, ...) and integer class labels (N).
#[derive(Debug, Clone, Copy)]
pub struct Batches<'a> {
    /// Inputs, first dimension N.
    pub inputs: &'a Tensor,
    /// Class labels, shape (N).
    pub labels: &'a Tensor,
}

/// What one step did, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Steps taken so far (1-based).
    pub step: u64,
    /// Realised logical batch size.
    pub batch_size: usize,
    /// Mean loss over the batch before the update (NaN for an empty batch). Like the accuracy,
    /// a statistic of private data that is not privatized: for monitoring, not for release.
    pub mean_loss: f64,
    /// Fraction of the batch classified correctly before the update.
    pub accuracy: f64,
    /// Epsilon spent after this step.
    pub epsilon: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The ledger with every step taken.
    pub ledger: PrivacyLedger,
    /// Examples dropped for non-finite gradients, over the whole run.
    pub nonfinite_examples: i64,
    /// Whether the run ended before its planned steps because the next step would have
    /// exceeded the budget.
    pub stopped_by_budget: bool,
}

/// How a run forms its logical batches and noises their sums.
enum Steps {
    /// Each example independently with the sampler's rate; independent Gaussian noise (none for
    /// a NOT PRIVATE run), and the event each release must report: the one the ledger accounts.
    Poisson {
        sampler: PoissonSampler,
        gaussian: Option<GaussianNoise>,
        event: DpEvent,
    },
    /// Example `i` in batch `i mod b`, batch `t mod b` at step `t`; correlated noise.
    Cyclic {
        batches: u64,
        correlated: CorrelatedNoise,
    },
}

impl Steps {
    /// The correlated-noise state a checkpoint must keep, if the run has one.
    fn correlated(&self) -> Option<&CorrelatedNoise> {
        match self {
            Steps::Cyclic { correlated, .. } => Some(correlated),
            Steps::Poisson { .. } => None,
        }
    }
}

/// Observers of each step's gradient sums, for privacy audits. An error from a hook ends the
/// run with that error: an audit whose canary failed must fail, never read as a result.
pub trait StepHooks {
    /// The clipping engine the run will use, built from the configuration: an audit that plants
    /// a bug (`ClippingEngine::with_unclipped_layer_for_audit`) returns a broken one; every other
    /// hook returns it unchanged.
    fn engine(&mut self, engine: ClippingEngine) -> ClippingEngine {
        engine
    }
    /// The examples (indices into the data) of the logical batch about to be run: an audit
    /// learns here whether its canary was sampled.
    fn batch(&mut self, _step: u64, _examples: &[i64]) {}
    /// The clipped sums of a logical batch, before noise: an audit reads its canaries here.
    fn before_noise(
        &mut self,
        _step: u64,
        _sums: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        Ok(())
    }
    /// The noisy sums the update is made of: an audit reads its test statistic here.
    fn after_noise(
        &mut self,
        _step: u64,
        _noisy: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl StepHooks for NoHooks {}

/// Runs DP-SGD on the trainable variables of `vs`. `logits` maps a physical batch of inputs to
/// logits, recording its DP layers on the tape it is given.
pub fn train(
    vs: &nn::VarStore,
    logits: impl Fn(&Tensor, &mut Tape) -> Tensor,
    data: Batches<'_>,
    config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary, TrainError> {
    train_with_hooks(vs, logits, data, config, rng, &mut NoHooks, None, on_step)
}

/// Runs DP-SGD on the trainable variables of `vs` with any per-example loss: `examples` gives
/// the number of examples and the losses of those the run samples ([`PerExampleLoss`]).
/// [`train`] is this with [`CrossEntropy`].
pub fn train_with_loss(
    vs: &nn::VarStore,
    examples: &impl PerExampleLoss,
    config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary, TrainError> {
    let alone = Collectives::single();
    lead(
        &alone,
        vs,
        examples,
        config,
        rng,
        &mut NoHooks,
        None,
        on_step,
    )
}

/// [`train`] with hooks that see each step's sums before and after noise, and optional
/// checkpoints: with `checkpointing`, a run folder holding a checkpoint is resumed from it
/// (weights, optimizer, generator and ledger), and the state is saved every few steps.
#[allow(clippy::too_many_arguments)]
pub fn train_with_hooks(
    vs: &nn::VarStore,
    logits: impl Fn(&Tensor, &mut Tape) -> Tensor,
    data: Batches<'_>,
    config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    hooks: &mut impl StepHooks,
    checkpointing: Option<&Checkpointing>,
    on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary, TrainError> {
    let alone = Collectives::single();
    let examples = CrossEntropy { logits, data };
    lead(
        &alone,
        vs,
        &examples,
        config,
        rng,
        hooks,
        checkpointing,
        on_step,
    )
}

/// [`train_with_hooks`] as rank 0 of a data-parallel run ([`crate::data_parallel`]): the other
/// ranks of `collectives` run [`crate::serve_as_worker`] on the same model, data and
/// configuration. The mechanism, the ledger and the checkpoints are those of one process; the
/// clipped sums are computed by all ranks. Hooks are not offered here: they would see only
/// the leader's share.
#[allow(clippy::too_many_arguments)]
pub fn train_data_parallel(
    collectives: &Collectives,
    vs: &nn::VarStore,
    logits: impl Fn(&Tensor, &mut Tape) -> Tensor,
    data: Batches<'_>,
    config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    checkpointing: Option<&Checkpointing>,
    on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary, TrainError> {
    if !collectives.is_leader() {
        return Err(TrainError::Config(format!(
            "rank {} serves a data-parallel run (serve_as_worker); only rank 0 trains",
            collectives.rank()
        )));
    }
    let examples = CrossEntropy { logits, data };
    lead(
        collectives,
        vs,
        &examples,
        config,
        rng,
        &mut NoHooks,
        checkpointing,
        on_step,
    )
}

/// The training loop of the run's only process, or of rank 0 of a data-parallel one.
#[allow(clippy::too_many_arguments)]
fn lead(
    collectives: &Collectives,
    vs: &nn::VarStore,
    examples: &impl PerExampleLoss,
    config: &DpSgdConfig,
    rng: &mut PrivacyRng,
    hooks: &mut impl StepHooks,
    checkpointing: Option<&Checkpointing>,
    mut on_step: impl FnMut(&StepReport),
) -> Result<TrainSummary, TrainError> {
    let n = examples.len();
    validate(config, n)?;
    let engine =
        hooks.engine(ClippingEngine::new(vs, config.clip_norm)?.with_style(config.clipping)?);
    let (mut steps, ledger) = match &config.mechanism {
        Mechanism::PoissonGaussian => {
            let sampler = PoissonSampler::new(n as usize, config.expected_batch_size / n as f64)?;
            let gaussian = (config.noise_multiplier > 0.0)
                .then(|| {
                    let (sigma, clip) = (config.noise_multiplier, config.clip_norm);
                    GaussianNoise::new(config.noise, sigma, clip, &engine.zero_sums())
                })
                .transpose()?;
            let event = gaussian
                .as_ref()
                .map_or(DpEvent::NonPrivate, GaussianNoise::event);
            let ledger = PrivacyLedger::for_step(
                &sampler.event(event.clone()),
                config.delta,
                config.epsilon_budget,
            )?
            .with_accountant(config.accountant)?;
            let steps = Steps::Poisson {
                sampler,
                gaussian,
                event,
            };
            (steps, ledger)
        }
        Mechanism::CyclicCorrelated {
            batches,
            recurrence,
            sensitivity,
        } => {
            if config.noise == NoiseMode::Secure {
                return Err(TrainError::Config(
                    "secure (grid) noise is not offered for correlated noise, which is floating-point: choose the fast noise mode".into(),
                ));
            }
            let std = config.noise_multiplier * config.clip_norm * sensitivity;
            let ledger = PrivacyLedger::correlated(
                1.0 / *batches as f64,
                config.noise_multiplier,
                config.steps,
                config.delta,
                config.epsilon_budget,
            )?;
            let steps = Steps::Cyclic {
                batches: *batches,
                correlated: CorrelatedNoise::new(recurrence.clone(), std)?,
            };
            (steps, ledger)
        }
    };
    let mut ledger = ledger.with_randomness(config.noise, rng.seed());
    let variables = vs.variables();
    let mut optimizer = OptimizerState::new(config.optimizer);
    let mut average = config.average_decay.map(WeightAverage::new);
    if let Some(resumed) = checkpointing
        .map(|c| c.resume(vs, config.optimizer, config.average_decay))
        .transpose()?
        .flatten()
    {
        let same_plan = resumed.ledger.sampling_rate() == ledger.sampling_rate()
            && resumed.ledger.noise_multiplier() == ledger.noise_multiplier()
            && resumed.ledger.delta() == ledger.delta()
            && resumed.ledger.correlated_steps() == ledger.correlated_steps()
            && resumed.ledger.noise_mode() == ledger.noise_mode()
            && resumed.ledger.budget() == ledger.budget()
            && resumed.ledger.accountant() == ledger.accountant()
            && resumed.ledger.seed() == ledger.seed();
        if !same_plan {
            return Err(TrainError::RunFolderMismatch(
                "the run folder's checkpoint was made with a different sampling, noise, noise mode, accountant, delta, budget or seed; use a new folder".into(),
            ));
        }
        if let Steps::Cyclic { correlated, .. } = &mut steps {
            let state = resumed.correlated_noise.ok_or_else(|| {
                TrainError::Internal(
                    "a verified checkpoint of correlated noise has no noise state".into(),
                )
            })?;
            correlated.restore(state, resumed.ledger.steps())?;
        }
        (ledger, optimizer, average, *rng) = (
            resumed.ledger,
            resumed.optimizer,
            resumed.average,
            resumed.rng,
        );
    }
    let protocol = Protocol::new(collectives);
    protocol.share_model(vs)?;
    let mut nonfinite_examples = 0;
    let mut stopped_by_budget = false;
    while ledger.steps() < config.steps {
        let batch: Vec<i64> = match &mut steps {
            Steps::Poisson {
                sampler, gaussian, ..
            } => {
                let batch = sampler.sample(rng);
                if let Some(gaussian) = gaussian {
                    gaussian.start(rng);
                }
                batch
            }
            Steps::Cyclic { batches, .. } => {
                let turn = (ledger.steps() % *batches) as i64;
                (turn..n).step_by(*batches as usize).collect()
            }
        };
        hooks.batch(ledger.steps() + 1, &batch);
        protocol.announce(Some(&batch))?;
        let share = protocol.share(&batch);
        let (mut sums, mut stats) =
            clipped_sums(&engine, examples, &share, config.physical_batch_size)?;
        protocol.reduce(&mut sums, &mut stats)?;
        nonfinite_examples += stats.nonfinite;
        match ledger.record_step() {
            Ok(()) => {}
            // The budget would be exceeded: the step is not taken, the run ends here, its
            // last step checkpointed (a rerun then resumes and stops, never starts over).
            Err(TrainError::BudgetExhausted { .. }) => {
                stopped_by_budget = true;
                protocol.conclude(vs, false)?;
                if let Some(c) = checkpointing.filter(|_| ledger.steps() > 0) {
                    c.save(
                        vs,
                        &optimizer,
                        average.as_ref(),
                        rng,
                        &ledger,
                        steps.correlated(),
                    )?;
                }
                break;
            }
            Err(e) => return Err(e),
        }
        hooks.before_noise(ledger.steps(), &mut sums)?;
        match &mut steps {
            Steps::Cyclic { correlated, .. } => correlated.add_to(&mut sums, rng),
            Steps::Poisson {
                gaussian: Some(gaussian),
                event,
                ..
            } => {
                if gaussian.add(&mut sums, rng)? != *event {
                    return Err(TrainError::Internal(
                        "the noise mechanism ran a different event than the ledger accounts".into(),
                    ));
                }
            }
            Steps::Poisson { gaussian: None, .. } => {}
        }
        hooks.after_noise(ledger.steps(), &sums)?;
        let mean_gradient: BTreeMap<String, Tensor> = sums
            .iter()
            .map(|(n, s)| (n.clone(), s / config.expected_batch_size))
            .collect();
        let scale = config.schedule.rate(1.0, ledger.steps(), config.steps);
        optimizer.step(&variables, &mean_gradient, |name| {
            scale * base_rate(config, name)
        })?;
        protocol.conclude(vs, true)?;
        if let Some(average) = &mut average {
            average.update(&variables, mean_gradient.keys())?;
        }
        if let Some(c) = checkpointing {
            if ledger.steps() % c.every.max(1) == 0 || ledger.steps() == config.steps {
                c.save(
                    vs,
                    &optimizer,
                    average.as_ref(),
                    rng,
                    &ledger,
                    steps.correlated(),
                )?;
            }
        }
        on_step(&StepReport {
            step: ledger.steps(),
            batch_size: batch.len(),
            mean_loss: stats.loss_sum / batch.len() as f64,
            accuracy: stats.correct / batch.len() as f64,
            epsilon: ledger.spent()?.epsilon,
        });
    }
    if !stopped_by_budget {
        protocol.announce(None)?;
    }
    if let Some(average) = &average {
        average.release_into(&variables)?;
    }
    Ok(TrainSummary {
        ledger,
        nonfinite_examples,
        stopped_by_budget,
    })
}

/// What a share of a logical batch gave besides its clipped sums, for progress reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ShareStats {
    /// The sum of the examples' losses.
    pub loss_sum: f64,
    /// How many were classified correctly before the update (NaN where the loss does not
    /// classify).
    pub correct: f64,
    /// How many were dropped for non-finite gradients.
    pub nonfinite: i64,
}

/// The clipped gradient sums of `indices`, their losses computed in physical batches of at
/// most `physical` examples.
pub(crate) fn clipped_sums(
    engine: &ClippingEngine,
    examples: &impl PerExampleLoss,
    indices: &[i64],
    physical: usize,
) -> Result<(BTreeMap<String, Tensor>, ShareStats), TrainError> {
    let mut sums = engine.zero_sums();
    let mut stats = ShareStats::default();
    for chunk in indices.chunks(physical) {
        let mut tape = Tape::recording();
        let losses = examples.losses(chunk, &mut tape)?;
        stats.correct += losses.correct.map_or(f64::NAN, |c| c as f64);
        let losses = losses.values;
        stats.loss_sum += losses.sum(Kind::Double).double_value(&[]);
        let clipped = engine.clip(tape.take(), &losses)?;
        stats.nonfinite += clipped.nonfinite;
        clipped.add_to(&mut sums);
    }
    Ok((sums, stats))
}

/// Fraction of correctly classified examples, evaluated without recording.
pub fn evaluate_accuracy(
    logits: impl Fn(&Tensor, &mut Tape) -> Tensor,
    data: Batches<'_>,
    batch_size: i64,
) -> f64 {
    let n = data.labels.size()[0];
    let correct: i64 = tch::no_grad(|| {
        (0..n)
            .step_by(batch_size as usize)
            .map(|start| {
                let len = batch_size.min(n - start);
                let predicted =
                    logits(&data.inputs.narrow(0, start, len), &mut Tape::off()).argmax(-1, false);
                predicted
                    .eq_tensor(&data.labels.narrow(0, start, len))
                    .sum(Kind::Int64)
                    .int64_value(&[])
            })
            .sum()
    });
    correct as f64 / n as f64
}

pub(crate) fn validate(config: &DpSgdConfig, n: i64) -> Result<(), TrainError> {
    let bad = |msg: String| Err(TrainError::Config(msg));
    if n <= 0 {
        return bad("the training set is empty".into());
    }
    if !(config.expected_batch_size > 0.0 && config.expected_batch_size <= n as f64) {
        return bad(format!(
            "expected batch size {} must be in (0, {n}]",
            config.expected_batch_size
        ));
    }
    if config.physical_batch_size == 0 {
        return bad("physical batch size must be at least 1".into());
    }
    if !(config.noise_multiplier.is_finite() && config.noise_multiplier >= 0.0) {
        return bad(format!(
            "noise multiplier {} must be positive (or 0 for a run that is NOT PRIVATE)",
            config.noise_multiplier
        ));
    }
    if let Some((prefix, rate)) = config
        .prefix_rates
        .iter()
        .find(|(_, rate)| !(rate.is_finite() && *rate > 0.0))
    {
        return bad(format!(
            "the learning rate of '{prefix}' must be a finite number > 0, got {rate}"
        ));
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return bad(format!(
            "learning rate {} must be positive",
            config.learning_rate
        ));
    }
    if !(config.delta > 0.0 && config.delta * (n as f64) < 1.0) {
        return bad(format!(
            "delta {} must be in (0, 1/N) with N = {n}: a mechanism that publishes a random example whole meets a delta of 1/N",
            config.delta
        ));
    }
    if let Some(decay) = config.average_decay {
        WeightAverage::check(decay)?;
    }
    config.optimizer.check()
}

/// The base learning rate of variable `name`: that of the first prefix it starts with, else
/// the run's.
fn base_rate(config: &DpSgdConfig, name: &str) -> f64 {
    config
        .prefix_rates
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix.as_str()))
        .map_or(config.learning_rate, |&(_, rate)| rate)
}
