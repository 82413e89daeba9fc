//! Checking a plan and resolving its mechanism: the steps, the calibrated noise multiplier
//! (or the optimized correlated-noise strategy), the accounted event and the accountant. Noise,
//! accountant and sampling have three legal combinations: DP-SGD (Poisson, Gaussian, PRV or
//! RDP), its NOT PRIVATE baseline (Poisson, none) and correlated noise (cyclic, mf, gaussian).

use dp_accounting::mf::{
    gaussian_noise_multiplier, optimize_banded, optimize_blt, Objective, Participation, Strategy,
    Workload,
};
use dp_accounting::{
    calibrate_noise_multiplier, prv_epsilon_error_for, AccountantKind, DpEvent, PRV_MIN_DELTA,
};
use dp_core::noise::{accounted_at_least, noise_multiplier_for};
use dp_core::{ClippingStyle, NoiseMode};
use serde::Serialize;

use super::{
    config_error, Dataset, MfSection, ModelKind, NoiseKind, PlanAccountant, Sampling, TrainConfig,
};
use crate::dpsgd::Mechanism;
use crate::error::TrainError;
use crate::ledger::PrivacyLedger;
use crate::models::Precision;

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

impl TrainConfig {
    /// Checks the values that do not decide the mechanism (the model's size, the optimizer,
    /// `[performance]`) before any tensor is made.
    fn check_values(&self) -> Result<(), TrainError> {
        if self.model.kind == ModelKind::Mlp {
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
            if self.model.kind != ModelKind::Encoder {
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
        if let Some(decay) = t.average_decay {
            crate::averaging::WeightAverage::check(decay)?;
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
        if self.model.kind != d.dataset.model_kind() {
            return Err(config_error(format!(
                "model.kind: '{}' does not fit data.dataset '{}' (fashion-mnist: mlp; text: encoder)",
                self.model.kind, d.dataset
            )));
        }
        if let ClippingStyle::Automatic { stability } = self.training.clipping {
            if !(stability.is_finite() && stability > 0.0) {
                return Err(config_error(
                    "training.clipping: automatic clipping needs a stability > 0 (0.01 in Bu et al.)",
                ));
            }
        }
        if self.model.kind == ModelKind::Mlp && self.model.precision != Precision::F32 {
            return Err(config_error(
                "model.precision: bf16 is offered for encoder models only",
            ));
        }

        let text_csv = d.dataset == Dataset::TextCsv;
        if text_csv != (d.train_file.is_some() && d.test_file.is_some())
            || (!text_csv && (d.train_file.is_some() || d.test_file.is_some()))
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
        let correlated = p.noise == NoiseKind::Mf;
        match (correlated, p.accountant) {
            (true, PlanAccountant::Gaussian)
            | (false, PlanAccountant::Prv | PlanAccountant::Rdp) => {}
            (true, other) => {
                return Err(config_error(format!(
                    "privacy.accountant: '{other}' cannot account correlated noise; it is one Gaussian mechanism over the whole plan: set accountant = \"gaussian\""
                )))
            }
            (false, other) => {
                return Err(config_error(format!(
                    "privacy.accountant: '{other}' is not available for DP-SGD training runs (prv or rdp)"
                )))
            }
        }
        if correlated != (p.sampling == Sampling::Cyclic) {
            return Err(config_error(format!(
                "privacy.sampling '{}' does not fit noise '{}' (poisson: gaussian or none; cyclic: mf)",
                p.sampling, p.noise
            )));
        }
        if correlated && p.noise_mode == NoiseMode::Secure {
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
        if p.noise == NoiseKind::Mf {
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
        let accountant = match p.accountant {
            PlanAccountant::Prv if p.delta < PRV_MIN_DELTA => {
                return Err(config_error(format!(
                    "privacy.accountant: the PRV accountant resolves delta down to {PRV_MIN_DELTA:e} only (floating-point FFT), not {:e}: set accountant = \"rdp\"",
                    p.delta
                )))
            }
            PlanAccountant::Prv => AccountantKind::Prv {
                epsilon_error: prv_epsilon_error_for(p.epsilon),
            },
            PlanAccountant::Rdp | PlanAccountant::Gaussian => AccountantKind::Rdp,
        };
        // Correlated noise returned above: the noise is Gaussian or none.
        let noise = match (p.noise, p.noise_multiplier) {
            (NoiseKind::NotPrivate, None) if p.epsilon == f64::INFINITY => PoissonNoise::None,
            (NoiseKind::NotPrivate, None) => {
                return Err(config_error(format!(
                    "privacy.epsilon: noise = \"none\" trains WITHOUT privacy, which epsilon {} would not describe: set epsilon = inf too (--set privacy.epsilon=inf)",
                    p.epsilon
                )))
            }
            (NoiseKind::NotPrivate, Some(_)) => {
                return Err(config_error(
                    "privacy.noise_multiplier cannot be set with noise = \"none\"",
                ))
            }
            (_, Some(sigma)) if positive(sigma) && positive(p.epsilon) => {
                PoissonNoise::Given(sigma)
            }
            (_, None) if positive(p.epsilon) => PoissonNoise::Calibrated,
            (_, _) => {
                return Err(config_error(
                    "privacy.epsilon and privacy.noise_multiplier must be > 0",
                ))
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
