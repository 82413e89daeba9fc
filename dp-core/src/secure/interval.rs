//! Certified real numbers: bounds `[lo 2^exp, hi 2^exp]` from 128- and 256-bit integer
//! arithmetic rounded outwards, and `exp(-x)` for rational `x` bracketed to a relative `2^-100`
//! (the bins' acceptance probabilities `c_j`, computed once per scale).

use super::bits::Bits;

/// `u * v` as `(high, low)` with value `high 2^64 + low`.
pub(super) fn mul_u64_u128(u: u64, v: u128) -> (u128, u64) {
    let p0 = u128::from(u) * (v as u64 as u128);
    let p1 = u128::from(u) * (v >> 64);
    (p1 + (p0 >> 64), p0 as u64)
}

/// `a * b` as `(high, low)` 128-bit halves.
pub(super) fn mul_wide(a: u128, b: u128) -> (u128, u128) {
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
pub(super) fn shr_256(high: u128, low: u128, shift: u32) -> (u128, u128) {
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
    pub(super) const ZERO: Self = Self {
        lo: 0,
        hi: 0,
        exp: 0,
    };

    pub(super) fn exact(v: u128) -> Self {
        Self::from_bounds(v, v, 0)
    }

    pub(super) fn from_bounds(lo: u128, hi: u128, exp: i32) -> Self {
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
    pub(super) fn scale(self, k: i32) -> Self {
        Self {
            exp: self.exp + k,
            ..self
        }
    }

    pub(super) fn mul(&self, other: &Self) -> Self {
        let (lh, ll) = mul_wide(self.lo, other.lo);
        let (hh, hl) = mul_wide(self.hi, other.hi);
        let (lo, _) = shr_256(lh, ll, 128);
        let (_, hi) = shr_256(hh, hl, 128);
        Self::from_bounds(lo, hi, self.exp + other.exp + 128)
    }

    /// Divided by the integer `w >= 1`.
    pub(super) fn div_u64(&self, w: u64) -> Self {
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
    pub(super) fn fixed(&self, frac: i32) -> (u128, u128) {
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
    pub(super) fn ceil_upper(&self) -> u128 {
        self.fixed(0).1
    }

    pub(super) fn upper_f64(&self) -> f64 {
        self.hi as f64 * 2f64.powi(self.exp)
    }

    /// Bernoulli of a probability in this interval: exact whenever 128 bits past the leading
    /// zeros separate a uniform from both bounds; otherwise false, which moves the
    /// probability by at most `(hi - lo + 1) / lo` relative.
    pub(super) fn bernoulli(&self, bits: &mut Bits) -> bool {
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
    pub(super) fn bounds_f64(&self) -> (f64, f64) {
        (
            self.lo as f64 * 2f64.powi(self.exp),
            self.hi as f64 * 2f64.powi(self.exp),
        )
    }
}

/// `exp(-y)` for `y = num / (den 2^den_shift)`, certified to a relative 2^-110 or better.
pub(super) fn exp_neg_ratio(num: u128, den: u64, den_shift: u32) -> Interval {
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
pub(super) fn ratio_fixed(num: u128, den: u64, k: i32) -> (u128, bool) {
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
pub(super) fn exp_neg_fixed(lo: u128, hi: u128) -> Interval {
    pub(super) const ONE: u128 = 1 << 127;
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
    fn division_keeps_the_bounds() {
        let third = Interval::exact(1).div_u64(3);
        let (lo, hi) = third.bounds_f64();
        assert!(lo <= 1.0 / 3.0 && 1.0 / 3.0 <= hi && third.hi - third.lo <= 1);
    }
}
