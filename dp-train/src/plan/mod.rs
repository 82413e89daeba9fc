//! A training plan from a TOML file: `[data]` and `[privacy]` decide the mechanism (what is
//! accounted), `[training]` the optimisation, `[performance]` only how fast and where it runs.
//! The dataset size is declared, never inferred from a loader; the noise multiplier is
//! calibrated to the target epsilon (one-sided) unless given. `--set section.key=value`
//! overrides any value before validation (`--set model.finetune.blocks=4` reaches into an
//! inline table). `docs/plan.md` lists every key.
//!
//! Parsing ([`TrainConfig::from_toml`]) reads and checks; [`TrainConfig::resolve`] computes the
//! mechanism once, and the training loop's settings ([`TrainConfig::dp_sgd_config`]), the job
//! and the run folder's `config.resolved.toml` ([`TrainConfig::to_toml`]) all derive from it.

mod resolve;
mod sections;

pub use resolve::ResolvedPlan;
pub(crate) use sections::default_max_length;
pub use sections::{
    DataSection, Dataset, DeviceChoice, MfSection, ModelKind, ModelSection, NoiseKind,
    PerformanceSection, PlanAccountant, PrivacySection, Sampling, TrainingSection,
};

use serde::{Deserialize, Serialize};

use crate::dpsgd::DpSgdConfig;
use crate::error::TrainError;

/// A whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The data.
    pub data: DataSection,
    /// The privacy plan.
    pub privacy: PrivacySection,
    /// The model.
    #[serde(default)]
    pub model: ModelSection,
    /// The optimisation.
    pub training: TrainingSection,
    /// Speed and placement.
    #[serde(default)]
    pub performance: PerformanceSection,
}

impl TrainConfig {
    /// Parses TOML after applying `section.key=value` overrides.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            // The message alone does not say where ("duplicate key"): add the line.
            let place = e.span().map_or(String::new(), |span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" at line {line} (`{shown}`)")
            });
            config_error(format!("plan: {}{place}", e.message().trim()))
        })?;
        for o in overrides {
            let (path, value) = o
                .split_once('=')
                .ok_or_else(|| config_error(format!("--set {o}: expected section.key=value")))?;
            if value.contains(['\n', '\r']) {
                return Err(config_error(format!(
                    "--set {path}: the value must be one line (a line break could add tables to the plan)"
                )));
            }
            // `section.key`, or deeper into an inline table: `model.finetune.kind`.
            let parts: Vec<&str> = path.split('.').collect();
            let Some((key, tables)) = parts.split_last().filter(|(_, t)| !t.is_empty()) else {
                return Err(config_error(format!(
                    "--set {o}: expected section.key=value"
                )));
            };
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut at = &mut table;
            for (depth, name) in tables.iter().enumerate() {
                let entry = at
                    .entry(name.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(inner) = entry else {
                    return Err(config_error(format!(
                        "--set {o}: '{}' is not a table",
                        tables[..=depth].join(".")
                    )));
                };
                at = inner;
            }
            at.insert(key.to_string(), parsed);
        }
        let config: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| config_error(e.to_string().trim().replace('\n', " ")))?;
        config.check()?;
        Ok(config)
    }

    /// The training loop's settings for this plan, resolved as `plan`.
    pub fn dp_sgd_config(&self, plan: &ResolvedPlan) -> DpSgdConfig {
        DpSgdConfig {
            expected_batch_size: self.privacy.expected_batch_size,
            physical_batch_size: self.performance.physical_batch_size.max(1),
            steps: plan.steps,
            clip_norm: self.privacy.clip_norm,
            noise_multiplier: plan.noise_multiplier,
            noise: self.privacy.noise_mode,
            learning_rate: self.training.learning_rate,
            prefix_rates: self
                .training
                .head_learning_rate
                .map(|rate| vec![(crate::models::HEAD_PREFIX.to_string(), rate)])
                .unwrap_or_default(),
            optimizer: self.training.optimizer,
            schedule: self.training.schedule,
            average_decay: self.training.average_decay,
            delta: self.privacy.delta,
            epsilon_budget: plan.epsilon_budget,
            mechanism: plan.mechanism.clone(),
            clipping: self.training.clipping,
            accountant: plan.accountant,
        }
    }

    /// The plan a run folder's `config.resolved.toml` records (its `[resolved]` numbers are
    /// dropped: they follow from the rest).
    pub fn from_resolved(text: &str) -> Result<Self, TrainError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| config_error(format!("plan: {}", e.message())))?;
        table.remove("resolved");
        let text = toml::to_string(&table).map_err(|e| config_error(e.to_string()))?;
        Self::from_toml(&text, &[])
    }

    /// The plan as `config.resolved.toml` records it: every key with its value, less those
    /// that do not apply to the model (an encoder has no `hidden`).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        let mut table = toml::Table::try_from(self).map_err(|e| config_error(e.to_string()))?;
        if self.model.kind != ModelKind::Mlp {
            if let Some(toml::Value::Table(model)) = table.get_mut("model") {
                model.remove("hidden");
            }
        }
        toml::to_string(&table).map_err(|e| config_error(e.to_string()))
    }
}

fn config_error(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

/// The sections of a resolved plan that may differ between a run and its resumption: they
/// decide how fast the same computation runs, never what it computes or releases.
pub const RESUMABLE_SECTIONS: [&str; 1] = ["performance"];

/// The first key (as `section.key`, in sorted order) whose value differs between two resolved
/// plans (the `config.resolved.toml` of a run folder), outside [`RESUMABLE_SECTIONS`]; `None`
/// when they agree. A plan that does not parse is reported as the key `(the whole plan)`.
pub fn first_plan_difference(saved: &str, new: &str) -> Option<String> {
    let parse = |text: &str| text.parse::<toml::Table>().ok();
    let (Some(mut saved), Some(mut new)) = (parse(saved), parse(new)) else {
        return Some("(the whole plan)".into());
    };
    for section in RESUMABLE_SECTIONS {
        saved.remove(section);
        new.remove(section);
    }
    first_difference("", &toml::Value::Table(saved), &toml::Value::Table(new))
}

fn first_difference(path: &str, a: &toml::Value, b: &toml::Value) -> Option<String> {
    match (a, b) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(&here, x, y),
                    _ => Some(here),
                }
            })
        }
        _ => (a != b).then(|| path.to_string()),
    }
}
