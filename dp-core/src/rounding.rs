//! Rounding allowances that make the clip bound hold in floating point.
//!
//! The clipping engine divides by per-example norms it computes in floating point. If a computed
//! norm came out smaller than the true one, the example would be scaled by more than `C / ||G||`
//! and contribute more than `C`: the sensitivity the accountant assumes would not hold. That
//! happens when the terms of a norm cancel (Casacuberta et al., "Widespread Underestimation of
//! Sensitivity in Differentially Private Libraries", CCS 2022): a ghost norm
//! `sum_{t,t'} (a_t . a_t')(g_t . g_t')` of positions whose contributions nearly cancel is a
//! small difference of large products, and in f32 the rounding of those products can exceed the
//! result, which is then clamped to zero (no clipping at all).
//!
//! So every per-example norm the engine clips with is an upper bound on the exact norm of the
//! gradient it sums (the exact function of the recorded `a` and `g`), by the standard bounds for
//! dot products in precision `u` (Higham, "Accuracy and Stability of Numerical Algorithms",
//! 2002, section 3.1): a computed dot product of length `n` is within
//! `gamma_n sum_k |x_k y_k|` of the exact one, `gamma_n = n u / (1 - n u)`, whatever the
//! order of summation (blocked, pairwise or fused multiply-add). With `s_i = sum_t ||a_t|| ||g_t||`
//! (which is at least the exact norm, by the triangle inequality) and Cauchy-Schwarz:
//!
//! - ghost norm, Gram matrices `a a^T` (length `d`) and `g g^T` (length `p`) in precision `u`,
//!   their product in `u` and summed in f64: `|computed - exact| <= c s_i^2` with
//!   `c = gamma_d + gamma_p + gamma_d gamma_p + 2 u (1 + gamma_d)(1 + gamma_p) + gamma64_{T^2}`;
//!   the bound used is `computed + c s_i^2`;
//! - explicit per-example gradient `g_i^T a_i` (length `T`) in `u`, its norm in f64: the exact
//!   norm is at most `computed + gamma_T s_i` (plus the f64 norm's own rounding);
//! - a sum over positions of per-position vectors `v_t` taken in f64 (biases, normalisation
//!   weights): the exact norm is at most `computed + gamma64_T s_i`, `s_i = sum_t ||v_t||`, plus
//!   `u s_i` when the `v_t` are themselves rounded products.
//!
//! The allowances are relative to `s_i^2`, so they cost nothing measurable unless positions
//! cancel: for BERT-base's widest layer in f32 (`d = 768`, `p = 3072`), `c = 2.3e-4`, and with
//! `s_i^2` a few times the squared norm (typical) the norm grows by a few parts in ten thousand. The
//! layers' squared norms are added in f64, and the clip factors computed in f64.
//! The rounding of the summed clipped gradients across examples is not covered here
//! (`docs/clipping.md` says what it is).

use tch::{Kind, Tensor};

/// Unit roundoff of f64.
const U64: f64 = 1.0 / (1u64 << 53) as f64;

/// Slack on the f64 row norms `s_i` themselves (relative rounding far below it).
const NORM_SLACK: f64 = 1e-12;

/// The unit roundoff `u` of arithmetic in `kind` (the engine's accumulation kind: f32 or f64).
pub(crate) fn unit_roundoff(kind: Kind) -> f64 {
    match kind {
        Kind::Double => U64,
        _ => 1.0 / (1u64 << 24) as f64,
    }
}

/// `gamma_n = n u / (1 - n u)`: the relative bound of a dot product of length `n`.
fn gamma(n: i64, u: f64) -> f64 {
    let nu = n.max(1) as f64 * u;
    assert!(
        nu < 0.5,
        "a dot product of length {n} is too long for this precision"
    );
    nu / (1.0 - nu)
}

/// Per example (B), an upper bound on `s_i = sum_t ||x_t|| ||y_t||` in f64 for (B, T, n) rows
/// `x` and `y` (`y` absent: `sum_t ||x_t||`). The row norms are computed in the rows' own kind
/// (no wider copy is made) and rounded up by their error bound `gamma_{n+2}`.
pub(crate) fn position_norm_sum(x: &Tensor, y: Option<&Tensor>) -> Tensor {
    let norms = |t: &Tensor| {
        let n = t.size().last().copied().unwrap_or(1);
        let up = 1.0 + gamma(n + 2, unit_roundoff(t.kind()));
        t.norm_scalaropt_dim(2.0, [-1].as_slice(), false)
            .to_kind(Kind::Double)
            * up
    };
    let per_position = match y {
        Some(y) => norms(x) * norms(y),
        None => norms(x),
    };
    per_position.sum_dim_intlist(1, false, Kind::Double) * (1.0 + NORM_SLACK)
}

/// Upper bound on an exact ghost norm `||G_i||^2` given its computed value `n2` (f64, (B)):
/// Gram matrices of lengths `d` and `p` in `kind`, their product in `kind` summed over `T^2`
/// entries in f64; `s` from [`position_norm_sum`] of the rows `a` and `g`.
pub(crate) fn ghost_bound(n2: Tensor, s: &Tensor, d: i64, p: i64, t: i64, kind: Kind) -> Tensor {
    let u = unit_roundoff(kind);
    let (gd, gp) = (gamma(d, u), gamma(p, u));
    let c = gd + gp + gd * gp + 2.0 * u * (1.0 + gd) * (1.0 + gp) + gamma(t * t, U64);
    n2.clamp_min(0.0) + s.square() * c
}

/// Upper bound on an exact squared norm given the f64 norm `norm` (B) of its computed value,
/// whose entries are sums of `n` products in `kind` (`n = 0`: exact entries, summed in f64 over
/// `positions`), `s` from [`position_norm_sum`].
pub(crate) fn sum_bound(norm: Tensor, s: &Tensor, n: i64, positions: i64, kind: Kind) -> Tensor {
    let rounding = if n == 0 {
        gamma(positions, U64)
    } else {
        gamma(n, unit_roundoff(kind)) + gamma(positions, U64)
    };
    ((norm * (1.0 + 4.0 * U64)) + s * rounding).square()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn gammas_and_row_sums_follow_their_definitions() {
        let u = unit_roundoff(Kind::Float);
        assert_eq!(u, 2f64.powi(-24));
        assert!((gamma(768, u) - 768.0 * u / (1.0 - 768.0 * u)).abs() < 1e-18);
        // Rows (3, 4) and (0, 1) against (1, 0) and (0, 2): s = 5 * 1 + 1 * 2.
        let x = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 1.0]).reshape([1, 2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).reshape([1, 2, 2]);
        // Rounded up by the f32 norms' error bound, never down.
        let s = position_norm_sum(&x, Some(&y)).double_value(&[0]);
        assert!((7.0..7.0 * (1.0 + 1e-6)).contains(&s), "{s}");
        let alone = position_norm_sum(&x, None).double_value(&[0]);
        assert!((6.0..6.0 * (1.0 + 1e-6)).contains(&alone), "{alone}");
        let n2 = Tensor::from_slice(&[-1e-9f64]).to_device(Device::Cpu);
        let bound = ghost_bound(
            n2,
            &Tensor::from_slice(&[1.0f64]),
            768,
            3072,
            128,
            Kind::Float,
        );
        assert!(
            bound.double_value(&[0]) > 2e-4,
            "a negative ghost norm is not trusted"
        );
    }
}
