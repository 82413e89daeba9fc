//! Privacy of tuning: run a private mechanism a random number K of times and release only the
//! best run (Papernot and Steinke 2022, "Hyperparameter Tuning with Renyi Differential
//! Privacy", ICLR, arXiv 2110.03620). The RDP curve of one run becomes, as in dp_accounting:
//!
//! - K ~ Poisson(mu) (Thm 6): `rdp'(l) = rdp(l) + mu delta_hat(l) + log(mu)/(l - 1)`, with
//!   `delta_hat(l)` the delta of one run at `eps_hat = log(1 + 1/(l - 1))`;
//! - K truncated negative binomial with shape eta >= 0 (eta = 0 logarithmic, 1 geometric;
//!   Thm 2), with gamma solving `E[K] = eta (1/gamma - 1) / (1 - gamma^eta) = mean`:
//!   `rdp'(l) = rdp(l) + log(mean)/(l - 1) + (1 + eta) min_j [(1 - 1/l_j) rdp(l_j) - log(gamma)/l_j]`,
//!   then made monotone: `rdp'(l) = min over l' >= l of rdp'(l')`.

use serde::{Deserialize, Serialize};

use crate::error::{check_range, AccountingError};
use crate::rdp::delta_from_rdp;

/// The distribution of the number of runs K.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum RunCount {
    /// K ~ Poisson with the event's mean (K = 0 releases nothing).
    Poisson,
    /// K truncated negative binomial with this shape (0: logarithmic, 1: geometric).
    TruncatedNegativeBinomial {
        /// The shape eta >= 0.
        shape: f64,
    },
}

/// The RDP curve of releasing the best of K runs, each with RDP curve `rdp` on `orders`.
pub fn repeat_and_select_rdp(
    orders: &[f64],
    rdp: &[f64],
    mean: f64,
    runs: RunCount,
) -> Result<Vec<f64>, AccountingError> {
    check_range("mean", mean, mean >= 1.0, "mean number of runs >= 1")?;
    match runs {
        RunCount::Poisson => orders
            .iter()
            .zip(rdp)
            .map(|(&l, &r)| {
                let eps_hat = (1.0 / (l - 1.0)).ln_1p();
                let (delta_hat, _) = delta_from_rdp(orders, rdp, eps_hat)?;
                Ok(r + mean * delta_hat + mean.ln() / (l - 1.0))
            })
            .collect(),
        RunCount::TruncatedNegativeBinomial { shape } => {
            check_range("shape", shape, shape >= 0.0, "shape >= 0")?;
            let gamma = tnb_gamma(shape, mean);
            let c = (1.0 + shape)
                * orders
                    .iter()
                    .zip(rdp)
                    .map(|(&l, &r)| (1.0 - 1.0 / l) * r - gamma.ln() / l)
                    .fold(f64::INFINITY, f64::min);
            let raw: Vec<f64> = orders
                .iter()
                .zip(rdp)
                .map(|(&l, &r)| r + mean.ln() / (l - 1.0) + c)
                .collect();
            // RDP is non-decreasing in the order: a larger order's bound holds for smaller ones.
            Ok(orders
                .iter()
                .map(|&l| {
                    orders
                        .iter()
                        .zip(&raw)
                        .filter(|(&lj, _)| lj >= l)
                        .map(|(_, &v)| v)
                        .fold(f64::INFINITY, f64::min)
                })
                .collect())
        }
    }
}

/// The gamma of a truncated negative binomial with this shape and mean, to relative 1e-9,
/// rounded towards the conservative end (smaller gamma, larger mean).
pub fn tnb_gamma(shape: f64, mean: f64) -> f64 {
    if shape == 1.0 {
        return 1.0 / mean;
    }
    let (mut lo, mut hi) = (0.0f64, (2.0 * (shape + 1.0) / mean).min(1.0));
    while hi > lo * (1.0 + 1e-9) {
        let gamma = 0.5 * (lo + hi);
        if tnb_mean(gamma, shape) < mean {
            hi = gamma;
        } else {
            lo = gamma;
        }
    }
    lo
}

/// `E[K] = eta (1/gamma - 1) / (1 - gamma^eta)` (`(1/gamma - 1)/log(1/gamma)` at eta = 0),
/// written with stable `(e^x - 1)/x` and `log(x)/(x - 1)`.
fn tnb_mean(gamma: f64, shape: f64) -> f64 {
    let logx_over_xm1 = |x: f64| {
        if (x - 1.0).abs() < 1e-8 {
            1.0 - (x - 1.0) / 2.0
        } else {
            x.ln() / (x - 1.0)
        }
    };
    let expm1_over_x = |x: f64| {
        if x.abs() < 1e-8 {
            1.0 + x / 2.0
        } else {
            x.exp_m1() / x
        }
    };
    if shape == 0.0 {
        1.0 / (gamma * logx_over_xm1(gamma))
    } else {
        1.0 / (gamma * expm1_over_x(shape * gamma.ln()) * logx_over_xm1(gamma))
    }
}
