//! `dp-accounting epsilon`: the epsilon a number of steps at a noise multiplier spends.

use clap::Args;

use crate::common::{
    accountant, emit, epsilon_report, finite_positive, plan, steps_of, with_note, Choice, Common,
    Failure, Length,
};

#[derive(Args, Debug)]
pub(crate) struct EpsilonArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    length: Length,
    /// Noise standard deviation over the clip norm (sigma).
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: f64,
    #[command(flatten)]
    choice: Choice,
}

impl EpsilonArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            common,
            length,
            noise_multiplier,
            choice,
        } = self;
        let p = plan(&common)?;
        let steps = steps_of(&length, p.q)?;
        let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
        let (kind, note) = accountant(&choice, p.delta)?;
        let (epsilon, extra) = epsilon_report(kind, p.q, sigma, steps, p.delta)?;
        emit(
            &p,
            kind,
            sigma,
            steps,
            epsilon,
            with_note(extra, note),
            None,
        );
        Ok(())
    }
}
