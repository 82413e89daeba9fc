//! The interface every accountant implements: compose events, then ask for epsilon or delta.

use crate::error::AccountingError;
use crate::event::DpEvent;
use crate::prv::PrvAccountant;
use crate::rdp::RdpAccountant;

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

/// The accountants on offer, for tools that pick one by name.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountantKind {
    /// Rényi DP on dp_accounting's order grid (fast; an upper bound, looser than PRV).
    Rdp,
    /// The PRV/FFT accountant, reporting the upper end of its bracket of half-width
    /// `epsilon_error`.
    Prv {
        /// Half-width of the epsilon bracket.
        epsilon_error: f64,
    },
}

impl AccountantKind {
    /// A fresh accountant of this kind (add/remove-one neighbours).
    pub fn build(self) -> Result<Box<dyn Accountant>, AccountingError> {
        Ok(match self {
            AccountantKind::Rdp => Box::new(RdpAccountant::default()),
            AccountantKind::Prv { epsilon_error } => Box::new(PrvAccountant::new(epsilon_error)?),
        })
    }

    /// Relative width of the bracket on sigma at which calibration stops.
    pub fn calibration_tolerance(self) -> f64 {
        match self {
            AccountantKind::Rdp => 1e-6,
            AccountantKind::Prv { .. } => 1e-4,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            AccountantKind::Rdp => "rdp",
            AccountantKind::Prv { .. } => "prv",
        }
    }
}
