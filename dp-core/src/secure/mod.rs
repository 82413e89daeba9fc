//! Exact-arithmetic Gaussian noise on a power-of-two grid: the sampler behind
//! [`crate::NoiseMode::Secure`].
//!
//! # The mechanism
//!
//! For a noise multiplier `sigma`, a clip norm `C` and `d` noised coordinates:
//!
//! 1. a grid step `gamma = 2^e` is fixed from `(sigma, C, d)` alone, with
//!    `gamma <= sigma C 2^-40` and `gamma sqrt(d) <= C 2^-20`;
//! 2. the integer scale `s >= sigma C / gamma` is `sigma C / gamma` rounded up to 31
//!    significant bits (so `s >= 2^40`);
//! 3. each coordinate `x` of the clipped sum becomes the integer `k = round(x / gamma)`
//!    (exact: division by a power of two, then rounding, clamped to `|k| <= 2^62`);
//! 4. an integer `Z` is drawn from the discrete Gaussian `D_s(z) ~ exp(-z^2 / 2s^2)` truncated
//!    to `|z| <= 14 s` (below);
//! 5. the release is `gamma (k + Z)`: `k + Z` is formed exactly in 64-bit integers and turned
//!    into a float once.
//!
//! No floating-point operation ever touches the noise before the integer `k + Z` exists, so the
//! set of possible outputs is the grid `gamma Z` whatever the data: Mironov's (CCS 2012) and
//! Jin et al.'s (IEEE S&P 2022) attacks on floating-point samplers have nothing to read.
//!
//! # The sampler
//!
//! Exact rejection sampling with integer arithmetic only (the construction of Canonne, Kamath
//! and Steinke, NeurIPS 2020, made fast by a table):
//!
//! * `z = m j + r`: a coarse bin `j` in `[-J, J)` (`m = 2^b`, `m J >= 14 s`, `2J <= 2^12`)
//!   and an offset `r` uniform in `[0, m)`;
//! * `j` comes from an alias table (Walker 1977, Vose 1991) whose probabilities are exactly
//!   `w_j / 2^44` for integers `w_j = ceil(lambda e_j)`, where `e_j = exp(-z_j^2 / 2s^2)` at the
//!   bin's point `z_j` nearest 0;
//! * the bin is accepted with probability `c_j = lambda e_j / w_j <= 1`, whose value is known to
//!   within a relative `2^-100` (interval arithmetic on 128-bit integers, computed once);
//! * `z` is accepted with probability `exp(-(z^2 - z_j^2) / 2s^2)`, a rational exponent below
//!   0.2, by von Neumann's alternating series (Algorithm 1 of Canonne et al.) whose Bernoulli
//!   trials compare uniform bits with exact rationals, drawing more bits until decided;
//! * on rejection everything is drawn again.
//!
//! The accepted `z` has probability `w_j/2^44 * 1/m * c_j * exp(-(z^2-z_j^2)/2s^2)`, which is
//! proportional to `exp(-z^2/2s^2)`. The only departures from `D_s` are the truncation (mass
//! below `2^-143`) and the `c_j` tests decided at 128 bits (relative error below `2^-100`).
//! Every comparison of a uniform with a probability first reads [`table::LEAD`] bits and reads more
//! only when they do not settle it, so one 64-bit word carries a whole attempt almost always.
//! Random bits come from ChaCha20: each block of [`BLOCK`] draws has its own key, taken from the
//! run's [`crate::PrivacyRng`], so the output does not depend on the number of threads.
//!
//! `docs/noise.md` turns these facts into the privacy guarantee: the release is a
//! post-processing of the Gaussian mechanism with sensitivity `C + gamma sqrt(d)` up to a
//! pointwise likelihood ratio of `exp(+-eta)` per coordinate with `eta <= 2^-76`.
//!
//! References: Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy"
//! (NeurIPS 2020); Mironov, "On Significance of the Least Significant Bits for Differential
//! Privacy" (CCS 2012); Jin, McMurtry, Rubinstein, Ohrimenko, "Are We There Yet? Timing and
//! Floating-Point Attacks on Differential Privacy Systems" (IEEE S&P 2022); Google's "Secure
//! Noise Generation" (2020) for the power-of-two granularity.

mod bits;
mod grid;
mod interval;
mod table;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use bits::Bits;
pub(crate) use grid::{release_block, Grid};
pub(crate) use table::Table;

/// Noise draws per independently keyed ChaCha20 stream.
pub(crate) const BLOCK: usize = 1 << 16;
/// log2 of the number of alias-table slots: 4096 slots of 12 bytes stay in the core's caches.
const SLOT_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOT_BITS;
/// Weight of one slot; all weights add up to `SLOTS * SLOT_CAPACITY = 2^44`.
const SLOT_CAPACITY: u64 = 1 << 32;
/// The support is `|z| <= TAIL_SIGMAS * s`.
const TAIL_SIGMAS: u128 = 14;
/// Smallest scale `s` (in grid units, up to the rounding of `sigma C`): keeps the
/// discrete-vs-continuous gap below `2^-76`.
const MIN_SCALE_LOG2: i32 = 40;
/// Largest scale `s`: keeps every product of the sampler within 128 bits.
const MAX_SCALE_LOG2: i32 = 48;
/// The grid's rounding moves a clipped sum by at most `gamma sqrt(d) <= ROUNDING_SHARE C`.
pub(crate) const ROUNDING_SHARE: f64 = 1.0 / (1u64 << 20) as f64;
/// Integer sums are clamped to `|k| <= 2^62`, so `k + Z` fits in an `i64`.
pub(crate) const CLAMP: f64 = (1u64 << 62) as f64;

/// Fills `out` with draws, each block of [`BLOCK`] from its own ChaCha20 key, in parallel.
pub(crate) fn fill(table: &Table, keys: &[[u8; 32]], out: &mut [i64]) {
    out.par_chunks_mut(BLOCK)
        .zip(keys.par_iter())
        .for_each(|(block, key)| {
            let mut bits = Bits::new(ChaCha20Rng::from_seed(*key));
            table.fill_block(block, &mut bits);
        });
}
