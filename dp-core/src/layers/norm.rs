//! LayerNorm and RMSNorm over the last dimension, recording input and output for per-example
//! clipping (the engine recomputes the normalised input; nothing extra is stored).
//!
//! Mixed precision: statistics are computed in the parameters' precision (f32 for a bf16
//! input) and the output is returned in the input's precision.
//!
//! Clipping rule for `y = x_hat gamma + beta`: `grad gamma_i = sum_t x_hat_t g_t` and
//! `grad beta_i = sum_t g_t`, formed explicitly (they are small), with `x_hat` recomputed from
//! the input.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::rule::{per_example_rows, weight_and_bias_names, ClippingRule, NormContext, SumContext};
use crate::error::CoreError;
use crate::rounding;
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
            tape.push(Record::new(
                output.shallow_clone(),
                NormRecord {
                    input: input.shallow_clone(),
                    centred,
                    eps: self.eps,
                    weight: self.weight_name.clone(),
                    bias: self.bias_name.clone(),
                },
            ));
        }
        output
    }
}

/// `y = x_hat * gamma + beta` over the last dimension, with `x_hat` the layer-normalised (or
/// RMS-normalised) input.
#[derive(Debug)]
pub(crate) struct NormRecord {
    /// Layer input `x`, (B, ..., p).
    input: Tensor,
    /// LayerNorm (centred) or RMSNorm.
    centred: bool,
    /// The epsilon inside the square root.
    eps: f64,
    /// Full variable name of gamma (p).
    weight: String,
    /// Full variable name of beta (p), if any.
    bias: Option<String>,
}

impl NormRecord {
    /// The normalised input `x_hat` as (B, T, p) rows, computed in `kind` (as the layer does
    /// for reduced-precision inputs).
    fn normalised(&self, kind: Kind) -> Tensor {
        let x = &self.input;
        let p = x.size().last().copied().unwrap_or(1);
        let x = x.to_kind(kind);
        let x_hat = if self.centred {
            x.layer_norm([p], None::<&Tensor>, None::<&Tensor>, self.eps, false)
        } else {
            x.rms_norm([p], None::<&Tensor>, self.eps)
        };
        per_example_rows(&x_hat, kind)
    }
}

impl ClippingRule for NormRecord {
    fn parameters(&self) -> Vec<&str> {
        weight_and_bias_names(&self.weight, self.bias.as_deref())
    }

    fn add_norms(&self, g: &Tensor, norms: &mut NormContext) -> Result<(), CoreError> {
        let g = per_example_rows(g, norms.kind);
        if norms.is_trainable(&self.weight) {
            let products = self.normalised(norms.kind) * &g;
            let s = rounding::position_sum(&products, None);
            norms.add_position_sum(&products, s);
        }
        if self.bias.as_deref().is_some_and(|b| norms.is_trainable(b)) {
            norms.add_position_sum(&g, rounding::position_sum(&g, None));
        }
        Ok(())
    }

    fn add_sums(&self, g: &Tensor, sums: &mut SumContext) -> Result<(), CoreError> {
        let kind = sums.kind(&self.parameters(), g);
        let scaled = sums.scaled(&per_example_rows(g, kind));
        let over_examples_and_positions =
            |t: &Tensor| t.sum_dim_intlist([0, 1].as_slice(), false, kind);
        if sums.is_trainable(&self.weight) {
            let x_hat = sums.masked(self.normalised(kind));
            sums.add(
                &self.weight,
                over_examples_and_positions(&(x_hat * &scaled)),
            );
        }
        if let Some(b) = self.bias.as_deref().filter(|b| sums.is_trainable(b)) {
            sums.add(b, over_examples_and_positions(&scaled));
        }
        Ok(())
    }
}
