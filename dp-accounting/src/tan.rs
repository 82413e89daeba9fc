//! TAN, the total amount of noise (Sander, Stock, Sablayrolles 2023, "TAN Without a Burn:
//! Scaling Laws of DP-SGD", ICML, arXiv 2210.03403).
//!
//! At a fixed number of steps S and dataset size N, DP-SGD runs with the same effective noise
//! `sigma / B` (noise on the averaged gradient, in units of C) train alike, and for
//! `sigma >~ 2` they have nearly the same epsilon, which then depends only on
//! `eta = sigma / (q sqrt(S))`: the one-step RDP is about `alpha q^2 / (2 sigma^2)`, so S steps
//! look like one Gaussian mechanism with noise multiplier eta (the TAN limit). A search can
//! therefore run at batch `B/k` with noise `sigma/k` (k times cheaper per step) and transfer to
//! the full run. Scaled-down runs are far less private than the full one; the rule fails below
//! sigma ~ 2, which each row flags.

use serde::Serialize;

use crate::accountant::Accountant;
use crate::error::{check_range, AccountingError};
use crate::event::DpEvent;
use crate::rdp::{FractionalSeries, RdpAccountant};

/// Below this noise multiplier the TAN equivalence is not reliable.
pub const TAN_MIN_SIGMA: f64 = 2.0;

/// One configuration with the same effective noise as the reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TanRow {
    /// The scale k relative to the reference (batch and noise multiplied by k).
    pub scale: f64,
    /// Expected batch size `k B`.
    pub batch_size: f64,
    /// Noise multiplier `k sigma`.
    pub noise_multiplier: f64,
    /// Sampling rate `k B / N`.
    pub sampling_rate: f64,
    /// Epsilon of this configuration (RDP).
    pub epsilon: f64,
    /// `sigma / B`, the same in every row.
    pub effective_noise: f64,
    /// Whether `k sigma >= 2`, where the equivalence holds to a few percent.
    pub equivalence_holds: bool,
}

/// The reference run and its TAN equivalents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TanTable {
    /// `eta = sigma / (q sqrt(S))`.
    pub eta: f64,
    /// Epsilon of one Gaussian with noise multiplier eta (RDP): what epsilon tends to as k grows.
    pub tan_limit_epsilon: f64,
    /// One row per scale.
    pub rows: Vec<TanRow>,
}

/// For a reference run (N, B, sigma, S, delta), the runs at scales `k` (batch `k B`, noise
/// `k sigma`, same S) with their epsilon under `series`.
pub fn tan_table(
    dataset_size: u64,
    batch_size: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
    scales: &[f64],
    series: FractionalSeries,
) -> Result<TanTable, AccountingError> {
    let n = dataset_size as f64;
    check_range(
        "batch_size",
        batch_size,
        batch_size > 0.0 && batch_size <= n,
        "0 < B <= N",
    )?;
    check_range(
        "noise_multiplier",
        noise_multiplier,
        noise_multiplier > 0.0,
        "sigma > 0",
    )?;
    if steps == 0 {
        return Err(AccountingError::InvalidParameter {
            name: "steps",
            value: 0.0,
            expected: "at least one step",
        });
    }
    let q = batch_size / n;
    let eta = noise_multiplier / (q * (steps as f64).sqrt());
    let epsilon_of = |event: DpEvent| -> Result<f64, AccountingError> {
        let mut acc = RdpAccountant::default().with_series(series);
        acc.compose(&event)?;
        acc.epsilon(delta)
    };
    let rows = scales
        .iter()
        .map(|&k| {
            check_range("scale", k, k > 0.0 && k * batch_size <= n, "0 < k B <= N")?;
            let (b, sigma) = (k * batch_size, k * noise_multiplier);
            Ok(TanRow {
                scale: k,
                batch_size: b,
                noise_multiplier: sigma,
                sampling_rate: b / n,
                epsilon: epsilon_of(DpEvent::dp_sgd(b / n, sigma, steps))?,
                effective_noise: sigma / b,
                equivalence_holds: sigma >= TAN_MIN_SIGMA,
            })
        })
        .collect::<Result<_, AccountingError>>()?;
    let tan_limit_epsilon = epsilon_of(DpEvent::Gaussian {
        noise_multiplier: eta,
    })?;
    Ok(TanTable {
        eta,
        tan_limit_epsilon,
        rows,
    })
}
