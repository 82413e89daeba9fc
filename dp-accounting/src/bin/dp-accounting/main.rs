//! `dp-accounting`: privacy budgets for DP-SGD from the command line (no libtorch needed).

mod audit;
mod common;
mod curve;
mod epsilon;
mod mf;
mod sigma;
mod steps;
mod tan;
mod tune;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::Failure;

/// Privacy accounting for DP-SGD: epsilon for a training plan, the noise for a target, the
/// steps a budget allows, epsilon-versus-steps curves, the cost of private hyperparameter
/// tuning, TAN-equivalent configurations, correlated-noise (matrix factorization) strategies,
/// and epsilon estimates from privacy audits.
///
/// The mechanism is the Poisson-subsampled Gaussian: each step includes every record
/// independently with probability q (the sampling rate), clips each record's gradient to norm C
/// and adds Gaussian noise of standard deviation sigma * C (sigma is the noise multiplier).
/// Neighbouring datasets differ by adding or removing one record.
///
/// Examples:
///   dp-accounting epsilon --sampling-rate 0.01 --noise-multiplier 1 --steps 10000 --delta 1e-5
///   dp-accounting sigma --dataset-size 60000 --batch-size 256 --epochs 10 --epsilon 3 --delta 1e-5
///   dp-accounting steps --sampling-rate 0.004 --noise-multiplier 1.1 --epsilon 8 --delta 1e-5
///   dp-accounting curve --sampling-rate 0.01 --noise-multiplier 1 --steps 10000 --delta 1e-5 --svg eps.svg
///   dp-accounting tune --sampling-rate 0.01 --noise-multiplier 1 --steps 1000 --delta 1e-5 --runs poisson --mean 10
///   dp-accounting tan --dataset-size 50000 --batch-size 4096 --noise-multiplier 3 --steps 2500 --delta 1e-5
///   dp-accounting mf --steps 1024 --epochs 4 --strategy banded --noise-multiplier 1 --delta 1e-5
///   dp-accounting audit --fp 50 --fn 400 --positives 1000 --negatives 1000 --delta 1e-5 --level 0.95
#[derive(Parser, Debug)]
#[command(name = "dp-accounting", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Epsilon spent by a number of steps with a given noise multiplier.
    Epsilon(epsilon::EpsilonArgs),
    /// The smallest noise multiplier that meets a target epsilon (always meets it).
    Sigma(sigma::SigmaArgs),
    /// The largest number of steps a noise multiplier allows within a target epsilon.
    Steps(steps::StepsArgs),
    /// Total epsilon of private hyperparameter tuning: a random number of training runs, only
    /// the best released (Papernot and Steinke 2022; RDP accountant).
    Tune(tune::TuneArgs),
    /// Configurations with the same total amount of noise (TAN, Sander et al. 2023): batch and
    /// noise scaled together at fixed steps, with each one's epsilon (RDP accountant).
    Tan(tan::TanArgs),
    /// Estimate epsilon from a membership-inference experiment's counts: a Bayesian posterior
    /// (Zanella-Béguelin et al. 2023) next to the Clopper–Pearson and Jeffreys bounds.
    ///
    /// Each trial trains with (positive) or without (negative) a canary, and an attack guesses
    /// which. The results bound the epsilon of the mechanism from below for this attack; a
    /// lower bound above the accountant's epsilon means something is broken.
    Audit(audit::AuditArgs),
    /// Correlated noise by matrix factorization: the sensitivity, error (rmse) and epsilon of a
    /// noise strategy, next to DP-SGD's.
    ///
    /// Training computes linear functions A X of the gradient sums (prefix sums for SGD). A
    /// strategy factors A = B C with C lower-triangular; the optimizer then sees
    /// x_t + (C^{-1} z)_t, where every z_t has standard deviation
    /// noise multiplier x clip x sens(C). C = I is DP-SGD; other strategies correlate the noise
    /// across steps so that it cancels in the sums, lowering the error at the same privacy.
    ///
    /// sens(C) covers each example taking part at most K = --epochs times, at least
    /// b = floor(n / K) steps apart (one fixed data order for all epochs). Unamplified, the
    /// whole run is one Gaussian mechanism with the noise multiplier, whatever C: epsilon
    /// depends only on sigma and delta; the strategy changes the error. Banded strategies may
    /// also be amplified by cyclic Poisson sampling (--sampling-rate).
    ///
    /// Examples:
    ///   dp-accounting mf --steps 1024 --epochs 4 --strategy banded
    ///   dp-accounting mf --steps 10000 --strategy blt --buffers 4 --noise-multiplier 1 --delta 1e-5
    ///   dp-accounting mf --steps 1000 --strategy banded --bands 10 --sampling-rate 0.01 --noise-multiplier 1 --delta 1e-5
    #[command(verbatim_doc_comment)]
    Mf(mf::MfArgs),
    /// Epsilon versus steps for one or more accountants, as CSV or JSON and an SVG plot.
    Curve(curve::CurveArgs),
}

fn main() -> ExitCode {
    let cli: Cli = match dp_accounting::cli::parse("dp-accounting") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Epsilon(args) => args.run(),
        Command::Sigma(args) => args.run(),
        Command::Steps(args) => args.run(),
        Command::Tune(args) => args.run(),
        Command::Tan(args) => args.run(),
        Command::Audit(args) => args.run(),
        Command::Mf(args) => mf::run(args),
        Command::Curve(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("dp-accounting: error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("dp-accounting: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
