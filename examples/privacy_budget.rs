//! Privacy budgets with `dp-accounting` as a library (it needs no libtorch).
//!
//! `cargo run --release --example privacy_budget`
//!
//! 1. the epsilon of a DP-SGD plan under the RDP and PRV accountants;
//! 2. the noise multiplier that meets a target epsilon (one-sided: never above the target);
//! 3. the epsilon of a run made of two phases with different batches and noise.

use dp_accounting::{
    calibrate_noise_multiplier, dp_sgd_epsilon, round_up, AccountantKind, AccountingError, DpEvent,
};

fn main() -> Result<(), AccountingError> {
    // 60000 examples, expected batches of 256, 10 epochs, noise multiplier 1, delta 1e-5.
    let (n, batch, epochs, delta): (f64, f64, f64, f64) = (60_000.0, 256.0, 10.0, 1e-5);
    let q = batch / n;
    let steps = (epochs / q).ceil() as u64;
    let prv = AccountantKind::Prv {
        epsilon_error: 0.01,
    };
    for (name, kind) in [("RDP", AccountantKind::Rdp), ("PRV", prv)] {
        let epsilon = dp_sgd_epsilon(kind, q, 1.0, steps, delta)?;
        println!(
            "{steps} steps, q = {q:.5}, sigma = 1: epsilon {} ({name})",
            round_up(epsilon, 3)
        );
    }

    let calibration = calibrate_noise_multiplier(prv, q, steps, 3.0, delta)?;
    println!(
        "epsilon 3 needs noise multiplier {:.4} (it gives epsilon {})",
        calibration.noise_multiplier,
        round_up(calibration.epsilon, 3)
    );

    // A run in two phases: 1000 steps of batches of 256 at sigma 1.1, then 500 of 1024 at 2.
    let mut accountant = prv.build()?;
    accountant.compose(&DpEvent::dp_sgd(256.0 / n, 1.1, 1000))?;
    accountant.compose(&DpEvent::dp_sgd(1024.0 / n, 2.0, 500))?;
    println!(
        "two phases: epsilon {}",
        round_up(accountant.epsilon(delta)?, 3)
    );
    Ok(())
}
