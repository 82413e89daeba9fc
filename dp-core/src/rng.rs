//! The one source of privacy-relevant randomness: batch sampling and noise draw from here.
//!
//! ChaCha20 (`rand_chacha`), a cryptographically secure generator, seeded from the operating
//! system by default. A fixed seed makes a run reproducible (tests, research); it is then
//! recorded by whoever created the generator, since anyone knowing it can undo the noise.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Generator for Poisson sampling decisions and Gaussian noise.
#[derive(Debug, Clone)]
pub struct PrivacyRng {
    rng: ChaCha20Rng,
    seed: Option<u64>,
}

impl PrivacyRng {
    /// Seeded from the operating system's entropy: the default for real runs.
    pub fn from_os() -> Self {
        Self {
            rng: ChaCha20Rng::from_os_rng(),
            seed: None,
        }
    }

    /// Seeded with `seed`: reproducible, for tests and research only (the noise is predictable
    /// to anyone who knows the seed).
    pub fn from_seed(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            seed: Some(seed),
        }
    }

    /// The seed, if the generator was seeded explicitly.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// A uniform index in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    /// `n` independent standard normal draws.
    pub fn standard_normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.rng.sample(StandardNormal)).collect()
    }
}
