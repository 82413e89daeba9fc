//! The private training loop: Poisson-sampled logical batches, per-example clipping with the
//! `dp-core` engine, Gaussian noise, an SGD step, and a ledger that accounts every noised step
//! with `dp-accounting` before its noise is drawn.
//!
//! The first job is DP-SGD on Fashion-MNIST ([`fashion_mnist`]); the `dp-train` binary runs it
//! (`dp-train demo`).

pub mod audit;
pub mod bench;
pub mod checkpoint;
pub mod data;
mod dpsgd;
mod error;
pub mod fashion_mnist;
mod ledger;
pub mod models;
pub mod optimizer;
pub mod plan;
mod statement;
pub mod tune;

pub use dpsgd::{
    evaluate_accuracy, train, train_with_hooks, Batches, DpSgdConfig, NoHooks, StepHooks,
    StepReport, TrainSummary,
};
pub use error::TrainError;
pub use ledger::PrivacyLedger;
pub use statement::PrivacyStatement;
