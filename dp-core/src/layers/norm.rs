//! LayerNorm and RMSNorm over the last dimension, recording input and output for per-example
//! clipping (the engine recomputes the normalised input; nothing extra is stored).
//!
//! Mixed precision: statistics are computed in the parameters' precision (f32 for a bf16
//! input) and the output is returned in the input's precision.

use tch::nn::{self, Init};
use tch::Tensor;

use crate::tape::{Record, Tape};

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` (LayerNorm) or
/// `y = x / sqrt(mean(x^2) + eps) * gamma` (RMSNorm), over the last dimension of size `dim`.
#[derive(Debug)]
pub struct DpNorm {
    /// Gamma, (dim), initialised to 1.
    pub weight: Tensor,
    /// Beta, (dim), initialised to 0 (LayerNorm only).
    pub bias: Option<Tensor>,
    dim: i64,
    eps: f64,
    weight_name: String,
    bias_name: Option<String>,
}

impl DpNorm {
    /// A LayerNorm with gamma and beta under `path`.
    pub fn layer_norm(path: &nn::Path, dim: i64, eps: f64) -> Self {
        let bias = path.var("bias", &[dim], Init::Const(0.0));
        Self::build(path, dim, eps, Some(bias))
    }

    /// An RMSNorm with gamma under `path`.
    pub fn rms_norm(path: &nn::Path, dim: i64, eps: f64) -> Self {
        Self::build(path, dim, eps, None)
    }

    fn build(path: &nn::Path, dim: i64, eps: f64, bias: Option<Tensor>) -> Self {
        let weight = path.var("weight", &[dim], Init::Const(1.0));
        let bias_name = bias.as_ref().map(|_| path.path("bias"));
        Self {
            weight,
            bias,
            dim,
            eps,
            weight_name: path.path("weight"),
            bias_name,
        }
    }

    /// Applies the norm, recording `(input, output)` if the tape is on.
    pub fn forward(&self, input: &Tensor, tape: &mut Tape) -> Tensor {
        let centred = self.bias.is_some();
        let x = input.to_kind(self.weight.kind());
        let output = if centred {
            x.layer_norm(
                [self.dim],
                Some(&self.weight),
                self.bias.as_ref(),
                self.eps,
                false,
            )
        } else {
            x.rms_norm([self.dim], Some(&self.weight), self.eps)
        }
        .to_kind(input.kind());
        if tape.wants(&output) {
            tape.push(Record::Norm {
                input: input.shallow_clone(),
                output: output.shallow_clone(),
                centred,
                eps: self.eps,
                weight: self.weight_name.clone(),
                bias: self.bias_name.clone(),
            });
        }
        output
    }
}
