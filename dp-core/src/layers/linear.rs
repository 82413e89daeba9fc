//! A linear layer `z = a W^T + b` that records `(a, z)` for per-example clipping.
//!
//! Mixed precision: the layer computes in its input's precision. With a bf16 input, `W` and
//! `b` (kept in f32 as the optimizer's master copy) are cast to bf16 for the product, so the
//! matmul runs in bf16; the engine widens `a` and `g` to f32 for norms and sums.
//!
//! Clipping rule, with output gradient `g = dL/dz` (L the *sum* of the per-example losses, so
//! `g_i` is example i's own gradient since no operation mixes examples):
//! - per-example weight gradient `G_i = sum_t g_{i,t} a_{i,t}^T`;
//! - 2-D inputs: `||G_i|| = ||a_i|| ||g_i||` (Goodfellow 2015);
//! - sequences, ghost norm (Li et al. 2022, Eq. 3):
//!   `||G_i||^2 = sum_{t,t'} (a_{i,t} . a_{i,t'}) (g_{i,t} . g_{i,t'})`, used when `2 T^2 < p d`,
//!   else the explicit `G_i = g_i^T a_i` is formed (B x p x d);
//! - bias: `||sum_t g_{i,t}||^2`;
//! - clipped sums (Bu et al. 2023, book-keeping): `sum_i c_i G_i = (c . g)^T a` flattened over
//!   (B, T), one matmul.

use tch::{nn, Kind, Tensor};

use super::rule::{
    per_example_rows, weight_and_bias_names, ClippingRule, GramCache, NormContext, SumContext,
};
use super::weight_and_bias;
use crate::error::CoreError;
use crate::rounding;
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
            tape.push(Record::new(
                output.shallow_clone(),
                LinearRecord {
                    input: input.shallow_clone(),
                    weight: self.weight_name.clone(),
                    bias: self.bias_name.clone(),
                },
            ));
        }
        output
    }
}

/// `z = a W^T + b` with `a` of shape (B, d) or (B, T, d).
#[derive(Debug)]
pub(crate) struct LinearRecord {
    /// Layer input `a`.
    input: Tensor,
    /// Full variable name of the weight `W` (p x d).
    weight: String,
    /// Full variable name of the bias `b` (p), if any.
    bias: Option<String>,
}

impl LinearRecord {
    fn map(&self) -> LinearMap<'_> {
        LinearMap {
            weight: &self.weight,
            bias: self.bias.as_deref(),
        }
    }
}

impl ClippingRule for LinearRecord {
    fn parameters(&self) -> Vec<&str> {
        weight_and_bias_names(&self.weight, self.bias.as_deref())
    }

    fn add_norms(&self, g: &Tensor, norms: &mut NormContext) -> Result<(), CoreError> {
        let g = per_example_rows(g, norms.kind);
        let a = per_example_rows(&self.input, norms.kind);
        self.map().add_norms(Some(&self.input), &a, &g, norms);
        Ok(())
    }

    fn add_sums(&self, g: &Tensor, sums: &mut SumContext) -> Result<(), CoreError> {
        let kind = sums.kind(&self.parameters(), g);
        let scaled = sums.scaled(&per_example_rows(g, kind));
        let a = sums.masked(per_example_rows(&self.input, kind));
        self.map().add_sums(&a, &scaled, sums);
        Ok(())
    }
}

/// A linear map over positions, by its parameters' names: the rule of linear layers, and of
/// convolutions once unfolded.
pub(crate) struct LinearMap<'a> {
    /// The weight (p x d, or p x d k_h k_w for a convolution).
    pub(crate) weight: &'a str,
    /// The bias (p), if any.
    pub(crate) bias: Option<&'a str>,
}

impl LinearMap<'_> {
    /// Adds the squared norms of the trainable weight and bias for rows `a` (B, T, d) and
    /// output gradients `g` (B, T, p): the weight's (ghost or explicit), then the bias's
    /// `||sum_t g_t||^2`. `input` is the layer input `a` was formed from, when layers reading
    /// the same input may share its Gram matrix.
    pub(crate) fn add_norms(
        &self,
        input: Option<&Tensor>,
        a: &Tensor,
        g: &Tensor,
        norms: &mut NormContext,
    ) {
        let sqrt_diag_g = norms
            .is_trainable(self.weight)
            .then(|| weight_norms(input, a, g, norms))
            .flatten();
        if self.bias.is_some_and(|b| norms.is_trainable(b)) {
            let s = match &sqrt_diag_g {
                Some(sqrt) => rounding::diagonal_position_sum(sqrt, g.size()[2], norms.kind),
                None => rounding::position_sum(g, None),
            };
            norms.add_position_sum(g, s);
        }
    }

    /// Adds `sum_i c_i G_i` of the trainable weight and bias, for rows `a` (B, T, d) and
    /// scaled output gradients (B, T, p), in the parameters' shapes.
    pub(crate) fn add_sums(&self, a: &Tensor, scaled: &Tensor, sums: &mut SumContext) {
        let (p, d) = (scaled.size()[2], a.size()[2]);
        if let Some(shape) = sums.trainable(self.weight).map(Tensor::size) {
            let sum = scaled
                .reshape([-1, p])
                .transpose(0, 1)
                .mm(&a.reshape([-1, d]));
            sums.add(self.weight, sum.reshape(shape));
        }
        if let Some(b) = self.bias.filter(|b| sums.is_trainable(b)) {
            let kind = scaled.kind();
            sums.add(b, scaled.sum_dim_intlist([0, 1].as_slice(), false, kind));
        }
    }
}

/// Adds the weight's squared norms: ghost norm (Li et al. 2022)
/// `sum_{t,t'} (a_t . a_t')(g_t . g_t')` when `2 T^2 < p d`, else the explicit per-example
/// gradient `g_i^T a_i`. Returns the square roots of `g g^T`'s diagonal (the per-position
/// norms of `g`) when the ghost norm formed it.
///
/// Layers reading the same `input` (the query, key and value projections; a LoRA adapter's down
/// projection) share `a a^T` through the context's Gram cache.
fn weight_norms(
    input: Option<&Tensor>,
    a: &Tensor,
    g: &Tensor,
    norms: &mut NormContext,
) -> Option<Tensor> {
    let kind = norms.kind;
    let (t, d, p) = (a.size()[1], a.size()[2], g.size()[2]);
    if 2 * t * t < p * d {
        let gram = || {
            let gram = a.bmm(&a.transpose(1, 2));
            let sqrt_diag = rounding::sqrt_diagonal(&gram);
            (gram, sqrt_diag)
        };
        let (gram_a, sqrt_diag_a) = match input {
            Some(input) => shared_gram(norms.grams, input, kind, gram),
            None => gram(),
        };
        let gram_g = g.bmm(&g.transpose(1, 2));
        let sqrt_diag_g = rounding::sqrt_diagonal(&gram_g);
        let s = rounding::gram_position_sum(&sqrt_diag_a, &sqrt_diag_g, d, p, kind);
        let n2 = (gram_a * gram_g)
            .sum_dim_intlist(2, false, kind)
            .sum_dim_intlist(1, false, kind);
        norms.terms.ghost(norms.record, n2, s, (d, p, t));
        Some(sqrt_diag_g)
    } else {
        let n2 = g
            .transpose(1, 2)
            .bmm(a)
            .square()
            .sum_dim_intlist([1, 2].as_slice(), false, kind);
        norms.terms.vector(
            norms.record,
            n2,
            rounding::position_sum(a, Some(g)),
            p * d,
            t,
        );
        None
    }
}

/// The Gram matrix of `input`'s rows and the square roots of its diagonal, formed once per
/// `clip` call: every recorded input is alive during the call, so its address, shape, strides
/// and kind identify its values.
fn shared_gram(
    grams: &mut GramCache,
    input: &Tensor,
    kind: Kind,
    gram: impl FnOnce() -> (Tensor, Tensor),
) -> (Tensor, Tensor) {
    let key = (
        input.data_ptr() as usize,
        input.size(),
        input.stride(),
        input.kind(),
        kind,
    );
    let (gram, sqrt_diag) = grams.entry(key).or_insert_with(gram);
    (gram.shallow_clone(), sqrt_diag.shallow_clone())
}
