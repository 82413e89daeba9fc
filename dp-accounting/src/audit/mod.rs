//! Empirical privacy auditing: from the counts of a membership-inference experiment (how often
//! an attack wrongly flagged a non-member, or missed a member) to estimates of epsilon.
//!
//! The Bayesian estimate (Zanella-Béguelin et al. 2023) gives a posterior over epsilon with
//! credible bounds; the Clopper–Pearson and Jeffreys constructions are the classic frequentist
//! bounds. All are statements about this attack and these canaries: lower bounds on the
//! mechanism's true epsilon, not estimates of it. If a lower bound exceeds the accountant's
//! epsilon, the clipping, noise, sampling or accounting is broken.

mod bayes;
mod beta;
mod frequentist;
mod one_run;
mod quadrature;
mod region;

use serde::Serialize;

use crate::error::{check_range, AccountingError};
pub use frequentist::FrequentistBounds;
pub use one_run::one_run_epsilon_lower_bound;

/// Counts of a membership-inference experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    /// Non-members the attack called members.
    pub false_positives: u64,
    /// Members the attack called non-members.
    pub false_negatives: u64,
    /// Trials with the canary in training.
    pub positives: u64,
    /// Trials without it.
    pub negatives: u64,
}

/// The Bayesian estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BayesBounds {
    /// `P[eps >= value] = level`.
    pub eps_lo_one_sided: f64,
    /// Lower end of the equal-tailed credible interval.
    pub eps_lo_two_sided: f64,
    /// Upper end of the equal-tailed credible interval (may be large or infinite).
    pub eps_hi_two_sided: f64,
    /// Posterior median.
    pub posterior_median: f64,
    /// Posterior probability that epsilon is 0 (the atom at 0).
    pub prob_eps_is_zero: f64,
}

/// Every estimate for one experiment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AuditEstimate {
    /// The counts.
    pub counts: AuditCounts,
    /// The delta of the privacy region.
    pub delta: f64,
    /// The credible / confidence level.
    pub level: f64,
    /// The plug-in epsilon of the observed rates.
    pub eps_plug_in: f64,
    /// Bayesian credible bounds.
    pub bayes: BayesBounds,
    /// Clopper–Pearson bounds.
    pub clopper_pearson: FrequentistBounds,
    /// Jeffreys-interval bounds.
    pub jeffreys: FrequentistBounds,
}

/// Estimates epsilon from `counts` at `delta` in [0, 1) (0 asks whether the run is pure
/// epsilon-DP), with credible/confidence `level` in (0, 1).
pub fn estimate_epsilon(
    counts: AuditCounts,
    delta: f64,
    level: f64,
) -> Result<AuditEstimate, AccountingError> {
    check_range(
        "delta",
        delta,
        (0.0..1.0).contains(&delta),
        "0 <= delta < 1",
    )?;
    check_range("level", level, level > 0.0 && level < 1.0, "0 < level < 1")?;
    let AuditCounts {
        false_positives: fp,
        false_negatives: fn_,
        positives,
        negatives,
    } = counts;
    let invalid = |name: &'static str, value: u64, expected: &'static str| {
        Err(AccountingError::InvalidParameter {
            name,
            value: value as f64,
            expected,
        })
    };
    if positives == 0 {
        return invalid("positives", 0, "at least one trial with the canary");
    }
    if negatives == 0 {
        return invalid("negatives", 0, "at least one trial without the canary");
    }
    if fp > negatives {
        return invalid("fp", fp, "false positives at most the negatives");
    }
    if fn_ > positives {
        return invalid("fn", fn_, "false negatives at most the positives");
    }
    let posterior = bayes::EpsilonPosterior::new(fp, fn_, positives, negatives, delta);
    let bayes = BayesBounds {
        eps_lo_one_sided: posterior.quantile(1.0 - level),
        eps_lo_two_sided: posterior.quantile((1.0 - level) / 2.0),
        eps_hi_two_sided: posterior.quantile((1.0 + level) / 2.0),
        posterior_median: posterior.quantile(0.5),
        prob_eps_is_zero: posterior.cdf(0.0),
    };
    let freq =
        |kind| frequentist::frequentist_bounds(kind, fp, fn_, positives, negatives, delta, level);
    Ok(AuditEstimate {
        counts,
        delta,
        level,
        eps_plug_in: region::epsilon_of_rates(
            fp as f64 / negatives as f64,
            fn_ as f64 / positives as f64,
            delta,
        ),
        bayes,
        clopper_pearson: freq(frequentist::RateInterval::ClopperPearson),
        jeffreys: freq(frequentist::RateInterval::Jeffreys),
    })
}

/// `P[eps <= x]` under the Bayesian posterior, at each x (for plots of the posterior).
pub fn posterior_cdf(counts: AuditCounts, delta: f64, xs: &[f64]) -> Vec<f64> {
    let posterior = bayes::EpsilonPosterior::new(
        counts.false_positives,
        counts.false_negatives,
        counts.positives,
        counts.negatives,
        delta,
    );
    xs.iter().map(|&x| posterior.cdf(x)).collect()
}
