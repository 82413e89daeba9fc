//! What the subcommands share: the plan's flags and their checks, the accountant choice, the
//! failure type, and how epsilon is shown and written.

use clap::{Args, ValueEnum};
use dp_accounting::quiet_println as println;
use dp_accounting::{
    round_up, Accountant, AccountantKind, AccountingError, DpEvent, PrvAccountant, RdpAccountant,
    PRV_MIN_DELTA,
};
use serde_json::{json, Map, Value};

/// The sampling rate and delta shared by every command.
#[derive(Args, Debug)]
pub(crate) struct Common {
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
pub(crate) struct Length {
    /// Number of steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Passes over the data in expectation: steps = ceil(epochs / q).
    #[arg(long, allow_hyphen_values = true)]
    epochs: Option<f64>,
}

/// Which accountant answers.
#[derive(Args, Debug)]
pub(crate) struct Choice {
    /// rdp: Rényi DP (fast, looser); prv: PRV/FFT (tighter, reports the upper end of its
    /// error bracket).
    #[arg(long, value_enum, default_value_t = Kind::Prv)]
    accountant: Kind,
    /// Half-width of the PRV accountant's epsilon bracket.
    #[arg(long, allow_hyphen_values = true, default_value_t = dp_accounting::DEFAULT_PRV_EPSILON_ERROR)]
    epsilon_error: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    Rdp,
    Prv,
}

impl Kind {
    pub(crate) fn with_error(self, epsilon_error: f64) -> AccountantKind {
        match self {
            Kind::Rdp => AccountantKind::Rdp,
            Kind::Prv => AccountantKind::Prv { epsilon_error },
        }
    }
}

/// A user mistake (exit code 2) or a failure (exit code 1), printed as one line.
pub(crate) enum Failure {
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

pub(crate) fn usage(flag: &str, message: impl std::fmt::Display) -> Failure {
    Failure::Usage(format!("--{flag}: {message}"))
}

/// A validated plan: sampling rate, delta and (where given) steps.
pub(crate) struct Plan {
    pub(crate) q: f64,
    pub(crate) delta: f64,
    pub(crate) json: bool,
}

pub(crate) fn finite_positive(flag: &str, v: f64) -> Result<f64, Failure> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(usage(flag, format!("must be a finite number > 0, got {v}")))
    }
}

/// `B / N` for a dataset of `n` records and expected batch size `b`, validated.
pub(crate) fn batch_fraction(n: u64, b: f64) -> Result<f64, Failure> {
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

pub(crate) fn plan(common: &Common) -> Result<Plan, Failure> {
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
    let delta = check_delta(common.delta)?;
    if let Some(n) = common.dataset_size {
        warn_delta(delta, n);
    }
    Ok(Plan {
        q,
        delta,
        json: common.json,
    })
}

/// A target delta, which must be in (0, 1).
pub(crate) fn check_delta(delta: f64) -> Result<f64, Failure> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(delta)
    } else {
        Err(usage("delta", format!("must be in (0, 1), got {delta}")))
    }
}

/// Warns (on stderr, once) when delta is at least 1/N: a mechanism that publishes one random
/// record whole meets such a delta, so the guarantee says little (take delta well below 1/N).
pub(crate) fn warn_delta(delta: f64, n: u64) {
    if delta * n as f64 >= 1.0 {
        eprintln!("dp-accounting: warning: delta {delta:e} is at least 1/N = 1/{n}: publishing one random record whole meets it; take delta well below 1/N");
    }
}

pub(crate) fn steps_of(length: &Length, q: f64) -> Result<u64, Failure> {
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
pub(crate) fn accountant(
    choice: &Choice,
    delta: f64,
) -> Result<(AccountantKind, Option<String>), Failure> {
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
pub(crate) fn with_note(mut extra: Map<String, Value>, note: Option<String>) -> Map<String, Value> {
    if let Some(note) = note {
        extra.insert("note".into(), json!(note));
    }
    extra
}

/// Epsilon with what each accountant adds to the JSON (order, or the PRV bracket).
pub(crate) fn epsilon_report(
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

/// Epsilon as people see it: rounded up, to three decimals or three significant digits.
pub(crate) fn shown(epsilon: f64) -> String {
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

pub(crate) fn common_json(p: &Plan, kind: AccountantKind, sigma: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("accountant".into(), json!(kind.name()));
    m.insert("sampling_rate".into(), json!(p.q));
    m.insert("noise_multiplier".into(), json!(sigma));
    m.insert("delta".into(), json!(p.delta));
    m.insert("neighbouring_relation".into(), json!("add_or_remove_one"));
    m.insert("sampling".into(), json!("poisson"));
    m
}

pub(crate) fn emit(
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
pub(crate) fn number(x: f64) -> Value {
    if x.is_infinite() {
        json!("inf")
    } else {
        json!(x)
    }
}
