//! The privacy statement printed at the end of a run: the numbers, and what they depend on.

use std::fmt;

use dp_accounting::{
    round_up, Accountant, AccountantKind, DpEvent, PrvAccountant, DEFAULT_PRV_EPSILON_ERROR,
};
use dp_core::NoiseMode;
use serde::Serialize;

use crate::error::TrainError;
use crate::ledger::PrivacyLedger;

/// Decimals shown for epsilon (rounded up).
const EPSILON_DIGITS: i32 = 3;

/// What a finished run can claim.
#[derive(Debug, Clone, Serialize)]
pub struct PrivacyStatement {
    /// Epsilon spent, rounded up to three decimals ("inf" in JSON when no noise was added).
    #[serde(serialize_with = "finite_or_inf")]
    pub epsilon: f64,
    /// The delta of the guarantee.
    pub delta: f64,
    /// The RDP order at which epsilon was reached (none for correlated noise, accounted
    /// exactly as one Gaussian mechanism).
    pub order: Option<f64>,
    /// The accountant.
    pub accountant: String,
    /// Poisson sampling rate q, or 1 / (batches per epoch) for cyclic batches.
    pub sampling_rate: f64,
    /// Correlated noise: the planned steps, one Gaussian mechanism over all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlated_steps: Option<u64>,
    /// Dataset size N.
    pub dataset_size: usize,
    /// Noise multiplier sigma.
    pub noise_multiplier: f64,
    /// Per-example clip norm C.
    pub clip_norm: f64,
    /// Noised steps taken.
    pub steps: u64,
    /// Whether the privacy generator was seeded (reproducible: whoever knows the seed can
    /// remove the noise).
    pub seeded: bool,
    /// The seed, if the run was seeded and the seed is shown (it is withheld from what is
    /// exported for sharing: [`PrivacyStatement::withhold_seed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How the noise was drawn, as the ledger recorded it.
    pub noise_mode: Option<NoiseMode>,
    /// For Poisson-sampled runs with noise: the PRV accountant's bound on the same steps (the
    /// upper end of its bracket, rounded up), tighter than RDP's; none where it does not apply
    /// or cannot answer (correlated noise, a delta below what it resolves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prv_epsilon: Option<f64>,
    /// For runs accounted by the PRV accountant: RDP's bound on the same steps (looser), for
    /// comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdp_epsilon: Option<f64>,
}

/// The PRV accountant's epsilon (Gopi, Lee, Wutschitz 2021) for the ledger's Poisson-sampled
/// steps, if it applies and answers.
fn prv_epsilon(ledger: &PrivacyLedger) -> Option<f64> {
    if ledger.correlated_steps().is_some()
        || matches!(ledger.accountant(), AccountantKind::Prv { .. })
        || ledger.noise_multiplier() == 0.0
        || ledger.steps() == 0
    {
        return None;
    }
    let mut prv = PrvAccountant::new(DEFAULT_PRV_EPSILON_ERROR).ok()?;
    prv.compose(&DpEvent::dp_sgd(
        ledger.sampling_rate(),
        ledger.noise_multiplier(),
        ledger.steps(),
    ))
    .ok()?;
    let upper = prv.epsilon_bounds(ledger.delta()).ok()?.upper;
    Some(round_up(upper, EPSILON_DIGITS))
}

/// Infinity as the string "inf" (JSON has no infinity), as the accounting command writes it.
fn finite_or_inf<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_str("inf")
    }
}

impl PrivacyStatement {
    /// The statement for the steps recorded in `ledger`.
    pub fn from_ledger(
        ledger: &PrivacyLedger,
        dataset_size: usize,
        clip_norm: f64,
        seed: Option<u64>,
    ) -> Result<Self, TrainError> {
        let spent = ledger.spent()?;
        let correlated_steps = ledger.correlated_steps();
        let prv_accounted = match ledger.accountant() {
            AccountantKind::Prv { epsilon_error } if correlated_steps.is_none() => {
                Some(epsilon_error)
            }
            _ => None,
        };
        let rdp_epsilon = match prv_accounted {
            Some(_) if ledger.noise_multiplier() > 0.0 && ledger.steps() > 0 => Some(round_up(
                PrivacyLedger::new(
                    ledger.sampling_rate(),
                    ledger.noise_multiplier(),
                    ledger.delta(),
                    f64::INFINITY,
                )?
                .epsilon_for(ledger.steps())?,
                EPSILON_DIGITS,
            )),
            _ => None,
        };
        Ok(Self {
            epsilon: round_up(spent.epsilon, EPSILON_DIGITS),
            delta: ledger.delta(),
            order: spent.order.is_finite().then_some(spent.order),
            accountant: match (correlated_steps, prv_accounted) {
                (None, Some(error)) => format!("PRV (Gopi, Lee, Wutschitz 2021; the upper end of its +-{error} bracket), or RDP (Mironov 2017) where that is smaller"),
                (None, None) => "RDP (Mironov 2017; subsampled Gaussian of Mironov, Talwar, Zhang 2019)".into(),
                (Some(_), _) => "exact Gaussian mechanism (Balle and Wang 2018) with the sensitivity of the factorization under cyclic participation (Choquette-Choo et al. 2023), no amplification".into(),
            },
            sampling_rate: ledger.sampling_rate(),
            correlated_steps,
            dataset_size,
            noise_multiplier: ledger.noise_multiplier(),
            clip_norm,
            steps: ledger.steps(),
            seeded: seed.is_some(),
            seed,
            noise_mode: ledger.noise_mode(),
            prv_epsilon: prv_epsilon(ledger),
            rdp_epsilon,
        })
    }
}

impl PrivacyStatement {
    /// The statement without the seed's value (whether the run was seeded is kept), for what
    /// is shared: with the seed, anyone can regenerate the noise and remove it.
    pub fn withhold_seed(self) -> Self {
        Self { seed: None, ..self }
    }
}

impl fmt::Display for PrivacyStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.noise_multiplier == 0.0 {
            writeln!(f, "Privacy statement: NOT PRIVATE")?;
            writeln!(f, "  NO NOISE WAS ADDED: this run has no differential privacy guarantee (epsilon is infinite).")?;
            writeln!(
                f,
                "  It is a baseline: {} steps of clipped SGD with q = {:.6} and C = {}.",
                self.steps, self.sampling_rate, self.clip_norm
            )?;
            return Ok(());
        }
        writeln!(f, "Privacy statement")?;
        writeln!(
            f,
            "  guarantee     ({:.prec$}, {:e})-differential privacy (epsilon rounded up)",
            self.epsilon,
            self.delta,
            prec = EPSILON_DIGITS as usize
        )?;
        match self.correlated_steps {
            None => writeln!(
                f,
                "  neighbours    add/remove one example (example-level privacy)"
            )?,
            Some(_) => writeln!(
                f,
                "  neighbours    zero-out: one example's gradient replaced by zero, its batch slot kept (example-level privacy, the relation of Choquette-Choo et al. 2023; not add/remove, which would move other examples between the fixed batches)"
            )?,
        }
        match (self.correlated_steps, self.order) {
            (Some(planned), _) => {
                let batches = (1.0 / self.sampling_rate).round();
                writeln!(
                    f,
                    "  mechanism     matrix-factorization DP-SGD: {} of {planned} planned steps over {batches} fixed batches of the {} examples visited in turn (each example in at most {} steps, {batches} apart), per-example clipping to C = {} and correlated Gaussian noise (C^-1 Z)_t, Z of std {:.4} x C x sensitivity",
                    self.steps,
                    self.dataset_size,
                    (planned as f64 / batches).ceil(),
                    self.clip_norm,
                    self.noise_multiplier
                )?;
                writeln!(f, "  accountant    {}", self.accountant)?;
                writeln!(f, "  depends on    the noise multiplier and delta, for the whole plan (spent in full from the first step); that each example is in one fixed batch and the noise drawn from a secret random state")?;
            }
            (None, order) => {
                writeln!(
                    f,
                    "  mechanism     DP-SGD: {} steps, each a Poisson-sampled batch (q = {:.6}, expected size {:.1} of {}) with per-example clipping to C = {} and Gaussian noise of std {:.4} C",
                    self.steps,
                    self.sampling_rate,
                    self.sampling_rate * self.dataset_size as f64,
                    self.dataset_size,
                    self.clip_norm,
                    self.noise_multiplier
                )?;
                match order {
                    Some(order) => writeln!(
                        f,
                        "  accountant    {}, optimal order {order}",
                        self.accountant
                    )?,
                    None => writeln!(f, "  accountant    {}", self.accountant)?,
                }
                if let Some(rdp) = self.rdp_epsilon {
                    writeln!(
                        f,
                        "  RDP           epsilon at most {rdp:.prec$} for the same steps by RDP alone, a looser bound",
                        prec = EPSILON_DIGITS as usize
                    )?;
                }
                if let Some(prv) = self.prv_epsilon {
                    writeln!(
                        f,
                        "  PRV           epsilon at most {prv:.prec$} for the same steps by the PRV accountant (Gopi et al. 2021; upper end of its +-{DEFAULT_PRV_EPSILON_ERROR} bracket), a tighter bound; the budget is enforced with RDP",
                        prec = EPSILON_DIGITS as usize
                    )?;
                }
                writeln!(f, "  depends on    q, the noise multiplier, the number of steps and delta; that batches were truly Poisson-sampled and the noise drawn from a secret random state")?;
            }
        }
        writeln!(f, "  not on        the model, the learning rate, the data values, or C itself (noise scales with C)")?;
        match self.noise_mode {
            Some(NoiseMode::Secure) => writeln!(f, "  noise         secure: discrete Gaussian integers on a power-of-two grid, drawn on the host from ChaCha20 (and copied to the accelerator when the model is on one), added exactly (no floating-point leak); accounted with the rounding's sensitivity C + grid sqrt(d)")?,
            Some(NoiseMode::Fast) if self.correlated_steps.is_some() => writeln!(f, "  noise         fast: floating-point ChaCha20 normals combined by C^-1 (correlated noise has no secure mode): NOT resistant to floating-point attacks")?,
            Some(NoiseMode::Fast) => writeln!(f, "  noise         fast: libtorch floating-point normals on the model's device (mt19937 on the CPU, Philox on CUDA), its generator keyed at every step by 64 bits of the ChaCha20 privacy generator; for research: NOT resistant to floating-point attacks; use noise_mode = \"secure\" for a release")?,
            None => writeln!(f, "  noise         not recorded (a ledger from before noise modes)")?,
        }
        match (self.seed, self.seeded) {
            (Some(seed), _) => writeln!(f, "  randomness    seeded with {seed}: reproducible, so anyone who knows the seed can remove the noise; use an unseeded run for a real guarantee")?,
            (None, true) => writeln!(f, "  randomness    seeded (the seed is withheld here): reproducible by whoever knows the seed, who can remove the noise; use an unseeded run for a real guarantee")?,
            (None, false) => writeln!(f, "  randomness    ChaCha20 seeded from the operating system")?,
        }
        writeln!(f, "  released      the trained weights; the training loss and accuracy shown while training (the progress bar, and metrics.jsonl where a run folder keeps one) are computed on the private batches without noise: NOT private, for monitoring only (the test accuracy is computed on the public test split)")?;
        writeln!(f, "  toolkit       dp-train {}", env!("CARGO_PKG_VERSION"))
    }
}
