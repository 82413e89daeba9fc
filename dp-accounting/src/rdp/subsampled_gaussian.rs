//! RDP of one step of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
//! "Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530, Sec. 3.3).
//!
//! `rdp(alpha) = log(A_alpha) / (alpha - 1)` with
//! `A_alpha = E_{z ~ N(0, sigma^2)} [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha]`.
//!
//! Integer alpha: the finite binomial sum
//! `A = sum_k binom(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))`.
//!
//! Fractional alpha: the two-sided erfc series split at `z0 = sigma^2 log(1/q - 1) + 1/2`,
//! with the exact *signed* binomial coefficients by default (as TF Privacy's original code and
//! Opacus): the series stops once both new terms fall below `exp(-30)` (relative 1e-13, as
//! A >= 1). [`FractionalSeries::Conservative`] reproduces dp_accounting >= 0.5, which adds
//! `|binom|` for every term (a looser upper bound, up to 2% in epsilon), stops when both term
//! sequences decrease below `total - 30`, and drops the order (infinite RDP) after 1000 terms.

use std::f64::consts::LN_2;

use super::sampled_gaussian_edge_cases;
use crate::error::AccountingError;
use crate::special::{log_add, log_erfc, log_sub};

/// Terms beyond this are a sign the series does not converge (huge q/sigma ratios).
const MAX_TERMS: usize = 100_000;

/// dp_accounting's term limit for its conservative series.
const CONSERVATIVE_MAX_TERMS: usize = 1000;

/// How fractional orders are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FractionalSeries {
    /// The exact series with signed binomial coefficients (tightest; the default).
    #[default]
    Signed,
    /// dp_accounting's `|binom|` series: an upper bound, for matching its numbers exactly.
    Conservative,
}

/// One-step RDP at order `alpha` of the Poisson-subsampled Gaussian with sampling rate `q`
/// (in [0, 1]) and noise multiplier `sigma` (> 0), under add/remove-one neighbours.
pub fn subsampled_gaussian_rdp(q: f64, sigma: f64, alpha: f64) -> Result<f64, AccountingError> {
    subsampled_gaussian_rdp_with(FractionalSeries::Signed, q, sigma, alpha)
}

/// [`subsampled_gaussian_rdp`] with the fractional-order series chosen.
pub fn subsampled_gaussian_rdp_with(
    series: FractionalSeries,
    q: f64,
    sigma: f64,
    alpha: f64,
) -> Result<f64, AccountingError> {
    if let Some(rdp) = sampled_gaussian_edge_cases(q, sigma, alpha)? {
        return Ok(rdp);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha)
    } else {
        log_a_fractional(series, q, sigma, alpha)
    };
    Ok(log_a / (alpha - 1.0))
}

fn log_a_integer(q: f64, sigma: f64, alpha: f64) -> f64 {
    let n = alpha as u64;
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0; // log binom(n, k), updated by the ratio (n - k) / (k + 1)
    for k in 0..=n {
        let kf = k as f64;
        let term = log_binom
            + kf * log_q
            + (alpha - kf) * log_1mq
            + (kf * kf - kf) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, term);
        log_binom += ((n - k) as f64).ln() - (kf + 1.0).ln();
    }
    log_a
}

fn log_a_fractional(series: FractionalSeries, q: f64, sigma: f64, alpha: f64) -> f64 {
    let conservative = series == FractionalSeries::Conservative;
    let max_terms = if conservative {
        CONSERVATIVE_MAX_TERMS
    } else {
        MAX_TERMS
    };
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let scale = std::f64::consts::SQRT_2 * sigma;
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    // binom(alpha, k) as log|.| and sign, updated by the ratio (alpha - k) / (k + 1).
    let (mut log_binom, mut positive) = (0.0_f64, true);
    for k in 0..max_terms {
        let i = k as f64;
        let j = alpha - i;
        let log_t0 = log_binom + i * log_q + j * log_1mq;
        let log_t1 = log_binom + j * log_q + i * log_1mq;
        let log_e0 = log_erfc((i - z0) / scale) - LN_2;
        let log_e1 = log_erfc((z0 - j) / scale) - LN_2;
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if positive || conservative {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        if conservative {
            let total = log_add(log_a0, log_a1);
            if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
                return total;
            }
            (last_s0, last_s1) = (log_s0, log_s1);
        } else if log_s0.max(log_s1) < -30.0 {
            break;
        }
        let ratio = (alpha - i) / (i + 1.0);
        log_binom += ratio.abs().ln();
        positive ^= ratio < 0.0;
    }
    if conservative {
        // Not converged within dp_accounting's limit: the order is dropped.
        return f64::INFINITY;
    }
    log_add(log_a0, log_a1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batch_is_the_plain_gaussian() {
        assert_eq!(subsampled_gaussian_rdp(1.0, 2.0, 3.0).unwrap(), 3.0 / 8.0);
    }

    #[test]
    fn bad_inputs_are_named() {
        for (q, s, a, name) in [
            (1.5, 1.0, 2.0, "sampling_rate"),
            (f64::NAN, 1.0, 2.0, "sampling_rate"),
            (0.1, 0.0, 2.0, "noise_multiplier"),
            (0.1, 1.0, 1.0, "order"),
        ] {
            match subsampled_gaussian_rdp(q, s, a) {
                Err(AccountingError::InvalidParameter { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected an error naming {name}, got {other:?}"),
            }
        }
    }
}
