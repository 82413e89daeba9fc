//! Privacy auditing with one training run (Steinke, Nasr, Jagielski 2023, "Privacy Auditing
//! with One (1) Training Run", NeurIPS): m canaries, each included independently with
//! probability 1/2; after training, guess "in" for the k+ highest scores and "out" for the k-
//! lowest; r = k+ + k- guesses, v of them correct. If the mechanism is (eps, delta)-DP,
//!
//! `p(eps) = P[Bin(r, q) >= v] + 2 m delta max_{1<=i<=v} P[v - i <= Bin(r, q) < v] / i`,
//! `q = e^eps / (1 + e^eps)`,
//!
//! is a valid p-value for the observed v (their Thm 3.1 with the delta term of Prop. 5.2). The
//! lower bound at confidence `1 - beta` is the largest eps whose p-value stays below beta.

use super::beta::Beta;
use crate::error::{check_range, AccountingError};

/// `P[Bin(r, q) >= k]` via the Beta CDF: `I_q(k, r - k + 1)`.
fn binomial_tail(r: u64, q: f64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > r {
        return 0.0;
    }
    Beta::new(k as f64, (r - k + 1) as f64).cdf_and_sf(q).0
}

fn p_value(m: u64, r: u64, v: u64, delta: f64, eps: f64) -> f64 {
    let q = 1.0 / (1.0 + (-eps).exp());
    let tail_v = binomial_tail(r, q, v);
    let spread = if delta > 0.0 {
        (1..=v)
            .map(|i| (binomial_tail(r, q, v - i) - tail_v) / i as f64)
            .fold(0.0, f64::max)
    } else {
        0.0
    };
    tail_v + 2.0 * m as f64 * delta * spread
}

/// The one-run lower bound on epsilon at confidence `1 - beta`, from `m` canaries, `r` guesses
/// and `v` correct guesses; 0 when the guesses show nothing.
pub fn one_run_epsilon_lower_bound(
    m: u64,
    r: u64,
    v: u64,
    delta: f64,
    beta: f64,
) -> Result<f64, AccountingError> {
    check_range(
        "delta",
        delta,
        (0.0..1.0).contains(&delta),
        "0 <= delta < 1",
    )?;
    check_range("beta", beta, beta > 0.0 && beta < 1.0, "0 < beta < 1")?;
    if r > m || v > r {
        return Err(AccountingError::InvalidParameter {
            name: "guesses",
            value: r as f64,
            expected: "correct guesses <= guesses <= canaries",
        });
    }
    if p_value(m, r, v, delta, 0.0) >= beta {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while p_value(m, r, v, delta, hi) < beta {
        lo = hi;
        hi *= 2.0;
        if hi > 700.0 {
            return Ok(f64::INFINITY);
        }
    }
    while hi - lo > 1e-9 {
        let mid = 0.5 * (lo + hi);
        if p_value(m, r, v, delta, mid) < beta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_published_scale_of_bounds() {
        // Evaluations of the same formula at beta = 0.05 (research notes): 3.49, 5.78, 1.80.
        for (m, r, v, delta, want) in [
            (1000, 100, 100, 0.0, 3.49),
            (1000, 1000, 1000, 1e-5, 5.78),
            (1000, 200, 180, 1e-5, 1.80),
        ] {
            let got = one_run_epsilon_lower_bound(m, r, v, delta, 0.05).unwrap();
            assert!(
                (got - want).abs() < 0.006,
                "m={m} r={r} v={v}: {got} vs {want}"
            );
        }
        // Coin-flip guesses prove nothing.
        assert_eq!(
            one_run_epsilon_lower_bound(1000, 200, 100, 1e-5, 0.05).unwrap(),
            0.0
        );
    }
}
