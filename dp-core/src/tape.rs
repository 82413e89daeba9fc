//! The tape on which DP layers record what per-example clipping needs.
//!
//! Recording happens only when the tape is on and the layer's output takes part in autograd
//! (not under `no_grad`), so evaluation and non-private runs record nothing. Recorded tensors
//! are shallow clones: they alias what autograd keeps anyway, nothing is copied.

use tch::Tensor;

use crate::layers::ClippingRule;

/// One DP layer call: its output, the parameters it used, and its layer's clipping rule
/// (see [`crate::layers`]).
#[derive(Debug)]
pub struct Record {
    /// The layer's output `z`, a node of the autograd graph.
    output: Tensor,
    rule: Box<dyn ClippingRule>,
}

impl Record {
    /// A record of one call of a DP layer: its `output` and its clipping rule.
    pub(crate) fn new(output: Tensor, rule: impl ClippingRule + 'static) -> Self {
        Self {
            output,
            rule: Box::new(rule),
        }
    }

    /// The recorded output, whose gradient the engine asks of autograd.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// Names of the parameters this call used.
    pub fn parameters(&self) -> Vec<&str> {
        self.rule.parameters()
    }

    /// The layer's clipping rule.
    pub(crate) fn rule(&self) -> &dyn ClippingRule {
        self.rule.as_ref()
    }

    /// Drops the recorded output's values once its gradient is known (nothing reads them
    /// after the backward pass), keeping its shape, kind and device.
    pub(crate) fn release_output(&mut self) -> (Vec<i64>, tch::Kind, tch::Device) {
        let shape = (self.output.size(), self.output.kind(), self.output.device());
        self.output = Tensor::new();
        shape
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
