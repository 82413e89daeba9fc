//! `dp-train bench`: the cost of privacy for a model shape. A DP step (forward with recording,
//! one backward to the layer outputs, per-example norms, clipped sums, noise, update) and a
//! non-private step (forward, ordinary backward, update) of the same encoder on the same batch,
//! timed in one process; their ratio is the throughput ratio. Peak memory is measured per mode
//! in a child process (the high-water mark of its resident memory). With correlated noise,
//! a DP step with independent noise and one with streamed BLT noise are timed side by side.

use std::time::Instant;

use std::collections::BTreeMap;

use dp_accounting::mf::{optimize_blt, Objective, Participation, Strategy, Workload};
use dp_core::noise::add_gaussian_noise;
use dp_core::{ClippingEngine, CorrelatedNoise, PrivacyRng, Tape};
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

    fn step(
        &self,
        mode: StepMode,
        engine: &ClippingEngine,
        rng: &mut PrivacyRng,
    ) -> Result<(), TrainError> {
        let lr = 1e-4 / self.labels.size()[0] as f64;
        let variables = self.vs.trainable_variables();
        match mode {
            StepMode::Dp => self.dp_step(engine, |sums| add_gaussian_noise(sums, 1.0, rng))?,
            StepMode::NonPrivate => {
                self.losses(&mut Tape::off()).sum(Kind::Float).backward();
                tch::no_grad(|| {
                    for v in &variables {
                        let mut grad = v.grad();
                        let _ = v.shallow_clone().f_sub_(&(&grad * lr));
                        let _ = grad.zero_();
                    }
                });
            }
        }
        self.synchronize();
        Ok(())
    }

    /// A DP step whose noise `add_noise` adds to the clipped sums.
    fn dp_step(
        &self,
        engine: &ClippingEngine,
        add_noise: impl FnOnce(&mut BTreeMap<String, Tensor>),
    ) -> Result<(), TrainError> {
        let lr = 1e-4 / self.labels.size()[0] as f64;
        let mut tape = Tape::recording();
        let losses = self.losses(&mut tape);
        let mut sums = engine.clip(tape.take(), &losses)?.sums;
        add_noise(&mut sums);
        let named = self.vs.variables();
        tch::no_grad(|| {
            for (name, sum) in &sums {
                let _ = named[name].shallow_clone().f_sub_(&(sum * lr));
            }
        });
        Ok(())
    }

    fn synchronize(&self) {
        if let Device::Cuda(_) = self.vs.device() {
            tch::Cuda::synchronize(0);
        }
    }
}

/// Median seconds per step of `mode` (used alone in the memory-measuring child).
pub fn time_mode(config: &BenchConfig, mode: StepMode) -> Result<f64, TrainError> {
    let bench = Bench::new(config);
    let engine = ClippingEngine::new(&bench.vs, 1.0)?;
    let mut rng = PrivacyRng::from_seed(0);
    bench.step(mode, &engine, &mut rng)?;
    let mut times = Vec::new();
    for _ in 0..config.steps.max(1) {
        let start = Instant::now();
        bench.step(mode, &engine, &mut rng)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Median seconds per DP step and per non-private step, the two interleaved step by step so
/// that drifts in the machine's speed affect both alike.
pub fn time_both(config: &BenchConfig) -> Result<(f64, f64), TrainError> {
    let (dp, plain) = (Bench::new(config), Bench::new(config));
    let (dp_engine, plain_engine) = (
        ClippingEngine::new(&dp.vs, 1.0)?,
        ClippingEngine::new(&plain.vs, 1.0)?,
    );
    let mut rng = PrivacyRng::from_seed(0);
    dp.step(StepMode::Dp, &dp_engine, &mut rng)?;
    plain.step(StepMode::NonPrivate, &plain_engine, &mut rng)?;
    let (mut dp_times, mut plain_times) = (Vec::new(), Vec::new());
    for _ in 0..config.steps.max(1) {
        let start = Instant::now();
        dp.step(StepMode::Dp, &dp_engine, &mut rng)?;
        dp_times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        plain.step(StepMode::NonPrivate, &plain_engine, &mut rng)?;
        plain_times.push(start.elapsed().as_secs_f64());
    }
    Ok((median(dp_times), median(plain_times)))
}

/// Median seconds per DP step with independent noise and with correlated BLT noise of
/// `buffers` buffers (optimized for 1,000 steps, the noise kept in model-sized buffers),
/// interleaved step by step on the same model shape.
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
            add_gaussian_noise(sums, 1.0, &mut rng)
        })?;
        independent.synchronize();
        let independent_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        mf.dp_step(&mf_engine, |sums| correlated.add_to(sums, &mut rng))?;
        mf.synchronize();
        if round > 0 {
            independent_times.push(independent_s);
            mf_times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((median(independent_times), median(mf_times)))
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), if known.
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
