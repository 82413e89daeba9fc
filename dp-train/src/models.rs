//! Small models built from DP layers, for fast private runs.

use dp_core::layers::DpLinear;
use dp_core::Tape;
use tch::{nn, Tensor};

/// A multi-layer perceptron with tanh activations (bounded activations suit DP-SGD:
/// Papernot et al. 2021, "Tempered sigmoid activations for deep learning with DP").
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<DpLinear>,
}

impl Mlp {
    /// Layers of widths `dims[0] -> dims[1] -> ... -> dims[n]`, under `path`.
    pub fn new(path: &nn::Path, dims: &[i64]) -> Self {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| DpLinear::new(&(path / format!("linear{i}")), w[0], w[1], true))
            .collect();
        Self { layers }
    }

    /// Logits for a batch of flattened inputs.
    pub fn forward(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .fold(x.shallow_clone(), |h, (i, layer)| {
                let z = layer.forward(&h, tape);
                if i < last {
                    z.tanh()
                } else {
                    z
                }
            })
    }
}
