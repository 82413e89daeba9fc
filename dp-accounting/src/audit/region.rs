//! The (epsilon, delta) privacy region in the plane of a test's error rates (Wasserman and Zhou
//! 2010; Kairouz, Oh, Viswanath 2015): a mechanism is (epsilon, delta)-DP iff every membership
//! test's false positive rate alpha and false negative rate beta satisfy
//! `alpha + e^eps beta >= 1 - delta`, `e^eps alpha + beta >= 1 - delta` and the two mirrored
//! constraints (through `(alpha, beta) -> (1 - beta, 1 - alpha)`).

/// The smallest epsilon whose region contains the rates `(alpha, beta)`.
pub(crate) fn epsilon_of_rates(alpha: f64, beta: f64, delta: f64) -> f64 {
    let (a, b) = if alpha + beta > 1.0 {
        (1.0 - beta, 1.0 - alpha)
    } else {
        (alpha, beta)
    };
    let (lo, hi) = (a.min(b), a.max(b));
    if hi > 1.0 - delta - lo {
        0.0
    } else if lo == 0.0 {
        f64::INFINITY
    } else {
        ((1.0 - delta - hi) / lo).ln()
    }
}

/// For false negative rate `b`, the false positive rates inside the region of `eps`:
/// `[lo(b), hi(b)]` (empty when lo > hi).
pub(crate) fn fpr_range(b: f64, eps: f64, delta: f64) -> (f64, f64) {
    let (e, inv) = (eps.exp(), (-eps).exp());
    let lo = 0f64.max(1.0 - delta - e * b).max(inv * (1.0 - delta - b));
    let hi = 1f64.min(1.0 + inv * (delta - b)).min(delta + e * (1.0 - b));
    (lo, hi)
}

/// False negative rates where `fpr_range` changes formula (its kinks), inside (0, 1).
pub(crate) fn kinks(eps: f64, delta: f64) -> Vec<f64> {
    let (e, inv) = (eps.exp(), (-eps).exp());
    let switch = (1.0 - delta) / (1.0 + e);
    [
        switch,
        1.0 - switch,
        delta,
        1.0 - delta,
        (1.0 - delta) * inv,
        1.0 - (1.0 - delta) * inv,
    ]
    .into_iter()
    .filter(|b| *b > 0.0 && *b < 1.0)
    .collect()
}

/// False negative rates where an edge of `fpr_range` passes through the false positive rate
/// `alpha` (so a narrow FPR posterior is never stepped over).
pub(crate) fn crossings(alpha: f64, eps: f64, delta: f64) -> [f64; 4] {
    let (e, inv) = (eps.exp(), (-eps).exp());
    [
        (1.0 - delta - alpha) * inv,
        1.0 - delta - alpha * e,
        delta + (1.0 - alpha) * e,
        1.0 - (alpha - delta) * inv,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_of_rates_is_the_region_boundary() {
        let eps = epsilon_of_rates(0.05, 0.4, 1e-5);
        assert!((eps - ((1.0 - 1e-5 - 0.4) / 0.05f64).ln()).abs() < 1e-15);
        assert_eq!(epsilon_of_rates(0.5, 0.5, 1e-5), 0.0);
        assert_eq!(epsilon_of_rates(0.0, 0.3, 1e-5), f64::INFINITY);
        // A consistently wrong attack is as informative as a consistently right one.
        let mirrored = epsilon_of_rates(0.95, 0.6, 1e-5) - epsilon_of_rates(0.4, 0.05, 1e-5);
        assert!(mirrored.abs() < 1e-14);
        // The point on the boundary is inside fpr_range at that epsilon.
        let (lo, hi) = fpr_range(0.4, eps, 1e-5);
        assert!((lo - 0.05).abs() < 1e-12 && hi > 0.05);
    }
}
