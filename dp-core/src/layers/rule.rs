//! What a DP layer gives the clipping engine: one [`ClippingRule`] per recorded call, written
//! next to its layer, so adding a layer is one file. Given the output gradient `g = dL/dz` of
//! its call (the [`crate::Record`] holds the output), a rule knows the parameters it used, how to
//! add the per-example squared norms of their gradients (with the allowances of the `rounding` module, so every norm the
//! engine clips with is an upper bound), and how to add `sum_i c_i G_i` to the clipped sums.
//! The engine does the rest: one backward pass, the clip factors of every style, masking of
//! non-finite examples.

use std::collections::{BTreeMap, HashMap};

use tch::{Kind, Tensor};

use crate::error::CoreError;
use crate::rounding::{self, NormTerms};

/// One recorded layer call's clipping rule.
pub(crate) trait ClippingRule: std::fmt::Debug + Send {
    /// Full names of the parameters this call used.
    fn parameters(&self) -> Vec<&str>;

    /// Adds to `norms` the per-example squared gradient norms of this call's trainable
    /// parameters, given the output gradient `g` (B, ...).
    fn add_norms(&self, g: &Tensor, norms: &mut NormContext) -> Result<(), CoreError>;

    /// Adds `sum_i c_i G_i` of this call's trainable parameters to `sums`, given the output
    /// gradient `g` (B, ...).
    fn add_sums(&self, g: &Tensor, sums: &mut SumContext) -> Result<(), CoreError>;
}

/// Gram matrices `a a^T` of layer inputs for one `clip` call, with the square roots of their
/// diagonals, keyed by the input's address, shape, strides and kind and the accumulation kind.
pub(crate) type GramCache = HashMap<(usize, Vec<i64>, Vec<i64>, Kind, Kind), (Tensor, Tensor)>;

/// What a rule adds its per-example squared norms to.
pub(crate) struct NormContext<'a> {
    /// The record's index in the forward pass (per-layer clipping keeps layers apart).
    pub(crate) record: usize,
    /// The accumulation kind of norms (f32 or f64).
    pub(crate) kind: Kind,
    /// Gram matrices shared between layers reading the same input.
    pub(crate) grams: &'a mut GramCache,
    /// The norms and their rounding allowances.
    pub(crate) terms: &'a mut NormTerms,
    trainable: &'a HashMap<String, Tensor>,
}

impl<'a> NormContext<'a> {
    pub(crate) fn new(
        record: usize,
        kind: Kind,
        trainable: &'a HashMap<String, Tensor>,
        grams: &'a mut GramCache,
        terms: &'a mut NormTerms,
    ) -> Self {
        Self {
            record,
            kind,
            grams,
            terms,
            trainable,
        }
    }

    /// Whether the parameter `name` is trained (frozen ones add no norm).
    pub(crate) fn is_trainable(&self, name: &str) -> bool {
        self.trainable.contains_key(name)
    }

    /// Adds the squared norm of `sum_t v_t` for (B, T, w) rows `v` (a bias, a normalisation
    /// weight's rounded products), formed in the context's kind, with `s` the sum of the rows'
    /// norms (counted as `T + 1` terms: one rounding of each product and its effect on `s`).
    pub(crate) fn add_position_sum(&mut self, v: &Tensor, s: rounding::PositionSum) {
        let (t, w) = (v.size()[1], v.size()[2]);
        let n2 = v
            .sum_dim_intlist(1, false, self.kind)
            .square()
            .sum_dim_intlist(1, false, self.kind);
        self.terms.vector(self.record, n2, s, w, t + 1);
    }
}

/// What a rule adds its clipped sums to: the clip factors `c_i` and which examples are finite.
pub(crate) struct SumContext<'a> {
    trainable: &'a HashMap<String, Tensor>,
    factors: &'a Tensor,
    finite: &'a Tensor,
    mask_nonfinite: bool,
    sums: &'a mut BTreeMap<String, Tensor>,
}

impl<'a> SumContext<'a> {
    pub(crate) fn new(
        trainable: &'a HashMap<String, Tensor>,
        factors: &'a Tensor,
        finite: &'a Tensor,
        mask_nonfinite: bool,
        sums: &'a mut BTreeMap<String, Tensor>,
    ) -> Self {
        Self {
            trainable,
            factors,
            finite,
            mask_nonfinite,
            sums,
        }
    }

    /// The trainable parameter `name`, if it is trained.
    pub(crate) fn trainable(&self, name: &str) -> Option<&Tensor> {
        self.trainable.get(name)
    }

    /// Whether the parameter `name` is trained (frozen ones get no sum).
    pub(crate) fn is_trainable(&self, name: &str) -> bool {
        self.trainable.contains_key(name)
    }

    /// The kind of a rule's sums: that of its first trained parameter (the optimizer's master
    /// copy), else `g`'s.
    pub(crate) fn kind(&self, parameters: &[&str], g: &Tensor) -> Kind {
        parameters
            .iter()
            .find_map(|p| self.trainable.get(*p))
            .map_or(g.kind(), Tensor::kind)
    }

    /// `t` (B, ...) with the rows of non-finite examples zeroed: `0 * NaN` is NaN, so every
    /// factor of a product is masked, not only the clip factor.
    pub(crate) fn masked(&self, t: Tensor) -> Tensor {
        if !self.mask_nonfinite {
            return t;
        }
        let mut shape = vec![1; t.dim()];
        shape[0] = -1;
        t.where_self(&self.finite.view(shape.as_slice()), &t.zeros_like())
    }

    /// `c_i g_i` for `g` (B, ...) in its kind, masked.
    pub(crate) fn scaled(&self, g: &Tensor) -> Tensor {
        let mut shape = vec![1; g.dim()];
        shape[0] = -1;
        self.masked(g * self.factors.to_kind(g.kind()).view(shape.as_slice()))
    }

    /// Adds `value` to the sum of the parameter `name`.
    pub(crate) fn add(&mut self, name: &str, value: Tensor) {
        add_into(self.sums, name, value);
    }
}

/// The names of a weight and its bias, if any: the parameters of a linear map, a convolution or
/// a normalisation.
pub(crate) fn weight_and_bias_names<'a>(weight: &'a str, bias: Option<&'a str>) -> Vec<&'a str> {
    std::iter::once(weight).chain(bias).collect()
}

/// Adds `value` to `sums[name]`, detached.
pub(crate) fn add_into(sums: &mut BTreeMap<String, Tensor>, name: &str, value: Tensor) {
    match sums.get_mut(name) {
        Some(sum) => *sum += value,
        None => {
            sums.insert(name.to_string(), value.detach());
        }
    }
}

/// (B, d) or (B, ..., d) as (B, T, d) in `kind`: the middle dimensions are positions of the same
/// example (T = 1 for 2-D inputs, where the ghost norm is Goodfellow's `||a_i|| ||g_i||`).
pub(crate) fn per_example_rows(x: &Tensor, kind: Kind) -> Tensor {
    let size = x.size();
    x.to_kind(kind).reshape([size[0], -1, size[size.len() - 1]])
}
