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
//! Every comparison of a uniform with a probability first reads [`LEAD`] bits and reads more
//! only when they do not settle it, so one 64-bit word carries a whole attempt almost always.
//! Random bits come from ChaCha20: each block of [`BLOCK`] draws has its own key, taken from
//! the run's [`crate::PrivacyRng`], so the output does not depend on the number of threads.
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

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use crate::error::CoreError;

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

/// The grid and the integer noise scale for one mechanism, fixed by `(sigma, C, d)` alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    /// `gamma = 2^log2_step`.
    pub(crate) log2_step: i32,
    /// `s = scale_mantissa * 2^scale_shift`, `scale_mantissa` in `[2^30, 2^31]`.
    scale_mantissa: u64,
    scale_shift: u32,
}

impl Grid {
    /// The grid for noise multiplier `sigma`, clip norm `clip` and `dim` coordinates.
    pub(crate) fn new(sigma: f64, clip: f64, dim: u64) -> Result<Self, CoreError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(CoreError::NoiseMultiplier(sigma));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return Err(CoreError::ClipNorm(clip));
        }
        let dim = dim.max(1);
        let sigma_c = sigma * clip;
        let bound =
            (sigma_c * 2f64.powi(-MIN_SCALE_LOG2)).min(clip * ROUNDING_SHARE / (dim as f64).sqrt());
        let log2_step = bound.log2().floor() as i32;
        if log2_step < -120 {
            return Err(CoreError::NoiseScale(format!(
                "sigma C = {sigma_c:e} is too small for a secure grid (need sigma C > 2^-78)"
            )));
        }
        let target = sigma_c * 2f64.powi(-log2_step);
        let log2_target = target.log2().floor() as i32;
        if log2_target >= MAX_SCALE_LOG2 {
            return Err(CoreError::NoiseScale(format!(
                "sigma sqrt(d) = {:e} is too large for the secure sampler (must be below 2^26)",
                sigma * (dim as f64).sqrt()
            )));
        }
        let shift = (log2_target - 30).max(0) as u32;
        // +1 covers the rounding of sigma * C: s is never below the nominal scale.
        let mantissa = (target / 2f64.powi(shift as i32)).ceil() as u64 + 1;
        Ok(Self {
            log2_step,
            scale_mantissa: mantissa,
            scale_shift: shift,
        })
    }

    /// The grid step `gamma`.
    pub(crate) fn step(&self) -> f64 {
        2f64.powi(self.log2_step)
    }

    /// The discrete Gaussian scale `s` in grid units.
    pub(crate) fn scale(&self) -> f64 {
        self.scale_mantissa as f64 * 2f64.powi(self.scale_shift as i32)
    }

    /// The noise multiplier to account: the standard deviation `s gamma` over the sensitivity
    /// `C + gamma sqrt(d)` of the rounded sums, rounded down.
    pub(crate) fn effective_noise_multiplier(&self, clip: f64, dim: u64) -> f64 {
        let gamma = self.step();
        self.scale() * gamma / (clip + gamma * (dim.max(1) as f64).sqrt()) * (1.0 - 1e-12)
    }

    /// `2 s^2 = two_s2_mantissa * 2^two_s2_shift`.
    fn two_s2(&self) -> (u64, u32) {
        (
            2 * self.scale_mantissa * self.scale_mantissa,
            2 * self.scale_shift,
        )
    }
}

/// The sampler's precomputed tables for one scale.
#[derive(Debug)]
pub(crate) struct Table {
    /// Bins are `m = 2^bin_bits` wide.
    bin_bits: u32,
    /// Bins `j` run over `[-half_bins, half_bins)`; bin index `j + half_bins`.
    half_bins: i64,
    /// `2 s^2` (below 2^100).
    two_s2: u128,
    /// What one draw reads, one record per slot.
    slots: Vec<Slot>,
    /// Per slot: the exact stay threshold in `[0, 2^32]`.
    slot_threshold: Vec<u64>,
    /// Per bin: `(256 c_j - floor(256 c_j)) / (256 - floor(256 c_j))`, the rest of the bin's
    /// acceptance test.
    accept_rest: Vec<Interval>,
}

/// One alias-table slot with the constants of the two bins it can give (its own, index 0,
/// and its alias, index 1): 8 bytes. Each test first reads [`LEAD`] bits of its uniform.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The top `LEAD` bits of the 32-bit stay threshold, at most `2^LEAD - 1` (a full slot
    /// is capped and the exact comparison settles it).
    top: u8,
    /// `min(floor(2^LEAD c_j), 2^LEAD - 1)` of each bin.
    accept: [u8; 2],
    /// Per bin, `min(floor(2^LEAD g_max), 2^LEAD - 1)` for the largest exponent `g_max` of
    /// the offset test in the bin: leading bits above it settle the test.
    offset: [u8; 2],
    /// The bin given when the slot is left.
    alias: u16,
}

/// Leading bits read first by each of a draw's three tests.
const LEAD: u32 = 6;
/// Bits of the offset carried by a draw's first word.
const OFFSET_IN_WORD: u32 = 64 - SLOT_BITS - 3 * LEAD;

impl Table {
    /// Builds the alias table and the acceptance constants for `grid`'s scale.
    pub(crate) fn new(grid: &Grid) -> Self {
        let (d1, d_shift) = grid.two_s2();
        let reach = (TAIL_SIGMAS * u128::from(grid.scale_mantissa)) << grid.scale_shift;
        let max_half = (SLOTS / 2) as u128;
        let mut bin_bits = 0;
        while reach.div_ceil(1u128 << bin_bits) > max_half {
            bin_bits += 1;
        }
        let half_bins = reach.div_ceil(1u128 << bin_bits) as i64;
        let bins = 2 * half_bins as usize;
        let envelopes: Vec<Interval> = (0..bins)
            .map(|index| {
                let nearest = nearest_to_zero(index as i64 - half_bins, bin_bits);
                let n = nearest.unsigned_abs() as u128;
                exp_neg_ratio(n * n, d1, d_shift)
            })
            .collect();

        // lambda = big * 2^lambda_log2, so that sum_j ceil(lambda e_j) <= 2^44.
        let total: f64 = envelopes.iter().map(Interval::upper_f64).sum();
        let room = (SLOTS as u64 * SLOT_CAPACITY - 2 * bins as u64) as f64;
        let lambda_log2 = (room / total).log2().floor() as i32 - 40;
        let mut big = (room / total / 2f64.powi(lambda_log2)).floor() as u64;
        let weights = loop {
            let lambda = Interval::exact(u128::from(big)).scale(lambda_log2);
            let weights: Vec<u64> = envelopes
                .iter()
                .map(|e| e.mul(&lambda).ceil_upper() as u64)
                .collect();
            if weights.iter().sum::<u64>() <= SLOTS as u64 * SLOT_CAPACITY {
                break weights;
            }
            big -= big >> 20;
        };
        let lambda = Interval::exact(u128::from(big)).scale(lambda_log2);
        let mut weights = weights;
        let spare = SLOTS as u64 * SLOT_CAPACITY - weights.iter().sum::<u64>();
        weights[half_bins as usize] += spare;

        let (accept_top, accept_rest): (Vec<u8>, Vec<Interval>) = envelopes
            .iter()
            .zip(&weights)
            .map(|(e, &w)| split_acceptance(&e.mul(&lambda).div_u64(w)))
            .unzip();
        let two_s2 = u128::from(d1) << d_shift;
        let offset_top: Vec<u8> = (0..bins)
            .map(|index| {
                let nearest = nearest_to_zero(index as i64 - half_bins, bin_bits);
                let (b, span) = (nearest.unsigned_abs() as u128, (1u128 << bin_bits) - 1);
                let largest = span * (2 * b + span);
                ((largest << LEAD) / two_s2).min((1 << LEAD) - 1) as u8
            })
            .collect();
        let (slot_threshold, slot_alias) = alias_table(&weights);
        let constants = |bin: usize| match bin < bins {
            true => (accept_top[bin], offset_top[bin]),
            false => (0, (1 << LEAD) - 1),
        };
        let slots = (0..SLOTS)
            .map(|slot| {
                let alias = usize::from(slot_alias[slot]);
                let (own, other) = (constants(slot), constants(alias));
                Slot {
                    top: (slot_threshold[slot] >> (32 - LEAD)).min((1 << LEAD) - 1) as u8,
                    accept: [own.0, other.0],
                    offset: [own.1, other.1],
                    alias: slot_alias[slot],
                }
            })
            .collect();
        Self {
            bin_bits,
            half_bins,
            two_s2,
            slots,
            slot_threshold,
            accept_rest,
        }
    }

    /// Draws into `out`: the first attempts of 64 draws take their words from one ChaCha20
    /// read. A first pass, without branches, keeps every attempt its word alone settles with
    /// an acceptance (about 94%); the others are then finished in order, reading more bits as
    /// they need them, and one that is rejected is replaced by a fresh draw, as in any
    /// rejection sampler. Every attempt reads exactly the bits it would read on its own.
    fn fill_block(&self, out: &mut [i64], bits: &mut Bits) {
        let mut words = [0u64; 64];
        let mut chunks = out.chunks_exact_mut(64);
        for chunk in &mut chunks {
            bits.words(&mut words);
            // Bit i: attempt i needs more than its word.
            let mut unsettled = 0u64;
            for (i, (v, &word)) in chunk.iter_mut().zip(&words).enumerate() {
                let (z, settled) = self.settled_attempt(word);
                *v = z;
                unsettled |= u64::from(!settled) << i;
            }
            while unsettled != 0 {
                let i = unsettled.trailing_zeros() as usize;
                unsettled &= unsettled - 1;
                let word = words[i];
                chunk[i] = match self.attempt(word, self.slots[slot_index(word)], bits) {
                    Some(z) => z,
                    None => self.sample(bits),
                };
            }
        }
        for v in chunks.into_remainder() {
            *v = self.sample(bits);
        }
    }

    /// One draw from the truncated discrete Gaussian (after a rejection: rare).
    #[cold]
    #[inline(never)]
    fn sample(&self, bits: &mut Bits) -> i64 {
        loop {
            let word = bits.word();
            if let Some(z) = self.attempt(word, self.slots[slot_index(word)], bits) {
                return z;
            }
        }
    }

    /// [`Self::attempt`] when its word alone settles it with an acceptance: `(z, true)` with
    /// the `z` that `attempt` gives; otherwise `(_, false)`. Nothing here branches on the word.
    #[inline(always)]
    fn settled_attempt(&self, word: u64) -> (i64, bool) {
        let index = slot_index(word);
        let slot = self.slots[index];
        let [stay_bits, accept_bits, offset_bits] = leading_bits(word);
        let which = usize::from(stay_bits > slot.top);
        let bin = if which == 0 {
            index
        } else {
            usize::from(slot.alias)
        };
        let offset = offset_field(word) >> (OFFSET_IN_WORD - self.bin_bits.min(OFFSET_IN_WORD));
        let z = self.point(bin, offset);
        // The stay test is settled by its leading bits, the bin is accepted by its leading
        // bits, the offset test's first trial fails (accept), and the offset fits the word.
        let settled = (stay_bits != slot.top)
            & (accept_bits < slot.accept[which])
            & (offset_bits > slot.offset[which])
            & (self.bin_bits <= OFFSET_IN_WORD);
        (z, settled)
    }

    /// The integer at `offset` in `bin`.
    #[inline(always)]
    fn point(&self, bin: usize, offset: u64) -> i64 {
        ((bin as i64 - self.half_bins) << self.bin_bits) + offset as i64
    }

    /// One attempt of the rejection sampler from its first word (and the word's slot); more
    /// bits come from `bits` when a test needs them.
    #[inline(always)]
    fn attempt(&self, word: u64, slot: Slot, bits: &mut Bits) -> Option<i64> {
        // The word: the slot, the leading bits of three uniforms (the stay test, the bin's
        // acceptance test, the offset test's first trial) and the offset's leading bits.
        let index = slot_index(word);
        let [stay_bits, accept_bits, offset_bits] = leading_bits(word);
        // Index 0 (stay) or 1 (alias), without a hard-to-predict branch.
        let which = if stay_bits != slot.top {
            usize::from(stay_bits > slot.top)
        } else {
            let rest = bits.take(32 - LEAD);
            usize::from((u64::from(stay_bits) << (32 - LEAD) | rest) >= self.slot_threshold[index])
        };
        let bin = [index, usize::from(slot.alias)][which];
        // Bernoulli(c_j) = [u < A] or, failing that, Bernoulli(rest), with A the slot's accept
        // constant and u the leading bits.
        if accept_bits >= slot.accept[which] && !self.accept_rest[bin].bernoulli(bits) {
            return None;
        }
        let field = offset_field(word);
        let offset = if self.bin_bits <= OFFSET_IN_WORD {
            field >> (OFFSET_IN_WORD - self.bin_bits)
        } else {
            let extra = self.bin_bits - OFFSET_IN_WORD;
            field << extra | bits.take(extra)
        };
        let j = bin as i64 - self.half_bins;
        let z = self.point(bin, offset);
        // The offset test's first trial, Bernoulli(g), fails when its leading bits exceed
        // 2^LEAD g_max.
        let accepted = offset_bits > slot.offset[which]
            || self.accept_offset(z, nearest_to_zero(j, self.bin_bits), offset_bits, bits);
        accepted.then_some(z)
    }

    /// Bernoulli(exp(-g)), `g = (z^2 - nearest^2) / 2s^2`, by von Neumann's alternating
    /// series: count the successes of Bernoulli(g / i), i = 1, 2, ... up to the first failure;
    /// accept when the count is even. `first` holds the first trial's `LEAD` leading bits.
    #[cold]
    #[inline(never)]
    fn accept_offset(&self, z: i64, nearest: i64, first: u8, bits: &mut Bits) -> bool {
        let (a, b) = (z.unsigned_abs() as u128, nearest.unsigned_abs() as u128);
        let numerator = (a - b) * (a + b);
        let mut i = 1u64;
        let mut u = u64::from(first);
        while self.bernoulli_ratio(numerator, i, u, bits) {
            i += 1;
            u = bits.take(LEAD);
        }
        i % 2 == 1
    }

    /// Bernoulli(numerator / (i 2 s^2)) given the uniform's `LEAD` leading bits `u`, exactly:
    /// they decide it unless `u <= 2^LEAD p < u + 1`; then the rest is an exact rational
    /// comparison.
    fn bernoulli_ratio(&self, numerator: u128, i: u64, u: u64, bits: &mut Bits) -> bool {
        let Some(den) = self
            .two_s2
            .checked_mul(u128::from(i))
            .filter(|d| *d < 1u128 << 118)
        else {
            // Only for i above 2^20, whose probability is below 1/(2^20)!: a failure.
            return false;
        };
        // U = (u + U') / 2^LEAD < n / den  <=>  U' < (2^LEAD n - u den) / den.
        let scaled = numerator << LEAD;
        let low = u128::from(u) * den;
        if low >= scaled {
            return false;
        }
        let rest = scaled - low;
        rest >= den || uniform_below_ratio(rest, den, bits)
    }
}

/// The slot a draw's first word selects.
fn slot_index(word: u64) -> usize {
    (word >> (64 - SLOT_BITS)) as usize
}

/// The [`LEAD`] leading bits of the stay test's, the bin's acceptance test's and the offset
/// test's uniforms, carried by a draw's first word after its slot.
#[inline(always)]
fn leading_bits(word: u64) -> [u8; 3] {
    [1, 2, 3].map(|k| ((word >> (64 - SLOT_BITS - k * LEAD)) & ((1 << LEAD) - 1)) as u8)
}

/// The last [`OFFSET_IN_WORD`] bits of a draw's first word: the offset's leading bits.
#[inline(always)]
fn offset_field(word: u64) -> u64 {
    word & ((1 << OFFSET_IN_WORD) - 1)
}

/// The integer of bin `j` nearest to zero.
fn nearest_to_zero(j: i64, bin_bits: u32) -> i64 {
    if j >= 0 {
        j << bin_bits
    } else {
        (j << bin_bits) + (1 << bin_bits) - 1
    }
}

/// Splits the bin acceptance `c` into `A = min(floor(2^LEAD c), 2^LEAD - 1)` and the
/// probability `(2^LEAD c - A) / (2^LEAD - A)` of the rest of the test.
fn split_acceptance(c: &Interval) -> (u8, Interval) {
    // 2^LEAD c in fixed point with 127 - LEAD fraction bits (below 2^127 when c <= 1).
    let frac = 127 - LEAD as i32;
    let (lo, hi) = c.fixed(LEAD as i32 + frac);
    let top = (lo >> frac).min((1 << LEAD) - 1);
    if top == 0 {
        return (0, *c);
    }
    let base = top << frac;
    let rest = Interval::from_bounds(lo - base, hi - base, -frac).div_u64((1 << LEAD) - top as u64);
    (top as u8, rest)
}

/// Vose's alias method on integer weights adding up to `SLOTS * SLOT_CAPACITY`: slot `i` keeps
/// its own bin with probability `threshold[i] / 2^32` and otherwise gives `alias[i]`. Every
/// operation is on integers, so bin `j` is drawn with probability exactly `weights[j] / 2^44`.
fn alias_table(weights: &[u64]) -> (Vec<u64>, Vec<u16>) {
    let mut weight = weights.to_vec();
    weight.resize(SLOTS, 0);
    let mut threshold = vec![SLOT_CAPACITY; SLOTS];
    let mut alias: Vec<u16> = (0..SLOTS).map(|i| i as u16).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..SLOTS).partition(|&i| weight[i] < SLOT_CAPACITY);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        threshold[s] = weight[s];
        alias[s] = l as u16;
        weight[l] -= SLOT_CAPACITY - weight[s];
        if weight[l] < SLOT_CAPACITY {
            large.pop();
            small.push(l);
        }
    }
    (threshold, alias)
}

/// Positions drawn at a time when noise is released as it is drawn: a multiple of 64, so the
/// draws are those of one [`Table::fill_block`] over the whole block.
const CHUNK: usize = 4096;

/// A float type a release writes in place.
pub(crate) trait GridFloat: Copy + Send + Sync {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl GridFloat for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl GridFloat for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Releases one block of [`BLOCK`] values (or the last, shorter one) in place: each becomes
/// `gamma (round(x / gamma) + z)` with `z` drawn from `key` as by [`fill`] (the same integers,
/// bit for bit), a chunk at a time, so the noise never exists as a whole and the values are
/// read and written once.
pub(crate) fn release_block<T: GridFloat>(
    table: &Table,
    grid: &Grid,
    key: &[u8; 32],
    block: &mut [T],
) {
    let (inv, step) = (2f64.powi(-grid.log2_step), grid.step());
    let mut bits = Bits::new(ChaCha20Rng::from_seed(*key));
    let mut noise = [0i64; CHUNK];
    for xs in block.chunks_mut(CHUNK) {
        let noise = &mut noise[..xs.len()];
        table.fill_block(noise, &mut bits);
        // Every value below 2^51 steps (the common case): rounding gives `|k| < 2^52`, so
        // `on_grid` takes its first branch for each; written without branches, the loop
        // vectorises.
        let small = xs.iter().fold(true, |small, x| {
            small & ((x.to_f64() * inv).abs() < TWO_52 / 2.0)
        });
        if small {
            for (x, &z) in xs.iter_mut().zip(noise.iter()) {
                *x = T::from_f64((round_below_2_52(x.to_f64() * inv) + z as f64) * step);
            }
        } else {
            for (x, &z) in xs.iter_mut().zip(noise.iter()) {
                *x = T::from_f64(on_grid(x.to_f64(), z, inv, step));
            }
        }
    }
}

/// One coordinate: the integer `round(x / gamma)` (ties to even; NaN as 0; clamped to
/// `2^62`), plus `z`, exactly; then one conversion to a float and an exact scaling.
/// Below `2^52` (and `|z| < 2^52`, as the support guarantees) `k + z` is exact in f64, so the
/// common case needs no integer conversion of `k`.
#[inline]
pub(crate) fn on_grid(x: f64, z: i64, inv: f64, step: f64) -> f64 {
    let k = round_ties_even(x * inv);
    if k.abs() < TWO_52 {
        return (k + z as f64) * step;
    }
    let k = if k.is_nan() {
        0.0
    } else {
        k.clamp(-CLAMP, CLAMP)
    };
    (k as i64 + z) as f64 * step
}

/// `2^52`: doubles at or above it in magnitude are integers.
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `x.round_ties_even()` without a library call: below `2^52` in magnitude, adding and
/// subtracting `2^52` (with `x`'s sign) rounds to the nearest integer, ties to even, in the
/// default rounding mode (the result keeps `x`'s sign, as -0.5 rounds to -0); at or above it
/// every double is an integer. NaN stays NaN.
#[inline]
fn round_ties_even(x: f64) -> f64 {
    if x.abs() < TWO_52 {
        round_below_2_52(x)
    } else {
        x
    }
}

/// [`round_ties_even`] of an `x` below `2^52` in magnitude.
#[inline]
fn round_below_2_52(x: f64) -> f64 {
    let shift = TWO_52.copysign(x);
    ((x + shift) - shift).copysign(x)
}

/// Fills `out` with draws, each block of [`BLOCK`] from its own ChaCha20 key, in parallel.
pub(crate) fn fill(table: &Table, keys: &[[u8; 32]], out: &mut [i64]) {
    out.par_chunks_mut(BLOCK)
        .zip(keys.par_iter())
        .for_each(|(block, key)| {
            let mut bits = Bits::new(ChaCha20Rng::from_seed(*key));
            table.fill_block(block, &mut bits);
        });
}

/// Uniform random bits from ChaCha20, handed out a few at a time.
pub(crate) struct Bits {
    rng: ChaCha20Rng,
    /// Unused bits, left-aligned.
    buffer: u64,
    available: u32,
}

impl Bits {
    pub(crate) fn new(rng: ChaCha20Rng) -> Self {
        Self {
            rng,
            buffer: 0,
            available: 0,
        }
    }

    /// A fresh 64-bit word (buffered bits stay for later `take`s).
    #[inline]
    fn word(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Fresh 64-bit words (buffered bits stay for later `take`s).
    #[inline]
    fn words(&mut self, out: &mut [u64]) {
        self.rng.fill(out);
    }

    /// The next `n` bits (1 <= n <= 64) as an integer.
    #[inline]
    fn take(&mut self, n: u32) -> u64 {
        if n <= self.available {
            let out = self.buffer >> (64 - n);
            self.buffer = (self.buffer << (n - 1)) << 1;
            self.available -= n;
            return out;
        }
        // The `available` bits left, then `n - available` bits of a fresh word.
        let need = n - self.available;
        let fresh = self.rng.next_u64();
        let high = ((self.buffer >> 1) >> (63 - self.available)) << (need - 1) << 1;
        let out = high | (fresh >> (64 - need));
        self.buffer = (fresh << (need - 1)) << 1;
        self.available = 64 - need;
        out
    }
}

/// Whether a uniform `U` in [0, 1) (drawn 64 bits at a time) is below `num / den`, exactly;
/// `0 < num < den < 2^127`.
fn uniform_below_ratio(mut num: u128, den: u128, bits: &mut Bits) -> bool {
    loop {
        // U in [u, u+1) / 2^64; compare u den (192 bits) with num 2^64.
        let u = bits.take(64);
        let (high, low) = mul_u64_u128(u, den);
        if high >= num {
            return false;
        }
        // (u + 1) den <= num 2^64 ?
        let (sum_low, carry) = low.overflowing_add(den as u64);
        let sum_high = high + (den >> 64) + u128::from(carry);
        if sum_high < num || (sum_high == num && sum_low == 0) {
            return true;
        }
        // num / den lies in (u, u+1) / 2^64: compare the rest of U with the rest of the ratio.
        num = ((num - high) << 64) - u128::from(low);
    }
}

/// `u * v` as `(high, low)` with value `high 2^64 + low`.
fn mul_u64_u128(u: u64, v: u128) -> (u128, u64) {
    let p0 = u128::from(u) * (v as u64 as u128);
    let p1 = u128::from(u) * (v >> 64);
    (p1 + (p0 >> 64), p0 as u64)
}

/// `a * b` as `(high, low)` 128-bit halves.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    let (a0, a1) = (a as u64 as u128, a >> 64);
    let (b0, b1) = (b as u64 as u128, b >> 64);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 as u64 as u128) + (p10 as u64 as u128);
    let low = (p00 as u64 as u128) | (mid << 64);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (high, low)
}

/// `(high, low) >> shift` rounded down and up, for `shift <= 255`, as long as the results fit.
fn shr_256(high: u128, low: u128, shift: u32) -> (u128, u128) {
    let (floor, dropped) = match shift {
        0 => (low, false),
        1..=127 => (
            (high << (128 - shift)) | (low >> shift),
            low << (128 - shift) != 0,
        ),
        128 => (high, low != 0),
        _ => (
            high >> (shift - 128),
            low != 0 || high << (256 - shift) != 0,
        ),
    };
    (floor, floor + u128::from(dropped))
}

/// A positive real number known to lie in `[lo 2^exp, hi 2^exp]`: certified bounds from
/// integer arithmetic rounded outwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interval {
    lo: u128,
    hi: u128,
    exp: i32,
}

impl Interval {
    const ZERO: Self = Self {
        lo: 0,
        hi: 0,
        exp: 0,
    };

    fn exact(v: u128) -> Self {
        Self::from_bounds(v, v, 0)
    }

    fn from_bounds(lo: u128, hi: u128, exp: i32) -> Self {
        let shift = hi.leading_zeros().min(127);
        if hi == 0 {
            return Self::ZERO;
        }
        Self {
            lo: lo << shift,
            hi: hi << shift,
            exp: exp - shift as i32,
        }
    }

    /// Multiplied by `2^k`.
    fn scale(self, k: i32) -> Self {
        Self {
            exp: self.exp + k,
            ..self
        }
    }

    fn mul(&self, other: &Self) -> Self {
        let (lh, ll) = mul_wide(self.lo, other.lo);
        let (hh, hl) = mul_wide(self.hi, other.hi);
        let (lo, _) = shr_256(lh, ll, 128);
        let (_, hi) = shr_256(hh, hl, 128);
        Self::from_bounds(lo, hi, self.exp + other.exp + 128)
    }

    /// Divided by the integer `w >= 1`.
    fn div_u64(&self, w: u64) -> Self {
        let w = u128::from(w);
        // x 2^64 / w as a 192-bit quotient, rounded down (lo) or up (hi), then cut to 128 bits.
        let quotient = |x: u128, up: bool| {
            let (q1, r1) = (x / w, x % w);
            let (q0, r0) = ((r1 << 64) / w, (r1 << 64) % w);
            let q0 = q0 + u128::from(up && r0 != 0);
            let low = (q1 << 64).wrapping_add(q0);
            let carry = u128::from(low < q0);
            ((q1 >> 64) + carry, low)
        };
        let (lh, ll) = quotient(self.lo, false);
        let (hh, hl) = quotient(self.hi, true);
        let cut = (256 - hh.leading_zeros()).saturating_sub(128);
        let (lo, _) = shr_256(lh, ll, cut);
        let (_, hi) = shr_256(hh, hl, cut);
        Self::from_bounds(lo, hi, self.exp - 64 + cut as i32)
    }

    /// The bounds as fixed-point integers with `frac` fraction bits: `(floor lo, ceil hi)`.
    fn fixed(&self, frac: i32) -> (u128, u128) {
        let k = self.exp + frac;
        if k >= 0 {
            (self.lo << k, self.hi << k)
        } else {
            let (lo, _) = shr_256(0, self.lo, (-k).min(255) as u32);
            let (_, hi) = shr_256(0, self.hi, (-k).min(255) as u32);
            (lo, hi)
        }
    }

    /// `ceil` of the upper bound (the value must be below 2^127).
    fn ceil_upper(&self) -> u128 {
        self.fixed(0).1
    }

    fn upper_f64(&self) -> f64 {
        self.hi as f64 * 2f64.powi(self.exp)
    }

    /// Bernoulli of a probability in this interval: exact whenever 128 bits past the leading
    /// zeros separate a uniform from both bounds; otherwise false, which moves the
    /// probability by at most `(hi - lo + 1) / lo` relative.
    fn bernoulli(&self, bits: &mut Bits) -> bool {
        if self.hi == 0 {
            return false;
        }
        // The value is below 2^-zeros.
        let zeros = -(self.exp + 128);
        if zeros < 0 {
            // Bounds reach 1: the value is within (hi - lo) 2^exp of 1.
            return true;
        }
        let mut zeros = zeros as u32;
        while zeros > 0 {
            let n = zeros.min(64);
            if bits.take(n) != 0 {
                return false;
            }
            zeros -= n;
        }
        let prefix = u128::from(bits.take(64)) << 64 | u128::from(bits.take(64));
        prefix < self.lo
    }

    /// Lower and upper bound as f64, for tests.
    #[cfg(test)]
    fn bounds_f64(&self) -> (f64, f64) {
        (
            self.lo as f64 * 2f64.powi(self.exp),
            self.hi as f64 * 2f64.powi(self.exp),
        )
    }
}

/// `exp(-y)` for `y = num / (den 2^den_shift)`, certified to a relative 2^-110 or better.
fn exp_neg_ratio(num: u128, den: u64, den_shift: u32) -> Interval {
    if num == 0 {
        return Interval::exact(1);
    }
    // Halve y until it is at most 1/2; exp(-y) = exp(-y / 2^h)^(2^h).
    let estimate = num as f64 / den as f64 / 2f64.powi(den_shift as i32);
    let mut halvings = (estimate.log2().ceil() as i32 + 2).max(0) as u32;
    let (lo, hi) = loop {
        let (lo, exact) = ratio_fixed(num, den, 127 - den_shift as i32 - halvings as i32);
        let hi = lo + u128::from(!exact);
        if hi <= 1 << 126 {
            break (lo, hi);
        }
        halvings += 1;
    };
    let mut e = exp_neg_fixed(lo, hi);
    for _ in 0..halvings {
        e = e.mul(&e);
    }
    e
}

/// `floor(num 2^k / den)` and whether it is exact, when the result is below 2^127.
fn ratio_fixed(num: u128, den: u64, k: i32) -> (u128, bool) {
    let den = u128::from(den);
    let (q, r) = (num / den, num % den);
    if k <= 0 {
        let (floor, up) = shr_256(0, q, (-k) as u32);
        return (floor, r == 0 && floor == up);
    }
    let mut fraction = 0u128;
    let mut rem = r;
    let mut left = k as u32;
    while left > 0 {
        let step = left.min(64);
        let shifted = rem << step;
        fraction = (fraction << step) | (shifted / den);
        rem = shifted % den;
        left -= step;
    }
    ((q << k) + fraction, rem == 0)
}

/// `exp(-x)` for `x` in `[lo, hi] 2^-127`, `hi <= 2^126`: the alternating Taylor series to
/// its 41st term, each term rounded outwards (partial sums bracket the value).
fn exp_neg_fixed(lo: u128, hi: u128) -> Interval {
    const ONE: u128 = 1 << 127;
    let mul_floor = |a: u128, b: u128| {
        let (h, l) = mul_wide(a, b);
        shr_256(h, l, 127).0
    };
    let mul_ceil = |a: u128, b: u128| {
        let (h, l) = mul_wide(a, b);
        shr_256(h, l, 127).1
    };
    let (mut term_lo, mut term_hi) = (ONE, ONE);
    let (mut even_lo, mut even_hi) = (ONE, ONE);
    let (mut odd_lo, mut odd_hi) = (0u128, 0u128);
    for i in 1..=41u128 {
        term_lo = mul_floor(term_lo, lo) / i;
        term_hi = mul_ceil(term_hi, hi).div_ceil(i);
        if i % 2 == 1 {
            odd_hi += term_hi;
            if i < 41 {
                odd_lo += term_lo;
            }
        } else {
            even_lo += term_lo;
            even_hi += term_hi;
        }
    }
    Interval::from_bounds(even_lo - odd_hi, even_hi - odd_lo, -127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_ties_to_even_everywhere() {
        let mut cases = vec![
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999999999999994,
            2.0f64.powi(52) - 0.5,
        ];
        cases.extend([
            1e300,
            -1e300,
            2.0f64.powi(52) + 1.0,
            3.7,
            -3.7,
            0.0,
            -0.0,
            f64::INFINITY,
        ]);
        cases.extend((0..10_000).map(|i| (i as f64 - 5000.0) * 0.25 + 1e-3 * (i % 7) as f64));
        for x in cases {
            assert_eq!(
                round_ties_even(x).to_bits(),
                x.round_ties_even().to_bits(),
                "{x}"
            );
        }
        assert!(round_ties_even(f64::NAN).is_nan());
    }

    #[test]
    fn certified_exponentials_bracket_the_value() {
        for &(num, den, shift) in &[
            (1u128, 2u64, 0u32),
            (3, 7, 0),
            (1 << 80, 3 << 60, 20),
            (98, 1, 0),
            (12345678901234567890, 98765432109876, 11),
        ] {
            let e = exp_neg_ratio(num, den, shift);
            let (lo, hi) = e.bounds_f64();
            let y = num as f64 / den as f64 / 2f64.powi(shift as i32);
            // The f64 reference is itself off by about y 2^-53 relative.
            let (want, tol) = ((-y).exp(), (y + 1.0) * 1e-15);
            assert!(lo <= want * (1.0 + tol) && want <= hi * (1.0 + tol), "{y}");
            assert!((e.hi - e.lo) < 1 << 20, "width {} for {y}", e.hi - e.lo);
        }
        assert_eq!(exp_neg_ratio(0, 5, 0).bounds_f64(), (1.0, 1.0));
    }

    #[test]
    fn division_and_splitting_keep_the_bounds() {
        let third = Interval::exact(1).div_u64(3);
        let (lo, hi) = third.bounds_f64();
        assert!(lo <= 1.0 / 3.0 && 1.0 / 3.0 <= hi && third.hi - third.lo <= 1);
        let (top, rest) = split_acceptance(&Interval::exact(3).div_u64(4));
        assert_eq!(top, 48);
        assert_eq!(rest, Interval::ZERO);
        let (top, rest) = split_acceptance(&Interval::exact(1));
        assert_eq!((top, rest.bounds_f64()), (63, (1.0, 1.0)));
        let (top, rest) = split_acceptance(&Interval::exact(1).div_u64(3));
        assert_eq!(top, 21);
        let (lo, hi) = rest.bounds_f64();
        // (64/3 - 21) / 43 = 1/129.
        assert!(lo <= 1.0 / 129.0 * (1.0 + 1e-15) && 1.0 / 129.0 <= hi * (1.0 + 1e-15));
    }

    #[test]
    fn alias_tables_are_exact() {
        let mut weights = vec![0u64; 100];
        let mut left = SLOTS as u64 * SLOT_CAPACITY;
        for (i, w) in weights.iter_mut().enumerate() {
            *w = left / (3 + i as u64);
            left -= *w;
        }
        weights[0] += left;
        let (threshold, alias) = alias_table(&weights);
        let mut got = vec![0u64; SLOTS];
        for i in 0..SLOTS {
            got[i] += threshold[i];
            got[usize::from(alias[i])] += SLOT_CAPACITY - threshold[i];
        }
        assert_eq!(&got[..100], &weights[..]);
        assert!(got[100..].iter().all(|&g| g == 0));
    }

    #[test]
    fn rational_comparisons_are_exact() {
        // U < 1/3 with U's bits fixed: 0x5555... is just below 1/3, 0x5556... just above.
        let mut bits = Bits::new(ChaCha20Rng::seed_from_u64(0));
        let hits = (0..100_000)
            .filter(|_| uniform_below_ratio(1, 3, &mut bits))
            .count();
        // Binomial(1e5, 1/3): s.d. 149; 6 s.d. gives a false alarm below 1e-8.
        assert!(
            (hits as f64 - 100_000.0 / 3.0).abs() < 6.0 * 149.1,
            "{hits}"
        );
        assert_eq!(
            mul_u64_u128(u64::MAX, u128::MAX >> 1),
            ((u128::MAX >> 1) - (1u128 << 63), 1)
        );
    }

    #[test]
    fn the_grid_is_a_power_of_two_fixed_by_sigma_clip_and_dimension() {
        let g = Grid::new(1.0, 1.0, 22_700_000).unwrap();
        assert!(g.step() <= 2f64.powi(-40) && g.step() * 22_700_000f64.sqrt() <= 2f64.powi(-20));
        assert!(g.scale() >= 1.0 / g.step());
        let eff = g.effective_noise_multiplier(1.0, 22_700_000);
        assert!(eff <= 1.0 + 1e-8 && eff >= 1.0 - 2f64.powi(-20), "{eff}");
        assert!(Grid::new(0.0, 1.0, 10).is_err());
        assert!(Grid::new(1.0, f64::NAN, 10).is_err());
        assert!(Grid::new(1e-30, 1e-60, 10).is_err());
        assert!(Grid::new(1e9, 1.0, 1 << 40).is_err());
    }

    #[test]
    fn the_table_covers_fourteen_standard_deviations() {
        for (sigma, clip, dim) in [(0.3, 1.0, 10), (1.0, 2.0, 22_566_146), (50.0, 0.1, 1 << 36)] {
            let table = Table::new(&Grid::new(sigma, clip, dim).unwrap());
            // Every offset test's exponent is below 0.2, inside von Neumann's range [0, 1].
            let span = (1u128 << table.bin_bits) - 1;
            let nearest = (table.half_bins as u128 - 1) << table.bin_bits;
            assert!(5 * span * (2 * nearest + span) < table.two_s2);
            // Every draw is below 2^52 in magnitude: `on_grid` adds it exactly in f64.
            assert!(table.half_bins << table.bin_bits < 1i64 << 52);
        }
        let grid = Grid::new(1.0, 1.0, 1000).unwrap();
        let table = Table::new(&grid);
        let reach = (table.half_bins << table.bin_bits) as f64;
        assert!(reach >= 14.0 * grid.scale());
        assert!(2 * table.half_bins as usize <= SLOTS);
        // Central bins are accepted with probability within 2^-30 of 1, and their offsets
        // almost always by 8 bits.
        let center = table.slots[table.half_bins as usize + 1];
        assert_eq!(center.accept[0], 63);
        assert_eq!(center.offset[0], 0);
    }
}
