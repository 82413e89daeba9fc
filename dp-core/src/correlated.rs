//! Correlated noise streamed one step at a time (matrix-factorization DP-SGD: Denisov et al.
//! 2022, "Improved differential privacy for SGD via optimal private linear operators on
//! adaptive streams"; Choquette-Choo et al. 2023, "Multi-epoch matrix factorization mechanisms
//! for private machine learning").
//!
//! With the workload factored as `A = B C` (C lower-triangular Toeplitz, chosen in
//! [`dp_accounting::mf`]), step `t` adds `w_t = (C^{-1} Z)_t` to the clipped gradient sum
//! instead of DP-SGD's fresh `z_t`, where every `z_t ~ N(0, std^2 I)` is a fresh model-sized
//! draw with `std = sigma x clip x sens(C)`. Because `C^{-1}` is lower-triangular, `w_t`
//! depends only on `z_0..z_t` and is computed from a short state ([`NoiseRecurrence`]):
//!
//! - moving average (`C^{-1}` banded): the last `p - 1` draws;
//! - back-substitution (C banded, BandMF): the last `p - 1` outputs;
//! - buffered (BLT, Dvijotham et al. 2024): `m` decaying buffers.
//!
//! Memory is that many copies of the model's parameters, on their device. For a moving average,
//! [`CorrelatedNoise::regenerating`] keeps instead the generator's state before each past draw
//! (ChaCha20 is counter-based: a key and a position, 57 bytes) and draws `z_{t-j}` again when
//! it is needed: O(1) model-sized memory for `p - 1` extra draws per step.
//!
//! The state is part of a checkpoint ([`CorrelatedNoise::state`], [`CorrelatedNoise::restore`]):
//! resuming with a different state would add noise that is not `C^{-1} Z`, which the
//! accounting does not cover.

use std::collections::{BTreeMap, VecDeque};

use dp_accounting::mf::NoiseRecurrence;
use tch::Tensor;

use crate::error::CoreError;
use crate::rng::{PrivacyRng, RngSnapshot};

/// The streaming generator of `w_t = (C^{-1} Z)_t` for a set of named parameters.
#[derive(Debug)]
pub struct CorrelatedNoise {
    recurrence: NoiseRecurrence,
    std: f64,
    /// Per parameter: the past draws (moving average) or outputs (back-substitution), newest
    /// first; or the buffers (BLT).
    state: BTreeMap<String, VecDeque<Tensor>>,
    /// Regenerating moving average: the generator before each past draw, newest first.
    past_generators: Option<VecDeque<RngSnapshot>>,
    steps: u64,
}

impl CorrelatedNoise {
    /// A generator for `recurrence` whose fresh draws have standard deviation `std`.
    pub fn new(recurrence: NoiseRecurrence, std: f64) -> Result<Self, CoreError> {
        if !(std.is_finite() && std > 0.0) {
            return Err(CoreError::NoiseStd(std));
        }
        Ok(Self {
            recurrence,
            std,
            state: BTreeMap::new(),
            past_generators: None,
            steps: 0,
        })
    }

    /// A moving-average generator that stores no past draws but regenerates them from the
    /// privacy generator's saved states: the same noise as [`CorrelatedNoise::new`], with O(1)
    /// model-sized memory. Only moving-average recurrences (`C^{-1}` banded) can be regenerated.
    pub fn regenerating(recurrence: NoiseRecurrence, std: f64) -> Result<Self, CoreError> {
        if !matches!(recurrence, NoiseRecurrence::MovingAverage { .. }) {
            return Err(CoreError::NotRegenerable);
        }
        Ok(Self {
            past_generators: Some(VecDeque::new()),
            ..Self::new(recurrence, std)?
        })
    }

    /// Steps generated so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Model-sized buffers kept per parameter between steps.
    pub fn memory_vectors(&self) -> usize {
        if self.past_generators.is_some() {
            0
        } else {
            self.recurrence.memory_vectors()
        }
    }

    /// Adds this step's `w_t` to every sum (drawing `z_t` through `rng` in parameter-name
    /// order) and advances the state.
    pub fn add_to(&mut self, sums: &mut BTreeMap<String, Tensor>, rng: &mut PrivacyRng) {
        if let (Some(past), NoiseRecurrence::MovingAverage { coefs }) =
            (self.past_generators.as_mut(), &self.recurrence)
        {
            // w_t = sum_j coefs[j] z_{t-j}, each past z drawn again from its saved generator.
            let before = rng.snapshot();
            let std = self.std;
            let mut add = |generator: &mut PrivacyRng, coef: f64| {
                let mut z: BTreeMap<String, Tensor> = sums
                    .iter()
                    .map(|(n, s)| (n.clone(), s.zeros_like()))
                    .collect();
                add_normals(&mut z, std, generator);
                tch::no_grad(|| {
                    for (name, z) in z {
                        *sums.get_mut(&name).expect("draws mirror the sums") += z * coef;
                    }
                });
            };
            add(rng, coefs[0]);
            for (coef, snapshot) in coefs[1..].iter().zip(past.iter()) {
                let mut generator =
                    PrivacyRng::restore(snapshot).expect("snapshots of a live generator restore");
                add(&mut generator, *coef);
            }
            past.push_front(before);
            past.truncate(coefs.len() - 1);
            self.steps += 1;
            return;
        }
        let mut draws: BTreeMap<String, Tensor> = sums
            .iter()
            .map(|(n, s)| (n.clone(), s.zeros_like()))
            .collect();
        add_normals(&mut draws, self.std, rng);
        tch::no_grad(|| {
            for (name, z) in draws {
                let state = self.state.entry(name.clone()).or_default();
                let w = step(&self.recurrence, state, z);
                *sums.get_mut(&name).expect("draws mirror the sums") += w;
            }
        });
        self.steps += 1;
    }

    /// The state to checkpoint: `(name, tensor)` pairs (saved generator states as bytes under
    /// `rng/INDEX`) and the step count.
    pub fn state(&self) -> Result<(Vec<(String, Tensor)>, u64), CoreError> {
        let mut tensors: Vec<(String, Tensor)> = self
            .state
            .iter()
            .flat_map(|(name, past)| {
                past.iter()
                    .enumerate()
                    .map(move |(j, t)| (format!("{j}/{name}"), t.shallow_clone()))
            })
            .collect();
        for (j, snapshot) in self.past_generators.iter().flatten().enumerate() {
            let key = format!("rng/{j}");
            let bytes =
                snapshot_bytes(snapshot).ok_or_else(|| CoreError::NoiseState(key.clone()))?;
            tensors.push((key, Tensor::from_slice(&bytes)));
        }
        Ok((tensors, self.steps))
    }

    /// Restores a state saved by [`CorrelatedNoise::state`].
    pub fn restore(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<(), CoreError> {
        let mut state: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
        let mut generators: Vec<(usize, RngSnapshot)> = Vec::new();
        for (key, tensor) in tensors {
            let bad = || CoreError::NoiseState(key.clone());
            if let Some(j) = key.strip_prefix("rng/") {
                let j: usize = j.parse().map_err(|_| bad())?;
                let bytes = Vec::<u8>::try_from(&tensor).map_err(|_| bad())?;
                generators.push((j, snapshot_from_bytes(&bytes).ok_or_else(bad)?));
                continue;
            }
            let (j, name) = key.split_once('/').ok_or_else(bad)?;
            let j: usize = j.parse().map_err(|_| bad())?;
            state.entry(name.to_string()).or_default().push((j, tensor));
        }
        self.state = state
            .into_iter()
            .map(|(name, mut past)| {
                past.sort_by_key(|(j, _)| *j);
                (name, past.into_iter().map(|(_, t)| t).collect())
            })
            .collect();
        if let Some(past) = self.past_generators.as_mut() {
            generators.sort_by_key(|(j, _)| *j);
            *past = generators.into_iter().map(|(_, g)| g).collect();
        }
        self.steps = steps;
        Ok(())
    }
}

/// A generator state as 57 bytes: key, stream position (u128, little-endian), seed flag, seed
/// (zero bytes when the flag says there is none); `None` for a position that is not a u128.
fn snapshot_bytes(snapshot: &RngSnapshot) -> Option<Vec<u8>> {
    let position: u128 = snapshot.word_position.parse().ok()?;
    let mut bytes = snapshot.key.to_vec();
    bytes.extend(position.to_le_bytes());
    bytes.push(u8::from(snapshot.seed.is_some()));
    bytes.extend(snapshot.seed.unwrap_or(0).to_le_bytes());
    Some(bytes)
}

fn snapshot_from_bytes(bytes: &[u8]) -> Option<RngSnapshot> {
    if bytes.len() != 57 {
        return None;
    }
    let position = u128::from_le_bytes(bytes[32..48].try_into().ok()?);
    let seed = u64::from_le_bytes(bytes[49..57].try_into().ok()?);
    Some(RngSnapshot {
        key: bytes[..32].try_into().ok()?,
        word_position: position.to_string(),
        seed: (bytes[48] == 1).then_some(seed),
    })
}

/// One step of the recurrence for one parameter: returns `w_t` and updates `state`.
fn step(recurrence: &NoiseRecurrence, state: &mut VecDeque<Tensor>, z: Tensor) -> Tensor {
    match recurrence {
        NoiseRecurrence::Independent => z,
        NoiseRecurrence::MovingAverage { coefs } => {
            // w_t = sum_j coefs[j] z_{t-j}; state holds z_{t-1}, z_{t-2}, ...
            let mut w = &z * coefs[0];
            for (c, past) in coefs[1..].iter().zip(state.iter()) {
                w += past * *c;
            }
            state.push_front(z);
            state.truncate(coefs.len() - 1);
            w
        }
        NoiseRecurrence::Autoregressive { coefs } => {
            // w_t = (z_t - sum_{j >= 1} coefs[j] w_{t-j}) / coefs[0]; state holds w_{t-1}, ...
            let mut w = z;
            for (c, past) in coefs[1..].iter().zip(state.iter()) {
                w -= past * *c;
            }
            let w = w / coefs[0];
            state.push_front(w.shallow_clone());
            state.truncate(coefs.len() - 1);
            w
        }
        NoiseRecurrence::Buffered { decay, scale } => {
            // w_t = z_t + sum_i scale_i S_i, then S_i <- decay_i S_i + z_t.
            if state.is_empty() {
                state.extend(decay.iter().map(|_| z.zeros_like()));
            }
            // A new tensor (adding in place to z would change it before the buffers use it).
            let mut w = match state.front() {
                Some(first) => &z + first * scale[0],
                None => z.shallow_clone(),
            };
            for (s, buffer) in scale.iter().zip(state.iter()).skip(1) {
                w += buffer * *s;
            }
            for (d, buffer) in decay.iter().zip(state.iter_mut()) {
                // In place: S_i <- d_i S_i + z_t, no model-sized allocation.
                let _ = buffer.g_mul_scalar_(*d).g_add_(&z);
            }
            w
        }
    }
}

/// Adds independent `N(0, std^2)` floating-point draws to every entry of every tensor, in name
/// order, from [`PrivacyRng::standard_normals`] (so a saved generator state draws them again).
fn add_normals(tensors: &mut BTreeMap<String, Tensor>, std: f64, rng: &mut PrivacyRng) {
    for t in tensors.values_mut() {
        let z = Tensor::from_slice(&rng.standard_normals(t.numel()))
            .reshape(t.size())
            .to_kind(t.kind())
            .to_device(t.device());
        *t += z * std;
    }
}
