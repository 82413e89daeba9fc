//! Privacy accounting for differentially private training, in pure Rust (no libtorch).
//!
//! The mechanism of DP-SGD is the Poisson-subsampled Gaussian: each example joins a step's
//! batch independently with probability `q`, the clipped gradients (norm at most `C`) are
//! summed and `N(0, sigma^2 C^2 I)` is added. What a computation did is described by a
//! [`DpEvent`]; an [`Accountant`] composes events and answers epsilon or delta. The
//! [`RdpAccountant`] tracks Rényi differential privacy (Mironov 2017; Mironov, Talwar and
//! Zhang 2019) and converts it to (epsilon, delta). [`mf`] designs and accounts for correlated
//! noise (matrix-factorization mechanisms) instead of DP-SGD's independent noise.
//!
//! ```
//! use dp_accounting::{Accountant, DpEvent, RdpAccountant};
//! let mut acc = RdpAccountant::default();
//! acc.compose(&DpEvent::dp_sgd(0.01, 1.0, 10_000)).unwrap();
//! let eps = acc.epsilon(1e-5).unwrap();
//! assert!((eps - 6.7127).abs() < 1e-3);
//! ```

mod accountant;
pub mod audit;
mod calibrate;
pub mod cli;
mod error;
mod event;
pub mod mf;
pub mod plot;
mod prv;
mod rdp;
mod special;
mod statement;
mod tan;

pub use accountant::{Accountant, AccountantKind};
pub use calibrate::{calibrate_noise_multiplier, dp_sgd_epsilon, max_steps, Calibration};
pub use error::AccountingError;
pub use event::{CyclicPoisson, DpEvent, NeighbouringRelation};
pub use prv::{
    prv_epsilon_error_for, EpsilonBounds, PrvAccountant, DEFAULT_PRV_EPSILON_ERROR, PRV_MIN_DELTA,
};
pub use rdp::{
    delta_from_rdp, epsilon_from_rdp, repeat_and_select_rdp,
    sample_without_replacement_gaussian_rdp, subsampled_gaussian_rdp, subsampled_gaussian_rdp_with,
    tnb_gamma, EpsilonAtOrder, FractionalSeries, RdpAccountant, RunCount, DEFAULT_ORDERS,
};
pub use statement::round_up;
pub use tan::{tan_table, TanRow, TanTable, TAN_MIN_SIGMA};
