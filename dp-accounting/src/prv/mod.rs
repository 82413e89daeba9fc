//! The PRV accountant (Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential
//! Privacy", NeurIPS): the privacy loss random variable of each step is discretised on a grid
//! of mesh `h`, composed by FFT, and read off with error bounds.
//!
//! - Error split: `delta_error = delta / 1000`; `eta = delta_error / 3`; mesh
//!   `h = 2 eps_error / sqrt(2 T log(2 / eta))` for `T` composed steps (Thm 5.5 with Hoeffding).
//! - Domain `[-L, L]` with `L = 3 + max(eps_error + eps_RDP(all steps, delta_error / 4),
//!   eps_RDP(one step, delta_error / (8 T)))`: mass beyond it is inside `delta_error` (Remark 5.6).
//! - Cell-centred discretisation: the mass of `[t - h/2, t + h/2]` is put at `t`. Its mean equals
//!   the continuous mean up to `h^2 (pdf(-L) + pdf(L)) / 8`, which is checked to be negligible
//!   (the coupling then has zero-mean errors bounded by `h/2`, as the theorem requires).
//! - Composition: `irfft(prod_i rfft(pmf_i)^(T_i))` on the circle; `L` keeps wrap-around
//!   inside the error budget.
//! - `delta(eps) = E[(1 - e^(eps - Y))_+]`; the estimate inverts it; the bounds are
//!   `eps_lower = eps(delta + delta_error) - eps_error` and
//!   `eps_upper = eps(delta - delta_error) + eps_error`. The accountant reports `eps_upper`.

mod subsampled_gaussian;

use rayon::prelude::*;
use realfft::num_complex::Complex64;
use realfft::RealFftPlanner;

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::{matrix_factorization_equivalent, DpEvent};
use crate::rdp::RdpAccountant;
use subsampled_gaussian::SubsampledGaussianPrv;

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
    rdp: RdpAccountant,
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
            rdp: RdpAccountant::default(),
        })
    }

    /// The epsilon bracket for `delta`.
    pub fn epsilon_bounds(&self, delta: f64) -> Result<EpsilonBounds, AccountingError> {
        check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
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
        let composed = self.compose_grid(delta_error)?;
        let eps = |d: f64| composed.epsilon(d);
        Ok(EpsilonBounds {
            lower: (eps(delta + delta_error) - self.epsilon_error).max(0.0),
            estimate: eps(delta),
            upper: eps(delta - delta_error) + self.epsilon_error,
        })
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
        let rdp_delta = self.rdp.delta(epsilon)?;
        let delta_error = (rdp_delta / 1000.0).max(1e-15);
        let composed = self.compose_grid(delta_error)?;
        Ok((composed.delta(epsilon - self.epsilon_error) + delta_error).min(1.0))
    }

    fn total_steps(&self) -> u64 {
        self.steps.iter().map(|s| s.2).sum()
    }

    fn compose_grid(&self, delta_error: f64) -> Result<ComposedPrv, AccountingError> {
        let total = self.total_steps() as f64;
        let eta = delta_error / 3.0;
        let mesh = 2.0 * self.epsilon_error / (2.0 * total * (2.0 / eta).ln()).sqrt();
        let mut half_width = self.epsilon_error + self.rdp.epsilon(delta_error / 4.0)?;
        for &(q, sigma, _) in &self.steps {
            let mut one = RdpAccountant::default();
            one.compose(&DpEvent::dp_sgd(q, sigma, 1))?;
            half_width = half_width.max(one.epsilon(delta_error / (8.0 * total))?);
        }
        let half_width = half_width + 3.0;
        let k = (half_width / mesh).ceil() as usize;
        // At least [-k h, (k + 1) h]; extended on the right to a size the FFT handles fast.
        let n = fast_fft_size(2 * k + 2);
        if n > MAX_GRID {
            return Err(AccountingError::InvalidParameter {
                name: "epsilon_error",
                value: self.epsilon_error,
                expected:
                    "a coarser error: the PRV grid would exceed 2^28 points (use --accountant rdp)",
            });
        }
        let t_min = -(k as f64) * mesh;
        let grid = Grid { t_min, mesh, n };

        let mut planner = RealFftPlanner::<f64>::new();
        let forward = planner.plan_fft_forward(n);
        let mut spectrum = vec![Complex64::new(1.0, 0.0); n / 2 + 1];
        let mut scratch = forward.make_output_vec();
        for &(q, sigma, count) in &self.steps {
            let mut pmf = grid.discretise(
                SubsampledGaussianPrv { q, sigma },
                self.epsilon_error,
                total,
            )?;
            forward.process(&mut pmf, &mut scratch).map_err(fft_error)?;
            let count = u32::try_from(count)
                .map_err(|_| AccountingError::Numerical(format!("{count} steps exceed 2^32")))?;
            spectrum
                .par_iter_mut()
                .zip(&scratch)
                .for_each(|(s, f)| *s *= f.powu(count));
        }
        let inverse = planner.plan_fft_inverse(n);
        let mut composed = inverse.make_output_vec();
        inverse
            .process(&mut spectrum, &mut composed)
            .map_err(fft_error)?;
        // Value of circular index j: total * t_min + j * mesh; the domain index i maps to
        // j = i + (total - 1) * k (mod n).
        let offset = ((self.total_steps() - 1) as u128 * k as u128 % n as u128) as usize;
        let scale = 1.0 / n as f64;
        let pmf: Vec<f64> = (0..n).map(|i| composed[(i + offset) % n] * scale).collect();
        Ok(ComposedPrv::new(grid, pmf))
    }
}

/// The smallest even `2^a 3^b 5^c` at or above `n`.
pub(crate) fn fast_fft_size(n: usize) -> usize {
    let mut best = n.next_power_of_two().max(2);
    let mut p5 = 1;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut size = p35 * 2;
            while size < n {
                size *= 2;
            }
            best = best.min(size);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

/// Grids beyond this (2 GiB per buffer) are refused rather than attempted.
const MAX_GRID: usize = 1 << 28;

fn fft_error(e: impl std::fmt::Display) -> AccountingError {
    AccountingError::Numerical(format!("FFT failed: {e}"))
}

/// The grid `t_i = t_min + i h`, i = 0..n.
#[derive(Debug, Clone, Copy)]
struct Grid {
    t_min: f64,
    mesh: f64,
    n: usize,
}

impl Grid {
    fn t(&self, i: usize) -> f64 {
        self.t_min + i as f64 * self.mesh
    }

    /// Cell-centred pmf of the PRV truncated to the grid's range, normalised.
    fn discretise(
        &self,
        prv: SubsampledGaussianPrv,
        epsilon_error: f64,
        total_steps: f64,
    ) -> Result<Vec<f64>, AccountingError> {
        let (lo, hi) = (self.t(0), self.t(self.n - 1));
        let edge = |j: usize| (self.t_min + (j as f64 - 0.5) * self.mesh).clamp(lo, hi);
        // Past the point where the survival function underflows, every cell is empty: skip the
        // erfc evaluations there (most of the upper half of the domain).
        let empty_from = prv.survival_underflow(hi);
        let values: Vec<(f64, f64, f64)> = (0..=self.n)
            .into_par_iter()
            .map(|j| {
                // (t, F(t) where t < 0, S(t) where t >= 0): each cell needs only one of them.
                let t = edge(j);
                if t >= empty_from {
                    (t, f64::NAN, 0.0)
                } else if t >= 0.0 {
                    (t, f64::NAN, prv.survival(t))
                } else {
                    (t, prv.cdf(t), f64::NAN)
                }
            })
            .collect();
        // Cells at t >= 0 use survival differences, cells below use CDF differences; the total
        // mass of the truncated range is P[lo <= Y <= hi] = (1 - S(hi)) - F(lo).
        let mass = 1.0 - prv.survival(hi) - prv.cdf(lo);
        let mut pmf: Vec<f64> = values
            .par_windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                let m = if a.0 >= 0.0 {
                    a.2 - b.2
                } else if b.0 >= 0.0 {
                    // The cell straddling 0: F(b) - F(a) with F(b) = 1 - S(b).
                    (1.0 - b.2) - a.1
                } else {
                    b.1 - a.1
                };
                m.max(0.0) / mass
            })
            .collect();
        // Mean preservation: the discrete mean is off by at most h^2 (pdf(lo) + pdf(hi)) / 8.
        let bias = self.mesh * self.mesh * (prv.pdf(lo) + prv.pdf(hi)) / 8.0;
        if bias * total_steps > 1e-3 * epsilon_error {
            return Err(AccountingError::InvalidParameter {
                name: "epsilon_error",
                value: epsilon_error,
                expected:
                    "a domain whose edges carry negligible density (the PRV grid is too narrow)",
            });
        }
        pmf.truncate(self.n);
        Ok(pmf)
    }
}

/// A composed, discretised PRV with suffix sums for delta and epsilon queries.
struct ComposedPrv {
    grid: Grid,
    /// First index with a non-negative value: only those matter for epsilon >= 0.
    start: usize,
    /// `sum_{j >= i} p_j` and `sum_{j >= i} p_j e^(-t_j)`, for i >= start.
    tail_mass: Vec<f64>,
    tail_weighted: Vec<f64>,
}

impl ComposedPrv {
    fn new(grid: Grid, pmf: Vec<f64>) -> Self {
        let start = ((-grid.t_min / grid.mesh).floor().max(0.0) as usize).min(grid.n - 1);
        let len = grid.n - start;
        let (mut tail_mass, mut tail_weighted) = (vec![0.0; len + 1], vec![0.0; len + 1]);
        for i in (0..len).rev() {
            let j = start + i;
            tail_mass[i] = tail_mass[i + 1] + pmf[j];
            tail_weighted[i] = tail_weighted[i + 1] + pmf[j] * (-grid.t(j)).exp();
        }
        Self {
            grid,
            start,
            tail_mass,
            tail_weighted,
        }
    }

    /// Index (relative to `start`) of the first grid value >= `epsilon`.
    fn first_at_or_above(&self, epsilon: f64) -> usize {
        let i = ((epsilon - self.grid.t(self.start)) / self.grid.mesh)
            .ceil()
            .max(0.0) as usize;
        i.min(self.tail_mass.len() - 1)
    }

    /// `delta(epsilon) = sum_{t_j >= epsilon} p_j (1 - e^(epsilon - t_j))`.
    fn delta(&self, epsilon: f64) -> f64 {
        let i = self.first_at_or_above(epsilon.max(0.0));
        (self.tail_mass[i] - epsilon.exp() * self.tail_weighted[i]).max(0.0)
    }

    /// The smallest epsilon >= 0 with `delta(epsilon) <= delta`.
    fn epsilon(&self, delta: f64) -> f64 {
        let at = |i: usize| {
            self.tail_mass[i] - self.grid.t(self.start + i).exp() * self.tail_weighted[i]
        };
        if self.delta(0.0) <= delta {
            return 0.0;
        }
        // delta at grid points decreases with i: find the first i with at(i) <= delta.
        let (mut lo, mut hi) = (0usize, self.tail_mass.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if at(mid) <= delta {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        // On [t_{i-1}, t_i], delta(eps) = tail_mass[i] - e^eps tail_weighted[i].
        let i = lo.max(1);
        let eps = ((self.tail_mass[i] - delta) / self.tail_weighted[i]).ln();
        eps.clamp(
            self.grid.t(self.start + i - 1).max(0.0),
            self.grid.t(self.start + i),
        )
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
        self.rdp.compose(event)?;
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
