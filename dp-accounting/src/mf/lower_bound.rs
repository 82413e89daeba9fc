//! A lower bound on the mean loss of every factorization (Choquette-Choo et al. 2023, MEMF,
//! from Li et al. 2015): under (k, b)-fixed-epoch participation with `n = k b`, and hence
//! under b-min-sep participation, `sens^2 x mean error >= ||A||_*^2 / (n b)`. The singular
//! values of the prefix-sum matrix `tri(n)` are `1 / (2 sin((2j - 1) pi / (2 (2n + 1))))`,
//! `j = 1..n`.

use super::sensitivity::Participation;
use super::workload::Workload;
use crate::error::AccountingError;

/// The smallest mean loss (`RMSE^2`) any factorization of the prefix sums over `n` steps can
/// have under `participation` (which must be single, or `k` epochs with `n = k b`).
pub fn mean_loss_lower_bound(
    n: usize,
    workload: &Workload,
    participation: &Participation,
) -> Result<f64, AccountingError> {
    if !workload.is_prefix() {
        return Err(AccountingError::InvalidParameter {
            name: "momentum",
            value: workload.beta(),
            expected: "0: the bound needs the singular values of A, known in closed form for prefix sums only",
        });
    }
    if n == 0 {
        return Err(AccountingError::InvalidParameter {
            name: "steps",
            value: 0.0,
            expected: "at least 1 step",
        });
    }
    let k = participation.effective(n);
    let b = if k == 1 {
        n
    } else {
        participation.min_separation_steps() as usize
    };
    if k * b != n {
        return Err(AccountingError::InvalidParameter {
            name: "min_separation",
            value: b as f64,
            expected: "n / k: the bound holds for k whole epochs of b steps",
        });
    }
    let angle = std::f64::consts::PI / (2.0 * (2 * n + 1) as f64);
    let nuclear: f64 = (1..=n)
        .map(|j| 0.5 / (((2 * j - 1) as f64) * angle).sin())
        .sum();
    Ok(nuclear * nuclear / (n * b) as f64)
}
