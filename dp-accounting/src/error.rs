//! Errors of the accounting crate: every bad input is named, nothing is silently clamped.

/// An accounting request that cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountingError {
    /// A parameter is outside its domain (NaN, infinite, or out of range).
    #[error("invalid {name}: {value} ({expected})")]
    InvalidParameter {
        /// The parameter's name as users see it (e.g. `sampling_rate`).
        name: &'static str,
        /// The value given.
        value: f64,
        /// What was expected instead.
        expected: &'static str,
    },
    /// An event this accountant cannot account for.
    #[error("{accountant} accountant does not support {event} events: {reason}")]
    Unsupported {
        /// The accountant.
        accountant: &'static str,
        /// The event's name.
        event: &'static str,
        /// Why.
        reason: String,
    },
    /// A numerical procedure could not deliver its guarantee.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// A calibration target that no noise multiplier in the searched range reaches.
    #[error("target epsilon {target} is unreachable: even noise multiplier {max_sigma} gives epsilon {achieved}")]
    UnreachableTarget {
        /// The requested epsilon.
        target: f64,
        /// The largest noise multiplier tried.
        max_sigma: f64,
        /// The epsilon it gives.
        achieved: f64,
    },
    /// A calibration target met even by the smallest noise multiplier searched: so few of the
    /// records are ever sampled that there is nothing to calibrate.
    #[error("target epsilon {target} holds even at noise multiplier {min_sigma} (epsilon {achieved}): at this sampling rate and number of steps almost no record is ever used, so there is no noise to calibrate")]
    TargetMetWithoutNoise {
        /// The requested epsilon.
        target: f64,
        /// The smallest noise multiplier tried.
        min_sigma: f64,
        /// The epsilon it gives.
        achieved: f64,
    },
    /// More steps fit within a target than the search covers.
    #[error("more than {max_steps} steps fit within epsilon {target}")]
    TooManySteps {
        /// The requested epsilon.
        target: f64,
        /// The largest number of steps searched.
        max_steps: u64,
    },
    /// The PRV accountant's reported (upper) epsilon cannot meet a target that the RDP
    /// accountant meets: the bracket's half-width is too large for the target.
    #[error("the PRV accountant cannot certify epsilon {target} with epsilon error {epsilon_error}: its upper end is {achieved:.6} ({excess:.2e} above the target) where the RDP accountant already meets it; give a smaller epsilon error (e.g. {suggested:.1e}) or use the RDP accountant")]
    PrvBracketTooWide {
        /// The requested epsilon.
        target: f64,
        /// The half-width of the PRV bracket.
        epsilon_error: f64,
        /// The PRV upper end where RDP meets the target.
        achieved: f64,
        /// `achieved - target`.
        excess: f64,
        /// An epsilon error that leaves room for the target.
        suggested: f64,
    },
    /// A request the accountant's floating-point numerics cannot answer with its guarantee
    /// (a delta below what its sums resolve, a lattice too large for memory).
    #[error("beyond the PRV accountant's precision: {0}")]
    BeyondPrecision(String),
}

/// Checks that `value` is finite and lies in the open or closed interval described.
pub(crate) fn check_range(
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<(), AccountingError> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(AccountingError::InvalidParameter {
            name,
            value,
            expected,
        })
    }
}
