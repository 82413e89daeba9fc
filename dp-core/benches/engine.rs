//! Criterion benches of the engine's parts: the noise of one release in each mode (secure
//! discrete noise on the grid against libtorch's `randn`, and `randn` alone, same number of
//! coordinates, same process) and the clipping engine on a stack of sequence linear layers
//! (ghost norms and book-keeping sums) against the plain backward pass of the same layers.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dp_core::layers::DpLinear;
use dp_core::{ClippingEngine, GaussianNoise, NoiseMode, PrivacyRng, Tape};
use tch::{nn, Device, Kind, Tensor};

/// Coordinates per release: a 4M-parameter model.
const COORDINATES: i64 = 1 << 22;

fn noise(c: &mut Criterion) {
    let template = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros([COORDINATES], (Kind::Float, Device::Cpu)),
    )]);
    let mut group = c.benchmark_group("noise_4m_f32");
    group.sample_size(20);
    group.throughput(Throughput::Elements(COORDINATES as u64));
    for mode in [NoiseMode::Secure, NoiseMode::Fast] {
        let mut rng = PrivacyRng::from_seed(0);
        let mut mechanism = GaussianNoise::new(mode, 1.0, 1.0, &template).unwrap();
        group.bench_function(mode.name(), |b| {
            b.iter_batched(
                || BTreeMap::from([("w".to_string(), template["w"].copy())]),
                |mut sums| {
                    mechanism.add(&mut sums, &mut rng).unwrap();
                    sums
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The reference of the secure mode's speed target: libtorch's CPU normals alone, into a
    // fresh tensor (no scaling, no addition).
    group.bench_function("libtorch_randn", |b| {
        b.iter(|| Tensor::randn([COORDINATES], (Kind::Float, Device::Cpu)))
    });
    group.bench_function("chacha20_ziggurat_normals", |b| {
        let mut rng = PrivacyRng::from_seed(0);
        b.iter(|| rng.standard_normals(COORDINATES as usize))
    });
    group.finish();
    // Built once per run: the secure sampler's certified tables.
    c.bench_function("secure_mechanism_build", |b| {
        b.iter(|| GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &template).unwrap())
    });
}

/// Three 384 -> 384 linear layers with tanh, batch 32, sequence 64 (MiniLM's width).
struct Stack {
    layers: Vec<DpLinear>,
}

impl Stack {
    fn losses(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let y = self
            .layers
            .iter()
            .fold(x.shallow_clone(), |h, l| l.forward(&h, tape).tanh());
        y.square()
            .sum_dim_intlist([1, 2].as_slice(), false, Kind::Float)
    }
}

fn clipping(c: &mut Criterion) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let stack = Stack {
        layers: (0..3)
            .map(|i| DpLinear::new(&(vs.root() / format!("l{i}")), 384, 384, true))
            .collect(),
    };
    let x = Tensor::randn([32, 64, 384], (Kind::Float, Device::Cpu));
    let engine = ClippingEngine::new(&vs, 1.0).unwrap();
    let mut group = c.benchmark_group("linear_stack_b32_t64_d384");
    group.sample_size(20);
    group.bench_function("clipped_sums", |b| {
        b.iter(|| {
            let mut tape = Tape::recording();
            let losses = stack.losses(&x, &mut tape);
            engine.clip(tape.take(), &losses).unwrap()
        })
    });
    group.bench_function("plain_backward", |b| {
        b.iter(|| {
            let losses = stack.losses(&x, &mut Tape::off());
            losses.sum(Kind::Float).backward();
        })
    });
    group.finish();
}

criterion_group!(benches, noise, clipping);
criterion_main!(benches);
