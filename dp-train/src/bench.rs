//! `dp-train bench`: the cost of privacy for a model shape. DP steps (forward with recording,
//! one backward to the layer outputs, per-example norms, clipped sums, noise in each noise mode
//! asked for, update) and a non-private step (forward, ordinary backward, update) of the same
//! encoder on the same batch, in one process, in rounds of one step per mode: each round's
//! non-private time over its DP time is a throughput ratio, and the median over rounds is
//! reported (a drift in the machine's speed moves a whole round, so it cancels in the ratio).
//! On an accelerator a secure step's noise is generated on a background thread while the step
//! computes, and the step's time includes any wait for it. The noise alone is timed too, on
//! the same number of coordinates: a secure release, a fast release, and two references,
//! libtorch's `randn` alone (a fresh tensor) and its `normal_` in place; on an accelerator,
//! the releases are timed on sums on the device instead, and the secure release there is
//! checked bit for bit against the host's. Peak memory is measured per mode (DP with each
//! noise, clipping only, non-private) in a child process: the high-water mark of its resident
//! host memory and, on CUDA, the peak bytes allocated on the device from the model's creation
//! on (what `torch.cuda.max_memory_allocated` reports after a reset). With correlated noise, a
//! DP step with independent noise and one with streamed BLT noise (both floating-point
//! ChaCha20 normals) are timed side by side.

use std::collections::BTreeMap;
use std::time::Instant;

use dp_accounting::mf::{
    optimize_blt, NoiseRecurrence, Objective, Participation, Strategy, Workload,
};
use dp_core::{
    device_memory, ClippingEngine, CorrelatedNoise, GaussianNoise, NoiseMode, PrivacyRng, Tape,
};
use serde::Serialize;
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::error::TrainError;
use crate::models::{EncoderClassifier, EncoderShape, Finetune, Precision};

/// Which step to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepMode {
    /// Per-example clipping and noise.
    Dp,
    /// Plain minibatch gradient.
    NonPrivate,
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Encoder shape.
    pub shape: EncoderShape,
    /// Examples per step.
    pub batch: i64,
    /// Tokens per example.
    pub seq: i64,
    /// Timed steps per mode (after one warm-up step); the median is reported.
    pub steps: usize,
    /// Where to run.
    pub device: Device,
    /// Activation precision (both modes).
    pub precision: Precision,
}

/// A model, a batch and the machinery for one mode's steps.
struct Bench {
    vs: nn::VarStore,
    model: EncoderClassifier,
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

impl Bench {
    fn new(config: &BenchConfig) -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(config.device);
        let model = EncoderClassifier::new(&vs.root(), config.shape, 2, Finetune::All)
            .with_precision(config.precision);
        let opts = (Kind::Int64, config.device);
        let ids = Tensor::randint_low(1, config.shape.vocab, [config.batch, config.seq], opts);
        let mask = Tensor::ones([config.batch, config.seq], opts);
        let labels = Tensor::randint(2, [config.batch], opts);
        Self {
            vs,
            model,
            ids,
            mask,
            labels,
        }
    }

    fn losses(&self, tape: &mut Tape) -> Tensor {
        self.model
            .forward(&self.ids, &self.mask, tape)
            .cross_entropy_loss::<Tensor>(&self.labels, None, Reduction::None, -100, 0.0)
    }

    /// One step; a DP step starts its noise first (generated while the model computes) and
    /// releases its sums through `noise`.
    fn step(
        &self,
        mode: StepMode,
        engine: &ClippingEngine,
        noise: &mut Option<GaussianNoise>,
        rng: &mut PrivacyRng,
    ) -> Result<(), TrainError> {
        let lr = 1e-4 / self.labels.size()[0] as f64;
        let variables = self.vs.trainable_variables();
        match mode {
            StepMode::Dp => {
                if let Some(noise) = noise.as_mut() {
                    noise.start(rng);
                }
                self.dp_step(engine, |sums| match noise.as_mut() {
                    Some(noise) => noise.add(sums, rng).map(|_| ()),
                    None => Ok(()),
                })?;
            }
            StepMode::NonPrivate => {
                self.losses(&mut Tape::off()).sum(Kind::Float).backward();
                tch::no_grad(|| {
                    for v in &variables {
                        let mut grad = v.grad();
                        let _ = v.shallow_clone().f_sub_(&grad.f_mul_scalar(lr)?)?;
                        let _ = grad.f_zero_()?;
                    }
                    Ok::<(), tch::TchError>(())
                })?;
            }
        }
        self.synchronize();
        Ok(())
    }

    /// A DP step whose noise `add_noise` adds to the clipped sums.
    fn dp_step(
        &self,
        engine: &ClippingEngine,
        add_noise: impl FnOnce(&mut BTreeMap<String, Tensor>) -> Result<(), dp_core::CoreError>,
    ) -> Result<(), TrainError> {
        let lr = 1e-4 / self.labels.size()[0] as f64;
        let mut tape = Tape::recording();
        let losses = self.losses(&mut tape);
        let mut sums = engine.clip(tape.take(), &losses)?.sums;
        add_noise(&mut sums)?;
        let named = self.vs.variables();
        tch::no_grad(|| {
            for (name, sum) in &sums {
                let _ = named[name].shallow_clone().f_sub_(&sum.f_mul_scalar(lr)?)?;
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }

    fn synchronize(&self) {
        if let Device::Cuda(_) = self.vs.device() {
            tch::Cuda::synchronize(0);
        }
    }

    /// The clipping engine and a noise mechanism (sigma = C = 1) for this model; no noise
    /// for `None` (a DP step that only clips, to time the engine alone).
    fn machinery(
        &self,
        noise: Option<NoiseMode>,
    ) -> Result<(ClippingEngine, Option<GaussianNoise>), TrainError> {
        let engine = ClippingEngine::new(&self.vs, 1.0)?;
        let noise = noise
            .map(|mode| GaussianNoise::new(mode, 1.0, 1.0, &engine.zero_sums()))
            .transpose()?;
        Ok((engine, noise))
    }
}

/// One mode run alone (in the memory-measuring child).
#[derive(Debug, Clone, Copy)]
pub struct ModeRun {
    /// Median seconds per step.
    pub step_s: f64,
    /// On CUDA: the peak bytes allocated on the device from the model's creation to the last
    /// step (the model, its gradients or sums, the noise, activations); `None` elsewhere.
    pub device_peak_bytes: Option<u64>,
}

/// The peak memory of one mode run alone, as its child process reports it.
#[derive(Debug, Clone, Copy)]
pub struct ModePeak {
    /// The child's peak resident host memory, in bytes.
    pub host: u64,
    /// On CUDA, its peak bytes allocated on the device ([`ModeRun::device_peak_bytes`]).
    pub device: Option<u64>,
}

/// Steps of `mode` alone, with `noise` for DP steps (`None`: clipping only), as the
/// memory-measuring child runs them: the device's peak is reset before the model is made.
pub fn time_mode(
    config: &BenchConfig,
    mode: StepMode,
    noise: Option<NoiseMode>,
) -> Result<ModeRun, TrainError> {
    // Creating the first CUDA tensor starts libtorch's allocator; the peak starts after it.
    let _ = Tensor::f_zeros([1], (Kind::Float, config.device))?;
    device_memory::reset_peak(config.device);
    let bench = Bench::new(config);
    let mut rng = PrivacyRng::from_seed(0);
    let (engine, mut mechanism) = bench.machinery(noise)?;
    bench.step(mode, &engine, &mut mechanism, &mut rng)?;
    let mut times = Vec::new();
    for _ in 0..config.steps.max(1) {
        let start = Instant::now();
        bench.step(mode, &engine, &mut mechanism, &mut rng)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(ModeRun {
        step_s: median(times),
        device_peak_bytes: device_memory::allocated(config.device).map(|m| m.peak),
    })
}

/// One DP mode's timing against the non-private step.
#[derive(Debug, Clone, Copy)]
pub struct DpStepTime {
    /// The DP step's noise (`None`: clipping only).
    pub noise: Option<NoiseMode>,
    /// Median seconds per DP step.
    pub step_s: f64,
    /// Median over rounds of the round's non-private step time over its DP step time.
    pub throughput_ratio: f64,
    /// For a noisy mode timed beside a clipping-only one: the median over rounds of the
    /// round's share of this mode's step time that goes beyond clipping (the noise's cost on
    /// the step's critical path, whatever overlaps it).
    pub noise_share: Option<f64>,
}

/// Step times of [`time_all`].
#[derive(Debug, Clone)]
pub struct StepTimes {
    /// Each DP mode, in the order asked.
    pub dp: Vec<DpStepTime>,
    /// Median seconds per non-private step.
    pub nonprivate_s: f64,
    /// Median over rounds of the secure step time over the fast one, when both were timed.
    pub secure_over_fast: Option<f64>,
}

/// DP steps in each of `noises` (`None`: clipping without noise) and non-private steps, run
/// in rounds of one step each, back to back. Each round gives its own ratios, so a drift in the
/// machine's speed (which moves whole rounds) cancels; the medians over rounds are reported.
pub fn time_all(
    config: &BenchConfig,
    noises: &[Option<NoiseMode>],
) -> Result<StepTimes, TrainError> {
    let mut rng = PrivacyRng::from_seed(0);
    let mut runs = noises
        .iter()
        .map(|&noise| {
            let bench = Bench::new(config);
            let (engine, mechanism) = bench.machinery(noise)?;
            Ok((bench, engine, mechanism))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let plain = Bench::new(config);
    let (plain_engine, mut plain_noise) = plain.machinery(None)?;
    // rounds[r][k]: round r's DP step in mode k, then (last) its non-private step.
    let mut rounds: Vec<Vec<f64>> = Vec::new();
    for round in 0..=config.steps.max(1) {
        let mut times = Vec::with_capacity(runs.len() + 1);
        for (bench, engine, mechanism) in &mut runs {
            let start = Instant::now();
            bench.step(StepMode::Dp, engine, mechanism, &mut rng)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let start = Instant::now();
        plain.step(
            StepMode::NonPrivate,
            &plain_engine,
            &mut plain_noise,
            &mut rng,
        )?;
        times.push(start.elapsed().as_secs_f64());
        // Round 0 warms every mode up.
        if round > 0 {
            rounds.push(times);
        }
    }
    let plain_k = noises.len();
    let clip_only = noises.iter().position(Option::is_none);
    let dp = noises
        .iter()
        .enumerate()
        .map(|(k, &noise)| DpStepTime {
            noise,
            step_s: median_column(&rounds, k),
            throughput_ratio: median_ratio(&rounds, plain_k, k),
            noise_share: clip_only
                .filter(|_| noise.is_some())
                .map(|c| median(rounds.iter().map(|r| (r[k] - r[c]) / r[k]).collect())),
        })
        .collect();
    let find = |mode| noises.iter().position(|&n| n == Some(mode));
    let secure_over_fast = find(NoiseMode::Secure)
        .zip(find(NoiseMode::Fast))
        .map(|(s, f)| median_ratio(&rounds, s, f));
    Ok(StepTimes {
        dp,
        nonprivate_s: median_column(&rounds, plain_k),
        secure_over_fast,
    })
}

/// The number of trainable coordinates (the noise's dimension) of the benchmarked model.
pub fn trainable_coordinates(config: &BenchConfig) -> i64 {
    let bench = Bench::new(config);
    let count: usize = bench
        .vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum();
    count as i64
}

/// Noise throughput in samples per second on `numel` coordinates of an f32 CPU tensor, and
/// the secure release's speed relative to libtorch's generator.
#[derive(Debug, Clone, Copy)]
pub struct NoiseRates {
    /// A secure release: the integers drawn and the sums released on the grid, in place.
    pub secure: f64,
    /// A fast release: libtorch's `randn`, scaled, added in place.
    pub fast: f64,
    /// libtorch's `randn` alone, into a fresh tensor (no scaling, no addition).
    pub randn: f64,
    /// libtorch's `normal_` alone, into an existing tensor (no allocation, no page faults).
    pub normal_in_place: f64,
    /// Median over repeats of the secure release's rate over `randn`'s.
    pub secure_over_randn: f64,
    /// Median over repeats of the secure release's rate over `normal_`'s.
    pub secure_over_normal_in_place: f64,
}

/// [`NoiseRates`] measured in `repeats` rounds (each times every generator once, back to
/// back), with the mechanisms built once beforehand (as in a run); medians over rounds.
pub fn noise_throughput(numel: i64, repeats: usize) -> Result<NoiseRates, TrainError> {
    let mut rng = PrivacyRng::from_seed(0);
    let template = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros([numel], (Kind::Float, Device::Cpu)),
    )]);
    // The mechanisms (the secure sampler's tables) are built once, as in a run.
    let mut secure_noise = GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &template)?;
    let mut fast_noise = GaussianNoise::new(NoiseMode::Fast, 1.0, 1.0, &template)?;
    let mut release = |noise: &mut GaussianNoise| -> Result<f64, TrainError> {
        let mut sums = BTreeMap::from([("w".to_string(), template["w"].copy())]);
        let start = Instant::now();
        noise.add(&mut sums, &mut rng)?;
        Ok(numel as f64 / start.elapsed().as_secs_f64())
    };
    let randn = || -> Result<f64, TrainError> {
        let start = Instant::now();
        let drawn = Tensor::f_randn([numel], (Kind::Float, Device::Cpu))?;
        let rate = numel as f64 / start.elapsed().as_secs_f64();
        drop(drawn);
        Ok(rate)
    };
    let mut existing = template["w"].copy();
    let mut normal_in_place = || -> Result<f64, TrainError> {
        let start = Instant::now();
        let _ = existing.f_normal_(0.0, 1.0)?;
        Ok(numel as f64 / start.elapsed().as_secs_f64())
    };
    // rounds[r]: secure, fast, randn, normal_ rates of round r.
    let mut rounds = Vec::new();
    for _ in 0..repeats.max(1) {
        rounds.push([
            release(&mut secure_noise)?,
            release(&mut fast_noise)?,
            randn()?,
            normal_in_place()?,
        ]);
    }
    Ok(NoiseRates {
        secure: median_column(&rounds, 0),
        fast: median_column(&rounds, 1),
        randn: median_column(&rounds, 2),
        normal_in_place: median_column(&rounds, 3),
        secure_over_randn: median_ratio(&rounds, 0, 2),
        secure_over_normal_in_place: median_ratio(&rounds, 0, 3),
    })
}

/// Noise releases on sums that live on an accelerator.
#[derive(Debug, Clone, Copy)]
pub struct DeviceNoise {
    /// Median seconds of a fast release (the device's generator keyed, `randn`, scaled,
    /// added), synchronized.
    pub fast_release_s: f64,
    /// Median seconds of a secure release not overlapped with anything: the integers drawn
    /// on the host, copied to the device and released there.
    pub secure_release_s: f64,
    /// Whether a secure release of random sums on the device equals, bit for bit, the host's
    /// release of the same sums from the same generator state.
    pub secure_matches_host: bool,
}

/// [`DeviceNoise`] on `numel` coordinates of an f32 sum on `device`, medians of `repeats`.
pub fn device_noise(numel: i64, device: Device, repeats: usize) -> Result<DeviceNoise, TrainError> {
    let synchronize = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let template = BTreeMap::from([(
        "w".to_string(),
        Tensor::f_zeros([numel], (Kind::Float, device))?,
    )]);
    let mut rng = PrivacyRng::from_seed(0);
    let mut time = |mode: NoiseMode| -> Result<f64, TrainError> {
        let mut noise = GaussianNoise::new(mode, 1.0, 1.0, &template)?;
        let mut times = Vec::new();
        for _ in 0..=repeats.max(1) {
            let mut sums = BTreeMap::from([("w".to_string(), template["w"].f_zeros_like()?)]);
            synchronize();
            let start = Instant::now();
            noise.start(&mut rng);
            noise.add(&mut sums, &mut rng)?;
            synchronize();
            times.push(start.elapsed().as_secs_f64());
        }
        // The first release warms the generator and the pinned buffer up.
        Ok(median(times.split_off(1)))
    };
    let (fast_release_s, secure_release_s) = (time(NoiseMode::Fast)?, time(NoiseMode::Secure)?);
    let sample = Tensor::f_randn([numel.min(1 << 20)], (Kind::Float, Device::Cpu))? * 10.0;
    let release = |on: Device| -> Result<Tensor, TrainError> {
        let mut sums = BTreeMap::from([("w".to_string(), sample.f_to_device(on)?)]);
        let mut noise = GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &sums)?;
        let mut rng = PrivacyRng::from_seed(3);
        noise.start(&mut rng);
        noise.add(&mut sums, &mut rng)?;
        Ok(sums["w"].f_to_device(Device::Cpu)?)
    };
    let secure_matches_host = release(device)?.equal(&release(Device::Cpu)?);
    Ok(DeviceNoise {
        fast_release_s,
        secure_release_s,
        secure_matches_host,
    })
}

/// Median seconds per DP step with independent noise and with correlated BLT noise of
/// `buffers` buffers (optimized for 1,000 steps, the noise kept in model-sized buffers),
/// interleaved step by step on the same model shape, both drawn by [`CorrelatedNoise`] (the
/// independent one with the identity recurrence) so that only the streaming differs.
pub fn time_correlated_noise(
    config: &BenchConfig,
    buffers: usize,
) -> Result<(f64, f64), TrainError> {
    let n = 1000;
    let participation = Participation::single();
    let blt = optimize_blt(
        n,
        buffers,
        &Workload::prefix(),
        &participation,
        Objective::Mean,
    )?;
    let recurrence = Strategy::blt(n, &blt)?.recurrence().clone();
    let mut correlated = CorrelatedNoise::new(recurrence, 1.0)?;
    let mut fresh = CorrelatedNoise::new(NoiseRecurrence::Independent, 1.0)?;
    let (independent, mf) = (Bench::new(config), Bench::new(config));
    let (independent_engine, mf_engine) = (
        ClippingEngine::new(&independent.vs, 1.0)?,
        ClippingEngine::new(&mf.vs, 1.0)?,
    );
    let mut rng = PrivacyRng::from_seed(0);
    let (mut independent_times, mut mf_times) = (Vec::new(), Vec::new());
    // One warm-up step each, then the timed ones.
    for round in 0..=config.steps.max(1) {
        let start = Instant::now();
        independent.dp_step(&independent_engine, |sums| {
            fresh.add_to(sums, &mut rng);
            Ok(())
        })?;
        independent.synchronize();
        let independent_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        mf.dp_step(&mf_engine, |sums| {
            correlated.add_to(sums, &mut rng);
            Ok(())
        })?;
        mf.synchronize();
        if round > 0 {
            independent_times.push(independent_s);
            mf_times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((median(independent_times), median(mf_times)))
}

/// The median over `rounds` (one row of measurements each) of measurement `k`.
fn median_column<R: AsRef<[f64]>>(rounds: &[R], k: usize) -> f64 {
    median(rounds.iter().map(|r| r.as_ref()[k]).collect())
}

/// The median over `rounds` of each round's measurement `num` over its measurement `den`.
fn median_ratio<R: AsRef<[f64]>>(rounds: &[R], num: usize, den: usize) -> f64 {
    median(
        rounds
            .iter()
            .map(|r| r.as_ref()[num] / r.as_ref()[den])
            .collect(),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), if known.
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
