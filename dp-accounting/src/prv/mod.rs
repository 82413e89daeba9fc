//! The PRV accountant (Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential
//! Privacy", NeurIPS): the privacy loss random variable (PRV) `Y` of each step is discretised on
//! a lattice, the steps are composed by FFT, and epsilon is read off with error bounds.
//!
//! The composed PRV is computed in two stages. Stage 1 composes blocks of `T1` steps on a fine
//! lattice of mesh `h1`; each block's pmf is moved to a coarse lattice of mesh `h2 = m h1` by the
//! mean-preserving split (see `pmf`); stage 2 composes the `T2` blocks (a kind of step with
//! `c` steps gives `floor(c / T1)` full blocks and one block of the remainder) on the coarse
//! lattice. Few steps, or a coarse mesh under `2 h1`, take one stage (`T2 = 1`, no split). The
//! split (by a ratio `m` of the form `2^a 3^b 5^c`) is done on the composed spectrum; spectra
//! are computed only below a proven cutoff, past which the rest moves the result by a budgeted
//! total variation (see `spectrum`).
//!
//! Error argument (Thm 5.5, with the rounding errors as a martingale and Bernstein's inequality
//! in place of Hoeffding's):
//! - Discretisation: one step's `Y`, cut to `[lo, hi]` with `P[Y < lo] = P[Y > hi] <=
//!   delta_error / (6 T)` and renormalised, goes cell-centred to the lattice point `t = k h1` of
//!   its cell `[t - h1/2, t + h1/2]`: an error `Z = t - Y` in `[-h1/2, h1/2]`. Its moments are
//!   bounded cell by cell from `d/dt log pdf = -(x + 1 - 2s)/s` (see `subsampled_gaussian`),
//!   whose range on a cell follows from `x` and `s` at the edges. With `u = h1 max |d/dt log
//!   pdf|`, `sup pdf <= e^u inf pdf <= e^u p / h1` for a cell of mass `p`, so on a full cell
//!   with `u <= 1/32` ("smooth"): `E[Z^2; cell] <= e^u p h1^2 / 12`; and, integrating by parts
//!   with `G(y) = ((y - t)^2 - h1^2/4)/2` (zero at the edges, mean `-h1^2/12`, `|G + h1^2/12| <=
//!   h1^2/12`), `E[Z; cell] = -h1^2 (pdf(b) - pdf(a)) / 12 + r` with `|r| <= h1^3 osc(pdf')/24`
//!   and `osc(pdf') <= sup pdf (range of the slope + u max |slope|)`. Over a run of smooth cells
//!   the first terms telescope to at most `h1^2 / 12` times the density at the run's two ends.
//!   Other ("rough") cells, near the support's start where the density piles up, or the two cut
//!   cells, are split into up to 4096 sub-cells of width `w` with their masses computed: `E[Z;
//!   cell]` is the computed `sum (t - c) p_sub` plus at most `(e^u' - 1) p_sub w / 8` per
//!   sub-cell (`c` its midpoint), and the second moment follows likewise. This gives `|E[Z]| <=
//!   mu` and `E[Z^2] <= v` per kind of step.
//! - Regridding: each block's split has an error `W` of conditional mean zero in an interval of
//!   width `h2`, so `E[e^(lambda W) | past] <= e^(lambda^2 h2^2 / 8)` (Hoeffding's lemma). The
//!   sum of all blocks is split once more, to the final mesh `h3 = m3 h2`, with one such error of
//!   width `h3`.
//! - Taking, block by block, the `T1` errors `Z - E[Z]` (independent, `|Z - E[Z]| <= c = h1/2 +
//!   mu`, variance `<= v`) and then the block's `W`, and last the final split's, Bernstein's
//!   moment bound gives `P[|total - T mu| >= s] <= 2 exp(-s^2 / (2 (V + c s / 3)))` with
//!   `V = T v + T2 h2^2 / 4 + h3^2 / 4`. With `s = epsilon_error - T mu` this is kept under
//!   `eta = delta_error / 3`. The fine mesh is planned for `v = 1.05 h1^2 / 12` and two thirds of
//!   the budget `s^2 / (2 log(2 / eta))` (all of it for one stage); after discretising, the
//!   blocks' splits take three quarters of what the measured `v` and `mu` leave and the final
//!   split the rest, and a fine mesh whose bounds overrun the budget shrinks by 0.7 and is
//!   discretised again. (The cell-centred variance `h1^2 / 12` instead of Hoeffding's `h1^2 / 4`
//!   lets `h1` grow by about `sqrt(3)`.)
//! - Cutting the tails costs at most `T * delta_error / (3 T)` in total variation.
//! - Wrap-around and left-out spectrum: each FFT reads a window of the circle; mass outside it
//!   wraps in. The spectrum entries a composition leaves out (below its floor, see `pmf` and
//!   `spectrum`) move its result by a bounded total variation. Each block's composition may
//!   misplace `delta_error / (6 T2)`, the final one `delta_error / 6` (one stage:
//!   `delta_error / 3`): a hundredth to the left-out spectrum, the rest to the window's tails,
//!   half on each side. Windows of sums of one-step pmfs: right end from
//!   `log E[e^(lambda Y~)] <= lambda (rdp(lambda + 1) + h1/2) - log P[lo <= Y <= hi]` (the RDP of
//!   order `alpha = lambda + 1` is exactly `log E[e^((alpha - 1) Y)] / (alpha - 1)`) and a
//!   Chernoff bound over the RDP orders; left end from Bernstein's inequality with the pmf's exact
//!   mean and variance and its lowest point. Windows of sums of block pmfs: Chernoff bounds on
//!   both sides with the block pmfs' exact moment generating functions.
//! - `delta(eps) = E[(1 - e^(eps - Y))_+]` moves by at most the total variation and, on the event
//!   that the errors stay within `epsilon_error`, by at most a shift of `epsilon_error`. With the
//!   four parts above summing to `delta_error = delta / 1000`, the estimate inverts the computed
//!   `delta`, and `eps_lower = eps(delta + delta_error) - eps_error`,
//!   `eps_upper = eps(delta - delta_error) + eps_error` bracket the true epsilon. The accountant
//!   reports `eps_upper`.
//!
//! The block length `T1` (at most `ceil(3 sqrt(T))`, and at least half of it; a divisor of the
//! largest count if there is one in that range) keeps both lattices short: for q = 0.01, sigma = 1,
//! T = 1e5, eps_error = 0.01 a one-step pmf of 2.2e5 cells (h1 = 1.35e-5), a fine FFT window of
//! 5.2e5 points and a coarse one of 4.0e5 (h2 = 10 h1), against 7e6 points for one stage on a
//! symmetric domain. Of those circles' spectra only the lowest 254 and 26 entries are above
//! the cutoff, and the final lattice has 5.0e4 points (h3 = 8 h2).

mod pmf;
mod spectrum;
mod subsampled_gaussian;

use rayon::prelude::*;

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::{matrix_factorization_equivalent, DpEvent};
use crate::rdp::RdpAccountant;
pub(crate) use pmf::fast_fft_size;
use pmf::{chernoff_window, lattice_window, smooth_at_most, Composer, Pmf, Window};
use subsampled_gaussian::SubsampledGaussianPrv;

/// Share of the variance budget planned for the fine stage's rounding.
const FINE_SHARE: f64 = 2.0 / 3.0;

/// Share of the variance budget planned for a single stage's rounding (the rest is slack for
/// Bernstein's range term).
const SINGLE_STAGE_SHARE: f64 = 0.95;

/// Share of `epsilon_error` planned for the rounding errors' total bias.
const BIAS_SHARE: f64 = 0.02;

/// Planned `E[Z^2] / (h1^2 / 12)` for one step's rounding error `Z` (1 for a smooth density).
const ASSUMED_SECOND_MOMENT: f64 = 1.05;

/// Share of each composition's budget for mass it may misplace that goes to the spectrum
/// entries it leaves out (the window's two tails take the rest).
const SPECTRUM_SHARE: f64 = 0.01;

/// A composition's budget for misplaced mass as the tail its window may miss on each side and
/// the total variation its left-out spectrum may add.
fn split_budget(budget: f64) -> (f64, f64) {
    (
        (1.0 - SPECTRUM_SHARE) * budget / 2.0,
        SPECTRUM_SHARE * budget,
    )
}

/// Share of what the fine stage leaves of the variance budget planned for the final split (the
/// blocks' splits take the rest).
const FINAL_SHARE: f64 = 0.25;

/// Times the fine mesh shrinks when its measured rounding bounds overrun the budget.
const SHRINK: f64 = 0.7;

/// Discretisations tried before giving up.
const MAX_TRIES: usize = 8;

/// Smallest delta answered. The FFT's floating-point round-off, about 1e-16 of the total mass
/// per lattice point, is not in the error budget; `delta_error = delta / 1000` must stay well
/// above it. At delta 1e-16 the bracket was measured false (its lower end above RDP's upper bound
/// for q = 0.01, sigma = 1, 1000 steps); at 1e-14 it still held. 1e-12 keeps a margin of 100.
pub const PRV_MIN_DELTA: f64 = 1e-12;

/// The half-width of the epsilon bracket the tools ask of the PRV accountant by default (the
/// upper end, at most this much above the estimate, is what they report).
pub const DEFAULT_PRV_EPSILON_ERROR: f64 = 0.01;

/// The bracket half-width for calibrating to `target_epsilon`: the default, or a twentieth of
/// the target when that is smaller (a bracket as wide as the target cannot meet it).
pub fn prv_epsilon_error_for(target_epsilon: f64) -> f64 {
    DEFAULT_PRV_EPSILON_ERROR.min(target_epsilon / 20.0)
}

/// Most points of one step's lattice (64 MiB of f64, about 8 s on 2 cores): a smaller epsilon
/// error or more steps need a finer mesh than memory and time allow.
const MAX_STEP_LATTICE: f64 = (1u64 << 23) as f64;

/// Most steps composed: beyond, the tail cut per step (`delta_error / (6 T)`) nears the
/// smallest doubles and the rounding budget per step vanishes.
const MAX_PRV_STEPS: u64 = 1_000_000_000;

/// Block length `T1` about `BLOCK_PER_SQRT_STEP sqrt(T)`.
const BLOCK_PER_SQRT_STEP: f64 = 3.0;

/// Epsilon from the PRV accountant with its error bracket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpsilonBounds {
    /// A lower bound on the true epsilon.
    pub lower: f64,
    /// The estimate (between the bounds).
    pub estimate: f64,
    /// An upper bound on the true epsilon: the value to report.
    pub upper: f64,
}

/// Composes Poisson-subsampled Gaussian steps (and plain Gaussians) with the PRV method.
#[derive(Debug, Clone, PartialEq)]
pub struct PrvAccountant {
    epsilon_error: f64,
    /// (q, sigma, count) of the steps composed so far.
    steps: Vec<(f64, f64, u64)>,
    non_private: bool,
}

impl PrvAccountant {
    /// An accountant whose epsilon bracket has half-width `epsilon_error` (e.g. 0.01).
    pub fn new(epsilon_error: f64) -> Result<Self, AccountingError> {
        check_range(
            "epsilon_error",
            epsilon_error,
            epsilon_error > 0.0,
            "epsilon error > 0",
        )?;
        Ok(Self {
            epsilon_error,
            steps: Vec::new(),
            non_private: false,
        })
    }

    /// The epsilon bracket for `delta` (at least [`PRV_MIN_DELTA`]). The bracket is checked
    /// against the RDP accountant's upper bound: a lower end above it is a numerical failure.
    pub fn epsilon_bounds(&self, delta: f64) -> Result<EpsilonBounds, AccountingError> {
        check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
        if delta < PRV_MIN_DELTA {
            return Err(AccountingError::BeyondPrecision(format!(
                "delta {delta:e} is below {PRV_MIN_DELTA:e}, the smallest its floating-point FFT resolves; use the RDP accountant"
            )));
        }
        if self.non_private {
            return Ok(EpsilonBounds {
                lower: f64::INFINITY,
                estimate: f64::INFINITY,
                upper: f64::INFINITY,
            });
        }
        if self.steps.is_empty() {
            return Ok(EpsilonBounds {
                lower: 0.0,
                estimate: 0.0,
                upper: 0.0,
            });
        }
        let delta_error = delta / 1000.0;
        self.check_steps()?;
        let composed = self.compose_grid(delta_error)?;
        let eps = |d: f64| composed.epsilon(d);
        let bounds = EpsilonBounds {
            lower: (eps(delta + delta_error) - self.epsilon_error).max(0.0),
            estimate: eps(delta),
            upper: eps(delta - delta_error) + self.epsilon_error,
        };
        if bounds.lower.is_nan() || bounds.estimate.is_nan() || bounds.upper.is_nan() {
            return Err(AccountingError::Numerical(format!(
                "the PRV bracket at delta {delta:e} is not a number"
            )));
        }
        let rdp = self.rdp()?.epsilon(delta)?;
        if bounds.lower > rdp {
            return Err(AccountingError::Numerical(format!(
                "the PRV bracket's lower end {} exceeds the RDP upper bound {rdp} at delta {delta:e}",
                bounds.lower
            )));
        }
        Ok(bounds)
    }

    /// The same steps composed by the RDP accountant.
    fn rdp(&self) -> Result<RdpAccountant, AccountingError> {
        let mut rdp = RdpAccountant::default();
        for &(q, sigma, count) in &self.steps {
            rdp.compose(&DpEvent::dp_sgd(q, sigma, count))?;
        }
        Ok(rdp)
    }

    /// An upper bound on delta at `epsilon`: `delta_est(epsilon - eps_error) + delta_error`, with
    /// `delta_error` a thousandth of the RDP bound on delta.
    pub fn delta_upper(&self, epsilon: f64) -> Result<f64, AccountingError> {
        check_range("epsilon", epsilon, epsilon >= 0.0, "epsilon >= 0")?;
        if self.non_private {
            return Ok(1.0);
        }
        if self.steps.is_empty() {
            return Ok(0.0);
        }
        self.check_steps()?;
        let rdp_delta = self.rdp()?.delta(epsilon)?;
        let delta_error = (rdp_delta / 1000.0).max(1e-15);
        let composed = self.compose_grid(delta_error)?;
        Ok((composed.delta(epsilon - self.epsilon_error) + delta_error).min(1.0))
    }

    /// Refuses more steps than [`MAX_PRV_STEPS`].
    fn check_steps(&self) -> Result<(), AccountingError> {
        let steps = self.total_steps();
        if steps > MAX_PRV_STEPS {
            return Err(AccountingError::BeyondPrecision(format!(
                "{steps} steps: it composes at most {MAX_PRV_STEPS:e}; use the RDP accountant"
            )));
        }
        Ok(())
    }

    fn total_steps(&self) -> u64 {
        self.steps.iter().map(|s| s.2).sum()
    }

    fn compose_grid(&self, delta_error: f64) -> Result<ComposedPrv, AccountingError> {
        let plan = Plan::new(self.epsilon_error, delta_error, &self.steps);
        let (kinds, (ratio, final_ratio)) = self.discretise(&plan, delta_error)?;
        let counts: Vec<u64> = self.steps.iter().map(|s| s.2).collect();
        let mut composer = Composer::new();
        if ratio == 1 {
            let parts: Vec<(&OneStep, u64)> = kinds.iter().zip(counts.iter().copied()).collect();
            let (tail, spectrum_error) = split_budget(delta_error / 3.0);
            let window = fine_window(&parts, tail);
            let inputs: Vec<&Pmf> = kinds.iter().map(|k| &k.pmf).collect();
            let composed = composer.compose(
                self.epsilon_error,
                &inputs,
                &[(counts, window)],
                1,
                spectrum_error,
            )?;
            return Ok(ComposedPrv::new(
                composed.into_iter().next().expect("one request"),
            ));
        }
        // Stage 1: per kind, a full block and the remainder, moved to the coarse lattice.
        let (block_tail, block_spectrum_error) =
            split_budget(delta_error / (6.0 * plan.blocks as f64));
        let mut blocks: Vec<(Pmf, u64)> = Vec::new();
        for (kind, &count) in kinds.iter().zip(&counts) {
            let groups: Vec<(u64, u64)> =
                [(plan.block, count / plan.block), (count % plan.block, 1)]
                    .into_iter()
                    .filter(|&(length, number)| length > 0 && number > 0)
                    .collect();
            let requests: Vec<(Vec<u64>, Window)> = groups
                .iter()
                .map(|&(length, _)| (vec![length], fine_window(&[(kind, length)], block_tail)))
                .collect();
            let sums = composer.compose(
                self.epsilon_error,
                &[&kind.pmf],
                &requests,
                ratio,
                block_spectrum_error,
            )?;
            blocks.extend(sums.into_iter().zip(groups.iter().map(|g| g.1)));
        }
        // Stage 2: all blocks on the coarse lattice, the sum moved to the final one.
        let parts: Vec<(&Pmf, u64)> = blocks.iter().map(|(p, n)| (p, *n)).collect();
        let (tail, spectrum_error) = split_budget(delta_error / 6.0);
        let window = chernoff_window(&parts, tail);
        let inputs: Vec<&Pmf> = blocks.iter().map(|(p, _)| p).collect();
        let numbers = blocks.iter().map(|(_, n)| *n).collect();
        let composed = composer.compose(
            self.epsilon_error,
            &inputs,
            &[(numbers, window)],
            final_ratio,
            spectrum_error,
        )?;
        Ok(ComposedPrv::new(
            composed.into_iter().next().expect("one request"),
        ))
    }
}

impl PrvAccountant {
    /// Every kind of step on the fine lattice, with the coarse mesh over the fine one and the
    /// final mesh over the coarse one (1 and 1: a single stage). The fine mesh is the plan's,
    /// shrunk while the measured rounding bounds overrun the budget.
    fn discretise(
        &self,
        plan: &Plan,
        delta_error: f64,
    ) -> Result<(Vec<OneStep>, (i64, i64)), AccountingError> {
        let tail = delta_error / (6.0 * self.total_steps() as f64);
        let mut mesh = plan.fine_mesh;
        for _ in 0..MAX_TRIES {
            let kinds = self
                .steps
                .iter()
                .map(|&(q, sigma, _)| OneStep::new(SubsampledGaussianPrv { q, sigma }, mesh, tail))
                .collect::<Result<Vec<_>, _>>()?;
            let parts: Vec<(&OneStep, u64)> =
                kinds.iter().zip(self.steps.iter().map(|s| s.2)).collect();
            if let Some(ratios) = plan.ratios(&parts) {
                return Ok((kinds, ratios));
            }
            mesh *= SHRINK;
        }
        Err(AccountingError::BeyondPrecision(format!(
            "its rounding bounds overran the error budget down to mesh {mesh:e}: raise the epsilon error, take fewer steps, or use the RDP accountant"
        )))
    }
}

/// Block length and the planned fine mesh (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Plan {
    epsilon_error: f64,
    /// `log(2 / eta)`, `eta` the probability that the rounding errors exceed `epsilon_error`.
    log_two_over_eta: f64,
    fine_mesh: f64,
    /// Steps per block `T1`.
    block: u64,
    /// Number of blocks `T2`, remainders included; 1 for a single stage.
    blocks: u64,
}

impl Plan {
    fn new(epsilon_error: f64, delta_error: f64, steps: &[(f64, f64, u64)]) -> Self {
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
    fn ratios(&self, kinds: &[(&OneStep, u64)]) -> Option<(i64, i64)> {
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

/// One kind of step discretised on the fine lattice, with what its windows need.
struct OneStep {
    pmf: Pmf,
    mean: f64,
    variance: f64,
    /// `(lambda, u)` with `u >= log E[e^(lambda Y~)]`, for `lambda = alpha - 1` over the RDP
    /// orders.
    log_mgf_bounds: Vec<(f64, f64)>,
    rounding: Rounding,
}

/// Bounds on the cell-centred rounding error `Z` of one step.
#[derive(Debug, Clone, Copy)]
struct Rounding {
    /// `E[Z^2] <=` this.
    second_moment: f64,
    /// `|E[Z]| <=` this.
    bias: f64,
}

impl OneStep {
    /// Cell-centred pmf of the PRV cut to `[lo, hi]` (each tail at most `tail` in mass),
    /// renormalised, with bounds on its rounding error's second moment and mean (module docs).
    fn new(prv: SubsampledGaussianPrv, mesh: f64, tail: f64) -> Result<Self, AccountingError> {
        let lo = switch_point(|t| prv.cdf(t) <= tail).0;
        let hi = switch_point(|t| prv.survival(t) > tail).1;
        let points = (hi - lo) / mesh;
        if points.is_nan() || points >= MAX_STEP_LATTICE {
            return Err(AccountingError::BeyondPrecision(format!(
                "one step's lattice would need {points:.3e} points (at most {MAX_STEP_LATTICE:e}): raise the epsilon error, take fewer steps, or use the RDP accountant"
            )));
        }
        let start = (lo / mesh).round() as i64;
        let n = ((hi / mesh).round() as i64 - start + 1) as usize;
        let edge = |j: usize| ((start as f64 + j as f64 - 0.5) * mesh).clamp(lo, hi);
        // The total mass of the cut range is P[lo <= Y <= hi] = (1 - S(hi)) - F(lo).
        let mass = 1.0 - prv.survival(hi) - prv.cdf(lo);
        // Chunks of cells, each computed with its two neighbours (which say where runs of smooth
        // cells end): the masses and the chunk's share of the rounding bounds (module docs).
        let mut p = vec![0.0; n];
        let chunks: Vec<[f64; 3]> = p
            .par_chunks_mut(CELL_CHUNK)
            .enumerate()
            .map(|(c, masses)| {
                let (first, last) = (c * CELL_CHUNK, c * CELL_CHUNK + masses.len());
                let (from, to) = (first.saturating_sub(1), (last + 1).min(n));
                let edges: Vec<Edge> = (from..=to).map(|j| Edge::new(prv, edge(j))).collect();
                let cells: Vec<Cell> = edges
                    .windows(2)
                    .zip(from..)
                    .map(|(w, j)| {
                        let centre = (start + j as i64) as f64 * mesh;
                        let full = j > 0 && j < n - 1;
                        Cell::new(prv, mass, mesh, centre, (&w[0], &w[1]), full)
                    })
                    .collect();
                let smooth = |j: Option<usize>| {
                    j.filter(|j| (from..to).contains(j))
                        .is_some_and(|j| cells[j - from].smooth)
                };
                // The rough cells' computed part, then the smooth cells' remainders with the two
                // end terms of each run of smooth cells and the rough cells' remainders.
                let (mut second_moment, mut known, mut unknown) = (0.0, 0.0, 0.0);
                for j in first..last {
                    let c = &cells[j - from];
                    second_moment += c.second_moment;
                    known += c.known;
                    let ends = if c.smooth {
                        !smooth(j.checked_sub(1)) as u8 + !smooth(Some(j + 1)) as u8
                    } else {
                        0
                    };
                    unknown += c.remainder + f64::from(ends) * c.end_term;
                }
                for (m, c) in masses.iter_mut().zip(&cells[first - from..]) {
                    *m = c.p;
                }
                [second_moment, known, unknown]
            })
            .collect();
        let [second_moment, known, unknown] = chunks.iter().fold([0.0; 3], |acc, c| {
            [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]]
        });
        let bias = known.abs() + unknown;
        let pmf = Pmf { start, mesh, p };
        let mean: f64 = (0..pmf.p.len()).map(|i| pmf.p[i] * pmf.value(i)).sum();
        let variance: f64 = (0..pmf.p.len())
            .map(|i| pmf.p[i] * (pmf.value(i) - mean).powi(2))
            .sum();
        let mut rdp = RdpAccountant::default();
        rdp.compose(&DpEvent::dp_sgd(prv.q, prv.sigma, 1))?;
        let log_mgf_bounds = rdp
            .orders()
            .iter()
            .zip(rdp.rdp())
            .map(|(&alpha, &r)| {
                let lambda = alpha - 1.0;
                (lambda, lambda * (r + 0.5 * mesh) - mass.ln())
            })
            .collect();
        Ok(Self {
            pmf,
            mean,
            variance,
            log_mgf_bounds,
            rounding: Rounding {
                second_moment,
                bias,
            },
        })
    }
}

/// A point `t` with the tail `F(t)` (t < 0) or `S(t)` (t >= 0) and `z(t)`, `s(t)` (see
/// `subsampled_gaussian`): small masses in either tail keep their relative precision.
struct Edge {
    t: f64,
    tail: f64,
    z: f64,
    s: f64,
}

impl Edge {
    fn new(prv: SubsampledGaussianPrv, t: f64) -> Self {
        let (tail, z, s) = prv.tail_and_slope_terms(t);
        Edge { t, tail, z, s }
    }

    /// `P[a < Y <= b]`.
    fn mass_to(&self, b: &Edge) -> f64 {
        let m = if self.t >= 0.0 {
            self.tail - b.tail
        } else if b.t >= 0.0 {
            // Straddling 0: F(b) - F(a) with F(b) = 1 - S(b).
            (1.0 - b.tail) - self.tail
        } else {
            b.tail - self.tail
        };
        m.max(0.0)
    }

    /// `(low, high)` bounding `d/dt log pdf = -(z + 1 - 2 s) / s` on `[a, b]`, z and s being
    /// increasing in t.
    fn slope_range(&self, b: &Edge) -> (f64, f64) {
        let (lowest, highest) = (self.z + 1.0 - 2.0 * b.s, b.z + 1.0 - 2.0 * self.s);
        let corners = [
            -lowest / self.s,
            -lowest / b.s,
            -highest / self.s,
            -highest / b.s,
        ];
        corners
            .into_iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), c| {
                (low.min(c), high.max(c))
            })
    }
}

/// Cells per parallel chunk of a one-step discretisation.
const CELL_CHUNK: usize = 4096;

/// Cells with `u = h max |d/dt log pdf| <= SMOOTH_SLOPE` take the smooth-cell bounds.
const SMOOTH_SLOPE: f64 = 1.0 / 32.0;

/// Most sub-cells a rough cell is split into.
const MAX_SUBCELLS: f64 = 4096.0;

/// One cell of a one-step pmf and the bounds on its part of the rounding error `Z = centre - Y`
/// (module docs).
struct Cell {
    p: f64,
    /// `>= E[Z^2; Y in cell]`.
    second_moment: f64,
    /// A full cell with `u <= SMOOTH_SLOPE`.
    smooth: bool,
    /// Rough: a computed part of `E[Z; cell]`, 0 on a smooth cell.
    known: f64,
    /// Smooth: `>= |E[Z; cell] + h^2 (pdf(b) - pdf(a)) / 12|`. Rough: `>= |E[Z; cell] - known|`.
    remainder: f64,
    /// `>= h^2 sup pdf / 12` on a smooth cell; 0 on a rough one.
    end_term: f64,
}

impl Cell {
    /// The cell `(a, b]` of lattice point `centre`, masses divided by `mass`.
    fn new(
        prv: SubsampledGaussianPrv,
        mass: f64,
        mesh: f64,
        centre: f64,
        (a, b): (&Edge, &Edge),
        full: bool,
    ) -> Self {
        let p = a.mass_to(b) / mass;
        let (low, high) = a.slope_range(b);
        let slope = low.abs().max(high.abs());
        let u = slope * (b.t - a.t);
        if full && u <= SMOOTH_SLOPE {
            // sup pdf <= e^u inf pdf <= e^u p / h, and e^u <= 1 + u + u^2 for u <= 1.
            let sup_h = (1.0 + u * (1.0 + u)) * p * mesh * mesh;
            return Cell {
                p,
                second_moment: sup_h / 12.0,
                smooth: true,
                known: 0.0,
                remainder: sup_h * mesh * ((high - low) + slope * u) / 24.0,
                end_term: sup_h / 12.0,
            };
        }
        // Rough: k sub-cells, E[Z; sub] = (centre - c) p_sub + E[c - Y; sub] with c the
        // sub-cell's midpoint, |E[c - Y; sub]| <= (e^u' - 1) p_sub w / 8 and
        // E[(c - Y)^2; sub] <= e^u' p_sub w^2 / 12 (or p_sub w / 2, p_sub w^2 / 4).
        // (NaN, from a cell reaching the support's start, takes the most.)
        let k = if u.is_nan() {
            MAX_SUBCELLS
        } else {
            (u / SMOOTH_SLOPE).ceil().clamp(1.0, MAX_SUBCELLS)
        } as usize;
        let w = (b.t - a.t) / k as f64;
        let subs: Vec<Edge> = (1..k).map(|i| Edge::new(prv, a.t + i as f64 * w)).collect();
        let points: Vec<&Edge> = std::iter::once(a).chain(&subs).chain([b]).collect();
        let (mut known, mut unknown, mut second_moment) = (0.0, 0.0, 0.0);
        for pair in points.windows(2) {
            let (sa, sb) = (pair[0], pair[1]);
            let ps = sa.mass_to(sb) / mass;
            let (l, h) = sa.slope_range(sb);
            let us = l.abs().max(h.abs()) * w;
            let offset = centre - 0.5 * (sa.t + sb.t);
            let (rest, rest_square) = if us <= 1.0 {
                (us.exp_m1() / 8.0, us.exp() / 12.0)
            } else {
                (0.5, 0.25)
            };
            known += offset * ps;
            unknown += ps * w * rest;
            // E[(offset + c - Y)^2; sub] with |E[c - Y; sub]| <= p_sub w rest.
            second_moment +=
                ps * (offset * offset + 2.0 * offset.abs() * w * rest + w * w * rest_square);
        }
        Cell {
            p,
            second_moment,
            smooth: false,
            known,
            remainder: unknown,
            end_term: 0.0,
        }
    }
}

/// Where a monotone `holds` switches from true (far left) to false (far right): the last
/// point found where it holds and the first where it does not, 1e-14 apart (relative) or
/// adjacent doubles. Searched out from [-1, 1] by doubling, then bisected.
fn switch_point(holds: impl Fn(f64) -> bool) -> (f64, f64) {
    let (mut a, mut b) = (-1.0, 1.0);
    while !holds(a) {
        a *= 2.0;
    }
    while holds(b) {
        b *= 2.0;
    }
    loop {
        let mid = 0.5 * (a + b);
        if b - a <= 1e-14 * (1.0 + a.abs().max(b.abs())) || mid <= a || mid >= b {
            return (a, b);
        }
        if holds(mid) {
            a = mid;
        } else {
            b = mid;
        }
    }
}

/// Window for the sum of `count` copies of each one-step pmf, each tail at most `beta` (see the
/// module docs).
fn fine_window(parts: &[(&OneStep, u64)], beta: f64) -> Window {
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
struct ComposedPrv {
    /// The values from the first non-negative one (or the last below it): only those matter
    /// for epsilon >= 0. Entry `i` is at `t_i = (first + i) mesh`.
    first: i64,
    mesh: f64,
    /// `M_i = sum_{j >= i} p_j` and `S_i = sum_{j >= i} p_j e^(t_i - t_j)`, one entry past the
    /// last value (both 0). Scaled by `e^(t_i)`, `S_i <= M_i` cannot overflow, whatever the
    /// epsilon (an unscaled `sum p_j e^(-t_j)` underflows past t = 745, and `e^t` overflows past
    /// 709).
    tail_mass: Vec<f64>,
    tail_scaled: Vec<f64>,
}

impl ComposedPrv {
    /// Turns the pmf's masses into the suffix sums `M_i` in place.
    fn new(pmf: Pmf) -> Self {
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

    fn t(&self, i: usize) -> f64 {
        (self.first + i as i64) as f64 * self.mesh
    }

    /// `delta` on `[t_{i-1}, t_i]`: `M_i - e^(epsilon - t_i) S_i`.
    fn delta_below(&self, i: usize, epsilon: f64) -> f64 {
        if self.tail_mass[i] == 0.0 {
            return 0.0;
        }
        (self.tail_mass[i] - (epsilon - self.t(i)).exp() * self.tail_scaled[i]).max(0.0)
    }

    /// `delta(epsilon) = sum_{t_j >= epsilon} p_j (1 - e^(epsilon - t_j))`.
    fn delta(&self, epsilon: f64) -> f64 {
        let epsilon = epsilon.max(0.0);
        let i = ((epsilon - self.t(0)) / self.mesh).ceil().max(0.0) as usize;
        self.delta_below(i.min(self.tail_mass.len() - 1), epsilon)
    }

    /// The smallest epsilon >= 0 with `delta(epsilon) <= delta`.
    fn epsilon(&self, delta: f64) -> f64 {
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

impl Accountant for PrvAccountant {
    fn supports(&self, event: &DpEvent) -> Result<(), AccountingError> {
        collect_steps(event, 1, &mut Vec::new(), &mut false)
    }

    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        let mut steps = Vec::new();
        let mut non_private = false;
        collect_steps(event, 1, &mut steps, &mut non_private)?;
        for (q, sigma, count) in steps {
            match self.steps.iter_mut().find(|s| s.0 == q && s.1 == sigma) {
                Some(s) => s.2 += count,
                None => self.steps.push((q, sigma, count)),
            }
        }
        self.non_private |= non_private;
        Ok(())
    }

    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        Ok(self.epsilon_bounds(delta)?.upper)
    }

    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        self.delta_upper(epsilon)
    }
}

/// Flattens an event into (q, sigma, count) steps, or says why it cannot.
fn collect_steps(
    event: &DpEvent,
    count: u64,
    steps: &mut Vec<(f64, f64, u64)>,
    non_private: &mut bool,
) -> Result<(), AccountingError> {
    let unsupported = |reason: &str| AccountingError::Unsupported {
        accountant: "PRV",
        event: event.name(),
        reason: reason.to_string(),
    };
    match event {
        DpEvent::NoOp => Ok(()),
        DpEvent::NonPrivate => {
            *non_private = true;
            Ok(())
        }
        DpEvent::Gaussian { noise_multiplier } => {
            check_range(
                "noise_multiplier",
                *noise_multiplier,
                *noise_multiplier > 0.0,
                "sigma > 0",
            )?;
            steps.push((1.0, *noise_multiplier, count));
            Ok(())
        }
        DpEvent::PoissonSampled {
            sampling_probability: q,
            event: inner,
        } => {
            check_range("sampling_rate", *q, *q > 0.0 && *q <= 1.0, "0 < q <= 1")?;
            let DpEvent::Gaussian { noise_multiplier } = inner.as_ref() else {
                return Err(unsupported("the sampled event must be a single Gaussian"));
            };
            check_range(
                "noise_multiplier",
                *noise_multiplier,
                *noise_multiplier > 0.0,
                "sigma > 0",
            )?;
            steps.push((*q, *noise_multiplier, count));
            Ok(())
        }
        DpEvent::RepeatAndSelect { .. } => Err(unsupported(
            "tuning bounds are RDP transforms (use the RDP accountant)",
        )),
        DpEvent::SampledWithoutReplacement { .. } => Err(unsupported(
            "only Poisson sampling is supported (use the RDP accountant)",
        )),
        DpEvent::SelfComposed {
            event: inner,
            count: c,
        } => {
            if *c == 0 {
                return Ok(());
            }
            collect_steps(
                inner,
                count
                    .checked_mul(*c)
                    .ok_or_else(|| unsupported("count overflows"))?,
                steps,
                non_private,
            )
        }
        DpEvent::Composed { events } => events
            .iter()
            .try_for_each(|e| collect_steps(e, count, steps, non_private)),
        DpEvent::MatrixFactorization {
            noise_multiplier,
            steps: run,
            amplification,
        } => collect_steps(
            &matrix_factorization_equivalent(*noise_multiplier, *run, amplification.as_ref())?,
            count,
            steps,
            non_private,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mf::gaussian_epsilon;

    /// Gaussian steps compose exactly: `c_i` steps of noise `sigma_i` are one Gaussian of noise
    /// `(sum_i c_i / sigma_i^2)^(-1/2)`. The plan has two stages, two kinds and a remainder
    /// block, so a regridding or a window that broke the bracket shows here.
    #[test]
    fn two_stage_bracket_holds_the_exact_gaussian() {
        let steps = [(40.0, 3_001), (60.0, 7_000)];
        let mut acc = PrvAccountant::new(0.01).unwrap();
        for (sigma, count) in steps {
            acc.compose(&DpEvent::dp_sgd(1.0, sigma, count)).unwrap();
        }
        let plan = Plan::new(0.01, 1e-8, &acc.steps);
        let (_, (ratio, _)) = acc.discretise(&plan, 1e-8).unwrap();
        assert!(
            ratio > 1 && acc.steps.iter().any(|s| s.2 % plan.block != 0),
            "{plan:?}"
        );
        let sigma = 1.0
            / steps
                .iter()
                .map(|(s, c)| *c as f64 / (s * s))
                .sum::<f64>()
                .sqrt();
        let exact = gaussian_epsilon(sigma, 1e-5).unwrap();
        let b = acc.epsilon_bounds(1e-5).unwrap();
        assert!(b.lower <= exact && exact <= b.upper, "{b:?} vs {exact}");
        // The rounding errors have mean zero: the estimate itself is far inside the bracket.
        assert!((b.estimate - exact).abs() < 1e-3, "{b:?} vs {exact}");
    }

    /// Where the density piles up at the support's start (q = 0.001, sigma = 0.6), cell-centred
    /// rounding has a real bias: the discrete mean is off the exact one (mpmath quadrature of
    /// `E[Y | lo <= Y <= hi]`, 7.1145571519660093e-6) by about 8e-9, far above the smooth-density
    /// estimate h^2 (pdf(lo) + pdf(hi)) / 8. The bound must cover it.
    #[test]
    fn rounding_bias_bound_covers_the_exact_bias() {
        let prv = SubsampledGaussianPrv {
            q: 0.001,
            sigma: 0.6,
        };
        let step = OneStep::new(prv, 1.3454019340845437e-5, 1e-8 / 6e5).unwrap();
        let bias = (step.mean - 7.1145571519660093e-6).abs();
        assert!(bias > 5e-9, "{bias}");
        assert!(bias <= step.rounding.bias, "{bias} vs {:?}", step.rounding);
        // A smooth density: second moment near h^2 / 12.
        let smooth = OneStep::new(
            SubsampledGaussianPrv {
                q: 0.01,
                sigma: 1.0,
            },
            1e-5,
            1e-14,
        )
        .unwrap();
        let ratio = smooth.rounding.second_moment / (1e-10 / 12.0);
        assert!((1.0..1.01).contains(&ratio), "{ratio}");
    }

    /// One Gaussian step far narrower than the planned mesh: the rounding bounds overrun the
    /// budget, the mesh shrinks, and the bracket still holds the exact epsilon.
    #[test]
    fn an_overrun_mesh_shrinks_and_the_bracket_holds() {
        let mut acc = PrvAccountant::new(0.01).unwrap();
        acc.compose(&DpEvent::dp_sgd(1.0, 100.0, 1)).unwrap();
        let plan = Plan::new(0.01, 1e-8, &acc.steps);
        let (kinds, _) = acc.discretise(&plan, 1e-8).unwrap();
        assert!(kinds[0].pmf.mesh < plan.fine_mesh, "{plan:?}");
        let exact = gaussian_epsilon(100.0, 1e-5).unwrap();
        let b = acc.epsilon_bounds(1e-5).unwrap();
        assert!(b.lower <= exact && exact <= b.upper, "{b:?} vs {exact}");
    }

    /// Epsilon far above 709, where `e^epsilon` overflows and `e^(-t)` underflows: 20 Gaussian
    /// steps of noise 0.1 are one Gaussian of noise 0.1 / sqrt(20) (epsilon about 1,100), and
    /// the bracket must hold its exact epsilon (it was infinite before the tail sums were
    /// scaled).
    #[test]
    fn large_epsilons_are_finite_and_bracket_the_exact_gaussian() {
        let mut acc = PrvAccountant::new(0.01).unwrap();
        acc.compose(&DpEvent::dp_sgd(1.0, 0.1, 20)).unwrap();
        let exact = gaussian_epsilon(0.1 / 20f64.sqrt(), 1e-5).unwrap();
        assert!(exact > 900.0, "{exact}");
        let b = acc.epsilon_bounds(1e-5).unwrap();
        assert!(b.lower <= exact && exact <= b.upper, "{b:?} vs {exact}");
    }

    /// The speed plan (q = 0.01, sigma = 1, 1e5 steps) against the single-stage result of the
    /// previous implementation (7e6 points on [-L, L]): estimate 25.573107, bracket
    /// [25.562149, 25.584066].
    #[test]
    fn two_stage_matches_the_single_stage_result() {
        let mut acc = PrvAccountant::new(0.01).unwrap();
        acc.compose(&DpEvent::dp_sgd(0.01, 1.0, 100_000)).unwrap();
        let plan = Plan::new(0.01, 1e-8, &acc.steps);
        let (_, (ratio, _)) = acc.discretise(&plan, 1e-8).unwrap();
        assert!(ratio > 1, "{plan:?}");
        let b = acc.epsilon_bounds(1e-5).unwrap();
        assert!((b.estimate - 25.573107).abs() < 1e-4, "{b:?}");
        assert!((b.upper - 25.584066).abs() < 1e-4, "{b:?}");
    }
}
