//! The privacy ledger: every noised step is recorded *before* its noise is drawn, and a step
//! that would take epsilon past the budget is refused before it happens.
//!
//! Each step is one Poisson-subsampled Gaussian mechanism with the run's sampling rate and
//! noise multiplier; the ledger keeps its one-step RDP curve and composes by multiplication.

use dp_accounting::{epsilon_from_rdp, subsampled_gaussian_rdp, EpsilonAtOrder, DEFAULT_ORDERS};

use crate::error::TrainError;

/// Steps taken so far and what they cost.
#[derive(Debug, Clone)]
pub struct PrivacyLedger {
    sampling_rate: f64,
    noise_multiplier: f64,
    delta: f64,
    budget: f64,
    step_rdp: Vec<f64>,
    steps: u64,
}

impl PrivacyLedger {
    /// A ledger for steps of rate `sampling_rate` and `noise_multiplier` (0: no noise, not
    /// private), refusing any step beyond (`budget`, `delta`).
    pub fn new(
        sampling_rate: f64,
        noise_multiplier: f64,
        delta: f64,
        budget: f64,
    ) -> Result<Self, TrainError> {
        // No noise: every step is non-private, epsilon is infinite (only an infinite budget
        // lets such a step through).
        let step_rdp = if noise_multiplier == 0.0 {
            vec![f64::INFINITY; DEFAULT_ORDERS.len()]
        } else {
            DEFAULT_ORDERS
                .iter()
                .map(|&alpha| subsampled_gaussian_rdp(sampling_rate, noise_multiplier, alpha))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            sampling_rate,
            noise_multiplier,
            delta,
            budget,
            step_rdp,
            steps: 0,
        })
    }

    /// Records one more step, or refuses it if it would exceed the budget.
    pub fn record_step(&mut self) -> Result<(), TrainError> {
        let after = self.epsilon_after(self.steps + 1)?;
        if after.epsilon > self.budget {
            return Err(TrainError::BudgetExhausted {
                step: self.steps + 1,
                epsilon: after.epsilon,
                budget: self.budget,
            });
        }
        self.steps += 1;
        Ok(())
    }

    /// Steps recorded.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Epsilon spent so far (at the ledger's delta), with its RDP order.
    pub fn spent(&self) -> Result<EpsilonAtOrder, TrainError> {
        self.epsilon_after(self.steps)
    }

    /// The sampling rate q of every step.
    pub fn sampling_rate(&self) -> f64 {
        self.sampling_rate
    }

    /// The noise multiplier of every step.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The delta at which epsilon is reported.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    fn epsilon_after(&self, steps: u64) -> Result<EpsilonAtOrder, TrainError> {
        let rdp: Vec<f64> = self.step_rdp.iter().map(|r| r * steps as f64).collect();
        Ok(epsilon_from_rdp(&DEFAULT_ORDERS, &rdp, self.delta)?)
    }
}
