//! Checkpoints that survive a crash at any moment: weights (safetensors), optimizer moments,
//! the privacy generator's exact state, the correlated-noise state if any, the ledger and the
//! resolved configuration, written to a fresh folder, flushed to disk, renamed into place, and
//! only then pointed to by `LATEST` (itself replaced by rename). A kill leaves either the
//! previous checkpoint or the new one, never a mix.
//!
//! The generator's state (`generator.json`) and the correlated-noise state
//! (`noise.safetensors`) are secrets: whoever reads them can reproduce the noise and remove it
//! from the released weights. They are kept in files of their own, created readable and
//! writable by their owner only (mode 0600), apart from what is meant to be shared.
//!
//! Resuming replays the steps after the last checkpoint from the same generator state, so they
//! draw the same batches and the same noise: the replayed outputs are the ones the killed
//! process computed (and never released), and the ledger counts each step once.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use dp_core::{CorrelatedNoise, PrivacyRng, RngSnapshot};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::TrainError;
use crate::ledger::{LedgerRecord, PrivacyLedger};
use crate::optimizer::{Optimizer, OptimizerState};

/// Where and how often to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointing {
    /// The run folder; checkpoints go to `checkpoints/` inside it, the ledger to `ledger.json`.
    pub dir: PathBuf,
    /// Save every this many steps (and after the last).
    pub every: u64,
    /// The resolved configuration, saved inside every checkpoint with the state it produced.
    pub resolved_config: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    optimizer_steps: u64,
    ledger: LedgerRecord,
}

/// The file of a checkpoint that holds the privacy generator's state.
pub const GENERATOR_FILE: &str = "generator.json";

/// What a resumed run continues from.
pub(crate) struct Resumed {
    pub ledger: PrivacyLedger,
    pub optimizer: OptimizerState,
    pub rng: PrivacyRng,
    /// The correlated-noise state (past draws, outputs or buffers), if the run has one.
    pub correlated_noise: Option<Vec<(String, Tensor)>>,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Like [`write_synced`], for a secret: the file is created with mode 0600 (owner only), so its
/// contents never exist in a file others can read.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// `value` as pretty JSON; a value that cannot be written is an error, never an empty file.
fn pretty_json(value: &impl Serialize) -> Result<String, TrainError> {
    serde_json::to_string_pretty(value).map_err(|e| TrainError::Io(std::io::Error::other(e)))
}

fn sync(path: &Path) -> Result<(), TrainError> {
    File::open(path)?.sync_all()?;
    Ok(())
}

impl Checkpointing {
    fn folder(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// When the run folder holds a checkpoint, checks that `resolved` (the plan about to run,
    /// as `config.resolved.toml` writes it) is the plan that checkpoint was made with, apart from
    /// [`crate::plan::RESUMABLE_SECTIONS`]; a different plan is refused naming the first key
    /// that differs, before anything in the folder is written. A folder without a checkpoint
    /// passes.
    pub fn check_resumed_plan(&self, resolved: &str) -> Result<(), TrainError> {
        let folder = self.folder();
        let Ok(name) = fs::read_to_string(folder.join("LATEST")) else {
            return Ok(());
        };
        let saved_path = folder.join(name.trim()).join("config.resolved.toml");
        let saved = fs::read_to_string(&saved_path).map_err(|e| {
            TrainError::Config(format!(
                "{}: {e}: the run folder's checkpoint does not say which plan made it; use a new folder",
                saved_path.display()
            ))
        })?;
        match crate::plan::first_plan_difference(&saved, resolved) {
            None => Ok(()),
            Some(key) => Err(TrainError::Config(format!(
                "{key} differs from the plan of the run in {} (only [{}] settings may change on a resume); use the same plan or a new folder",
                self.dir.display(),
                crate::plan::RESUMABLE_SECTIONS.join("], [")
            ))),
        }
    }

    /// Saves the state after `ledger.steps()` steps.
    pub(crate) fn save(
        &self,
        vs: &nn::VarStore,
        optimizer: &OptimizerState,
        rng: &PrivacyRng,
        ledger: &PrivacyLedger,
        correlated: Option<&CorrelatedNoise>,
    ) -> Result<(), TrainError> {
        let step = ledger.steps();
        let folder = self.folder();
        fs::create_dir_all(&folder)?;
        let tmp = folder.join(format!(".tmp-{step:09}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        vs.save(tmp.join("weights.safetensors"))?;
        optimizer.save(&tmp.join("optimizer.safetensors"))?;
        if let Some(noise) = correlated {
            let (tensors, _) = noise.state()?;
            let named: Vec<(String, &Tensor)> =
                tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
            // Created owner-only first, then written by libtorch (which truncates, keeping
            // the mode).
            let path = tmp.join("noise.safetensors");
            write_secret(&path, b"")?;
            Tensor::write_safetensors(&named, &path)?;
            sync(&path)?;
        }
        write_secret(
            &tmp.join(GENERATOR_FILE),
            pretty_json(&rng.snapshot())?.as_bytes(),
        )?;
        let record = ledger.record()?;
        let state = CheckpointState {
            step,
            optimizer_steps: optimizer.steps(),
            ledger: record.clone(),
        };
        write_synced(&tmp.join("state.json"), pretty_json(&state)?.as_bytes())?;
        if let Some(config) = &self.resolved_config {
            write_synced(&tmp.join("config.resolved.toml"), config.as_bytes())?;
        }
        sync(&tmp.join("weights.safetensors"))?;
        sync(&tmp.join("optimizer.safetensors"))?;
        let name = format!("step-{step:09}");
        let target = folder.join(&name);
        if target.exists() {
            fs::remove_dir_all(&target)?;
        }
        fs::rename(&tmp, &target)?;
        write_synced(&folder.join("LATEST.tmp"), name.as_bytes())?;
        fs::rename(folder.join("LATEST.tmp"), folder.join("LATEST"))?;
        write_synced(
            &self.dir.join("ledger.json.tmp"),
            pretty_json(&record)?.as_bytes(),
        )?;
        fs::rename(
            self.dir.join("ledger.json.tmp"),
            self.dir.join("ledger.json"),
        )?;
        sync(&folder)?;
        // Older checkpoints are no longer needed.
        for entry in fs::read_dir(&folder)? {
            let path = entry?.path();
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if file.starts_with("step-") && file != name {
                fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    /// Loads the latest checkpoint into `vs`, if there is one.
    pub(crate) fn resume(
        &self,
        vs: &nn::VarStore,
        optimizer: Optimizer,
    ) -> Result<Option<Resumed>, TrainError> {
        let folder = self.folder();
        let Ok(name) = fs::read_to_string(folder.join("LATEST")) else {
            return Ok(None);
        };
        let dir = folder.join(name.trim());
        let corrupt = |what: &str| {
            TrainError::Config(format!(
                "checkpoint {} is unreadable: {what}",
                dir.display()
            ))
        };
        let state: CheckpointState =
            serde_json::from_str(&fs::read_to_string(dir.join("state.json"))?)
                .map_err(|e| corrupt(&e.to_string()))?;
        let generator: RngSnapshot = fs::read_to_string(dir.join(GENERATOR_FILE))
            .map_err(|e| corrupt(&format!("{GENERATOR_FILE}: {e}")))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| corrupt(&format!("{GENERATOR_FILE}: {e}")))
            })?;
        let variables = vs.variables();
        let saved = Tensor::read_safetensors(dir.join("weights.safetensors"))?;
        if saved.len() != variables.len() {
            return Err(corrupt("its variables differ from the model's"));
        }
        tch::no_grad(|| -> Result<(), TrainError> {
            for (name, tensor) in &saved {
                let var = variables
                    .get(name)
                    .ok_or_else(|| corrupt(&format!("unknown variable {name}")))?;
                var.shallow_clone().f_copy_(tensor)?;
            }
            Ok(())
        })?;
        Ok(Some(Resumed {
            ledger: PrivacyLedger::from_record(&state.ledger)?,
            optimizer: OptimizerState::load(
                optimizer,
                &dir.join("optimizer.safetensors"),
                state.optimizer_steps,
            )?,
            rng: PrivacyRng::resume(&generator).ok_or_else(|| corrupt("bad generator state"))?,
            correlated_noise: state
                .ledger
                .correlated_steps
                .map(|_| Tensor::read_safetensors(dir.join("noise.safetensors")))
                .transpose()?,
        }))
    }
}
