//! The privacy loss random variable (PRV) of one Poisson-subsampled Gaussian step, in the
//! remove direction (Gopi, Lee, Wutschitz 2021, Sec. 3 and App. B).
//!
//! With `x ~ P = (1 - q) N(0, sigma^2) + q N(1, sigma^2)` and `Q = N(0, sigma^2)`, the loss is
//! `Y = log(P(x)/Q(x)) = log(1 - q + q exp((2x - 1)/(2 sigma^2)))`, increasing in x, supported on
//! `(log(1 - q), inf)`. So `Y <= t` iff `x <= z(t) = sigma^2 log((e^t - 1 + q)/q) + 1/2`, and
//!
//! `F(t) = (1 - q) Phi(z/sigma) + q Phi((z - 1)/sigma)`.
//!
//! Both the CDF and the survival function are formed from `erfc` (not one from the other), so
//! small masses in either tail keep their relative precision.
//!
//! The log-density's slope: with `w(x) = (2x - 1)/(2 sigma^2)`, `Y = g(x) = log(1 - q + q e^w)`,
//! `g'(x) = s / sigma^2` for `s = q e^w / (1 - q + q e^w) = 1 - (1 - q) e^(-t)` (at `t = g(x)`;
//! increasing in t), and `s` is also the posterior weight of the mean-1 component, so
//! `(log pdf_X)'(x) = -(x - s)/sigma^2` and `(log g')'(x) = (1 - s)/sigma^2`. Hence
//!
//! `d/dt log pdf_Y(t) = ((log pdf_X)' - (log g')')(x) / g'(x) = -(x + 1 - 2 s) / s`, `x = z(t)`.

#[cfg(test)]
use std::f64::consts::PI;
use std::f64::consts::SQRT_2;

use crate::special::erfc;

/// One step's PRV: sampling rate `q` in (0, 1] and noise multiplier `sigma` > 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SubsampledGaussianPrv {
    pub q: f64,
    pub sigma: f64,
}

impl SubsampledGaussianPrv {
    /// `log((e^t - 1 + q) / q)`, or `None` below the support: from `e^t - 1 + q` near the
    /// support's start (accurate there), and as `t + log(1 - (1 - q) e^-t) - log q` for `t > 0`,
    /// where `e^t` would overflow past 709 (a step with little noise puts its mass there).
    fn log_ratio(&self, t: f64) -> Option<f64> {
        if t > 0.0 {
            return Some(t + (-(1.0 - self.q) * (-t).exp()).ln_1p() - self.q.ln());
        }
        let inner = t.exp_m1() + self.q;
        (inner > 0.0).then(|| (inner / self.q).ln())
    }

    /// `x` threshold `z(t)`, or `None` below the support.
    fn threshold(&self, t: f64) -> Option<f64> {
        self.log_ratio(t).map(|r| self.sigma * self.sigma * r + 0.5)
    }

    /// At `t`: `P[Y <= t]` if `t < 0`, else `P[Y > t]`, with `z(t)` and `s(t)` (see the module
    /// docs). Below the support: `(0, -inf, 0)`.
    pub fn tail_and_slope_terms(&self, t: f64) -> (f64, f64, f64) {
        let Some(z) = self.threshold(t) else {
            return (0.0, f64::NEG_INFINITY, 0.0);
        };
        let tail = if t < 0.0 {
            self.mixture_tail(-z, 1.0 - z)
        } else {
            self.mixture_tail(z, z - 1.0)
        };
        // s = (e^t - 1 + q) / e^t = 1 - (1 - q) e^-t.
        (tail, z, -(1.0 - self.q) * (-t).exp() + 1.0)
    }

    /// `P[Y <= t]`.
    pub fn cdf(&self, t: f64) -> f64 {
        self.threshold(t)
            .map_or(0.0, |z| self.mixture_tail(-z, 1.0 - z))
    }

    /// `P[Y > t]`.
    pub fn survival(&self, t: f64) -> f64 {
        self.threshold(t)
            .map_or(1.0, |z| self.mixture_tail(z, z - 1.0))
    }

    /// `(1 - q) Phi_bar(u0 / sigma) + q Phi_bar(u1 / sigma)`, with `Phi_bar` the normal tail.
    fn mixture_tail(&self, u0: f64, u1: f64) -> f64 {
        let s = self.sigma * SQRT_2;
        0.5 * ((1.0 - self.q) * erfc(u0 / s) + self.q * erfc(u1 / s))
    }

    /// The density of Y at `t` (0 below the support); the tests check the other functions with it.
    #[cfg(test)]
    pub fn pdf(&self, t: f64) -> f64 {
        let Some(z) = self.threshold(t) else {
            return 0.0;
        };
        let sigma = self.sigma;
        let phi = |u: f64| (-0.5 * u * u).exp() / (2.0 * PI).sqrt();
        let dz_dt = sigma * sigma * t.exp() / (t.exp_m1() + self.q);
        ((1.0 - self.q) * phi(z / sigma) + self.q * phi((z - 1.0) / sigma)) / sigma * dz_dt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batch_is_gaussian_with_mean_mu_and_variance_2mu() {
        // q = 1: Y ~ N(1/(2 sigma^2), 1/sigma^2).
        let prv = SubsampledGaussianPrv { q: 1.0, sigma: 2.0 };
        assert!((prv.cdf(0.125) - 0.5).abs() < 1e-15 && (prv.survival(0.125) - 0.5).abs() < 1e-15);
        assert!(
            (prv.cdf(0.625) - 0.841_344_746_068_542_9).abs() < 1e-12,
            "{}",
            prv.cdf(0.625)
        );
        assert!((prv.cdf(0.625) + prv.survival(0.625) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn cdf_is_monotone_and_pdf_integrates_to_it() {
        let prv = SubsampledGaussianPrv {
            q: 0.01,
            sigma: 1.0,
        };
        let (a, b) = (-0.005, 0.02);
        let n = 20_000;
        let h = (b - a) / n as f64;
        let integral: f64 = (0..n).map(|i| prv.pdf(a + (i as f64 + 0.5) * h) * h).sum();
        let mass = prv.cdf(b) - prv.cdf(a);
        assert!(
            (integral - mass).abs() < 1e-7 * mass.max(1e-3),
            "{integral} vs {mass}"
        );
        let below = (0.99f64).ln() - 1e-9;
        assert_eq!((prv.cdf(below), prv.survival(below)), (0.0, 1.0));
    }

    #[test]
    fn log_density_slope_matches_finite_differences() {
        for (q, sigma) in [(0.01, 1.0), (0.3, 0.6), (1.0, 2.0)] {
            let prv = SubsampledGaussianPrv { q, sigma };
            for t in [-0.005, 0.01, 0.3, 2.0] {
                let (_, z, s) = prv.tail_and_slope_terms(t);
                let slope = -(z + 1.0 - 2.0 * s) / s;
                let d = 1e-6;
                let numeric = (prv.pdf(t + d).ln() - prv.pdf(t - d).ln()) / (2.0 * d);
                assert!(
                    (slope - numeric).abs() < 1e-5 * (1.0 + slope.abs()),
                    "q {q} sigma {sigma} t {t}: {slope} vs {numeric}"
                );
            }
        }
    }
}
