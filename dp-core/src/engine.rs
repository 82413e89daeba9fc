//! The clipping engine: per-example norms from one backward pass, clip factors, and
//! book-keeping clipped sums.
//!
//! With L the *sum* of the per-example losses, the output gradient `g = dL/dz` of a layer call
//! holds each example's own gradient (no operation mixes examples), so one backward pass gives
//! every layer what its clipping rule needs: the per-example norms `||G_i||` without forming
//! `G_i` where a ghost norm exists (Li et al. 2022), and the clipped sum `sum_i c_i G_i` formed
//! directly (Bu et al. 2023, book-keeping). Each layer's rule is written next to the layer
//! ([`crate::layers`]: linear maps, convolutions, embeddings, LayerNorm/RMSNorm).
//!
//! Clipping styles ([`ClippingStyle`]), each bounding every example's contribution by `C` in
//! L2 norm, so the sensitivity and the noise `N(0, sigma^2 C^2)` are the same for all three:
//! - flat (Abadi et al. 2016): `c_i = min(1, C / ||G_i||)` from the total norm over all layers;
//! - per layer (group-wise; McMahan et al. 2018, He et al. 2023): layer `k` of the `K` layers
//!   with trained parameters is clipped on its own to `C_k = C / sqrt(K)`,
//!   `c_{i,k} = min(1, C_k / ||G_{i,k}||)`, so `||(c_{i,k} G_{i,k})_k|| <= sqrt(K C_k^2) = C`;
//! - automatic (AUTO-S, Bu et al. 2023, "Automatic clipping"): `c_i = C / (||G_i|| + gamma)`
//!   (gamma = 0.01 by default): every gradient is normalised, `||c_i G_i|| < C`, and no
//!   threshold needs tuning (C only rescales the learning rate).
//!
//! Examples whose norm is not finite get `c_i = 0` and are counted, never propagated.
//!
//! Memory: the recorded outputs are dropped as soon as the backward pass has given their
//! gradients (only their shapes are kept), and each layer's input and gradient once its clipped
//! sums are formed.
//!
//! Mixed precision: with bf16 layer inputs and outputs (f32 parameters), `a` and `g` are
//! widened to f32 before any product, so Gram matrices and per-example gradients are formed in
//! f32 and the clipped sums are f32, in the parameters' precision.
//!
//! Floating point: every norm the engine clips with is an upper bound on the exact norm of the
//! gradient it sums, whatever cancellation the positions produce (the allowances are in the
//! `rounding` module); layers' squared norms are added and clip factors computed in f64, so each
//! example's clipped contribution is at most `C (1 + 2^-24)` in exact arithmetic.

use std::collections::{BTreeMap, HashMap};

use tch::{nn, Kind, Tensor};

use crate::error::CoreError;
use crate::layers::{add_into, GramCache, NormContext, SumContext};
use crate::rounding;
use crate::tape::Record;

/// Clipped gradient sums of one physical batch, before noise.
#[derive(Debug)]
pub struct ClippedBatch {
    /// `sum_i c_i G_i` per trainable parameter (by full variable name, in name order).
    pub sums: BTreeMap<String, Tensor>,
    /// Per-example total gradient norms before clipping, shape (B), f64: the upper bounds the
    /// clip factors were computed from (above the exact norms by at most the rounding
    /// allowance of the `rounding` module).
    pub norms: Tensor,
    /// Number of examples whose gradient was NaN or infinite (they contribute zero).
    pub nonfinite: i64,
}

impl ClippedBatch {
    /// Adds these sums into `total`, the running sums of a logical batch.
    pub fn add_to(self, total: &mut BTreeMap<String, Tensor>) {
        for (name, value) in self.sums {
            add_into(total, &name, value);
        }
    }
}

/// How each example's gradient is bounded by the clip norm C (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClippingStyle {
    /// `min(1, C / ||G_i||)` on the total norm over all layers.
    #[default]
    Flat,
    /// Each of the K layers with trained parameters clipped to `C / sqrt(K)` on its own.
    PerLayer,
    /// `C / (||G_i|| + stability)`: normalised gradients (AUTO-S).
    Automatic {
        /// The stability constant gamma > 0 (0.01 in Bu et al.).
        stability: f64,
    },
}

/// Computes per-example clipped gradient sums for the trainable variables of a `VarStore`.
#[derive(Debug)]
pub struct ClippingEngine {
    trainable: HashMap<String, Tensor>,
    clip_norm: f64,
    style: ClippingStyle,
    /// A planted bug for privacy audits: this parameter's layer is summed without clipping.
    unclipped: Option<String>,
}

impl ClippingEngine {
    /// An engine for every trainable variable of `vs`, clipping each example's total gradient
    /// to `clip_norm`.
    pub fn new(vs: &nn::VarStore, clip_norm: f64) -> Result<Self, CoreError> {
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(CoreError::ClipNorm(clip_norm));
        }
        let trainable = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        Ok(Self {
            trainable,
            clip_norm,
            style: ClippingStyle::Flat,
            unclipped: None,
        })
    }

    /// The same engine clipping in `style`.
    pub fn with_style(self, style: ClippingStyle) -> Result<Self, CoreError> {
        if let ClippingStyle::Automatic { stability } = style {
            if !(stability.is_finite() && stability > 0.0) {
                return Err(CoreError::Stability(stability));
            }
        }
        Ok(Self { style, ..self })
    }

    /// A deliberately broken engine, for privacy audits only: the layer holding `parameter`
    /// is summed without its clip factor (its per-example contributions are unbounded), while
    /// everything else, the norms and the reported events included, is unchanged. An audit that
    /// runs DP-SGD with it must refute the claimed epsilon; nothing else should call it.
    pub fn with_unclipped_layer_for_audit(self, parameter: &str) -> Self {
        Self {
            unclipped: Some(parameter.to_string()),
            ..self
        }
    }

    /// The clipping style.
    pub fn style(&self) -> ClippingStyle {
        self.style
    }

    /// The clip norm C.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// Zero sums for every trainable parameter (the start of a logical batch, and the whole
    /// contribution of an empty one).
    pub fn zero_sums(&self) -> BTreeMap<String, Tensor> {
        self.trainable
            .iter()
            .map(|(name, t)| (name.clone(), t.zeros_like().detach()))
            .collect()
    }

    /// Runs the one backward pass for `losses` (shape `[B]`, one loss per example) over the
    /// `records` of the forward pass, and returns the clipped gradient sums.
    pub fn clip(
        &self,
        mut records: Vec<Record>,
        losses: &Tensor,
    ) -> Result<ClippedBatch, CoreError> {
        let size = losses.size();
        let &[batch] = size.as_slice() else {
            return Err(CoreError::LossShape(size));
        };
        self.check_coverage(&records, batch)?;
        let outputs: Vec<&Tensor> = records.iter().map(Record::output).collect();
        let grads = Tensor::f_run_backward(&[losses.sum(losses.kind())], &outputs, false, false)?;
        let shapes: Vec<_> = records.iter_mut().map(Record::release_output).collect();
        let acc_kind = accumulation_kind(losses.kind());

        // Every record's squared per-example norms with their rounding allowances, added up in
        // f64 over all records at once (upper bounds, see `rounding`).
        let mut terms = rounding::NormTerms::new(acc_kind);
        let mut grams = GramCache::new();
        let mut trained = Vec::with_capacity(records.len());
        for (r, (record, g)) in records.iter().zip(&grads).enumerate() {
            let is_trained = record.parameters().iter().any(|p| self.is_trainable(p));
            if g.defined() && is_trained {
                let mut norms =
                    NormContext::new(r, acc_kind, &self.trainable, &mut grams, &mut terms);
                record.rule().add_norms(g, &mut norms)?;
            }
            trained.push(is_trained);
        }
        let per_layer = matches!(self.style, ClippingStyle::PerLayer);
        let (norm2, layer_norm2) =
            terms.bounds(batch, losses.device(), per_layer.then_some(records.len()));
        let norms = norm2.sqrt();
        let finite = norms.isfinite();
        let nonfinite = batch - finite.sum(Kind::Int64).int64_value(&[]);
        let keep_finite = |f: Tensor| f.where_self(&finite, &f.zeros_like());
        let flat_factors = match self.style {
            ClippingStyle::Automatic { stability } => {
                keep_finite((norms.shallow_clone() + stability).reciprocal() * self.clip_norm)
            }
            _ => keep_finite((norms.reciprocal() * self.clip_norm).clamp_max(1.0)),
        };
        let layers = trained.iter().filter(|t| **t).count().max(1);
        let layer_clip = self.clip_norm / (layers as f64).sqrt();

        let mut sums = BTreeMap::new();
        // Each record and gradient is dropped once its sums are formed.
        for (r, ((record, g), (size, kind, device))) in
            records.into_iter().zip(grads).zip(&shapes).enumerate()
        {
            let g = if g.defined() {
                g
            } else {
                Tensor::zeros(size.as_slice(), (*kind, *device))
            };
            let unclipped = self
                .unclipped
                .as_deref()
                .is_some_and(|p| record.parameters().contains(&p));
            let factors = match &layer_norm2 {
                _ if unclipped => keep_finite(flat_factors.ones_like()),
                Some(per_record) if trained[r] => {
                    keep_finite((per_record[r].sqrt().reciprocal() * layer_clip).clamp_max(1.0))
                }
                _ => flat_factors.shallow_clone(),
            };
            let mut context =
                SumContext::new(&self.trainable, &factors, &finite, nonfinite > 0, &mut sums);
            record.rule().add_sums(&g, &mut context)?;
        }
        for (name, t) in &self.trainable {
            sums.entry(name.clone())
                .or_insert_with(|| t.zeros_like().detach());
        }
        Ok(ClippedBatch {
            sums,
            norms,
            nonfinite,
        })
    }

    fn check_coverage(&self, records: &[Record], batch: i64) -> Result<(), CoreError> {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for record in records {
            for name in record.parameters() {
                *uses.entry(name).or_default() += 1;
            }
            let got = record.output().size().first().copied().unwrap_or(0);
            if got != batch {
                let name = record
                    .parameters()
                    .first()
                    .copied()
                    .unwrap_or("?")
                    .to_string();
                return Err(CoreError::BatchMismatch {
                    name,
                    got,
                    expected: batch,
                });
            }
        }
        let mut names: Vec<&String> = self.trainable.keys().collect();
        names.sort();
        for name in names {
            match uses.get(name.as_str()) {
                None => return Err(CoreError::UncoveredParameter(name.clone())),
                Some(n) if *n > 1 => return Err(CoreError::TiedParameter(name.clone())),
                _ => {}
            }
        }
        Ok(())
    }

    fn is_trainable(&self, name: &str) -> bool {
        self.trainable.contains_key(name)
    }
}

/// The kind norms, sums and other sensitive reductions are computed in: f64 stays f64,
/// narrower kinds (bf16, f16) are widened to f32.
pub fn accumulation_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}
