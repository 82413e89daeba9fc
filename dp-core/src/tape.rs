//! The tape on which DP layers record what per-example clipping needs.
//!
//! Recording happens only when the tape is on and the layer's output takes part in autograd
//! (not under `no_grad`), so evaluation and non-private runs record nothing. Recorded tensors
//! are shallow clones: they alias what autograd keeps anyway, nothing is copied.

use tch::Tensor;

use crate::layers::Conv2dGeometry;

/// One DP layer call, with the names of the parameters it owns.
#[derive(Debug)]
pub enum Record {
    /// `z = a W^T + b` with `a` of shape (B, d) or (B, T, d).
    Linear {
        /// Layer input `a`.
        input: Tensor,
        /// Layer output `z`, a node of the autograd graph.
        output: Tensor,
        /// Full variable name of the weight `W` (p x d).
        weight: String,
        /// Full variable name of the bias `b` (p), if any.
        bias: Option<String>,
    },
    /// A 2-D convolution `z = W * a + b`, `a` of shape (B, d, H, W), one group.
    Conv2d {
        /// Layer input `a`.
        input: Tensor,
        /// Layer output `z`, (B, p, H_out, W_out).
        output: Tensor,
        /// Kernel, stride, padding and dilation.
        geometry: Conv2dGeometry,
        /// Full variable name of the weight `W` (p x d x k_h x k_w).
        weight: String,
        /// Full variable name of the bias `b` (p), if any.
        bias: Option<String>,
    },
    /// `z = E[ids]`, ids of shape (B, T) (one row of ids per example, never broadcast).
    Embedding {
        /// The ids, (B, T), int64.
        ids: Tensor,
        /// The looked-up rows, (B, T, p).
        output: Tensor,
        /// Full variable name of the table `E` (V x p).
        table: String,
        /// Rows of this id get no gradient.
        padding_idx: Option<i64>,
    },
    /// `y = x_hat * gamma + beta` over the last dimension, with `x_hat` the layer-normalised
    /// (or RMS-normalised) input.
    Norm {
        /// Layer input `x`, (B, ..., p).
        input: Tensor,
        /// Layer output `y`.
        output: Tensor,
        /// LayerNorm (centred) or RMSNorm.
        centred: bool,
        /// The epsilon inside the square root.
        eps: f64,
        /// Full variable name of gamma (p).
        weight: String,
        /// Full variable name of beta (p), if any.
        bias: Option<String>,
    },
}

impl Record {
    /// The recorded output, whose gradient the engine asks of autograd.
    pub fn output(&self) -> &Tensor {
        match self {
            Record::Linear { output, .. }
            | Record::Conv2d { output, .. }
            | Record::Embedding { output, .. }
            | Record::Norm { output, .. } => output,
        }
    }

    /// Drops the recorded output's values once its gradient is known (nothing reads them
    /// after the backward pass), keeping its shape, kind and device.
    pub(crate) fn release_output(&mut self) -> (Vec<i64>, tch::Kind, tch::Device) {
        let output = match self {
            Record::Linear { output, .. }
            | Record::Conv2d { output, .. }
            | Record::Embedding { output, .. }
            | Record::Norm { output, .. } => output,
        };
        let shape = (output.size(), output.kind(), output.device());
        *output = Tensor::new();
        shape
    }

    /// Names of the parameters this call used.
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        let (first, second) = match self {
            Record::Linear { weight, bias, .. }
            | Record::Conv2d { weight, bias, .. }
            | Record::Norm { weight, bias, .. } => (weight, bias.as_deref()),
            Record::Embedding { table, .. } => (table, None),
        };
        std::iter::once(first.as_str()).chain(second)
    }
}

/// Records of one forward pass. A tape that is off ignores every record.
#[derive(Debug, Default)]
pub struct Tape {
    on: bool,
    records: Vec<Record>,
}

impl Tape {
    /// A tape that records: use it for the forward pass of a private step.
    pub fn recording() -> Self {
        Self {
            on: true,
            records: Vec::new(),
        }
    }

    /// A tape that records nothing: evaluation and non-private training.
    pub fn off() -> Self {
        Self::default()
    }

    /// Whether a layer producing `output` should record now.
    pub fn wants(&self, output: &Tensor) -> bool {
        self.on && output.requires_grad()
    }

    /// Adds a record (layers call this after checking [`Tape::wants`]).
    pub fn push(&mut self, record: Record) {
        self.records.push(record);
    }

    /// The records so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Takes the records out, leaving the tape empty (and still on or off).
    pub fn take(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }
}
