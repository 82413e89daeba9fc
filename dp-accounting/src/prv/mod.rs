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
//! 1. Discretisation of each kind of step on the fine lattice: `one_step`.
//! 2. Regridding of each block, and 3. the Bernstein bound over all rounding errors: `plan`.
//! 4. Cutting the tails costs at most `T * delta_error / (3 T)` in total variation.
//! 5. Wrap-around and left-out spectrum, and 6. the epsilon bracket: `composed`.

mod composed;
mod one_step;
mod plan;
mod pmf;
mod spectrum;
mod subsampled_gaussian;

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::{matrix_factorization_equivalent, DpEvent};
use crate::rdp::RdpAccountant;
use composed::{fine_window, ComposedPrv};
use one_step::OneStep;
use plan::{split_budget, Plan, MAX_TRIES, SHRINK};
pub(crate) use pmf::fast_fft_size;
use pmf::{chernoff_window, Composer, Pmf, Window};
use subsampled_gaussian::SubsampledGaussianPrv;

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
