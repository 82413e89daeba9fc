//! Gaussian noise for the clipped gradient sums: `sum + N(0, (sigma C)^2 I)` per parameter,
//! drawn through [`PrivacyRng`] in parameter-name order (so a seeded run is reproducible), in
//! parallel blocks whose ChaCha20 keys come from that generator (so the draws do not depend on
//! the number of threads).
//!
//! The draws are standard floating-point normals; see `docs/noise.md` for what that means for
//! the guarantee.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::rng::PrivacyRng;

/// Adds independent `N(0, std^2)` noise to every entry of every sum.
pub fn add_gaussian_noise(sums: &mut BTreeMap<String, Tensor>, std: f64, rng: &mut PrivacyRng) {
    for sum in sums.values_mut() {
        let noise = match sum.kind() {
            Kind::Double => Tensor::from_slice(&rng.standard_normals(sum.numel())),
            _ => Tensor::from_slice(&rng.standard_normals_f32(sum.numel())),
        };
        *sum += noise
            .reshape(sum.size())
            .to_kind(sum.kind())
            .to_device(sum.device())
            * std;
    }
}
