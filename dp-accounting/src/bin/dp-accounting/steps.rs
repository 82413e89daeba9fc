//! `dp-accounting steps`: the most steps a noise multiplier allows within a target epsilon.

use clap::Args;
use dp_accounting::max_steps;

use crate::common::{
    accountant, emit, epsilon_report, finite_positive, plan, usage, with_note, Choice, Common,
    Failure,
};

#[derive(Args, Debug)]
pub(crate) struct StepsArgs {
    #[command(flatten)]
    common: Common,
    /// Noise standard deviation over the clip norm (sigma).
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: f64,
    /// Target epsilon.
    #[arg(long, allow_hyphen_values = true)]
    epsilon: f64,
    #[command(flatten)]
    choice: Choice,
}

impl StepsArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            common,
            noise_multiplier,
            epsilon,
            choice,
        } = self;
        let p = plan(&common)?;
        let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
        let target = finite_positive("epsilon", epsilon)?;
        let (kind, note) = accountant(&choice, p.delta)?;
        let steps = max_steps(kind, p.q, sigma, target, p.delta)?;
        if steps == 0 {
            return Err(usage(
                "epsilon",
                format!("not even one step fits within epsilon {target}"),
            ));
        }
        let (achieved, extra) = epsilon_report(kind, p.q, sigma, steps, p.delta)?;
        let headline = format!(
            "at most {steps} steps ({:.2} epochs) fit within epsilon {target}",
            steps as f64 * p.q
        );
        emit(
            &p,
            kind,
            sigma,
            steps,
            achieved,
            with_note(extra, note),
            Some(headline),
        );
        Ok(())
    }
}
