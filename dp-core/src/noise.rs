//! Gaussian noise for the clipped gradient sums, added once per logical batch by a
//! [`GaussianNoise`] mechanism in the [`NoiseMode`] its caller chose, which reports the
//! [`DpEvent`] it ran.
//!
//! - [`NoiseMode::Secure`]: each coordinate `x` is released as `gamma (round(x / gamma) + Z)`,
//!   with a power-of-two grid step `gamma` fixed by `(sigma, C, d)` and `Z` a discrete Gaussian
//!   integer of scale `s >= sigma C / gamma`, sampled exactly from ChaCha20 streams (the
//!   construction and its argument are in the `secure` module and `docs/noise.md`). The sum
//!   `round(x / gamma) + Z` is formed in 64-bit integers and converted to a float once, so
//!   every output is an exact multiple of `gamma` whatever the data: floating-point attacks
//!   (Mironov 2012; Jin et al. 2022) have nothing to read. Rounding moves each example's
//!   contribution by at most `gamma sqrt(d)`, so the reported event is the Gaussian mechanism
//!   with noise multiplier `s gamma / (C + gamma sqrt(d))`, within `2^-20` of `sigma`. The
//!   noise is generated in parallel (rayon) on the host, whatever the sums' device. For sums
//!   on an accelerator, [`GaussianNoise::start`] generates it on a background thread while the
//!   model computes, into a page-locked (pinned) staging buffer allocated once; the release
//!   copies the integers to the device (8 bytes a coordinate, at the host link's full speed)
//!   and forms `gamma (k + Z)` there in 64-bit integers, exactly as on the host.
//! - [`NoiseMode::Fast`]: `N(0, sigma^2 C^2)` from libtorch's `randn` on the sums' device
//!   (mt19937 on the CPU, Philox4x32-10 on CUDA), the device's generator keyed afresh at
//!   every release by 64 bits of the run's [`PrivacyRng`]: no two releases share noise, and a
//!   run resumed from a checkpoint draws what the uninterrupted run would have. Floating-point
//!   noise for research: the reported event is the ideal Gaussian mechanism, which such noise
//!   only approximates (floating-point attacks apply), and its randomness is only as strong
//!   as a 64-bit key and a statistical generator. On an accelerator it costs a fraction of a
//!   millisecond per 100 million coordinates. The generator is libtorch's global one (tch
//!   offers no other): fast releases take a process-wide lock while they key it and draw, and
//!   other code drawing from it on another thread at the same moment makes a release
//!   irreproducible (not less random).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use dp_accounting::DpEvent;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::error::CoreError;
use crate::host::{host_integers, host_values, HostValues};
use crate::rng::{NoiseMode, PrivacyRng};
use crate::secure::{fill, release_block, Grid, Table, BLOCK, CLAMP, ROUNDING_SHARE};

/// The noise multiplier to ask of a mechanism in `mode` so that the one it accounts (its
/// [`GaussianNoise::event`]) is at least `accounted`, for any clip norm and dimension: a secure
/// mechanism accounts `s gamma / (C + gamma sqrt(d)) >= sigma / (1 + 2^-20)` (the scale `s` is
/// rounded up, the grid keeps `gamma sqrt(d) <= 2^-20 C`), so it is asked for
/// `accounted (1 + 2^-20)`; a fast one accounts what it is asked. A plan calibrated to a
/// target epsilon asks for this, so that its last planned step stays within the target.
pub fn noise_multiplier_for(mode: NoiseMode, accounted: f64) -> f64 {
    match mode {
        NoiseMode::Secure => accounted * (1.0 + ROUNDING_SHARE),
        NoiseMode::Fast => accounted,
    }
}

/// The least noise multiplier a mechanism in `mode` asked for `asked` accounts, whatever the clip
/// norm and dimension (the inverse of [`noise_multiplier_for`]): a secure mechanism accounts at
/// least `asked / (1 + 2^-20)`, a fast one exactly `asked`. Events built from it before a run
/// (plans, searches) never claim more noise than the run will account.
pub fn accounted_at_least(mode: NoiseMode, asked: f64) -> f64 {
    match mode {
        NoiseMode::Secure => asked / (1.0 + ROUNDING_SHARE),
        NoiseMode::Fast => asked,
    }
}

/// Held while a fast release keys libtorch's (process-wide) generator and draws from it.
static FAST_NOISE_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The Gaussian mechanism applied to every logical batch's clipped sums.
#[derive(Debug)]
pub struct GaussianNoise {
    mode: NoiseMode,
    noise_multiplier: f64,
    clip_norm: f64,
    /// Parameter names and shapes, in the sums' (name) order.
    layout: Vec<(String, Vec<i64>)>,
    dim: usize,
    secure: Option<SecureStream>,
}

/// The secure mode's grid, sampler and the noise being generated ahead.
#[derive(Debug)]
struct SecureStream {
    grid: Grid,
    table: Arc<Table>,
    /// Accelerators only (its presence says the sums live on one): the pinned host buffer the
    /// next release's integers are drawn into, handed to the background thread while it draws
    /// and handed back by `ahead`.
    staging: Option<Tensor>,
    ahead: Option<JoinHandle<Result<Tensor, CoreError>>>,
}

impl GaussianNoise {
    /// A mechanism adding noise of standard deviation `noise_multiplier * clip_norm` to sums
    /// shaped like `template` (one tensor per parameter name).
    pub fn new(
        mode: NoiseMode,
        noise_multiplier: f64,
        clip_norm: f64,
        template: &BTreeMap<String, Tensor>,
    ) -> Result<Self, CoreError> {
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(CoreError::NoiseMultiplier(noise_multiplier));
        }
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(CoreError::ClipNorm(clip_norm));
        }
        let layout: Vec<(String, Vec<i64>)> = template
            .iter()
            .map(|(name, t)| (name.clone(), t.size()))
            .collect();
        let dim = template.values().map(Tensor::numel).sum();
        let accelerator = template
            .values()
            .map(Tensor::device)
            .find(|d| *d != Device::Cpu);
        let secure = match mode {
            NoiseMode::Secure => {
                let grid = Grid::new(noise_multiplier, clip_norm, dim as u64)?;
                Some(SecureStream {
                    table: Arc::new(Table::new(&grid)),
                    grid,
                    staging: accelerator.map(|d| staging_buffer(dim, d)).transpose()?,
                    ahead: None,
                })
            }
            NoiseMode::Fast => None,
        };
        Ok(Self {
            mode,
            noise_multiplier,
            clip_norm,
            layout,
            dim,
            secure,
        })
    }

    /// The mode.
    pub fn mode(&self) -> NoiseMode {
        self.mode
    }

    /// The noise multiplier asked for (noise standard deviation over C).
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The noise multiplier the privacy accountant must use: in secure mode the discrete
    /// noise's scale over the rounded sums' sensitivity `C + gamma sqrt(d)`.
    pub fn accounted_noise_multiplier(&self) -> f64 {
        match &self.secure {
            Some(s) => s
                .grid
                .effective_noise_multiplier(self.clip_norm, self.dim as u64),
            None => self.noise_multiplier,
        }
    }

    /// The event each release runs: the Gaussian mechanism with the accounted multiplier.
    pub fn event(&self) -> DpEvent {
        DpEvent::Gaussian {
            noise_multiplier: self.accounted_noise_multiplier(),
        }
    }

    /// The grid step `gamma` of secure mode (every released value is a multiple of it).
    pub fn grid_step(&self) -> Option<f64> {
        self.secure.as_ref().map(|s| s.grid.step())
    }

    /// Number of noised coordinates per release.
    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Starts generating the next release's noise on a background thread, keyed from `rng`,
    /// when the sums live on an accelerator (secure mode): called early in a step, right
    /// after the batch is drawn, the generation overlaps with the model's compute there. On
    /// the CPU the model's compute already occupies every core, and generating alongside it
    /// would oversubscribe them (libtorch's thread pool stalls whenever one of its threads is
    /// descheduled), so the release generates its noise itself, on all cores; so does a
    /// release that was not started. Starting twice before a release does nothing more.
    pub fn start(&mut self, rng: &mut PrivacyRng) {
        // Only sums on an accelerator have a staging buffer, and it is with the background
        // thread from a start to the release that joins it.
        if let Some(stream) = &mut self.secure {
            if let Some(staging) = stream.staging.take() {
                stream.start(staging, &self.layout, rng);
            }
        }
    }

    /// Releases `sums` in place, like libtorch's `add_` (other handles to their storage see
    /// the released values), and returns the event that ran. Noise that was not
    /// [started](Self::start) is drawn now, keyed from `rng`.
    pub fn add(
        &mut self,
        sums: &mut BTreeMap<String, Tensor>,
        rng: &mut PrivacyRng,
    ) -> Result<DpEvent, CoreError> {
        let matches = sums.len() == self.layout.len()
            && sums
                .iter()
                .zip(&self.layout)
                .all(|((name, t), (n, size))| name == n && &t.size() == size);
        if !matches {
            return Err(CoreError::NoiseLayout(
                "the sums do not have the parameters and shapes the mechanism was built for".into(),
            ));
        }
        match &mut self.secure {
            Some(stream) => match stream.ahead.take() {
                Some(handle) => {
                    let staging = handle.join().map_err(|_| CoreError::NoiseThread)??;
                    let mut offset = 0;
                    for sum in sums.values_mut() {
                        let n = sum.numel() as i64;
                        // A blocking copy: once it returns, the buffer may be drawn into again.
                        let z = staging
                            .f_narrow(0, offset, n)?
                            .f_view(sum.size().as_slice())?
                            .f_to_device(sum.device())?;
                        release_with_tensors(sum, &z, &stream.grid)?;
                        offset += n;
                    }
                    stream.staging = Some(staging);
                }
                None => {
                    let keys = block_keys(&self.layout, rng);
                    release(sums, &stream.table, &stream.grid, &keys)?;
                }
            },
            None => {
                let std = self.noise_multiplier * self.clip_norm;
                // Keying libtorch's global generator and drawing from it is one step for every
                // fast release of the process: two releases on two threads never interleave
                // (which could hand both the same key's stream).
                let _keyed = FAST_NOISE_GENERATOR
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tch::manual_seed(rng.torch_seed());
                for sum in sums.values_mut() {
                    let mut noise = sum.f_randn_like()?;
                    let _ = noise.f_mul_scalar_(std)?;
                    let _ = tch::no_grad(|| sum.f_add_(&noise))?;
                }
            }
        }
        Ok(self.event())
    }
}

impl SecureStream {
    /// Starts generating the next release's integers on a background thread, into the staging
    /// buffer (which the thread owns until the release joins it).
    fn start(&mut self, mut staging: Tensor, layout: &[(String, Vec<i64>)], rng: &mut PrivacyRng) {
        let keys = block_keys(layout, rng);
        let sizes: Vec<usize> = layout.iter().map(|(_, s)| numel(s)).collect();
        let table = Arc::clone(&self.table);
        self.ahead = Some(std::thread::spawn(move || {
            let mut rest = host_integers(&mut staging).ok_or(CoreError::NoiseThread)?;
            for (n, keys) in sizes.iter().zip(&keys) {
                let (part, tail) = rest.split_at_mut(*n);
                fill(&table, keys, part);
                rest = tail;
            }
            Ok(staging)
        }));
    }
}

/// A host buffer of `dim` integers for noise bound to `device`: page-locked when libtorch can
/// pin memory for that device (copies from it run at the link's full speed), else pageable.
fn staging_buffer(dim: usize, device: Device) -> Result<Tensor, CoreError> {
    let buffer = Tensor::f_zeros([dim as i64], (Kind::Int64, Device::Cpu))?;
    Ok(buffer.f_internal_pin_memory(device).unwrap_or(buffer))
}

/// Keys of the noise's ChaCha20 streams: per parameter (in the sums' order), one per block of
/// [`BLOCK`] coordinates.
fn block_keys(layout: &[(String, Vec<i64>)], rng: &mut PrivacyRng) -> Vec<Vec<[u8; 32]>> {
    layout
        .iter()
        .map(|(_, size)| rng.stream_keys(numel(size).div_ceil(BLOCK)))
        .collect()
}

fn numel(size: &[i64]) -> usize {
    size.iter().product::<i64>().max(0) as usize
}

/// Releases every sum with noise drawn now from its `keys` (one per block of [`BLOCK`]). When
/// all sums are contiguous f32 or f64 CPU tensors, they are released in place: every block of
/// every sum goes into one parallel pass and is released as its noise is drawn (parameters of
/// a few blocks leave no core idle, the whole noise never exists, and each value is read and
/// written once). Otherwise each sum is released with libtorch operations (the same integers
/// and the same arithmetic) and the result copied into it.
fn release(
    sums: &mut BTreeMap<String, Tensor>,
    table: &Table,
    grid: &Grid,
    keys: &[Vec<[u8; 32]>],
) -> Result<(), CoreError> {
    match host_values(sums.values_mut()) {
        Some(values) => {
            let mut blocks = Vec::new();
            for (values, keys) in values.into_iter().zip(keys) {
                match values {
                    HostValues::F32(v) => {
                        blocks.extend(v.chunks_mut(BLOCK).map(HostValues::F32).zip(keys))
                    }
                    HostValues::F64(v) => {
                        blocks.extend(v.chunks_mut(BLOCK).map(HostValues::F64).zip(keys))
                    }
                }
            }
            blocks.into_par_iter().for_each(|(block, key)| match block {
                HostValues::F32(b) => release_block(table, grid, key, b),
                HostValues::F64(b) => release_block(table, grid, key, b),
            });
        }
        None => {
            for (sum, keys) in sums.values_mut().zip(keys) {
                let mut noise = vec![0i64; sum.numel()];
                fill(table, keys, &mut noise);
                let z = Tensor::f_from_slice(&noise)?
                    .f_reshape(sum.size())?
                    .f_to_device(sum.device())?;
                release_with_tensors(sum, &z, grid)?;
            }
        }
    }
    Ok(())
}

/// `secure::grid::on_grid` with libtorch operations on the sum's device, for the integer
/// noise `z` (shaped like `sum`, on its device); the result is copied into `sum` (in place,
/// whatever its layout).
fn release_with_tensors(sum: &mut Tensor, z: &Tensor, grid: &Grid) -> Result<(), CoreError> {
    let (inv, step) = (2f64.powi(-grid.log2_step), grid.step());
    let k = sum
        .f_to_kind(Kind::Double)?
        .f_mul_scalar(inv)?
        .f_nan_to_num(0.0, CLAMP, -CLAMP)?
        .f_round()?
        .f_clamp(-CLAMP, CLAMP)?
        .f_to_kind(Kind::Int64)?;
    let released = k
        .f_add(z)?
        .f_to_kind(Kind::Double)?
        .f_mul_scalar(step)?
        .f_to_kind(sum.kind())?;
    Ok(tch::no_grad(|| sum.f_copy_(&released))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_and_tensor_releases_agree_bit_for_bit() {
        let grid = Grid::new(0.7, 1.3, 1000).unwrap();
        let table = Table::new(&grid);
        let n = 3 * BLOCK as i64 / 2 + 77;
        let x = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 50.0;
        let x = x.where_self(&x.abs().lt(120.0), &(x.zeros_like() + f64::NAN));
        // Ties: half-integer multiples of the step, positive and negative.
        let ties =
            (Tensor::arange(n, (Kind::Double, Device::Cpu)) - n as f64 / 2.0 + 0.5) * grid.step();
        let x = x.where_self(
            &Tensor::arange(n, (Kind::Int64, Device::Cpu))
                .remainder(3)
                .ne(0),
            &ties.to_kind(Kind::Float),
        );
        // Three parameters released together, f32 and f64, of different lengths: each keeps
        // its own keys and blocks. NaN leaves nearly every chunk of `a` and `b` to the
        // element-wise path; `c` has none, so its chunks take the branch-free one.
        let clean = x.where_self(&x.isnan().logical_not(), &(x.zeros_like() + 0.25));
        let (a, b, c) = (
            x.to_kind(Kind::Float),
            x.narrow(0, 0, n - 1000).to_kind(Kind::Double),
            clean.to_kind(Kind::Float),
        );
        let mut rng = PrivacyRng::from_seed(5);
        let keys: Vec<Vec<[u8; 32]>> = [&a, &b, &c]
            .iter()
            .map(|t| rng.stream_keys(t.numel().div_ceil(BLOCK)))
            .collect();
        let mut sums = BTreeMap::from([
            ("a".to_string(), a.copy()),
            ("b".to_string(), b.copy()),
            ("c".to_string(), c.copy()),
        ]);
        release(&mut sums, &table, &grid, &keys).unwrap();
        for ((name, x), keys) in [("a", &a), ("b", &b), ("c", &c)].into_iter().zip(&keys) {
            let mut noise = vec![0i64; x.numel()];
            fill(&table, keys, &mut noise);
            let mut tensors = x.copy();
            let z = Tensor::from_slice(&noise).reshape(x.size());
            release_with_tensors(&mut tensors, &z, &grid).unwrap();
            assert!(sums[name].equal(&tensors), "{name}");
            assert!(!sums[name].equal(x));
        }
    }

    #[test]
    fn sums_that_cannot_be_viewed_get_the_same_release_in_place() {
        let grid = Grid::new(1.0, 1.0, 120_000).unwrap();
        let table = Table::new(&grid);
        let m = Tensor::randn([300, 400], (Kind::Float, Device::Cpu));
        let mut rng = PrivacyRng::from_seed(8);
        let keys = vec![rng.stream_keys(120_000usize.div_ceil(BLOCK))];
        let mut viewed = BTreeMap::from([("w".to_string(), m.copy())]);
        release(&mut viewed, &table, &grid, &keys).unwrap();
        // The same values laid out column by column, and a tracked leaf: neither can be viewed.
        let transposed = m.transpose(0, 1).contiguous().transpose(0, 1);
        let tracked = m.copy().set_requires_grad(true);
        assert!(!transposed.is_contiguous());
        for sum in [transposed, tracked] {
            let handle = sum.shallow_clone();
            let mut sums = BTreeMap::from([("w".to_string(), sum)]);
            release(&mut sums, &table, &grid, &keys).unwrap();
            assert!(sums["w"].equal(&viewed["w"]));
            // Released in place: every handle to the storage sees the released values.
            assert!(handle.equal(&viewed["w"]));
        }
    }
}
