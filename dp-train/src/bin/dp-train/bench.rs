//! `dp-train bench`: DP steps timed against a non-private step, and the noise alone.

use dp_accounting::quiet_println as println;
use dp_core::NoiseMode;
use dp_train::bench::{self, BenchConfig, StepMode};
use dp_train::models::{EncoderShape, Precision};
use dp_train::plan::DeviceChoice;
use dp_train::TrainError;
use tch::Device;

use crate::common::arg_name;

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Encoder shape.
    #[arg(long, value_enum, default_value_t = Shape::Minilm)]
    shape: Shape,
    /// Examples per step.
    #[arg(long, allow_hyphen_values = true, default_value_t = 32)]
    batch: i64,
    /// Tokens per example.
    #[arg(long, allow_hyphen_values = true, default_value_t = 64)]
    seq: i64,
    /// Timed rounds: one step per mode each, after a warm-up round (medians reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Where the steps run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Activation precision of both modes (parameters, per-example norms and clipped sums stay
    /// f32; bf16 is meant for CUDA).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Instead of DP vs non-private: time a DP step with independent noise against one with
    /// correlated BLT noise of this many buffers (matrix factorization), side by side.
    #[arg(long, value_name = "BUFFERS")]
    correlated: Option<usize>,
    /// Noise of the DP steps (both: timed side by side, interleaved). A DP step that only
    /// clips (no noise) is always timed too, to show the engine's own cost.
    #[arg(long, value_enum, default_value_t = BenchNoise::Both)]
    noise: BenchNoise,
    /// Internal: run one mode only and report its peak memory.
    #[arg(long, hide = true, value_enum)]
    only: Option<Only>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The encoder shapes the bench builds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// all-MiniLM-L6-v2 (22.6M parameters).
    Minilm,
    /// bert-base (110M parameters).
    BertBase,
}

/// The noise of the timed DP steps.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BenchNoise {
    /// Secure (grid) noise.
    Secure,
    /// Fast (floating-point) noise.
    Fast,
    /// Both, timed side by side.
    Both,
}

/// One mode timed alone, in a child process, for its peak memory.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Only {
    /// A DP step with --noise.
    Dp,
    /// A DP step that only clips.
    Clip,
    /// A non-private step.
    Nonprivate,
}

pub(crate) fn run(args: BenchArgs) -> Result<(), TrainError> {
    let config = bench_config(&args)?;
    if let Some(buffers) = args.correlated {
        run_correlated(&args, &config, buffers)?;
        return Ok(());
    }
    let mut noises: Vec<Option<NoiseMode>> = match args.noise {
        BenchNoise::Both => vec![Some(NoiseMode::Secure), Some(NoiseMode::Fast)],
        BenchNoise::Secure => vec![Some(NoiseMode::Secure)],
        BenchNoise::Fast => vec![Some(NoiseMode::Fast)],
    };
    if let Some(only) = args.only {
        return run_alone(&config, only, noises[0]);
    }
    noises.push(None);
    compare(&args, &config, &noises)
}

/// The flags as a bench configuration.
fn bench_config(args: &BenchArgs) -> Result<BenchConfig, TrainError> {
    let device = args.device.device()?;
    if args.batch < 1 || args.seq < 1 || args.seq > 512 {
        return Err(TrainError::Config(
            "--batch must be >= 1 and --seq in 1..=512".into(),
        ));
    }
    let shape = match args.shape {
        Shape::BertBase => EncoderShape::BERT_BASE,
        Shape::Minilm => EncoderShape::MINILM,
    };
    Ok(BenchConfig {
        shape,
        batch: args.batch,
        seq: args.seq,
        steps: args.steps,
        device,
        precision: args.precision,
    })
}

/// `--correlated BUFFERS`: a DP step with BLT noise against one with independent noise.
fn run_correlated(
    args: &BenchArgs,
    config: &BenchConfig,
    buffers: usize,
) -> Result<(), TrainError> {
    let device = config.device;
    let (independent, correlated) = bench::time_correlated_noise(config, buffers)?;
    let overhead = correlated / independent - 1.0;
    let out = serde_json::json!({
        "shape": arg_name(&args.shape), "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"),
        "buffers": buffers, "independent_dp_step_s": independent, "correlated_dp_step_s": correlated,
        "correlated_overhead": overhead,
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{} encoder, batch {}, seq {}, {}: DP step with independent noise {:.3} s, with BLT noise ({buffers} buffers) {:.3} s: {:+.1}%", arg_name(&args.shape), args.batch, args.seq, dp_train::device_name(device), independent, correlated, 100.0 * overhead);
    }
    Ok(())
}

/// `--only MODE` (internal): one mode timed alone in this process, for its peak memory.
fn run_alone(config: &BenchConfig, only: Only, noise: Option<NoiseMode>) -> Result<(), TrainError> {
    let (mode, noise) = match only {
        Only::Dp => (StepMode::Dp, noise),
        Only::Clip => (StepMode::Dp, None),
        Only::Nonprivate => (StepMode::NonPrivate, None),
    };
    let run = bench::time_mode(config, mode, noise)?;
    println!(
        "{}",
        serde_json::json!({
            "step_s": run.step_s, "peak_bytes": bench::peak_resident_bytes(),
            "device_peak_bytes": run.device_peak_bytes,
        })
    );
    Ok(())
}

/// The peak memory of one mode run alone in a child process (a DP step with `noise`).
fn mode_peak(args: &BenchArgs, mode: Only, noise: NoiseMode) -> Option<bench::ModePeak> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "--shape",
            &arg_name(&args.shape),
            "--batch",
            &args.batch.to_string(),
            "--seq",
            &args.seq.to_string(),
            "--steps",
            "1",
            "--device",
            &args.device.to_string(),
            "--precision",
            &args.precision.to_string(),
            "--noise",
            noise.name(),
            "--only",
            &arg_name(&mode),
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(bench::ModePeak {
        host: v["peak_bytes"].as_u64()?,
        device: v["device_peak_bytes"].as_u64(),
    })
}

/// A mode's peak resident host memory, from `peaks`.
fn host_peak(peaks: &[(String, Option<bench::ModePeak>)], name: &str) -> Option<u64> {
    peaks.iter().find(|(n, _)| n == name)?.1.map(|p| p.host)
}

/// A mode's peak allocated device memory, from `peaks`.
fn device_peak(peaks: &[(String, Option<bench::ModePeak>)], name: &str) -> Option<u64> {
    peaks.iter().find(|(n, _)| n == name)?.1?.device
}

/// Everything one comparison measured.
struct Measured {
    times: bench::StepTimes,
    rates: Option<bench::NoiseRates>,
    device_noise: Option<Result<bench::DeviceNoise, TrainError>>,
    peaks: Vec<(String, Option<bench::ModePeak>)>,
    numel: i64,
}

/// Every noise mode's DP step, clipping alone and the non-private step, timed in one run,
/// with the noise's throughput and each mode's peak memory.
fn compare(
    args: &BenchArgs,
    config: &BenchConfig,
    noises: &[Option<NoiseMode>],
) -> Result<(), TrainError> {
    let device = config.device;
    let numel = bench::trainable_coordinates(config);
    let on_device = device != Device::Cpu;
    let rates = (!on_device)
        .then(|| bench::noise_throughput(numel, 5))
        .transpose()?;
    let times = bench::time_all(config, noises)?;
    // The step table is the point of the bench: a failure of the device-noise timing is
    // reported beside it rather than losing it.
    let device_noise = on_device.then(|| bench::device_noise(numel, device, 5));
    let first_noise = noises[0].unwrap_or(NoiseMode::Fast);
    let mut peaks: Vec<(String, Option<bench::ModePeak>)> = noises
        .iter()
        .map(|n| match n {
            Some(mode) => (mode.name().to_string(), mode_peak(args, Only::Dp, *mode)),
            None => (
                "clip_only".to_string(),
                mode_peak(args, Only::Clip, first_noise),
            ),
        })
        .collect();
    peaks.push((
        "nonprivate".into(),
        mode_peak(args, Only::Nonprivate, first_noise),
    ));
    let measured = Measured {
        times,
        rates,
        device_noise,
        peaks,
        numel,
    };
    if args.json {
        println!("{}", to_json(args, config, &measured, first_noise));
    } else {
        print_text(args, config, &measured, first_noise);
    }
    Ok(())
}

/// The comparison as one JSON object.
fn to_json(
    args: &BenchArgs,
    config: &BenchConfig,
    measured: &Measured,
    first_noise: NoiseMode,
) -> serde_json::Value {
    let device = config.device;
    let Measured {
        times,
        rates,
        device_noise,
        peaks,
        numel,
    } = measured;
    let numel = *numel;
    let device_peak = |name: &str| device_peak(peaks, name);
    let (dp_peak, nonprivate_peak) = (
        host_peak(peaks, first_noise.name()),
        host_peak(peaks, "nonprivate"),
    );
    let memory_ratio = dp_peak
        .zip(nonprivate_peak)
        .map(|(d, n)| d as f64 / n as f64);
    let device_memory: serde_json::Map<String, serde_json::Value> = peaks
        .iter()
        .filter_map(|(name, _)| Some((name.clone(), device_peak(name)?.into())))
        .collect();
    let device_memory_ratio: serde_json::Map<String, serde_json::Value> = device_peak("nonprivate")
        .map(|plain| {
            peaks
                .iter()
                .filter(|(name, _)| name != "nonprivate")
                .filter_map(|(name, _)| {
                    Some((
                        name.clone(),
                        (device_peak(name)? as f64 / plain as f64).into(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let name = |m: &Option<NoiseMode>| m.map_or("clip_only", NoiseMode::name).to_string();
    let step_s: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .map(|t| (name(&t.noise), t.step_s.into()))
        .collect();
    let ratio: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .map(|t| (name(&t.noise), t.throughput_ratio.into()))
        .collect();
    let noise_share: serde_json::Map<String, serde_json::Value> = times
        .dp
        .iter()
        .filter_map(|t| Some((name(&t.noise), t.noise_share?.into())))
        .collect();
    let nonprivate = times.nonprivate_s;
    let mut out = serde_json::json!({
        "shape": arg_name(&args.shape), "batch": args.batch, "seq": args.seq, "device": format!("{device:?}"),
        "precision": args.precision,
        "dp_step_s": step_s, "nonprivate_step_s": nonprivate, "throughput_ratio": ratio,
        "noise_share_of_dp_step": noise_share,
        "secure_over_fast_step": times.secure_over_fast,
        "noise_coordinates": numel,
        "dp_peak_bytes": dp_peak, "nonprivate_peak_bytes": nonprivate_peak, "peak_memory_ratio": memory_ratio,
        "peak_memory_of": "the host process's resident memory",
        "device_peak_allocated_bytes": device_memory,
        "device_peak_memory_ratio": device_memory_ratio,
    });
    if let Some(rates) = &rates {
        out["noise_gsamples_per_s"] = serde_json::json!({
            "secure": rates.secure / 1e9, "fast": rates.fast / 1e9,
            "libtorch_randn": rates.randn / 1e9, "libtorch_normal_in_place": rates.normal_in_place / 1e9,
        });
        out["secure_over_randn"] = rates.secure_over_randn.into();
        out["secure_over_normal_in_place"] = rates.secure_over_normal_in_place.into();
    }
    match &device_noise {
        Some(Ok(d)) => {
            out["device_noise"] = serde_json::json!({
                "fast_release_s": d.fast_release_s, "secure_release_s": d.secure_release_s,
                "secure_matches_host": d.secure_matches_host,
            })
        }
        Some(Err(e)) => out["device_noise_error"] = e.to_string().into(),
        None => {}
    }
    out
}

/// The comparison in words.
fn print_text(args: &BenchArgs, config: &BenchConfig, measured: &Measured, first_noise: NoiseMode) {
    let device = config.device;
    let Measured {
        times,
        rates,
        device_noise,
        peaks,
        numel,
    } = measured;
    let nonprivate = times.nonprivate_s;
    let device_peak = |name: &str| device_peak(peaks, name);
    let (dp_peak, nonprivate_peak) = (
        host_peak(peaks, first_noise.name()),
        host_peak(peaks, "nonprivate"),
    );
    let memory_ratio = dp_peak
        .zip(nonprivate_peak)
        .map(|(d, n)| d as f64 / n as f64);
    for t in &times.dp {
        let what = match t.noise {
            Some(mode) => format!("DP step ({mode} noise)"),
            None => "DP step without noise (clipping only)".to_string(),
        };
        println!("{} encoder, batch {}, seq {}, {}, {} activations: {what} {:.3} s, non-private step {:.3} s, throughput ratio {:.3}", arg_name(&args.shape), args.batch, args.seq, dp_train::device_name(device), args.precision, t.step_s, nonprivate, t.throughput_ratio);
    }
    if let Some(r) = times.secure_over_fast {
        println!("secure / fast DP step time: {r:.3}");
    }
    for t in &times.dp {
        if let (Some(mode), Some(share)) = (t.noise, t.noise_share) {
            println!(
                "{mode} noise: {:.1}% of the DP step beyond clipping",
                100.0 * share
            );
        }
    }
    if let Some(rates) = &rates {
        println!("noise on {numel} coordinates (CPU, Gsamples/s): secure release {:.3}, fast release {:.3}, libtorch randn alone {:.3}, libtorch normal_ in place {:.3}; secure / randn {:.2}, secure / normal_ {:.2}", rates.secure / 1e9, rates.fast / 1e9, rates.randn / 1e9, rates.normal_in_place / 1e9, rates.secure_over_randn, rates.secure_over_normal_in_place);
    }
    if let Some(Err(e)) = &device_noise {
        println!(
            "noise on {}: not measured ({e})",
            dp_train::device_name(device)
        );
    }
    if let Some(Ok(d)) = &device_noise {
        println!("noise on {numel} coordinates on {}: fast release {:.4} s, secure release {:.4} s (drawn on the host, copied, released on the device; not overlapped here); secure release equals the host's bit for bit: {}", dp_train::device_name(device), d.fast_release_s, d.secure_release_s, d.secure_matches_host);
    }
    if let (Some(d), Some(n), Some(r)) = (dp_peak, nonprivate_peak, memory_ratio) {
        let scope = match device {
            Device::Cpu => "whole process, libtorch included",
            _ => "host memory only",
        };
        println!(
            "peak resident memory: DP {:.2} GiB, non-private {:.2} GiB, ratio {:.2} ({scope})",
            d as f64 / 1073741824.0,
            n as f64 / 1073741824.0,
            r
        );
    }
    let gib = |b: u64| b as f64 / 1073741824.0;
    if let Some(plain) = device_peak("nonprivate") {
        let modes: Vec<String> = peaks
            .iter()
            .filter(|(name, _)| name != "nonprivate")
            .filter_map(|(name, _)| {
                let p = device_peak(name)?;
                Some(format!(
                    "{name} {:.2} GiB ({:.2}x)",
                    gib(p),
                    p as f64 / plain as f64
                ))
            })
            .collect();
        println!(
            "peak allocated device memory: non-private {:.2} GiB; DP {}",
            gib(plain),
            modes.join(", ")
        );
    }
}
