//! Privacy accounting for differentially private training, in pure Rust (no libtorch).
//!
//! The mechanism of DP-SGD is the Poisson-subsampled Gaussian: each example joins a step's
//! batch independently with probability `q`, the clipped gradients (norm at most `C`) are
//! summed and `N(0, sigma^2 C^2 I)` is added. Under the add/remove-one neighbouring relation
//! its privacy is tracked here with Rényi differential privacy (Mironov 2017; Mironov, Talwar
//! and Zhang 2019) and converted to (epsilon, delta).
//!
//! ```
//! use dp_accounting::RdpAccountant;
//! let mut acc = RdpAccountant::default();
//! acc.compose_poisson_gaussian(0.01, 1.0, 10_000).unwrap();
//! let eps = acc.epsilon(1e-5).unwrap();
//! assert!((eps.epsilon - 6.7127).abs() < 1e-3);
//! ```

mod calibrate;
mod error;
mod rdp;
mod special;
mod statement;

pub use calibrate::{calibrate_noise_multiplier, Calibration, CALIBRATION_RELATIVE_TOLERANCE};
pub use error::AccountingError;
pub use rdp::{
    epsilon_from_rdp, subsampled_gaussian_rdp, EpsilonAtOrder, RdpAccountant, DEFAULT_ORDERS,
};
pub use statement::round_up;
