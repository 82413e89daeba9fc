//! Gaussian noise for the clipped gradient sums: `sum + N(0, (sigma C)^2 I)` per parameter,
//! drawn through [`PrivacyRng`] in parameter-name order (so a seeded run is reproducible).
//!
//! The draws are standard floating-point normals; see `docs/noise.md` for what that means for
//! the guarantee.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::rng::PrivacyRng;

/// Adds independent `N(0, std^2)` noise to every entry of every sum.
pub fn add_gaussian_noise(sums: &mut BTreeMap<String, Tensor>, std: f64, rng: &mut PrivacyRng) {
    for sum in sums.values_mut() {
        let draws = rng.standard_normals(sum.numel());
        let noise = Tensor::from_slice(&draws)
            .reshape(sum.size())
            .to_kind(sum.kind())
            .to_device(sum.device());
        *sum += noise * std;
    }
}
