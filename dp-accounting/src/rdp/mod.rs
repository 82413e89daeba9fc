//! Rényi differential privacy (RDP) accounting and its conversion to (epsilon, delta).
//!
//! RDP of order `alpha` composes additively over steps (Mironov 2017). The conversion to
//! (epsilon, delta) is the one of Balle et al. 2020 (Thm 21) / Canonne, Kamath, Steinke 2020
//! (Prop. 12), as used by dp_accounting and Opacus:
//!
//! `epsilon = min_alpha rdp(alpha) + log((alpha - 1)/alpha) - (log delta + log alpha)/(alpha - 1)`,
//!
//! taken only over `alpha > 1.01`, with epsilon = 0 at an order where
//! `delta^2 > 1 - exp(-rdp(alpha))` (a KL/Pinsker-type bound, as in dp_accounting).

mod subsampled_gaussian;

pub use subsampled_gaussian::subsampled_gaussian_rdp;

use crate::error::{check_range, AccountingError};

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

/// An epsilon together with the RDP order that achieved it.
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

/// Accumulates the RDP curve of a sequence of mechanisms on a fixed order grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::with_orders(DEFAULT_ORDERS.to_vec())
    }
}

impl RdpAccountant {
    /// An accountant on the given orders (each must be > 1); nothing composed yet.
    pub fn with_orders(orders: Vec<f64>) -> Self {
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// Composes `steps` steps of the Poisson-subsampled Gaussian mechanism with sampling rate
    /// `q` and noise multiplier `sigma` (noise standard deviation over the clip norm).
    pub fn compose_poisson_gaussian(
        &mut self,
        q: f64,
        sigma: f64,
        steps: u64,
    ) -> Result<(), AccountingError> {
        for (alpha, total) in self.orders.iter().zip(self.rdp.iter_mut()) {
            *total += steps as f64 * subsampled_gaussian_rdp(q, sigma, *alpha)?;
        }
        Ok(())
    }

    /// The orders of the grid.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The composed RDP at each order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// The smallest epsilon over the order grid at which the composition is (epsilon, delta)-DP.
    pub fn epsilon(&self, delta: f64) -> Result<EpsilonAtOrder, AccountingError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
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
}
