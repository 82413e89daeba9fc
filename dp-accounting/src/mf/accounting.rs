//! Privacy of the factorized Gaussian mechanism.
//!
//! **Unamplified** (any C, any participation pattern its sensitivity covers): the run releases
//! `C X + Z` with `Z ~ N(0, sigma^2 clip^2 sens(C)^2)`, a Gaussian mechanism with L2
//! sensitivity `clip x sens(C)`, so it is `mu`-GDP with `mu = 1 / sigma` whatever C, n and k
//! (Denisov et al. 2022; Choquette-Choo et al. 2023). Its exact privacy profile is the
//! analytic Gaussian mechanism's (Balle and Wang 2018; Dong, Roth and Su 2022):
//!
//! `delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2)`.
//!
//! **Amplified BandMF** (Choquette-Choo et al. 2023, Thm 4): when C is `p`-banded, the data is
//! split into `p` groups and step `t` Poisson-samples group `t mod p` with rate `q`, the run
//! with noise `sigma x clip x (max column norm of C)` is exactly as private as DP-SGD with rate
//! `q` and noise multiplier `sigma` for `ceil(n / p)` steps. No such reduction is used for
//! non-banded C (BLT, square root, nu-DP-FTRL): they are accounted unamplified.

use super::strategy::Strategy;
use crate::error::{check_range, AccountingError};
use crate::event::{CyclicPoisson, DpEvent};
use crate::special::{log_erfc, log_sub};

/// `log Phi(x)` for the standard normal distribution function.
fn log_normal_cdf(x: f64) -> f64 {
    log_erfc(-x / std::f64::consts::SQRT_2) - std::f64::consts::LN_2
}

/// The exact delta of the Gaussian mechanism with `noise_multiplier` (noise standard
/// deviation over the L2 sensitivity) at `epsilon`.
pub fn gaussian_delta(noise_multiplier: f64, epsilon: f64) -> Result<f64, AccountingError> {
    check_range(
        "noise_multiplier",
        noise_multiplier,
        noise_multiplier > 0.0,
        "sigma > 0",
    )?;
    check_range("epsilon", epsilon, epsilon >= 0.0, "epsilon >= 0")?;
    Ok(delta_unchecked(1.0 / noise_multiplier, epsilon))
}

fn delta_unchecked(mu: f64, epsilon: f64) -> f64 {
    let a = log_normal_cdf(-epsilon / mu + mu / 2.0);
    let b = epsilon + log_normal_cdf(-epsilon / mu - mu / 2.0);
    log_sub(a, b).exp()
}

/// The smallest epsilon (to a relative 1e-12, rounded up) at which the Gaussian mechanism with
/// `noise_multiplier` is (epsilon, `delta`)-DP.
pub fn gaussian_epsilon(noise_multiplier: f64, delta: f64) -> Result<f64, AccountingError> {
    check_range(
        "noise_multiplier",
        noise_multiplier,
        noise_multiplier > 0.0,
        "sigma > 0",
    )?;
    check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
    let mu = 1.0 / noise_multiplier;
    if delta_unchecked(mu, 0.0) <= delta {
        return Ok(0.0);
    }
    let mut hi = 1.0;
    while delta_unchecked(mu, hi) > delta {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    while hi - lo > 1e-12 * hi {
        let mid = 0.5 * (lo + hi);
        if delta_unchecked(mu, mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// The smallest noise multiplier (to a relative 1e-12, rounded up) for which the Gaussian
/// mechanism is (`epsilon`, `delta`)-DP: the sigma of an unamplified matrix-factorization run.
pub fn gaussian_noise_multiplier(epsilon: f64, delta: f64) -> Result<f64, AccountingError> {
    check_range("epsilon", epsilon, epsilon > 0.0, "epsilon > 0")?;
    check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
    // delta falls as sigma grows; bracket, then bisect.
    let (mut lo, mut hi) = (1.0, 1.0);
    while delta_unchecked(1.0 / hi, epsilon) > delta {
        hi *= 2.0;
    }
    while delta_unchecked(1.0 / lo, epsilon) <= delta && lo > 1e-6 {
        lo *= 0.5;
    }
    while hi - lo > 1e-12 * hi {
        let mid = 0.5 * (lo + hi);
        if delta_unchecked(1.0 / mid, epsilon) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

impl Strategy {
    /// The event of one whole run with this strategy and `noise_multiplier`.
    ///
    /// - `sampling_rate: None`: unamplified. Draw `z_t` with standard deviation
    ///   `noise_multiplier x clip x sens(C)`, `sens` under the run's participation pattern.
    /// - `Some(q)`: amplified BandMF with cyclic Poisson sampling; only for banded C (BSR,
    ///   optimal banded, and the identity, which is DP-SGD). Draw `z_t` with standard
    ///   deviation `noise_multiplier x clip x sens(C)` under a *single* participation (the
    ///   largest column norm), and at step t sample each example of group `t mod bands`
    ///   with probability q.
    pub fn dp_event(
        &self,
        noise_multiplier: f64,
        sampling_rate: Option<f64>,
    ) -> Result<DpEvent, AccountingError> {
        check_range(
            "noise_multiplier",
            noise_multiplier,
            noise_multiplier > 0.0,
            "sigma > 0",
        )?;
        let amplification = match sampling_rate {
            None => None,
            Some(q) => {
                check_range("sampling_rate", q, q > 0.0 && q <= 1.0, "0 < q <= 1")?;
                let Some(bands) = self.bands() else {
                    return Err(AccountingError::InvalidParameter {
                        name: "sampling_rate",
                        value: q,
                        expected: "no sampling rate: amplification by sampling is proven for banded strategies only (BandMF); this one is accounted unamplified",
                    });
                };
                Some(CyclicPoisson {
                    bands: bands as u64,
                    sampling_probability: q,
                })
            }
        };
        Ok(DpEvent::MatrixFactorization {
            noise_multiplier,
            steps: self.steps() as u64,
            amplification,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_profile_round_trips() {
        let eps = gaussian_epsilon(1.0, 1e-5).unwrap();
        // Bisection of the same profile with Python's math.erfc.
        assert!((eps - 4.377_178_095_681_2).abs() < 1e-9, "{eps}");
        let delta = gaussian_delta(1.0, eps).unwrap();
        assert!((delta - 1e-5).abs() < 1e-12, "{delta}");
        let sigma = gaussian_noise_multiplier(eps, 1e-5).unwrap();
        assert!((sigma - 1.0).abs() < 1e-9, "{sigma}");
        assert_eq!(gaussian_epsilon(100.0, 0.01).unwrap(), 0.0);
        assert!(gaussian_epsilon(0.0, 1e-5).is_err());
        assert!(gaussian_noise_multiplier(1.0, 1.0).is_err());
        // Tiny deltas stay accurate in log space.
        let far = gaussian_epsilon(0.5, 1e-300).unwrap();
        assert!(far.is_finite() && gaussian_delta(0.5, far).unwrap() <= 1e-300 * (1.0 + 1e-9));
    }
}
