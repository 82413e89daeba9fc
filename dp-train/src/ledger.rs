//! The privacy ledger: every noised step is recorded *before* its noise is drawn, and a step
//! that would take epsilon past the budget is refused before it happens.
//!
//! DP-SGD: each step is one Poisson-subsampled Gaussian mechanism with the run's sampling rate
//! and noise multiplier, as the sampler and the noise mechanism report it; the ledger keeps its
//! one-step RDP curve and composes by multiplication. With the PRV accountant (Gopi, Lee,
//! Wutschitz 2021) epsilon after k steps is the smaller of two upper bounds: the upper end of
//! the PRV accountant's bracket for the k steps, and RDP's.
//!
//! Correlated (matrix-factorization) noise: the whole planned run is one Gaussian mechanism
//! whose sensitivity covers every participation the plan allows (Choquette-Choo et al. 2023),
//! so its epsilon is spent in full from the first step (exact Gaussian profile, Balle and Wang
//! 2018), and any step beyond the plan is refused: the sensitivity would not cover it.
//!
//! The ledger also records how the noise was drawn and the generator's seed, if the run was
//! seeded.

use dp_accounting::mf::gaussian_epsilon;
use dp_accounting::{
    dp_sgd_epsilon, epsilon_from_rdp, subsampled_gaussian_rdp, AccountantKind, DpEvent,
    EpsilonAtOrder, DEFAULT_ORDERS, DEFAULT_PRV_EPSILON_ERROR,
};
use dp_core::NoiseMode;

use crate::error::TrainError;

/// What a checkpoint keeps of the ledger (the per-step RDP curve is recomputed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerRecord {
    /// Poisson sampling rate of every step.
    pub sampling_rate: f64,
    /// Noise multiplier of every step.
    pub noise_multiplier: f64,
    /// Delta of the reported epsilon.
    pub delta: f64,
    /// The budget no step may exceed (null for an infinite budget).
    pub budget: Option<f64>,
    /// Steps recorded.
    pub steps: u64,
    /// Epsilon spent (null when infinite), for people reading the file.
    pub epsilon_spent: Option<f64>,
    /// Correlated noise: the planned number of steps its sensitivity covers (null for DP-SGD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlated_steps: Option<u64>,
    /// How the noise was drawn (null in ledgers written before noise modes existed).
    #[serde(default)]
    pub noise_mode: Option<NoiseMode>,
    /// The privacy generator's seed, if the run was seeded (its noise is then reproducible).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The accountant of Poisson-sampled steps: "rdp", or "prv" (with `prv_epsilon_error`);
    /// "gaussian" for correlated noise. Ledgers written before PRV accounting say nothing: RDP.
    #[serde(default = "rdp_name")]
    pub accountant: String,
    /// The half-width of the PRV accountant's epsilon bracket, with "prv".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prv_epsilon_error: Option<f64>,
}

fn rdp_name() -> String {
    "rdp".into()
}

/// How the ledger accounts a step.
#[derive(Debug, Clone)]
enum Accounting {
    /// Poisson-subsampled Gaussian steps: the one-step RDP curve on the default orders, and
    /// the PRV accountant's bracket half-width when it accounts them too.
    Poisson {
        step_rdp: Vec<f64>,
        prv_epsilon_error: Option<f64>,
    },
    /// One Gaussian mechanism for a planned run of `steps` steps, with this epsilon.
    Correlated { steps: u64, epsilon: f64 },
}

/// Steps taken so far and what they cost.
#[derive(Debug, Clone)]
pub struct PrivacyLedger {
    sampling_rate: f64,
    noise_multiplier: f64,
    delta: f64,
    budget: f64,
    accounting: Accounting,
    steps: u64,
    noise_mode: Option<NoiseMode>,
    seed: Option<u64>,
    /// The last epsilon computed and its step count: each step checks the next count before
    /// it is taken and reports it after, and the PRV bound costs milliseconds.
    last: std::cell::Cell<Option<(u64, EpsilonAtOrder)>>,
}

impl PrivacyLedger {
    /// A ledger for steps of rate `sampling_rate` and `noise_multiplier` (0: no noise, not
    /// private), refusing any step beyond (`budget`, `delta`).
    pub fn new(
        sampling_rate: f64,
        noise_multiplier: f64,
        delta: f64,
        budget: f64,
    ) -> Result<Self, TrainError> {
        // No noise: every step is non-private, epsilon is infinite (only an infinite budget
        // lets such a step through).
        let step_rdp = if noise_multiplier == 0.0 {
            vec![f64::INFINITY; DEFAULT_ORDERS.len()]
        } else {
            DEFAULT_ORDERS
                .iter()
                .map(|&alpha| subsampled_gaussian_rdp(sampling_rate, noise_multiplier, alpha))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            sampling_rate,
            noise_multiplier,
            delta,
            budget,
            accounting: Accounting::Poisson {
                step_rdp,
                prv_epsilon_error: None,
            },
            steps: 0,
            noise_mode: None,
            seed: None,
            last: std::cell::Cell::new(None),
        })
    }

    /// A ledger for a correlated-noise run of `planned_steps` steps over fixed batches (each
    /// example in one of `1 / sampling_rate` batches), whose noise multiplier is relative to
    /// the clip norm times the strategy's sensitivity.
    pub fn correlated(
        sampling_rate: f64,
        noise_multiplier: f64,
        planned_steps: u64,
        delta: f64,
        budget: f64,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            sampling_rate,
            noise_multiplier,
            delta,
            budget,
            accounting: Accounting::Correlated {
                steps: planned_steps,
                epsilon: gaussian_epsilon(noise_multiplier, delta)?,
            },
            steps: 0,
            noise_mode: None,
            seed: None,
            last: std::cell::Cell::new(None),
        })
    }

    /// A ledger for steps that each run `step`: a Poisson-sampled Gaussian mechanism (or a
    /// Poisson-sampled non-private release, noise multiplier 0), as the sampler and the noise
    /// mechanism report it.
    pub fn for_step(step: &DpEvent, delta: f64, budget: f64) -> Result<Self, TrainError> {
        let DpEvent::PoissonSampled {
            sampling_probability,
            event,
        } = step
        else {
            return Err(TrainError::Config(format!(
                "the ledger accounts Poisson-sampled steps, not {}",
                step.name()
            )));
        };
        let noise_multiplier = match **event {
            DpEvent::Gaussian { noise_multiplier } => noise_multiplier,
            DpEvent::NonPrivate => 0.0,
            ref other => {
                return Err(TrainError::Config(format!(
                    "the ledger accounts Gaussian noise, not {}",
                    other.name()
                )))
            }
        };
        Self::new(*sampling_probability, noise_multiplier, delta, budget)
    }

    /// This ledger, recording how the noise is drawn and the generator's seed (if any).
    pub fn with_randomness(self, noise_mode: NoiseMode, seed: Option<u64>) -> Self {
        Self {
            noise_mode: Some(noise_mode),
            seed,
            ..self
        }
    }

    /// This ledger, accounting its Poisson-sampled steps with `accountant` (RDP, or PRV bounded
    /// by RDP); correlated noise keeps its exact Gaussian accounting, and only RDP is accepted
    /// for it.
    pub fn with_accountant(mut self, accountant: AccountantKind) -> Result<Self, TrainError> {
        self.last.set(None);
        match (&mut self.accounting, accountant) {
            (Accounting::Poisson { prv_epsilon_error, .. }, AccountantKind::Prv { epsilon_error }) => {
                *prv_epsilon_error = Some(epsilon_error);
            }
            (Accounting::Poisson { prv_epsilon_error, .. }, AccountantKind::Rdp) => {
                *prv_epsilon_error = None;
            }
            (Accounting::Correlated { .. }, AccountantKind::Rdp) => {}
            (Accounting::Correlated { .. }, AccountantKind::Prv { .. }) => {
                return Err(TrainError::Config(
                    "correlated noise is accounted exactly as one Gaussian mechanism, not by the PRV accountant".into(),
                ))
            }
        }
        Ok(self)
    }

    /// The accountant of the Poisson-sampled steps (RDP for correlated noise, which is
    /// accounted exactly).
    pub fn accountant(&self) -> AccountantKind {
        match self.accounting {
            Accounting::Poisson {
                prv_epsilon_error: Some(epsilon_error),
                ..
            } => AccountantKind::Prv { epsilon_error },
            _ => AccountantKind::Rdp,
        }
    }

    /// Whether the run adds correlated noise (one Gaussian mechanism for the planned run).
    pub fn correlated_steps(&self) -> Option<u64> {
        match self.accounting {
            Accounting::Correlated { steps, .. } => Some(steps),
            Accounting::Poisson { .. } => None,
        }
    }

    /// Records one more step, or refuses it if it would exceed the budget.
    pub fn record_step(&mut self) -> Result<(), TrainError> {
        if let Accounting::Correlated { steps, .. } = self.accounting {
            if self.steps >= steps {
                return Err(TrainError::Config(format!(
                    "step {} is beyond the {steps} steps the correlated-noise plan accounts for",
                    self.steps + 1
                )));
            }
        }
        let after = self.epsilon_after(self.steps + 1)?;
        if after.epsilon > self.budget {
            return Err(TrainError::BudgetExhausted {
                step: self.steps + 1,
                epsilon: after.epsilon,
                budget: self.budget,
            });
        }
        self.steps += 1;
        Ok(())
    }

    /// The record a checkpoint stores.
    pub fn record(&self) -> Result<LedgerRecord, TrainError> {
        let spent = self.spent()?.epsilon;
        Ok(LedgerRecord {
            sampling_rate: self.sampling_rate,
            noise_multiplier: self.noise_multiplier,
            delta: self.delta,
            budget: self.budget.is_finite().then_some(self.budget),
            steps: self.steps,
            epsilon_spent: spent.is_finite().then_some(spent),
            correlated_steps: self.correlated_steps(),
            noise_mode: self.noise_mode,
            seed: self.seed,
            accountant: match (&self.accounting, self.accountant()) {
                (Accounting::Correlated { .. }, _) => "gaussian".into(),
                (_, kind) => kind.name().into(),
            },
            prv_epsilon_error: match self.accountant() {
                AccountantKind::Prv { epsilon_error } => Some(epsilon_error),
                AccountantKind::Rdp => None,
            },
        })
    }

    /// A ledger continuing from a checkpoint's record.
    pub fn from_record(record: &LedgerRecord) -> Result<Self, TrainError> {
        let budget = record.budget.unwrap_or(f64::INFINITY);
        let ledger = match record.correlated_steps {
            Some(planned) => Self::correlated(
                record.sampling_rate,
                record.noise_multiplier,
                planned,
                record.delta,
                budget,
            )?,
            None => Self::new(
                record.sampling_rate,
                record.noise_multiplier,
                record.delta,
                budget,
            )?,
        };
        let accountant = match (record.accountant.as_str(), record.correlated_steps) {
            ("prv", None) => AccountantKind::Prv {
                epsilon_error: record
                    .prv_epsilon_error
                    .unwrap_or(DEFAULT_PRV_EPSILON_ERROR),
            },
            ("rdp", None) | ("gaussian" | "rdp", Some(_)) => AccountantKind::Rdp,
            (other, _) => {
                return Err(TrainError::Config(format!(
                    "the ledger names the accountant '{other}', which does not fit its steps"
                )))
            }
        };
        let mut ledger = ledger.with_accountant(accountant)?;
        ledger.steps = record.steps;
        ledger.noise_mode = record.noise_mode;
        ledger.seed = record.seed;
        Ok(ledger)
    }

    /// Steps recorded.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Epsilon spent so far (at the ledger's delta), with its RDP order.
    pub fn spent(&self) -> Result<EpsilonAtOrder, TrainError> {
        self.epsilon_after(self.steps)
    }

    /// The sampling rate q of every step.
    pub fn sampling_rate(&self) -> f64 {
        self.sampling_rate
    }

    /// The noise multiplier of every step.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// How the noise is drawn, if recorded.
    pub fn noise_mode(&self) -> Option<NoiseMode> {
        self.noise_mode
    }

    /// The privacy generator's seed, if the run was seeded.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The delta at which epsilon is reported.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The epsilon budget no step may take the run past.
    pub fn budget(&self) -> f64 {
        self.budget
    }

    /// The epsilon `steps` steps of this ledger's mechanism spend (a plan's claim, before any
    /// step is taken).
    pub fn epsilon_for(&self, steps: u64) -> Result<f64, TrainError> {
        Ok(self.epsilon_after(steps)?.epsilon)
    }

    /// Epsilon after `steps` steps; the order is NaN for correlated noise and where the PRV
    /// accountant's bound is the smaller (no RDP order).
    fn epsilon_after(&self, steps: u64) -> Result<EpsilonAtOrder, TrainError> {
        if let Some((counted, epsilon)) = self.last.get() {
            if counted == steps {
                return Ok(epsilon);
            }
        }
        let epsilon = self.compute_epsilon_after(steps)?;
        self.last.set(Some((steps, epsilon)));
        Ok(epsilon)
    }

    fn compute_epsilon_after(&self, steps: u64) -> Result<EpsilonAtOrder, TrainError> {
        match &self.accounting {
            Accounting::Poisson {
                step_rdp,
                prv_epsilon_error,
            } => {
                let rdp: Vec<f64> = step_rdp.iter().map(|r| r * steps as f64).collect();
                let by_rdp = epsilon_from_rdp(&DEFAULT_ORDERS, &rdp, self.delta)?;
                match prv_epsilon_error {
                    Some(epsilon_error) if steps > 0 && self.noise_multiplier > 0.0 => {
                        let by_prv = dp_sgd_epsilon(
                            AccountantKind::Prv {
                                epsilon_error: *epsilon_error,
                            },
                            self.sampling_rate,
                            self.noise_multiplier,
                            steps,
                            self.delta,
                        )?;
                        Ok(if by_prv < by_rdp.epsilon {
                            EpsilonAtOrder {
                                epsilon: by_prv,
                                order: f64::NAN,
                            }
                        } else {
                            by_rdp
                        })
                    }
                    _ => Ok(by_rdp),
                }
            }
            Accounting::Correlated { epsilon, .. } => Ok(EpsilonAtOrder {
                epsilon: if steps == 0 { 0.0 } else { *epsilon },
                order: f64::NAN,
            }),
        }
    }
}
