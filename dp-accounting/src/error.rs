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
