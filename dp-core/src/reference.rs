//! The slow, obviously correct way to clip: each example's own backward pass (batch size 1),
//! its gradient clipped to C, the clipped gradients summed. Use it to check a model built from
//! DP layers against the engine (the toolkit's own tests do).

use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

/// Per-example gradient norms and `sum_i min(1, C / ||G_i||) G_i` over the trainable variables
/// of `vs`, from `loss_of(i)`, the scalar loss of example `i` alone, for i in 0..examples.
pub fn batch_size_one_reference(
    vs: &nn::VarStore,
    examples: i64,
    loss_of: impl Fn(i64) -> Tensor,
    clip_norm: f64,
) -> (Vec<f64>, BTreeMap<String, Tensor>) {
    let params: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let tensors: Vec<&Tensor> = params.values().collect();
    let mut sums: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.zeros_like().detach()))
        .collect();
    let mut norms = Vec::new();
    for i in 0..examples {
        let grads = Tensor::run_backward(&[loss_of(i)], &tensors, false, false);
        let norm = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        let factor = (clip_norm / norm).min(1.0);
        for ((_, sum), g) in sums.iter_mut().zip(&grads) {
            if g.defined() {
                *sum += g * factor;
            }
        }
        norms.push(norm);
    }
    (norms, sums)
}
