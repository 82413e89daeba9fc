//! Uniform random bits from ChaCha20, and the exact comparison of a uniform with a rational
//! that every Bernoulli trial of the sampler makes (drawing more bits only until decided).

use rand::{Rng, RngCore};
use rand_chacha::ChaCha20Rng;

use super::interval::mul_u64_u128;

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
    pub(super) fn word(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Fresh 64-bit words (buffered bits stay for later `take`s).
    #[inline]
    pub(super) fn words(&mut self, out: &mut [u64]) {
        self.rng.fill(out);
    }

    /// The next `n` bits (1 <= n <= 64) as an integer.
    #[inline]
    pub(super) fn take(&mut self, n: u32) -> u64 {
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
pub(super) fn uniform_below_ratio(mut num: u128, den: u128, bits: &mut Bits) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
}
