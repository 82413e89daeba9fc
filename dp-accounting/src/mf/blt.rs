//! Buffered linear Toeplitz (BLT) matrices (Dvijotham, McMahan et al. 2024; McMahan et al.
//! 2024; McMahan and Pillutla 2025).
//!
//! A BLT with buffer decays `theta_i` and output scales `omega_i` is the lower-triangular
//! Toeplitz matrix with `c_0 = 1` and `c_t = sum_i omega_i theta_i^(t-1)` for `t >= 1`. Its
//! generating function `1 + sum_i omega_i x / (1 - theta_i x) = prod_j (1 - thetah_j x) /
//! prod_i (1 - theta_i x)` is rational, so its inverse is again a BLT, with the zeros
//! `thetah` as decays. Given poles and zeros (Dvijotham et al. 2024, Lemma 5.2; McMahan and
//! Pillutla 2025, Thm 2):
//!
//! ```text
//! omega_i  = prod_j (theta_i - thetah_j)  / prod_{j != i} (theta_i - theta_j)
//! omegah_i = prod_j (thetah_i - theta_j)  / prod_{j != i} (thetah_i - thetah_j)
//! ```
//!
//! Here a BLT is given by interlaced poles and zeros,
//! `1 > theta_1 >= thetah_1 >= theta_2 >= ... >= theta_m >= thetah_m >= 0`. That is
//! jax_privacy's well-behaved class: `omega > 0`, `omegah <= 0`, `sum omega < 1`, so the
//! coefficients of C are positive and non-increasing (the Toeplitz sensitivity formula is
//! exact) and those of `C^{-1}` decay geometrically. Noise `C^{-1} z` streams with `m` buffers:
//! `w_t = z_t + sum_i omegah_i S_i`, then `S_i <- thetah_i S_i + z_t`.

use serde::Serialize;

use crate::error::AccountingError;

/// A BLT strategy matrix C and its inverse, from interlaced poles and zeros.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blt {
    buf_decay: Vec<f64>,
    output_scale: Vec<f64>,
    inv_buf_decay: Vec<f64>,
    inv_output_scale: Vec<f64>,
}

impl Blt {
    /// The BLT with poles `buf_decay` (theta, the decays of C) and zeros `inv_buf_decay`
    /// (thetah, the decays of `C^{-1}`), which must interlace:
    /// `1 > theta_1 >= thetah_1 >= theta_2 >= ... >= thetah_m >= 0`, each list strictly
    /// decreasing.
    pub fn from_decays(
        buf_decay: Vec<f64>,
        inv_buf_decay: Vec<f64>,
    ) -> Result<Self, AccountingError> {
        let bad = |value: f64, expected: &'static str| AccountingError::InvalidParameter {
            name: "buf_decay",
            value,
            expected,
        };
        if buf_decay.len() != inv_buf_decay.len() {
            return Err(bad(
                inv_buf_decay.len() as f64,
                "as many zeros (inverse decays) as poles (decays)",
            ));
        }
        let mut previous = 1.0;
        for (i, (&pole, &zero)) in buf_decay.iter().zip(&inv_buf_decay).enumerate() {
            let strictly_below_previous_pole = i == 0 || pole < buf_decay[i - 1];
            if !(pole.is_finite() && pole < 1.0 && pole <= previous && strictly_below_previous_pole)
            {
                return Err(bad(
                    pole,
                    "decays interlaced with the inverse decays: 1 > theta_1 >= thetah_1 >= theta_2 >= ... >= 0, strictly decreasing",
                ));
            }
            let strictly_below_previous_zero = i == 0 || zero < inv_buf_decay[i - 1];
            if !(zero.is_finite() && zero >= 0.0 && zero <= pole && strictly_below_previous_zero) {
                return Err(bad(
                    zero,
                    "inverse decays interlaced with the decays: theta_i >= thetah_i >= theta_(i+1), thetah >= 0, strictly decreasing",
                ));
            }
            previous = zero;
        }
        let output_scale = output_scales(&buf_decay, &inv_buf_decay);
        let inv_output_scale = output_scales(&inv_buf_decay, &buf_decay);
        Ok(Self {
            buf_decay,
            output_scale,
            inv_buf_decay,
            inv_output_scale,
        })
    }

    /// The number of buffers m.
    pub fn buffers(&self) -> usize {
        self.buf_decay.len()
    }

    /// theta: the buffer decays of C.
    pub fn buf_decay(&self) -> &[f64] {
        &self.buf_decay
    }

    /// omega: the output scales of C.
    pub fn output_scale(&self) -> &[f64] {
        &self.output_scale
    }

    /// thetah: the buffer decays of `C^{-1}`.
    pub fn inv_buf_decay(&self) -> &[f64] {
        &self.inv_buf_decay
    }

    /// omegah: the output scales of `C^{-1}`.
    pub fn inv_output_scale(&self) -> &[f64] {
        &self.inv_output_scale
    }

    /// The first `n` Toeplitz coefficients of C.
    pub fn coefs(&self, n: usize) -> Vec<f64> {
        blt_coefs(&self.buf_decay, &self.output_scale, n)
    }

    /// The first `n` Toeplitz coefficients of `C^{-1}`.
    pub fn inverse_coefs(&self, n: usize) -> Vec<f64> {
        blt_coefs(&self.inv_buf_decay, &self.inv_output_scale, n)
    }
}

/// `omega_i = prod_j (p_i - z_j) / prod_{j != i} (p_i - p_j)`: the output scales of the BLT
/// with poles `p` and zeros `z`.
pub(crate) fn output_scales(poles: &[f64], zeros: &[f64]) -> Vec<f64> {
    poles
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let num: f64 = zeros.iter().map(|z| p - z).product();
            let den: f64 = poles
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, q)| p - q)
                .product();
            num / den
        })
        .collect()
}

/// `c_0 = 1`, `c_t = sum_i scale_i decay_i^(t-1)`.
pub(crate) fn blt_coefs(decay: &[f64], scale: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n];
    if n == 0 {
        return c;
    }
    c[0] = 1.0;
    for (&theta, &omega) in decay.iter().zip(scale) {
        let mut term = omega;
        for x in c[1..].iter_mut() {
            *x += term;
            term *= theta;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mf::series::Series;

    #[test]
    fn the_inverse_blt_inverts_the_series() {
        let blt = Blt::from_decays(vec![0.99, 0.7, 0.2], vec![0.9, 0.4, 0.05]).unwrap();
        let n = 200;
        let product = Series::new().mul(&blt.coefs(n), &blt.inverse_coefs(n), n);
        assert!((product[0] - 1.0).abs() < 1e-14);
        assert!(product[1..].iter().all(|x| x.abs() < 1e-12));
        // The well-behaved class: positive non-increasing coefficients.
        assert!(blt.output_scale().iter().all(|&w| w > 0.0));
        assert!(blt.inv_output_scale().iter().all(|&w| w < 0.0));
        assert!(blt.output_scale().iter().sum::<f64>() < 1.0);
        let c = blt.coefs(n);
        assert!(c.windows(2).all(|w| w[1] <= w[0] && w[1] > 0.0));
    }

    #[test]
    fn non_interlaced_decays_are_refused() {
        assert!(Blt::from_decays(vec![0.5], vec![0.7]).is_err());
        assert!(Blt::from_decays(vec![1.0], vec![0.5]).is_err());
        assert!(Blt::from_decays(vec![0.9, 0.5], vec![0.4, 0.3]).is_err());
        assert!(Blt::from_decays(vec![0.9], vec![-0.1]).is_err());
        assert!(Blt::from_decays(vec![0.9, 0.5], vec![0.6]).is_err());
        assert!(Blt::from_decays(vec![f64::NAN], vec![0.1]).is_err());
        // A pole equal to its zero cancels: that buffer is unused.
        let b = Blt::from_decays(vec![0.9, 0.5], vec![0.9, 0.2]).unwrap();
        assert_eq!(b.output_scale()[0], 0.0);
    }
}
