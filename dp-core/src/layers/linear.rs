//! A linear layer `z = a W^T + b` that records `(a, z)` for per-example clipping.
//!
//! Mixed precision: the layer computes in its input's precision. With a bf16 input, `W` and
//! `b` (kept in f32 as the optimizer's master copy) are cast to bf16 for the product, so the
//! matmul runs in bf16; the engine widens `a` and `g` to f32 for norms and sums.

use tch::nn;
use tch::Tensor;

use super::weight_and_bias;
use crate::tape::{Record, Tape};

/// Linear layer on inputs of shape (B, d) or (B, T, d), initialised like `tch::nn::linear`
/// (Kaiming-uniform weight, uniform bias in `+-1/sqrt(d)`).
#[derive(Debug)]
pub struct DpLinear {
    /// Weight, shape (out, in).
    pub weight: Tensor,
    /// Bias, shape (out), if any.
    pub bias: Option<Tensor>,
    weight_name: String,
    bias_name: Option<String>,
}

impl DpLinear {
    /// Creates the layer's variables `weight` (and `bias`) under `path`.
    pub fn new(path: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let (weight, bias, weight_name, bias_name) =
            weight_and_bias(path, &[out_dim, in_dim], in_dim, bias);
        Self {
            weight,
            bias,
            weight_name,
            bias_name,
        }
    }

    /// Applies the layer, recording `(input, output)` if the tape is on.
    pub fn forward(&self, input: &Tensor, tape: &mut Tape) -> Tensor {
        let kind = input.kind();
        let output = input.linear(
            &self.weight.to_kind(kind),
            self.bias.as_ref().map(|b| b.to_kind(kind)).as_ref(),
        );
        if tape.wants(&output) {
            tape.push(Record::Linear {
                input: input.shallow_clone(),
                output: output.shallow_clone(),
                weight: self.weight_name.clone(),
                bias: self.bias_name.clone(),
            });
        }
        output
    }
}
