//! What the training loop trains on: a number of examples N and, for any of them, one loss per
//! example computed through the model's DP layers. The loop draws the indices (Poisson
//! sampling or cyclic batches, as the mechanism says) and asks for their losses in physical
//! batches; the clipping engine bounds each example's gradient of its own loss. So any loss that
//! gives one value per example (cross-entropy, squared error, a contrastive loss within the
//! example) and any data that can be fetched by index (in memory, from disk, generated) fit,
//! without changing the privacy argument: it depends only on the sampling, on each example's
//! loss depending on that example alone, and on the clipping.

use tch::{Kind, Reduction, Tensor};

use dp_core::Tape;

use crate::dpsgd::Batches;
use crate::error::TrainError;

/// Examples and their per-example losses under the model being trained.
pub trait PerExampleLoss {
    /// How many examples there are (N): every index asked for is below it.
    fn len(&self) -> i64;

    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The losses of the examples `indices` (a vector with one value per index, in order),
    /// their forward pass recording the model's DP layers on `tape`. Each value must depend on
    /// its own example only (no batch statistics), or the clipping bounds nothing.
    fn losses(&self, indices: &[i64], tape: &mut Tape) -> Result<Losses, TrainError>;
}

/// The losses of some examples, and how many of them the model classifies correctly where
/// that means something (for progress reports; not privatized).
#[derive(Debug)]
pub struct Losses {
    /// One loss per example.
    pub values: Tensor,
    /// Correct predictions among the examples, for classifiers.
    pub correct: Option<i64>,
}

/// Classification with the cross-entropy loss: inputs and integer labels in memory, `logits`
/// the model (what [`crate::train`] trains).
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy<'a, F> {
    /// The model: logits `(batch, classes)` of a batch of inputs, recording on the tape.
    pub logits: F,
    /// The examples.
    pub data: Batches<'a>,
}

impl<F: Fn(&Tensor, &mut Tape) -> Tensor> PerExampleLoss for CrossEntropy<'_, F> {
    fn len(&self) -> i64 {
        self.data.labels.size()[0]
    }

    fn losses(&self, indices: &[i64], tape: &mut Tape) -> Result<Losses, TrainError> {
        let index = Tensor::from_slice(indices).to_device(self.data.inputs.device());
        let x = self.data.inputs.index_select(0, &index);
        let y = self.data.labels.index_select(0, &index);
        let out = (self.logits)(&x, tape);
        let correct = tch::no_grad(|| {
            out.argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[])
        });
        Ok(Losses {
            values: out.cross_entropy_loss::<Tensor>(&y, None, Reduction::None, -100, 0.0),
            correct: Some(correct),
        })
    }
}
