//! Private fine-tuning of the pretrained MiniLM encoder from Rust, with the same plan as
//! `make demo` cut to 2000 examples and 2 epochs (about a minute on 2 cores).
//!
//! `cargo run --release --example finetune_encoder` (after `make setup`, which fetches the
//! model and the data)
//!
//! A plan is the TOML file `dp-train train` reads, with overrides; [`Job::load`] builds the
//! model (frozen blocks' outputs computed once) and the data, and [`train`] runs DP-SGD.

use dp_core::{PrivacyRng, Tape};
use dp_train::job::Job;
use dp_train::plan::TrainConfig;
use dp_train::{evaluate_accuracy, train, PrivacyStatement};
use tch::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/minilm_finetune.toml");
    let overrides = ["data.dataset_size=2000", "privacy.epochs=2"].map(String::from);
    let config = TrainConfig::from_toml(&std::fs::read_to_string(plan)?, &overrides)?;
    let resolved = config.resolve()?;
    let dp = config.dp_sgd_config(&resolved);
    let job = Job::load(&config, Device::cuda_if_available(), None, |_, _| {})?;
    let (trainable, total) = job.parameter_counts();
    println!(
        "{}: {trainable} of {total} parameters, {} steps at noise multiplier {:.3}",
        job.description, dp.steps, dp.noise_multiplier
    );
    let logits = |x: &Tensor, tape: &mut Tape| job.model.logits(x, tape);
    let mut rng = PrivacyRng::from_os();
    let summary = train(&job.vs, logits, job.train_data(), &dp, &mut rng, |step| {
        eprint!(
            "\rstep {} of {}  loss {:.3}",
            step.step, dp.steps, step.mean_loss
        );
    })?;
    eprintln!();
    let accuracy = evaluate_accuracy(logits, job.test_data(), 256);
    println!("test accuracy {:.2}%", 100.0 * accuracy);
    let statement = PrivacyStatement::from_ledger(
        &summary.ledger,
        config.data.dataset_size,
        config.privacy.clip_norm,
        None,
    )?;
    print!("{statement}");
    Ok(())
}
