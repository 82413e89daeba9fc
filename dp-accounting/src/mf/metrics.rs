//! Error metrics of a factorization `A = B C` with unit noise (noise multiplier and clip norm
//! 1, before the sensitivity).
//!
//! - per-query error `e_t = ||B[t, :]||^2` with `B = A C^{-1}`;
//! - mean error `(1/n) sum_t e_t`, max error `max_t e_t`;
//! - loss = `sens(C)^2 x error`; **RMSE** `= sqrt(sens^2 x mean error)` and max-RMSE
//!   `= sqrt(sens^2 x max error)`: the error of the noisy prefix sums (or momentum iterates) in
//!   units of `noise_multiplier x clip_norm` (Choquette-Choo et al. 2023; jax_privacy's
//!   `per_query_error`). Divide by the batch size for averaged gradients.
//!
//! For Toeplitz A and C, B is Toeplitz with coefficients `beta = a * d` (`d` those of
//! `C^{-1}`), so `e_t = sum_{j<=t} beta_j^2` is non-decreasing: the max error is `e_{n-1}` and
//! the mean error is `(1/n) sum_j (n - j) beta_j^2`.

use serde::{Deserialize, Serialize};

use super::sensitivity::Sensitivity;
use super::workload::Workload;

/// Which error a strategy is optimized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The mean squared error over all steps (the RMSE).
    #[default]
    Mean,
    /// The error of the worst step (the last one, for Toeplitz factorizations).
    Max,
}

impl Objective {
    /// The weight of `beta_j^2` in the objective: `(n - j) / n` (mean) or 1 (max).
    pub(crate) fn weights(self, n: usize) -> Vec<f64> {
        match self {
            Objective::Mean => (0..n).map(|j| (n - j) as f64 / n as f64).collect(),
            Objective::Max => vec![1.0; n],
        }
    }
}

/// Sensitivity and error of a strategy for a workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The sensitivity of C under the participation pattern.
    pub sensitivity: Sensitivity,
    /// `(1/n) sum_t ||B[t, :]||^2`.
    pub mean_error: f64,
    /// `max_t ||B[t, :]||^2`.
    pub max_error: f64,
}

impl Evaluation {
    /// `sens^2 x mean error`.
    pub fn loss_mean(&self) -> f64 {
        self.sensitivity.squared * self.mean_error
    }

    /// `sens^2 x max error`.
    pub fn loss_max(&self) -> f64 {
        self.sensitivity.squared * self.max_error
    }

    /// Root-mean-square error of the released sums, in units of noise multiplier x clip norm.
    pub fn rmse(&self) -> f64 {
        self.loss_mean().sqrt()
    }

    /// Root of the worst step's squared error, in the same units.
    pub fn max_rmse(&self) -> f64 {
        self.loss_max().sqrt()
    }

    /// The loss of an objective.
    pub fn loss(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Mean => self.loss_mean(),
            Objective::Max => self.loss_max(),
        }
    }
}

/// `e_t = sum_{j<=t} beta_j^2` with `beta = a * d`, for `C^{-1}` with first column `d`.
pub(crate) fn per_query_error(noise_coefs: &[f64], workload: &Workload) -> Vec<f64> {
    let mut beta = noise_coefs.to_vec();
    workload.apply(&mut beta);
    let mut total = 0.0;
    beta.iter()
        .map(|b| {
            total += b * b;
            total
        })
        .collect()
}
