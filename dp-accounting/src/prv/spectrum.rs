//! Discrete Fourier transforms of long real sequences whose spectra matter only at their lowest
//! frequencies: the composed PRV of many steps is smooth, and all but a few hundred entries of
//! its spectrum are negligible.
//!
//! - Cutoff (summation by parts): with `z = e^(-i theta)`, `(1 - z)^r sum_j p_j z^j = sum_j
//!   (D^r p)_j z^j`, `D^r p` the r-th differences of the zero-padded sequence, so
//!   `|p^(theta)| <= V_r / (2 sin(theta / 2))^r` with `V_r` their l1 norm (`V_0` the mass). The
//!   bound decreases on `(0, pi]`, so past the first frequency where `sum_i c_i log(bound_i)`
//!   drops below `-L` (the caller's floor), every entry of `prod_i p^_i^(c_i)` does.
//! - Polyphase split: on a circle of `n = R M` points, with `w = e^(-2 pi i / n)`,
//!   `F(l) = sum_(r < R) w^(r l) G_r(l)`, `G_r` the `M`-point DFT of `x_(a R + r)` (`a < M`).
//!   For `l < K <= M / 2` this gives the `K` lowest entries from `R` transforms of `M` points;
//!   the inverse is the same sum read backwards. Plans of `M` points are cheap, where a plan of
//!   `n` points computes about `n` sines and cosines.

use std::f64::consts::PI;

use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::{ComplexToReal, RealToComplex};

use crate::error::AccountingError;

/// Highest order of differences in the cutoff bound.
const MAX_ORDER: usize = 4;

/// Phases handled together: their rows are contiguous, their partial sums add pairwise.
const LEAF: usize = 16;

fn fft_error(e: impl std::fmt::Display) -> AccountingError {
    AccountingError::Numerical(format!("FFT failed: {e}"))
}

/// The roots of unity `e^(-2 pi i j / n)`, each the product of two exact values from tables of
/// about `sqrt(n)` entries.
pub(super) struct Roots {
    n: usize,
    width: usize,
    high: Vec<Complex64>,
    low: Vec<Complex64>,
}

impl Roots {
    pub fn new(n: usize) -> Self {
        let width = (n as f64).sqrt().ceil() as usize;
        let root = |j: usize| Complex64::from_polar(1.0, -2.0 * PI * j as f64 / n as f64);
        Self {
            n,
            width,
            high: (0..n.div_ceil(width)).map(|h| root(h * width)).collect(),
            low: (0..width).map(root).collect(),
        }
    }

    /// `e^(-2 pi i j / n)`.
    pub fn get(&self, j: usize) -> Complex64 {
        let j = j % self.n;
        self.high[j / self.width] * self.low[j % self.width]
    }
}

/// A sequence's difference norms `V_r`, which bound `log |p^(theta)|` by
/// `min_r log V_r - r log(2 sin(theta / 2))`.
struct DifferenceNorms {
    log_norms: [f64; MAX_ORDER + 1],
}

impl DifferenceNorms {
    /// In one pass: `last[r]` holds the latest r-th difference, and the sequence runs on with
    /// `MAX_ORDER` zeros, after which all differences of the padded sequence are zero.
    fn new(p: &[f64]) -> Self {
        let mut norms = [0.0; MAX_ORDER + 1];
        let mut last = [0.0; MAX_ORDER + 1];
        for &x in p.iter().chain(&[0.0; MAX_ORDER]) {
            let mut d = x;
            for (norm, previous) in norms.iter_mut().zip(&mut last) {
                *norm += d.abs();
                let next = d - *previous;
                *previous = d;
                d = next;
            }
        }
        Self {
            log_norms: norms.map(f64::ln),
        }
    }

    fn log_bound(&self, log_chord: f64) -> f64 {
        self.log_norms
            .iter()
            .enumerate()
            .map(|(r, v)| v - r as f64 * log_chord)
            .fold(f64::INFINITY, f64::min)
    }
}

/// The smallest `K >= 1` such that the entries `k` in `[K, n / 2]` of `prod_i p^_i^(c_i)` on a
/// circle of `n` points are all below `e^(-log_floor)`; `n / 2 + 1` if there is none.
pub(super) fn cutoff(inputs: &[&[f64]], counts: &[u64], n: usize, log_floor: f64) -> usize {
    let norms: Vec<(DifferenceNorms, f64)> = inputs
        .iter()
        .zip(counts)
        .filter(|(_, &c)| c > 0)
        .map(|(p, &c)| (DifferenceNorms::new(p), c as f64))
        .collect();
    let negligible = |k: usize| {
        let log_chord = (2.0 * (PI * k as f64 / n as f64).sin()).ln();
        let log_bound: f64 = norms.iter().map(|(v, c)| c * v.log_bound(log_chord)).sum();
        log_bound < -log_floor
    };
    let half = n / 2;
    if half == 0 || !negligible(half) {
        return half + 1;
    }
    // The bound decreases in k on [1, n / 2]: the first k where it is negligible.
    let (mut lo, mut hi) = (1, half);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if negligible(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// The transform length `M` for the `k` lowest entries on a circle of `n` points: the smallest
/// divisor of `n` at or above `2 k`, else `n` itself.
pub(super) fn transform_size(n: usize, k: usize) -> usize {
    (2 * k..n).find(|d| n % d == 0).unwrap_or(n)
}

/// The `k` lowest entries `F(l) = sum_j x_j e^(-2 pi i j l / n)` of `x` folded onto a circle of
/// `n = R M` points (`M = fft.len()`, `k <= M / 2 + 1`), by the polyphase split.
pub(super) fn low_spectrum(
    x: &[f64],
    n: usize,
    k: usize,
    fft: &dyn RealToComplex<f64>,
    roots: &Roots,
) -> Result<Vec<Complex64>, AccountingError> {
    let m = fft.len();
    let phases = n / m;
    let zero = vec![Complex64::new(0.0, 0.0); k];
    (0..phases.div_ceil(LEAF))
        .into_par_iter()
        .with_max_len(1)
        .map(|block| {
            let first = block * LEAF;
            let mut buffers = vec![fft.make_input_vec(); LEAF.min(phases - first)];
            // Row `a` of the block, slots `a R + first ..`, is contiguous (and folded).
            for a in 0..m {
                for start in (a * phases + first..x.len()).step_by(n) {
                    for (buffer, v) in buffers.iter_mut().zip(&x[start..]) {
                        buffer[a] += v;
                    }
                }
            }
            let mut sum = zero.clone();
            let mut spectrum = fft.make_output_vec();
            for (r, buffer) in (first..).zip(&mut buffers) {
                fft.process(buffer, &mut spectrum).map_err(fft_error)?;
                for (l, s) in sum.iter_mut().enumerate() {
                    *s += spectrum[l] * roots.get(r * l);
                }
            }
            Ok(sum)
        })
        .try_reduce(
            || zero.clone(),
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                Ok(a)
            },
        )
}

/// The real sequence `x_j = sum_(|l| < K) F(l) e^(2 pi i j l / n)` (unnormalised, `F(-l)` the
/// conjugate of `F(l)`) on a circle of `n = R M` points (`M = ifft.len()`) from its `K` lowest
/// entries `spectrum` (`K <= M / 2`, or `K = n / 2 + 1` with `M = n`), by the polyphase split.
pub(super) fn from_low_spectrum(
    spectrum: &[Complex64],
    n: usize,
    ifft: &dyn ComplexToReal<f64>,
    roots: &Roots,
) -> Result<Vec<f64>, AccountingError> {
    let m = ifft.len();
    let phases = n / m;
    let blocks = (0..phases.div_ceil(LEAF))
        .into_par_iter()
        .map(|block| {
            let first = block * LEAF;
            (first..(first + LEAF).min(phases))
                .map(|r| {
                    let mut half = ifft.make_input_vec();
                    for (l, (h, f)) in half.iter_mut().zip(spectrum).enumerate() {
                        *h = f * roots.get(r * l).conj();
                    }
                    // A real signal's first and (even length) last entries are real.
                    half[0].im = 0.0;
                    if m % 2 == 0 {
                        half[m / 2].im = 0.0;
                    }
                    let mut column = ifft.make_output_vec();
                    ifft.process(&mut half, &mut column).map_err(fft_error)?;
                    Ok(column)
                })
                .collect::<Result<Vec<Vec<f64>>, AccountingError>>()
        })
        .collect::<Result<Vec<_>, AccountingError>>()?;
    // Row `a` of a block, slots `a R + first ..`, is contiguous.
    let mut x = vec![0.0; n];
    for (block, columns) in blocks.iter().enumerate() {
        for a in 0..m {
            let row = &mut x[a * phases + block * LEAF..];
            for (slot, column) in row.iter_mut().zip(columns) {
                *slot = column[a];
            }
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use realfft::RealFftPlanner;

    /// A smooth, long-tailed test sequence of length `len`.
    fn sequence(len: usize) -> Vec<f64> {
        (0..len)
            .map(|j| {
                let t = j as f64 / len as f64;
                (-30.0 * (t - 0.3).powi(2)).exp() + 0.1 * (-5.0 * t).exp()
            })
            .collect()
    }

    fn naive_dft(x: &[f64], n: usize, l: usize) -> Complex64 {
        x.iter()
            .enumerate()
            .map(|(j, v)| {
                v * Complex64::from_polar(1.0, -2.0 * PI * ((j * l) % n) as f64 / n as f64)
            })
            .sum()
    }

    #[test]
    fn low_spectrum_and_its_inverse_match_the_naive_transforms() {
        let mut planner = RealFftPlanner::<f64>::new();
        // A sequence longer than the circle folds onto it.
        for (n, len, k) in [(360, 300, 20), (360, 500, 7), (96, 96, 49)] {
            let x = sequence(len);
            let roots = Roots::new(n);
            let m = transform_size(n, k);
            assert!(n % m == 0 && (m >= 2 * k || m == n), "{n} {k} {m}");
            let got = low_spectrum(&x, n, k, planner.plan_fft_forward(m).as_ref(), &roots).unwrap();
            for (l, g) in got.iter().enumerate() {
                let want = naive_dft(&x, n, l);
                assert!((g - want).norm() < 1e-12, "n {n} l {l}: {g} vs {want}");
            }
            let back =
                from_low_spectrum(&got, n, planner.plan_fft_inverse(m).as_ref(), &roots).unwrap();
            for (j, b) in back.iter().enumerate() {
                let want: f64 = (0..k)
                    .map(|l| {
                        let term = got[l]
                            * Complex64::from_polar(
                                1.0,
                                2.0 * PI * ((j * l) % n) as f64 / n as f64,
                            );
                        if l == 0 || 2 * l == n {
                            term.re
                        } else {
                            2.0 * term.re
                        }
                    })
                    .sum();
                assert!((b - want).abs() < 1e-11, "n {n} j {j}: {b} vs {want}");
            }
        }
    }

    #[test]
    fn cutoff_bounds_every_entry_it_drops() {
        // A smooth pmf that vanishes at both ends.
        let bump: Vec<f64> = (0..200)
            .map(|j| {
                let t = j as f64 / 200.0;
                (t * (1.0 - t)).powi(4) * (-3.0 * t).exp()
            })
            .collect();
        let mass: f64 = bump.iter().sum();
        let x: Vec<f64> = bump.iter().map(|p| p / mass).collect();
        let n = 1000;
        for count in [3, 20, 100] {
            // A floor of e^-20 keeps the test's entries far from underflow.
            let k = cutoff(&[&x], &[count], n, 20.0);
            assert!(k < n / 2, "count {count}: nothing dropped");
            for l in k..=n / 2 {
                let magnitude = naive_dft(&x, n, l).norm().powi(count as i32);
                assert!(
                    magnitude < (-20f64).exp(),
                    "count {count} l {l}: {magnitude}"
                );
            }
            // The bound is tight: the last entry above the floor is at least half way to it.
            let last = (1..k)
                .rev()
                .find(|&l| naive_dft(&x, n, l).norm().powi(count as i32) >= (-20f64).exp());
            assert!(
                last.is_some_and(|l| 2 * (l + 1) >= k),
                "count {count}: {k} {last:?}"
            );
        }
    }
}
