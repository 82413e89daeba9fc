//! Tuning nu-DP-FTRL's damping for the error (Choquette-Choo, Dvijotham, Pillutla et al.
//! 2024 tie nu to the learning problem; here it minimizes the loss instead).
//!
//! The loss is a smooth function of `log(1 - nu)`: it is scanned on a grid from
//! `1 - nu = 0.01 / n` to `0.99`, the best grid cell is narrowed by golden-section search, and
//! the square root (`nu = 1`) is kept if it is better. Each evaluation is O(n).

use super::metrics::Objective;
use super::sensitivity::Participation;
use super::strategy::Strategy;
use super::workload::Workload;
use crate::error::AccountingError;

const GRID: usize = 48;
const GOLDEN_STEPS: usize = 60;

/// The nu-DP-FTRL strategy whose nu minimizes `objective` for `workload` under
/// `participation`.
pub fn optimize_nu(
    n: usize,
    workload: &Workload,
    participation: &Participation,
    objective: Objective,
) -> Result<Strategy, AccountingError> {
    let loss_at = |log_gap: f64| -> Result<(f64, Strategy), AccountingError> {
        let nu = -log_gap.exp_m1();
        let s = Strategy::nu_dp_ftrl(n, nu)?;
        Ok((s.evaluate(workload, participation).loss(objective), s))
    };
    let (lo, hi) = ((0.01 / n as f64).ln(), 0.99f64.ln());
    let grid: Vec<f64> = (0..GRID)
        .map(|i| lo + (hi - lo) * i as f64 / (GRID - 1) as f64)
        .collect();
    let mut values = Vec::with_capacity(GRID);
    for &x in &grid {
        values.push(loss_at(x)?.0);
    }
    let best = (0..GRID)
        .min_by(|&i, &j| values[i].total_cmp(&values[j]))
        .unwrap_or(0);
    let (mut a, mut b) = (grid[best.saturating_sub(1)], grid[(best + 1).min(GRID - 1)]);
    let ratio = 0.5 * (5f64.sqrt() - 1.0);
    let mut x1 = b - ratio * (b - a);
    let mut x2 = a + ratio * (b - a);
    let (mut f1, mut f2) = (loss_at(x1)?.0, loss_at(x2)?.0);
    for _ in 0..GOLDEN_STEPS {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - ratio * (b - a);
            f1 = loss_at(x1)?.0;
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + ratio * (b - a);
            f2 = loss_at(x2)?.0;
        }
    }
    let (tuned_loss, tuned) = loss_at(if f1 <= f2 { x1 } else { x2 })?;
    let sqrt = Strategy::nu_dp_ftrl(n, 1.0)?;
    if sqrt.evaluate(workload, participation).loss(objective) < tuned_loss {
        Ok(sqrt)
    } else {
        Ok(tuned)
    }
}
