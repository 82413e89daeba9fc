//! Privacy audits of the DP-SGD loop: train with and without canaries, attack, count, and turn
//! the counts into lower bounds on epsilon (`dp_accounting::audit`).
//!
//! Canaries:
//! - **gradient (Dirac) canaries** (Nasr et al. 2023): an example whose gradient is all zeros
//!   except one coordinate that no real example touches (a weight on an input feature that is
//!   always 0). Like any example it is Poisson-sampled at rate q and clipped; the adversary gives
//!   it norm 1000 C, so clipping must cut it to C. The attack observes every noisy update and
//!   scores `sum_t (noisy gradient sum)_coordinate`: white-box, the strongest threat model of
//!   DP-SGD, so a correct run's lower bound comes close to its epsilon.
//! - **input canaries**: a real image with a wrong label, in the training set or not; the attack
//!   scores minus its loss under the final model (Yeom et al. 2018). Black-box and weak.
//!
//! Two designs: K trials, each training one model with (b = 1) or without (b = 0) the canary,
//! a threshold fixed on the first 20% of trials and counts on the rest (Zanella-Béguelin et al.
//! 2023 estimate); or one run with m gradient canaries each included with probability 1/2,
//! guessing the r/2 highest and r/2 lowest scores (Steinke, Nasr, Jagielski 2023).
//! Sabotaged runs (noise off, clipping off) show what a broken implementation looks like.

use dp_accounting::audit::{
    estimate_epsilon, one_run_epsilon_lower_bound, AuditCounts, AuditEstimate,
};
use dp_accounting::{calibrate_noise_multiplier, AccountantKind};
use dp_core::{ClippingStyle, NoiseMode, PrivacyRng, Tape};
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::dpsgd::{train_with_hooks, Batches, DpSgdConfig, Mechanism, StepHooks};
use crate::error::TrainError;
use crate::fashion_mnist::FashionMnist;
use crate::models::Mlp;

/// The adversary's chosen norm for a gradient canary, in units of C: clipping must reduce it.
const CANARY_NORM_OVER_CLIP: f64 = 1000.0;

/// Share of the K trials used to fix the attack's threshold (not counted).
const CALIBRATION_SHARE: f64 = 0.2;

/// What kind of canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryKind {
    /// A Dirac gradient canary, scored on every noisy update.
    Gradient,
    /// A mislabelled image, scored by its final loss.
    Input,
}

/// A deliberate bug, to check that the audit catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sabotage {
    /// The run as claimed.
    None,
    /// No noise is added (the claim is still the calibrated epsilon).
    NoNoise,
    /// Clipping at 1000 C while the noise is still calibrated to C.
    NoClipping,
}

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

/// Gradient canaries: Dirac gradients on coordinates of one weight that real data never
/// touches; each step every included canary is Poisson-sampled, clipped and added.
struct DiracCanaries {
    param: String,
    coordinates: Vec<i64>,
    included: Vec<bool>,
    magnitude: f64,
    rate: f64,
    rng: PrivacyRng,
    scores: Vec<f64>,
}

impl StepHooks for DiracCanaries {
    fn before_noise(
        &mut self,
        _step: u64,
        sums: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        let flat = self.canary_sum(sums)?.f_view([-1])?;
        for (&coordinate, &included) in self.coordinates.iter().zip(&self.included) {
            if included && self.rng.bernoulli(self.rate) {
                let _ = flat.f_get(coordinate)?.f_add_scalar_(self.magnitude)?;
            }
        }
        Ok(())
    }

    fn after_noise(
        &mut self,
        _step: u64,
        noisy: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        let flat = self.canary_sum(noisy)?.f_view([-1])?;
        let values = Vec::<f64>::try_from(
            flat.f_index_select(0, &Tensor::from_slice(&self.coordinates))?
                .f_to_kind(Kind::Double)?,
        )?;
        if values.len() != self.scores.len() {
            return Err(TrainError::Config(
                "audit: the canary coordinates could not be read back".into(),
            ));
        }
        for (score, value) in self.scores.iter_mut().zip(values) {
            *score += value;
        }
        Ok(())
    }
}

impl DiracCanaries {
    /// The sum of the canaries' parameter, or an error if the step has none.
    fn canary_sum<'a>(&self, sums: &'a BTreeMap<String, Tensor>) -> Result<&'a Tensor, TrainError> {
        sums.get(&self.param).ok_or_else(|| {
            TrainError::Config(format!(
                "audit: the canaries' parameter {} is not among the step's sums",
                self.param
            ))
        })
    }
}

struct Plan {
    q: f64,
    sigma: f64,
}

fn plan(config: &AuditConfig) -> Result<Plan, TrainError> {
    if config.dataset_size == 0
        || config.expected_batch_size <= 0.0
        || config.expected_batch_size > config.dataset_size as f64
    {
        return Err(TrainError::Config(
            "audit: need 0 < batch size <= dataset size".into(),
        ));
    }
    let q = config.expected_batch_size / config.dataset_size as f64;
    let sigma = calibrate_noise_multiplier(
        AccountantKind::Rdp,
        q,
        config.steps,
        config.epsilon,
        config.delta,
    )?
    .noise_multiplier;
    Ok(Plan { q, sigma })
}

/// The DP-SGD settings actually run, with the sabotage (if any) applied: its own ledger then
/// accounts what really happens (an infinite budget lets a broken run finish).
fn run_config(config: &AuditConfig, plan: &Plan) -> DpSgdConfig {
    let mut run = DpSgdConfig {
        expected_batch_size: config.expected_batch_size,
        physical_batch_size: 256,
        steps: config.steps,
        clip_norm: config.clip_norm,
        noise_multiplier: plan.sigma,
        noise: NoiseMode::Secure,
        learning_rate: config.learning_rate,
        optimizer: Default::default(),
        schedule: Default::default(),
        delta: config.delta,
        epsilon_budget: config.epsilon,
        mechanism: Mechanism::PoissonGaussian,
        clipping: ClippingStyle::Flat,
    };
    match config.sabotage {
        Sabotage::None => {}
        Sabotage::NoNoise => {
            run.noise_multiplier = 0.0;
            run.epsilon_budget = f64::INFINITY;
        }
        Sabotage::NoClipping => {
            run.clip_norm = config.clip_norm * CANARY_NORM_OVER_CLIP;
            run.noise_multiplier = plan.sigma / CANARY_NORM_OVER_CLIP;
            run.epsilon_budget = f64::INFINITY;
        }
    }
    run
}

/// Images (N, 784) with `extra` zero features appended: the canaries' private coordinates.
fn with_zero_features(images: &Tensor, extra: i64) -> Tensor {
    let n = images.size()[0];
    Tensor::cat(
        &[
            images.shallow_clone(),
            Tensor::zeros([n, extra], (images.kind(), images.device())),
        ],
        1,
    )
}

/// Trains one model on `(images, labels)`; returns its final-model loss on `probe` and the hooks.
fn train_one<H: StepHooks>(
    config: &AuditConfig,
    run: &DpSgdConfig,
    images: &Tensor,
    labels: &Tensor,
    hooks: &mut H,
    seed: u64,
    probe: Option<(&Tensor, &Tensor)>,
) -> Result<f64, TrainError> {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut dims = vec![images.size()[1]];
    dims.extend(&config.hidden);
    dims.push(10);
    let model = Mlp::new(&vs.root(), &dims);
    let forward = |x: &Tensor, tape: &mut Tape| model.forward(x, tape);
    let mut rng = PrivacyRng::from_seed(seed ^ 0x5eed);
    train_with_hooks(
        &vs,
        forward,
        Batches {
            inputs: images,
            labels,
        },
        run,
        &mut rng,
        hooks,
        None,
        |_| {},
    )?;
    Ok(match probe {
        Some((x, y)) => tch::no_grad(|| {
            forward(x, &mut Tape::off())
                .cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
                .double_value(&[])
        }),
        None => 0.0,
    })
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
    if trials < 10 {
        return Err(TrainError::Config("audit: need at least 10 trials".into()));
    }
    let plan = plan(config)?;
    let run = run_config(config, &plan);
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
                let images = with_zero_features(&data.train_images.narrow(0, 0, n), 1);
                let labels = data.train_labels.narrow(0, 0, n);
                let mut hooks = DiracCanaries {
                    param: "linear0.weight".into(),
                    coordinates: vec![784], // row 0, the extra feature's column
                    included: vec![included],
                    magnitude: (CANARY_NORM_OVER_CLIP * config.clip_norm).min(run.clip_norm),
                    rate: plan.q,
                    rng: PrivacyRng::from_seed(seed ^ 0xca11),
                    scores: vec![0.0],
                };
                train_one(config, &run, &images, &labels, &mut hooks, seed, None)?;
                hooks.scores[0]
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
                -train_one(
                    config,
                    &run,
                    &images,
                    &labels,
                    &mut crate::dpsgd::NoHooks,
                    seed,
                    Some((&x, &y)),
                )?
            }
        };
        scores.push((included, score));
        on_trial(k + 1);
    }
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
    let estimate = estimate_epsilon(counts, config.delta, config.level)?;
    let claim_refuted = estimate.bayes.eps_lo_one_sided > config.epsilon;
    Ok(TrialAudit {
        canary,
        noise_multiplier: plan.sigma,
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
    let plan = plan(config)?;
    let run = run_config(config, &plan);
    let n = config.dataset_size as i64;
    let images = with_zero_features(&data.train_images.narrow(0, 0, n), canaries as i64);
    let labels = data.train_labels.narrow(0, 0, n);
    let mut bits = PrivacyRng::from_seed(config.seed);
    let included: Vec<bool> = (0..canaries).map(|_| bits.bernoulli(0.5)).collect();
    let width = images.size()[1];
    let mut hooks = DiracCanaries {
        param: "linear0.weight".into(),
        // Row 0 of the first layer, the extra features' columns.
        coordinates: (0..canaries as i64).map(|i| 784 + i).collect(),
        included: included.clone(),
        magnitude: (CANARY_NORM_OVER_CLIP * config.clip_norm).min(run.clip_norm),
        rate: plan.q,
        rng: PrivacyRng::from_seed(config.seed ^ 0xca11),
        scores: vec![0.0; canaries as usize],
    };
    debug_assert!(width == 784 + canaries as i64);
    train_one(
        config,
        &run,
        &images,
        &labels,
        &mut hooks,
        config.seed.wrapping_add(1),
        None,
    )?;
    let mut order: Vec<usize> = (0..canaries as usize).collect();
    order.sort_by(|&a, &b| hooks.scores[b].total_cmp(&hooks.scores[a]));
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
