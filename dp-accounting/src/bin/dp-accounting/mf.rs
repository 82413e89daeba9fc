//! `dp-accounting mf`: the sensitivity, error and epsilon of a correlated-noise strategy.

use clap::{Args, ValueEnum};
use dp_accounting::mf::{
    gaussian_epsilon, mean_loss_lower_bound, optimize_banded, optimize_blt, optimize_nu, Blt,
    Evaluation, NoiseRecurrence, Objective, Participation, Strategy, StrategyKind, Workload,
};
use dp_accounting::quiet_println as println;
use serde_json::{json, Map, Value};

use crate::common::{accountant, check_delta, number, shown, usage, Choice, Failure};

/// Most steps a strategy is built for: memory and time grow linearly with the steps (at 1e6
/// steps `banded` takes about 10 s and 260 MB, `blt` about 90 s).
const MAX_STEPS: usize = 1_000_000;

/// Buffers of `--strategy blt` unless given.
const DEFAULT_BUFFERS: usize = 4;

#[derive(Args, Debug)]
pub(crate) struct MfArgs {
    /// Training steps n (at most 1,000,000).
    #[arg(long)]
    steps: usize,
    /// Passes over the data in one fixed order: each example takes part at most K times, at
    /// least b = floor(n / K) steps apart.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// The noise strategy C (see the list above).
    #[arg(long, value_enum)]
    strategy: StrategyArg,
    /// Bands p of bsr, bisr and banded (default: b = floor(n / K), the most that keeps an
    /// example's columns orthogonal).
    #[arg(long)]
    bands: Option<usize>,
    /// Buffers of blt (default 4).
    #[arg(long)]
    buffers: Option<usize>,
    /// The damping of --strategy nu in (0, 1] (default: tuned for the objective).
    #[arg(long, allow_hyphen_values = true)]
    nu: Option<f64>,
    /// What training computes from the noisy gradients: prefix sums (SGD) or heavy-ball
    /// momentum (with --momentum).
    #[arg(long, value_enum, default_value_t = WorkloadArg::Prefix)]
    workload: WorkloadArg,
    /// Momentum beta in [0, 1) of --workload momentum.
    #[arg(long, allow_hyphen_values = true)]
    momentum: Option<f64>,
    /// The error nu, banded and blt are optimized for: mean over steps, or the worst step.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Mean)]
    objective: ObjectiveArg,
    /// Noise multiplier sigma: every z_t has standard deviation sigma x clip x sens(C). With
    /// --delta, epsilon is reported.
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: Option<f64>,
    /// Target delta (with --noise-multiplier).
    #[arg(long, allow_hyphen_values = true)]
    delta: Option<f64>,
    /// Amplification by cyclic Poisson sampling, for identity, bsr and banded only: the data
    /// is split into p = --bands groups and step t samples each example of group t mod p
    /// with this probability (BandMF). The sensitivity is then the largest column norm.
    #[arg(long, allow_hyphen_values = true)]
    sampling_rate: Option<f64>,
    /// With --sampling-rate: the accountant of the equivalent DP-SGD run.
    #[command(flatten)]
    choice: Choice,
    /// Print JSON for scripts instead of a report.
    #[arg(long)]
    json: bool,
}

/// Noise strategies: the optimizer sees x_t + (C^{-1} z)_t instead of x_t + z_t.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StrategyArg {
    /// C = I: DP-SGD's independent noise; no memory.
    Identity,
    /// Toeplitz square root of the workload (Fichtenberger, Henzinger, Upadhyay 2023):
    /// near-optimal for one epoch; memory grows with the steps.
    Sqrt,
    /// nu-DP-FTRL (Choquette-Choo, Dvijotham, Pillutla et al. 2024): the prefix-sum square
    /// root damped by nu^t (--nu, or tuned); better than sqrt with several epochs.
    Nu,
    /// Banded square root (Kalinin, Lampert 2024): the first --bands coefficients of the
    /// square root; memory bands - 1.
    Bsr,
    /// Banded inverse square root (Kalinin et al. 2025): C^{-1} keeps the first --bands
    /// coefficients of the inverse square root; memory bands - 1.
    Bisr,
    /// Optimal banded Toeplitz (McKenna 2024): --bands coefficients optimized for the error;
    /// the best here for several epochs; memory bands - 1.
    Banded,
    /// Buffered linear Toeplitz (Dvijotham, McMahan et al. 2024): --buffers decaying buffers
    /// optimized for the error; close to the optimal Toeplitz with 2-6 vectors of memory.
    Blt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    /// Prefix sums: SGD with a constant learning rate.
    Prefix,
    /// Heavy-ball momentum (needs --momentum).
    Momentum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ObjectiveArg {
    /// Mean squared error over the steps (the rmse).
    Mean,
    /// Squared error of the worst step (the max rmse).
    Max,
}

/// What `run` reports about privacy.
struct Privacy {
    sigma: f64,
    delta: f64,
    epsilon: f64,
    /// How epsilon was computed.
    how: String,
    event: Value,
}

pub(crate) fn run(a: MfArgs) -> Result<(), Failure> {
    let plan = validate(&a)?;
    let outcome = evaluate(&a, &plan)?;
    if a.json {
        print_json(&a, &plan, &outcome);
    } else {
        print_text(&a, &plan, &outcome);
    }
    Ok(())
}

/// What the flags ask for, checked against each other.
struct MfPlan {
    n: usize,
    separation: usize,
    workload: Workload,
    participation: Participation,
    bands: usize,
    buffers: usize,
    /// The noise multiplier and delta, when epsilon is asked for.
    noise: Option<(f64, f64)>,
    objective: Objective,
}

/// The strategy built for a plan, its errors, DP-SGD's, and its privacy when asked.
struct Outcome {
    strategy: Strategy,
    blt: Option<Blt>,
    evaluation: Evaluation,
    sgd: Evaluation,
    lower_bound: Option<f64>,
    privacy: Option<Privacy>,
}

/// The flags as a plan, or the first one that is wrong (with its reason).
fn validate(a: &MfArgs) -> Result<MfPlan, Failure> {
    let n = a.steps;
    if n == 0 || n > MAX_STEPS {
        return Err(usage(
            "steps",
            format!("must be between 1 and {MAX_STEPS}, got {n}"),
        ));
    }
    if a.epochs == 0 || a.epochs > n as u64 {
        return Err(usage(
            "epochs",
            format!(
                "must be between 1 and the number of steps {n}, got {}",
                a.epochs
            ),
        ));
    }
    let separation = n / a.epochs as usize;
    let workload = match (a.workload, a.momentum) {
        (WorkloadArg::Prefix, None) => Workload::prefix(),
        (WorkloadArg::Prefix, Some(_)) => {
            return Err(usage("momentum", "applies to --workload momentum only"))
        }
        (WorkloadArg::Momentum, None) => {
            return Err(usage("momentum", "is required with --workload momentum"))
        }
        (WorkloadArg::Momentum, Some(beta)) => Workload::momentum(beta)
            .map_err(|_| usage("momentum", format!("must be in [0, 1), got {beta}")))?,
    };
    let banded_family = matches!(
        a.strategy,
        StrategyArg::Bsr | StrategyArg::Bisr | StrategyArg::Banded
    );
    if a.bands.is_some() && !banded_family {
        return Err(usage(
            "bands",
            "applies to --strategy bsr, bisr or banded only",
        ));
    }
    if a.buffers.is_some() && a.strategy != StrategyArg::Blt {
        return Err(usage("buffers", "applies to --strategy blt only"));
    }
    if a.nu.is_some() && a.strategy != StrategyArg::Nu {
        return Err(usage("nu", "applies to --strategy nu only"));
    }
    let participation = match a.sampling_rate {
        None => Participation::epochs(n, a.epochs).map_err(|e| usage("epochs", e))?,
        Some(q) => {
            if !(q.is_finite() && q > 0.0 && q <= 1.0) {
                return Err(usage(
                    "sampling-rate",
                    format!("must be in (0, 1], got {q}"),
                ));
            }
            if !matches!(
                a.strategy,
                StrategyArg::Identity | StrategyArg::Bsr | StrategyArg::Banded
            ) {
                return Err(usage(
                    "sampling-rate",
                    "amplification by sampling is proven for banded strategies only (identity, bsr, banded); account the others without it",
                ));
            }
            if a.epochs != 1 {
                return Err(usage(
                    "epochs",
                    "does not apply with --sampling-rate: cyclic Poisson sampling decides who takes part",
                ));
            }
            if banded_family && a.bands.is_none() {
                return Err(usage(
                    "bands",
                    "is required with --sampling-rate (it is also the number of sampling groups)",
                ));
            }
            Participation::single()
        }
    };
    let bands = a.bands.unwrap_or(separation);
    if bands == 0 || bands > n {
        return Err(usage(
            "bands",
            format!("must be between 1 and the number of steps {n}, got {bands}"),
        ));
    }
    if a.strategy == StrategyArg::Banded && participation.effective(n) > 1 && bands > separation {
        return Err(usage(
            "bands",
            format!(
                "must be at most the separation b = {separation} with {} epochs (an example's columns must not overlap)",
                a.epochs
            ),
        ));
    }
    let buffers = a.buffers.unwrap_or(DEFAULT_BUFFERS);
    if !(1..=16).contains(&buffers) {
        return Err(usage(
            "buffers",
            format!("must be between 1 and 16, got {buffers}"),
        ));
    }
    if a.strategy == StrategyArg::Blt && n < 2 {
        return Err(usage("steps", "must be at least 2 for --strategy blt"));
    }
    if let Some(nu) = a.nu {
        if !(nu.is_finite() && nu > 0.0 && nu <= 1.0) {
            return Err(usage("nu", format!("must be in (0, 1], got {nu}")));
        }
    }
    let noise = match (a.noise_multiplier, a.delta) {
        (None, None) => None,
        (Some(_), None) => return Err(usage("delta", "is required with --noise-multiplier")),
        (None, Some(_)) => return Err(usage("noise-multiplier", "is required with --delta")),
        (Some(sigma), Some(delta)) => {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(usage(
                    "noise-multiplier",
                    format!("must be a finite number > 0, got {sigma}"),
                ));
            }
            check_delta(delta)?;
            Some((sigma, delta))
        }
    };
    let objective = match a.objective {
        ObjectiveArg::Mean => Objective::Mean,
        ObjectiveArg::Max => Objective::Max,
    };
    Ok(MfPlan {
        n,
        separation,
        workload,
        participation,
        bands,
        buffers,
        noise,
        objective,
    })
}

/// Builds (or optimizes) the strategy, evaluates it and, with a noise multiplier, its epsilon.
fn evaluate(a: &MfArgs, plan: &MfPlan) -> Result<Outcome, Failure> {
    let MfPlan {
        n,
        bands,
        buffers,
        noise,
        objective,
        ..
    } = *plan;
    let (workload, participation) = (&plan.workload, &plan.participation);
    let mut blt: Option<Blt> = None;
    let strategy = match a.strategy {
        StrategyArg::Identity => Strategy::identity(n)?,
        StrategyArg::Sqrt => Strategy::square_root(n, workload)?,
        StrategyArg::Nu => match a.nu {
            Some(nu) => Strategy::nu_dp_ftrl(n, nu)?,
            None => optimize_nu(n, workload, participation, objective)?,
        },
        StrategyArg::Bsr => Strategy::banded_square_root(n, bands, workload)?,
        StrategyArg::Bisr => Strategy::banded_inverse_square_root(n, bands, workload)?,
        StrategyArg::Banded => optimize_banded(n, bands, workload, participation, objective)?,
        StrategyArg::Blt => {
            let fitted = optimize_blt(n, buffers, workload, participation, objective)?;
            let s = Strategy::blt(n, &fitted)?;
            blt = Some(fitted);
            s
        }
    };
    let e = strategy.evaluate(workload, participation);
    let sgd = Strategy::identity(n)?.evaluate(workload, participation);
    let lower_bound = mean_loss_lower_bound(n, workload, participation)
        .ok()
        .map(f64::sqrt);

    let privacy = match noise {
        None => None,
        Some((sigma, delta)) => {
            let event = strategy.dp_event(sigma, a.sampling_rate)?;
            let (epsilon, how) = match a.sampling_rate {
                None => (
                    gaussian_epsilon(sigma, delta)?,
                    format!("one Gaussian mechanism with noise multiplier {sigma} (mu-GDP with mu = 1/sigma), converted exactly (analytic Gaussian); it depends on neither C, the steps nor the epochs"),
                ),
                Some(q) => {
                    let (kind, note) = accountant(&a.choice, delta)?;
                    let mut acc = kind.build()?;
                    acc.compose(&event)?;
                    let p = strategy.bands().unwrap_or(1);
                    let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                    (
                        acc.epsilon(delta)?,
                        format!(
                            "as private as DP-SGD with sampling rate {q} and noise multiplier {sigma} for ceil({n} / {p}) = {} steps (Choquette-Choo et al. 2023, Thm 4); {} accountant{note}",
                            n.div_ceil(p),
                            kind.name()
                        ),
                    )
                }
            };
            Some(Privacy {
                sigma,
                delta,
                epsilon,
                how,
                event: serde_json::to_value(&event).unwrap_or(Value::Null),
            })
        }
    };
    Ok(Outcome {
        strategy,
        blt,
        evaluation: e,
        sgd,
        lower_bound,
        privacy,
    })
}

/// The outcome as one JSON object.
fn print_json(a: &MfArgs, plan: &MfPlan, outcome: &Outcome) {
    let (n, workload, participation, objective) =
        (plan.n, &plan.workload, &plan.participation, plan.objective);
    let Outcome {
        strategy,
        blt,
        evaluation: e,
        sgd,
        lower_bound,
        privacy,
    } = outcome;
    let mut m = Map::new();
    if let Ok(Value::Object(kind)) = serde_json::to_value(strategy.kind()) {
        m.extend(kind);
    }
    m.insert("steps".into(), json!(n));
    m.insert("epochs".into(), json!(a.epochs));
    m.insert("neighbouring_relation".into(), json!("zero_out"));
    m.insert(
        "max_participations".into(),
        json!(participation.max_participations()),
    );
    m.insert(
        "min_separation".into(),
        json!(participation.min_separation_steps()),
    );
    m.insert("workload".into(), json!(workload.name()));
    m.insert("momentum".into(), json!(workload.beta()));
    m.insert("objective".into(), json!(objective));
    m.insert("sensitivity".into(), json!(e.sensitivity.value()));
    m.insert("sensitivity_squared".into(), json!(e.sensitivity.squared));
    m.insert("sensitivity_exact".into(), json!(e.sensitivity.exact));
    m.insert("mean_error".into(), json!(e.mean_error));
    m.insert("max_error".into(), json!(e.max_error));
    m.insert("rmse".into(), json!(e.rmse()));
    m.insert("max_rmse".into(), json!(e.max_rmse()));
    m.insert("dpsgd_rmse".into(), json!(sgd.rmse()));
    m.insert("dpsgd_max_rmse".into(), json!(sgd.max_rmse()));
    m.insert("rmse_ratio_vs_dpsgd".into(), json!(e.rmse() / sgd.rmse()));
    m.insert("lower_bound_rmse".into(), json!(lower_bound));
    m.insert(
        "memory_vectors".into(),
        json!(strategy.recurrence().memory_vectors()),
    );
    m.insert(
        "recurrence".into(),
        serde_json::to_value(strategy.recurrence()).unwrap_or(Value::Null),
    );
    if let Some(blt) = &blt {
        m.insert(
            "blt".into(),
            serde_json::to_value(blt).unwrap_or(Value::Null),
        );
    }
    m.insert("sampling_rate".into(), json!(a.sampling_rate));
    if let Some(p) = &privacy {
        m.insert("noise_multiplier".into(), json!(p.sigma));
        m.insert("delta".into(), json!(p.delta));
        m.insert("epsilon".into(), number(p.epsilon));
        m.insert(
            "noise_std_over_clip".into(),
            json!(p.sigma * e.sensitivity.value()),
        );
        m.insert("event".into(), p.event.clone());
    }
    println!("{}", Value::Object(m));
}

/// The outcome in words.
fn print_text(a: &MfArgs, plan: &MfPlan, outcome: &Outcome) {
    let (n, separation, workload, participation) =
        (plan.n, plan.separation, &plan.workload, &plan.participation);
    let Outcome {
        strategy,
        evaluation: e,
        sgd,
        lower_bound,
        privacy,
        ..
    } = outcome;
    let work = if workload.is_prefix() {
        "prefix sums (SGD)".to_string()
    } else {
        format!("heavy-ball momentum {}", workload.beta())
    };
    let who = match a.sampling_rate {
        None => participation.describe(),
        Some(q) => format!(
            "cyclic Poisson sampling of {} groups at rate {q}",
            strategy.bands().unwrap_or(1)
        ),
    };
    println!(
        "{}: {n} steps, {work}, {who}",
        describe(&strategy.kind(), a.nu.is_none()),
    );
    let sens = e.sensitivity;
    println!(
        "  sensitivity  sens(C) = {:.6}{}: draw z_t with standard deviation noise multiplier x clip x {:.6}",
        sens.value(),
        if sens.exact { " (exact)" } else { " (upper bound)" },
        sens.value()
    );
    println!(
        "  rmse         {:.4} x noise multiplier x clip over the steps: {:.4} x DP-SGD's {:.4} at the same noise multiplier",
        e.rmse(),
        e.rmse() / sgd.rmse(),
        sgd.rmse()
    );
    println!(
        "  max rmse     {:.4} at the worst step (DP-SGD {:.4})",
        e.max_rmse(),
        sgd.max_rmse()
    );
    if let Some(bound) = lower_bound {
        println!("  lower bound  {bound:.4}: no factorization has a lower rmse (SVD bound)");
    }
    println!("  memory       {}", memory(strategy.recurrence()));
    match &privacy {
        Some(p) => {
            println!(
                "  privacy      (epsilon, delta) = ({}, {:e})   epsilon rounded up",
                shown(p.epsilon),
                p.delta
            );
            println!("  accounting   {}", p.how);
        }
        None => println!(
            "  privacy      give --noise-multiplier and --delta for epsilon; unamplified, it is that of one Gaussian mechanism with the noise multiplier"
        ),
    }
    if a.sampling_rate.is_none() && a.epochs > 1 {
        println!("  assumes      the same data order every epoch (each example at most {} times, {} steps apart); reshuffling between epochs breaks the sensitivity", a.epochs, separation);
    }
    println!("  neighbours   zero-out: one example's gradient replaced by zero, its place in the data order kept (the relation b-min-sep participation assumes; add/remove would shift other examples); the units are the noise multiplier times the clip norm (divide by the batch size for averaged gradients)");
}

/// What a strategy is, in words.
fn describe(kind: &StrategyKind, nu_tuned: bool) -> String {
    match kind {
        StrategyKind::Identity => "identity (DP-SGD's independent noise)".into(),
        StrategyKind::SquareRoot => "sqrt (Toeplitz square root of the workload)".into(),
        StrategyKind::NuDpFtrl { nu } => format!(
            "nu-DP-FTRL with nu = {nu:.9}{}",
            if nu_tuned { " (tuned)" } else { "" }
        ),
        StrategyKind::BandedSquareRoot { bands } => {
            format!("bsr (banded square root, {bands} bands)")
        }
        StrategyKind::BandedInverseSquareRoot { bands } => {
            format!("bisr (banded inverse square root, {bands} bands of C^-1)")
        }
        StrategyKind::Banded { bands } => {
            format!("banded (optimal banded Toeplitz, {bands} bands)")
        }
        StrategyKind::Blt { buffers } => {
            format!("blt (optimized buffered linear Toeplitz, {buffers} buffers)")
        }
    }
}

/// The state a streaming noise generator keeps.
fn memory(r: &NoiseRecurrence) -> String {
    let m = r.memory_vectors();
    match r {
        NoiseRecurrence::Independent => "none: w_t = z_t".into(),
        NoiseRecurrence::MovingAverage { .. } => format!(
            "{m} model-sized vectors: the last {m} draws z (or regenerate them from their seeds)"
        ),
        NoiseRecurrence::Autoregressive { .. } => format!(
            "{m} model-sized vectors: the last {m} outputs w (back-substitution through the bands of C)"
        ),
        NoiseRecurrence::Buffered { .. } => {
            format!("{m} model-sized vectors: the buffers of the inverse BLT")
        }
    }
}
