//! The one source of privacy-relevant randomness: batch sampling and noise draw from here.
//!
//! ChaCha20 (`rand_chacha`), a cryptographically secure generator, seeded from the operating
//! system by default. A fixed seed makes a run reproducible (tests, research); it is then
//! recorded by whoever created the generator, since anyone knowing it can undo the noise.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Draws per independently keyed block of parallel noise.
const NOISE_BLOCK: usize = 1 << 16;

/// The exact state of a [`PrivacyRng`], for checkpoints. It contains the key: whoever reads it
/// can reproduce every later draw, so a checkpoint is as sensitive as the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngSnapshot {
    /// The ChaCha20 key.
    pub key: [u8; 32],
    /// Position in the stream, in 32-bit words (decimal, as JSON has no 128-bit integers).
    pub word_position: String,
    /// The user's seed, if the generator was seeded explicitly.
    pub seed: Option<u64>,
}

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

    /// The exact state, to continue the same stream after a restart.
    pub fn snapshot(&self) -> RngSnapshot {
        RngSnapshot {
            key: self.rng.get_seed(),
            word_position: self.rng.get_word_pos().to_string(),
            seed: self.seed,
        }
    }

    /// The generator at a snapshot's position, or `None` if the snapshot is malformed.
    pub fn restore(snapshot: &RngSnapshot) -> Option<Self> {
        let mut rng = ChaCha20Rng::from_seed(snapshot.key);
        rng.set_word_pos(snapshot.word_position.parse().ok()?);
        Some(Self {
            rng,
            seed: snapshot.seed,
        })
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

    /// `n` independent standard normal draws, generated in parallel: each block of
    /// `NOISE_BLOCK` draws comes from its own ChaCha20 stream keyed by 32 bytes of this
    /// generator, so the result depends only on this generator's state, not on the threads.
    pub fn standard_normals(&mut self, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n];
        self.fill_parallel(&mut out, |r| r.sample(StandardNormal));
        out
    }

    /// As [`PrivacyRng::standard_normals`], rounded to single precision.
    pub fn standard_normals_f32(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        self.fill_parallel(&mut out, |r| r.sample::<f64, _>(StandardNormal) as f32);
        out
    }

    fn fill_parallel<T: Send>(
        &mut self,
        out: &mut [T],
        draw: impl Fn(&mut ChaCha20Rng) -> T + Sync,
    ) {
        let keys: Vec<[u8; 32]> = (0..out.len().div_ceil(NOISE_BLOCK))
            .map(|_| {
                let mut key = [0u8; 32];
                self.rng.fill_bytes(&mut key);
                key
            })
            .collect();
        out.par_chunks_mut(NOISE_BLOCK)
            .zip(keys.par_iter())
            .for_each(|(block, key)| {
                let mut rng = ChaCha20Rng::from_seed(*key);
                for v in block {
                    *v = draw(&mut rng);
                }
            });
    }
}
