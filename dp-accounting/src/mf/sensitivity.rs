//! How often one example takes part, and the L2 sensitivity of a strategy C under it.
//!
//! An example's clipped gradient (norm at most the clip norm) enters the rows of X at its
//! participation steps. Under **b-min-sep participation** any two are at least `b` steps apart
//! and there are at most `k` of them (with `n = k b` this covers (k, b)-fixed-epoch training:
//! a fixed data order, one pass per epoch). The sensitivity is
//! `sens(C) = sup ||C (X - X')||_F / clip` over such patterns. For lower-triangular Toeplitz C
//! with first column `c` and `k' = min(k, ceil(n / b))`:
//!
//! - **Banded with `p <= b` bands** (or `k' = 1`): an example's columns are orthogonal, so
//!   `sens^2 = max_pi sum_{i in pi} ||C[:, i]||^2`; column norms do not grow with `i`, so the
//!   maximum takes columns `0, b, ..., (k'-1) b` (Choquette-Choo et al. 2023, BandMF; equals
//!   `k ||c||^2` when `n = k b`).
//! - **Non-negative, non-increasing `c`**: the worst pattern is `0, b, 2b, ...` and
//!   `sens^2 = sum_{i<n} (sum_{j<k'} c_{i - j b})^2` (Kalinin and Lampert 2024, Thm 2).
//! - **Anything else**: the same formula with `c` replaced by its smallest non-increasing
//!   majorant of `|c|` is an upper bound (as jax_privacy does); [`Sensitivity::exact`] is then
//!   false.
//!
//! The window sums `s_i = sum_{j<k'} c_{i - j b}` satisfy `s_i = s_{i-b} + c_i - c_{i - k' b}`,
//! so everything is O(n).

use serde::{Deserialize, Serialize};

use crate::error::AccountingError;

/// How often, and how far apart, one example takes part in the `n` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Participation {
    max_participations: u64,
    min_separation: u64,
}

impl Participation {
    /// Each example takes part in at most one step.
    pub fn single() -> Self {
        Self {
            max_participations: 1,
            min_separation: 1,
        }
    }

    /// At most `k` participations, any two at least `b` steps apart.
    pub fn min_separation(k: u64, b: u64) -> Result<Self, AccountingError> {
        if k == 0 {
            return Err(invalid("max_participations", k, "at least 1"));
        }
        if b == 0 {
            return Err(invalid("min_separation", b, "at least 1 step"));
        }
        Ok(Self {
            max_participations: k,
            min_separation: b,
        })
    }

    /// `epochs` passes over the data in the same order, `n` steps in all: at most `epochs`
    /// participations, `b = floor(n / epochs)` steps apart.
    pub fn epochs(n: usize, epochs: u64) -> Result<Self, AccountingError> {
        if epochs == 0 || epochs > n as u64 {
            return Err(invalid(
                "epochs",
                epochs,
                "between 1 and the number of steps",
            ));
        }
        Self::min_separation(epochs, n as u64 / epochs)
    }

    /// The most times one example takes part (k).
    pub fn max_participations(&self) -> u64 {
        self.max_participations
    }

    /// The fewest steps between two participations of one example (b).
    pub fn min_separation_steps(&self) -> u64 {
        self.min_separation
    }

    /// `k' = min(k, ceil(n / b))`: the participations that fit into `n` steps.
    pub fn effective(&self, n: usize) -> usize {
        let fit = (n as u64).div_ceil(self.min_separation).max(1);
        self.max_participations.min(fit) as usize
    }

    /// A description for reports.
    pub fn describe(&self) -> String {
        if self.max_participations == 1 {
            "single participation".into()
        } else {
            format!(
                "b-min-sep: at most k = {} participations, at least b = {} steps apart",
                self.max_participations, self.min_separation
            )
        }
    }
}

fn invalid(name: &'static str, value: u64, expected: &'static str) -> AccountingError {
    AccountingError::InvalidParameter {
        name,
        value: value as f64,
        expected,
    }
}

/// The squared sensitivity of a strategy and whether it is exact or an upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// `sens(C)^2`.
    pub squared: f64,
    /// True when `squared` is the exact supremum (banded with orthogonal participations, or
    /// non-negative non-increasing coefficients); false for the majorant upper bound.
    pub exact: bool,
}

impl Sensitivity {
    /// `sens(C)`.
    pub fn value(&self) -> f64 {
        self.squared.sqrt()
    }
}

/// Relative slack, in units of `|c_0|`, within which coefficients count as non-increasing.
const MONOTONE_SLACK: f64 = 1e-12;

/// The sensitivity of the `n x n` lower-triangular Toeplitz matrix whose first column is
/// `c` (zero beyond `c.len()`; `c.len() < n` means banded).
pub(crate) fn toeplitz_sensitivity(c: &[f64], n: usize, p: &Participation) -> Sensitivity {
    let c = &c[..c.len().min(n)];
    let k = p.effective(n);
    let b = p.min_separation as usize;
    if k == 1 || c.len() <= b {
        return Sensitivity {
            squared: banded_sensitivity_squared(c, n, b, k),
            exact: true,
        };
    }
    // Smallest non-increasing majorant of |c|.
    let mut majorant = vec![0.0; c.len()];
    let mut running: f64 = 0.0;
    for (m, x) in majorant.iter_mut().zip(c).rev() {
        running = running.max(x.abs());
        *m = running;
    }
    let slack = MONOTONE_SLACK * c[0].abs();
    let exact = c.iter().zip(&majorant).all(|(x, m)| m - x <= slack);
    let squared = window_sums(&majorant, n, b, k).iter().map(|s| s * s).sum();
    Sensitivity { squared, exact }
}

/// `sum_{j<k} ||C[:, j b]||^2` for a Toeplitz C with first column `c` (length at most n).
pub(crate) fn banded_sensitivity_squared(c: &[f64], n: usize, b: usize, k: usize) -> f64 {
    column_weights(c.len(), n, b, k)
        .iter()
        .zip(c)
        .map(|(w, x)| w * x * x)
        .sum()
}

/// `w_m = #{j < k : j b + m < n}`: how many of the columns `0, b, ..., (k-1) b` reach
/// coefficient `m`, so that `banded_sensitivity_squared = sum_m w_m c_m^2`.
pub(crate) fn column_weights(len: usize, n: usize, b: usize, k: usize) -> Vec<f64> {
    (0..len)
        .map(|m| k.min(n.saturating_sub(m).div_ceil(b)) as f64)
        .collect()
}

/// `s_i = sum_{j<k} c_{i - j b}` for `i < n` (`c` zero outside `0..c.len()`).
pub(crate) fn window_sums(c: &[f64], n: usize, b: usize, k: usize) -> Vec<f64> {
    let at = |i: usize| c.get(i).copied().unwrap_or(0.0);
    let mut s = vec![0.0; n];
    for i in 0..n {
        let mut v = at(i);
        if i >= b {
            v += s[i - b];
        }
        if let Some(old) = i.checked_sub(k * b) {
            v -= at(old);
        }
        s[i] = v;
    }
    s
}

/// The gradient of `sum_i s_i^2` with respect to `c_m`, `m < len`:
/// `2 sum_{j<k, m + j b < n} s_{m + j b}`.
pub(crate) fn window_sums_gradient(s: &[f64], len: usize, b: usize, k: usize) -> Vec<f64> {
    let n = s.len();
    let mut g = vec![0.0; n];
    for m in (0..n).rev() {
        let mut v = 2.0 * s[m];
        if m + b < n {
            v += g[m + b];
        }
        if m + k * b < n {
            v -= 2.0 * s[m + k * b];
        }
        g[m] = v;
    }
    g.truncate(len);
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact supremum for non-negative C by enumerating every b-min-sep pattern
    /// (scalar contributions of +1 are worst when C is non-negative).
    fn brute_force(c: &[f64], n: usize, b: usize, k: usize) -> f64 {
        fn walk(
            c: &[f64],
            n: usize,
            b: usize,
            k: usize,
            from: usize,
            cols: &mut Vec<usize>,
        ) -> f64 {
            let at = |i: usize, j: usize| {
                if i >= j && i - j < c.len() {
                    c[i - j]
                } else {
                    0.0
                }
            };
            let value: f64 = (0..n)
                .map(|i| cols.iter().map(|&j| at(i, j)).sum::<f64>().powi(2))
                .sum();
            let mut best = value;
            if cols.len() < k {
                for j in from..n {
                    cols.push(j);
                    best = best.max(walk(c, n, b, k, j + b, cols));
                    cols.pop();
                }
            }
            best
        }
        walk(c, n, b, k, 0, &mut Vec::new())
    }

    #[test]
    fn formulas_match_brute_force() {
        let c = [1.0, 0.6, 0.5, 0.3, 0.25, 0.1, 0.05];
        let n = 9;
        for b in 1..=4 {
            for k in 1..=4 {
                let p = Participation::min_separation(k as u64, b as u64).unwrap();
                let s = toeplitz_sensitivity(&c, n, &p);
                assert!(s.exact);
                let want = brute_force(&c, n, b, k);
                assert!(
                    (s.squared - want).abs() < 1e-12,
                    "b={b} k={k}: {} vs {want}",
                    s.squared
                );
            }
        }
        // Banded with p <= b: orthogonal columns, signs do not matter.
        let banded = [1.0, -0.4, 0.7];
        let p = Participation::min_separation(3, 3).unwrap();
        let s = toeplitz_sensitivity(&banded, 8, &p);
        assert!(s.exact);
        // Columns 0, 3, 6 of an 8 x 8 matrix: full, full, truncated to 2 rows.
        let full = 1.0 + 0.16 + 0.49;
        assert!((s.squared - (2.0 * full + 1.16)).abs() < 1e-12);
    }

    #[test]
    fn non_monotone_coefficients_give_an_upper_bound() {
        let c = [1.0, 0.2, 0.5];
        let p = Participation::min_separation(2, 1).unwrap();
        let s = toeplitz_sensitivity(&c, 4, &p);
        assert!(!s.exact);
        assert!(s.squared >= brute_force(&c, 4, 1, 2));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let c = vec![1.0, 0.7, 0.4, 0.35, 0.1];
        let (n, b, k) = (11, 2, 4);
        let f = |c: &[f64]| window_sums(c, n, b, k).iter().map(|s| s * s).sum::<f64>();
        let g = window_sums_gradient(&window_sums(&c, n, b, k), c.len(), b, k);
        for m in 0..c.len() {
            let mut up = c.clone();
            up[m] += 1e-6;
            let mut down = c.clone();
            down[m] -= 1e-6;
            let fd = (f(&up) - f(&down)) / 2e-6;
            assert!((fd - g[m]).abs() < 1e-6, "{m}: {fd} vs {}", g[m]);
        }
    }

    #[test]
    fn participation_is_validated() {
        assert!(Participation::min_separation(0, 3).is_err());
        assert!(Participation::min_separation(2, 0).is_err());
        assert!(Participation::epochs(10, 11).is_err());
        let p = Participation::epochs(10, 3).unwrap();
        assert_eq!((p.max_participations(), p.min_separation_steps()), (3, 3));
        assert_eq!(
            Participation::min_separation(5, 4).unwrap().effective(10),
            3
        );
    }
}
