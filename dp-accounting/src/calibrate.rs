//! Noise calibration: the smallest noise multiplier whose epsilon meets a target.
//!
//! Epsilon decreases in sigma, so the answer is bracketed by doubling and then bisected.
//! The result is one-sided: the returned sigma always satisfies `epsilon(sigma) <= target`,
//! and it is within [`CALIBRATION_RELATIVE_TOLERANCE`] (relative) of the exact threshold.

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::DpEvent;
use crate::rdp::RdpAccountant;

/// Relative width of the final bisection bracket on sigma.
pub const CALIBRATION_RELATIVE_TOLERANCE: f64 = 1e-6;

/// Largest noise multiplier searched before a target is declared unreachable.
const MAX_SIGMA: f64 = 1e4;

/// A calibrated noise multiplier and the epsilon it achieves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The noise multiplier (noise standard deviation over the clip norm).
    pub noise_multiplier: f64,
    /// The epsilon it achieves (at most the target).
    pub epsilon: f64,
}

/// Smallest sigma (to the stated tolerance) such that `steps` steps of the Poisson-subsampled
/// Gaussian with sampling rate `q` are (`target_epsilon`, `delta`)-DP under RDP accounting.
pub fn calibrate_noise_multiplier(
    q: f64,
    steps: u64,
    target_epsilon: f64,
    delta: f64,
) -> Result<Calibration, AccountingError> {
    check_range("sampling_rate", q, q > 0.0 && q <= 1.0, "0 < q <= 1")?;
    check_range(
        "epsilon",
        target_epsilon,
        target_epsilon > 0.0,
        "epsilon > 0",
    )?;
    check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
    if steps == 0 {
        return Err(AccountingError::InvalidParameter {
            name: "steps",
            value: 0.0,
            expected: "at least one step",
        });
    }
    let epsilon = |sigma: f64| -> Result<f64, AccountingError> {
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, sigma, steps))?;
        acc.epsilon(delta)
    };
    let mut hi = 1.0;
    let mut eps_hi = epsilon(hi)?;
    while eps_hi > target_epsilon {
        if hi >= MAX_SIGMA {
            return Err(AccountingError::UnreachableTarget {
                target: target_epsilon,
                max_sigma: hi,
                achieved: eps_hi,
            });
        }
        hi *= 2.0;
        eps_hi = epsilon(hi)?;
    }
    let mut lo = hi / 2.0;
    while epsilon(lo)? <= target_epsilon {
        hi = lo;
        lo /= 2.0;
    }
    eps_hi = epsilon(hi)?;
    while hi - lo > CALIBRATION_RELATIVE_TOLERANCE * hi {
        let mid = 0.5 * (lo + hi);
        let eps_mid = epsilon(mid)?;
        if eps_mid <= target_epsilon {
            hi = mid;
            eps_hi = eps_mid;
        } else {
            lo = mid;
        }
    }
    Ok(Calibration {
        noise_multiplier: hi,
        epsilon: eps_hi,
    })
}
