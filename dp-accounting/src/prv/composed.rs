//! Windows of the compositions and the composed PRV's epsilon (parts 4 and 5 of the error
//! argument in the parent module).
//!
//! Wrap-around and left-out spectrum: each FFT reads a window of the circle; mass outside it
//! wraps in. The spectrum entries a composition leaves out (below its floor, see `pmf` and
//! `spectrum`) move its result by a bounded total variation. Each block's composition may
//! misplace `delta_error / (6 T2)`, the final one `delta_error / 6` (one stage:
//! `delta_error / 3`): a hundredth to the left-out spectrum, the rest to the window's tails,
//! half on each side. Windows of sums of one-step pmfs: right end from
//! `log E[e^(lambda Y~)] <= lambda (rdp(lambda + 1) + h1/2) - log P[lo <= Y <= hi]` (the RDP of
//! order `alpha = lambda + 1` is exactly `log E[e^((alpha - 1) Y)] / (alpha - 1)`) and a
//! Chernoff bound over the RDP orders; left end from Bernstein's inequality with the pmf's exact
//! mean and variance and its lowest point. Windows of sums of block pmfs: Chernoff bounds on
//! both sides with the block pmfs' exact moment generating functions.
//!
//! `delta(eps) = E[(1 - e^(eps - Y))_+]` moves by at most the total variation and, on the event
//! that the errors stay within `epsilon_error`, by at most a shift of `epsilon_error`. With the
//! four parts above summing to `delta_error = delta / 1000`, the estimate inverts the computed
//! `delta`, and `eps_lower = eps(delta + delta_error) - eps_error`,
//! `eps_upper = eps(delta - delta_error) + eps_error` bracket the true epsilon. The accountant
//! reports `eps_upper`.

use super::one_step::OneStep;
use super::pmf::{lattice_window, Pmf, Window};

/// Window for the sum of `count` copies of each one-step pmf, each tail at most `beta` (see the
/// module docs).
pub(super) fn fine_window(parts: &[(&OneStep, u64)], beta: f64) -> Window {
    let log_inverse = -beta.ln();
    let right = (0..parts[0].0.log_mgf_bounds.len())
        .map(|j| {
            let lambda = parts[0].0.log_mgf_bounds[j].0;
            let cumulant: f64 = parts
                .iter()
                .map(|(s, c)| *c as f64 * s.log_mgf_bounds[j].1)
                .sum();
            (cumulant + log_inverse) / lambda
        })
        .fold(f64::INFINITY, f64::min);
    // Bernstein: P[sum (mean - Y~) >= s] <= exp(-s^2 / (2 (V + d s / 3))), d = max (mean - min).
    let mean: f64 = parts.iter().map(|(s, c)| *c as f64 * s.mean).sum();
    let variance: f64 = parts.iter().map(|(s, c)| *c as f64 * s.variance).sum();
    let reach = parts
        .iter()
        .map(|(s, _)| s.mean - s.pmf.value(0))
        .fold(0.0, f64::max);
    let third = reach * log_inverse / 3.0;
    let left = mean - (third + (third * third + 2.0 * variance * log_inverse).sqrt());
    let pmfs: Vec<(&Pmf, u64)> = parts.iter().map(|(s, c)| (&s.pmf, *c)).collect();
    lattice_window(&pmfs, left, right)
}

/// A composed, discretised PRV with suffix sums for delta and epsilon queries.
pub(super) struct ComposedPrv {
    /// The values from the first non-negative one (or the last below it): only those matter
    /// for epsilon >= 0. Entry `i` is at `t_i = (first + i) mesh`.
    pub(super) first: i64,
    pub(super) mesh: f64,
    /// `M_i = sum_{j >= i} p_j` and `S_i = sum_{j >= i} p_j e^(t_i - t_j)`, one entry past the
    /// last value (both 0). Scaled by `e^(t_i)`, `S_i <= M_i` cannot overflow, whatever the
    /// epsilon (an unscaled `sum p_j e^(-t_j)` underflows past t = 745, and `e^t` overflows past
    /// 709).
    pub(super) tail_mass: Vec<f64>,
    pub(super) tail_scaled: Vec<f64>,
}

impl ComposedPrv {
    /// Turns the pmf's masses into the suffix sums `M_i` in place.
    pub(super) fn new(pmf: Pmf) -> Self {
        let Pmf {
            start,
            mesh,
            p: mut tail_mass,
        } = pmf;
        let skip = ((-start).max(0) as usize).min(tail_mass.len() - 1);
        tail_mass.drain(..skip);
        tail_mass.push(0.0);
        let len = tail_mass.len();
        let decay = (-mesh).exp();
        let mut tail_scaled = vec![0.0; len];
        for i in (0..len - 1).rev() {
            let p = tail_mass[i];
            tail_mass[i] = tail_mass[i + 1] + p;
            tail_scaled[i] = p + decay * tail_scaled[i + 1];
        }
        Self {
            first: start + skip as i64,
            mesh,
            tail_mass,
            tail_scaled,
        }
    }

    pub(super) fn t(&self, i: usize) -> f64 {
        (self.first + i as i64) as f64 * self.mesh
    }

    /// `delta` on `[t_{i-1}, t_i]`: `M_i - e^(epsilon - t_i) S_i`.
    pub(super) fn delta_below(&self, i: usize, epsilon: f64) -> f64 {
        if self.tail_mass[i] == 0.0 {
            return 0.0;
        }
        (self.tail_mass[i] - (epsilon - self.t(i)).exp() * self.tail_scaled[i]).max(0.0)
    }

    /// `delta(epsilon) = sum_{t_j >= epsilon} p_j (1 - e^(epsilon - t_j))`.
    pub(super) fn delta(&self, epsilon: f64) -> f64 {
        let epsilon = epsilon.max(0.0);
        let i = ((epsilon - self.t(0)) / self.mesh).ceil().max(0.0) as usize;
        self.delta_below(i.min(self.tail_mass.len() - 1), epsilon)
    }

    /// The smallest epsilon >= 0 with `delta(epsilon) <= delta`.
    pub(super) fn epsilon(&self, delta: f64) -> f64 {
        if self.delta(0.0) <= delta {
            return 0.0;
        }
        // delta at grid points, M_i - S_i, decreases with i: find the first i at or below.
        let (mut lo, mut hi) = (0usize, self.tail_mass.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.tail_mass[mid] - self.tail_scaled[mid] <= delta {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        // On [t_{i-1}, t_i], delta(eps) = M_i - e^(eps - t_i) S_i.
        let i = lo.max(1);
        let eps = self.t(i) + ((self.tail_mass[i] - delta) / self.tail_scaled[i]).ln();
        eps.clamp(self.t(i - 1).max(0.0), self.t(i))
    }
}
