//! The privacy generator of a run, from its plan's seed: with a seed, a reproducible
//! [`PrivacyRng`] and libtorch's own generator seeded alike (the model's initialization); without
//! one, ChaCha20 keyed from the operating system's randomness (libtorch's generator, which
//! draws nothing private, is left as it is). A seeded run's noise is known to whoever has the
//! seed: the privacy statement says which kind ran.

use dp_core::PrivacyRng;

/// The generator a run with `seed` draws its batches and noise from.
pub fn run_generator(seed: Option<u64>) -> PrivacyRng {
    match seed {
        Some(seed) => {
            tch::manual_seed(seed as i64);
            PrivacyRng::from_seed(seed)
        }
        None => PrivacyRng::from_os(),
    }
}
