//! Workloads: the linear map A from the stream of gradient sums to what training computes.
//!
//! Both workloads here are lower-triangular Toeplitz with a rational generating function:
//!
//! - prefix sums, `A = tri(n)`, `a(x) = 1 / (1 - x)`: SGD with a constant learning rate;
//! - heavy-ball momentum `beta`, `a_t = (1 - beta^(t+1)) / (1 - beta)`,
//!   `a(x) = 1 / ((1 - x)(1 - beta x))` (jax_privacy's `momentum_sgd_matrix`).
//!
//! Prefix sums are momentum with `beta = 0`. Multiplying by A is the recursion
//! `y_t = v_t + (1 + beta) y_{t-1} - beta y_{t-2}`, O(n). The Toeplitz square root is
//! `(1 - x)^(-1/2) (1 - beta x)^(-1/2)`, whose first factor has the coefficients
//! `r_t = binom(2t, t) / 4^t` (Fichtenberger, Henzinger and Upadhyay 2023).

use serde::Serialize;

use super::series::Series;
use crate::error::{check_range, AccountingError};

/// A lower-triangular Toeplitz workload: prefix sums, optionally through heavy-ball momentum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    momentum: f64,
}

impl Workload {
    /// Prefix sums: `A = tri(n)`, the all-ones lower triangle.
    pub fn prefix() -> Self {
        Self { momentum: 0.0 }
    }

    /// Heavy-ball momentum `beta` in `[0, 1)`: `a_t = (1 - beta^(t+1)) / (1 - beta)`.
    pub fn momentum(beta: f64) -> Result<Self, AccountingError> {
        check_range(
            "momentum",
            beta,
            (0.0..1.0).contains(&beta),
            "0 <= beta < 1",
        )?;
        Ok(Self { momentum: beta })
    }

    /// The momentum coefficient (0 for prefix sums).
    pub fn beta(&self) -> f64 {
        self.momentum
    }

    /// Whether this is the plain prefix-sum workload.
    pub fn is_prefix(&self) -> bool {
        self.momentum == 0.0
    }

    /// The first column of A: `a_0, ..., a_{n-1}`.
    pub fn coefs(&self, n: usize) -> Vec<f64> {
        let mut a = vec![0.0; n];
        if let Some(first) = a.first_mut() {
            *first = 1.0;
        }
        self.apply(&mut a);
        a
    }

    /// `v <- A v` for a vector (equivalently, the series product `a(x) v(x)`).
    pub fn apply(&self, v: &mut [f64]) {
        let (p1, p2) = (1.0 + self.momentum, -self.momentum);
        let (mut y1, mut y2) = (0.0, 0.0);
        for x in v.iter_mut() {
            let y = *x + p1 * y1 + p2 * y2;
            *x = y;
            y2 = y1;
            y1 = y;
        }
    }

    /// `g <- A^T g`.
    pub fn apply_transpose(&self, g: &mut [f64]) {
        let (p1, p2) = (1.0 + self.momentum, -self.momentum);
        let (mut y1, mut y2) = (0.0, 0.0);
        for x in g.iter_mut().rev() {
            let y = *x + p1 * y1 + p2 * y2;
            *x = y;
            y2 = y1;
            y1 = y;
        }
    }

    /// The first `n` coefficients of the Toeplitz square root `a(x)^(1/2)` (the strategy of
    /// the square-root factorization).
    pub fn sqrt_coefs(&self, n: usize) -> Vec<f64> {
        self.root_coefs(n, false)
    }

    /// The first `n` coefficients of `a(x)^(-1/2)`, the inverse of [`Workload::sqrt_coefs`].
    pub fn inverse_sqrt_coefs(&self, n: usize) -> Vec<f64> {
        self.root_coefs(n, true)
    }

    fn root_coefs(&self, n: usize, inverse: bool) -> Vec<f64> {
        let base = if inverse {
            half_power_coefs(n, 1.0)
        } else {
            half_power_coefs(n, -1.0)
        };
        if self.momentum == 0.0 {
            return base;
        }
        let mut power = 1.0;
        let damped: Vec<f64> = base
            .iter()
            .map(|r| {
                let x = r * power;
                power *= self.momentum;
                x
            })
            .collect();
        Series::new().mul(&base, &damped, n)
    }

    /// A short description, e.g. `prefix` or `momentum(beta=0.9)`.
    pub fn name(&self) -> String {
        if self.is_prefix() {
            "prefix".into()
        } else {
            format!("momentum(beta={})", self.momentum)
        }
    }
}

/// The first `n` coefficients of `(1 - x)^(sign/2)`: `sign = -1` gives `binom(2t, t) / 4^t`
/// (`r_t = r_{t-1} (2t - 1) / (2t)`), `sign = +1` gives `1, -1/2, -1/8, -1/16, ...`
/// (`d_t = d_{t-1} (2t - 3) / (2t)`).
pub(crate) fn half_power_coefs(n: usize, sign: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let mut x = 1.0;
    for t in 0..n {
        if t > 0 {
            let t = t as f64;
            x *= (2.0 * t - 2.0 - sign) / (2.0 * t);
        }
        out.push(x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_of_the_workloads() {
        assert_eq!(Workload::prefix().coefs(4), vec![1.0; 4]);
        let m = Workload::momentum(0.5).unwrap().coefs(4);
        for (t, a) in m.iter().enumerate() {
            assert!((a - (1.0 - 0.5f64.powi(t as i32 + 1)) / 0.5).abs() < 1e-15);
        }
        assert!(Workload::momentum(1.0).is_err());
        assert!(Workload::momentum(f64::NAN).is_err());
    }

    #[test]
    fn square_roots_square_to_the_workload_and_invert_each_other() {
        let mut s = Series::new();
        for w in [Workload::prefix(), Workload::momentum(0.9).unwrap()] {
            let r = w.sqrt_coefs(50);
            let sq = s.mul(&r, &r, 50);
            for (x, a) in sq.iter().zip(w.coefs(50)) {
                assert!((x - a).abs() < 1e-12 * a, "{x} vs {a}");
            }
            let one = s.mul(&r, &w.inverse_sqrt_coefs(50), 50);
            assert!((one[0] - 1.0).abs() < 1e-15);
            assert!(one[1..].iter().all(|x| x.abs() < 1e-13));
        }
        assert_eq!(
            half_power_coefs(5, -1.0),
            vec![1.0, 0.5, 0.375, 0.3125, 0.2734375]
        );
        assert_eq!(half_power_coefs(4, 1.0), vec![1.0, -0.5, -0.125, -0.0625]);
    }

    #[test]
    fn transpose_is_the_adjoint() {
        let w = Workload::momentum(0.7).unwrap();
        let u: Vec<f64> = (0..30).map(|i| (i as f64).sin()).collect();
        let v: Vec<f64> = (0..30).map(|i| (i as f64 * 0.4).cos()).collect();
        let (mut au, mut atv) = (u.clone(), v.clone());
        w.apply(&mut au);
        w.apply_transpose(&mut atv);
        let lhs: f64 = au.iter().zip(&v).map(|(a, b)| a * b).sum();
        let rhs: f64 = u.iter().zip(&atv).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-10);
    }
}
