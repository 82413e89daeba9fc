//! The sampler of the discrete Gaussian `D_s` for one scale (step 4 of the mechanism): an
//! alias table over coarse bins with exact integer weights, each bin accepted with a
//! certified probability, each offset by von Neumann's alternating series; the tables are
//! built once per scale.

use super::bits::{uniform_below_ratio, Bits};
use super::grid::Grid;
use super::interval::{exp_neg_ratio, Interval};
use super::{SLOTS, SLOT_BITS, SLOT_CAPACITY, TAIL_SIGMAS};

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
pub(super) struct Slot {
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
pub(super) const LEAD: u32 = 6;
/// Bits of the offset carried by a draw's first word.
pub(super) const OFFSET_IN_WORD: u32 = 64 - SLOT_BITS - 3 * LEAD;

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
    pub(super) fn fill_block(&self, out: &mut [i64], bits: &mut Bits) {
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
    pub(super) fn sample(&self, bits: &mut Bits) -> i64 {
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
    pub(super) fn settled_attempt(&self, word: u64) -> (i64, bool) {
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
    pub(super) fn point(&self, bin: usize, offset: u64) -> i64 {
        ((bin as i64 - self.half_bins) << self.bin_bits) + offset as i64
    }

    /// One attempt of the rejection sampler from its first word (and the word's slot); more
    /// bits come from `bits` when a test needs them.
    #[inline(always)]
    pub(super) fn attempt(&self, word: u64, slot: Slot, bits: &mut Bits) -> Option<i64> {
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
    pub(super) fn accept_offset(&self, z: i64, nearest: i64, first: u8, bits: &mut Bits) -> bool {
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
    pub(super) fn bernoulli_ratio(&self, numerator: u128, i: u64, u: u64, bits: &mut Bits) -> bool {
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
pub(super) fn slot_index(word: u64) -> usize {
    (word >> (64 - SLOT_BITS)) as usize
}

/// The [`LEAD`] leading bits of the stay test's, the bin's acceptance test's and the offset
/// test's uniforms, carried by a draw's first word after its slot.
#[inline(always)]
pub(super) fn leading_bits(word: u64) -> [u8; 3] {
    [1, 2, 3].map(|k| ((word >> (64 - SLOT_BITS - k * LEAD)) & ((1 << LEAD) - 1)) as u8)
}

/// The last [`OFFSET_IN_WORD`] bits of a draw's first word: the offset's leading bits.
#[inline(always)]
pub(super) fn offset_field(word: u64) -> u64 {
    word & ((1 << OFFSET_IN_WORD) - 1)
}

/// The integer of bin `j` nearest to zero.
pub(super) fn nearest_to_zero(j: i64, bin_bits: u32) -> i64 {
    if j >= 0 {
        j << bin_bits
    } else {
        (j << bin_bits) + (1 << bin_bits) - 1
    }
}

/// Splits the bin acceptance `c` into `A = min(floor(2^LEAD c), 2^LEAD - 1)` and the
/// probability `(2^LEAD c - A) / (2^LEAD - A)` of the rest of the test.
pub(super) fn split_acceptance(c: &Interval) -> (u8, Interval) {
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
pub(super) fn alias_table(weights: &[u64]) -> (Vec<u64>, Vec<u16>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn splitting_an_acceptance_keeps_its_bounds() {
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
}
