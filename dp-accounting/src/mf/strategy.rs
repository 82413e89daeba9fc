//! Strategy matrices C (all lower-triangular Toeplitz) and the recurrences that stream the
//! correlated noise `w = C^{-1} z` one step at a time.
//!
//! | strategy | C | `C^{-1} z` streams as | memory |
//! |---|---|---|---|
//! | identity (DP-SGD) | I | `w_t = z_t` | 0 |
//! | square root (Fichtenberger et al. 2023) | `A^(1/2)`: `binom(2t,t)/4^t` for prefix sums | moving average over all past z | t |
//! | nu-DP-FTRL (Choquette-Choo, Dvijotham, Pillutla et al. 2024) | `nu^t binom(2t,t)/4^t` | moving average | t |
//! | BSR (Kalinin and Lampert 2024) | first `p` coefficients of `A^(1/2)` | back-substitution over `p - 1` past w | p - 1 |
//! | BISR (Kalinin et al. 2025) | inverse of the first `p` coefficients of `A^(-1/2)` | moving average over `p - 1` past z | p - 1 |
//! | banded Toeplitz (McKenna 2024) | any `p` band coefficients, e.g. optimized | back-substitution | p - 1 |
//! | BLT (Dvijotham, McMahan et al. 2024) | buffered linear Toeplitz | `m` buffers | m |

use serde::{Deserialize, Serialize};

use super::blt::Blt;
use super::metrics::{per_query_error, Evaluation};
use super::sensitivity::{toeplitz_sensitivity, Participation, Sensitivity};
use super::series::Series;
use super::workload::{half_power_coefs, Workload};
use crate::error::{check_range, AccountingError};

/// Which factorization a [`Strategy`] is, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy")]
pub enum StrategyKind {
    /// C = I: DP-SGD's independent noise.
    #[serde(rename = "identity")]
    Identity,
    /// The Toeplitz square root of the workload.
    #[serde(rename = "sqrt")]
    SquareRoot,
    /// nu-DP-FTRL: `c_t = nu^t binom(2t, t) / 4^t`.
    #[serde(rename = "nu")]
    NuDpFtrl {
        /// The damping nu in (0, 1]; 1 is the square root of the prefix sums.
        nu: f64,
    },
    /// Banded square root: the first `bands` coefficients of the workload's square root.
    #[serde(rename = "bsr")]
    BandedSquareRoot {
        /// Number of bands p.
        bands: usize,
    },
    /// Banded inverse square root: `C^{-1}` has the first `bands` coefficients of the
    /// workload's inverse square root.
    #[serde(rename = "bisr")]
    BandedInverseSquareRoot {
        /// Number of bands p of `C^{-1}`.
        bands: usize,
    },
    /// A banded Toeplitz C with given (e.g. optimized) coefficients.
    #[serde(rename = "banded")]
    Banded {
        /// Number of bands p.
        bands: usize,
    },
    /// A buffered linear Toeplitz C.
    #[serde(rename = "blt")]
    Blt {
        /// Number of buffers m.
        buffers: usize,
    },
}

impl StrategyKind {
    /// The short name used on the command line and in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyKind::Identity => "identity",
            StrategyKind::SquareRoot => "sqrt",
            StrategyKind::NuDpFtrl { .. } => "nu",
            StrategyKind::BandedSquareRoot { .. } => "bsr",
            StrategyKind::BandedInverseSquareRoot { .. } => "bisr",
            StrategyKind::Banded { .. } => "banded",
            StrategyKind::Blt { .. } => "blt",
        }
    }
}

/// How to compute the noise `w_t = (C^{-1} z)_t` online from fresh draws `z_0, z_1, ...`.
///
/// `z_t` has standard deviation `noise_multiplier x clip_norm x sens(C)` in every coordinate
/// (see [`Strategy::sensitivity`]); the trainer adds `w_t` to the step's sum of clipped
/// gradients. Each `z_t`, `w_t` and buffer is model-sized; the recurrences act on every
/// coordinate alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum NoiseRecurrence {
    /// `w_t = z_t`.
    Independent,
    /// `w_t = sum_{j <= t, j < coefs.len()} coefs[j] z_{t-j}`: `C^{-1}` is Toeplitz with first
    /// column `coefs` (zero beyond it). Keeps the last `coefs.len() - 1` draws (or regenerates
    /// them from their seeds).
    MovingAverage {
        /// The first column of `C^{-1}`.
        coefs: Vec<f64>,
    },
    /// `w_t = (z_t - sum_{1 <= j <= t, j < coefs.len()} coefs[j] w_{t-j}) / coefs[0]`: C is
    /// banded Toeplitz with these band coefficients (back-substitution, BandMF Alg. 9). Keeps
    /// the last `coefs.len() - 1` outputs.
    Autoregressive {
        /// The band of C's first column, `c_0 .. c_{p-1}`.
        coefs: Vec<f64>,
    },
    /// `w_t = z_t + sum_i scale[i] S_i`, then `S_i <- decay[i] S_i + z_t`, with every buffer
    /// `S_i` starting at zero: `C^{-1}` is the BLT with these decays and scales.
    Buffered {
        /// Buffer decays of `C^{-1}` (thetah).
        decay: Vec<f64>,
        /// Output scales of `C^{-1}` (omegah).
        scale: Vec<f64>,
    },
}

impl NoiseRecurrence {
    /// Model-sized vectors kept between steps besides the fresh draw.
    pub fn memory_vectors(&self) -> usize {
        match self {
            NoiseRecurrence::Independent => 0,
            NoiseRecurrence::MovingAverage { coefs }
            | NoiseRecurrence::Autoregressive { coefs } => coefs.len().saturating_sub(1),
            NoiseRecurrence::Buffered { decay, .. } => decay.len(),
        }
    }

    /// Runs the recurrence on a scalar stream: the reference for model-sized implementations.
    pub fn apply(&self, z: &[f64]) -> Vec<f64> {
        match self {
            NoiseRecurrence::Independent => z.to_vec(),
            NoiseRecurrence::MovingAverage { coefs } => (0..z.len())
                .map(|t| {
                    coefs
                        .iter()
                        .take(t + 1)
                        .enumerate()
                        .map(|(j, d)| d * z[t - j])
                        .sum()
                })
                .collect(),
            NoiseRecurrence::Autoregressive { coefs } => {
                let mut w: Vec<f64> = Vec::with_capacity(z.len());
                for (t, &zt) in z.iter().enumerate() {
                    let past: f64 = coefs
                        .iter()
                        .enumerate()
                        .skip(1)
                        .take(t)
                        .map(|(j, c)| c * w[t - j])
                        .sum();
                    w.push((zt - past) / coefs[0]);
                }
                w
            }
            NoiseRecurrence::Buffered { decay, scale } => {
                let mut buffers = vec![0.0; decay.len()];
                z.iter()
                    .map(|&zt| {
                        let w = zt + scale.iter().zip(&buffers).map(|(s, b)| s * b).sum::<f64>();
                        for (b, d) in buffers.iter_mut().zip(decay) {
                            *b = d * *b + zt;
                        }
                        w
                    })
                    .collect()
            }
        }
    }
}

/// A lower-triangular Toeplitz strategy matrix C for `n` steps, with its inverse and the
/// recurrence that streams `C^{-1} z`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Strategy {
    kind: StrategyKind,
    coefs: Vec<f64>,
    noise_coefs: Vec<f64>,
    bands: Option<usize>,
    recurrence: NoiseRecurrence,
}

fn check_steps(n: usize) -> Result<(), AccountingError> {
    check_range("steps", n as f64, n >= 1, "at least 1 step")
}

fn check_bands(bands: usize, n: usize) -> Result<(), AccountingError> {
    check_steps(n)?;
    check_range(
        "bands",
        bands as f64,
        (1..=n).contains(&bands),
        "between 1 and the number of steps",
    )
}

/// `x_t nu^t`.
fn damped(x: Vec<f64>, nu: f64) -> Vec<f64> {
    let mut power = 1.0;
    x.into_iter()
        .map(|v| {
            let y = v * power;
            power *= nu;
            y
        })
        .collect()
}

impl Strategy {
    /// C = I (DP-SGD).
    pub fn identity(n: usize) -> Result<Self, AccountingError> {
        check_steps(n)?;
        let mut unit = vec![0.0; n];
        unit[0] = 1.0;
        Ok(Self {
            kind: StrategyKind::Identity,
            coefs: unit.clone(),
            noise_coefs: unit,
            bands: Some(1),
            recurrence: NoiseRecurrence::Independent,
        })
    }

    /// `C = B = A^(1/2)`, the Toeplitz square root of the workload (for prefix sums
    /// `c_t = binom(2t, t) / 4^t`, optimal for max error under single participation up to
    /// lower-order terms).
    pub fn square_root(n: usize, workload: &Workload) -> Result<Self, AccountingError> {
        check_steps(n)?;
        let noise_coefs = workload.inverse_sqrt_coefs(n);
        Ok(Self {
            kind: StrategyKind::SquareRoot,
            coefs: workload.sqrt_coefs(n),
            recurrence: NoiseRecurrence::MovingAverage {
                coefs: noise_coefs.clone(),
            },
            noise_coefs,
            bands: None,
        })
    }

    /// nu-DP-FTRL: `c_t = nu^t binom(2t, t) / 4^t`, the coefficients of `(1 - nu x)^(-1/2)`;
    /// `C^{-1}` has those of `(1 - nu x)^(1/2)`. `nu = 1` is the square root of the prefix
    /// sums; `nu < 1` keeps `sum_t c_t^2` bounded, which pays off with several epochs.
    pub fn nu_dp_ftrl(n: usize, nu: f64) -> Result<Self, AccountingError> {
        check_steps(n)?;
        check_range("nu", nu, nu > 0.0 && nu <= 1.0, "0 < nu <= 1")?;
        let noise_coefs = damped(half_power_coefs(n, 1.0), nu);
        Ok(Self {
            kind: StrategyKind::NuDpFtrl { nu },
            coefs: damped(half_power_coefs(n, -1.0), nu),
            recurrence: NoiseRecurrence::MovingAverage {
                coefs: noise_coefs.clone(),
            },
            noise_coefs,
            bands: None,
        })
    }

    /// Banded square root (BSR): C keeps the first `bands` coefficients of the workload's
    /// square root; with `bands = b` its sensitivity is `k ||c||^2` for `n = k b`.
    pub fn banded_square_root(
        n: usize,
        bands: usize,
        workload: &Workload,
    ) -> Result<Self, AccountingError> {
        check_bands(bands, n)?;
        let mut s = Self::banded(n, workload.sqrt_coefs(bands))?;
        s.kind = StrategyKind::BandedSquareRoot { bands };
        Ok(s)
    }

    /// Banded inverse square root (BISR): `C^{-1}` keeps the first `bands` coefficients of
    /// the workload's inverse square root; C (its inverse) has positive, decreasing
    /// coefficients.
    pub fn banded_inverse_square_root(
        n: usize,
        bands: usize,
        workload: &Workload,
    ) -> Result<Self, AccountingError> {
        check_bands(bands, n)?;
        let head = workload.inverse_sqrt_coefs(bands);
        let coefs = Series::new().inverse(&head, n);
        let mut noise_coefs = head.clone();
        noise_coefs.resize(n, 0.0);
        Ok(Self {
            kind: StrategyKind::BandedInverseSquareRoot { bands },
            coefs,
            noise_coefs,
            bands: None,
            recurrence: NoiseRecurrence::MovingAverage { coefs: head },
        })
    }

    /// A banded Toeplitz C whose first column starts with `coefs` (`c_0 > 0`) and is zero
    /// after: `coefs.len()` bands.
    pub fn banded(n: usize, coefs: Vec<f64>) -> Result<Self, AccountingError> {
        let bands = coefs.len();
        check_bands(bands, n)?;
        for &c in &coefs {
            check_range("coefs", c, true, "finite band coefficients")?;
        }
        check_range("coefs", coefs[0], coefs[0] > 0.0, "c_0 > 0")?;
        let noise_coefs = Series::new().inverse(&coefs, n);
        if let Some(bad) = noise_coefs.iter().find(|x| !x.is_finite()) {
            return Err(AccountingError::InvalidParameter {
                name: "coefs",
                value: *bad,
                expected: "band coefficients whose inverse stays finite over the steps",
            });
        }
        let mut full = coefs.clone();
        full.resize(n, 0.0);
        Ok(Self {
            kind: StrategyKind::Banded { bands },
            coefs: full,
            noise_coefs,
            bands: Some(bands),
            recurrence: NoiseRecurrence::Autoregressive { coefs },
        })
    }

    /// The BLT strategy C; the noise streams through the inverse BLT's buffers.
    pub fn blt(n: usize, blt: &Blt) -> Result<Self, AccountingError> {
        check_steps(n)?;
        Ok(Self {
            kind: StrategyKind::Blt {
                buffers: blt.buffers(),
            },
            coefs: blt.coefs(n),
            noise_coefs: blt.inverse_coefs(n),
            bands: None,
            recurrence: NoiseRecurrence::Buffered {
                decay: blt.inv_buf_decay().to_vec(),
                scale: blt.inv_output_scale().to_vec(),
            },
        })
    }

    /// Which strategy this is.
    pub fn kind(&self) -> StrategyKind {
        self.kind
    }

    /// The number of steps n (C is n x n).
    pub fn steps(&self) -> usize {
        self.coefs.len()
    }

    /// The first column of C, `c_0 .. c_{n-1}`.
    pub fn coefs(&self) -> &[f64] {
        &self.coefs
    }

    /// The first column of `C^{-1}`, `d_0 .. d_{n-1}`.
    pub fn noise_coefs(&self) -> &[f64] {
        &self.noise_coefs
    }

    /// The number of bands p when C is banded (1 for the identity), else `None`.
    pub fn bands(&self) -> Option<usize> {
        self.bands
    }

    /// How to stream `C^{-1} z`.
    pub fn recurrence(&self) -> &NoiseRecurrence {
        &self.recurrence
    }

    /// The sensitivity of C under `participation` (see [`Sensitivity`] and [`Participation`]).
    pub fn sensitivity(&self, participation: &Participation) -> Sensitivity {
        let support = self.bands.unwrap_or(self.coefs.len());
        toeplitz_sensitivity(&self.coefs[..support], self.steps(), participation)
    }

    /// `e_t = ||B[t, :]||^2` for `B = A C^{-1}`, t = 0..n.
    pub fn per_query_error(&self, workload: &Workload) -> Vec<f64> {
        per_query_error(&self.noise_coefs, workload)
    }

    /// Sensitivity, mean and max error for `workload` under `participation`.
    pub fn evaluate(&self, workload: &Workload, participation: &Participation) -> Evaluation {
        let errors = self.per_query_error(workload);
        Evaluation {
            sensitivity: self.sensitivity(participation),
            mean_error: errors.iter().sum::<f64>() / errors.len() as f64,
            max_error: errors.iter().copied().fold(0.0, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategies(n: usize) -> Vec<Strategy> {
        let w = Workload::momentum(0.5).unwrap();
        vec![
            Strategy::identity(n).unwrap(),
            Strategy::square_root(n, &w).unwrap(),
            Strategy::nu_dp_ftrl(n, 0.9).unwrap(),
            Strategy::banded_square_root(n, 4, &w).unwrap(),
            Strategy::banded_inverse_square_root(n, 3, &Workload::prefix()).unwrap(),
            Strategy::banded(n, vec![1.0, -0.3, 0.2]).unwrap(),
            Strategy::blt(
                n,
                &Blt::from_decays(vec![0.95, 0.5], vec![0.8, 0.1]).unwrap(),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn every_recurrence_computes_c_inverse_z() {
        let n = 40;
        let z: Vec<f64> = (0..n).map(|i| ((i * 7 + 3) % 11) as f64 - 5.0).collect();
        for s in strategies(n) {
            let want = Series::new().mul(s.noise_coefs(), &z, n);
            let got = s.recurrence().apply(&z);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-10, "{:?}: {g} vs {w}", s.kind());
            }
            // And C^{-1} is the inverse of C.
            let one = Series::new().mul(s.coefs(), s.noise_coefs(), n);
            assert!((one[0] - 1.0).abs() < 1e-12);
            assert!(one[1..].iter().all(|x| x.abs() < 1e-10), "{:?}", s.kind());
        }
    }

    #[test]
    fn memory_is_the_state_of_the_recurrence() {
        let memory: Vec<usize> = strategies(40)
            .iter()
            .map(|s| s.recurrence().memory_vectors())
            .collect();
        assert_eq!(memory, vec![0, 39, 39, 3, 2, 2, 2]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Strategy::identity(0).is_err());
        assert!(Strategy::nu_dp_ftrl(10, 0.0).is_err());
        assert!(Strategy::nu_dp_ftrl(10, 1.5).is_err());
        assert!(Strategy::banded_square_root(10, 11, &Workload::prefix()).is_err());
        assert!(Strategy::banded(10, vec![]).is_err());
        assert!(Strategy::banded(10, vec![0.0, 1.0]).is_err());
        assert!(Strategy::banded(10, vec![1.0, f64::INFINITY]).is_err());
        assert!(Strategy::banded(2000, vec![1e-200, 1.0]).is_err());
    }
}
