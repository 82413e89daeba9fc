//! Rounding allowances that make the clip bound hold in floating point.
//!
//! The clipping engine divides by per-example norms it computes in floating point. If a computed
//! norm came out smaller than the true one, the example would be scaled by more than `C / ||G||`
//! and contribute more than `C`: the sensitivity the accountant assumes would not hold. That
//! happens when the terms of a norm cancel (Casacuberta et al., "Widespread Underestimation of
//! Sensitivity in Differentially Private Libraries", CCS 2022): a ghost norm
//! `sum_{t,t'} (a_t . a_t')(g_t . g_t')` of positions whose contributions nearly cancel is a
//! small difference of large products, and in f32 the rounding of those products can exceed the
//! result, which was then clamped to zero (no clipping at all).
//!
//! So every per-example norm the engine clips with is an upper bound on the exact norm of the
//! gradient it sums (the exact function of the recorded `a` and `g`), by the standard bounds of
//! Higham ("Accuracy and Stability of Numerical Algorithms", 2002, sections 3.1 and 3.5): a
//! computed sum of `n` products in unit roundoff `u` is within `gamma_n sum_k |x_k y_k|` of the
//! exact one, `gamma_n = n u / (1 - n u)`, whatever the order of summation. With
//! `s_i = sum_t ||a_t|| ||g_t||` (at least the exact norm, by the triangle inequality) and
//! Cauchy-Schwarz:
//!
//! - a ghost norm, Gram matrices `a a^T` (length `d`) and `g g^T` (length `p`), their product,
//!   and its sum over `T` then over `T` positions, all in `u`: the exact squared norm is at
//!   most `computed + c s_i^2`, `c = gamma_d + gamma_p + gamma_d gamma_p +
//!   (u + gamma_{2T})(1 + u)(1 + gamma_d)(1 + gamma_p)`;
//! - the norm of a computed vector (an explicit per-example gradient `g_i^T a_i`, or a sum over
//!   positions of per-position vectors: biases, normalisation weights), whose entries are sums
//!   of `n` terms (each possibly one rounded product) and whose squared norm is summed over
//!   `w` entries: the exact norm is at most `sqrt(computed / (1 - gamma_{w+1})) +
//!   gamma_{n+1} s_i`.
//!
//! The `s_i` are themselves computed (from the Gram matrices' diagonals where there are any) and
//! rounded up by their own bounds. The terms of all layers are combined at the end, in f64, with
//! the largest coefficient of each kind: a few operations for the whole model rather than
//! several per layer (on an accelerator every operation is a kernel launch).
//!
//! The allowances are relative to `s_i^2`, so they cost nothing measurable unless positions
//! cancel: for BERT-base's widest layer in f32 at `T = 128` (`d = 768`, `p = 3072`),
//! `c = 2.5e-4`; with `s_i^2` a few times the squared norm (typical) the norm grows by parts in
//! ten thousand, while a cancelling example is clipped as hard as its rounding requires. Not
//! covered here: the rounding of the summed clipped gradients across examples
//! (`docs/clipping.md` says what it is).

use tch::{Device, Kind, Tensor};

/// Unit roundoff of f64.
const U64: f64 = 1.0 / (1u64 << 53) as f64;

/// The unit roundoff `u` of arithmetic in `kind` (the engine's accumulation kind: f32 or f64).
pub(crate) fn unit_roundoff(kind: Kind) -> f64 {
    match kind {
        Kind::Double => U64,
        _ => 1.0 / (1u64 << 24) as f64,
    }
}

/// `gamma_n = n u / (1 - n u)`: the relative bound of a sum of `n` products.
fn gamma(n: i64, u: f64) -> f64 {
    let nu = n.max(1) as f64 * u;
    assert!(
        nu < 0.5,
        "a sum of {n} terms is too long for this precision"
    );
    nu / (1.0 - nu)
}

/// Per example, `s_i = sum_t x_t y_t` (or `sum_t x_t`) for per-position factors (B, T) not yet
/// multiplied or summed (so that all layers' are, together, at the end), and the factor that
/// bounds the result from above (`s_exact <= s_i * up`).
pub(crate) struct PositionSum {
    x: Tensor,
    y: Option<Tensor>,
    up: f64,
}

/// [`PositionSum`] of `sum_t ||x_t|| ||y_t||` for (B, T, n) rows `x` and `y` (`y` absent:
/// `sum_t ||x_t||`), the norms computed in the rows' kind (no wider copy is made).
pub(crate) fn position_sum(x: &Tensor, y: Option<&Tensor>) -> PositionSum {
    let u = unit_roundoff(x.kind());
    let t = x.size()[1];
    let norms = |v: &Tensor| v.norm_scalaropt_dim(2.0, [-1].as_slice(), false);
    let norm_up = |v: &Tensor| 1.0 + gamma(v.size().last().copied().unwrap_or(1) + 2, u);
    let sum_up = (1.0 + u) * (1.0 + gamma(t, u));
    PositionSum {
        x: norms(x),
        y: y.map(norms),
        up: norm_up(x) * y.map_or(1.0, norm_up) * sum_up,
    }
}

/// [`PositionSum`] of `sum_t sqrt(A_tt G_tt)` from the square roots (B, T) of the diagonals of
/// Gram matrices of lengths `d` and `p` computed in `kind` (each diagonal entry a squared row
/// norm: positive terms, relative error at most `gamma_d`).
pub(crate) fn gram_position_sum(
    sqrt_diag_a: &Tensor,
    sqrt_diag_g: &Tensor,
    d: i64,
    p: i64,
    kind: Kind,
) -> PositionSum {
    let u = unit_roundoff(kind);
    let t = sqrt_diag_g.size()[1];
    PositionSum {
        x: sqrt_diag_a.shallow_clone(),
        y: Some(sqrt_diag_g.shallow_clone()),
        up: (1.0 + u).powi(3) * (1.0 + gamma(t, u))
            / ((1.0 - gamma(d, u)) * (1.0 - gamma(p, u))).sqrt(),
    }
}

/// [`PositionSum`] of `sum_t ||g_t||` from the square roots (B, T) of the diagonal of a Gram
/// matrix of length `p` computed in `kind`.
pub(crate) fn diagonal_position_sum(sqrt_diag: &Tensor, p: i64, kind: Kind) -> PositionSum {
    let u = unit_roundoff(kind);
    let t = sqrt_diag.size()[1];
    PositionSum {
        x: sqrt_diag.shallow_clone(),
        y: None,
        up: (1.0 + u).powi(2) * (1.0 + gamma(t, u)) / (1.0 - gamma(p, u)).sqrt(),
    }
}

/// The square roots of a batch of Gram matrices' diagonals, (B, T) (sums of squares: never
/// negative).
pub(crate) fn sqrt_diagonal(gram: &Tensor) -> Tensor {
    gram.diagonal(0, 1, 2).sqrt()
}

/// One record's computed squared norm (B) and its [`PositionSum`] factors.
struct Term {
    record: usize,
    n2: Tensor,
    x: Tensor,
    y: Option<Tensor>,
}

/// The per-example squared norms of one `clip` call with their rounding allowances, collected
/// layer by layer and combined at the end.
pub(crate) struct NormTerms {
    kind: Kind,
    /// Ghost norms, and the largest coefficient `c` (with the `s` factors' squares folded in).
    ghost: Vec<Term>,
    c: f64,
    /// Norms of computed vectors, with the largest `1 / sqrt(1 - gamma_{w+1})` and
    /// `gamma_{n+1}` (times the `s` factor).
    vectors: Vec<Term>,
    k_norm: f64,
    k_s: f64,
}

impl NormTerms {
    /// No terms yet, for sums computed in `kind`.
    pub(crate) fn new(kind: Kind) -> Self {
        Self {
            kind,
            ghost: Vec::new(),
            c: 0.0,
            vectors: Vec::new(),
            k_norm: 1.0,
            k_s: 0.0,
        }
    }

    /// A ghost norm of `record`: the computed squared norm (B) from Gram matrices of lengths `d`
    /// and `p` over `t` positions, their product summed over one position then the other.
    pub(crate) fn ghost(
        &mut self,
        record: usize,
        n2: Tensor,
        s: PositionSum,
        (d, p, t): (i64, i64, i64),
    ) {
        let u = unit_roundoff(self.kind);
        let (gd, gp) = (gamma(d, u), gamma(p, u));
        let c = gd + gp + gd * gp + (u + gamma(2 * t, u)) * (1.0 + u) * (1.0 + gd) * (1.0 + gp);
        self.c = self.c.max(c * s.up * s.up);
        self.ghost.push(Term {
            record,
            n2,
            x: s.x,
            y: s.y,
        });
    }

    /// The norm of a computed vector of `record`: its computed squared norm (B), summed over
    /// `width` entries, each a sum of `terms` terms (one more is counted for rounded products).
    pub(crate) fn vector(
        &mut self,
        record: usize,
        n2: Tensor,
        s: PositionSum,
        width: i64,
        terms: i64,
    ) {
        let u = unit_roundoff(self.kind);
        self.k_norm = self.k_norm.max(1.0 / (1.0 - gamma(width + 1, u)).sqrt());
        self.k_s = self.k_s.max(gamma(terms + 1, u) * s.up);
        self.vectors.push(Term {
            record,
            n2,
            x: s.x,
            y: s.y,
        });
    }

    /// Upper bounds (f64, (terms, B)) on the exact squared norms of groups of terms, with the
    /// records they belong to: the terms are grouped by kind and by the shape of their position
    /// factors, and each group is computed in a few operations.
    fn group_bounds(&self) -> Vec<(Vec<usize>, Tensor)> {
        let mut out = Vec::new();
        for (ghost, terms) in [(true, &self.ghost), (false, &self.vectors)] {
            let mut groups: Vec<(Vec<i64>, bool, Vec<&Term>)> = Vec::new();
            for term in terms.iter() {
                let key = (term.x.size(), term.y.is_some());
                match groups.iter_mut().find(|g| (&g.0, g.1) == (&key.0, key.1)) {
                    Some(group) => group.2.push(term),
                    None => groups.push((key.0, key.1, vec![term])),
                }
            }
            for (_, _, group) in groups {
                let stack = |pick: fn(&Term) -> &Tensor| {
                    let parts: Vec<&Tensor> = group.iter().map(|t| pick(t)).collect();
                    Tensor::stack(&parts, 0)
                };
                let mut factors = stack(|t| &t.x);
                // Grouped by whether they have `y`: all of them, or none.
                let ys: Option<Vec<&Tensor>> = group.iter().map(|t| t.y.as_ref()).collect();
                if let Some(ys) = ys {
                    factors *= Tensor::stack(&ys, 0);
                }
                let s = factors
                    .sum_dim_intlist(2, false, self.kind)
                    .to_kind(Kind::Double);
                let n2 = stack(|t| &t.n2).to_kind(Kind::Double).clamp_min(0.0);
                let bounds = if ghost {
                    n2 + s.square() * self.c
                } else {
                    (n2.sqrt() * self.k_norm + s * self.k_s).square()
                };
                out.push((group.iter().map(|t| t.record).collect(), bounds));
            }
        }
        out
    }

    /// Upper bounds (f64) on the exact squared norms: per example over all terms (B), and, when
    /// `records` is given, per record `0..records` (each (B), zero for a record without terms).
    /// The groups' bounds are computed once for both.
    pub(crate) fn bounds(
        &self,
        batch: i64,
        device: Device,
        records: Option<usize>,
    ) -> (Tensor, Option<Vec<Tensor>>) {
        let zeros = || Tensor::zeros([batch], (Kind::Double, device));
        let mut total = zeros();
        let mut per_record: Option<Vec<Tensor>> =
            records.map(|r| (0..r).map(|_| zeros()).collect());
        for (owners, bounds) in self.group_bounds() {
            total += bounds.sum_dim_intlist(0, false, Kind::Double);
            if let Some(per_record) = per_record.as_mut() {
                for (k, record) in owners.into_iter().enumerate() {
                    per_record[record] += bounds.get(k as i64);
                }
            }
        }
        let slack = |t: Tensor| t * (1.0 + SUM_SLACK);
        (
            slack(total),
            per_record.map(|p| p.into_iter().map(slack).collect()),
        )
    }
}

/// Relative slack for the f64 additions of at most a few thousand terms (error below `1e-12`).
const SUM_SLACK: f64 = 1e-12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_sums_bound_their_exact_values_from_above() {
        let u = unit_roundoff(Kind::Float);
        assert_eq!(u, 2f64.powi(-24));
        assert!((gamma(768, u) - 768.0 * u / (1.0 - 768.0 * u)).abs() < 1e-18);
        // Rows (3, 4) and (0, 1) against (1, 0) and (0, 2): s = 5 * 1 + 1 * 2 = 7; as vector
        // terms with no computed norm, the bound is (k_s s)^2.
        let x = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 1.0]).reshape([1, 2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).reshape([1, 2, 2]);
        let s_of = |s: PositionSum| {
            let mut terms = NormTerms::new(Kind::Float);
            terms.vector(0, Tensor::zeros([1], (Kind::Float, Device::Cpu)), s, 1, 0);
            terms
                .bounds(1, Device::Cpu, None)
                .0
                .double_value(&[0])
                .sqrt()
                / gamma(1, u)
        };
        let within = |v: f64, exact: f64| (exact..exact * (1.0 + 1e-6)).contains(&v);
        let s = s_of(position_sum(&x, Some(&y)));
        assert!(within(s, 7.0), "{s}");
        let alone = s_of(position_sum(&x, None));
        assert!(within(alone, 6.0), "{alone}");
        let (ga, gy) = (x.bmm(&x.transpose(1, 2)), y.bmm(&y.transpose(1, 2)));
        let grams = gram_position_sum(&sqrt_diagonal(&ga), &sqrt_diagonal(&gy), 2, 2, Kind::Float);
        let from_grams = s_of(grams);
        assert!(within(from_grams, 7.0), "{from_grams}");
        let diagonal = s_of(diagonal_position_sum(&sqrt_diagonal(&ga), 2, Kind::Float));
        assert!(within(diagonal, 6.0), "{diagonal}");
    }

    #[test]
    fn a_non_positive_ghost_norm_is_not_trusted() {
        let mut terms = NormTerms::new(Kind::Float);
        let s = PositionSum {
            x: Tensor::from_slice(&[1.0f32]).view([1, 1]),
            y: None,
            up: 1.0,
        };
        terms.ghost(0, Tensor::from_slice(&[-1e-3f32]), s, (768, 3072, 128));
        let (total, per) = terms.bounds(1, Device::Cpu, Some(2));
        let total = total.double_value(&[0]);
        assert!(total > 2e-4, "{total}");
        let per = per.unwrap();
        assert_eq!(per[0].double_value(&[0]), total);
        assert_eq!(per[1].double_value(&[0]), 0.0);
    }
}
