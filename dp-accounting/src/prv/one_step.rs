//! One step's privacy loss discretised on the fine lattice, with the moments of its
//! rounding error bounded cell by cell (part 1 of the error argument in the parent module).
//!
//! Discretisation: one step's `Y`, cut to `[lo, hi]` with `P[Y < lo] = P[Y > hi] <=
//! delta_error / (6 T)` and renormalised, goes cell-centred to the lattice point `t = k h1` of
//! its cell `[t - h1/2, t + h1/2]`: an error `Z = t - Y` in `[-h1/2, h1/2]`. Its moments are
//! bounded cell by cell from `d/dt log pdf = -(x + 1 - 2s)/s` (see `subsampled_gaussian`),
//! whose range on a cell follows from `x` and `s` at the edges. With `u = h1 max |d/dt log
//! pdf|`, `sup pdf <= e^u inf pdf <= e^u p / h1` for a cell of mass `p`, so on a full cell
//! with `u <= 1/32` ("smooth"): `E[Z^2; cell] <= e^u p h1^2 / 12`; and, integrating by parts
//! with `G(y) = ((y - t)^2 - h1^2/4)/2` (zero at the edges, mean `-h1^2/12`, `|G + h1^2/12| <=
//! h1^2/12`), `E[Z; cell] = -h1^2 (pdf(b) - pdf(a)) / 12 + r` with `|r| <= h1^3 osc(pdf')/24`
//! and `osc(pdf') <= sup pdf (range of the slope + u max |slope|)`. Over a run of smooth cells
//! the first terms telescope to at most `h1^2 / 12` times the density at the run's two ends.
//! Other ("rough") cells, near the support's start where the density piles up, or the two cut
//! cells, are split into up to 4096 sub-cells of width `w` with their masses computed: `E[Z;
//! cell]` is the computed `sum (t - c) p_sub` plus at most `(e^u' - 1) p_sub w / 8` per
//! sub-cell (`c` its midpoint), and the second moment follows likewise. This gives `|E[Z]| <=
//! mu` and `E[Z^2] <= v` per kind of step.

use rayon::prelude::*;

use super::pmf::Pmf;
use super::subsampled_gaussian::SubsampledGaussianPrv;
use super::MAX_STEP_LATTICE;
use crate::accountant::Accountant;
use crate::error::AccountingError;
use crate::event::DpEvent;
use crate::rdp::RdpAccountant;

/// One kind of step discretised on the fine lattice, with what its windows need.
pub(super) struct OneStep {
    pub(super) pmf: Pmf,
    pub(super) mean: f64,
    pub(super) variance: f64,
    /// `(lambda, u)` with `u >= log E[e^(lambda Y~)]`, for `lambda = alpha - 1` over the RDP
    /// orders.
    pub(super) log_mgf_bounds: Vec<(f64, f64)>,
    pub(super) rounding: Rounding,
}

/// Bounds on the cell-centred rounding error `Z` of one step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rounding {
    /// `E[Z^2] <=` this.
    pub(super) second_moment: f64,
    /// `|E[Z]| <=` this.
    pub(super) bias: f64,
}

impl OneStep {
    /// Cell-centred pmf of the PRV cut to `[lo, hi]` (each tail at most `tail` in mass),
    /// renormalised, with bounds on its rounding error's second moment and mean (module docs).
    pub(super) fn new(
        prv: SubsampledGaussianPrv,
        mesh: f64,
        tail: f64,
    ) -> Result<Self, AccountingError> {
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
pub(super) struct Edge {
    t: f64,
    tail: f64,
    z: f64,
    s: f64,
}

impl Edge {
    pub(super) fn new(prv: SubsampledGaussianPrv, t: f64) -> Self {
        let (tail, z, s) = prv.tail_and_slope_terms(t);
        Edge { t, tail, z, s }
    }

    /// `P[a < Y <= b]`.
    pub(super) fn mass_to(&self, b: &Edge) -> f64 {
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
    pub(super) fn slope_range(&self, b: &Edge) -> (f64, f64) {
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
pub(super) const CELL_CHUNK: usize = 4096;

/// Cells with `u = h max |d/dt log pdf| <= SMOOTH_SLOPE` take the smooth-cell bounds.
pub(super) const SMOOTH_SLOPE: f64 = 1.0 / 32.0;

/// Most sub-cells a rough cell is split into.
pub(super) const MAX_SUBCELLS: f64 = 4096.0;

/// One cell of a one-step pmf and the bounds on its part of the rounding error `Z = centre - Y`
/// (module docs).
pub(super) struct Cell {
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
    pub(super) fn new(
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
pub(super) fn switch_point(holds: impl Fn(f64) -> bool) -> (f64, f64) {
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
