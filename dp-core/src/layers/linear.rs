//! A linear layer `z = a W^T + b` that records `(a, z)` for per-example clipping.

use tch::nn::{self, Init};
use tch::Tensor;

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
        let weight = path.var(
            "weight",
            &[out_dim, in_dim],
            nn::init::DEFAULT_KAIMING_UNIFORM,
        );
        let bound = 1.0 / (in_dim as f64).sqrt();
        let bias = bias.then(|| {
            path.var(
                "bias",
                &[out_dim],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
        });
        let bias_name = bias.as_ref().map(|_| path.path("bias"));
        Self {
            weight,
            bias,
            weight_name: path.path("weight"),
            bias_name,
        }
    }

    /// Applies the layer, recording `(input, output)` if the tape is on.
    pub fn forward(&self, input: &Tensor, tape: &mut Tape) -> Tensor {
        let output = input.linear(&self.weight, self.bias.as_ref());
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
