//! The slow, obviously correct way to clip: each example's own backward pass (batch size 1),
//! its gradient clipped to C, the clipped gradients summed. Use it to check a model built from
//! DP layers against the engine (the toolkit's own tests do).

use std::collections::{BTreeMap, BTreeSet};

use tch::{nn, Kind, Tensor};

use crate::engine::ClippingStyle;

/// Per-example gradient norms and `sum_i min(1, C / ||G_i||)` G_i` over the trainable variables
/// of `vs`, from `loss_of(i)`, the scalar loss of example `i` alone, for i in 0..examples.
pub fn batch_size_one_reference(
    vs: &nn::VarStore,
    examples: i64,
    loss_of: impl Fn(i64) -> Tensor,
    clip_norm: f64,
) -> (Vec<f64>, BTreeMap<String, Tensor>) {
    batch_size_one_reference_with_style(vs, examples, loss_of, clip_norm, ClippingStyle::Flat)
}

/// As [`batch_size_one_reference`], clipping in `style`. For [`ClippingStyle::PerLayer`] a
/// layer is the set of parameters sharing a name up to the last dot (`encoder.dense.weight` and
/// `encoder.dense.bias`), each clipped to `C / sqrt(K)` for the `K` layers with trained
/// parameters.
pub fn batch_size_one_reference_with_style(
    vs: &nn::VarStore,
    examples: i64,
    loss_of: impl Fn(i64) -> Tensor,
    clip_norm: f64,
    style: ClippingStyle,
) -> (Vec<f64>, BTreeMap<String, Tensor>) {
    let params: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let tensors: Vec<&Tensor> = params.values().collect();
    let layer_of = |name: &str| name.rsplit_once('.').map_or(name, |(l, _)| l).to_string();
    let layers: BTreeSet<String> = params.keys().map(|n| layer_of(n)).collect();
    let layer_clip = clip_norm / (layers.len().max(1) as f64).sqrt();
    let mut sums: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.zeros_like().detach()))
        .collect();
    let mut norms = Vec::new();
    for i in 0..examples {
        let grads = Tensor::run_backward(&[loss_of(i)], &tensors, false, false);
        let squared = |g: &Tensor| {
            if g.defined() {
                g.square().sum(Kind::Double).double_value(&[])
            } else {
                0.0
            }
        };
        let norm = grads.iter().map(squared).sum::<f64>().sqrt();
        let mut layer_norm2: BTreeMap<String, f64> = BTreeMap::new();
        for (name, g) in params.keys().zip(&grads) {
            *layer_norm2.entry(layer_of(name)).or_default() += squared(g);
        }
        for ((name, sum), g) in sums.iter_mut().zip(&grads) {
            if !g.defined() {
                continue;
            }
            let factor = match style {
                ClippingStyle::Flat => (clip_norm / norm).min(1.0),
                ClippingStyle::PerLayer => {
                    (layer_clip / layer_norm2[&layer_of(name)].sqrt()).min(1.0)
                }
                ClippingStyle::Automatic { stability } => clip_norm / (norm + stability),
            };
            *sum += g * factor;
        }
        norms.push(norm);
    }
    (norms, sums)
}
