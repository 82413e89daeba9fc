//! Descriptions of what a private computation did, in the shape of dp_accounting's `DpEvent`:
//! a tree that any accountant can walk. Serializable, so ledgers and tools can exchange it.

use serde::{Deserialize, Serialize};

use crate::error::{check_range, AccountingError};
use crate::rdp::RunCount;

/// A differentially private computation, built from mechanisms and how they were combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DpEvent {
    /// Touches no private data.
    NoOp,
    /// Releases private data without protection: epsilon is infinite.
    NonPrivate,
    /// The Gaussian mechanism: noise standard deviation `noise_multiplier` times the
    /// L2 sensitivity.
    Gaussian {
        /// Noise standard deviation over the sensitivity.
        noise_multiplier: f64,
    },
    /// `event` run on a Poisson sample: each record is included independently with
    /// probability `sampling_probability`.
    PoissonSampled {
        /// Inclusion probability q.
        sampling_probability: f64,
        /// The mechanism run on the sample.
        event: Box<DpEvent>,
    },
    /// `event` run on a uniformly random subset of exactly `sample_size` of the
    /// `source_dataset_size` records (fixed-size batches; replace-one neighbours only).
    SampledWithoutReplacement {
        /// Records in the dataset.
        source_dataset_size: u64,
        /// Records in each sample.
        sample_size: u64,
        /// The mechanism run on the sample.
        event: Box<DpEvent>,
    },
    /// `event` (one training run) repeated a random number of times K with mean `mean`, only
    /// the best run released (private hyperparameter tuning).
    RepeatAndSelect {
        /// One run.
        event: Box<DpEvent>,
        /// `E[K]`.
        mean: f64,
        /// The distribution of K.
        #[serde(flatten)]
        runs: RunCount,
    },
    /// `event` repeated `count` times.
    SelfComposed {
        /// The repeated event.
        event: Box<DpEvent>,
        /// How many times.
        count: u64,
    },
    /// Several events one after the other.
    Composed {
        /// The events, in order.
        events: Vec<DpEvent>,
    },
    /// A whole run of the matrix-factorization (correlated-noise) Gaussian mechanism: over
    /// `steps` steps the trainer adds `(C^{-1} Z)_t` to the sum of clipped gradients, with
    /// `Z`'s entries of standard deviation `noise_multiplier x clip x sens(C)` (see
    /// [`crate::mf`]). Record it once per run, not per step.
    ///
    /// Unamplified (`amplification: None`, `sens` under the run's participation pattern) it
    /// is one Gaussian mechanism with `noise_multiplier` (mu-GDP, mu = 1/sigma), whatever C and
    /// the number of steps. With cyclic Poisson sampling of a banded C (`sens` the largest
    /// column norm) it is DP-SGD with the same noise multiplier for `ceil(steps / bands)`
    /// steps (Choquette-Choo et al. 2023, Thm 4).
    MatrixFactorization {
        /// Noise standard deviation over `clip x sens(C)`.
        noise_multiplier: f64,
        /// Steps of the run (n).
        steps: u64,
        /// Amplification by cyclic Poisson sampling, for banded C only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amplification: Option<CyclicPoisson>,
    },
}

/// Cyclic Poisson sampling for a banded strategy (BandMF): the data is split into `bands`
/// fixed groups, and step `t` includes each example of group `t mod bands` independently with
/// probability `sampling_probability`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CyclicPoisson {
    /// The number of bands p of C, which is also the number of groups.
    pub bands: u64,
    /// The inclusion probability q within the sampled group.
    pub sampling_probability: f64,
}

/// The event a matrix-factorization run is exactly as private as: one Gaussian with the same
/// noise multiplier, or DP-SGD for `ceil(steps / bands)` steps under cyclic Poisson sampling.
pub(crate) fn matrix_factorization_equivalent(
    noise_multiplier: f64,
    steps: u64,
    amplification: Option<&CyclicPoisson>,
) -> Result<DpEvent, AccountingError> {
    check_range(
        "noise_multiplier",
        noise_multiplier,
        noise_multiplier > 0.0,
        "sigma > 0",
    )?;
    check_range("steps", steps as f64, steps >= 1, "at least 1 step")?;
    match amplification {
        None => Ok(DpEvent::Gaussian { noise_multiplier }),
        Some(c) => {
            check_range("bands", c.bands as f64, c.bands >= 1, "at least 1 band")?;
            let q = c.sampling_probability;
            check_range("sampling_rate", q, q > 0.0 && q <= 1.0, "0 < q <= 1")?;
            Ok(DpEvent::dp_sgd(
                q,
                noise_multiplier,
                steps.div_ceil(c.bands),
            ))
        }
    }
}

impl DpEvent {
    /// DP-SGD: `steps` Poisson-subsampled Gaussian steps with rate `q` and `noise_multiplier`.
    pub fn dp_sgd(q: f64, noise_multiplier: f64, steps: u64) -> Self {
        let step = DpEvent::PoissonSampled {
            sampling_probability: q,
            event: Box::new(DpEvent::Gaussian { noise_multiplier }),
        };
        DpEvent::SelfComposed {
            event: Box::new(step),
            count: steps,
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            DpEvent::NoOp => "NoOp",
            DpEvent::NonPrivate => "NonPrivate",
            DpEvent::Gaussian { .. } => "Gaussian",
            DpEvent::PoissonSampled { .. } => "PoissonSampled",
            DpEvent::SampledWithoutReplacement { .. } => "SampledWithoutReplacement",
            DpEvent::RepeatAndSelect { .. } => "RepeatAndSelect",
            DpEvent::SelfComposed { .. } => "SelfComposed",
            DpEvent::Composed { .. } => "Composed",
            DpEvent::MatrixFactorization { .. } => "MatrixFactorization",
        }
    }

    /// The noise multiplier of a single Gaussian equivalent to this event, if it is a
    /// Gaussian or a composition of Gaussians on the same data: `(sum_i sigma_i^-2)^(-1/2)`
    /// (Mironov, Talwar, Zhang 2019, Sec. 3). `None` for anything else.
    pub fn effective_gaussian_noise(&self) -> Option<f64> {
        match self {
            DpEvent::Gaussian { noise_multiplier } => Some(*noise_multiplier),
            DpEvent::SelfComposed { event, count } => event
                .effective_gaussian_noise()
                .map(|s| s / (*count as f64).sqrt()),
            DpEvent::Composed { events } => {
                let inv_sq: Option<f64> = events
                    .iter()
                    .map(|e| e.effective_gaussian_noise().map(|s| s.powi(-2)))
                    .sum();
                inv_sq.map(|v| v.powf(-0.5))
            }
            DpEvent::MatrixFactorization {
                noise_multiplier,
                amplification: None,
                ..
            } => Some(*noise_multiplier),
            _ => None,
        }
    }
}

/// Which datasets count as neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighbouringRelation {
    /// One dataset is the other with one record added or removed (the default).
    #[default]
    AddOrRemoveOne,
    /// One record is replaced by another; the dataset size is public.
    ReplaceOne,
}

impl std::fmt::Display for NeighbouringRelation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NeighbouringRelation::AddOrRemoveOne => "add/remove one record",
            NeighbouringRelation::ReplaceOne => "replace one record",
        })
    }
}
