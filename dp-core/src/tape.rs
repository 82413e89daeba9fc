//! The tape on which DP layers record what per-example clipping needs.
//!
//! Recording happens only when the tape is on and the layer's output takes part in autograd
//! (not under `no_grad`), so evaluation and non-private runs record nothing. Recorded tensors
//! are shallow clones: they alias what autograd keeps anyway, nothing is copied.

use tch::Tensor;

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
}

impl Record {
    /// The recorded output, whose gradient the engine asks of autograd.
    pub fn output(&self) -> &Tensor {
        match self {
            Record::Linear { output, .. } => output,
        }
    }

    /// Names of the parameters this call used.
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        match self {
            Record::Linear { weight, bias, .. } => {
                std::iter::once(weight.as_str()).chain(bias.as_deref())
            }
        }
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
