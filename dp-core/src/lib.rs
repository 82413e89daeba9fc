//! Per-example gradient clipping, noise and sampling for differentially private training on
//! libtorch tensors.
//!
//! The design avoids module hooks (tch has none):
//! 1. DP layers ([`layers::DpLinear`], [`layers::DpConv2d`], [`layers::DpEmbedding`],
//!    [`layers::DpNorm`]) record their input `a` and output `z` on a [`Tape`] during the
//!    forward pass;
//! 2. one backward pass of the summed per-example losses with respect to all recorded outputs
//!    (`Tensor::run_backward`) yields the output gradients `g`; no parameter gradient is asked
//!    of autograd;
//! 3. the [`ClippingEngine`] computes per-example gradient norms from `(a, g)` (ghost norms or
//!    explicit per-example gradients), the clip factors of its [`ClippingStyle`] (flat, per
//!    layer or automatic), and the clipped gradient sums directly (book-keeping:
//!    `sum_i c_i G_i` as one matmul per layer);
//! 4. [`noise`] adds Gaussian noise of standard deviation `sigma C` once per logical batch in
//!    the [`NoiseMode`] the caller chose (secure: exact discrete noise on a power-of-two grid;
//!    fast: libtorch's `randn`), every draw keyed by the run's [`PrivacyRng`], and reports the
//!    `DpEvent` it ran;
//!    or [`CorrelatedNoise`] adds matrix-factorization noise `(C^{-1} Z)_t` (floating-point).
//!
//! References: Goodfellow 2015 (per-example norms of linear layers), Li et al. 2022 (ghost
//! clipping), Bu et al. 2023 (book-keeping).

pub mod collectives;
mod correlated;
#[cfg(torch_cuda_link)]
mod cuda_link;
pub mod device_memory;
mod engine;
mod error;
mod host;
pub mod layers;
pub mod noise;
pub mod reference;
mod rng;
mod rounding;
mod sampling;
mod secure;
mod tape;

pub use collectives::Collectives;
pub use correlated::CorrelatedNoise;
pub use engine::{accumulation_kind, ClippedBatch, ClippingEngine, ClippingStyle};
pub use error::CoreError;
pub use noise::GaussianNoise;
pub use rng::{NoiseMode, PrivacyRng, RngSnapshot};
pub use sampling::PoissonSampler;
pub use tape::{Record, Tape};
