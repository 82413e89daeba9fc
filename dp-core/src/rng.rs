//! The randomness policy: every privacy-relevant draw goes through a [`PrivacyRng`], and the
//! way Gaussian noise is drawn is a [`NoiseMode`] that every caller names explicitly.
//!
//! - The generator is ChaCha20 (`rand_chacha`), a cryptographically secure generator, seeded
//!   from the operating system for real runs. A fixed seed makes a run reproducible (tests,
//!   research); whoever seeds it records the seed with the run (the privacy statement and the
//!   ledger), since anyone knowing it can undo the noise.
//! - Poisson sampling always draws from it (an exact 64-bit threshold per example).
//! - [`NoiseMode::Secure`] draws integer noise on a power-of-two grid from ChaCha20 streams
//!   keyed by it (see [`crate::noise`]); [`NoiseMode::Fast`] seeds libtorch's generator from
//!   it and draws floating-point normals on the tensor's device.
//! - Correlated (matrix-factorization) noise draws floating-point normals from ChaCha20
//!   streams keyed by it ([`PrivacyRng::standard_normals`]), so that past draws can be drawn
//!   again exactly from a saved state.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Draws per independently keyed block of parallel floating-point normals.
const NORMAL_BLOCK: usize = 1 << 16;

/// How Gaussian noise is drawn. There is no default: callers choose, and real runs choose
/// `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NoiseMode {
    /// Discrete Gaussian integers on a power-of-two grid, from ChaCha20 keyed by the
    /// [`PrivacyRng`], generated ahead on a background thread: exact arithmetic, immune to
    /// floating-point attacks, accounted with the grid's sensitivity.
    Secure,
    /// libtorch's `randn` on the tensor's device, its generator seeded from the
    /// [`PrivacyRng`]: fast floating-point noise for research, NOT resistant to
    /// floating-point attacks (Mironov 2012; Jin et al. 2022).
    Fast,
}

impl NoiseMode {
    /// The name used in configurations and reports: "secure" or "fast".
    pub fn name(self) -> &'static str {
        match self {
            NoiseMode::Secure => "secure",
            NoiseMode::Fast => "fast",
        }
    }
}

impl fmt::Display for NoiseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NoiseMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secure" => Ok(NoiseMode::Secure),
            "fast" => Ok(NoiseMode::Fast),
            other => Err(format!("unknown noise mode '{other}' (secure or fast)")),
        }
    }
}

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

    /// The generator to continue a run from its checkpoint's snapshot, or `None` if the
    /// snapshot is malformed. A seeded generator continues its stream exactly (reproducible
    /// runs); an unseeded one is never restored: it is seeded afresh from the operating
    /// system, so that a resumed run cannot reuse noise that a crashed run already drew (and
    /// maybe released).
    pub fn resume(snapshot: &RngSnapshot) -> Option<Self> {
        let exact = Self::restore(snapshot)?;
        Some(if snapshot.seed.is_none() {
            Self::from_os()
        } else {
            exact
        })
    }

    /// The generator exactly at a snapshot's position, seeded or not, or `None` if the
    /// snapshot is malformed: for drawing past noise again (correlated noise regenerates its
    /// past draws this way), never for continuing a run (see [`PrivacyRng::resume`]).
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

    /// True with probability `floor(p 2^64) / 2^64` (`p` in [0, 1]; 1 is always true): an
    /// exact comparison of 64 uniform bits with a threshold, never above `p`.
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

    /// `n` independent standard normal draws (floating point), generated in parallel: each
    /// block of `NORMAL_BLOCK` draws comes from its own ChaCha20 stream keyed by this
    /// generator, so the result depends only on this generator's state, not on the threads.
    pub fn standard_normals(&mut self, n: usize) -> Vec<f64> {
        let keys = self.stream_keys(n.div_ceil(NORMAL_BLOCK));
        let mut out = vec![0.0; n];
        out.par_chunks_mut(NORMAL_BLOCK)
            .zip(keys.par_iter())
            .for_each(|(block, key)| {
                let mut rng = ChaCha20Rng::from_seed(*key);
                for v in block {
                    *v = rng.sample(StandardNormal);
                }
            });
        out
    }

    /// Keys for `n` independent ChaCha20 streams (the blocks of parallel noise).
    pub(crate) fn stream_keys(&mut self, n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|_| {
                let mut key = [0u8; 32];
                self.rng.fill_bytes(&mut key);
                key
            })
            .collect()
    }

    /// A seed for libtorch's generator (fast noise), drawn from this generator.
    pub(crate) fn torch_seed(&mut self) -> i64 {
        (self.rng.next_u64() >> 1) as i64
    }
}
