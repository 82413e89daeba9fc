//! Probability mass functions on lattices `k h` (k an integer), their FFT composition on a
//! window with the mean-preserving move to a coarser lattice, and the tail bounds that size
//! windows.
//!
//! - Composition: the pmf of `sum_i` (`c_i` independent copies of input `i`) is
//!   `irfft(prod_i rfft(p_i)^(c_i))` on a circle of `n` points. Slot `s` holds lattice index
//!   `sum_i c_i k0_i + s (mod n)`, `k0_i` being the first index of input `i`; the window
//!   `[ka, kb]` (with `n >= kb - ka + 1`) is read off, and mass outside it lands, wrapped, inside.
//!   The caller sizes the window so that this mass is within its budget.
//! - Regridding to mesh `m h`: mass at `x = k h`, between coarse points `g_j <= x < g_(j+1)`,
//!   goes to `g_j` with weight `(g_(j+1) - x) / (m h)` and to `g_(j+1)` with the rest. As a
//!   randomised rounding, its error has conditional mean zero and lies in `[g_j - x, g_(j+1) - x]`,
//!   an interval of width `m h`. The split is a convolution with a triangle and a sampling, so
//!   it is done on the composed spectrum (`coarse_spectrum`) before the inverse transform, which
//!   then has `m` times fewer points; for many steps most of that spectrum is zero.
//! - Chernoff window: `P[S > b] <= exp(-lambda b + sum_i c_i log E[e^(lambda Y_i)])` for every
//!   `lambda > 0` (and the mirror image for the left tail). As a function of `log lambda`, the
//!   bound on `b` for a budget `beta`, `(K(lambda) - log beta) / lambda` with `K` the convex
//!   cumulant and `K(0) = 0 > log beta`, is quasi-convex, so a golden-section search finds its
//!   minimum; any `lambda` it tries gives a valid bound.

use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::RealFftPlanner;

use super::spectrum::{cutoff, from_low_spectrum, low_spectrum, transform_size, Roots};
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

/// The largest `2^a 3^b 5^c` at or below `n` (at least 1): coarse ratios of this form keep the
/// fine circle, `ratio` times a fast size, fast too.
pub(super) fn smooth_at_most(n: usize) -> usize {
    let smooth = |mut k: usize| {
        for p in [2, 3, 5] {
            while k % p == 0 {
                k /= p;
            }
        }
        k == 1
    };
    (1..=n).rev().find(|&k| smooth(k)).unwrap_or(1)
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
    /// independent copies of input `i`, moved to the lattice of mesh `ratio` times the inputs'
    /// (1: unchanged) and read off there on the coarse window `[floor(a / ratio), ceil(b /
    /// ratio)]` (where the window `[a, b]` of the sum goes). The inputs are transformed once, at
    /// the frequencies where some request's product is not negligible (see `spectrum`): the
    /// entries left out move each result by at most `spectrum_error` in total variation.
    pub fn compose(
        &mut self,
        epsilon_error: f64,
        inputs: &[&Pmf],
        requests: &[(Vec<u64>, Window)],
        ratio: i64,
        spectrum_error: f64,
    ) -> Result<Vec<Pmf>, AccountingError> {
        let m = ratio as usize;
        let windows: Vec<Window> = requests
            .iter()
            .map(|(_, (a, b))| (a.div_euclid(ratio), (b + ratio - 1).div_euclid(ratio)))
            .collect();
        // The coarse points of a window take mass from fine indices less than `m` beyond its
        // ends: those `(b - a + 2) m - 1` indices need distinct slots of the fine circle.
        let needed = windows
            .iter()
            .map(|(a, b)| (((b - a + 2) * ratio - 1) as usize).div_ceil(m))
            .max()
            .unwrap_or(1);
        let coarse_n = fast_fft_size(needed);
        let n = coarse_n * m;
        if n > MAX_GRID {
            return Err(AccountingError::InvalidParameter {
                name: "epsilon_error",
                value: epsilon_error,
                expected:
                    "a coarser error: the PRV grid would exceed 2^28 points (use --accountant rdp)",
            });
        }
        // Product entries below e^-floor are left out: with their mirrors, each moves every
        // coarse point by at most 2 e^-floor / coarse_n, so all of them move a result by at most
        // (n + 2) e^-floor = spectrum_error in total variation.
        let floor = ((n + 2) as f64 / spectrum_error).ln();
        let sequences: Vec<&[f64]> = inputs.iter().map(|p| p.p.as_slice()).collect();
        let k = requests
            .iter()
            .map(|(counts, _)| cutoff(&sequences, counts, n, floor))
            .max()
            .unwrap_or(1);
        let forward = self.planner.plan_fft_forward(transform_size(n, k));
        let roots = Roots::new(n);
        let spectra = inputs
            .iter()
            .map(|pmf| low_spectrum(&pmf.p, n, k, forward.as_ref(), &roots))
            .collect::<Result<Vec<_>, AccountingError>>()?;
        // Below `coarse_n / 2` the coarse spectrum has no aliases: its first `k` entries.
        let coarse_k = k.min(coarse_n / 2 + 1);
        let inverse = self
            .planner
            .plan_fft_inverse(transform_size(coarse_n, coarse_k));
        let coarse_roots = Roots::new(coarse_n);
        let mesh = inputs[0].mesh * ratio as f64;
        requests
            .iter()
            .zip(&windows)
            .map(|((counts, _), &(first, last))| {
                let mut origin: i128 = 0;
                for (&count, pmf) in counts.iter().zip(inputs) {
                    origin += count as i128 * pmf.start as i128;
                }
                let product = spectrum_product(&spectra, counts, 1.0 / coarse_n as f64, floor)?;
                // Fine slot `s` holds index `origin + s`; coarse slot `j` is fine slot
                // `j m + offset`, the coarse index `coarse_origin + j`.
                let offset = (-origin).rem_euclid(m as i128);
                let coarse_origin = (origin + offset) / m as i128;
                let mut spectrum = coarse_spectrum(&product, coarse_n, m, offset as usize);
                spectrum.truncate(coarse_k);
                let mut p =
                    from_low_spectrum(&spectrum, coarse_n, inverse.as_ref(), &coarse_roots)?;
                // The window starts at slot (first - coarse_origin) mod n and runs on, wrapping
                // once.
                let slot = (first as i128 - coarse_origin).rem_euclid(coarse_n as i128) as usize;
                p.rotate_left(slot);
                p.truncate((last - first + 1) as usize);
                // Rounding leaves values of about 1e-17 where the mass is 0, some negative: 0.
                p.iter_mut().for_each(|x| *x = x.max(0.0));
                Ok(Pmf {
                    start: first,
                    mesh,
                    p,
                })
            })
            .collect()
    }
}

/// `scale prod_i spectrum_i^(count_i)`, with the entries whose product is below `e^-floor` in
/// magnitude set to zero (spectra of pmfs have magnitude at most 1, so one factor
/// `|f|^c < e^-floor` bounds the product).
fn spectrum_product(
    spectra: &[Vec<Complex64>],
    counts: &[u64],
    scale: f64,
    floor: f64,
) -> Result<Vec<Complex64>, AccountingError> {
    let zero = Complex64::new(0.0, 0.0);
    let mut product = vec![Complex64::new(scale, 0.0); spectra[0].len()];
    for (spectrum, &count) in spectra.iter().zip(counts) {
        if count == 0 {
            continue;
        }
        let smallest = (-2.0 * floor / count as f64).exp();
        let count = u32::try_from(count)
            .map_err(|_| AccountingError::Numerical(format!("{count} steps exceed 2^32")))?;
        product.par_iter_mut().zip(spectrum).for_each(|(s, f)| {
            if *s != zero {
                *s = if f.norm_sqr() < smallest {
                    zero
                } else {
                    *s * f.powu(count)
                };
            }
        });
    }
    Ok(product)
}

/// The half spectrum (`coarse_n / 2 + 1` entries) of the fine circle's pmf (half spectrum
/// `fine`, `n = m coarse_n` points) moved to the lattice of mesh `m` by the mean-preserving
/// split, with coarse slot `j` at fine slot `j m + offset`.
///
/// The split sends fine index `k` to the coarse points within `m` of it with weights
/// `1 - |k - j m| / m`: a circular convolution with that triangle, whose transform is the Fejér
/// kernel `(sin(pi k m / n) / sin(pi k / n))^2 / m`, then sampling every `m`-th slot from
/// `offset`, which folds the `m` aliases `k = l + a coarse_n` of each coarse frequency `l`:
/// `C_l = sum_a F_k e^(2 pi i k offset / n) K_k / m`. Zero entries are skipped.
fn coarse_spectrum(fine: &[Complex64], coarse_n: usize, m: usize, offset: usize) -> Vec<Complex64> {
    use std::f64::consts::PI;
    let n = coarse_n * m;
    let half = coarse_n / 2;
    let mut coarse = vec![Complex64::new(0.0, 0.0); half + 1];
    for (k, &f) in fine.iter().enumerate() {
        if f.re == 0.0 && f.im == 0.0 {
            continue;
        }
        let value = if m == 1 || k == 0 {
            f
        } else {
            let kernel = (PI * k as f64 / coarse_n as f64).sin()
                / (m as f64 * (PI * k as f64 / n as f64).sin());
            let angle = 2.0 * PI * ((k * offset) % n) as f64 / n as f64;
            f * kernel * kernel * Complex64::from_polar(1.0, angle)
        };
        let l = k % coarse_n;
        if l <= half {
            coarse[l] += value;
        }
        // The upper half of the fine spectrum, entry n - k, is the conjugate.
        if k > 0 && 2 * k < n {
            let l = (n - k) % coarse_n;
            if l <= half {
                coarse[l] += value.conj();
            }
        }
    }
    // A real signal's first and last (even length) entries are real.
    coarse[0].im = 0.0;
    coarse[half].im = 0.0;
    coarse
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

    /// The mean-preserving split of a pmf to mesh `m` times its own, done in the time domain.
    fn split(pmf: &Pmf, m: i64) -> Pmf {
        let start = pmf.start.div_euclid(m);
        let mut p = vec![0.0; (pmf.end().div_euclid(m) - start + 2) as usize];
        for (i, &mass) in pmf.p.iter().enumerate() {
            let k = pmf.start + i as i64;
            let (j, r) = ((k.div_euclid(m) - start) as usize, k.rem_euclid(m));
            let upper = r as f64 / m as f64 * mass;
            p[j] += mass - upper;
            p[j + 1] += upper;
        }
        Pmf {
            start,
            mesh: m as f64 * pmf.mesh,
            p,
        }
    }

    #[test]
    fn the_split_keeps_mass_and_mean_and_moves_to_the_coarse_lattice() {
        let pmf = Pmf {
            start: -7,
            mesh: 0.1,
            p: vec![0.1, 0.2, 0.05, 0.15, 0.3, 0.2],
        };
        let coarse = Composer::new()
            .compose(0.01, &[&pmf], &[(vec![1], (-7, -2))], 4, 1e-300)
            .unwrap()
            .remove(0);
        assert_eq!((coarse.start, coarse.p.len()), (-2, 3));
        assert!((coarse.mesh - 0.4).abs() < 1e-15);
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
        for (got, want) in coarse.p.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", coarse.p);
        }
    }

    /// Composing and splitting in the frequency domain equals convolving, then splitting in the
    /// time domain, for every ratio and window offset (the sum's first index is -5), read off
    /// on the sum's window or a wider one.
    #[test]
    fn composed_split_matches_convolution_then_split() {
        let a = Pmf {
            start: -3,
            mesh: 0.25,
            p: vec![0.1, 0.3, 0.05, 0.25, 0.2, 0.1],
        };
        let b = Pmf {
            start: 1,
            mesh: 0.25,
            p: vec![0.6, 0.1, 0.3],
        };
        let convolve = |x: &Pmf, y: &Pmf| {
            let mut p = vec![0.0; x.p.len() + y.p.len() - 1];
            for (i, u) in x.p.iter().enumerate() {
                for (j, v) in y.p.iter().enumerate() {
                    p[i + j] += u * v;
                }
            }
            Pmf {
                start: x.start + y.start,
                mesh: x.mesh,
                p,
            }
        };
        let sum = convolve(&convolve(&a, &a), &b);
        for ratio in [1, 2, 3, 4, 5, 7] {
            for window in [(sum.start, sum.end()), (sum.start - 4, sum.end() + 3)] {
                let got = Composer::new()
                    .compose(0.01, &[&a, &b], &[(vec![2, 1], window)], ratio, 1e-300)
                    .unwrap()
                    .remove(0);
                let want = split(&sum, ratio);
                assert_eq!(got.start, window.0.div_euclid(ratio), "ratio {ratio}");
                for (i, g) in got.p.iter().enumerate() {
                    let k = got.start + i as i64 - want.start;
                    let w =
                        usize::try_from(k).map_or(0.0, |k| want.p.get(k).copied().unwrap_or(0.0));
                    assert!(
                        (g - w).abs() < 1e-15,
                        "ratio {ratio} {window:?}: {:?}",
                        got.p
                    );
                }
            }
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
            .compose(0.01, &[&a, &b], &[(vec![2, 1], (0, 7))], 1, 1e-300)
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
