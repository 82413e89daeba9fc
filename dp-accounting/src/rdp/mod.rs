//! Rényi differential privacy (RDP) accounting and its conversion to (epsilon, delta).
//!
//! RDP of order `alpha` composes additively over steps (Mironov 2017). The conversion to
//! (epsilon, delta) is the one of Balle et al. 2020 (Thm 21) / Canonne, Kamath, Steinke 2020
//! (Prop. 12), as used by dp_accounting and Opacus:
//!
//! `epsilon = min_alpha rdp(alpha) + log((alpha - 1)/alpha) - (log delta + log alpha)/(alpha - 1)`,
//!
//! taken only over `alpha > 1.01`, with epsilon = 0 at an order where
//! `delta^2 > 1 - exp(-rdp(alpha))` (a KL/Pinsker-type bound, as in dp_accounting). The
//! reverse, delta for a given epsilon, takes the smaller of the same bound solved for delta and
//! `sqrt(1 - exp(-rdp))`.

mod repeat_and_select;
mod sample_without_replacement;
mod subsampled_gaussian;

pub use repeat_and_select::{repeat_and_select_rdp, tnb_gamma, RunCount};
pub use sample_without_replacement::sample_without_replacement_gaussian_rdp;
pub use subsampled_gaussian::{
    subsampled_gaussian_rdp, subsampled_gaussian_rdp_with, FractionalSeries,
};

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::{matrix_factorization_equivalent, DpEvent, NeighbouringRelation};

/// dp_accounting's default order grid: 1.1 to 10.9 in steps of 0.1, 11 to 63, then 128 to 1024.
/// The large orders matter for small epsilon (the optimum reaches 128-1024 when epsilon < 0.1).
pub const DEFAULT_ORDERS: [f64; 156] = default_orders();

const fn default_orders() -> [f64; 156] {
    let mut orders = [0.0; 156];
    let mut i = 0;
    while i < 99 {
        orders[i] = (11 + i) as f64 / 10.0;
        i += 1;
    }
    while i < 152 {
        orders[i] = (i - 99 + 11) as f64;
        i += 1;
    }
    orders[152] = 128.0;
    orders[153] = 256.0;
    orders[154] = 512.0;
    orders[155] = 1024.0;
    orders
}

/// Validates a sampled Gaussian's parameters and answers the cases every sampling scheme
/// shares: nothing sampled (`q = 0`: RDP 0) and everything sampled (`q = 1`: the plain
/// Gaussian, `alpha / (2 sigma^2)`). `None` means the scheme's own formula is needed.
fn sampled_gaussian_edge_cases(
    q: f64,
    sigma: f64,
    alpha: f64,
) -> Result<Option<f64>, AccountingError> {
    check_range("sampling_rate", q, (0.0..=1.0).contains(&q), "0 <= q <= 1")?;
    check_range("noise_multiplier", sigma, sigma > 0.0, "sigma > 0")?;
    check_range("order", alpha, alpha > 1.0, "alpha > 1")?;
    Ok(if q == 0.0 {
        Some(0.0)
    } else if q == 1.0 {
        Some(alpha / (2.0 * sigma * sigma))
    } else {
        None
    })
}

/// An epsilon (or delta) together with the RDP order that achieved it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpsilonAtOrder {
    /// The smallest epsilon over the order grid (not rounded).
    pub epsilon: f64,
    /// The order at which it was reached.
    pub order: f64,
}

/// Converts an RDP curve (`rdp[i]` at `orders[i]`) to the smallest epsilon for `delta`.
pub fn epsilon_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
) -> Result<EpsilonAtOrder, AccountingError> {
    check_range("delta", delta, delta > 0.0 && delta < 1.0, "0 < delta < 1")?;
    let mut best = EpsilonAtOrder {
        epsilon: f64::INFINITY,
        order: orders[0],
    };
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let epsilon = if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if alpha > 1.01 {
            r + (-1.0 / alpha).ln_1p() - (delta * alpha).ln() / (alpha - 1.0)
        } else {
            f64::INFINITY
        };
        if epsilon < best.epsilon {
            best = EpsilonAtOrder {
                epsilon,
                order: alpha,
            };
        }
    }
    best.epsilon = best.epsilon.max(0.0);
    Ok(best)
}

/// Converts an RDP curve to the smallest delta for `epsilon`; returns `(delta, order)`.
pub fn delta_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    epsilon: f64,
) -> Result<(f64, f64), AccountingError> {
    check_range("epsilon", epsilon, epsilon >= 0.0, "epsilon >= 0")?;
    let mut best = (f64::INFINITY, orders[0]);
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let mut log_delta = if r == 0.0 {
            f64::NEG_INFINITY
        } else {
            0.5 * (-(-r).exp()).ln_1p()
        };
        if alpha > 1.01 {
            let bound = (alpha - 1.0) * (r - epsilon + (-1.0 / alpha).ln_1p()) - alpha.ln();
            log_delta = log_delta.min(bound);
        }
        if log_delta < best.0 {
            best = (log_delta, alpha);
        }
    }
    Ok((best.0.exp().min(1.0), best.1))
}

/// Accumulates the RDP curve of composed events on a fixed order grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    relation: NeighbouringRelation,
    series: FractionalSeries,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new(
            DEFAULT_ORDERS.to_vec(),
            NeighbouringRelation::AddOrRemoveOne,
        )
    }
}

impl RdpAccountant {
    /// An accountant on the given orders (each must be > 1) for the given neighbouring relation.
    pub fn new(orders: Vec<f64>, relation: NeighbouringRelation) -> Self {
        let rdp = vec![0.0; orders.len()];
        Self {
            orders,
            rdp,
            relation,
            series: FractionalSeries::Signed,
        }
    }

    /// The same accountant evaluating fractional orders with `series` (the default is the
    /// exact signed series; `Conservative` reproduces dp_accounting's numbers).
    pub fn with_series(mut self, series: FractionalSeries) -> Self {
        self.series = series;
        self
    }

    /// The orders of the grid.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed RDP at each order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// The neighbouring relation.
    pub fn relation(&self) -> NeighbouringRelation {
        self.relation
    }

    /// The smallest epsilon over the grid for `delta`, with its order.
    pub fn epsilon_and_order(&self, delta: f64) -> Result<EpsilonAtOrder, AccountingError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }

    /// The RDP curve of one occurrence of `event`.
    pub fn event_rdp(&self, event: &DpEvent) -> Result<Vec<f64>, AccountingError> {
        let unsupported = |reason: String| AccountingError::Unsupported {
            accountant: "RDP",
            event: event.name(),
            reason,
        };
        let per_order = |f: &dyn Fn(f64) -> Result<f64, AccountingError>| {
            self.orders
                .iter()
                .map(|&a| f(a))
                .collect::<Result<Vec<f64>, AccountingError>>()
        };
        match event {
            DpEvent::NoOp => Ok(vec![0.0; self.orders.len()]),
            DpEvent::NonPrivate => Ok(vec![f64::INFINITY; self.orders.len()]),
            DpEvent::Gaussian { noise_multiplier } => {
                per_order(&|a| subsampled_gaussian_rdp(1.0, *noise_multiplier, a))
            }
            DpEvent::PoissonSampled {
                sampling_probability,
                event: inner,
            } => {
                if self.relation != NeighbouringRelation::AddOrRemoveOne {
                    return Err(unsupported(format!(
                        "Poisson sampling is analysed under add/remove-one neighbours, not {}",
                        self.relation
                    )));
                }
                let sigma = gaussian_inside(inner).map_err(unsupported)?;
                per_order(&|a| {
                    subsampled_gaussian_rdp_with(self.series, *sampling_probability, sigma, a)
                })
            }
            DpEvent::SampledWithoutReplacement {
                source_dataset_size,
                sample_size,
                event: inner,
            } => {
                if self.relation != NeighbouringRelation::ReplaceOne {
                    return Err(unsupported(
                        "fixed-size sampling without replacement is analysed under replace-one \
                         neighbours only (choose that relation, or use Poisson sampling)"
                            .into(),
                    ));
                }
                if *sample_size > *source_dataset_size || *source_dataset_size == 0 {
                    return Err(unsupported(format!(
                        "sample size {sample_size} must be at most the dataset size {source_dataset_size}"
                    )));
                }
                let sigma = gaussian_inside(inner).map_err(unsupported)?;
                let q = *sample_size as f64 / *source_dataset_size as f64;
                per_order(&|a| sample_without_replacement_gaussian_rdp(q, sigma, a))
            }
            DpEvent::RepeatAndSelect {
                event: inner,
                mean,
                runs,
            } => {
                let single = self.event_rdp(inner)?;
                repeat_and_select_rdp(&self.orders, &single, *mean, *runs)
            }
            DpEvent::SelfComposed {
                event: inner,
                count,
            } => {
                let rdp = self.event_rdp(inner)?;
                Ok(rdp
                    .into_iter()
                    .map(|r| if *count == 0 { 0.0 } else { r * *count as f64 })
                    .collect())
            }
            DpEvent::MatrixFactorization {
                noise_multiplier,
                steps,
                amplification,
            } => self.event_rdp(&matrix_factorization_equivalent(
                *noise_multiplier,
                *steps,
                amplification.as_ref(),
            )?),
            DpEvent::Composed { events } => {
                let mut total = vec![0.0; self.orders.len()];
                for e in events {
                    for (t, r) in total.iter_mut().zip(self.event_rdp(e)?) {
                        *t += r;
                    }
                }
                Ok(total)
            }
        }
    }
}

/// The noise multiplier of the Gaussian(s) inside a sampled event, or why there is none.
fn gaussian_inside(event: &DpEvent) -> Result<f64, String> {
    event.effective_gaussian_noise().ok_or_else(|| {
        format!(
            "the sampled event must be Gaussian (or composed Gaussians), found {}",
            event.name()
        )
    })
}

impl Accountant for RdpAccountant {
    fn supports(&self, event: &DpEvent) -> Result<(), AccountingError> {
        self.event_rdp(event).map(|_| ())
    }

    fn compose(&mut self, event: &DpEvent) -> Result<(), AccountingError> {
        let rdp = self.event_rdp(event)?;
        for (total, r) in self.rdp.iter_mut().zip(rdp) {
            *total += r;
        }
        Ok(())
    }

    fn epsilon(&self, delta: f64) -> Result<f64, AccountingError> {
        Ok(self.epsilon_and_order(delta)?.epsilon)
    }

    fn delta(&self, epsilon: f64) -> Result<f64, AccountingError> {
        Ok(delta_from_rdp(&self.orders, &self.rdp, epsilon)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_match_dp_accounting() {
        assert_eq!(DEFAULT_ORDERS[0], 1.1);
        assert_eq!(DEFAULT_ORDERS[98], 10.9);
        assert_eq!(DEFAULT_ORDERS[99], 11.0);
        assert_eq!(DEFAULT_ORDERS[151], 63.0);
        assert!(DEFAULT_ORDERS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unsupported_combinations_are_errors() {
        let mut acc = RdpAccountant::default();
        let wor = DpEvent::SampledWithoutReplacement {
            source_dataset_size: 100,
            sample_size: 10,
            event: Box::new(DpEvent::Gaussian {
                noise_multiplier: 1.0,
            }),
        };
        assert!(matches!(
            acc.compose(&wor),
            Err(AccountingError::Unsupported { .. })
        ));
        let nested = DpEvent::PoissonSampled {
            sampling_probability: 0.1,
            event: Box::new(DpEvent::NonPrivate),
        };
        assert!(acc.compose(&nested).is_err());
        assert!(
            acc.rdp().iter().all(|&r| r == 0.0),
            "a failed compose changes nothing"
        );
        let mut replace =
            RdpAccountant::new(DEFAULT_ORDERS.to_vec(), NeighbouringRelation::ReplaceOne);
        assert!(replace.compose(&DpEvent::dp_sgd(0.1, 1.0, 1)).is_err());
        assert!(replace.compose(&wor).is_ok());
    }

    #[test]
    fn non_private_is_infinite_and_noop_is_free() {
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::NoOp).unwrap();
        assert_eq!(acc.epsilon(1e-5).unwrap(), 0.0);
        acc.compose(&DpEvent::NonPrivate).unwrap();
        assert_eq!(acc.epsilon(1e-5).unwrap(), f64::INFINITY);
    }
}
