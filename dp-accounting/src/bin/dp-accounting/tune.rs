//! `dp-accounting tune`: the total epsilon of a private hyperparameter search (a random number
//! of runs, only the best released; Papernot and Steinke 2022).

use clap::{Args, ValueEnum};
use dp_accounting::quiet_println as println;
use dp_accounting::{Accountant, AccountantKind, DpEvent, RdpAccountant, RunCount};
use serde_json::{json, Value};

use crate::common::{
    common_json, finite_positive, number, plan, shown, steps_of, usage, Common, Failure, Length,
};

#[derive(Args, Debug)]
pub(crate) struct TuneArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    length: Length,
    /// Noise multiplier of each run.
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: f64,
    /// Distribution of the number of runs.
    #[arg(long, value_enum)]
    runs: Runs,
    /// Mean number of runs.
    #[arg(long, allow_hyphen_values = true)]
    mean: f64,
    /// Shape of the truncated negative binomial (0: logarithmic, 1: geometric).
    #[arg(long, allow_hyphen_values = true)]
    shape: Option<f64>,
}

impl TuneArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            common,
            length,
            noise_multiplier,
            runs,
            mean,
            shape,
        } = self;
        let p = plan(&common)?;
        let steps = steps_of(&length, p.q)?;
        let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
        if !(mean.is_finite() && mean >= 1.0) {
            return Err(usage("mean", format!("must be at least 1, got {mean}")));
        }
        let runs = match (runs, shape) {
            (Runs::Poisson, None) => RunCount::Poisson,
            (Runs::Poisson, Some(_)) => {
                return Err(usage(
                    "shape",
                    "applies to --runs truncated-negative-binomial only",
                ))
            }
            (Runs::TruncatedNegativeBinomial, Some(eta)) if eta.is_finite() && eta >= 0.0 => {
                RunCount::TruncatedNegativeBinomial { shape: eta }
            }
            (Runs::TruncatedNegativeBinomial, Some(eta)) => {
                return Err(usage(
                    "shape",
                    format!("must be a finite number >= 0, got {eta}"),
                ))
            }
            (Runs::TruncatedNegativeBinomial, None) => {
                return Err(usage(
                    "shape",
                    "is required with --runs truncated-negative-binomial",
                ))
            }
        };
        let single_event = DpEvent::dp_sgd(p.q, sigma, steps);
        let mut single = RdpAccountant::default();
        single.compose(&single_event)?;
        let single_eps = single.epsilon(p.delta)?;
        let mut tuned = RdpAccountant::default();
        tuned.compose(&DpEvent::RepeatAndSelect {
            event: Box::new(single_event),
            mean,
            runs,
        })?;
        let tuned_eps = tuned.epsilon_and_order(p.delta)?;
        if p.json {
            let mut m = common_json(&p, AccountantKind::Rdp, sigma);
            m.insert("steps".into(), json!(steps));
            m.insert("epsilon".into(), number(tuned_eps.epsilon));
            m.insert("order".into(), json!(tuned_eps.order));
            m.insert("single_run_epsilon".into(), number(single_eps));
            m.insert(
                "runs".into(),
                serde_json::to_value(runs).unwrap_or(Value::Null),
            );
            m.insert("mean_runs".into(), json!(mean));
            println!("{}", Value::Object(m));
        } else {
            let what = match runs {
                RunCount::Poisson => format!("Poisson with mean {mean}"),
                RunCount::TruncatedNegativeBinomial { shape } => {
                    format!("truncated negative binomial, shape {shape}, mean {mean}")
                }
            };
            println!(
                "(epsilon, delta) = ({}, {:e}) for the whole search   epsilon rounded up",
                shown(tuned_eps.epsilon),
                p.delta
            );
            println!(
                "  one run     epsilon {} ({steps} steps, q = {}, noise multiplier {sigma})",
                shown(single_eps),
                p.q
            );
            println!(
                "  runs        a random number K of runs, {what}; only the best run is released"
            );
            println!(
                "  accountant  RDP with the Papernot-Steinke bound, optimal order {}",
                tuned_eps.order
            );
            println!("  note        draw K at random and release nothing else: a fixed number of runs costs more");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Runs {
    /// K ~ Poisson(mean).
    Poisson,
    /// K ~ truncated negative binomial(shape, mean).
    TruncatedNegativeBinomial,
}
