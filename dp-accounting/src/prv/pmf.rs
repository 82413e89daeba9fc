//! Probability mass functions on lattices `k h` (k an integer), their FFT composition on a
//! window, the mean-preserving move to a coarser lattice, and the tail bounds that size windows.
//!
//! - Composition: the pmf of `sum_i` (`c_i` independent copies of input `i`) is
//!   `irfft(prod_i rfft(p_i)^(c_i))` on a circle of `n` points. Slot `s` holds lattice index
//!   `sum_i c_i k0_i + s (mod n)`, `k0_i` being the first index of input `i`; the window
//!   `[ka, kb]` (with `n >= kb - ka + 1`) is read off, and mass outside it lands, wrapped, inside.
//!   The caller sizes the window so that this mass is within its budget.
//! - Regridding to mesh `m h`: mass at `x = k h`, between coarse points `g_j <= x < g_(j+1)`,
//!   goes to `g_j` with weight `(g_(j+1) - x) / (m h)` and to `g_(j+1)` with the rest. As a
//!   randomised rounding, its error has conditional mean zero and lies in `[g_j - x, g_(j+1) - x]`,
//!   an interval of width `m h`.
//! - Chernoff window: `P[S > b] <= exp(-lambda b + sum_i c_i log E[e^(lambda Y_i)])` for every
//!   `lambda > 0` (and the mirror image for the left tail). As a function of `log lambda`, the
//!   bound on `b` for a budget `beta`, `(K(lambda) - log beta) / lambda` with `K` the convex
//!   cumulant and `K(0) = 0 > log beta`, is quasi-convex, so a golden-section search finds its
//!   minimum; any `lambda` it tries gives a valid bound.

use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::RealFftPlanner;

use crate::error::AccountingError;

/// Grids beyond this (2 GiB per buffer) are refused rather than attempted.
const MAX_GRID: usize = 1 << 28;

/// Points per chunk in the moment generating function's sum: each chunk starts from an exact
/// exponential, then multiplies by `e^(lambda h)`.
const MGF_CHUNK: usize = 256;

/// The smallest even `2^a 3^b 5^c` at or above `n`.
pub(crate) fn fast_fft_size(n: usize) -> usize {
    let mut best = n.next_power_of_two().max(2);
    let mut p5 = 1;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut size = p35 * 2;
            while size < n {
                size *= 2;
            }
            best = best.min(size);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

fn fft_error(e: impl std::fmt::Display) -> AccountingError {
    AccountingError::Numerical(format!("FFT failed: {e}"))
}

/// Masses `p[i]` at the values `(start + i) mesh`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pmf {
    pub start: i64,
    pub mesh: f64,
    pub p: Vec<f64>,
}

impl Pmf {
    pub fn value(&self, i: usize) -> f64 {
        (self.start + i as i64) as f64 * self.mesh
    }

    /// The last lattice index.
    pub fn end(&self) -> i64 {
        self.start + self.p.len() as i64 - 1
    }

    /// `log E[e^(lambda Y)]`, summed with exponents shifted to be <= 0 (from the right end for
    /// `lambda > 0`, the left end otherwise), so nothing overflows.
    pub fn log_mgf(&self, lambda: f64) -> f64 {
        let anchor = if lambda > 0.0 {
            self.value(self.p.len() - 1)
        } else {
            self.value(0)
        };
        let step = (lambda * self.mesh).exp();
        let sum: f64 = self
            .p
            .par_chunks(MGF_CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                let mut w = (lambda * (self.value(c * MGF_CHUNK) - anchor)).exp();
                let mut s = 0.0;
                for &p in chunk {
                    s += p * w;
                    w *= step;
                }
                s
            })
            .sum();
        lambda * anchor + sum.ln()
    }

    /// The pmf moved to the lattice of mesh `ratio * mesh` by the mean-preserving split.
    pub fn regrid(&self, ratio: i64) -> Pmf {
        let start = self.start.div_euclid(ratio);
        let mut p = vec![0.0; (self.end().div_euclid(ratio) - start + 2) as usize];
        let inv = 1.0 / ratio as f64;
        // Fine index k = (start + j) ratio + r, 0 <= r < ratio.
        let (mut j, mut r) = (0, self.start.rem_euclid(ratio));
        for &mass in &self.p {
            let upper = r as f64 * inv * mass;
            p[j] += mass - upper;
            p[j + 1] += upper;
            r += 1;
            if r == ratio {
                (j, r) = (j + 1, 0);
            }
        }
        Pmf {
            start,
            mesh: ratio as f64 * self.mesh,
            p,
        }
    }
}

/// A window of lattice indices `[first, last]`.
pub(super) type Window = (i64, i64);

/// The lattice window `[floor(a / mesh), ceil(b / mesh)]`, cut to the indices the sum can reach.
pub(super) fn lattice_window(parts: &[(&Pmf, u64)], a: f64, b: f64) -> Window {
    let mesh = parts[0].0.mesh;
    let reach = |f: fn(&Pmf) -> i64| parts.iter().map(|(p, c)| *c as i64 * f(p)).sum::<i64>();
    // A bound that failed (NaN) leaves the reach.
    let first = if a.is_nan() {
        i64::MIN
    } else {
        (a / mesh).floor() as i64
    };
    let last = if b.is_nan() {
        i64::MAX
    } else {
        (b / mesh).ceil() as i64
    };
    let (first, last) = (first.max(reach(|p| p.start)), last.min(reach(Pmf::end)));
    (first, last.max(first))
}

/// Window `[a, b]` with `P[S < a] <= beta` and `P[S > b] <= beta` for the sum `S` of the parts,
/// by Chernoff bounds on the parts' exact moment generating functions.
pub(super) fn chernoff_window(parts: &[(&Pmf, u64)], beta: f64) -> Window {
    let range = parts
        .iter()
        .map(|(p, _)| p.value(p.p.len() - 1) - p.value(0))
        .fold(0.0, f64::max);
    // Beyond lambda * range = 700 the shifted exponentials could underflow.
    let lambda_max = 700.0 / range.max(1e-300);
    let lambda_min = (1e-5f64).min(0.5 * lambda_max);
    let cumulant = |lambda: f64| -> f64 {
        parts
            .iter()
            .map(|(p, c)| *c as f64 * p.log_mgf(lambda))
            .sum()
    };
    let log_beta = beta.ln();
    let right = golden_section_min(
        |u| {
            let lambda = u.exp();
            (cumulant(lambda) - log_beta) / lambda
        },
        lambda_min.ln(),
        lambda_max.ln(),
    );
    let left = -golden_section_min(
        |u| {
            let lambda = u.exp();
            (cumulant(-lambda) - log_beta) / lambda
        },
        lambda_min.ln(),
        lambda_max.ln(),
    );
    lattice_window(parts, left, right)
}

/// The smallest value of a quasi-convex `f` on `[lo, hi]` seen by a golden-section search.
fn golden_section_min(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let ratio = 0.5 * (5f64.sqrt() - 1.0);
    let (mut x1, mut x2) = (hi - ratio * (hi - lo), lo + ratio * (hi - lo));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..24 {
        if f1 <= f2 {
            (hi, x2, f2) = (x2, x1, f1);
            x1 = hi - ratio * (hi - lo);
            f1 = f(x1);
        } else {
            (lo, x1, f1) = (x1, x2, f2);
            x2 = lo + ratio * (hi - lo);
            f2 = f(x2);
        }
    }
    f1.min(f2)
}

/// Composes pmfs on one lattice by FFT, with the plans of one size built once.
pub(super) struct Composer {
    planner: RealFftPlanner<f64>,
}

impl Composer {
    pub fn new() -> Self {
        Self {
            planner: RealFftPlanner::new(),
        }
    }

    /// For each request (a count per input, a window), the pmf of the sum of `count_i`
    /// independent copies of input `i`, read off on the window. The inputs are transformed once.
    pub fn compose(
        &mut self,
        epsilon_error: f64,
        inputs: &[&Pmf],
        requests: &[(Vec<u64>, Window)],
    ) -> Result<Vec<Pmf>, AccountingError> {
        let longest = requests
            .iter()
            .map(|(_, (a, b))| (b - a + 1) as usize)
            .max()
            .unwrap_or(1);
        let n = fast_fft_size(longest);
        if n > MAX_GRID {
            return Err(AccountingError::InvalidParameter {
                name: "epsilon_error",
                value: epsilon_error,
                expected:
                    "a coarser error: the PRV grid would exceed 2^28 points (use --accountant rdp)",
            });
        }
        let forward = self.planner.plan_fft_forward(n);
        let inverse = self.planner.plan_fft_inverse(n);
        let spectra = inputs
            .par_iter()
            .map(|pmf| {
                // Longer inputs fold onto the circle: the circular convolution is unchanged.
                let mut buffer = forward.make_input_vec();
                for chunk in pmf.p.chunks(n) {
                    buffer.iter_mut().zip(chunk).for_each(|(b, p)| *b += p);
                }
                let mut spectrum = forward.make_output_vec();
                forward
                    .process(&mut buffer, &mut spectrum)
                    .map_err(fft_error)?;
                Ok(spectrum)
            })
            .collect::<Result<Vec<_>, AccountingError>>()?;
        let mesh = inputs[0].mesh;
        let scale = 1.0 / n as f64;
        requests
            .par_iter()
            .map(|(counts, (first, last))| {
                let mut product = vec![Complex64::new(scale, 0.0); n / 2 + 1];
                let mut origin: i128 = 0;
                for ((spectrum, &count), pmf) in spectra.iter().zip(counts).zip(inputs) {
                    if count == 0 {
                        continue;
                    }
                    origin += count as i128 * pmf.start as i128;
                    let count = u32::try_from(count).map_err(|_| {
                        AccountingError::Numerical(format!("{count} steps exceed 2^32"))
                    })?;
                    product
                        .par_iter_mut()
                        .zip(spectrum)
                        .for_each(|(s, f)| *s *= f.powu(count));
                }
                let mut circle = inverse.make_output_vec();
                inverse
                    .process(&mut product, &mut circle)
                    .map_err(fft_error)?;
                // The window starts at slot (first - origin) mod n and runs on, wrapping once.
                let slot = (*first as i128 - origin).rem_euclid(n as i128) as usize;
                let len = (last - first + 1) as usize;
                let head = len.min(n - slot);
                // Rounding leaves values of about 1e-17 where the mass is 0, some negative: 0.
                let p = circle[slot..slot + head]
                    .iter()
                    .chain(&circle[..len - head])
                    .map(|&x| x.max(0.0))
                    .collect();
                Ok(Pmf {
                    start: *first,
                    mesh,
                    p,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(pmf: &Pmf) -> (f64, f64) {
        let mass: f64 = pmf.p.iter().sum();
        let mean: f64 = pmf
            .p
            .iter()
            .enumerate()
            .map(|(i, p)| p * pmf.value(i))
            .sum();
        (mass, mean)
    }

    #[test]
    fn regridding_keeps_mass_and_mean_and_moves_to_the_coarse_lattice() {
        let pmf = Pmf {
            start: -7,
            mesh: 0.1,
            p: vec![0.1, 0.2, 0.05, 0.15, 0.3, 0.2],
        };
        let coarse = pmf.regrid(4);
        assert_eq!((coarse.start, coarse.mesh), (-2, 0.4));
        let ((m0, e0), (m1, e1)) = (moments(&pmf), moments(&coarse));
        assert!(
            (m0 - m1).abs() < 1e-15 && (e0 - e1).abs() < 1e-15,
            "{e0} vs {e1}"
        );
        // Fine index k = 4 j + r sends (4 - r) / 4 of its mass to j and r / 4 to j + 1; index -4
        // is a coarse point and keeps its mass whole.
        let want = [
            0.75 * 0.1 + 0.5 * 0.2 + 0.25 * 0.05,
            0.25 * 0.1 + 0.5 * 0.2 + 0.75 * 0.05 + 0.15 + 0.75 * 0.3 + 0.5 * 0.2,
            0.25 * 0.3 + 0.5 * 0.2,
        ];
        assert_eq!(coarse.p.len(), want.len());
        for (got, want) in coarse.p.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", coarse.p);
        }
    }

    #[test]
    fn composition_matches_direct_convolution_and_reads_its_window() {
        let a = Pmf {
            start: -1,
            mesh: 0.5,
            p: vec![0.25, 0.5, 0.25],
        };
        let b = Pmf {
            start: 3,
            mesh: 0.5,
            p: vec![0.5, 0.5],
        };
        // a + a + b: indices 1..=6, binomial(4) / 16 shifted by 1.
        let out = Composer::new()
            .compose(0.01, &[&a, &b], &[(vec![2, 1], (0, 7))])
            .unwrap();
        let want = [0.0, 1.0, 5.0, 10.0, 10.0, 5.0, 1.0, 0.0].map(|x| x / 32.0);
        for (got, want) in out[0].p.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", out[0].p);
        }
    }

    #[test]
    fn chernoff_window_holds_the_binomial_tails() {
        // 400 fair coin flips on {0, 1}: the window must keep all but beta on each side.
        let coin = Pmf {
            start: 0,
            mesh: 1.0,
            p: vec![0.5, 0.5],
        };
        let (a, b) = chernoff_window(&[(&coin, 400)], 1e-6);
        let log_binom = |k: i64| {
            (1..=k)
                .map(|i| ((400 - k + i) as f64 / i as f64).ln())
                .sum::<f64>()
                - 400.0 * 2f64.ln()
        };
        let below: f64 = (0..a).map(|k| log_binom(k).exp()).sum();
        let above: f64 = (b + 1..=400).map(|k| log_binom(k).exp()).sum();
        assert!(below <= 1e-6 && above <= 1e-6, "{a} {b}: {below} {above}");
        // Hoeffding would give 200 +- 74; Chernoff is tighter but not absurdly so.
        assert!(a > 130 && b < 270 && a < 150 && b > 250, "{a} {b}");
    }
}
