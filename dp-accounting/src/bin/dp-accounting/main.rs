//! `dp-accounting`: privacy budgets for DP-SGD from the command line (no libtorch needed).

mod mf;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dp_accounting::audit::{estimate_epsilon, AuditCounts, AuditEstimate, FrequentistBounds};
use dp_accounting::plot::{line_chart, Frame, Series, XAxis};
use dp_accounting::{
    calibrate_noise_multiplier, max_steps, round_up, tan_table, Accountant, AccountantKind,
    AccountingError, DpEvent, FractionalSeries, PrvAccountant, RdpAccountant, RunCount,
    PRV_MIN_DELTA,
};
use dp_accounting::{quiet_print as print, quiet_println as println};
use serde_json::{json, Map, Value};

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
    Epsilon {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        length: Length,
        /// Noise standard deviation over the clip norm (sigma).
        #[arg(long, allow_hyphen_values = true)]
        noise_multiplier: f64,
        #[command(flatten)]
        choice: Choice,
    },
    /// The smallest noise multiplier that meets a target epsilon (always meets it).
    Sigma {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        length: Length,
        /// Target epsilon.
        #[arg(long, allow_hyphen_values = true)]
        epsilon: f64,
        #[command(flatten)]
        choice: Choice,
    },
    /// The largest number of steps a noise multiplier allows within a target epsilon.
    Steps {
        #[command(flatten)]
        common: Common,
        /// Noise standard deviation over the clip norm (sigma).
        #[arg(long, allow_hyphen_values = true)]
        noise_multiplier: f64,
        /// Target epsilon.
        #[arg(long, allow_hyphen_values = true)]
        epsilon: f64,
        #[command(flatten)]
        choice: Choice,
    },
    /// Total epsilon of private hyperparameter tuning: a random number of training runs, only
    /// the best released (Papernot and Steinke 2022; RDP accountant).
    Tune {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        length: Length,
        /// Noise multiplier of each run.
        #[arg(long, allow_hyphen_values = true)]
        noise_multiplier: f64,
        /// Distribution of the number of runs.
        #[arg(long, value_enum)]
        runs: Runs,
        /// Mean number of runs.
        #[arg(long, allow_hyphen_values = true)]
        mean: f64,
        /// Shape of the truncated negative binomial (0: logarithmic, 1: geometric).
        #[arg(long, allow_hyphen_values = true)]
        shape: Option<f64>,
    },
    /// Configurations with the same total amount of noise (TAN, Sander et al. 2023): batch and
    /// noise scaled together at fixed steps, with each one's epsilon (RDP accountant).
    Tan {
        /// Records in the dataset N.
        #[arg(long)]
        dataset_size: u64,
        /// Expected batch size B of the reference run.
        #[arg(long, allow_hyphen_values = true)]
        batch_size: f64,
        /// Noise multiplier of the reference run.
        #[arg(long, allow_hyphen_values = true)]
        noise_multiplier: f64,
        /// Steps S (the same in every row).
        #[arg(long)]
        steps: u64,
        /// Target delta.
        #[arg(long, allow_hyphen_values = true)]
        delta: f64,
        /// Scales k: each row runs batch k B with noise k sigma.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.0625,0.25,1,4",
            allow_hyphen_values = true
        )]
        scales: Vec<f64>,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Estimate epsilon from a membership-inference experiment's counts: a Bayesian posterior
    /// (Zanella-Béguelin et al. 2023) next to the Clopper–Pearson and Jeffreys bounds.
    ///
    /// Each trial trains with (positive) or without (negative) a canary, and an attack guesses
    /// which. The results bound the epsilon of the mechanism from below for this attack; a
    /// lower bound above the accountant's epsilon means something is broken.
    Audit {
        /// Negatives the attack called members (false positives).
        #[arg(long)]
        fp: u64,
        /// Positives the attack called non-members (false negatives).
        #[arg(long = "fn")]
        fn_: u64,
        /// Trials with the canary in training.
        #[arg(long)]
        positives: u64,
        /// Trials without it.
        #[arg(long)]
        negatives: u64,
        /// The delta of the privacy region, in [0, 1): 0 asks whether the run is pure epsilon-DP.
        #[arg(long, allow_hyphen_values = true)]
        delta: f64,
        /// Credible / confidence level.
        #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
        level: f64,
        /// Print JSON for scripts instead of a report.
        #[arg(long)]
        json: bool,
    },
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
    Curve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        length: Length,
        /// Noise standard deviation over the clip norm (sigma).
        #[arg(long, allow_hyphen_values = true)]
        noise_multiplier: f64,
        /// Accountants to compare, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "rdp,prv")]
        accountants: Vec<Kind>,
        /// Half-width of the PRV accountant's epsilon bracket.
        #[arg(long, allow_hyphen_values = true, default_value_t = dp_accounting::DEFAULT_PRV_EPSILON_ERROR)]
        epsilon_error: f64,
        /// Number of points between 1 and the last step (log-spaced).
        #[arg(long, default_value_t = 25)]
        points: usize,
        /// Write the curve as CSV to this file ("-" for standard output).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Write an SVG plot to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

/// The sampling rate and delta shared by every command.
#[derive(Args, Debug)]
struct Common {
    /// Probability q that a record joins a step's batch (Poisson sampling).
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["dataset_size", "batch_size"], required_unless_present = "dataset_size")]
    sampling_rate: Option<f64>,
    /// Records in the dataset N (with --batch-size: q = B / N).
    #[arg(long, requires = "batch_size")]
    dataset_size: Option<u64>,
    /// Expected batch size B (with --dataset-size).
    #[arg(long, allow_hyphen_values = true, requires = "dataset_size")]
    batch_size: Option<f64>,
    /// Target delta (take it well below 1/N).
    #[arg(long, allow_hyphen_values = true)]
    delta: f64,
    /// Print JSON for scripts instead of a statement.
    #[arg(long)]
    json: bool,
}

/// How long training runs.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Length {
    /// Number of steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Passes over the data in expectation: steps = ceil(epochs / q).
    #[arg(long, allow_hyphen_values = true)]
    epochs: Option<f64>,
}

/// Which accountant answers.
#[derive(Args, Debug)]
struct Choice {
    /// rdp: Rényi DP (fast, looser); prv: PRV/FFT (tighter, reports the upper end of its
    /// error bracket).
    #[arg(long, value_enum, default_value_t = Kind::Prv)]
    accountant: Kind,
    /// Half-width of the PRV accountant's epsilon bracket.
    #[arg(long, allow_hyphen_values = true, default_value_t = dp_accounting::DEFAULT_PRV_EPSILON_ERROR)]
    epsilon_error: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Runs {
    /// K ~ Poisson(mean).
    Poisson,
    /// K ~ truncated negative binomial(shape, mean).
    TruncatedNegativeBinomial,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Rdp,
    Prv,
}

impl Kind {
    fn with_error(self, epsilon_error: f64) -> AccountantKind {
        match self {
            Kind::Rdp => AccountantKind::Rdp,
            Kind::Prv => AccountantKind::Prv { epsilon_error },
        }
    }
}

/// A user mistake (exit code 2) or a failure (exit code 1), printed as one line.
enum Failure {
    Usage(String),
    Other(String),
}

impl From<AccountingError> for Failure {
    fn from(e: AccountingError) -> Self {
        match e {
            AccountingError::InvalidParameter { .. }
            | AccountingError::Unsupported { .. }
            | AccountingError::UnreachableTarget { .. }
            | AccountingError::TargetMetWithoutNoise { .. }
            | AccountingError::TooManySteps { .. }
            | AccountingError::PrvBracketTooWide { .. }
            | AccountingError::BeyondPrecision(_) => Failure::Usage(e.to_string()),
            AccountingError::Numerical(_) => Failure::Other(e.to_string()),
        }
    }
}

fn usage(flag: &str, message: impl std::fmt::Display) -> Failure {
    Failure::Usage(format!("--{flag}: {message}"))
}

fn main() -> ExitCode {
    let cli: Cli = match dp_accounting::cli::parse("dp-accounting") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli.command) {
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

/// Most trials of each kind `audit` accepts: far beyond any experiment (each trial is a training
/// run or a canary), and where its time stays bounded: the beta quantiles' cost grows with the
/// counts (2 s at 1e7 trials with half of them errors, 40 s at 1e8), and at 1e14 the credible
/// interval's upper end overflows.
const MAX_AUDIT_TRIALS: u64 = 10_000_000;

/// A validated plan: sampling rate, delta and (where given) steps.
struct Plan {
    q: f64,
    delta: f64,
    json: bool,
}

fn finite_positive(flag: &str, v: f64) -> Result<f64, Failure> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(usage(flag, format!("must be a finite number > 0, got {v}")))
    }
}

/// `B / N` for a dataset of `n` records and expected batch size `b`, validated.
fn batch_fraction(n: u64, b: f64) -> Result<f64, Failure> {
    if n == 0 {
        return Err(usage("dataset-size", "must be at least 1"));
    }
    let b = finite_positive("batch-size", b)?;
    if b > n as f64 {
        return Err(usage(
            "batch-size",
            format!("{b} exceeds the dataset size {n}"),
        ));
    }
    Ok(b / n as f64)
}

fn plan(common: &Common) -> Result<Plan, Failure> {
    let q = match (common.sampling_rate, common.dataset_size, common.batch_size) {
        (Some(q), _, _) => q,
        (None, Some(n), Some(b)) => batch_fraction(n, b)?,
        _ => {
            return Err(Failure::Usage(
                "give --sampling-rate, or --dataset-size with --batch-size".into(),
            ))
        }
    };
    if !(q.is_finite() && q > 0.0 && q <= 1.0) {
        return Err(usage(
            "sampling-rate",
            format!("must be in (0, 1], got {q}"),
        ));
    }
    let delta = common.delta;
    if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
        return Err(usage("delta", format!("must be in (0, 1), got {delta}")));
    }
    if let Some(n) = common.dataset_size {
        warn_delta(delta, n);
    }
    Ok(Plan {
        q,
        delta,
        json: common.json,
    })
}

/// Warns (on stderr, once) when delta is at least 1/N: a mechanism that publishes one random
/// record whole meets such a delta, so the guarantee says little (take delta well below 1/N).
fn warn_delta(delta: f64, n: u64) {
    if delta * n as f64 >= 1.0 {
        eprintln!("dp-accounting: warning: delta {delta:e} is at least 1/N = 1/{n}: publishing one random record whole meets it; take delta well below 1/N");
    }
}

fn steps_of(length: &Length, q: f64) -> Result<u64, Failure> {
    match (length.steps, length.epochs) {
        (Some(0), _) => Err(usage("steps", "must be at least 1")),
        (Some(s), _) => Ok(s),
        (None, Some(e)) => {
            let e = finite_positive("epochs", e)?;
            Ok((e / q).ceil() as u64)
        }
        (None, None) => Err(Failure::Usage("give --steps or --epochs".into())),
    }
}

/// The accountant that answers, and why it is not the one asked for when it is not: the PRV
/// accountant's floating-point FFT resolves delta only down to [`PRV_MIN_DELTA`]; below it the
/// RDP accountant, whose bound holds at every delta, answers.
fn accountant(choice: &Choice, delta: f64) -> Result<(AccountantKind, Option<String>), Failure> {
    let error = finite_positive("epsilon-error", choice.epsilon_error)?;
    Ok(match choice.accountant.with_error(error) {
        AccountantKind::Prv { .. } if delta < PRV_MIN_DELTA => (
            AccountantKind::Rdp,
            Some(format!(
                "the PRV accountant resolves delta down to {PRV_MIN_DELTA:e} only (floating-point FFT): the RDP accountant answers for delta {delta:e}"
            )),
        ),
        kind => (kind, None),
    })
}

/// Adds the note saying which accountant answered, if any, to a report's fields.
fn with_note(mut extra: Map<String, Value>, note: Option<String>) -> Map<String, Value> {
    if let Some(note) = note {
        extra.insert("note".into(), json!(note));
    }
    extra
}

/// Epsilon with what each accountant adds to the JSON (order, or the PRV bracket).
fn epsilon_report(
    kind: AccountantKind,
    q: f64,
    sigma: f64,
    steps: u64,
    delta: f64,
) -> Result<(f64, Map<String, Value>), Failure> {
    let event = DpEvent::dp_sgd(q, sigma, steps);
    let mut extra = Map::new();
    let epsilon = match kind {
        AccountantKind::Rdp => {
            let mut acc = RdpAccountant::default();
            acc.compose(&event)?;
            let e = acc.epsilon_and_order(delta)?;
            extra.insert("order".into(), json!(e.order));
            e.epsilon
        }
        AccountantKind::Prv { epsilon_error } => {
            let mut acc = PrvAccountant::new(epsilon_error)?;
            acc.compose(&event)?;
            let b = acc.epsilon_bounds(delta)?;
            extra.insert("epsilon_lower".into(), number(b.lower));
            extra.insert("epsilon_estimate".into(), number(b.estimate));
            extra.insert("epsilon_upper".into(), number(b.upper));
            extra.insert("epsilon_error".into(), json!(epsilon_error));
            b.upper
        }
    };
    Ok((epsilon, extra))
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Epsilon {
            common,
            length,
            noise_multiplier,
            choice,
        } => {
            let p = plan(&common)?;
            let steps = steps_of(&length, p.q)?;
            let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
            let (kind, note) = accountant(&choice, p.delta)?;
            let (epsilon, extra) = epsilon_report(kind, p.q, sigma, steps, p.delta)?;
            emit(
                &p,
                kind,
                sigma,
                steps,
                epsilon,
                with_note(extra, note),
                None,
            );
        }
        Command::Sigma {
            common,
            length,
            epsilon,
            choice,
        } => {
            let p = plan(&common)?;
            let steps = steps_of(&length, p.q)?;
            let target = finite_positive("epsilon", epsilon)?;
            let (kind, note) = accountant(&choice, p.delta)?;
            let cal = calibrate_noise_multiplier(kind, p.q, steps, target, p.delta)?;
            let (achieved, extra) =
                epsilon_report(kind, p.q, cal.noise_multiplier, steps, p.delta)?;
            let headline = format!(
                "noise multiplier {:.6} (rounded up) meets epsilon {target}: it gives epsilon {}",
                round_up(cal.noise_multiplier, 6),
                shown(achieved)
            );
            emit(
                &p,
                kind,
                cal.noise_multiplier,
                steps,
                achieved,
                with_note(extra, note),
                Some(headline),
            );
        }
        Command::Steps {
            common,
            noise_multiplier,
            epsilon,
            choice,
        } => {
            let p = plan(&common)?;
            let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
            let target = finite_positive("epsilon", epsilon)?;
            let (kind, note) = accountant(&choice, p.delta)?;
            let steps = max_steps(kind, p.q, sigma, target, p.delta)?;
            if steps == 0 {
                return Err(usage(
                    "epsilon",
                    format!("not even one step fits within epsilon {target}"),
                ));
            }
            let (achieved, extra) = epsilon_report(kind, p.q, sigma, steps, p.delta)?;
            let headline = format!(
                "at most {steps} steps ({:.2} epochs) fit within epsilon {target}",
                steps as f64 * p.q
            );
            emit(
                &p,
                kind,
                sigma,
                steps,
                achieved,
                with_note(extra, note),
                Some(headline),
            );
        }
        Command::Tune {
            common,
            length,
            noise_multiplier,
            runs,
            mean,
            shape,
        } => {
            let p = plan(&common)?;
            let steps = steps_of(&length, p.q)?;
            let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
            if !(mean.is_finite() && mean >= 1.0) {
                return Err(usage("mean", format!("must be at least 1, got {mean}")));
            }
            let runs = match (runs, shape) {
                (Runs::Poisson, None) => RunCount::Poisson,
                (Runs::Poisson, Some(_)) => {
                    return Err(usage(
                        "shape",
                        "applies to --runs truncated-negative-binomial only",
                    ))
                }
                (Runs::TruncatedNegativeBinomial, Some(eta)) if eta.is_finite() && eta >= 0.0 => {
                    RunCount::TruncatedNegativeBinomial { shape: eta }
                }
                (Runs::TruncatedNegativeBinomial, Some(eta)) => {
                    return Err(usage(
                        "shape",
                        format!("must be a finite number >= 0, got {eta}"),
                    ))
                }
                (Runs::TruncatedNegativeBinomial, None) => {
                    return Err(usage(
                        "shape",
                        "is required with --runs truncated-negative-binomial",
                    ))
                }
            };
            let single_event = DpEvent::dp_sgd(p.q, sigma, steps);
            let mut single = RdpAccountant::default();
            single.compose(&single_event)?;
            let single_eps = single.epsilon(p.delta)?;
            let mut tuned = RdpAccountant::default();
            tuned.compose(&DpEvent::RepeatAndSelect {
                event: Box::new(single_event),
                mean,
                runs,
            })?;
            let tuned_eps = tuned.epsilon_and_order(p.delta)?;
            if p.json {
                let mut m = common_json(&p, AccountantKind::Rdp, sigma);
                m.insert("steps".into(), json!(steps));
                m.insert("epsilon".into(), number(tuned_eps.epsilon));
                m.insert("order".into(), json!(tuned_eps.order));
                m.insert("single_run_epsilon".into(), number(single_eps));
                m.insert(
                    "runs".into(),
                    serde_json::to_value(runs).unwrap_or(Value::Null),
                );
                m.insert("mean_runs".into(), json!(mean));
                println!("{}", Value::Object(m));
            } else {
                let what = match runs {
                    RunCount::Poisson => format!("Poisson with mean {mean}"),
                    RunCount::TruncatedNegativeBinomial { shape } => {
                        format!("truncated negative binomial, shape {shape}, mean {mean}")
                    }
                };
                println!(
                    "(epsilon, delta) = ({}, {:e}) for the whole search   epsilon rounded up",
                    shown(tuned_eps.epsilon),
                    p.delta
                );
                println!(
                    "  one run     epsilon {} ({steps} steps, q = {}, noise multiplier {sigma})",
                    shown(single_eps),
                    p.q
                );
                println!("  runs        a random number K of runs, {what}; only the best run is released");
                println!(
                    "  accountant  RDP with the Papernot-Steinke bound, optimal order {}",
                    tuned_eps.order
                );
                println!("  note        draw K at random and release nothing else: a fixed number of runs costs more");
            }
        }
        Command::Tan {
            dataset_size,
            batch_size,
            noise_multiplier,
            steps,
            delta,
            scales,
            json: as_json,
        } => {
            batch_fraction(dataset_size, batch_size)?;
            let b = batch_size;
            let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
            if steps == 0 {
                return Err(usage("steps", "must be at least 1"));
            }
            if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
                return Err(usage("delta", format!("must be in (0, 1), got {delta}")));
            }
            warn_delta(delta, dataset_size);
            for &k in &scales {
                if !(k.is_finite() && k > 0.0 && k * b <= dataset_size as f64) {
                    return Err(usage(
                        "scales",
                        format!("scale {k} must be > 0 with k * batch size <= dataset size"),
                    ));
                }
            }
            let table = tan_table(
                dataset_size,
                b,
                sigma,
                steps,
                delta,
                &scales,
                FractionalSeries::Signed,
            )?;
            if as_json {
                let rows: Vec<Value> = table
                    .rows
                    .iter()
                    .map(|r| {
                        let mut row = serde_json::to_value(r).unwrap_or(Value::Null);
                        row["epsilon"] = number(r.epsilon);
                        row
                    })
                    .collect();
                let out = json!({
                    "dataset_size": dataset_size, "steps": steps, "delta": delta,
                    "eta": table.eta, "tan_limit_epsilon": number(table.tan_limit_epsilon), "rows": rows,
                });
                println!("{out}");
            } else {
                println!("TAN eta = sigma / (q sqrt(S)) = {:.4}; effective noise sigma/B = {:.3e}; epsilon tends to {} as k grows (delta {delta:e}, {steps} steps)",
                    table.eta, sigma / b, shown(table.tan_limit_epsilon));
                println!(
                    "{:>8} {:>10} {:>10} {:>12} {:>10}  note",
                    "scale", "batch", "sigma", "q", "epsilon"
                );
                for r in &table.rows {
                    let note = if r.equivalence_holds {
                        ""
                    } else {
                        "sigma < 2: far less private than TAN suggests"
                    };
                    println!(
                        "{:>8} {:>10} {:>10.4} {:>12.6} {:>10}  {note}",
                        r.scale,
                        r.batch_size,
                        r.noise_multiplier,
                        r.sampling_rate,
                        shown(r.epsilon)
                    );
                }
                println!("Scaled-down runs simulate the reference's training at lower cost; their own epsilon is the one shown, and tuning on private data needs its own bound (see `dp-accounting tune`).");
            }
        }
        Command::Audit {
            fp,
            fn_,
            positives,
            negatives,
            delta,
            level,
            json: as_json,
        } => {
            if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
                return Err(usage("delta", format!("must be in [0, 1), got {delta}")));
            }
            if !(level.is_finite() && level > 0.0 && level < 1.0) {
                return Err(usage("level", format!("must be in (0, 1), got {level}")));
            }
            for (flag, trials) in [("positives", positives), ("negatives", negatives)] {
                if !(1..=MAX_AUDIT_TRIALS).contains(&trials) {
                    return Err(usage(
                        flag,
                        format!("must be between 1 and {MAX_AUDIT_TRIALS:e} (the posterior's cost grows with the counts), got {trials}"),
                    ));
                }
            }
            if fp > negatives {
                return Err(usage(
                    "fp",
                    format!("{fp} false positives exceed the {negatives} negatives"),
                ));
            }
            if fn_ > positives {
                return Err(usage(
                    "fn",
                    format!("{fn_} false negatives exceed the {positives} positives"),
                ));
            }
            let counts = AuditCounts {
                false_positives: fp,
                false_negatives: fn_,
                positives,
                negatives,
            };
            let e = estimate_epsilon(counts, delta, level)?;
            if as_json {
                println!("{}", audit_json(&e));
            } else {
                print_audit(&e);
            }
        }
        Command::Mf(args) => mf::run(args)?,
        Command::Curve {
            common,
            length,
            noise_multiplier,
            accountants,
            epsilon_error,
            points,
            csv,
            svg,
        } => {
            let p = plan(&common)?;
            if p.json && csv.as_ref().is_some_and(|c| c.as_os_str() == "-") {
                return Err(usage(
                    "csv",
                    "'-' (standard output) cannot be combined with --json: give a file",
                ));
            }
            let last = steps_of(&length, p.q)?;
            let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
            let error = finite_positive("epsilon-error", epsilon_error)?;
            if points < 2 {
                return Err(usage("points", "must be at least 2"));
            }
            let grid = log_spaced_steps(last, points);
            let mut columns = Vec::new();
            for kind in &accountants {
                let kind = kind.with_error(error);
                let values = grid
                    .iter()
                    .map(|&s| epsilon_report(kind, p.q, sigma, s, p.delta).map(|r| r.0))
                    .collect::<Result<Vec<f64>, Failure>>()?;
                columns.push((kind.name(), values));
            }
            write_curve(&p, sigma, &grid, &columns, csv, svg)?;
        }
    }
    Ok(())
}

/// About `points` distinct step counts from 1 to `last`, evenly spaced in log scale.
fn log_spaced_steps(last: u64, points: usize) -> Vec<u64> {
    let mut steps: Vec<u64> = (0..points)
        .map(|i| (last as f64).powf(i as f64 / (points - 1) as f64).round() as u64)
        .collect();
    steps.push(last);
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// Epsilon as people see it: rounded up, to three decimals or three significant digits.
fn shown(epsilon: f64) -> String {
    if !epsilon.is_finite() {
        return "infinite".into();
    }
    let digits = if epsilon >= 1.0 || epsilon == 0.0 {
        3
    } else {
        (2 - epsilon.log10().floor() as i32).max(3)
    };
    format!("{:.*}", digits as usize, round_up(epsilon, digits))
}

fn common_json(p: &Plan, kind: AccountantKind, sigma: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("accountant".into(), json!(kind.name()));
    m.insert("sampling_rate".into(), json!(p.q));
    m.insert("noise_multiplier".into(), json!(sigma));
    m.insert("delta".into(), json!(p.delta));
    m.insert("neighbouring_relation".into(), json!("add_or_remove_one"));
    m.insert("sampling".into(), json!("poisson"));
    m
}

fn emit(
    p: &Plan,
    kind: AccountantKind,
    sigma: f64,
    steps: u64,
    epsilon: f64,
    extra: Map<String, Value>,
    headline: Option<String>,
) {
    if p.json {
        let mut m = common_json(p, kind, sigma);
        m.insert("steps".into(), json!(steps));
        m.insert("epsilon".into(), number(epsilon));
        m.extend(extra);
        println!("{}", Value::Object(m));
        return;
    }
    if let Some(h) = headline {
        println!("{h}");
    }
    let how = match kind {
        AccountantKind::Rdp => format!(
            "RDP accountant (Mironov et al. 2019), optimal order {}",
            extra.get("order").and_then(Value::as_f64).unwrap_or(f64::NAN)
        ),
        AccountantKind::Prv { epsilon_error } => format!(
            "PRV accountant (Gopi et al. 2021): true epsilon in [{}, {}] (estimate {}, error {epsilon_error}); the upper end is reported",
            shown(extra["epsilon_lower"].as_f64().unwrap_or(0.0)),
            shown(epsilon),
            shown(extra["epsilon_estimate"].as_f64().unwrap_or(0.0))
        ),
    };
    println!(
        "(epsilon, delta) = ({}, {:e})   epsilon rounded up",
        shown(epsilon),
        p.delta
    );
    println!("  mechanism   {steps} steps of the Poisson-subsampled Gaussian: sampling rate q = {}, noise multiplier {sigma}", p.q);
    println!("  accountant  {how}");
    if let Some(note) = extra.get("note").and_then(Value::as_str) {
        println!("  note        {note}");
    }
    println!("  neighbours  add/remove one record (the guarantee is per record)");
    println!("  sampling    assumes true Poisson sampling (each record joins each batch independently with probability q); shuffled fixed-size batches are a different mechanism");
    println!("  depends on  q, the noise multiplier, the number of steps and delta");
    println!("  not on      the model, the learning rate, the data, or the clip norm itself (the noise scales with it)");
}

/// JSON number, or the string "inf" for infinity: every command writes an infinite epsilon
/// the same way (JSON has no infinity; serde would write null).
fn number(x: f64) -> Value {
    if x.is_infinite() {
        json!("inf")
    } else {
        json!(x)
    }
}

fn audit_json(e: &AuditEstimate) -> Value {
    let freq = |f: &FrequentistBounds| {
        json!({
            "eps_lo_one_sided": number(f.eps_lo_one_sided),
            "eps_lo_two_sided": number(f.eps_lo_two_sided),
            "eps_hi_two_sided": number(f.eps_hi_two_sided),
            "rate_bounds_one_sided": {"fpr": f.rate_bounds_one_sided[0], "fnr": f.rate_bounds_one_sided[1]},
            "rate_bounds_two_sided": {"fpr": f.rate_bounds_two_sided[0], "fnr": f.rate_bounds_two_sided[1]},
        })
    };
    json!({
        "fp": e.counts.false_positives, "fn": e.counts.false_negatives,
        "positives": e.counts.positives, "negatives": e.counts.negatives,
        "delta": e.delta, "level": e.level, "eps_plug_in": number(e.eps_plug_in),
        "bayes": {
            "eps_lo_one_sided": number(e.bayes.eps_lo_one_sided),
            "eps_lo_two_sided": number(e.bayes.eps_lo_two_sided),
            "eps_hi_two_sided": number(e.bayes.eps_hi_two_sided),
            "posterior_median": number(e.bayes.posterior_median),
            "prob_eps_is_zero": e.bayes.prob_eps_is_zero,
        },
        "clopper_pearson": freq(&e.clopper_pearson),
        "jeffreys": freq(&e.jeffreys),
    })
}

fn print_audit(e: &AuditEstimate) {
    let c = e.counts;
    let pct = 100.0 * e.level;
    // Lower bounds are rounded down here: they claim privacy was at least this bad.
    let down = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).floor() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    let up = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).ceil() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    println!(
        "Membership inference: FPR {}/{} = {:.4}, FNR {}/{} = {:.4}; plug-in epsilon {} (delta {:e})",
        c.false_positives, c.negatives, c.false_positives as f64 / c.negatives as f64,
        c.false_negatives, c.positives, c.false_negatives as f64 / c.positives as f64,
        up(e.eps_plug_in), e.delta
    );
    println!("  Bayesian        P[epsilon >= {}] = {pct}%; {pct}% credible interval [{}, {}]; median {}; P[epsilon = 0] = {:.2e}",
        down(e.bayes.eps_lo_one_sided), down(e.bayes.eps_lo_two_sided), up(e.bayes.eps_hi_two_sided), down(e.bayes.posterior_median), e.bayes.prob_eps_is_zero);
    for (name, f) in [
        ("Clopper-Pearson", &e.clopper_pearson),
        ("Jeffreys", &e.jeffreys),
    ] {
        println!(
            "  {name:<16}epsilon >= {} at {pct}% confidence; two-sided [{}, {}]",
            down(f.eps_lo_one_sided),
            down(f.eps_lo_two_sided),
            up(f.eps_hi_two_sided)
        );
    }
    println!("  meaning         lower bounds on the mechanism's epsilon for this attack and canary, not estimates of it; a lower bound above the accountant's epsilon means a bug in clipping, noise, sampling or accounting");
}

fn write_curve(
    p: &Plan,
    sigma: f64,
    grid: &[u64],
    columns: &[(&str, Vec<f64>)],
    csv: Option<PathBuf>,
    svg: Option<PathBuf>,
) -> Result<(), Failure> {
    let write = |path: &PathBuf, text: &str| {
        std::fs::write(path, text)
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(path) = &csv {
        let mut text = String::from("steps");
        for (name, _) in columns {
            text.push_str(&format!(",epsilon_{name}"));
        }
        text.push('\n');
        for (i, s) in grid.iter().enumerate() {
            text.push_str(&s.to_string());
            for (_, values) in columns {
                text.push_str(&format!(",{}", values[i]));
            }
            text.push('\n');
        }
        if path.as_os_str() == "-" {
            print!("{text}");
        } else {
            write(path, &text)?;
        }
    }
    if let Some(path) = &svg {
        let series: Vec<Series<'_>> = columns
            .iter()
            .map(|(name, values)| Series {
                name,
                points: grid
                    .iter()
                    .zip(values)
                    .map(|(&s, &e)| (s as f64, e))
                    .collect(),
            })
            .collect();
        let title = format!(
            "epsilon vs steps (q = {}, sigma = {sigma}, delta = {:e})",
            p.q, p.delta
        );
        let frame = Frame {
            title: &title,
            x_label: "steps",
            y_label: "epsilon",
            x_axis: XAxis::Log,
        };
        write(path, &line_chart(&frame, &series, &[]))?;
    }
    if p.json {
        let rows: Vec<Value> = grid
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut row = Map::new();
                row.insert("steps".into(), json!(s));
                for (name, values) in columns {
                    row.insert(format!("epsilon_{name}"), number(values[i]));
                }
                Value::Object(row)
            })
            .collect();
        let mut m = Map::new();
        m.insert("sampling_rate".into(), json!(p.q));
        m.insert("noise_multiplier".into(), json!(sigma));
        m.insert("delta".into(), json!(p.delta));
        m.insert(
            "accountants".into(),
            json!(columns.iter().map(|c| c.0).collect::<Vec<_>>()),
        );
        m.insert("curve".into(), Value::Array(rows));
        println!("{}", Value::Object(m));
    } else if csv.as_ref().is_none_or(|c| c.as_os_str() != "-") {
        for (i, s) in grid.iter().enumerate() {
            let cells: Vec<String> = columns
                .iter()
                .map(|(n, v)| format!("{n} {}", shown(v[i])))
                .collect();
            println!("{s:>10} steps  {}", cells.join("  "));
        }
    }
    Ok(())
}
