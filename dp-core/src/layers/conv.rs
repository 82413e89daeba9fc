//! A 2-D convolution `z = W * a + b` that records `(a, z)` for per-example clipping.
//!
//! Per-example gradients follow from unfolding (im2col): with `U(a_i)` of shape
//! `(T_out, d k_h k_w)` (one row per output position) and `g_i` of shape `(T_out, p)`, the
//! convolution is the linear map `U(a_i) W^T`, so `G_i = g_i^T U(a_i)` and the linear layer's
//! ghost/explicit norms and book-keeping sums apply with the `T_out` output positions as the
//! sequence (Bu, Mao and Xu 2022, "Scalable and efficient training of large convolutional
//! neural networks with differential privacy").

use tch::{nn, Kind, Tensor};

use super::linear::LinearMap;
use super::rule::{weight_and_bias_names, ClippingRule, NormContext, SumContext};
use super::weight_and_bias;
use crate::error::CoreError;
use crate::tape::{Record, Tape};

/// Convolution geometry: kernel, stride, padding and dilation, each (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Kernel size.
    pub kernel: [i64; 2],
    /// Stride.
    pub stride: [i64; 2],
    /// Zero padding on each side.
    pub padding: [i64; 2],
    /// Dilation.
    pub dilation: [i64; 2],
}

impl Conv2dGeometry {
    /// A square `k x k` kernel with stride 1, no padding and no dilation.
    pub fn square(k: i64) -> Self {
        Self {
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

/// 2-D convolution on inputs (B, d, H, W), one group, initialised like `tch::nn::conv2d`.
#[derive(Debug)]
pub struct DpConv2d {
    /// Weight, shape (out, in, k_h, k_w).
    pub weight: Tensor,
    /// Bias, shape (out), if any.
    pub bias: Option<Tensor>,
    geometry: Conv2dGeometry,
    weight_name: String,
    bias_name: Option<String>,
}

impl DpConv2d {
    /// Creates the layer's variables `weight` (and `bias`) under `path`.
    pub fn new(
        path: &nn::Path,
        in_channels: i64,
        out_channels: i64,
        geometry: Conv2dGeometry,
        bias: bool,
    ) -> Self {
        let [kh, kw] = geometry.kernel;
        let (weight, bias, weight_name, bias_name) = weight_and_bias(
            path,
            &[out_channels, in_channels, kh, kw],
            in_channels * kh * kw,
            bias,
        );
        Self {
            weight,
            bias,
            geometry,
            weight_name,
            bias_name,
        }
    }

    /// Applies the convolution (in the input's precision), recording `(input, output)` if the
    /// tape is on.
    pub fn forward(&self, input: &Tensor, tape: &mut Tape) -> Tensor {
        let kind = input.kind();
        let g = self.geometry;
        let output = input.conv2d(
            &self.weight.to_kind(kind),
            self.bias.as_ref().map(|b| b.to_kind(kind)).as_ref(),
            g.stride,
            g.padding,
            g.dilation,
            1,
        );
        if tape.wants(&output) {
            tape.push(Record::new(
                output.shallow_clone(),
                Conv2dRecord {
                    input: input.shallow_clone(),
                    geometry: g,
                    weight: self.weight_name.clone(),
                    bias: self.bias_name.clone(),
                },
            ));
        }
        output
    }
}

/// A 2-D convolution `z = W * a + b`, `a` of shape (B, d, H, W), one group.
#[derive(Debug)]
pub(crate) struct Conv2dRecord {
    /// Layer input `a`.
    input: Tensor,
    /// Kernel, stride, padding and dilation.
    geometry: Conv2dGeometry,
    /// Full variable name of the weight `W` (p x d x k_h x k_w).
    weight: String,
    /// Full variable name of the bias `b` (p), if any.
    bias: Option<String>,
}

impl Conv2dRecord {
    fn map(&self) -> LinearMap<'_> {
        LinearMap {
            weight: &self.weight,
            bias: self.bias.as_deref(),
        }
    }

    /// The convolution as a linear map over its output positions: the unfolded input (im2col,
    /// (B, T_out, d k_h k_w)) and the output gradient `g` (B, p, H_out, W_out) as (B, T_out, p),
    /// both in `kind`.
    fn rows(&self, g: &Tensor, kind: Kind) -> Result<(Tensor, Tensor), CoreError> {
        let geometry = &self.geometry;
        let g = g.to_kind(kind);
        let (b, p) = (g.size()[0], g.size()[1]);
        let a = self.input.to_kind(kind).f_im2col(
            geometry.kernel,
            geometry.dilation,
            geometry.padding,
            geometry.stride,
        )?;
        Ok((a.transpose(1, 2), g.reshape([b, p, -1]).transpose(1, 2)))
    }
}

impl ClippingRule for Conv2dRecord {
    fn parameters(&self) -> Vec<&str> {
        weight_and_bias_names(&self.weight, self.bias.as_deref())
    }

    fn add_norms(&self, g: &Tensor, norms: &mut NormContext) -> Result<(), CoreError> {
        let (a, g) = self.rows(g, norms.kind)?;
        // No shared Gram: two convolutions of one input may unfold it differently.
        self.map().add_norms(None, &a, &g, norms);
        Ok(())
    }

    fn add_sums(&self, g: &Tensor, sums: &mut SumContext) -> Result<(), CoreError> {
        let kind = sums.kind(&self.parameters(), g);
        let scaled = sums.scaled(&g.to_kind(kind));
        let (a, scaled) = self.rows(&scaled, kind)?;
        self.map().add_sums(&sums.masked(a), &scaled, sums);
        Ok(())
    }
}
