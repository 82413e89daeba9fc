//! Planning DP-SGD: the smallest noise multiplier for a target epsilon, and the largest number
//! of steps a noise multiplier allows.
//!
//! Epsilon decreases in sigma and increases in steps, so both are bracketed, then narrowed
//! (sigma by Illinois false position, steps by bisection). The results are one-sided: the returned sigma (or steps) always meets the target under the
//! chosen accountant's reported (upper-bound) epsilon. Sigma is found to a relative bracket of
//! [`AccountantKind::calibration_tolerance`]: 1e-6 for RDP, 1e-4 for PRV (whose epsilon is
//! itself only known to its error bracket). For the PRV accountant the search starts from the RDP
//! answer, which is never below it (RDP is looser), so few PRV evaluations are needed, and stops
//! at half of it; where the PRV bracket's half-width keeps its upper end above a target that RDP
//! meets, the calibration says so instead of answering. A run that uses a record with
//! probability `1 - (1 - q)^T <= delta` needs no noise: that is refused, not calibrated.

use crate::accountant::AccountantKind;
use crate::error::{check_range, AccountingError};
use crate::event::DpEvent;

/// Largest noise multiplier searched before a target is declared unreachable.
const MAX_SIGMA: f64 = 1e4;

/// Smallest noise multiplier searched: a target met below it is met without meaningful noise.
const MIN_SIGMA: f64 = 0.01;

/// Largest number of steps searched.
const MAX_STEPS: u64 = 1 << 40;

/// A calibrated noise multiplier and the epsilon it achieves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The noise multiplier (noise standard deviation over the clip norm).
    pub noise_multiplier: f64,
    /// The epsilon it achieves (at most the target).
    pub epsilon: f64,
}

/// Epsilon of `steps` DP-SGD steps under the chosen accountant (its reported upper bound).
pub fn dp_sgd_epsilon(
    kind: AccountantKind,
    q: f64,
    sigma: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountingError> {
    let mut acc = kind.build()?;
    acc.compose(&DpEvent::dp_sgd(q, sigma, steps))?;
    acc.epsilon(delta)
}

fn check_plan(q: f64, target_epsilon: f64, delta: f64) -> Result<(), AccountingError> {
    check_range("sampling_rate", q, q > 0.0 && q <= 1.0, "0 < q <= 1")?;
    check_range(
        "epsilon",
        target_epsilon,
        target_epsilon > 0.0,
        "epsilon > 0",
    )?;
    check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")
}

/// Smallest sigma (to the stated tolerance) such that `steps` steps of the Poisson-subsampled
/// Gaussian with sampling rate `q` are (`target_epsilon`, `delta`)-DP under `kind`.
pub fn calibrate_noise_multiplier(
    kind: AccountantKind,
    q: f64,
    steps: u64,
    target_epsilon: f64,
    delta: f64,
) -> Result<Calibration, AccountingError> {
    check_plan(q, target_epsilon, delta)?;
    if steps == 0 {
        return Err(AccountingError::InvalidParameter {
            name: "steps",
            value: 0.0,
            expected: "at least one step",
        });
    }
    // A record takes part in some step with probability 1 - (1 - q)^T; at most delta, the run is
    // (0, delta)-DP whatever the noise.
    let used = -(steps as f64 * (-q).ln_1p()).exp_m1();
    if used <= delta {
        return Err(AccountingError::TargetMetWithoutNoise {
            target: target_epsilon,
            min_sigma: 0.0,
            achieved: 0.0,
        });
    }
    let epsilon = |sigma: f64| dp_sgd_epsilon(kind, q, sigma, steps, delta);
    // An upper end: the RDP answer for the FFT accountant (never below it), else by doubling.
    let (mut hi, mut eps_hi) = match kind {
        AccountantKind::Rdp => {
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
            (hi, eps_hi)
        }
        AccountantKind::Prv { epsilon_error } => {
            let rdp =
                calibrate_noise_multiplier(AccountantKind::Rdp, q, steps, target_epsilon, delta)?;
            let eps_prv = epsilon(rdp.noise_multiplier)?;
            if eps_prv > target_epsilon {
                return Err(bracket_too_wide(target_epsilon, epsilon_error, eps_prv));
            }
            (rdp.noise_multiplier, eps_prv)
        }
    };
    // A lower end whose epsilon is above the target (PRV's sigma is typically 3-8% below RDP's;
    // the search stops at half of it, where a PRV lattice grows costly, keeping what meets the
    // target).
    let floor = match kind {
        AccountantKind::Rdp => MIN_SIGMA,
        AccountantKind::Prv { .. } => (0.5 * hi).max(MIN_SIGMA),
    };
    let mut lo = 0.9 * hi;
    let mut eps_lo = epsilon(lo)?;
    while eps_lo <= target_epsilon {
        if lo <= floor {
            return match kind {
                AccountantKind::Rdp => Err(AccountingError::TargetMetWithoutNoise {
                    target: target_epsilon,
                    min_sigma: lo,
                    achieved: eps_lo,
                }),
                AccountantKind::Prv { .. } => Ok(Calibration {
                    noise_multiplier: lo,
                    epsilon: eps_lo,
                }),
            };
        }
        (hi, eps_hi) = (lo, eps_lo);
        lo = (lo * 0.8).max(floor);
        eps_lo = epsilon(lo)?;
    }
    // Illinois false position on epsilon(sigma) - target, keeping the bracket, so the upper
    // end always meets the target; it needs far fewer evaluations than bisection.
    let (mut f_lo, mut f_hi) = (eps_lo - target_epsilon, eps_hi - target_epsilon);
    let mut last_moved_hi = None;
    // Stop when the bracket on sigma is narrow, or the upper end's epsilon is within the same
    // relative tolerance below the target.
    let tolerance = kind.calibration_tolerance();
    while hi - lo > tolerance * hi && target_epsilon - eps_hi > tolerance * target_epsilon {
        let width = hi - lo;
        let secant = hi - f_hi * width / (f_hi - f_lo);
        // Stay strictly inside the bracket.
        let mid = if secant.is_finite() {
            secant.clamp(lo + 0.01 * width, hi - 0.01 * width)
        } else {
            lo + 0.5 * width
        };
        let eps_mid = epsilon(mid)?;
        let f_mid = eps_mid - target_epsilon;
        if f_mid <= 0.0 {
            (hi, eps_hi, f_hi) = (mid, eps_mid, f_mid);
            if last_moved_hi == Some(true) {
                f_lo *= 0.5;
            }
            last_moved_hi = Some(true);
        } else {
            (lo, f_lo) = (mid, f_mid);
            if last_moved_hi == Some(false) {
                f_hi *= 0.5;
            }
            last_moved_hi = Some(false);
        }
    }
    Ok(Calibration {
        noise_multiplier: hi,
        epsilon: eps_hi,
    })
}

/// The largest number of steps with noise multiplier `sigma` and sampling rate `q` that stays
/// within (`target_epsilon`, `delta`) under `kind`; 0 if not even one step does.
pub fn max_steps(
    kind: AccountantKind,
    q: f64,
    sigma: f64,
    target_epsilon: f64,
    delta: f64,
) -> Result<u64, AccountingError> {
    check_plan(q, target_epsilon, delta)?;
    check_range("noise_multiplier", sigma, sigma > 0.0, "sigma > 0")?;
    let fits = |steps: u64| -> Result<bool, AccountingError> {
        Ok(dp_sgd_epsilon(kind, q, sigma, steps, delta)? <= target_epsilon)
    };
    // RDP is never tighter, so its answer is a floor for the FFT accountant, unless the PRV
    // bracket's half-width alone pushes its reported epsilon past the target.
    let mut lo = match kind {
        AccountantKind::Rdp => 0,
        AccountantKind::Prv { epsilon_error } => {
            let rdp = max_steps(AccountantKind::Rdp, q, sigma, target_epsilon, delta)?;
            if rdp > 0 {
                let eps_prv = dp_sgd_epsilon(kind, q, sigma, rdp, delta)?;
                if eps_prv > target_epsilon {
                    return Err(bracket_too_wide(target_epsilon, epsilon_error, eps_prv));
                }
            }
            rdp
        }
    };
    if lo == 0 && !fits(1)? {
        return Ok(0);
    }
    lo = lo.max(1);
    let mut hi = lo * 2;
    while fits(hi)? {
        lo = hi;
        hi *= 2;
        if hi > MAX_STEPS {
            return Err(AccountingError::TooManySteps {
                target: target_epsilon,
                max_steps: MAX_STEPS,
            });
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The PRV bracket cannot meet `target` where RDP does: say by how much, and suggest an error
/// that leaves room (half the gap between the PRV estimate and the target).
fn bracket_too_wide(target: f64, epsilon_error: f64, achieved: f64) -> AccountingError {
    let room = target - (achieved - epsilon_error);
    AccountingError::PrvBracketTooWide {
        target,
        epsilon_error,
        achieved,
        excess: achieved - target,
        suggested: if room > 0.0 {
            room / 2.0
        } else {
            epsilon_error / 10.0
        },
    }
}
