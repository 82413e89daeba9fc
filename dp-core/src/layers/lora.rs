//! LoRA adapters (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"), as
//! used for private fine-tuning by Yu et al. 2022 ("Differentially Private Fine-tuning of
//! Language Models").
//!
//! A frozen linear map `W` (p x d) is adapted as `z = a W^T + s (a A^T) B^T` with `A` (r x d),
//! `B` (p x r), rank `r << min(p, d)` and scale `s = alpha / r`. `A` starts Kaiming-uniform and
//! `B` at zero, so the adapted model starts equal to the pretrained one. Both factors are
//! [`DpLinear`] layers without bias, so the clipping engine sees two ordinary linear records
//! (`A` with input `a`, `B` with input `a A^T`) and clips them exactly like any other layer:
//! nothing about LoRA is special to privacy, only the parameter count is smaller.

use tch::nn;
use tch::Tensor;

use super::DpLinear;
use crate::tape::Tape;

/// The trainable low-rank update `s (a A^T) B^T` of one linear layer.
#[derive(Debug)]
pub struct LoraAdapter {
    down: DpLinear,
    up: DpLinear,
    scale: f64,
}

impl LoraAdapter {
    /// Creates `lora_down.weight` (A, rank x in) and `lora_up.weight` (B, out x rank, zeros)
    /// under `path`, with scale `alpha / rank`.
    pub fn new(path: &nn::Path, in_dim: i64, out_dim: i64, rank: i64, alpha: f64) -> Self {
        let down = DpLinear::new(&(path / "lora_down"), in_dim, rank, false);
        let up = DpLinear::new(&(path / "lora_up"), rank, out_dim, false);
        tch::no_grad(|| {
            let _ = up.weight.shallow_clone().zero_();
        });
        Self {
            down,
            up,
            scale: alpha / rank as f64,
        }
    }

    /// The update `s (a A^T) B^T` for input `a` of shape (B, d) or (B, T, d), recording both
    /// factors on the tape.
    pub fn forward(&self, input: &Tensor, tape: &mut Tape) -> Tensor {
        self.up.forward(&self.down.forward(input, tape), tape) * self.scale
    }
}
