//! The power-of-two grid of one mechanism (its step `gamma` and integer scale `s`, fixed by
//! `(sigma, C, d)` alone: steps 1 and 2 of the mechanism in the parent module's doc) and the
//! release on it (steps 3 and 5): `gamma (round(x / gamma) + Z)`, formed exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::bits::Bits;
use super::table::Table;
use super::{CLAMP, MAX_SCALE_LOG2, MIN_SCALE_LOG2, ROUNDING_SHARE};
use crate::error::CoreError;

/// The grid and the integer noise scale for one mechanism, fixed by `(sigma, C, d)` alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    /// `gamma = 2^log2_step`.
    pub(crate) log2_step: i32,
    /// `s = scale_mantissa * 2^scale_shift`, `scale_mantissa` in `[2^30, 2^31]`.
    pub(super) scale_mantissa: u64,
    pub(super) scale_shift: u32,
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
    pub(super) fn two_s2(&self) -> (u64, u32) {
        (
            2 * self.scale_mantissa * self.scale_mantissa,
            2 * self.scale_shift,
        )
    }
}

/// Positions drawn at a time when noise is released as it is drawn: a multiple of 64, so the
/// draws are those of one [`Table::fill_block`] over the whole block.
pub(super) const CHUNK: usize = 4096;

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

/// Releases one block of [`super::BLOCK`] values (or the last, shorter one) in place: each becomes
/// `gamma (round(x / gamma) + z)` with `z` drawn from `key` as by [`super::fill`] (the same integers,
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
pub(super) const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `x.round_ties_even()` without a library call: below `2^52` in magnitude, adding and
/// subtracting `2^52` (with `x`'s sign) rounds to the nearest integer, ties to even, in the
/// default rounding mode (the result keeps `x`'s sign, as -0.5 rounds to -0); at or above it
/// every double is an integer. NaN stays NaN.
#[inline]
pub(super) fn round_ties_even(x: f64) -> f64 {
    if x.abs() < TWO_52 {
        round_below_2_52(x)
    } else {
        x
    }
}

/// [`round_ties_even`] of an `x` below `2^52` in magnitude.
#[inline]
pub(super) fn round_below_2_52(x: f64) -> f64 {
    let shift = TWO_52.copysign(x);
    ((x + shift) - shift).copysign(x)
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
}
