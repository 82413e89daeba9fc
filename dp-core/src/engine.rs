//! The clipping engine: per-example norms from one backward pass, clip factors, and
//! book-keeping clipped sums.
//!
//! For a linear layer `z = a W^T + b` with output gradient `g = dL/dz` (L the *sum* of the
//! per-example losses, so `g_i` is example i's own gradient since no operation mixes examples):
//! - per-example weight gradient `G_i = sum_t g_{i,t} a_{i,t}^T`;
//! - 2-D inputs: `||G_i|| = ||a_i|| ||g_i||` (Goodfellow 2015);
//! - sequences, ghost norm (Li et al. 2022, Eq. 3):
//!   `||G_i||^2 = sum_{t,t'} (a_{i,t} . a_{i,t'}) (g_{i,t} . g_{i,t'})`, used when `2 T^2 < p d`,
//!   else the explicit `G_i = g_i^T a_i` is formed (B x p x d);
//! - bias: `||sum_t g_{i,t}||^2`;
//! - embedding `z = E[ids]`: `||G_i||^2 = sum_{t,t'} [id_t = id_t' != pad] (g_t . g_t')`, and the
//!   clipped sum is the embedding backward of `c . g` (the padding row gets nothing);
//! - LayerNorm/RMSNorm `y = x_hat gamma + beta`: `grad gamma_i = sum_t x_hat_t g_t`,
//!   `grad beta_i = sum_t g_t`, explicit (they are small); `x_hat` is recomputed from the input.
//!
//! - 2-D convolution: the unfolded input `U(a_i)` (im2col, one row per output position) makes it
//!   a linear layer over its output positions (Bu, Mao and Xu 2022), with the same rules.
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
//! The clipped sum is formed directly (Bu et al. 2023, book-keeping):
//! `sum_i c_i G_i = (c . g)^T a` flattened over (B, T), one matmul per layer.
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
use crate::layers::Conv2dGeometry;
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
            let is_trained = record.parameters().any(|p| self.is_trainable(p));
            if g.defined() && is_trained {
                self.norm_terms(r, record, g, acc_kind, &mut grams, &mut terms)?;
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
                .is_some_and(|p| record.parameters().any(|q| q == p));
            let factors = match &layer_norm2 {
                _ if unclipped => keep_finite(flat_factors.ones_like()),
                Some(per_record) if trained[r] => {
                    keep_finite((per_record[r].sqrt().reciprocal() * layer_clip).clamp_max(1.0))
                }
                _ => flat_factors.shallow_clone(),
            };
            self.accumulate(&record, &g, &factors, &finite, nonfinite > 0, &mut sums)?;
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
                let name = record.parameters().next().unwrap_or("?").to_string();
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

    /// Adds to `terms` the per-example squared gradient norms of record `r`'s trainable
    /// parameters, with what their rounding allowances need.
    fn norm_terms(
        &self,
        r: usize,
        record: &Record,
        g: &Tensor,
        kind: Kind,
        grams: &mut GramCache,
        terms: &mut rounding::NormTerms,
    ) -> Result<(), CoreError> {
        let g = match record {
            Record::Conv2d { .. } => g.to_kind(kind),
            _ => per_example_rows(g, kind),
        };
        // A linear map over positions: weight (ghost or explicit), then bias `sum_t g_t`.
        let mut linear = |input: Option<&Tensor>,
                          a: &Tensor,
                          g: &Tensor,
                          weight: &str,
                          bias: Option<&str>,
                          terms: &mut rounding::NormTerms| {
            let sqrt_diag_g = self
                .is_trainable(weight)
                .then(|| linear_weight_terms(r, input, a, g, kind, grams, terms))
                .flatten();
            if bias.is_some_and(|b| self.is_trainable(b)) {
                let s = match &sqrt_diag_g {
                    Some(sqrt) => rounding::diagonal_position_sum(sqrt, g.size()[2], kind),
                    None => rounding::position_sum(g, None),
                };
                add_position_sum(r, g, s, kind, terms);
            }
        };
        match record {
            Record::Linear {
                input,
                weight,
                bias,
                ..
            } => linear(
                Some(input),
                &per_example_rows(input, kind),
                &g,
                weight,
                bias.as_deref(),
                terms,
            ),
            Record::Conv2d {
                input,
                geometry,
                weight,
                bias,
                ..
            } => {
                let (a, g) = conv_rows(input, geometry, &g, kind)?;
                // No shared Gram: two convolutions of one input may unfold it differently.
                linear(None, &a, &g, weight, bias.as_deref(), terms);
            }
            Record::Embedding {
                ids,
                table,
                padding_idx,
                ..
            } => {
                if self.is_trainable(table) {
                    // ||G_i||^2 = sum_{t,t'} [id_t = id_t' != pad] (g_t . g_t'): a ghost norm
                    // whose inputs are unit vectors (d = 1).
                    let ids = ids.reshape([g.size()[0], -1]);
                    let mut same = ids.unsqueeze(2).eq_tensor(&ids.unsqueeze(1));
                    if let Some(pad) = padding_idx {
                        let real = ids.ne(*pad);
                        same = same
                            .logical_and(&real.unsqueeze(2))
                            .logical_and(&real.unsqueeze(1));
                    }
                    let gram = g.bmm(&g.transpose(1, 2));
                    let (t, p) = (g.size()[1], g.size()[2]);
                    let s =
                        rounding::diagonal_position_sum(&rounding::sqrt_diagonal(&gram), p, kind);
                    let n2 = (gram * same.to_kind(kind))
                        .sum_dim_intlist(2, false, kind)
                        .sum_dim_intlist(1, false, kind);
                    terms.ghost(r, n2, s, (1, p, t));
                }
            }
            Record::Norm {
                input,
                centred,
                eps,
                weight,
                bias,
                ..
            } => {
                if self.is_trainable(weight) {
                    let products = normalised(input, *centred, *eps, kind) * &g;
                    let s = rounding::position_sum(&products, None);
                    add_position_sum(r, &products, s, kind, terms);
                }
                if bias.as_deref().is_some_and(|b| self.is_trainable(b)) {
                    add_position_sum(r, &g, rounding::position_sum(&g, None), kind, terms);
                }
            }
        }
        Ok(())
    }

    /// Adds `sum_i c_i G_i` of one record's trainable parameters to `sums`.
    fn accumulate(
        &self,
        record: &Record,
        g: &Tensor,
        factors: &Tensor,
        finite: &Tensor,
        mask_nonfinite: bool,
        sums: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), CoreError> {
        let first = record.parameters().next().unwrap_or_default();
        let kind = self.trainable.get(first).map_or(g.kind(), Tensor::kind);
        let batch = factors.size()[0];
        let keep = finite.view([batch, 1, 1]);
        // 0 * NaN is NaN: rows of bad examples are zeroed in every factor of a product.
        let masked = |t: Tensor| {
            if mask_nonfinite {
                t.where_self(&keep, &t.zeros_like())
            } else {
                t
            }
        };
        let factors = factors.to_kind(kind);
        let scaled = match record {
            Record::Conv2d { .. } => masked(g.to_kind(kind) * factors.view([batch, 1, 1, 1])),
            _ => masked(per_example_rows(g, kind) * factors.view([batch, 1, 1])),
        };
        let over_examples_and_positions =
            |t: &Tensor| t.sum_dim_intlist([0, 1].as_slice(), false, kind);
        match record {
            Record::Linear {
                input,
                weight,
                bias,
                ..
            } => {
                let a = per_example_rows(input, kind);
                self.linear_sums(&masked(a), &scaled, weight, bias.as_deref(), sums);
            }
            Record::Conv2d {
                input,
                geometry,
                weight,
                bias,
                ..
            } => {
                let (a, scaled) = conv_rows(input, geometry, &scaled, kind)?;
                self.linear_sums(&masked(a), &scaled, weight, bias.as_deref(), sums);
            }
            Record::Embedding {
                ids,
                table,
                padding_idx,
                ..
            } => {
                if let Some(t) = self.trainable.get(table.as_str()) {
                    let ids = ids.reshape([batch, -1]);
                    let rows = t.size()[0];
                    let sum = Tensor::f_embedding_dense_backward(
                        &scaled,
                        &ids,
                        rows,
                        padding_idx.unwrap_or(-1),
                        false,
                    )?;
                    add_into(sums, table, sum);
                }
            }
            Record::Norm {
                input,
                centred,
                eps,
                weight,
                bias,
                ..
            } => {
                if self.is_trainable(weight) {
                    let x_hat = masked(normalised(input, *centred, *eps, kind));
                    add_into(
                        sums,
                        weight,
                        over_examples_and_positions(&(x_hat * &scaled)),
                    );
                }
                if let Some(b) = bias.as_deref().filter(|b| self.is_trainable(b)) {
                    add_into(sums, b, over_examples_and_positions(&scaled));
                }
            }
        }
        Ok(())
    }

    /// Adds `sum_i c_i G_i` of a linear map (rows `a` (B, T, d), scaled output gradients
    /// (B, T, p)) to the weight's and bias's sums, in the parameters' shapes.
    fn linear_sums(
        &self,
        a: &Tensor,
        scaled: &Tensor,
        weight: &str,
        bias: Option<&str>,
        sums: &mut BTreeMap<String, Tensor>,
    ) {
        let (p, d) = (scaled.size()[2], a.size()[2]);
        if let Some(w) = self.trainable.get(weight) {
            let sum = scaled
                .reshape([-1, p])
                .transpose(0, 1)
                .mm(&a.reshape([-1, d]));
            add_into(sums, weight, sum.reshape(w.size()));
        }
        if let Some(b) = bias.filter(|b| self.is_trainable(b)) {
            let kind = scaled.kind();
            add_into(
                sums,
                b,
                scaled.sum_dim_intlist([0, 1].as_slice(), false, kind),
            );
        }
    }
}

/// Gram matrices `a a^T` of layer inputs for one `clip` call, with the square roots of their
/// diagonals, keyed by the input's address, shape, strides and kind and the accumulation kind.
type GramCache = HashMap<(usize, Vec<i64>, Vec<i64>, Kind, Kind), (Tensor, Tensor)>;

/// A convolution as a linear map over its output positions: the unfolded input (im2col,
/// (B, T_out, d k_h k_w)) and the output gradient (B, p, H_out, W_out) as (B, T_out, p).
fn conv_rows(
    input: &Tensor,
    geometry: &Conv2dGeometry,
    g: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor), CoreError> {
    let g = g.to_kind(kind);
    let (b, p) = (g.size()[0], g.size()[1]);
    let a = input.to_kind(kind).f_im2col(
        geometry.kernel,
        geometry.dilation,
        geometry.padding,
        geometry.stride,
    )?;
    Ok((a.transpose(1, 2), g.reshape([b, p, -1]).transpose(1, 2)))
}

/// Adds record `r`'s linear weight norm to `terms`: ghost norm (Li et al. 2022)
/// `sum_{t,t'} (a_t . a_t')(g_t . g_t')` when `2 T^2 < p d`, else the explicit per-example
/// gradient `g_i^T a_i`. Returns the square roots of `g g^T`'s diagonal (the per-position
/// norms of `g`) when the ghost norm formed it.
///
/// `a` is the rows of the linear layer's `input`; layers reading the same input (the query, key
/// and value projections; a LoRA adapter's down projection) share `a a^T` through `grams`.
fn linear_weight_terms(
    r: usize,
    input: Option<&Tensor>,
    a: &Tensor,
    g: &Tensor,
    kind: Kind,
    grams: &mut GramCache,
    terms: &mut rounding::NormTerms,
) -> Option<Tensor> {
    let (t, d, p) = (a.size()[1], a.size()[2], g.size()[2]);
    if 2 * t * t < p * d {
        let gram = || {
            let gram = a.bmm(&a.transpose(1, 2));
            let sqrt_diag = rounding::sqrt_diagonal(&gram);
            (gram, sqrt_diag)
        };
        // Every recorded input is alive during one `clip` call, so its address, shape, strides
        // and kind identify its values.
        let (gram_a, sqrt_diag_a) = match input {
            Some(input) => {
                let key = (
                    input.data_ptr() as usize,
                    input.size(),
                    input.stride(),
                    input.kind(),
                    kind,
                );
                let (gram, sqrt_diag) = grams.entry(key).or_insert_with(gram);
                (gram.shallow_clone(), sqrt_diag.shallow_clone())
            }
            None => gram(),
        };
        let gram_g = g.bmm(&g.transpose(1, 2));
        let sqrt_diag_g = rounding::sqrt_diagonal(&gram_g);
        let s = rounding::gram_position_sum(&sqrt_diag_a, &sqrt_diag_g, d, p, kind);
        let n2 = (gram_a * gram_g)
            .sum_dim_intlist(2, false, kind)
            .sum_dim_intlist(1, false, kind);
        terms.ghost(r, n2, s, (d, p, t));
        Some(sqrt_diag_g)
    } else {
        let n2 = g
            .transpose(1, 2)
            .bmm(a)
            .square()
            .sum_dim_intlist([1, 2].as_slice(), false, kind);
        terms.vector(r, n2, rounding::position_sum(a, Some(g)), p * d, t);
        None
    }
}

/// Adds to `terms` the squared norm of `sum_t v_t` for (B, T, w) rows `v` (a bias, a
/// normalisation weight's rounded products), formed in `kind`, with `s` the sum of the rows'
/// norms (counted as `T + 1` terms: one rounding of each product and its effect on `s`).
fn add_position_sum(
    r: usize,
    v: &Tensor,
    s: rounding::PositionSum,
    kind: Kind,
    terms: &mut rounding::NormTerms,
) {
    let (t, w) = (v.size()[1], v.size()[2]);
    let n2 = v
        .sum_dim_intlist(1, false, kind)
        .square()
        .sum_dim_intlist(1, false, kind);
    terms.vector(r, n2, s, w, t + 1);
}

/// The normalised input `x_hat` of a LayerNorm (`centred`) or RMSNorm, as (B, T, p) rows,
/// computed in `kind` (as the layer does for reduced-precision inputs).
fn normalised(x: &Tensor, centred: bool, eps: f64, kind: Kind) -> Tensor {
    let p = x.size().last().copied().unwrap_or(1);
    let x = x.to_kind(kind);
    let x_hat = if centred {
        x.layer_norm([p], None::<&Tensor>, None::<&Tensor>, eps, false)
    } else {
        x.rms_norm([p], None::<&Tensor>, eps)
    };
    per_example_rows(&x_hat, kind)
}

fn add_into(sums: &mut BTreeMap<String, Tensor>, name: &str, value: Tensor) {
    match sums.get_mut(name) {
        Some(sum) => *sum += value,
        None => {
            sums.insert(name.to_string(), value.detach());
        }
    }
}

/// (B, d) or (B, ..., d) as (B, T, d) in `kind`: the middle dimensions are positions of the same
/// example (T = 1 for 2-D inputs, where the ghost norm is Goodfellow's `||a_i|| ||g_i||`).
fn per_example_rows(x: &Tensor, kind: Kind) -> Tensor {
    let size = x.size();
    x.to_kind(kind).reshape([size[0], -1, size[size.len() - 1]])
}

/// The kind norms, sums and other sensitive reductions are computed in: f64 stays f64,
/// narrower kinds (bf16, f16) are widened to f32.
pub fn accumulation_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}
