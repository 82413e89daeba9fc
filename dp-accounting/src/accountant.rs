//! The interface every accountant implements: compose events, then ask for epsilon or delta.

use crate::error::AccountingError;
use crate::event::DpEvent;

/// A privacy accountant. Composing an event it cannot account for is an error that names the
/// event: nothing is ever skipped silently.
pub trait Accountant {
    /// `Ok(())` if `event` can be composed, else the error [`Accountant::compose`] would give.
    fn supports(&self, event: &DpEvent) -> Result<(), AccountingError>;

    /// Adds `event` to what has been spent. On error the accountant is unchanged.
    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError>;

    /// The smallest epsilon such that everything composed is (epsilon, `delta`)-DP; an upper
    /// bound, never an estimate below the truth.
    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError>;

    /// The smallest delta such that everything composed is (`epsilon`, delta)-DP (upper bound).
    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError>;
}
