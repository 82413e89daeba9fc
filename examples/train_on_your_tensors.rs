//! Private training of a small model on your own tensors, from Rust.
//!
//! `cargo run --release --example train_on_your_tensors`
//!
//! The data here are 4000 points of two classes in 20 dimensions; any `(N, ...)` inputs and
//! `(N)` integer labels will do. The model is built from DP layers, which record what the
//! clipping engine needs on a tape: a trainable parameter outside them is refused by name. The
//! configuration comes from the privacy target: the noise is calibrated to it.

use dp_core::layers::DpLinear;
use dp_core::{NoiseMode, PrivacyRng, Tape};
use dp_train::optimizer::Optimizer;
use dp_train::{evaluate_accuracy, train, Batches, DpSgdConfig, PrivacyStatement, PrivacyTarget};
use tch::{nn, Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Your data: class 1 is shifted by +0.5 in every coordinate, class 0 by -0.5.
    tch::manual_seed(0);
    let (n, dim) = (4000, 20);
    let labels = Tensor::randint(2, [n], (Kind::Int64, Device::Cpu));
    let shift = (labels.to_kind(Kind::Float) - 0.5).unsqueeze(1);
    let inputs = Tensor::randn([n, dim], (Kind::Float, Device::Cpu)) + shift;
    let (train_n, test_n) = (3000, n - 3000);
    let (train_inputs, train_labels) = (inputs.narrow(0, 0, train_n), labels.narrow(0, 0, train_n));
    let (test_inputs, test_labels) = (
        inputs.narrow(0, train_n, test_n),
        labels.narrow(0, train_n, test_n),
    );
    let train_data = Batches {
        inputs: &train_inputs,
        labels: &train_labels,
    };
    let test_data = Batches {
        inputs: &test_inputs,
        labels: &test_labels,
    };

    // A model of DP layers.
    let vs = nn::VarStore::new(Device::Cpu);
    let hidden = DpLinear::new(&(vs.root() / "hidden"), dim, 32, true);
    let out = DpLinear::new(&(vs.root() / "out"), 32, 2, true);
    let logits = |x: &Tensor, tape: &mut Tape| out.forward(&hidden.forward(x, tape).relu(), tape);

    // (1, 1e-5)-DP over the 3000 training examples: 5 epochs of expected batches of 300.
    let target = PrivacyTarget {
        epsilon: 1.0,
        delta: 1e-5,
        dataset_size: train_n as usize,
        expected_batch_size: 300.0,
        epochs: 5.0,
        clip_norm: 1.0,
        noise: NoiseMode::Secure,
    };
    let config = DpSgdConfig {
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        ..DpSgdConfig::for_target(target, 0.5)?
    };
    println!(
        "{} steps at noise multiplier {:.3}",
        config.steps, config.noise_multiplier
    );

    // Secure noise from the operating system's generator (PrivacyRng::from_seed for tests).
    let mut rng = PrivacyRng::from_os();
    let summary = train(&vs, logits, train_data, &config, &mut rng, |_| {})?;
    let accuracy = evaluate_accuracy(logits, test_data, 256);
    println!("test accuracy {:.1}%", 100.0 * accuracy);
    let statement = PrivacyStatement::from_ledger(
        &summary.ledger,
        target.dataset_size,
        target.clip_norm,
        None,
    )?;
    print!("{statement}");
    Ok(())
}
