//! The optimal banded Toeplitz strategy (McKenna 2024; jax_privacy's
//! `toeplitz.optimize_banded_toeplitz`).
//!
//! With `p` bands and `p <= b` (or a single participation) an example's columns of C are
//! orthogonal, so `sens^2 = sum_m w_m c_m^2` with `w_m = #{j < k' : j b + m < n}` (`k ||c||^2`
//! when `n = k b`). The loss `sens^2 x error` is scale-free, so `c_0 = 1` is fixed and
//! `log sens^2 + log error` is minimized over `c_1 .. c_{p-1}` by L-BFGS from the banded
//! square root. Its gradient (with `d = 1/c`, `beta = a d`, error `E = sum_j v_j beta_j^2`):
//!
//! ```text
//! dE/dd = A^T (2 v beta) =: h,   dE/dc_l = -sum_{m >= l} h_m (d d)_{m - l}
//! ```
//!
//! since `delta d = -d (delta c) d`. The inverse, the products and the correlation are FFT
//! series operations, so one evaluation is O(n log n) whatever the number of bands.

use super::lbfgs::{minimize, Options};
use super::metrics::Objective;
use super::sensitivity::{column_weights, Participation};
use super::series::Series;
use super::strategy::Strategy;
use super::workload::Workload;
use crate::error::{check_range, AccountingError};

/// L-BFGS iterations at most.
const MAX_ITERATIONS: usize = 1000;
/// Stop when the loss improves by less than this relative amount for a few iterations.
const TOLERANCE: f64 = 1e-12;

/// The banded Toeplitz strategy with `bands` bands that minimizes `objective` for `workload`
/// over `n` steps under `participation`. With more than one participation `bands` must be at
/// most the minimum separation b (otherwise an example's columns overlap).
pub fn optimize_banded(
    n: usize,
    bands: usize,
    workload: &Workload,
    participation: &Participation,
    objective: Objective,
) -> Result<Strategy, AccountingError> {
    // Validates n and bands.
    let start = Strategy::banded_square_root(n, bands, workload)?;
    let k = participation.effective(n);
    let b = participation.min_separation_steps() as usize;
    if k > 1 {
        check_range(
            "bands",
            bands as f64,
            bands <= b,
            "at most the minimum separation b when an example takes part more than once",
        )?;
    }
    let sens_weights = column_weights(bands, n, b, k);
    let error_weights = objective.weights(n);
    let mut series = Series::new();
    let loss = |x: &[f64], grad: &mut [f64]| {
        let mut c = Vec::with_capacity(bands);
        c.push(1.0);
        c.extend_from_slice(x);
        let sens: f64 = sens_weights.iter().zip(&c).map(|(w, x)| w * x * x).sum();
        let d = series.inverse(&c, n);
        let mut beta = d.clone();
        workload.apply(&mut beta);
        let error: f64 = error_weights
            .iter()
            .zip(&beta)
            .map(|(v, x)| v * x * x)
            .sum();
        if !(error.is_finite() && sens > 0.0) {
            return f64::INFINITY;
        }
        let mut h: Vec<f64> = error_weights
            .iter()
            .zip(&beta)
            .map(|(v, x)| 2.0 * v * x)
            .collect();
        workload.apply_transpose(&mut h);
        let dd = series.mul(&d, &d, n);
        let d_error = series.correlate(&h, &dd);
        for (l, g) in grad.iter_mut().enumerate() {
            let m = l + 1;
            *g = 2.0 * sens_weights[m] * c[m] / sens - d_error[m] / error;
        }
        sens.ln() + error.ln()
    };
    let x0 = start.coefs()[1..bands].to_vec();
    let best = minimize(
        loss,
        x0,
        &Options {
            max_iterations: MAX_ITERATIONS,
            tolerance: TOLERANCE,
        },
    );
    let mut coefs = Vec::with_capacity(bands);
    coefs.push(1.0);
    coefs.extend_from_slice(&best.x);
    Strategy::banded(n, coefs)
}
