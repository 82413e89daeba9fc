//! dp-toolkit: differentially private training of libtorch models in Rust.
//!
//! This facade re-exports the three crates of the workspace:
//! - [`accounting`] (`dp-accounting`): privacy accounting, no libtorch needed;
//! - [`core`] (`dp-core`): DP layers, per-example clipping, noise and sampling;
//! - [`train`] (`dp-train`): the private training loop and its privacy ledger.

pub use dp_accounting as accounting;
pub use dp_core as core;
pub use dp_train as train;
