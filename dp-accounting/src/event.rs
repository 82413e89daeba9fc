//! Descriptions of what a private computation did, in the shape of dp_accounting's `DpEvent`:
//! a tree that any accountant can walk. Serializable, so ledgers and tools can exchange it.

use serde::{Deserialize, Serialize};

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
        /// E[K].
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
