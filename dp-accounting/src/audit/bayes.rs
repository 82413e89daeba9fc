//! Bayesian estimate of epsilon from membership-inference counts (Zanella-Béguelin et al.,
//! "Bayesian Estimation of Differential Privacy", ICML 2023).
//!
//! With Jeffreys priors the false positive and false negative rates have independent posteriors
//! `FPR ~ Beta(FP + 1/2, TN + 1/2)` and `FNR ~ Beta(FN + 1/2, TP + 1/2)`. Epsilon is a function
//! of the rates, so its posterior CDF is the posterior mass of the privacy region:
//!
//! `P[eps <= x] = int_0^1 p_FNR(b) [G(hi_x(b)) - G(lo_x(b))] db`,
//!
//! with G the FPR posterior CDF and `[lo_x(b), hi_x(b)]` the region's FPR range. The inner
//! integral is exact (Beta CDF); the outer one is adaptive Gauss–Kronrod on pieces split at
//! the region's kinks, at the FNR posterior's quantiles and where the region's edges cross the
//! FPR posterior's quantiles, with `b = t^2` (`1 - b = s^2`) at the ends to remove the Jeffreys
//! singularities. Quantiles are the smallest x with `P[eps <= x] >= q` (so a level below the
//! atom at 0 gives 0), found by bisection to 1e-9; none is capped.

use super::beta::Beta;
use super::quadrature::integrate;
use super::region::{crossings, fpr_range, kinks};

/// Quantile levels of each posterior used as breakpoints.
const SPLIT_LEVELS: [f64; 11] = [
    1e-14,
    1e-8,
    1e-4,
    0.01,
    0.1,
    0.5,
    0.9,
    0.99,
    1.0 - 1e-4,
    1.0 - 1e-8,
    1.0 - 1e-14,
];

/// Largest epsilon searched for a quantile; beyond it the quantile is reported as infinite.
const MAX_EPSILON: f64 = 700.0;

/// The posterior of epsilon given the counts.
pub(crate) struct EpsilonPosterior {
    fpr: Beta,
    fnr: Beta,
    delta: f64,
    fpr_quantiles: Vec<f64>,
    fnr_quantiles: Vec<f64>,
}

impl EpsilonPosterior {
    pub fn new(fp: u64, fn_: u64, positives: u64, negatives: u64, delta: f64) -> Self {
        let (tp, tn) = (positives - fn_, negatives - fp);
        let fpr = Beta::new(fp as f64 + 0.5, tn as f64 + 0.5);
        let fnr = Beta::new(fn_ as f64 + 0.5, tp as f64 + 0.5);
        let fpr_quantiles = SPLIT_LEVELS.iter().map(|&p| fpr.quantile(p)).collect();
        let fnr_quantiles = SPLIT_LEVELS.iter().map(|&p| fnr.quantile(p)).collect();
        Self {
            fpr,
            fnr,
            delta,
            fpr_quantiles,
            fnr_quantiles,
        }
    }

    /// `P[eps <= x]`.
    pub fn cdf(&self, x: f64) -> f64 {
        let mut cuts = vec![0.0, 1.0];
        cuts.extend(kinks(x, self.delta));
        cuts.extend(&self.fnr_quantiles);
        for &alpha in &self.fpr_quantiles {
            cuts.extend(crossings(alpha, x, self.delta));
        }
        cuts.retain(|b| (0.0..=1.0).contains(b));
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        let mut inner = |b: f64| -> f64 {
            if b <= 0.0 || b >= 1.0 {
                return 0.0;
            }
            let (lo, hi) = fpr_range(b, x, self.delta);
            if hi <= lo {
                return 0.0;
            }
            let (cdf_lo, sf_lo) = self.fpr.cdf_and_sf(lo);
            let (cdf_hi, sf_hi) = self.fpr.cdf_and_sf(hi);
            let mass = if lo >= 0.5 {
                sf_lo - sf_hi
            } else {
                cdf_hi - cdf_lo
            };
            self.fnr.pdf(b) * mass.max(0.0)
        };
        let last = cuts.len() - 1;
        let mut total = 0.0;
        for (i, w) in cuts.windows(2).enumerate() {
            let (a, b) = (w[0], w[1]);
            total += if i == 0 {
                // b = t^2 near 0.
                integrate(
                    &mut |t: f64| inner(t * t) * 2.0 * t,
                    0.0,
                    b.sqrt(),
                    1e-12,
                    30,
                )
            } else if i == last - 1 {
                // 1 - b = s^2 near 1.
                integrate(
                    &mut |s: f64| inner(1.0 - s * s) * 2.0 * s,
                    0.0,
                    (1.0 - a).sqrt(),
                    1e-12,
                    30,
                )
            } else {
                integrate(&mut inner, a, b, 1e-12, 30)
            };
        }
        total.clamp(0.0, 1.0)
    }

    /// The smallest x with `P[eps <= x] >= q` (infinite beyond `MAX_EPSILON`).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.cdf(0.0) >= q {
            return 0.0;
        }
        let (mut lo, mut hi) = (0.0, 1.0);
        while self.cdf(hi) < q {
            lo = hi;
            hi *= 2.0;
            if hi > MAX_EPSILON {
                return if self.cdf(MAX_EPSILON) >= q {
                    self.bisect(q, lo, MAX_EPSILON)
                } else {
                    f64::INFINITY
                };
            }
        }
        self.bisect(q, lo, hi)
    }

    fn bisect(&self, q: f64, mut lo: f64, mut hi: f64) -> f64 {
        while hi - lo > 1e-9 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) >= q {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}
