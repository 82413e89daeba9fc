//! Correlated noise by matrix factorization (DP-MF, DP-FTRL): design, sensitivity, error and
//! accounting of the noise a training loop adds instead of DP-SGD's independent noise.
//!
//! **Model** (Denisov et al. 2022; Choquette-Choo et al. 2023). Over `n` steps the trainer
//! forms the sums of clipped gradients `x_t` (rows of X) and computes linear queries `A X` of
//! them: prefix sums for SGD, a momentum filter for heavy-ball momentum ([`Workload`]).
//! Factor `A = B C` with C lower-triangular ([`Strategy`]) and release
//! `B (C X + Z)`, `Z ~ N(0, sigma^2 clip^2 sens(C)^2)`; equivalently the optimizer sees the
//! noisy gradient `x_t + (C^{-1} Z)_t`. `C = I` is DP-SGD. Because C is lower-triangular the
//! noise at step t depends only on draws up to t ([`NoiseRecurrence`]), which is what makes
//! adaptively chosen gradients safe.
//!
//! **Sensitivity** of C under b-min-sep participation ([`Participation`],
//! [`Strategy::sensitivity`]), **error** ([`Strategy::evaluate`], RMSE in units of noise
//! multiplier x clip norm), **optimized strategies** ([`optimize_banded`], [`optimize_blt`],
//! [`optimize_nu`]) and **accounting** ([`Strategy::dp_event`], [`gaussian_epsilon`]): an
//! unamplified run is one Gaussian mechanism with the noise multiplier, whatever C.
//!
//! ```
//! use dp_accounting::mf::{optimize_banded, Objective, Participation, Strategy, Workload};
//! let (n, epochs) = (1024, 4);
//! let p = Participation::epochs(n, epochs).unwrap();
//! let w = Workload::prefix();
//! let dp_sgd = Strategy::identity(n).unwrap().evaluate(&w, &p);
//! let banded = optimize_banded(n, 256, &w, &p, Objective::Mean).unwrap();
//! let e = banded.evaluate(&w, &p);
//! assert!((dp_sgd.rmse() - 45.2769).abs() < 1e-4);
//! assert!(e.rmse() < 6.4442 * 1.002);
//! ```

mod accounting;
mod blt;
mod lbfgs;
mod lower_bound;
mod metrics;
mod optimal_banded;
mod optimal_blt;
mod optimal_nu;
mod sensitivity;
mod series;
mod strategy;
mod workload;

pub use accounting::{gaussian_delta, gaussian_epsilon, gaussian_noise_multiplier};
pub use blt::Blt;
pub use lower_bound::mean_loss_lower_bound;
pub use metrics::{Evaluation, Objective};
pub use optimal_banded::optimize_banded;
pub use optimal_blt::optimize_blt;
pub use optimal_nu::optimize_nu;
pub use sensitivity::{Participation, Sensitivity};
pub use strategy::{NoiseRecurrence, Strategy, StrategyKind};
pub use workload::Workload;
