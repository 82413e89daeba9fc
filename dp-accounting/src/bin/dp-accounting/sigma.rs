//! `dp-accounting sigma`: the smallest noise multiplier that meets a target epsilon.

use clap::Args;
use dp_accounting::{calibrate_noise_multiplier, round_up};

use crate::common::{
    accountant, emit, epsilon_report, finite_positive, plan, shown, steps_of, with_note, Choice,
    Common, Failure, Length,
};

#[derive(Args, Debug)]
pub(crate) struct SigmaArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    length: Length,
    /// Target epsilon.
    #[arg(long, allow_hyphen_values = true)]
    epsilon: f64,
    #[command(flatten)]
    choice: Choice,
}

impl SigmaArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            common,
            length,
            epsilon,
            choice,
        } = self;
        let p = plan(&common)?;
        let steps = steps_of(&length, p.q)?;
        let target = finite_positive("epsilon", epsilon)?;
        let (kind, note) = accountant(&choice, p.delta)?;
        let cal = calibrate_noise_multiplier(kind, p.q, steps, target, p.delta)?;
        let (achieved, extra) = epsilon_report(kind, p.q, cal.noise_multiplier, steps, p.delta)?;
        let headline = format!(
            "noise multiplier {:.6} (rounded up) meets epsilon {target}: it gives epsilon {}",
            round_up(cal.noise_multiplier, 6),
            shown(achieved)
        );
        emit(
            &p,
            kind,
            cal.noise_multiplier,
            steps,
            achieved,
            with_note(extra, note),
            Some(headline),
        );
        Ok(())
    }
}
