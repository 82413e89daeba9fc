//! The private training loop: Poisson-sampled logical batches, per-example clipping with the
//! `dp-core` engine, Gaussian noise, an SGD step, and a ledger that accounts every noised step
//! with `dp-accounting` before its noise is drawn.
//!
//! Jobs: an MLP on Fashion-MNIST ([`fashion_mnist`]) and private fine-tuning of a pretrained
//! BERT-style encoder (all-MiniLM-L6-v2) on Rotten Tomatoes ([`text`],
//! [`models::EncoderClassifier`]); the `dp-train` binary runs them from TOML plans ([`plan`]).

/// Implements `Display` for enums a user names in a plan or on the command line: the name
/// `clap::ValueEnum` gives the value (`text-csv`, `no-noise`), the one the user wrote.
macro_rules! display_as_value_name {
    ($($choice:ty),*) => {$(
        impl std::fmt::Display for $choice {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let value = clap::ValueEnum::to_possible_value(self)
                    .expect("no value is skipped");
                f.write_str(value.get_name())
            }
        }
    )*};
}

pub mod audit;
pub mod audit_plan;
mod averaging;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod data_parallel;
mod dpsgd;
mod error;
pub mod evaluation;
pub mod export;
pub mod fashion_mnist;
mod generator;
pub mod job;
mod ledger;
pub mod models;
pub mod optimizer;
pub mod per_example_loss;
pub mod plan;
mod statement;
pub mod text;
pub mod trained;
pub mod tune;

pub use data_parallel::serve_as_worker;
pub use dpsgd::{
    evaluate_accuracy, train, train_data_parallel, train_with_hooks, train_with_loss, Batches,
    DpSgdConfig, Mechanism, NoHooks, PrivacyTarget, StepHooks, StepReport, TrainSummary,
};
pub use error::{AtPath, TrainError};
pub use generator::run_generator;
pub use ledger::{LedgerRecord, PrivacyLedger};
pub use statement::PrivacyStatement;

/// A device as users read it ("CPU", "CUDA device 0"), not its Rust name.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "CPU".into(),
        tch::Device::Cuda(i) => format!("CUDA device {i}"),
        other => format!("{other:?}"),
    }
}
