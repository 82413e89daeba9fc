//! The clipping engine against an independent reference: each example's own backward pass
//! (batch size 1), its gradient clipped to C, and the clipped gradients summed.

use std::collections::BTreeMap;

use dp_accounting::DpEvent;
use dp_core::layers::{Conv2dGeometry, DpConv2d, DpEmbedding, DpLinear, DpNorm};
use dp_core::reference::{batch_size_one_reference, batch_size_one_reference_with_style};
use dp_core::{
    ClippedBatch, ClippingEngine, ClippingStyle, CoreError, GaussianNoise, NoiseMode,
    PoissonSampler, PrivacyRng, Tape,
};
use tch::{nn, Device, Kind, Tensor};

/// Two DP linear layers with a tanh between them, on inputs (B, d) or (B, T, d); the loss of
/// an example is the squared sum of its outputs over positions.
struct TwoLayer {
    first: DpLinear,
    second: DpLinear,
}

impl TwoLayer {
    fn new(vs: &nn::VarStore, d: i64, hidden: i64, out: i64, bias: bool) -> Self {
        let root = vs.root();
        Self {
            first: DpLinear::new(&(&root / "first"), d, hidden, bias),
            second: DpLinear::new(&(&root / "second"), hidden, out, bias),
        }
    }

    fn losses(&self, x: &Tensor, target: &Tensor, tape: &mut Tape) -> Tensor {
        let h = self.first.forward(x, tape).tanh();
        let y = self.second.forward(&h, tape);
        let err = (y - target).square();
        let dims: Vec<i64> = (1..err.dim() as i64).collect();
        err.sum_dim_intlist(dims.as_slice(), false, Kind::Double)
    }
}

/// Per-example gradient norms of one linear layer in f64 from its inputs `a` and output
/// gradients `g` (B, T, *): weight `sum_t g_t a_t^T` and bias `sum_t g_t`.
fn exact_linear_norms(a: &Tensor, g: &Tensor) -> Vec<f64> {
    let (a, g) = (a.to_kind(Kind::Double), g.to_kind(Kind::Double));
    let weight =
        g.transpose(1, 2)
            .bmm(&a)
            .square()
            .sum_dim_intlist([1, 2].as_slice(), false, Kind::Double);
    let bias = g
        .sum_dim_intlist(1, false, Kind::Double)
        .square()
        .sum_dim_intlist(1, false, Kind::Double);
    Vec::<f64>::try_from((weight + bias).sqrt()).unwrap()
}

#[test]
fn clipped_contributions_stay_within_the_clip_norm_when_positions_cancel() {
    // Examples 0 to 7: two positions that nearly cancel, a_2 = (1 + eps) a_1 and g_2 = -g_1, so
    // the gradient is -eps g_1 a_1^T (and 0 for the bias), far smaller than the ghost norm's
    // terms; examples 8 to 11 do not cancel. Entries are +-4096 and +-1024, so a, (1 + eps) a
    // and g are exact in the activations' kind and any error is the engine's own rounding.
    let clip = 1.0;
    for (kind, eps, d, p) in [
        (Kind::Float, 2f64.powi(-16), 64, 32), // ghost norms (2 T^2 < p d)
        (Kind::Float, 2f64.powi(-16), 2, 2),   // explicit per-example gradients
        (Kind::BFloat16, 2f64.powi(-7), 64, 32),
        (Kind::BFloat16, 2f64.powi(-7), 2, 2),
    ] {
        tch::manual_seed(17);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = DpLinear::new(&vs.root(), d, p, true);
        let engine = ClippingEngine::new(&vs, clip).unwrap();
        let signs = |shape: [i64; 3]| {
            Tensor::randint(2, shape, (Kind::Int64, Device::Cpu)).to_kind(Kind::Double) * 2.0 - 1.0
        };
        let a1 = signs([12, 1, d]) * 4096.0;
        let r1 = signs([12, 1, p]) * 1024.0;
        let cancel = Tensor::arange(12, (Kind::Int64, Device::Cpu))
            .lt(8)
            .view([12, 1, 1]);
        let a2 = (&a1 * (1.0 + eps)).where_self(&cancel, &(signs([12, 1, d]) * 4096.0));
        let r2 = (-&r1).where_self(&cancel, &(signs([12, 1, p]) * 1024.0));
        let (a, r) = (Tensor::cat(&[a1, a2], 1), Tensor::cat(&[r1, r2], 1));
        let mut tape = Tape::recording();
        let z = layer.forward(&a.to_kind(kind), &mut tape);
        // d loss_i / d z_i = r_i exactly.
        let losses = (z * r.to_kind(kind)).sum_dim_intlist([1, 2].as_slice(), false, kind);
        let batch = engine.clip(tape.take(), &losses).unwrap();
        let exact = exact_linear_norms(&a, &r);
        let used = Vec::<f64>::try_from(batch.norms.to_kind(Kind::Double)).unwrap();
        for (i, (&n, &u)) in exact.iter().zip(&used).enumerate() {
            let factor = (clip / u).min(1.0);
            assert!(
                factor * n <= clip * (1.0 + 1e-6),
                "{kind:?} d {d}: example {i} contributes {} (exact norm {n}, clipped with {u})",
                factor * n
            );
            if i >= 8 {
                assert!(u <= n * (1.0 + 1e-3), "{kind:?}: example {i}: {u} for {n}");
            }
        }
        assert!(exact[..8].iter().all(|&n| n > clip), "{exact:?}");
    }
}

fn vs_f64() -> nn::VarStore {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

/// The batch-size-1 reference for the two-layer model.
fn reference(
    model: &TwoLayer,
    vs: &nn::VarStore,
    x: &Tensor,
    target: &Tensor,
    clip: f64,
) -> (Vec<f64>, BTreeMap<String, Tensor>) {
    let loss_of = |i: i64| {
        model
            .losses(
                &x.narrow(0, i, 1),
                &target.narrow(0, i, 1),
                &mut Tape::off(),
            )
            .sum(Kind::Double)
    };
    batch_size_one_reference(vs, x.size()[0], loss_of, clip)
}

fn assert_close(got: &Tensor, want: &Tensor, atol: f64, rtol: f64, what: &str) {
    let diff = (got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(
        diff <= atol + rtol * scale,
        "{what}: max abs diff {diff} (scale {scale})"
    );
}

/// The engine's per-example norms and clipped sums equal the batch-size-1 reference's in f64
/// (1e-10 absolute + 1e-8 relative), for exactly the reference's parameters.
fn assert_matches_reference(
    batch: &ClippedBatch,
    norms: &[f64],
    sums: &BTreeMap<String, Tensor>,
    what: &str,
) {
    assert_close(
        &batch.norms,
        &Tensor::from_slice(norms),
        1e-10,
        1e-8,
        &format!("norms, {what}"),
    );
    assert_eq!(
        batch.sums.keys().collect::<Vec<_>>(),
        sums.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, want) in sums {
        assert_close(
            &batch.sums[name],
            want,
            1e-10,
            1e-8,
            &format!("{name}, {what}"),
        );
    }
}

fn check_against_reference(shape: &[i64], hidden: i64, out: i64, bias: bool, clip: f64) {
    tch::manual_seed(7);
    let vs = vs_f64();
    let d = *shape.last().unwrap();
    let model = TwoLayer::new(&vs, d, hidden, out, bias);
    let x = Tensor::randn(shape, (Kind::Double, Device::Cpu));
    let mut target_shape = shape.to_vec();
    *target_shape.last_mut().unwrap() = out;
    let target = Tensor::randn(target_shape.as_slice(), (Kind::Double, Device::Cpu));

    let engine = ClippingEngine::new(&vs, clip).unwrap();
    let mut tape = Tape::recording();
    let losses = model.losses(&x, &target, &mut tape);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    let (norms, sums) = reference(&model, &vs, &x, &target, clip);

    let what = format!("shape {shape:?} hidden {hidden} out {out} bias {bias} clip {clip}");
    assert_eq!(batch.nonfinite, 0);
    assert_matches_reference(&batch, &norms, &sums, &what);
    // The test must be able to fail: some examples are clipped, some are not.
    if clip < 1e3 {
        assert!(
            norms.iter().any(|&n| n > clip),
            "{what}: no example clipped"
        );
    }
}

#[test]
fn clipped_sums_match_batch_size_one_reference_in_f64() {
    // 2-D inputs (T = 1, Goodfellow norms), with and without bias, clipped and unclipped.
    check_against_reference(&[6, 5], 4, 3, true, 1.0);
    check_against_reference(&[6, 5], 4, 3, false, 0.5);
    check_against_reference(&[6, 5], 4, 3, true, 1e6);
    // Sequences: T = 2 takes the ghost norm (2 T^2 < p d) in both layers; T = 16 the explicit
    // per-example gradient in both; T = 4 mixes (ghost in the 8x12 layer, explicit in 12x3).
    check_against_reference(&[5, 2, 8], 12, 3, true, 2.0);
    check_against_reference(&[5, 16, 8], 12, 3, true, 2.0);
    check_against_reference(&[5, 4, 8], 12, 3, false, 2.0);
    // Length-one sequences and extra position dimensions.
    check_against_reference(&[4, 1, 6], 5, 2, true, 1.0);
    check_against_reference(&[3, 2, 3, 6], 5, 2, true, 1.0);
}

#[test]
fn single_precision_matches_reference_to_1e5() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TwoLayer::new(&vs, 10, 16, 4, true);
    let x = Tensor::randn([8, 6, 10], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([8, 6, 4], (Kind::Float, Device::Cpu));
    let engine = ClippingEngine::new(&vs, 1.0).unwrap();
    let mut tape = Tape::recording();
    let losses = model.losses(&x, &target, &mut tape).to_kind(Kind::Float);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    assert!(
        batch.norms.max().double_value(&[]) > 1.0,
        "some examples must be clipped"
    );

    let mut vs64 = vs_f64();
    let model64 = TwoLayer::new(&vs64, 10, 16, 4, true);
    vs64.copy(&vs).unwrap();
    vs64.double();
    let (_, sums) = reference(
        &model64,
        &vs64,
        &x.to_kind(Kind::Double),
        &target.to_kind(Kind::Double),
        1.0,
    );
    for (name, want) in &sums {
        assert_close(
            &batch.sums[name].to_kind(Kind::Double),
            want,
            0.0,
            1e-5,
            name,
        );
    }
}

/// A recorded layer whose output does not reach the loss (autograd gives it no gradient) adds
/// nothing: zero sums for its parameters and the other layers' norms, as in the batch-size-1
/// reference. (The engine drops the recorded outputs after the backward pass and rebuilds such
/// a gradient from the output's shape.)
#[test]
fn a_recorded_layer_off_the_loss_adds_nothing() {
    tch::manual_seed(5);
    let vs = vs_f64();
    let model = TwoLayer::new(&vs, 6, 5, 3, true);
    let x = Tensor::randn([4, 6], (Kind::Double, Device::Cpu));
    let losses_of = |x: &Tensor, tape: &mut Tape| {
        let h = model.first.forward(x, tape);
        let _unused = model.second.forward(&h.tanh(), tape);
        h.square()
            .sum_dim_intlist([1].as_slice(), false, Kind::Double)
    };
    let engine = ClippingEngine::new(&vs, 1.0).unwrap();
    let mut tape = Tape::recording();
    let losses = losses_of(&x, &mut tape);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    let loss_of = |i: i64| losses_of(&x.narrow(0, i, 1), &mut Tape::off()).sum(Kind::Double);
    let (norms, sums) = batch_size_one_reference(&vs, 4, loss_of, 1.0);
    assert_matches_reference(&batch, &norms, &sums, "second layer off the loss");
    assert!(norms.iter().any(|&n| n > 1.0), "no example clipped");
    for name in ["second.weight", "second.bias"] {
        let total = batch.sums[name].abs().sum(Kind::Double).double_value(&[]);
        assert_eq!(total, 0.0, "{name}");
    }
}

#[test]
fn an_uncovered_trainable_parameter_is_refused_by_name() {
    let vs = vs_f64();
    let model = TwoLayer::new(&vs, 3, 4, 2, true);
    let scale = vs.root().var("output_scale", &[1], nn::Init::Const(1.0));
    let x = Tensor::randn([4, 3], (Kind::Double, Device::Cpu));
    let target = Tensor::zeros([4, 2], (Kind::Double, Device::Cpu));
    let mut tape = Tape::recording();
    let losses = model.losses(&x, &target, &mut tape) * &scale;
    let err = ClippingEngine::new(&vs, 1.0)
        .unwrap()
        .clip(tape.take(), &losses)
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::UncoveredParameter(name) if name == "output_scale"),
        "{err}"
    );
}

#[test]
fn a_layer_used_twice_is_refused_by_name() {
    let vs = vs_f64();
    let layer = DpLinear::new(&(vs.root() / "shared"), 3, 3, false);
    let x = Tensor::randn([4, 3], (Kind::Double, Device::Cpu));
    let mut tape = Tape::recording();
    let y = layer.forward(&layer.forward(&x, &mut tape), &mut tape);
    let losses = y.square().sum_dim_intlist(1, false, Kind::Double);
    let err = ClippingEngine::new(&vs, 1.0)
        .unwrap()
        .clip(tape.take(), &losses)
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::TiedParameter(name) if name == "shared.weight"),
        "{err}"
    );
}

#[test]
fn frozen_layers_are_not_clipped_or_returned() {
    let mut vs = vs_f64();
    let frozen = DpLinear::new(&(vs.root() / "frozen"), 3, 4, true);
    vs.freeze();
    let head = DpLinear::new(&(vs.root() / "head"), 4, 2, true);
    let x = Tensor::randn([5, 3], (Kind::Double, Device::Cpu));
    let mut tape = Tape::recording();
    let y = head.forward(&frozen.forward(&x, &mut tape).relu(), &mut tape);
    let losses = y.square().sum_dim_intlist(1, false, Kind::Double);
    let batch = ClippingEngine::new(&vs, 1.0)
        .unwrap()
        .clip(tape.take(), &losses)
        .unwrap();
    assert_eq!(
        batch.sums.keys().collect::<Vec<_>>(),
        ["head.bias", "head.weight"]
    );
    assert_eq!(tape.records().len(), 0, "take() empties the tape");
}

#[test]
fn nonfinite_examples_are_counted_and_contribute_nothing() {
    tch::manual_seed(11);
    let vs = vs_f64();
    let model = TwoLayer::new(&vs, 4, 5, 2, true);
    let x = Tensor::randn([6, 4], (Kind::Double, Device::Cpu));
    let target = Tensor::randn([6, 2], (Kind::Double, Device::Cpu));
    let bad = x.copy();
    let _ = bad.get(2).fill_(f64::NAN);
    let engine = ClippingEngine::new(&vs, 1.0).unwrap();
    let mut tape = Tape::recording();
    let losses = model.losses(&bad, &target, &mut tape);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    assert_eq!(batch.nonfinite, 1);

    let keep = Tensor::from_slice(&[0i64, 1, 3, 4, 5]);
    let (_, sums) = reference(
        &model,
        &vs,
        &x.index_select(0, &keep),
        &target.index_select(0, &keep),
        1.0,
    );
    for (name, want) in &sums {
        assert_close(&batch.sums[name], want, 1e-10, 1e-8, name);
    }
}

#[test]
fn evaluation_records_nothing() {
    let vs = vs_f64();
    let model = TwoLayer::new(&vs, 3, 4, 2, true);
    let x = Tensor::randn([2, 3], (Kind::Double, Device::Cpu));
    let mut tape = Tape::recording();
    let _ = tch::no_grad(|| model.losses(&x, &x.narrow(1, 0, 2), &mut tape));
    assert!(tape.records().is_empty());
    let mut off = Tape::off();
    let _ = model.losses(&x, &x.narrow(1, 0, 2), &mut off);
    assert!(off.records().is_empty());
}

#[test]
fn poisson_batches_have_the_expected_size() {
    // 2,000 batches of Binomial(10,000, 0.01): total size has mean 200,000 and s.d. 444.8; a
    // 6-s.d. band has a false-alarm rate below 1e-8. Empty batches occur at tiny rates.
    let sampler = PoissonSampler::new(10_000, 0.01).unwrap();
    let mut rng = PrivacyRng::from_seed(5);
    let total: usize = (0..2_000).map(|_| sampler.sample(&mut rng).len()).sum();
    assert!(
        (total as f64 - 200_000.0).abs() < 6.0 * 444.8,
        "total {total}"
    );
    let tiny = PoissonSampler::new(10, 0.01).unwrap();
    assert!((0..100).any(|_| tiny.sample(&mut rng).is_empty()));
    assert!(PoissonSampler::new(10, 0.0).is_err());
    assert!(PoissonSampler::new(10, f64::NAN).is_err());
}

/// Token and position embeddings, LayerNorm, a linear layer and an RMSNorm: every layer kind a
/// BERT-style encoder needs, on padded sequences.
struct SmallEncoder {
    tokens: DpEmbedding,
    positions: DpEmbedding,
    norm: DpNorm,
    linear: DpLinear,
    rms: DpNorm,
}

impl SmallEncoder {
    fn new(vs: &nn::VarStore) -> Self {
        let root = vs.root();
        Self {
            tokens: DpEmbedding::new(&(&root / "tokens"), 11, 6, Some(0)),
            positions: DpEmbedding::new(&(&root / "positions"), 8, 6, None),
            norm: DpNorm::layer_norm(&(&root / "norm"), 6, 1e-5),
            linear: DpLinear::new(&(&root / "linear"), 6, 4, true),
            rms: DpNorm::rms_norm(&(&root / "rms"), 4, 1e-6),
        }
    }

    /// Per-example loss over the non-padding positions of ids (B, T).
    fn losses(&self, ids: &Tensor, tape: &mut Tape) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .expand([b, t], true)
            .contiguous();
        let h = self.tokens.forward(ids, tape) + self.positions.forward(&positions, tape);
        let h = self.norm.forward(&h, tape).tanh();
        let y = self.rms.forward(&self.linear.forward(&h, tape), tape);
        let mask = ids.ne(0).to_kind(Kind::Double).unsqueeze(2);
        (y.sin() * mask).sum_dim_intlist([1, 2].as_slice(), false, Kind::Double)
    }
}

#[test]
fn embeddings_and_norms_match_batch_size_one_reference_in_f64() {
    tch::manual_seed(5);
    let vs = vs_f64();
    let model = SmallEncoder::new(&vs);
    // Repeated ids (cross terms of the ghost norm), padding (id 0) at the ends.
    let ids = Tensor::from_slice(&[
        3i64, 3, 5, 0, 0, 7, 1, 1, 1, 2, 4, 9, 3, 9, 0, 10, 10, 10, 0, 0,
    ])
    .view([4, 5]);
    for clip in [0.5, 1e6] {
        let engine = ClippingEngine::new(&vs, clip).unwrap();
        let mut tape = Tape::recording();
        let losses = model.losses(&ids, &mut tape);
        let batch = engine.clip(tape.take(), &losses).unwrap();
        let loss_of = |i: i64| {
            model
                .losses(&ids.narrow(0, i, 1), &mut Tape::off())
                .sum(Kind::Double)
        };
        let (norms, sums) = batch_size_one_reference(&vs, 4, loss_of, clip);
        assert_matches_reference(&batch, &norms, &sums, &format!("clip {clip}"));
        if clip < 1.0 {
            assert!(
                norms.iter().any(|&n| n > clip),
                "some example must be clipped"
            );
        }
        // The padding row never moves.
        assert_eq!(
            batch.sums["tokens.weight"]
                .get(0)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
    }
}

#[test]
fn broadcast_position_ids_are_refused() {
    let vs = vs_f64();
    let positions = DpEmbedding::new(&(vs.root() / "positions"), 8, 3, None);
    let mut tape = Tape::recording();
    let shared = positions.forward(
        &Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0),
        &mut tape,
    );
    let x = Tensor::randn([4, 5, 3], (Kind::Double, Device::Cpu)) + shared;
    let losses = x
        .square()
        .sum_dim_intlist([1, 2].as_slice(), false, Kind::Double);
    let err = ClippingEngine::new(&vs, 1.0)
        .unwrap()
        .clip(tape.take(), &losses)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoreError::BatchMismatch {
                got: 1,
                expected: 4,
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Noise and sampling: statistical tests with fixed seeds. Every check has a false-alarm rate of
// at most 1e-6 under a correct implementation: z = 4.8916 for two-sided normal bands, the
// Kolmogorov-Smirnov critical value 0.0026932 at n = 1e6, Wilson intervals at z = 4.8916, and
// chi-square quantiles at 1 - 1e-6 (Wilson-Hilferty).
// ---------------------------------------------------------------------------------------------

/// Two-sided normal quantile for a false-alarm rate of 1e-6.
const Z: f64 = 4.8916;

/// Standard normal CDF.
fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Wilson score interval at `Z` for `hits` out of `n`.
fn wilson(hits: usize, n: usize) -> (f64, f64) {
    let (n, p) = (n as f64, hits as f64 / n as f64);
    let denom = 1.0 + Z * Z / n;
    let center = (p + Z * Z / (2.0 * n)) / denom;
    let half = Z / denom * (p * (1.0 - p) / n + Z * Z / (4.0 * n * n)).sqrt();
    (center - half, center + half)
}

/// One release of `mode` noise on a zero sum of `n` coordinates (f64), and the mechanism.
fn zero_release(
    mode: NoiseMode,
    n: i64,
    sigma: f64,
    clip: f64,
    seed: u64,
) -> (Vec<f64>, GaussianNoise) {
    let mut sums = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros([n], (Kind::Double, Device::Cpu)),
    )]);
    let mut rng = PrivacyRng::from_seed(seed);
    let mut noise = GaussianNoise::new(mode, sigma, clip, &sums).unwrap();
    noise.add(&mut sums, &mut rng).unwrap();
    (Vec::<f64>::try_from(&sums["w"]).unwrap(), noise)
}

fn copy(sums: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    sums.iter().map(|(k, v)| (k.clone(), v.copy())).collect()
}

/// Moments, Kolmogorov-Smirnov distance and tail frequencies of `draws` against N(0, std^2).
fn check_gaussian(draws: &mut [f64], std: f64, what: &str) {
    let n = draws.len() as f64;
    let mean = draws.iter().sum::<f64>() / n;
    let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() <= Z * std / n.sqrt(), "{what}: mean {mean}");
    assert!(
        (var / (std * std) - 1.0).abs() <= Z * (2.0 / n).sqrt(),
        "{what}: variance ratio {}",
        var / (std * std)
    );
    for (t, p) in [(3.0, 2.0 * phi(-3.0)), (4.0, 2.0 * phi(-4.0))] {
        let hits = draws.iter().filter(|x| x.abs() > t * std).count();
        let (lo, hi) = wilson(hits, draws.len());
        assert!(
            lo <= p && p <= hi,
            "{what}: |z| > {t}: {hits} hits, expected {p}"
        );
    }
    draws.sort_by(f64::total_cmp);
    let ks = draws
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = phi(x / std);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max);
    assert!(ks <= 0.0026932, "{what}: KS distance {ks}");
}

#[test]
fn secure_noise_is_gaussian_with_the_requested_scale() {
    let (sigma, clip) = (1.5, 2.0);
    let (mut draws, noise) = zero_release(NoiseMode::Secure, 1_000_000, sigma, clip, 1);
    check_gaussian(&mut draws.clone(), sigma * clip, "secure");
    // The integers themselves: 100 equiprobable bins of N(0, 1) (chi-square, 99 degrees of
    // freedom, 1e-6 quantile 181.1) and the balance of signs (Wilson).
    let step = noise.grid_step().unwrap();
    let edges: Vec<f64> = (1..100)
        .map(|i| {
            let (mut lo, mut hi) = (-10.0, 10.0);
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if phi(mid) < i as f64 / 100.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        })
        .collect();
    let mut counts = [0usize; 100];
    for x in &draws {
        counts[edges.partition_point(|&e| e < x / (sigma * clip))] += 1;
    }
    let expected = draws.len() as f64 / 100.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(chi2 <= 181.1, "chi-square {chi2}");
    let positive = draws.iter().filter(|&&x| x > 0.0).count();
    let negative = draws.iter().filter(|&&x| x < 0.0).count();
    let (lo, hi) = wilson(positive, positive + negative);
    assert!(
        lo <= 0.5 && 0.5 <= hi,
        "{positive} positive, {negative} negative"
    );
    // Every draw is an integer number of grid steps, far finer than the noise.
    assert!(draws.iter_mut().all(|x| (*x / step).fract() == 0.0));
    assert!(step <= sigma * clip * 2f64.powi(-40));
}

#[test]
fn fast_noise_is_gaussian_with_the_requested_scale() {
    let (mut draws, _) = zero_release(NoiseMode::Fast, 1_000_000, 0.8, 3.0, 2);
    check_gaussian(&mut draws, 2.4, "fast");
}

#[test]
fn secure_outputs_lie_on_the_grid_and_fast_outputs_do_not() {
    // Inputs over magnitudes 1e-12 .. 1e6, sigma over 0.1 .. 100. The fast path's f64 outputs
    // are the control: below 2^52 grid steps they land on the grid only by chance (about 2^-11
    // of them). In f32 every value above 2^23 grid steps is a multiple of the step, so the
    // control needs f64.
    let mut rng = PrivacyRng::from_seed(3);
    for (case, &(sigma, clip)) in [(0.1, 1.0), (1.0, 0.5), (100.0, 3.0)].iter().enumerate() {
        let magnitude = Tensor::linspace(-12.0, 6.0, 100_000, (Kind::Double, Device::Cpu));
        let sign = Tensor::randint(2, [100_000], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
        let x = Tensor::from(10.0).pow(&magnitude) * sign;
        for (mode, kind) in [
            (NoiseMode::Secure, Kind::Double),
            (NoiseMode::Secure, Kind::Float),
            (NoiseMode::Fast, Kind::Double),
        ] {
            let mut sums = BTreeMap::from([("w".to_string(), x.to_kind(kind))]);
            let secure = GaussianNoise::new(NoiseMode::Secure, sigma, clip, &sums).unwrap();
            let step = secure.grid_step().unwrap();
            let mut noise = GaussianNoise::new(mode, sigma, clip, &sums).unwrap();
            noise.add(&mut sums, &mut rng).unwrap();
            let y = Vec::<f64>::try_from(&sums["w"].to_kind(Kind::Double)).unwrap();
            let on_grid = y.iter().filter(|&&v| (v / step).fract() == 0.0).count();
            match mode {
                NoiseMode::Secure => assert_eq!(on_grid, y.len(), "case {case} {kind:?}"),
                // Inputs above 2^52 steps are floats coarser than the grid: on it anyway.
                NoiseMode::Fast => assert!(on_grid < y.len() / 2, "case {case}: {on_grid}"),
            }
        }
    }
}

#[test]
fn secure_releases_move_exactly_with_their_input() {
    // Same generator state, input shifted by m grid steps: the output shifts by exactly m
    // steps, so the noise does not depend on the input. Inputs are multiples of 2^-30 plus a
    // quarter or three quarters of a step, so that every shifted input is exact and no
    // rounding is a tie (ties go to even, which is not shift-invariant but no less private).
    let (_, probe) = zero_release(NoiseMode::Secure, 10_000, 1.0, 1.0, 4);
    let step = probe.grid_step().unwrap();
    let coarse = Tensor::randint_low(-(1 << 33), 1 << 33, [10_000], (Kind::Int64, Device::Cpu));
    let quarter = Tensor::randint(2, [10_000], (Kind::Int64, Device::Cpu)) * 2 + 1;
    let x = coarse.to_kind(Kind::Double) * 2f64.powi(-30)
        + quarter.to_kind(Kind::Double) * (step / 4.0);
    let m = Tensor::randint_low(-(1 << 30), 1 << 30, [10_000], (Kind::Int64, Device::Cpu));
    let release = |input: &Tensor| {
        let mut sums = BTreeMap::from([("w".to_string(), input.copy())]);
        let mut rng = PrivacyRng::from_seed(4);
        let mut noise = GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &sums).unwrap();
        noise.add(&mut sums, &mut rng).unwrap();
        (sums.remove("w").unwrap(), noise.grid_step().unwrap())
    };
    let (base, same_step) = release(&x);
    assert_eq!(step, same_step);
    let (shifted, _) = release(&(&x + m.to_kind(Kind::Double) * step));
    let moved = (shifted - base) / step;
    assert!(moved.equal(&m.to_kind(Kind::Double)));
}

#[test]
fn noise_streams_follow_the_generator() {
    let draw = |mode, seed| zero_release(mode, 300_001, 1.0, 1.0, seed).0;
    for mode in [NoiseMode::Secure, NoiseMode::Fast] {
        assert_eq!(draw(mode, 9), draw(mode, 9), "{mode}");
        assert_ne!(draw(mode, 9), draw(mode, 10), "{mode}");
    }
    let secure = draw(NoiseMode::Secure, 9);
    // Blocks of 65,536 are independent streams, not copies.
    assert_ne!(secure[..1000], secure[65_536..66_536]);
    // Consecutive releases of one mechanism differ; so do two generators seeded by the OS.
    let mut sums = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros([1000], (Kind::Double, Device::Cpu)),
    )]);
    let mut rng = PrivacyRng::from_os();
    let mut noise = GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &sums).unwrap();
    let mut again = copy(&sums);
    noise.add(&mut sums, &mut rng).unwrap();
    noise.add(&mut again, &mut rng).unwrap();
    assert!(!sums["w"].equal(&again["w"]));
    let mut other = PrivacyRng::from_os();
    let mut third = BTreeMap::from([(
        "w".to_string(),
        Tensor::zeros([1000], (Kind::Double, Device::Cpu)),
    )]);
    GaussianNoise::new(NoiseMode::Secure, 1.0, 1.0, &third)
        .unwrap()
        .add(&mut third, &mut other)
        .unwrap();
    assert!(!sums["w"].equal(&third["w"]));
}

#[test]
fn fast_noise_is_keyed_at_every_release_so_a_resumed_run_draws_what_the_uninterrupted_one_would() {
    let zeros = || {
        BTreeMap::from([(
            "w".to_string(),
            Tensor::zeros([4096], (Kind::Float, Device::Cpu)),
        )])
    };
    // An uninterrupted run: two releases of one mechanism, the generator saved in between
    // (as a checkpoint after step 1 saves it).
    let mut rng = PrivacyRng::from_seed(21);
    let mut noise = GaussianNoise::new(NoiseMode::Fast, 1.0, 1.0, &zeros()).unwrap();
    let (mut first, mut second) = (zeros(), zeros());
    noise.add(&mut first, &mut rng).unwrap();
    let checkpoint = rng.snapshot();
    noise.add(&mut second, &mut rng).unwrap();
    // No two releases share noise.
    assert!(!first["w"].equal(&second["w"]));
    // A resumed process: a new mechanism, libtorch's generator left in another state (by a
    // release keyed from another generator), the privacy generator restored from the
    // checkpoint. Its first release is the run's second one.
    let mut other = zeros();
    GaussianNoise::new(NoiseMode::Fast, 1.0, 1.0, &zeros())
        .unwrap()
        .add(&mut other, &mut PrivacyRng::from_seed(99))
        .unwrap();
    let mut resumed_rng = PrivacyRng::resume(&checkpoint).unwrap();
    let mut resumed = GaussianNoise::new(NoiseMode::Fast, 1.0, 1.0, &zeros()).unwrap();
    let mut again = zeros();
    resumed.add(&mut again, &mut resumed_rng).unwrap();
    assert!(again["w"].equal(&second["w"]));
    assert!(!again["w"].equal(&first["w"]));
}

#[test]
fn a_secure_mechanism_asked_for_the_inflated_multiplier_accounts_at_least_the_target() {
    use dp_core::noise::{accounted_at_least, noise_multiplier_for};
    for (target, clip, dim) in [
        (0.6430343380270306, 1.0, 22_566_146),
        (1.0, 0.1, 109_483_778),
        (3.7, 2.5, 10),
        (0.93, 1.0, 1 << 20),
    ] {
        // Only the template's shape matters: an expanded (zero-stride) one allocates nothing.
        let one = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let wide = BTreeMap::from([("w".to_string(), one.expand([dim], false))]);
        let secure = noise_multiplier_for(NoiseMode::Secure, target);
        let accounted = GaussianNoise::new(NoiseMode::Secure, secure, clip, &wide)
            .unwrap()
            .accounted_noise_multiplier();
        assert!(accounted >= target, "{target} {clip} {dim}: {accounted}");
        assert!(accounted <= target * (1.0 + 1e-6), "{accounted}");
        assert_eq!(noise_multiplier_for(NoiseMode::Fast, target), target);
        // Asked for the target itself, the mechanism accounts at least the advertised floor.
        let plain = GaussianNoise::new(NoiseMode::Secure, target, clip, &wide)
            .unwrap()
            .accounted_noise_multiplier();
        assert!(
            plain >= accounted_at_least(NoiseMode::Secure, target),
            "{plain}"
        );
        assert_eq!(accounted_at_least(NoiseMode::Fast, target), target);
    }
}

#[test]
fn mechanisms_report_the_events_they_ran() {
    let sums = BTreeMap::from([
        (
            "a".to_string(),
            Tensor::zeros([300, 200], (Kind::Float, Device::Cpu)),
        ),
        (
            "b".to_string(),
            Tensor::zeros([7], (Kind::Float, Device::Cpu)),
        ),
    ]);
    let mut rng = PrivacyRng::from_seed(6);
    for mode in [NoiseMode::Secure, NoiseMode::Fast] {
        let mut noise = GaussianNoise::new(mode, 1.2, 0.5, &sums).unwrap();
        let mut noisy = copy(&sums);
        let ran = noise.add(&mut noisy, &mut rng).unwrap();
        assert_eq!(ran, noise.event());
        let DpEvent::Gaussian { noise_multiplier } = ran else {
            panic!("{ran:?}");
        };
        match mode {
            // The rounding's sensitivity gamma sqrt(d) costs at most 2^-20 of sigma; the scale
            // is rounded up by at most 2^-29.
            NoiseMode::Secure => assert!(
                noise_multiplier <= 1.2 * (1.0 + 2f64.powi(-29))
                    && noise_multiplier >= 1.2 * (1.0 - 2f64.powi(-20)),
                "{noise_multiplier}"
            ),
            NoiseMode::Fast => assert_eq!(noise_multiplier, 1.2),
        }
        // The wrong parameters are refused, not noised.
        let mut wrong = BTreeMap::from([(
            "a".to_string(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        )]);
        assert!(matches!(
            noise.add(&mut wrong, &mut rng),
            Err(CoreError::NoiseLayout(_))
        ));
    }
    let sampler = PoissonSampler::new(1000, 0.02).unwrap();
    assert_eq!(
        sampler.event(DpEvent::Gaussian {
            noise_multiplier: 1.0
        }),
        DpEvent::PoissonSampled {
            sampling_probability: 0.02,
            event: Box::new(DpEvent::Gaussian {
                noise_multiplier: 1.0
            })
        }
    );
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            GaussianNoise::new(NoiseMode::Secure, bad, 1.0, &sums),
            Err(CoreError::NoiseMultiplier(_))
        ));
    }
}

#[test]
fn poisson_inclusions_are_independent_with_the_accounted_rate() {
    // N = 1000 examples, T = 20,000 steps; q is read from the event the sampler reports.
    let (n, steps) = (1000usize, 20_000usize);
    let sampler = PoissonSampler::new(n, 0.01).unwrap();
    let DpEvent::PoissonSampled {
        sampling_probability: q,
        ..
    } = sampler.event(DpEvent::NonPrivate)
    else {
        panic!("not a Poisson event");
    };
    let mut rng = PrivacyRng::from_seed(7);
    let mut counts = vec![0usize; n];
    let mut sizes = Vec::with_capacity(steps);
    let mut repeats = 0usize;
    let mut previous: Vec<i64> = Vec::new();
    for _ in 0..steps {
        let batch = sampler.sample(&mut rng);
        for &i in &batch {
            counts[i as usize] += 1;
        }
        repeats += batch
            .iter()
            .filter(|i| previous.binary_search(i).is_ok())
            .count();
        sizes.push(batch.len() as f64);
        previous = batch;
    }
    // Pooled inclusion rate (Wilson).
    let total: usize = counts.iter().sum();
    let (lo, hi) = wilson(total, n * steps);
    assert!(
        lo <= q && q <= hi,
        "rate {}",
        total as f64 / (n * steps) as f64
    );
    // Per-example counts ~ Binomial(T, q): chi-square with 999 degrees of freedom <= 1226.2.
    let (mean, var) = (steps as f64 * q, steps as f64 * q * (1.0 - q));
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2) / var)
        .sum();
    assert!(chi2 <= 1226.2, "chi-square {chi2}");
    // Batch sizes ~ Binomial(N, q): mean and variance in their bands (a fixed-size or shuffled
    // loader has variance 0).
    let t = steps as f64;
    let (size_mean, size_var) = (n as f64 * q, n as f64 * q * (1.0 - q));
    let m = sizes.iter().sum::<f64>() / t;
    let v = sizes.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (t - 1.0);
    assert!(
        (m - size_mean).abs() <= Z * (size_var / t).sqrt(),
        "mean size {m}"
    );
    assert!(
        (v / size_var - 1.0).abs() <= Z * (2.0 / t).sqrt() * 1.05,
        "size variance {v}"
    );
    // The same example in consecutive batches: N (T-1) q^2 expected (an epoch loop gives ~0);
    // overlapping pairs add 2 N (T-2) q^3 (1-q) to the variance.
    let pairs = (n * (steps - 1)) as f64;
    let expected = pairs * q * q;
    let sd =
        (expected * (1.0 - q * q) + 2.0 * (n * (steps - 2)) as f64 * q.powi(3) * (1.0 - q)).sqrt();
    assert!(
        (repeats as f64 - expected).abs() <= Z * sd,
        "{repeats} repeats"
    );
}

/// Streamed correlated noise has covariance `std^2 C^{-1} C^{-T}` across steps, for every kind
/// of recurrence. Many independent coordinates of one parameter are the draws: with d = 200,000
/// each covariance entry is checked to 6 of its standard errors (false-alarm rate about 2e-9
/// per entry, under 1e-6 for the whole test).
#[test]
fn correlated_noise_has_covariance_c_inverse_c_inverse_transposed() {
    use dp_accounting::mf::{optimize_blt, Objective, Participation, Strategy, Workload};
    use dp_core::CorrelatedNoise;
    let n = 6;
    let participation = Participation::single();
    let strategies = [
        Strategy::identity(n).unwrap(),
        Strategy::square_root(n, &Workload::prefix()).unwrap(),
        Strategy::banded_square_root(n, 3, &Workload::prefix()).unwrap(),
        Strategy::blt(
            n,
            &optimize_blt(n, 2, &Workload::prefix(), &participation, Objective::Mean).unwrap(),
        )
        .unwrap(),
    ];
    let (d, std) = (200_000, 1.5);
    for strategy in &strategies {
        let recurrence = strategy.recurrence().clone();
        // Columns of C^{-1}: the recurrence applied to unit impulses.
        let inverse: Vec<Vec<f64>> = (0..n)
            .map(|j| {
                let mut e = vec![0.0; n];
                e[j] = 1.0;
                recurrence.apply(&e)
            })
            .collect();
        let mut noise = CorrelatedNoise::new(recurrence, std).unwrap();
        let mut rng = PrivacyRng::from_seed(17);
        let rows: Vec<Tensor> = (0..n)
            .map(|_| {
                let mut sums = BTreeMap::from([(
                    "p".to_string(),
                    Tensor::zeros([d], (Kind::Double, Device::Cpu)),
                )]);
                noise.add_to(&mut sums, &mut rng);
                sums.remove("p").unwrap()
            })
            .collect();
        let w = Tensor::stack(&rows, 0);
        let empirical = w.matmul(&w.tr()) / d as f64;
        // Expected covariance: std^2 sum_j M[t][j] M[s][j], with M[t][j] = inverse[j][t].
        let cov = |t: usize, s: usize| {
            std * std * (0..n).map(|j| inverse[j][t] * inverse[j][s]).sum::<f64>()
        };
        for t in 0..n {
            for s in 0..=t {
                let want = cov(t, s);
                let se = ((cov(t, t) * cov(s, s) + want * want) / d as f64).sqrt();
                let got = empirical.double_value(&[t as i64, s as i64]);
                assert!(
                    (got - want).abs() < 6.0 * se,
                    "{:?}: cov[{t}][{s}] = {got}, expected {want} (standard error {se})",
                    strategy.kind()
                );
            }
        }
    }
}

/// Regenerating past draws from saved generator states gives exactly the noise of storing
/// them, also across a checkpoint; recurrences with buffers or past outputs are refused.
#[test]
fn regenerated_correlated_noise_equals_stored_noise() {
    use dp_accounting::mf::{Strategy, Workload};
    use dp_core::CorrelatedNoise;
    let n = 8;
    let strategy = Strategy::banded_inverse_square_root(n, 3, &Workload::prefix()).unwrap();
    let recurrence = strategy.recurrence().clone();
    let sums = || {
        BTreeMap::from([
            (
                "a".to_string(),
                Tensor::zeros([3, 4], (Kind::Double, Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::zeros([5], (Kind::Double, Device::Cpu)),
            ),
        ])
    };
    let mut stored = CorrelatedNoise::new(recurrence.clone(), 2.0).unwrap();
    let mut regenerated = CorrelatedNoise::regenerating(recurrence.clone(), 2.0).unwrap();
    assert_eq!(regenerated.memory_vectors(), 0);
    let (mut rng_stored, mut rng_regenerated) =
        (PrivacyRng::from_seed(5), PrivacyRng::from_seed(5));
    for t in 0..n {
        if t == 4 {
            // Resume the regenerating generator from its checkpointed state.
            let (state, steps) = regenerated.state().unwrap();
            regenerated = CorrelatedNoise::regenerating(recurrence.clone(), 2.0).unwrap();
            regenerated.restore(state, steps).unwrap();
        }
        let (mut a, mut b) = (sums(), sums());
        stored.add_to(&mut a, &mut rng_stored);
        regenerated.add_to(&mut b, &mut rng_regenerated);
        for name in ["a", "b"] {
            let diff = (&a[name] - &b[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-12, "step {t}, {name}: {diff}");
            assert!(a[name].abs().max().double_value(&[]) > 0.0);
        }
    }
    let bsr = Strategy::banded_square_root(n, 3, &Workload::prefix()).unwrap();
    assert!(CorrelatedNoise::regenerating(bsr.recurrence().clone(), 1.0).is_err());
}

/// Linear, LayerNorm, linear, RMSNorm with f32 parameters, run on bf16 inputs.
struct MixedPrecisionStack {
    first: DpLinear,
    norm: DpNorm,
    second: DpLinear,
    rms: DpNorm,
}

impl MixedPrecisionStack {
    fn new(vs: &nn::VarStore) -> Self {
        let root = vs.root();
        Self {
            first: DpLinear::new(&(&root / "first"), 16, 32, true),
            norm: DpNorm::layer_norm(&(&root / "norm"), 32, 1e-5),
            second: DpLinear::new(&(&root / "second"), 32, 8, true),
            rms: DpNorm::rms_norm(&(&root / "rms"), 8, 1e-6),
        }
    }

    fn losses(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let h = self.norm.forward(&self.first.forward(x, tape), tape).tanh();
        let y = self.rms.forward(&self.second.forward(&h, tape), tape);
        y.sin()
            .sum_dim_intlist([1, 2].as_slice(), false, Kind::Float)
    }
}

#[test]
fn bf16_activations_are_clipped_with_f32_norms_and_sums() {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MixedPrecisionStack::new(&vs);
    let x = Tensor::randn([6, 5, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let clip = 1.0;
    let engine = ClippingEngine::new(&vs, clip).unwrap();
    let run = |x: &Tensor| {
        let mut tape = Tape::recording();
        let losses = model.losses(x, &mut tape);
        assert!(tape.records().iter().all(|r| r.output().kind() == x.kind()));
        engine.clip(tape.take(), &losses).unwrap()
    };
    let batch = run(&x);
    assert_eq!(batch.norms.kind(), Kind::Double);
    assert!(batch.sums.values().all(|s| s.kind() == Kind::Float));
    let loss_of = |i: i64| {
        model
            .losses(&x.narrow(0, i, 1), &mut Tape::off())
            .sum(Kind::Float)
    };
    let (norms, sums) = batch_size_one_reference(&vs, 6, loss_of, clip);
    assert!(
        norms.iter().any(|&n| n > clip),
        "some example must be clipped"
    );
    // bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%); the reference takes
    // autograd's weight gradients, themselves rounded to bf16.
    assert_close(
        &batch.norms,
        &Tensor::from_slice(&norms).to_kind(Kind::Float),
        0.0,
        1e-2,
        "norms",
    );
    for (name, want) in &sums {
        assert_close(&batch.sums[name], want, 0.0, 2e-2, name);
    }
    // The products really ran in bf16: the same inputs in f32 give visibly different sums.
    let wide = run(&x.to_kind(Kind::Float));
    let gap = (&wide.sums["first.weight"] - &batch.sums["first.weight"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap > 1e-5, "bf16 and f32 sums agree to {gap}");
}

/// Three convolutions (padding, stride, dilation; explicit and ghost norms) and a linear head
/// on (B, 3, 7, 7) images, in f64.
struct SmallCnn {
    convs: Vec<DpConv2d>,
    head: DpLinear,
}

impl SmallCnn {
    fn new(vs: &nn::VarStore, bias: bool) -> Self {
        let root = vs.root();
        let geometry = |k, stride, padding, dilation| Conv2dGeometry {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [dilation, dilation],
        };
        Self {
            convs: vec![
                // 7x7 -> 7x7 (T_out = 49: explicit per-example gradients).
                DpConv2d::new(&(&root / "c1"), 3, 4, geometry(3, 1, 1, 1), bias),
                // 7x7 -> 5x5 with dilation 2 and padding 1 (T_out = 25: explicit).
                DpConv2d::new(&(&root / "c2"), 4, 8, geometry(3, 1, 1, 2), bias),
                // 5x5 -> 2x2 with stride 2 (T_out = 4, p d = 6 * 32: ghost norms).
                DpConv2d::new(&(&root / "c3"), 8, 6, geometry(2, 2, 0, 1), bias),
            ],
            head: DpLinear::new(&(&root / "head"), 6 * 4, 3, bias),
        }
    }

    fn losses(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let h = self
            .convs
            .iter()
            .fold(x.shallow_clone(), |h, c| c.forward(&h, tape).tanh());
        let y = self.head.forward(&h.flatten(1, -1), tape);
        y.sin().sum_dim_intlist(1, false, Kind::Double)
    }
}

fn check_cnn(style: ClippingStyle, bias: bool, clip: f64) {
    tch::manual_seed(21);
    let vs = vs_f64();
    let model = SmallCnn::new(&vs, bias);
    let x = Tensor::randn([5, 3, 7, 7], (Kind::Double, Device::Cpu));
    let engine = ClippingEngine::new(&vs, clip)
        .unwrap()
        .with_style(style)
        .unwrap();
    let mut tape = Tape::recording();
    let losses = model.losses(&x, &mut tape);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    let loss_of = |i: i64| {
        model
            .losses(&x.narrow(0, i, 1), &mut Tape::off())
            .sum(Kind::Double)
    };
    let (norms, sums) = batch_size_one_reference_with_style(&vs, 5, loss_of, clip, style);
    let what = format!("{style:?}, bias {bias}, clip {clip}");
    assert_matches_reference(&batch, &norms, &sums, &what);
    if clip < 1e3 {
        assert!(norms.iter().any(|&n| n > clip), "{what}: none clipped");
    }
}

#[test]
fn convolutions_match_batch_size_one_reference_in_f64() {
    check_cnn(ClippingStyle::Flat, true, 0.5);
    check_cnn(ClippingStyle::Flat, false, 0.5);
    check_cnn(ClippingStyle::Flat, true, 1e6);
}

/// A non-finite example of a convolutional network is counted and contributes nothing: its
/// rows are zeroed in every factor of the (B, p, H, W) products too, not only in (B, T, d) ones.
#[test]
fn nonfinite_examples_of_a_convolution_are_counted_and_contribute_nothing() {
    tch::manual_seed(22);
    let vs = vs_f64();
    let model = SmallCnn::new(&vs, true);
    let x = Tensor::randn([5, 3, 7, 7], (Kind::Double, Device::Cpu));
    let bad = x.copy();
    let _ = bad.get(2).fill_(f64::NAN);
    let clip = 0.5;
    let engine = ClippingEngine::new(&vs, clip).unwrap();
    let mut tape = Tape::recording();
    let losses = model.losses(&bad, &mut tape);
    let batch = engine.clip(tape.take(), &losses).unwrap();
    assert_eq!(batch.nonfinite, 1);

    let kept = x.index_select(0, &Tensor::from_slice(&[0i64, 1, 3, 4]));
    let loss_of = |i: i64| {
        model
            .losses(&kept.narrow(0, i, 1), &mut Tape::off())
            .sum(Kind::Double)
    };
    let (_, sums) = batch_size_one_reference_with_style(&vs, 4, loss_of, clip, ClippingStyle::Flat);
    for (name, want) in &sums {
        assert_close(&batch.sums[name], want, 1e-10, 1e-8, name);
    }
}

#[test]
fn per_layer_and_automatic_clipping_match_their_references() {
    for style in [
        ClippingStyle::PerLayer,
        ClippingStyle::Automatic { stability: 0.01 },
    ] {
        check_cnn(style, true, 0.5);
        check_cnn(style, false, 2.0);
    }
    // The styles really differ: on the same batch their sums are not the same.
    tch::manual_seed(21);
    let vs = vs_f64();
    let model = SmallCnn::new(&vs, true);
    let x = Tensor::randn([5, 3, 7, 7], (Kind::Double, Device::Cpu));
    let sums = |style| {
        let engine = ClippingEngine::new(&vs, 0.5)
            .unwrap()
            .with_style(style)
            .unwrap();
        let mut tape = Tape::recording();
        let losses = model.losses(&x, &mut tape);
        engine.clip(tape.take(), &losses).unwrap().sums["c1.weight"].copy()
    };
    let flat = sums(ClippingStyle::Flat);
    for style in [
        ClippingStyle::PerLayer,
        ClippingStyle::Automatic { stability: 0.01 },
    ] {
        let gap = (&flat - sums(style)).abs().max().double_value(&[]);
        assert!(gap > 1e-6, "{style:?} equals flat clipping ({gap})");
    }
    assert!(matches!(
        ClippingEngine::new(&vs, 1.0)
            .unwrap()
            .with_style(ClippingStyle::Automatic { stability: 0.0 }),
        Err(CoreError::Stability(_))
    ));
}

/// Whatever the style, no example's clipped gradient is longer than C: each example alone,
/// batch of one, through the engine.
#[test]
fn every_style_bounds_each_example_by_the_clip_norm() {
    tch::manual_seed(22);
    let vs = vs_f64();
    let model = SmallCnn::new(&vs, true);
    let x = Tensor::randn([6, 3, 7, 7], (Kind::Double, Device::Cpu)) * 3.0;
    let clip = 0.3;
    for style in [
        ClippingStyle::Flat,
        ClippingStyle::PerLayer,
        ClippingStyle::Automatic { stability: 0.01 },
    ] {
        let engine = ClippingEngine::new(&vs, clip)
            .unwrap()
            .with_style(style)
            .unwrap();
        for i in 0..6 {
            let mut tape = Tape::recording();
            let losses = model.losses(&x.narrow(0, i, 1), &mut tape);
            let sums = engine.clip(tape.take(), &losses).unwrap().sums;
            let norm = sums
                .values()
                .map(|s| s.square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            assert!(
                norm <= clip * (1.0 + 1e-12),
                "{style:?}: example {i}: {norm}"
            );
        }
    }
}

/// Layers reading the same input share its Gram matrix in the ghost norm; a layer reading
/// another tensor of the same shape must not. Exact against the batch-size-1 reference in f64.
#[test]
fn layers_sharing_an_input_share_its_gram_matrix_exactly() {
    tch::manual_seed(23);
    let vs = vs_f64();
    let root = vs.root();
    // T = 3, d = p = 16: 2 T^2 < p d, so every layer takes the ghost norm.
    let layers: Vec<DpLinear> = ["q", "k", "v", "w"]
        .iter()
        .map(|n| DpLinear::new(&(&root / *n), 16, 16, true))
        .collect();
    let losses = |x: &Tensor, tape: &mut Tape| {
        let q = layers[0].forward(x, tape);
        let k = layers[1].forward(x, tape);
        let v = layers[2].forward(&x.shallow_clone(), tape);
        let w = layers[3].forward(&(x * 2.0 + 0.5), tape);
        (q * k + v.sin() + w.tanh()).sum_dim_intlist([1, 2].as_slice(), false, Kind::Double)
    };
    let x = Tensor::randn([4, 3, 16], (Kind::Double, Device::Cpu));
    let engine = ClippingEngine::new(&vs, 1.0).unwrap();
    let mut tape = Tape::recording();
    let l = losses(&x, &mut tape);
    let batch = engine.clip(tape.take(), &l).unwrap();
    let loss_of = |i: i64| losses(&x.narrow(0, i, 1), &mut Tape::off()).sum(Kind::Double);
    let (norms, sums) = batch_size_one_reference(&vs, 4, loss_of, 1.0);
    assert!(norms.iter().any(|&n| n > 1.0));
    assert_matches_reference(&batch, &norms, &sums, "shared input");
}
