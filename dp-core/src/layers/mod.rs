//! Layers that behave like their plain libtorch counterparts and record, on a [`crate::Tape`]
//! that is on, what the clipping engine needs.

mod conv;
mod embedding;
mod linear;
mod lora;
mod norm;

pub use conv::{Conv2dGeometry, DpConv2d};
pub use embedding::DpEmbedding;
pub use linear::DpLinear;
pub use lora::LoraAdapter;
pub use norm::DpNorm;
