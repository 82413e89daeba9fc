//! RDP of the Gaussian mechanism on a fixed-size sample drawn without replacement, under
//! replace-one neighbours (Wang, Balle, Kasiviswanathan 2019, "Subsampled Rényi Differential
//! Privacy and Analytical Moments Accountant", AISTATS, Thm 27), as dp_accounting computes it.
//!
//! With `f(x) = exp(x (x + 1) / (2 sigma^2))` (the exponentiated Gaussian CGF) and `D_k` the
//! k-th forward difference of the sequence `f(-1), f(0), f(1), ...` at its start, for integer
//! `alpha`:
//!
//! `A = 1 + q^2 C(alpha, 2) min(4 (e^(2/(2 sigma^2)) - 1), 2 e^(2/(2 sigma^2)))
//!      + sum_{j=3}^{alpha} q^j C(alpha, j) min(4 sqrt(|D_{2 floor(j/2)}| |D_{2 ceil(j/2)}|),
//!                                              2 f(j - 1))`
//!
//! and `rdp = log(A) / (alpha - 1)`. Above order 256 the differences are replaced by the
//! second branch (as dp_accounting does), and fractional orders interpolate the log-moments of
//! the neighbouring integers (WBK Corollary 10), both upper bounds.

use std::f64::consts::LN_2;

use super::sampled_gaussian_edge_cases;
use crate::error::AccountingError;
use crate::special::{log_add, log_binomial};

/// Largest order whose forward differences are computed exactly.
const MAX_EXACT_ORDER: u64 = 256;

/// One-step RDP at `alpha` of the Gaussian with `sigma` on a sample of a fraction `q` of the
/// records, drawn without replacement, under replace-one neighbours.
pub fn sample_without_replacement_gaussian_rdp(
    q: f64,
    sigma: f64,
    alpha: f64,
) -> Result<f64, AccountingError> {
    if let Some(rdp) = sampled_gaussian_edge_cases(q, sigma, alpha)? {
        return Ok(rdp);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_integer(q, sigma, alpha as u64)
    } else {
        let (lo, hi) = (alpha.floor(), alpha.ceil());
        let t = alpha - lo;
        let at = |a: f64| {
            if a == 1.0 {
                0.0
            } else {
                log_a_integer(q, sigma, a as u64)
            }
        };
        (1.0 - t) * at(lo) + t * at(hi)
    };
    Ok(log_a / (alpha - 1.0))
}

fn log_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let cgf = |x: f64| x * (x + 1.0) / (2.0 * sigma * sigma);
    let gaussian_rdp_2 = 2.0 / (2.0 * sigma * sigma);
    let log_f2_minus_1 = gaussian_rdp_2 + (-(-gaussian_rdp_2).exp()).ln_1p();
    let log_q = q.ln();
    let differences =
        (alpha <= MAX_EXACT_ORDER).then(|| log_forward_differences(alpha as usize, &cgf));
    let mut log_a = 0.0;
    for j in 2..=alpha {
        let jf = j as f64;
        let bound = if j == 2 {
            (4f64.ln() + log_f2_minus_1).min(gaussian_rdp_2 + LN_2)
        } else {
            let second = LN_2 + cgf(jf - 1.0);
            match &differences {
                Some(d) => {
                    let lo = d[(2 * (j / 2)) as usize];
                    let hi = d[(2 * j.div_ceil(2)) as usize];
                    (4f64.ln() + 0.5 * (lo + hi)).min(second)
                }
                None => second,
            }
        };
        log_a = log_add(log_a, bound + jf * log_q + log_binomial(alpha as f64, jf));
    }
    log_a
}

/// `log |Delta^k a_0|` for k = 0..=n + 1, where `a_m = exp(cgf(m - 1))`, computed by repeated
/// differencing in log space with signs (the differences cancel heavily in linear space).
fn log_forward_differences(n: usize, cgf: &dyn Fn(f64) -> f64) -> Vec<f64> {
    let len = n + 3;
    let mut log_mag: Vec<f64> = (0..len).map(|m| cgf(m as f64 - 1.0)).collect();
    let mut positive = vec![true; len];
    let mut out = Vec::with_capacity(n + 2);
    out.push(log_mag[0]);
    for k in 1..=n + 1 {
        for m in 0..len - k {
            let (mag, pos) =
                signed_log_sub(log_mag[m + 1], positive[m + 1], log_mag[m], positive[m]);
            log_mag[m] = mag;
            positive[m] = pos;
        }
        out.push(log_mag[0]);
    }
    out
}

/// `b - a` for signed numbers given as (log magnitude, is positive).
fn signed_log_sub(log_b: f64, b_pos: bool, log_a: f64, a_pos: bool) -> (f64, bool) {
    if b_pos != a_pos {
        return (log_add(log_b, log_a), b_pos);
    }
    let (hi, lo, b_larger) = if log_b >= log_a {
        (log_b, log_a, true)
    } else {
        (log_a, log_b, false)
    };
    if hi == lo {
        return (f64::NEG_INFINITY, true);
    }
    let mag = hi + (-(lo - hi).exp()).ln_1p();
    (mag, b_larger == b_pos)
}
