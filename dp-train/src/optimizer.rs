//! Optimizers that step on the privatized gradient `(sum of clipped gradients + noise) / B`.
//! They only post-process that released quantity, so they cost no privacy.
//!
//! - SGD with momentum `mu` (PyTorch's form): `v = mu v + g`; the step is `v`, or `g + mu v`
//!   with Nesterov.
//! - Adam (Kingma and Ba 2015): `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
//!   step `lr * m_hat / (sqrt(v_hat) + eps)` with bias corrections `1 - b^t`.
//! - AdamW (Loshchilov and Hutter 2019): Adam plus decoupled weight decay `lr * wd * theta`.
//!
//! Learning-rate schedules: constant, or cosine decay to 0 over the run, each optionally after
//! a linear warm-up.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::TrainError;

/// Which optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// Stochastic gradient descent.
    Sgd {
        /// Momentum (0 for plain SGD).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam.
    Adam {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        eps: f64,
    },
    /// Adam with decoupled weight decay.
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        eps: f64,
        /// Weight decay.
        weight_decay: f64,
    },
}

impl Optimizer {
    /// Checks the hyperparameters' ranges: momentum and betas in [0, 1), eps > 0, weight decay
    /// >= 0, Nesterov only with momentum.
    pub fn check(&self) -> Result<(), TrainError> {
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(TrainError::Config(format!(
                    "training.optimizer.{name} must be in [0, 1), got {v}"
                )))
            }
        };
        let positive = |name: &str, v: f64, zero_ok: bool| {
            if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
                Ok(())
            } else {
                Err(TrainError::Config(format!(
                    "training.optimizer.{name} must be a finite number {} 0, got {v}",
                    if zero_ok { ">=" } else { ">" }
                )))
            }
        };
        match *self {
            Optimizer::Sgd { momentum, nesterov } => {
                unit("momentum", momentum)?;
                if nesterov && momentum == 0.0 {
                    return Err(TrainError::Config(
                        "training.optimizer.nesterov needs a momentum > 0".into(),
                    ));
                }
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                positive("eps", eps, false)?;
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                positive("eps", eps, false)?;
                positive("weight_decay", weight_decay, true)?;
            }
        }
        Ok(())
    }
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
        }
    }
}

/// How the learning rate changes over the run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Steps of linear warm-up from 0 to the base rate.
    pub warmup_steps: u64,
    /// Cosine decay to 0 over the remaining steps (else constant).
    pub cosine: bool,
}

impl Schedule {
    /// The learning rate at step `step` (1-based) of `total` steps.
    pub fn rate(&self, base: f64, step: u64, total: u64) -> f64 {
        if step <= self.warmup_steps {
            return base * step as f64 / self.warmup_steps.max(1) as f64;
        }
        if !self.cosine {
            return base;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// An optimizer with its state (moments per parameter, step count).
#[derive(Debug)]
pub struct OptimizerState {
    optimizer: Optimizer,
    first: BTreeMap<String, Tensor>,
    second: BTreeMap<String, Tensor>,
    steps: u64,
}

impl OptimizerState {
    /// A fresh state for `optimizer`.
    pub fn new(optimizer: Optimizer) -> Self {
        Self {
            optimizer,
            first: BTreeMap::new(),
            second: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Writes the moments to a safetensors file (`first/NAME`, `second/NAME`).
    pub fn save(&self, path: &std::path::Path) -> Result<(), tch::TchError> {
        let named: Vec<(String, &Tensor)> = self
            .first
            .iter()
            .map(|(n, t)| (format!("first/{n}"), t))
            .chain(self.second.iter().map(|(n, t)| (format!("second/{n}"), t)))
            .collect();
        Tensor::write_safetensors(&named, path)
    }

    /// Restores the moments written by [`OptimizerState::save`] and the step count.
    pub fn load(
        optimizer: Optimizer,
        path: &std::path::Path,
        steps: u64,
    ) -> Result<Self, tch::TchError> {
        let mut state = Self::new(optimizer);
        state.steps = steps;
        for (name, tensor) in Tensor::read_safetensors(path)? {
            if let Some(n) = name.strip_prefix("first/") {
                state.first.insert(n.to_string(), tensor);
            } else if let Some(n) = name.strip_prefix("second/") {
                state.second.insert(n.to_string(), tensor);
            }
        }
        Ok(state)
    }

    /// Updates each variable named in `gradients` (the privatized mean gradient) at its rate
    /// `lr(name)`, in place. Every libtorch error (a gradient of another shape, kind or device than its
    /// variable) is returned, never dropped: a failed update must not be counted as a step. A
    /// gradient whose name or shape does not match a variable is refused before anything changes.
    pub fn step(
        &mut self,
        variables: &HashMap<String, Tensor>,
        gradients: &BTreeMap<String, Tensor>,
        lr: impl Fn(&str) -> f64,
    ) -> Result<(), TrainError> {
        for (name, g) in gradients {
            let Some(theta) = variables.get(name) else {
                return Err(TrainError::Internal(format!(
                    "the optimizer got a gradient for '{name}', which is not a variable of the model"
                )));
            };
            if g.size() != theta.size() {
                return Err(TrainError::Internal(format!(
                    "the gradient of '{name}' has shape {:?}, the variable {:?}",
                    g.size(),
                    theta.size()
                )));
            }
        }
        self.steps += 1;
        let t = self.steps as i32;
        tch::no_grad(|| {
            for (name, g) in gradients {
                let mut theta = variables[name].shallow_clone();
                let lr = lr(name);
                let update = match self.optimizer {
                    Optimizer::Sgd { momentum, nesterov } => {
                        if momentum == 0.0 {
                            g.f_mul_scalar(lr)?
                        } else {
                            let v = self
                                .first
                                .entry(name.clone())
                                .or_insert_with(|| g.zeros_like());
                            *v = v.f_mul_scalar(momentum)?.f_add(g)?;
                            if nesterov {
                                g.f_add(&v.f_mul_scalar(momentum)?)?.f_mul_scalar(lr)?
                            } else {
                                v.f_mul_scalar(lr)?
                            }
                        }
                    }
                    Optimizer::Adam { beta1, beta2, eps }
                    | Optimizer::AdamW {
                        beta1, beta2, eps, ..
                    } => {
                        let m = self
                            .first
                            .entry(name.clone())
                            .or_insert_with(|| g.zeros_like());
                        *m = m
                            .f_mul_scalar(beta1)?
                            .f_add(&g.f_mul_scalar(1.0 - beta1)?)?;
                        let m_hat = m.f_div_scalar(1.0 - beta1.powi(t))?;
                        let v = self
                            .second
                            .entry(name.clone())
                            .or_insert_with(|| g.zeros_like());
                        *v = v
                            .f_mul_scalar(beta2)?
                            .f_add(&g.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
                        let v_hat = v.f_div_scalar(1.0 - beta2.powi(t))?;
                        m_hat
                            .f_div(&v_hat.f_sqrt()?.f_add_scalar(eps)?)?
                            .f_mul_scalar(lr)?
                    }
                };
                if let Optimizer::AdamW { weight_decay, .. } = self.optimizer {
                    let decay = theta.f_mul_scalar(lr * weight_decay)?;
                    let _ = theta.f_sub_(&decay)?;
                }
                let _ = theta.f_sub_(&update)?;
            }
            Ok(())
        })
    }
}
