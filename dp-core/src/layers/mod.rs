//! Layers that behave like their plain libtorch counterparts and record, on a [`crate::Tape`]
//! that is on, what the clipping engine needs. Each layer's file holds its clipping rule (how
//! its per-example gradient norms and clipped sums are formed); a new layer is one file with
//! one implementation of the rule's trait.

mod conv;
mod embedding;
mod linear;
mod lora;
mod norm;
mod rule;

pub use conv::{Conv2dGeometry, DpConv2d};
pub use embedding::DpEmbedding;
pub use linear::DpLinear;
pub use lora::LoraAdapter;
pub use norm::DpNorm;
pub(crate) use rule::{add_into, ClippingRule, GramCache, NormContext, SumContext};

use tch::nn::{self, Init};
use tch::Tensor;

/// The variables of a linear map or a convolution under `path`: `weight` of `shape`
/// (Kaiming-uniform, as `tch::nn::linear` and `tch::nn::conv2d`) and, if asked, `bias` of
/// `shape[0]` uniform in `+-1/sqrt(fan_in)`, with their full names.
fn weight_and_bias(
    path: &nn::Path,
    shape: &[i64],
    fan_in: i64,
    bias: bool,
) -> (Tensor, Option<Tensor>, String, Option<String>) {
    let weight = path.var("weight", shape, nn::init::DEFAULT_KAIMING_UNIFORM);
    let bound = 1.0 / (fan_in as f64).sqrt();
    let bias = bias.then(|| {
        path.var(
            "bias",
            &shape[..1],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )
    });
    let bias_name = bias.as_ref().map(|_| path.path("bias"));
    (weight, bias, path.path("weight"), bias_name)
}
