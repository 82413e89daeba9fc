//! Truncated power series: every lower-triangular Toeplitz matrix here is the series of its
//! first column, and matrix products and inverses are series products and inverses.
//!
//! - Product: `(a b)_t = sum_{j<=t} a_j b_{t-j}`, directly when short, else by a real FFT of
//!   size at least `len(a) + len(b) - 1` (no wrap-around), O(n log n).
//! - Inverse: Newton's iteration `g <- g - g (c g - 1)`, doubling the number of correct
//!   coefficients each round, so it costs a few products of size n (O(n log n)).
//! - Correlation `out_l = sum_{m>=l} h_m v_{m-l}`: the transpose of multiplying by `v`, which
//!   is how gradients flow back through a product.

use realfft::num_complex::Complex64;
use realfft::RealFftPlanner;

use crate::prv::fast_fft_size;

/// Products below this many multiply-adds are computed directly.
const DIRECT_WORK: usize = 1 << 14;

/// Series arithmetic with cached FFT plans.
pub(crate) struct Series {
    planner: RealFftPlanner<f64>,
}

impl Series {
    pub(crate) fn new() -> Self {
        Self {
            planner: RealFftPlanner::new(),
        }
    }

    /// The first `n` coefficients of `a(x) b(x)`.
    pub(crate) fn mul(&mut self, a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let a = &a[..a.len().min(n)];
        let b = &b[..b.len().min(n)];
        let mut out = vec![0.0; n];
        if a.is_empty() || b.is_empty() {
            return out;
        }
        if a.len().min(b.len()) * n <= DIRECT_WORK {
            for (i, &ai) in a.iter().enumerate() {
                for (o, &bj) in out[i..].iter_mut().zip(b) {
                    *o += ai * bj;
                }
            }
            return out;
        }
        let size = fast_fft_size(a.len() + b.len() - 1);
        let forward = self.planner.plan_fft_forward(size);
        let backward = self.planner.plan_fft_inverse(size);
        let spectrum = |x: &[f64]| {
            let mut input = forward.make_input_vec();
            input[..x.len()].copy_from_slice(x);
            let mut output = forward.make_output_vec();
            forward
                .process(&mut input, &mut output)
                .expect("buffers come from the plan");
            output
        };
        let fa = spectrum(a);
        let fb = spectrum(b);
        let mut product: Vec<Complex64> = fa.iter().zip(&fb).map(|(x, y)| x * y).collect();
        // The imaginary parts of the first and last bins are zero up to rounding; realfft
        // insists on exact zeros there.
        product[0].im = 0.0;
        if let Some(last) = product.last_mut() {
            last.im = 0.0;
        }
        let mut time = backward.make_output_vec();
        backward
            .process(&mut product, &mut time)
            .expect("buffers come from the plan");
        let scale = 1.0 / size as f64;
        for (o, t) in out.iter_mut().zip(&time) {
            *o = t * scale;
        }
        out
    }

    /// The first `n` coefficients of `1 / c(x)`; `c[0]` must be nonzero.
    pub(crate) fn inverse(&mut self, c: &[f64], n: usize) -> Vec<f64> {
        let mut g = vec![1.0 / c[0]];
        while g.len() < n {
            let m = g.len();
            let m2 = (2 * m).min(n);
            let mut e = self.mul(&c[..c.len().min(m2)], &g, m2);
            // c g = 1 + O(x^m): the first m coefficients are exactly known.
            e[..m].fill(0.0);
            let correction = self.mul(&g, &e[m..], m2 - m);
            g.extend(correction.iter().map(|x| -x));
        }
        g.truncate(n);
        g
    }

    /// `out_l = sum_{m >= l} h_m v_{m - l}` for `l < h.len()`: `v`'s product transposed.
    pub(crate) fn correlate(&mut self, h: &[f64], v: &[f64]) -> Vec<f64> {
        let n = h.len();
        let reversed: Vec<f64> = h.iter().rev().copied().collect();
        let mut out = self.mul(&reversed, v, n);
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        (0..n)
            .map(|t| {
                (0..=t)
                    .filter(|&j| j < a.len() && t - j < b.len())
                    .map(|j| a[j] * b[t - j])
                    .sum()
            })
            .collect()
    }

    #[test]
    fn fft_product_matches_the_direct_sum() {
        let mut s = Series::new();
        let a: Vec<f64> = (0..700).map(|i| 1.0 / (1.0 + i as f64).sqrt()).collect();
        let b: Vec<f64> = (0..500).map(|i| (-0.01 * i as f64).exp()).collect();
        let want = direct(&a, &b, 900);
        let got = s.mul(&a, &b, 900);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn inverse_of_one_minus_x_is_all_ones() {
        let mut s = Series::new();
        for n in [1, 2, 7, 300, 5000] {
            let g = s.inverse(&[1.0, -1.0], n);
            assert_eq!(g.len(), n);
            assert!(g.iter().all(|x| (x - 1.0).abs() < 1e-12), "n = {n}");
        }
    }

    #[test]
    fn correlation_is_the_transpose_of_the_product() {
        let mut s = Series::new();
        let v: Vec<f64> = (0..40).map(|i| (i as f64 * 0.3).sin()).collect();
        let h: Vec<f64> = (0..40).map(|i| (i as f64 * 0.7).cos()).collect();
        let x: Vec<f64> = (0..40).map(|i| 1.0 / (1.0 + i as f64)).collect();
        // <h, v * x> = <correlate(h, v), x>
        let lhs: f64 = h.iter().zip(s.mul(&v, &x, 40)).map(|(a, b)| a * b).sum();
        let rhs: f64 = s.correlate(&h, &v).iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
    }
}
