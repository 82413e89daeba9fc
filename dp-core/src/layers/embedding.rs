//! An embedding table `z = E[ids]` that records the ids for per-example clipping.
//!
//! Clipping rule: `||G_i||^2 = sum_{t,t'} [id_t = id_t' != pad] (g_t . g_t')` (a ghost norm
//! whose inputs are unit vectors), and the clipped sum is the embedding backward of `c . g`
//! (the padding row gets nothing).

use tch::nn::{self, Init};
use tch::Tensor;

use super::rule::{per_example_rows, ClippingRule, NormContext, SumContext};
use crate::error::CoreError;
use crate::rounding;
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
            tape.push(Record::new(
                output.shallow_clone(),
                EmbeddingRecord {
                    ids: ids.shallow_clone(),
                    table: self.table_name.clone(),
                    padding_idx: self.padding_idx,
                },
            ));
        }
        output
    }
}

/// `z = E[ids]`, ids of shape (B, T) (one row of ids per example, never broadcast).
#[derive(Debug)]
pub(crate) struct EmbeddingRecord {
    /// The ids, (B, T), int64.
    ids: Tensor,
    /// Full variable name of the table `E` (V x p).
    table: String,
    /// Rows of this id get no gradient.
    padding_idx: Option<i64>,
}

impl ClippingRule for EmbeddingRecord {
    fn parameters(&self) -> Vec<&str> {
        vec![self.table.as_str()]
    }

    fn add_norms(&self, g: &Tensor, norms: &mut NormContext) -> Result<(), CoreError> {
        if !norms.is_trainable(&self.table) {
            return Ok(());
        }
        let kind = norms.kind;
        let g = per_example_rows(g, kind);
        let ids = self.ids.reshape([g.size()[0], -1]);
        let mut same = ids.unsqueeze(2).eq_tensor(&ids.unsqueeze(1));
        if let Some(pad) = self.padding_idx {
            let real = ids.ne(pad);
            same = same
                .logical_and(&real.unsqueeze(2))
                .logical_and(&real.unsqueeze(1));
        }
        let gram = g.bmm(&g.transpose(1, 2));
        let (t, p) = (g.size()[1], g.size()[2]);
        let s = rounding::diagonal_position_sum(&rounding::sqrt_diagonal(&gram), p, kind);
        let n2 = (gram * same.to_kind(kind))
            .sum_dim_intlist(2, false, kind)
            .sum_dim_intlist(1, false, kind);
        norms.terms.ghost(norms.record, n2, s, (1, p, t));
        Ok(())
    }

    fn add_sums(&self, g: &Tensor, sums: &mut SumContext) -> Result<(), CoreError> {
        let Some(rows) = sums.trainable(&self.table).map(|t| t.size()[0]) else {
            return Ok(());
        };
        let kind = sums.kind(&self.parameters(), g);
        let scaled = sums.scaled(&per_example_rows(g, kind));
        let ids = self.ids.reshape([scaled.size()[0], -1]);
        let sum = Tensor::f_embedding_dense_backward(
            &scaled,
            &ids,
            rows,
            self.padding_idx.unwrap_or(-1),
            false,
        )?;
        sums.add(&self.table, sum);
        Ok(())
    }
}
