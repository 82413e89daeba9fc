//! Poisson sampling of logical batches: each example joins each batch independently with
//! probability `q`, so batch sizes vary (and may be zero), exactly as the accountant assumes.
//!
//! Every decision is 64 bits of the run's ChaCha20 [`PrivacyRng`] compared with the integer
//! threshold `floor(q 2^64)`, whichever noise mode the run uses: the realised rate is within
//! `2^-64` below `q`, never above it. No fixed-size or shuffled batching is offered.

use dp_accounting::DpEvent;

use crate::error::CoreError;
use crate::rng::PrivacyRng;

/// Draws logical batches from a dataset of declared size.
#[derive(Debug, Clone, Copy)]
pub struct PoissonSampler {
    dataset_size: usize,
    rate: f64,
}

impl PoissonSampler {
    /// A sampler over `dataset_size` examples with sampling rate `rate` in (0, 1].
    pub fn new(dataset_size: usize, rate: f64) -> Result<Self, CoreError> {
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(CoreError::SamplingRate(rate));
        }
        Ok(Self { dataset_size, rate })
    }

    /// The sampling rate q.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The expected batch size `q N`: gradients are normalised by it, never by a realised size.
    pub fn expected_batch_size(&self) -> f64 {
        self.rate * self.dataset_size as f64
    }

    /// The event of one logical batch: `mechanism` run on a Poisson sample of rate q.
    pub fn event(&self, mechanism: DpEvent) -> DpEvent {
        DpEvent::PoissonSampled {
            sampling_probability: self.rate,
            event: Box::new(mechanism),
        }
    }

    /// The indices of one logical batch, in increasing order.
    pub fn sample(&self, rng: &mut PrivacyRng) -> Vec<i64> {
        (0..self.dataset_size as i64)
            .filter(|_| rng.bernoulli(self.rate))
            .collect()
    }
}
