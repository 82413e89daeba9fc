//! Poisson sampling of logical batches: each example joins each batch independently with
//! probability `q`, so batch sizes vary (and may be zero), exactly as the accountant assumes.

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

    /// The indices of one logical batch, in increasing order.
    pub fn sample(&self, rng: &mut PrivacyRng) -> Vec<i64> {
        (0..self.dataset_size as i64)
            .filter(|_| rng.bernoulli(self.rate))
            .collect()
    }
}
