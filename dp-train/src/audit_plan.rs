//! Audits of a plan as `dp-train train` runs it: its data, its model (the MiniLM encoder
//! included), its Poisson sampler, clipping, noise and optimizer, with one canary in or out of
//! the training set by a fair coin in each of K trials.
//!
//! The canary is one more row of the training data (the first test example), sampled by the
//! run's own sampler at the plan's rate q like every example. Two kinds:
//! - **gradient** (white-box, strong; after the Dirac gradient canaries of Nasr et al. 2023,
//!   "Tight auditing of differentially private machine learning"): the row carries the ignored
//!   label, so the model gives it no gradient of its own; whenever the sampler draws it, a
//!   gradient of norm 100 C on one trained coordinate, cut to the run's clip norm, joins the
//!   clipped sum before noise. The coordinate is the one the real examples touch least (the
//!   smallest entry of a probe batch's clipped sum). The attacker reads that coordinate of
//!   every noisy sum and adds them up. This tests the sampler, the clip norm the run applies,
//!   the noise and its calibration on the plan's real parameters; the model's own clipping
//!   is tested against batch-size-1 references and by the Fashion-MNIST audit's canaries.
//! - **input** (black-box, weak): the row is labelled with the next class (`(y + 1) mod K`),
//!   a mislabelled example that goes through the model and its clipping like any other; the
//!   score is minus its loss under the final model (Yeom et al. 2018).
//!
//! Every trial restarts from the plan's initial weights (the pretrained encoder and one head
//! initialisation) with a generator seeded for that trial; a fifth of the trials fix the
//! threshold and the rest are counted, as in [`crate::audit`]. The counts give lower bounds on
//! epsilon (Bayesian and Clopper-Pearson); a correct run's bound stays below the claim.

use dp_core::{ClippingEngine, PrivacyRng, Tape};
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{Kind, Reduction, Tensor};

use crate::audit::{check_trials, count_trials, CanaryKind, Sabotage, TrialAudit};
use crate::dpsgd::{train_with_hooks, Batches, Mechanism, StepHooks};
use crate::error::TrainError;
use crate::job::Job;
use crate::plan::TrainConfig;

/// The clip norm of the no-clipping sabotage, in units of C.
const NO_CLIPPING_FACTOR: f64 = 1000.0;

/// The norm of the gradient canary before clipping, in units of C: clipping must cut it.
const CANARY_NORM_OVER_CLIP: f64 = 100.0;

/// The label the loss ignores (zero loss, zero gradient).
const IGNORED_LABEL: i64 = -100;

/// An audit of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanAuditConfig {
    /// The attack.
    pub canary: CanaryKind,
    /// Training runs.
    pub trials: usize,
    /// Credible / confidence level of the bounds.
    pub level: f64,
    /// The bug to plant: none, no noise, or no clipping (clip at 1000 C with the noise
    /// multiplier divided by 1000, so the noise stays the same).
    pub sabotage: Sabotage,
    /// Seed of the experiment (challenge bits and each run's generator).
    pub seed: u64,
}

/// The inserted gradient canary: when the run's sampler draws the canary's row, a gradient of
/// norm [`CANARY_NORM_OVER_CLIP`] C on one coordinate, cut to the run's clip norm, joins the
/// clipped sum before noise; the score is that coordinate of every noisy sum.
struct DiracCanary {
    row: i64,
    parameter: String,
    coordinate: i64,
    contribution: f64,
    sampled: bool,
    score: f64,
}

impl DiracCanary {
    fn coordinate_of<'t>(
        &self,
        sums: &'t BTreeMap<String, Tensor>,
    ) -> Result<&'t Tensor, TrainError> {
        sums.get(&self.parameter).ok_or_else(|| {
            TrainError::Internal(format!("audit: the step's sums have no {}", self.parameter))
        })
    }
}

impl StepHooks for DiracCanary {
    fn batch(&mut self, _step: u64, examples: &[i64]) {
        self.sampled = examples.contains(&self.row);
    }

    fn before_noise(
        &mut self,
        _step: u64,
        sums: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        if self.sampled {
            let mut slot =
                self.coordinate_of(sums)?
                    .f_view([-1])?
                    .f_narrow(0, self.coordinate, 1)?;
            let _ = slot.f_add_scalar_(self.contribution)?;
        }
        Ok(())
    }

    fn after_noise(
        &mut self,
        _step: u64,
        noisy: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        let score = self
            .coordinate_of(noisy)?
            .f_view([-1])?
            .f_narrow(0, self.coordinate, 1)?
            .f_to_kind(Kind::Double)?
            .double_value(&[0]);
        if !score.is_finite() {
            return Err(TrainError::Config(
                "audit: the canary's score is not finite".into(),
            ));
        }
        self.score += score;
        Ok(())
    }
}

/// The trained coordinate the real examples touch least: the smallest entry of the clipped sum
/// of the first (up to) 256 training examples at the initial weights.
fn quietest_coordinate(
    job: &Job,
    config: &TrainConfig,
    logits: &dyn Fn(&Tensor, &mut Tape) -> Tensor,
) -> Result<(String, i64), TrainError> {
    let engine = ClippingEngine::new(&job.vs, config.privacy.clip_norm)?
        .with_style(config.training.clipping)?;
    let probe = job.train_labels.size()[0].min(256);
    let mut tape = Tape::recording();
    let losses = logits(&job.train_inputs.narrow(0, 0, probe), &mut tape)
        .f_cross_entropy_loss::<Tensor>(
            &job.train_labels.narrow(0, 0, probe),
            None,
            Reduction::None,
            IGNORED_LABEL,
            0.0,
        )?;
    let clipped = engine.clip(tape.take(), &losses)?;
    let mut best: Option<(f64, String, i64)> = None;
    for (name, sum) in &clipped.sums {
        let (value, index) = sum.f_abs()?.f_view([-1])?.f_min_dim(0, false)?;
        let (value, index) = (value.double_value(&[]), index.int64_value(&[]));
        if best.as_ref().is_none_or(|b| value < b.0) {
            best = Some((value, name.clone(), index));
        }
    }
    best.map(|(_, name, index)| (name, index))
        .ok_or_else(|| TrainError::Config("audit: the plan trains no parameter".into()))
}

/// The outcome of a plan's audit.
#[derive(Debug, Clone, Serialize)]
pub struct PlanAudit {
    /// The epsilon the plan claims after all its steps (as its ledger would report it).
    pub claimed_epsilon: f64,
    /// The trials, the counts and the bounds.
    pub audit: TrialAudit,
}

/// Audits `config` (loaded as `job`) with `audit.trials` runs; `on_trial` sees the number of
/// finished runs.
pub fn audit_plan(
    job: &Job,
    config: &TrainConfig,
    audit: &PlanAuditConfig,
    mut on_trial: impl FnMut(usize),
) -> Result<PlanAudit, TrainError> {
    check_trials(audit.trials)?;
    let plan = config.resolve()?;
    if plan.mechanism != Mechanism::PoissonGaussian {
        return Err(TrainError::Config(
            "audit: plans with correlated noise (noise = \"mf\") are not audited yet; audit a Poisson-sampled plan".into(),
        ));
    }
    if plan.noise_multiplier == 0.0 {
        return Err(TrainError::Config(
            "audit: the plan adds no noise (NOT PRIVATE): there is no claim to audit".into(),
        ));
    }
    let claimed_epsilon = plan.ledger(config.privacy.delta)?.epsilon_for(plan.steps)?;
    // The claim audited is the plan's, computed once above; each trial's own ledger only has
    // to let it take the plan's steps (RDP, quick to compute for any noise, with no budget).
    let mut run = config.dp_sgd_config(&plan);
    run.accountant = dp_accounting::AccountantKind::Rdp;
    run.epsilon_budget = f64::INFINITY;
    match audit.sabotage {
        Sabotage::None => {}
        Sabotage::NoNoise => run.noise_multiplier = 0.0,
        Sabotage::NoClipping => {
            run.clip_norm *= NO_CLIPPING_FACTOR;
            run.noise_multiplier /= NO_CLIPPING_FACTOR;
        }
        Sabotage::UnclippedLayer => {
            return Err(TrainError::Config(
                "audit: --sabotage unclipped-layer needs the Fashion-MNIST audit's gradient canaries; use no-noise or no-clipping with a plan".into(),
            ))
        }
    }
    let logits = |x: &Tensor, tape: &mut Tape| job.model.logits(x, tape);
    let initial = job.snapshot();
    // The canary's row: the first test example, labelled with the next class (input canary),
    // or with the ignored label, which gives it no gradient of its own (gradient canary: the
    // hook inserts its gradient).
    let input = job.test_inputs.narrow(0, 0, 1);
    let classes = tch::no_grad(|| logits(&input, &mut Tape::off())).size()[1];
    let label = match audit.canary {
        CanaryKind::Input => (job.test_labels.narrow(0, 0, 1) + 1).remainder(classes),
        CanaryKind::Gradient => job.test_labels.narrow(0, 0, 1).full_like(IGNORED_LABEL),
    };
    let (parameter, coordinate) = quietest_coordinate(job, config, &logits)?;
    let (n, q) = (job.train_labels.size()[0], plan.sampling_rate);
    let with_canary = (
        Tensor::cat(&[&job.train_inputs, &input], 0),
        Tensor::cat(&[&job.train_labels, &label], 0),
    );
    let mut bits = PrivacyRng::from_seed(audit.seed);
    let mut scores = Vec::with_capacity(audit.trials);
    for k in 0..audit.trials {
        let included = bits.bernoulli(0.5);
        job.restore(&initial);
        let (inputs, labels) = if included {
            (&with_canary.0, &with_canary.1)
        } else {
            (&job.train_inputs, &job.train_labels)
        };
        // Every example, the canary included, is sampled at the plan's rate q.
        let mut trial = run.clone();
        trial.expected_batch_size = q * (n + i64::from(included)) as f64;
        let data = Batches { inputs, labels };
        let seed = audit
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(k as u64 + 1);
        let mut rng = PrivacyRng::from_seed(seed);
        // The input canary's row is never given an inserted gradient (no row is -1).
        let mut dirac = DiracCanary {
            row: match audit.canary {
                CanaryKind::Gradient => n,
                CanaryKind::Input => -1,
            },
            parameter: parameter.clone(),
            coordinate,
            contribution: CANARY_NORM_OVER_CLIP.min(run.clip_norm / config.privacy.clip_norm)
                * config.privacy.clip_norm,
            sampled: false,
            score: 0.0,
        };
        train_with_hooks(
            &job.vs,
            logits,
            data,
            &trial,
            &mut rng,
            &mut dirac,
            None,
            |_| {},
        )?;
        let score = match audit.canary {
            CanaryKind::Gradient => dirac.score,
            CanaryKind::Input => -tch::no_grad(|| {
                logits(&input, &mut Tape::off())
                    .f_cross_entropy_loss::<Tensor>(
                        &label,
                        None,
                        Reduction::Mean,
                        IGNORED_LABEL,
                        0.0,
                    )
                    .map(|loss| loss.double_value(&[]))
            })?,
        };
        scores.push((included, score));
        on_trial(k + 1);
    }
    Ok(PlanAudit {
        claimed_epsilon,
        audit: count_trials(
            audit.canary,
            plan.noise_multiplier,
            scores,
            config.privacy.delta,
            claimed_epsilon,
            audit.level,
        )?,
    })
}
