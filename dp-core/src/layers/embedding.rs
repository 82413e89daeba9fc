//! An embedding table `z = E[ids]` that records the ids for per-example clipping.

use tch::nn::{self, Init};
use tch::Tensor;

use crate::tape::{Record, Tape};

/// Embedding of `num_embeddings` ids into `dim` features, initialised N(0, 1) like
/// `tch::nn::embedding`. Ids must be (B, T) per example: position ids are expanded to the
/// batch, never broadcast (the engine refuses a batch dimension of 1 for a larger batch).
#[derive(Debug)]
pub struct DpEmbedding {
    /// The table, (num_embeddings, dim).
    pub table: Tensor,
    padding_idx: Option<i64>,
    table_name: String,
}

impl DpEmbedding {
    /// Creates the table `weight` under `path`; rows of `padding_idx` get no gradient.
    pub fn new(path: &nn::Path, num_embeddings: i64, dim: i64, padding_idx: Option<i64>) -> Self {
        let table = path.var(
            "weight",
            &[num_embeddings, dim],
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        Self {
            table,
            padding_idx,
            table_name: path.path("weight"),
        }
    }

    /// Looks up `ids` (B, T), recording them if the tape is on.
    pub fn forward(&self, ids: &Tensor, tape: &mut Tape) -> Tensor {
        let output = Tensor::embedding(
            &self.table,
            ids,
            self.padding_idx.unwrap_or(-1),
            false,
            false,
        );
        if tape.wants(&output) {
            tape.push(Record::Embedding {
                ids: ids.shallow_clone(),
                output: output.shallow_clone(),
                table: self.table_name.clone(),
                padding_idx: self.padding_idx,
            });
        }
        output
    }
}
