//! Layers that behave like their plain libtorch counterparts and record, on a [`crate::Tape`]
//! that is on, what the clipping engine needs.

mod linear;

pub use linear::DpLinear;
