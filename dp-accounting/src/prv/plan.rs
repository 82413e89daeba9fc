//! The plan of a composition: the block length and the fine mesh, and the share of the
//! error budget each rounding takes (parts 2 and 3 of the error argument in the parent module).
//!
//! Regridding: each block's split has an error `W` of conditional mean zero in an interval of
//! width `h2`, so `E[e^(lambda W) | past] <= e^(lambda^2 h2^2 / 8)` (Hoeffding's lemma). The
//! sum of all blocks is split once more, to the final mesh `h3 = m3 h2`, with one such error of
//! width `h3`.
//! Taking, block by block, the `T1` errors `Z - E[Z]` (independent, `|Z - E[Z]| <= c = h1/2 +
//! mu`, variance `<= v`) and then the block's `W`, and last the final split's, Bernstein's
//! moment bound gives `P[|total - T mu| >= s] <= 2 exp(-s^2 / (2 (V + c s / 3)))` with
//! `V = T v + T2 h2^2 / 4 + h3^2 / 4`. With `s = epsilon_error - T mu` this is kept under
//! `eta = delta_error / 3`. The fine mesh is planned for `v = 1.05 h1^2 / 12` and two thirds of
//! the budget `s^2 / (2 log(2 / eta))` (all of it for one stage); after discretising, the
//! blocks' splits take three quarters of what the measured `v` and `mu` leave and the final
//! split the rest, and a fine mesh whose bounds overrun the budget shrinks by 0.7 and is
//! discretised again. (The cell-centred variance `h1^2 / 12` instead of Hoeffding's `h1^2 / 4`
//! lets `h1` grow by about `sqrt(3)`.)
//!
//! The block length `T1` (at most `ceil(3 sqrt(T))`, and at least half of it; a divisor of the
//! largest count if there is one in that range) keeps both lattices short: for q = 0.01, sigma = 1,
//! T = 1e5, eps_error = 0.01 a one-step pmf of 2.2e5 cells (h1 = 1.35e-5), a fine FFT window of
//! 5.2e5 points and a coarse one of 4.0e5 (h2 = 10 h1), against 7e6 points for one stage on a
//! symmetric domain. Of those circles' spectra only the lowest 254 and 26 entries are above
//! the cutoff, and the final lattice has 5.0e4 points (h3 = 8 h2).

use super::one_step::OneStep;
use super::pmf::smooth_at_most;
use super::BLOCK_PER_SQRT_STEP;

/// Share of the variance budget planned for the fine stage's rounding.
pub(super) const FINE_SHARE: f64 = 2.0 / 3.0;

/// Share of the variance budget planned for a single stage's rounding (the rest is slack for
/// Bernstein's range term).
pub(super) const SINGLE_STAGE_SHARE: f64 = 0.95;

/// Share of `epsilon_error` planned for the rounding errors' total bias.
pub(super) const BIAS_SHARE: f64 = 0.02;

/// Planned `E[Z^2] / (h1^2 / 12)` for one step's rounding error `Z` (1 for a smooth density).
pub(super) const ASSUMED_SECOND_MOMENT: f64 = 1.05;

/// Share of each composition's budget for mass it may misplace that goes to the spectrum
/// entries it leaves out (the window's two tails take the rest).
pub(super) const SPECTRUM_SHARE: f64 = 0.01;

/// A composition's budget for misplaced mass as the tail its window may miss on each side and
/// the total variation its left-out spectrum may add.
pub(super) fn split_budget(budget: f64) -> (f64, f64) {
    (
        (1.0 - SPECTRUM_SHARE) * budget / 2.0,
        SPECTRUM_SHARE * budget,
    )
}

/// Share of what the fine stage leaves of the variance budget planned for the final split (the
/// blocks' splits take the rest).
pub(super) const FINAL_SHARE: f64 = 0.25;

/// Times the fine mesh shrinks when its measured rounding bounds overrun the budget.
pub(super) const SHRINK: f64 = 0.7;

/// Discretisations tried before giving up.
pub(super) const MAX_TRIES: usize = 8;

/// Block length and the planned fine mesh (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) epsilon_error: f64,
    /// `log(2 / eta)`, `eta` the probability that the rounding errors exceed `epsilon_error`.
    pub(super) log_two_over_eta: f64,
    pub(super) fine_mesh: f64,
    /// Steps per block `T1`.
    pub(super) block: u64,
    /// Number of blocks `T2`, remainders included; 1 for a single stage.
    pub(super) blocks: u64,
}

impl Plan {
    pub(super) fn new(epsilon_error: f64, delta_error: f64, steps: &[(f64, f64, u64)]) -> Self {
        let total = steps.iter().map(|s| s.2).sum::<u64>() as f64;
        let log_two_over_eta = (6.0 / delta_error).ln();
        // The variance budget if the bias took its planned share.
        let budget = ((1.0 - BIAS_SHARE) * epsilon_error).powi(2) / (2.0 * log_two_over_eta);
        let fine_mesh =
            |share: f64| (12.0 * share * budget / (ASSUMED_SECOND_MOMENT * total)).sqrt();
        // A block length dividing the largest count, if one is near the target, saves the
        // remainder block's FFT.
        let target = ((BLOCK_PER_SQRT_STEP * total.sqrt()).ceil() as u64).max(1);
        let largest = steps.iter().map(|s| s.2).max().unwrap_or(1);
        let block = (target.div_ceil(2)..=target)
            .rev()
            .find(|b| largest % b == 0)
            .unwrap_or(target);
        let blocks: u64 = steps.iter().map(|s| s.2.div_ceil(block)).sum();
        let coarse_mesh = (4.0 * (1.0 - FINE_SHARE) * budget / blocks as f64).sqrt();
        let plan = Plan {
            epsilon_error,
            log_two_over_eta,
            fine_mesh: fine_mesh(FINE_SHARE),
            block,
            blocks,
        };
        if blocks < 2 || coarse_mesh < 2.0 * plan.fine_mesh {
            Plan {
                fine_mesh: fine_mesh(SINGLE_STAGE_SHARE),
                block: total as u64,
                blocks: 1,
                ..plan
            }
        } else {
            plan
        }
    }

    /// The coarse mesh over the fine one and the final mesh over the coarse one (1 and 1 for a
    /// single stage) that the measured rounding bounds of the kinds (with their counts) leave
    /// room for, or `None` if they overrun the budget: Bernstein's condition
    /// `V + c s / 3 <= s^2 / (2 log(2 / eta))` (module docs).
    pub(super) fn ratios(&self, kinds: &[(&OneStep, u64)]) -> Option<(i64, i64)> {
        let mesh = kinds[0].0.pmf.mesh;
        let bias: f64 = kinds.iter().map(|(k, c)| *c as f64 * k.rounding.bias).sum();
        let variance: f64 = kinds
            .iter()
            .map(|(k, c)| *c as f64 * k.rounding.second_moment)
            .sum();
        let range = 0.5 * mesh
            + kinds
                .iter()
                .map(|(k, _)| k.rounding.bias)
                .fold(0.0, f64::max);
        let s = self.epsilon_error - bias;
        let left = s * s / (2.0 * self.log_two_over_eta) - variance - range * s / 3.0;
        if s <= 0.0 || left < 0.0 {
            return None;
        }
        let blocks = self.blocks as f64;
        let ratio = ((4.0 * (1.0 - FINAL_SHARE) * left / blocks).sqrt() / mesh).floor() as i64;
        if self.blocks < 2 || ratio < 2 {
            return Some((1, 1));
        }
        // The blocks' splits take `T2 h2^2 / 4`, the final split `h3^2 / 4` of the rest.
        let ratio = smooth_at_most(ratio as usize);
        let coarse = ratio as f64 * mesh;
        let rest = left - blocks * coarse * coarse / 4.0;
        let final_ratio = ((4.0 * rest).sqrt() / coarse).floor().max(1.0) as usize;
        Some((ratio as i64, smooth_at_most(final_ratio) as i64))
    }
}
