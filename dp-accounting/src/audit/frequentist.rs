//! Frequentist lower bounds on epsilon (Jagielski et al. 2020; Nasr et al. 2021): a confidence
//! interval on each error rate, joined by a union bound, and the corners of the resulting
//! rectangle mapped through `epsilon(alpha, beta; delta)`.
//!
//! At significance `a`, each rate gets a two-sided interval at level `1 - a/2`:
//! Clopper–Pearson `[BetaInv(a/4; k, n-k+1), BetaInv(1-a/4; k+1, n-k)]` (0 at k = 0, 1 at
//! k = n), or Jeffreys `Beta(k + 1/2, n - k + 1/2)` quantiles with the same forced endpoints.
//! The two-sided epsilon interval uses `a = 1 - level`; the one-sided lower bound is the lower
//! end of the construction at `a = 2 (1 - level)`, as privacy_estimates does.

use serde::Serialize;

use super::beta::Beta;
use super::region::epsilon_of_rates;

/// Which interval each rate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateInterval {
    ClopperPearson,
    Jeffreys,
}

/// A frequentist epsilon estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrequentistBounds {
    /// One-sided lower bound at the confidence level.
    pub eps_lo_one_sided: f64,
    /// Lower end of the two-sided interval.
    pub eps_lo_two_sided: f64,
    /// Upper end of the two-sided interval (infinite when a rate's bound reaches 0).
    pub eps_hi_two_sided: f64,
    /// `[FPR lower, FPR upper]` and `[FNR lower, FNR upper]` of the one-sided construction.
    pub rate_bounds_one_sided: [[f64; 2]; 2],
    /// The same for the two-sided construction.
    pub rate_bounds_two_sided: [[f64; 2]; 2],
}

fn rate_bounds(kind: RateInterval, k: u64, n: u64, a: f64) -> [f64; 2] {
    let (kf, nf) = (k as f64, n as f64);
    let (lower, upper) = match kind {
        RateInterval::ClopperPearson => (
            if k == 0 {
                0.0
            } else {
                Beta::new(kf, nf - kf + 1.0).quantile(a / 4.0)
            },
            if k == n {
                1.0
            } else {
                Beta::new(kf + 1.0, nf - kf).quantile(1.0 - a / 4.0)
            },
        ),
        RateInterval::Jeffreys => {
            let posterior = Beta::new(kf + 0.5, nf - kf + 0.5);
            (
                if k == 0 {
                    0.0
                } else {
                    posterior.quantile(a / 4.0)
                },
                if k == n {
                    1.0
                } else {
                    posterior.quantile(1.0 - a / 4.0)
                },
            )
        }
    };
    [lower, upper]
}

/// `(eps_lo, eps_hi)` over the rectangle of rate bounds.
fn epsilon_range(fpr: [f64; 2], fnr: [f64; 2], delta: f64) -> (f64, f64) {
    let low_corner = epsilon_of_rates(fpr[0], fnr[0], delta);
    let high_corner = epsilon_of_rates(fpr[1], fnr[1], delta);
    let straddles = fpr[0] + fnr[0] <= 1.0 && fpr[1] + fnr[1] >= 1.0;
    let lo = if straddles {
        0.0
    } else {
        low_corner.min(high_corner)
    };
    (lo, low_corner.max(high_corner))
}

pub(crate) fn frequentist_bounds(
    kind: RateInterval,
    fp: u64,
    fn_: u64,
    positives: u64,
    negatives: u64,
    delta: f64,
    level: f64,
) -> FrequentistBounds {
    let construct = |a: f64| {
        let fpr = rate_bounds(kind, fp, negatives, a);
        let fnr = rate_bounds(kind, fn_, positives, a);
        (fpr, fnr, epsilon_range(fpr, fnr, delta))
    };
    let (fpr1, fnr1, (lo1, _)) = construct(2.0 * (1.0 - level));
    let (fpr2, fnr2, (lo2, hi2)) = construct(1.0 - level);
    FrequentistBounds {
        eps_lo_one_sided: lo1,
        eps_lo_two_sided: lo2,
        eps_hi_two_sided: hi2,
        rate_bounds_one_sided: [fpr1, fnr1],
        rate_bounds_two_sided: [fpr2, fnr2],
    }
}
