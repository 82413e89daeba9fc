//! Optimizing a BLT strategy (Dvijotham, McMahan et al. 2024; McMahan et al. 2024 for
//! several participations; jax_privacy's `buffered_toeplitz.optimize`).
//!
//! The `m` poles and zeros are kept interlaced, `1 > theta_1 > thetah_1 > ... > thetah_m > 0`,
//! by writing them as running products of logistic sigmoids,
//! `u_j = prod_{i<=j} sigmoid(z_i)` and `(theta_1, thetah_1, theta_2, ...) = (u_1, u_2, ...)`,
//! which is jax_privacy's well-behaved class: C has positive non-increasing coefficients, so
//! the b-min-sep Toeplitz sensitivity formula is exact. The loss
//! `log sens^2 + log error` is computed from the `n` coefficients of C and `C^{-1}`, O(n m)
//! per evaluation, with its exact gradient: through the coefficients
//! (`dc_t/domega_i = theta_i^(t-1)`, `dc_t/dtheta_i = omega_i (t-1) theta_i^(t-2)`), then
//! through the output scales `omega_i = prod_j (theta_i - thetah_j) / prod_{j != i}
//! (theta_i - theta_j)`, then through the sigmoids.
//!
//! The search adds one buffer at a time: each size starts from a geometric spread of poles and
//! zeros and from the best smaller BLT with a nearly cancelling pole/zero pair inserted at
//! each place, so more buffers are never worse than fewer.

use super::blt::{blt_coefs, output_scales, Blt};
use super::lbfgs::{minimize, Options};
use super::metrics::Objective;
use super::sensitivity::{window_sums, window_sums_gradient, Participation};
use super::workload::Workload;
use crate::error::{check_range, AccountingError};

/// L-BFGS iterations at most, per start.
const MAX_ITERATIONS: usize = 400;
/// Stop when the loss improves by less than this relative amount for a few iterations.
const TOLERANCE: f64 = 1e-12;
/// Relative gap of an inserted pole/zero pair (it nearly cancels, so the loss barely moves).
const INSERTED_GAP: f64 = 1e-4;

/// The BLT with `buffers` buffers that minimizes `objective` for `workload` over `n` steps
/// under `participation`. Make the strategy with [`super::Strategy::blt`].
pub fn optimize_blt(
    n: usize,
    buffers: usize,
    workload: &Workload,
    participation: &Participation,
    objective: Objective,
) -> Result<Blt, AccountingError> {
    check_range("steps", n as f64, n >= 2, "at least 2 steps")?;
    check_range(
        "buffers",
        buffers as f64,
        (1..=16).contains(&buffers),
        "between 1 and 16",
    )?;
    let problem = Problem {
        n,
        b: participation.min_separation_steps() as usize,
        k: participation.effective(n),
        workload: *workload,
        weights: objective.weights(n),
    };
    let options = Options {
        max_iterations: MAX_ITERATIONS,
        tolerance: TOLERANCE,
    };
    let run = |u: &[f64]| {
        let m = minimize(|z, g| problem.loss(z, g), to_logits(u), &options);
        (from_logits(&m.x), m.value)
    };
    // Where the first pole sits: about 3 k' / n below 1 for the optimal BLTs seen.
    let nearest = (3.0 * problem.k as f64 / n as f64).min(0.5);
    let mut best: Option<(Vec<f64>, f64)> = None;
    for m in 1..=buffers {
        let mut starts = vec![geometric_spread(2 * m, nearest, 0.9)];
        if let Some((u, _)) = &best {
            for pair in 0..m {
                starts.push(insert_pair(u, pair));
            }
        }
        let mut best_m: Option<(Vec<f64>, f64)> = None;
        for start in starts {
            let (u, value) = run(&start);
            if value.is_finite() && best_m.as_ref().is_none_or(|b| value < b.1) {
                best_m = Some((u, value));
            }
        }
        best = best_m;
    }
    let (u, _) =
        best.ok_or_else(|| AccountingError::Numerical("no BLT start gave a finite loss".into()))?;
    let (poles, zeros): (Vec<f64>, Vec<f64>) = u.chunks(2).map(|p| (p[0], p[1])).unzip();
    Blt::from_decays(poles, zeros)
}

/// `count` decreasing values in (0, 1) with `1 - u` geometric from `nearest` to `farthest`.
fn geometric_spread(count: usize, nearest: f64, farthest: f64) -> Vec<f64> {
    let ratio = if count > 1 {
        (farthest / nearest).powf(1.0 / (count - 1) as f64)
    } else {
        1.0
    };
    (0..count)
        .map(|i| 1.0 - nearest * ratio.powi(i as i32))
        .collect()
}

/// `u` (poles and zeros interlaced) with a nearly cancelling pole/zero pair inserted before
/// pair `pair` (or after the last one), in the middle of the gap.
fn insert_pair(u: &[f64], pair: usize) -> Vec<f64> {
    let above = if pair == 0 { 1.0 } else { u[2 * pair - 1] };
    let below = u.get(2 * pair).copied().unwrap_or(0.0);
    let pole = 0.5 * (above + below);
    let zero = pole - INSERTED_GAP * (pole - below);
    let mut out = u[..2 * pair].to_vec();
    out.extend([pole, zero]);
    out.extend_from_slice(&u[2 * pair..]);
    out
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `z_j = logit(u_j / u_{j-1})` (with `u_0 = 1`).
fn to_logits(u: &[f64]) -> Vec<f64> {
    let mut previous = 1.0;
    u.iter()
        .map(|&x| {
            let r = x / previous;
            previous = x;
            (r / (1.0 - r)).ln()
        })
        .collect()
}

/// `u_j = prod_{i<=j} sigmoid(z_i)`.
fn from_logits(z: &[f64]) -> Vec<f64> {
    let mut product = 1.0;
    z.iter()
        .map(|&x| {
            product *= sigmoid(x);
            product
        })
        .collect()
}

/// The loss of a BLT for fixed n, participation, workload and objective.
struct Problem {
    n: usize,
    b: usize,
    k: usize,
    workload: Workload,
    weights: Vec<f64>,
}

impl Problem {
    /// `log sens^2 + log error` at logits `z`, with its gradient.
    fn loss(&self, z: &[f64], grad: &mut [f64]) -> f64 {
        let n = self.n;
        let u = from_logits(z);
        let m = u.len() / 2;
        let (poles, zeros): (Vec<f64>, Vec<f64>) = u.chunks(2).map(|p| (p[0], p[1])).unzip();
        let omega = output_scales(&poles, &zeros);
        let omegah = output_scales(&zeros, &poles);
        let c = blt_coefs(&poles, &omega, n);
        let d = blt_coefs(&zeros, &omegah, n);

        let s = window_sums(&c, n, self.b, self.k);
        let sens: f64 = s.iter().map(|x| x * x).sum();
        let g_c = window_sums_gradient(&s, n, self.b, self.k);

        let mut beta = d;
        self.workload.apply(&mut beta);
        let error: f64 = self.weights.iter().zip(&beta).map(|(v, x)| v * x * x).sum();
        if !(sens.is_finite() && error.is_finite() && sens > 0.0 && error > 0.0) {
            return f64::INFINITY;
        }
        let mut g_d: Vec<f64> = self
            .weights
            .iter()
            .zip(&beta)
            .map(|(v, x)| 2.0 * v * x)
            .collect();
        self.workload.apply_transpose(&mut g_d);

        // Gradients of log sens^2 and log error with respect to the decays and scales.
        let (d_omega, d_poles) = coefficient_gradients(&g_c, &poles, &omega, 1.0 / sens);
        let (d_omegah, d_zeros) = coefficient_gradients(&g_d, &zeros, &omegah, 1.0 / error);
        let mut d_pole_total = d_poles;
        let mut d_zero_total = d_zeros;
        // omega = scales(poles, zeros), omegah = scales(zeros, poles).
        let (omega_by_poles, omega_by_zeros) = scale_jacobian(&poles, &zeros);
        let (omegah_by_zeros, omegah_by_poles) = scale_jacobian(&zeros, &poles);
        for i in 0..m {
            for l in 0..m {
                d_pole_total[l] +=
                    d_omega[i] * omega_by_poles[i][l] + d_omegah[i] * omegah_by_poles[i][l];
                d_zero_total[l] +=
                    d_omega[i] * omega_by_zeros[i][l] + d_omegah[i] * omegah_by_zeros[i][l];
            }
        }
        // Through u_j = prod_{i<=j} sigmoid(z_i): du_j/dz_i = u_j (1 - sigmoid(z_i)), i <= j.
        let mut tail = 0.0;
        for j in (0..2 * m).rev() {
            let d_u = if j % 2 == 0 {
                d_pole_total[j / 2]
            } else {
                d_zero_total[j / 2]
            };
            tail += u[j] * d_u;
            grad[j] = (1.0 - sigmoid(z[j])) * tail;
        }
        sens.ln() + error.ln()
    }
}

/// For coefficients `x_t = sum_i scale_i decay_i^(t-1)` (t >= 1) and an outer gradient `g`,
/// returns `scaling x (sum_t g_t dx_t/dscale_i, sum_t g_t dx_t/ddecay_i)`.
fn coefficient_gradients(
    g: &[f64],
    decay: &[f64],
    scale: &[f64],
    scaling: f64,
) -> (Vec<f64>, Vec<f64>) {
    decay
        .iter()
        .zip(scale)
        .map(|(&theta, &omega)| {
            // power = theta^(t-1), slope = (t-1) theta^(t-2).
            let (mut power, mut slope) = (1.0, 0.0);
            let (mut by_scale, mut by_decay) = (0.0, 0.0);
            for &gt in &g[1..] {
                by_scale += gt * power;
                by_decay += gt * slope;
                slope = slope * theta + power;
                power *= theta;
            }
            (scaling * by_scale, scaling * omega * by_decay)
        })
        .unzip()
}

/// The Jacobians of `omega_i = prod_j (p_i - z_j) / prod_{l != i} (p_i - p_l)`:
/// `(d omega_i / d p_l, d omega_i / d z_j)`, written without dividing by `p_i - z_j` so that
/// a cancelling pair (`p_i = z_j`) is harmless.
fn scale_jacobian(p: &[f64], z: &[f64]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let product_except = |x: f64, of: &[f64], skip: usize| -> f64 {
        of.iter()
            .enumerate()
            .filter(|&(q, _)| q != skip)
            .map(|(_, y)| x - y)
            .product()
    };
    p.iter()
        .enumerate()
        .map(|(i, &pi)| {
            let den = product_except(pi, p, i);
            let omega = product_except(pi, z, usize::MAX) / den;
            let by_z: Vec<f64> = (0..z.len())
                .map(|j| -product_except(pi, z, j) / den)
                .collect();
            let mut by_p: Vec<f64> = p
                .iter()
                .enumerate()
                .map(|(l, pl)| if l == i { 0.0 } else { omega / (pi - pl) })
                .collect();
            // d omega_i / d p_i = sum_j prod_{q != j} (p_i - z_q) / den - sum_{l != i} omega_i / (p_i - p_l).
            by_p[i] = -by_z.iter().sum::<f64>() - by_p.iter().sum::<f64>();
            (by_p, by_z)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let problem = Problem {
            n: 60,
            b: 15,
            k: 4,
            workload: Workload::momentum(0.5).unwrap(),
            weights: Objective::Mean.weights(60),
        };
        let z = to_logits(&[0.97, 0.9, 0.6, 0.3, 0.2, 0.05]);
        let mut g = vec![0.0; z.len()];
        problem.loss(&z, &mut g);
        let mut scratch = vec![0.0; z.len()];
        for i in 0..z.len() {
            let mut up = z.clone();
            up[i] += 1e-6;
            let mut down = z.clone();
            down[i] -= 1e-6;
            let fd = (problem.loss(&up, &mut scratch) - problem.loss(&down, &mut scratch)) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{i}: {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn logits_round_trip_and_insertion_keeps_interlacing() {
        let u = vec![0.99, 0.9, 0.5, 0.1];
        let back = from_logits(&to_logits(&u));
        assert!(u.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-14));
        for pair in 0..=2 {
            let v = insert_pair(&u, pair);
            assert_eq!(v.len(), 6);
            assert!(v.windows(2).all(|w| w[0] > w[1]) && v[0] < 1.0 && v[5] > 0.0);
        }
    }
}
