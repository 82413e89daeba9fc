//! `dp-accounting audit`: epsilon estimates from a membership-inference experiment's counts.

use clap::Args;
use dp_accounting::audit::{estimate_epsilon, AuditCounts, AuditEstimate, FrequentistBounds};
use dp_accounting::quiet_println as println;
use serde_json::{json, Value};

use crate::common::{number, usage, Failure};

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// Negatives the attack called members (false positives).
    #[arg(long)]
    fp: u64,
    /// Positives the attack called non-members (false negatives).
    #[arg(long = "fn")]
    fn_: u64,
    /// Trials with the canary in training.
    #[arg(long)]
    positives: u64,
    /// Trials without it.
    #[arg(long)]
    negatives: u64,
    /// The delta of the privacy region, in [0, 1): 0 asks whether the run is pure epsilon-DP.
    #[arg(long, allow_hyphen_values = true)]
    delta: f64,
    /// Credible / confidence level.
    #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
    level: f64,
    /// Print JSON for scripts instead of a report.
    #[arg(long)]
    json: bool,
}

impl AuditArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            fp,
            fn_,
            positives,
            negatives,
            delta,
            level,
            json: as_json,
        } = self;
        if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
            return Err(usage("delta", format!("must be in [0, 1), got {delta}")));
        }
        if !(level.is_finite() && level > 0.0 && level < 1.0) {
            return Err(usage("level", format!("must be in (0, 1), got {level}")));
        }
        for (flag, trials) in [("positives", positives), ("negatives", negatives)] {
            if !(1..=MAX_AUDIT_TRIALS).contains(&trials) {
                return Err(usage(
                    flag,
                    format!("must be between 1 and {MAX_AUDIT_TRIALS:e} (the posterior's cost grows with the counts), got {trials}"),
                ));
            }
        }
        if fp > negatives {
            return Err(usage(
                "fp",
                format!("{fp} false positives exceed the {negatives} negatives"),
            ));
        }
        if fn_ > positives {
            return Err(usage(
                "fn",
                format!("{fn_} false negatives exceed the {positives} positives"),
            ));
        }
        let counts = AuditCounts {
            false_positives: fp,
            false_negatives: fn_,
            positives,
            negatives,
        };
        let e = estimate_epsilon(counts, delta, level)?;
        if as_json {
            println!("{}", audit_json(&e));
        } else {
            print_audit(&e);
        }
        Ok(())
    }
}

/// Most trials of each kind `audit` accepts: far beyond any experiment (each trial is a training
/// run or a canary), and where its time stays bounded: the beta quantiles' cost grows with the
/// counts (2 s at 1e7 trials with half of them errors, 40 s at 1e8), and at 1e14 the credible
/// interval's upper end overflows.
const MAX_AUDIT_TRIALS: u64 = 10_000_000;

fn audit_json(e: &AuditEstimate) -> Value {
    let freq = |f: &FrequentistBounds| {
        json!({
            "eps_lo_one_sided": number(f.eps_lo_one_sided),
            "eps_lo_two_sided": number(f.eps_lo_two_sided),
            "eps_hi_two_sided": number(f.eps_hi_two_sided),
            "rate_bounds_one_sided": {"fpr": f.rate_bounds_one_sided[0], "fnr": f.rate_bounds_one_sided[1]},
            "rate_bounds_two_sided": {"fpr": f.rate_bounds_two_sided[0], "fnr": f.rate_bounds_two_sided[1]},
        })
    };
    json!({
        "fp": e.counts.false_positives, "fn": e.counts.false_negatives,
        "positives": e.counts.positives, "negatives": e.counts.negatives,
        "delta": e.delta, "level": e.level, "eps_plug_in": number(e.eps_plug_in),
        "bayes": {
            "eps_lo_one_sided": number(e.bayes.eps_lo_one_sided),
            "eps_lo_two_sided": number(e.bayes.eps_lo_two_sided),
            "eps_hi_two_sided": number(e.bayes.eps_hi_two_sided),
            "posterior_median": number(e.bayes.posterior_median),
            "prob_eps_is_zero": e.bayes.prob_eps_is_zero,
        },
        "clopper_pearson": freq(&e.clopper_pearson),
        "jeffreys": freq(&e.jeffreys),
    })
}

fn print_audit(e: &AuditEstimate) {
    let c = e.counts;
    let pct = 100.0 * e.level;
    // Lower bounds are rounded down here: they claim privacy was at least this bad.
    let down = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).floor() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    let up = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).ceil() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    println!(
        "Membership inference: FPR {}/{} = {:.4}, FNR {}/{} = {:.4}; plug-in epsilon {} (delta {:e})",
        c.false_positives, c.negatives, c.false_positives as f64 / c.negatives as f64,
        c.false_negatives, c.positives, c.false_negatives as f64 / c.positives as f64,
        up(e.eps_plug_in), e.delta
    );
    println!("  Bayesian        P[epsilon >= {}] = {pct}%; {pct}% credible interval [{}, {}]; median {}; P[epsilon = 0] = {:.2e}",
        down(e.bayes.eps_lo_one_sided), down(e.bayes.eps_lo_two_sided), up(e.bayes.eps_hi_two_sided), down(e.bayes.posterior_median), e.bayes.prob_eps_is_zero);
    for (name, f) in [
        ("Clopper-Pearson", &e.clopper_pearson),
        ("Jeffreys", &e.jeffreys),
    ] {
        println!(
            "  {name:<16}epsilon >= {} at {pct}% confidence; two-sided [{}, {}]",
            down(f.eps_lo_one_sided),
            down(f.eps_lo_two_sided),
            up(f.eps_hi_two_sided)
        );
    }
    println!("  meaning         lower bounds on the mechanism's epsilon for this attack and canary, not estimates of it; a lower bound above the accountant's epsilon means a bug in clipping, noise, sampling or accounting");
}
