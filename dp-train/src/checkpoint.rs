//! Checkpoints that survive a crash at any moment: weights (safetensors), optimizer moments,
//! the average of the weights if the run releases one,
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
//!
//! Damage is refused, never guessed around: every checkpoint carries a manifest with the
//! SHA-256 of each of its files, checked before a resume reads anything; the run folder's
//! `ledger.json` must agree with the checkpoint's ledger and may not record more steps than it;
//! and a folder whose record says steps were spent but whose `LATEST` (or `checkpoints/`) is
//! gone is refused rather than started over. This protects against accidents and casual edits,
//! not against whoever runs the training forging their own records (they could rewrite the
//! manifest too).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use dp_core::{CorrelatedNoise, PrivacyRng, RngSnapshot};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::averaging::{WeightAverage, AVERAGE_FILE};
use crate::error::{AtPath, TrainError};
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

/// The file of a checkpoint that lists the SHA-256 of every other file in it.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The files every checkpoint holds (besides its manifest).
const REQUIRED_FILES: [&str; 4] = [
    "state.json",
    GENERATOR_FILE,
    "weights.safetensors",
    "optimizer.safetensors",
];

/// A checkpoint's files and their SHA-256 digests (hex).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    sha256: BTreeMap<String, String>,
}

/// A checkpoint whose files match its manifest and whose ledger agrees with the run folder's.
struct Verified {
    dir: PathBuf,
    state: CheckpointState,
}

fn damaged(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Damaged {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The SHA-256 of a file, in hex.
fn sha256(path: &Path) -> Result<String, TrainError> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The digests of every file in `dir` but the manifest.
fn manifest_of(dir: &Path) -> Result<Manifest, TrainError> {
    let mut sha256s = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE {
            sha256s.insert(name, sha256(&entry.path())?);
        }
    }
    Ok(Manifest { sha256: sha256s })
}

/// What a resumed run continues from.
pub(crate) struct Resumed {
    pub ledger: PrivacyLedger,
    pub optimizer: OptimizerState,
    /// The average of the weights, if the run averages them.
    pub average: Option<WeightAverage>,
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

    /// The latest checkpoint, verified (see the module docs); `None` for a folder that has
    /// recorded no steps.
    fn latest(&self) -> Result<Option<Verified>, TrainError> {
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(TrainError::File {
                action: "use as the run folder",
                path: self.dir.display().to_string(),
                source: std::io::Error::other("it is a file, not a folder"),
            });
        }
        let folder = self.folder();
        let latest = folder.join("LATEST");
        let ledger_path = self.dir.join("ledger.json");
        let name = match fs::read_to_string(&latest) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_checkpoints = fs::read_dir(&folder).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
                });
                if ledger_path.exists() || has_checkpoints {
                    return Err(damaged(
                        &latest,
                        "is missing, but the run folder records spent steps (ledger.json or a checkpoint): starting over here would lose that record; restore it, or train in a new run folder",
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(damaged(&latest, e.to_string())),
        };
        let well_formed = name.len() == 14
            && name.starts_with("step-")
            && name[5..].bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(damaged(
                &latest,
                format!("names {name:?}, not a checkpoint (step-NNNNNNNNN)"),
            ));
        }
        let dir = folder.join(&name);
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest: Manifest = fs::read_to_string(&manifest_path)
            .map_err(|e| damaged(&manifest_path, e.to_string()))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| damaged(&manifest_path, e.to_string()))
            })?;
        for required in REQUIRED_FILES {
            if !manifest.sha256.contains_key(required) {
                return Err(damaged(&manifest_path, format!("does not list {required}")));
            }
        }
        let found = manifest_of(&dir)?;
        for name in found.sha256.keys() {
            if !manifest.sha256.contains_key(name) {
                return Err(damaged(
                    &dir.join(name),
                    "is not in the checkpoint's manifest",
                ));
            }
        }
        for (name, want) in &manifest.sha256 {
            match found.sha256.get(name) {
                None => return Err(damaged(&dir.join(name), "is missing")),
                Some(got) if got != want => {
                    return Err(damaged(
                        &dir.join(name),
                        format!(
                            "does not match its SHA-256 in {MANIFEST_FILE} (damaged or edited)"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let state_path = dir.join("state.json");
        let state: CheckpointState = serde_json::from_str(&fs::read_to_string(&state_path)?)
            .map_err(|e| damaged(&state_path, e.to_string()))?;
        if state.step != state.ledger.steps || name != format!("step-{:09}", state.step) {
            return Err(damaged(
                &state_path,
                format!(
                    "says step {} with {} ledger steps, in a checkpoint named {name}",
                    state.step, state.ledger.steps
                ),
            ));
        }
        // The run folder's ledger is written after the checkpoint: it may lag behind it (a kill
        // in between), never lead it or describe another run.
        if let Ok(text) = fs::read_to_string(&ledger_path) {
            let top: LedgerRecord =
                serde_json::from_str(&text).map_err(|e| damaged(&ledger_path, e.to_string()))?;
            if top.steps > state.ledger.steps {
                return Err(damaged(
                    &ledger_path,
                    format!(
                        "records {} spent steps, more than the latest checkpoint's {}",
                        top.steps, state.ledger.steps
                    ),
                ));
            }
            let comparable = |r: &LedgerRecord| LedgerRecord {
                steps: 0,
                epsilon_spent: None,
                ..r.clone()
            };
            if comparable(&top) != comparable(&state.ledger) {
                return Err(damaged(
                    &ledger_path,
                    "describes another mechanism, budget or seed than the latest checkpoint's ledger",
                ));
            }
        }
        Ok(Some(Verified { dir, state }))
    }

    /// When the run folder holds a checkpoint, verifies it (see the module docs) and checks that
    /// `resolved` (the plan about to run, as `config.resolved.toml` writes it) is the plan that
    /// checkpoint was made with, apart from [`crate::plan::RESUMABLE_SECTIONS`]; a different plan
    /// is refused naming the first key that differs, before anything in the folder is written.
    /// A folder that has recorded no steps passes.
    pub fn check_resumed_plan(&self, resolved: &str) -> Result<(), TrainError> {
        let Some(latest) = self.latest()? else {
            return Ok(());
        };
        let saved_path = latest.dir.join("config.resolved.toml");
        let saved = fs::read_to_string(&saved_path).map_err(|e| {
            TrainError::RunFolderMismatch(format!(
                "{}: {e}: the run folder's checkpoint does not say which plan made it; use a new folder",
                saved_path.display()
            ))
        })?;
        match crate::plan::first_plan_difference(&saved, resolved) {
            None => Ok(()),
            Some(key) => Err(TrainError::RunFolderMismatch(format!(
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
        average: Option<&WeightAverage>,
        rng: &PrivacyRng,
        ledger: &PrivacyLedger,
        correlated: Option<&CorrelatedNoise>,
    ) -> Result<(), TrainError> {
        self.write_checkpoint(vs, optimizer, average, rng, ledger, correlated)
            .at("write a checkpoint in", &self.folder())
    }

    fn write_checkpoint(
        &self,
        vs: &nn::VarStore,
        optimizer: &OptimizerState,
        average: Option<&WeightAverage>,
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
        if let Some(average) = average {
            average.save(&tmp.join(AVERAGE_FILE))?;
            sync(&tmp.join(AVERAGE_FILE))?;
        }
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
        write_synced(
            &tmp.join(MANIFEST_FILE),
            pretty_json(&manifest_of(&tmp)?)?.as_bytes(),
        )?;
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

    /// The latest checkpoint of the run folder `dir`, verified (see the module docs): its
    /// folder and the ledger of the steps that made its weights. A run without one (no step
    /// taken yet) is an error.
    pub fn latest_checkpoint(dir: &Path) -> Result<(PathBuf, LedgerRecord), TrainError> {
        let reader = Self {
            dir: dir.to_path_buf(),
            every: 1,
            resolved_config: None,
        };
        match reader.latest()? {
            Some(Verified { dir, state }) => Ok((dir, state.ledger)),
            None if !dir.is_dir() => Err(TrainError::File {
                action: "read the run folder",
                path: dir.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            None => Err(TrainError::RunFolderMismatch(format!(
                "{} holds no checkpoint: it is not a run folder, or its run has not finished a step",
                dir.display()
            ))),
        }
    }

    /// Loads the latest checkpoint into `vs` (the iterate, not its average), if there is one.
    pub(crate) fn resume(
        &self,
        vs: &nn::VarStore,
        optimizer: Optimizer,
        average_decay: Option<f64>,
    ) -> Result<Option<Resumed>, TrainError> {
        let Some(Verified { dir, state }) = self.latest()? else {
            return Ok(None);
        };
        let corrupt = |what: &str| damaged(&dir, what);
        let generator_path = dir.join(GENERATOR_FILE);
        let generator: RngSnapshot = serde_json::from_str(&fs::read_to_string(&generator_path)?)
            .map_err(|e| damaged(&generator_path, e.to_string()))?;
        let weights_path = dir.join("weights.safetensors");
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(&weights_path)?
            .into_iter()
            .collect();
        copy_weights(vs, &saved, &weights_path)?;
        let average = average_decay
            .map(|decay| {
                let path = dir.join(AVERAGE_FILE);
                if path.exists() {
                    WeightAverage::load(decay, &path)
                } else {
                    Err(corrupt(
                        "the run averages its weights, but the checkpoint holds no average",
                    ))
                }
            })
            .transpose()?;
        Ok(Some(Resumed {
            ledger: PrivacyLedger::from_record(&state.ledger)?,
            optimizer: OptimizerState::load(
                optimizer,
                &dir.join("optimizer.safetensors"),
                state.optimizer_steps,
            )?,
            average,
            rng: PrivacyRng::resume(&generator).ok_or_else(|| corrupt("bad generator state"))?,
            correlated_noise: state
                .ledger
                .correlated_steps
                .map(|_| Tensor::read_safetensors(dir.join("noise.safetensors")))
                .transpose()?,
        }))
    }
}

/// Copies `weights` (read from `path`) into the variables of `vs`: every variable must be in the file with its
/// shape, and the file may hold nothing else.
pub(crate) fn copy_weights(
    vs: &nn::VarStore,
    weights: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<(), TrainError> {
    let damaged = |reason: String| TrainError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    let variables = vs.variables();
    if let Some(extra) = weights.keys().find(|n| !variables.contains_key(*n)) {
        return Err(damaged(format!(
            "holds {extra}, which the run's model does not have"
        )));
    }
    tch::no_grad(|| {
        for (name, var) in &variables {
            let saved = weights
                .get(name)
                .ok_or_else(|| damaged(format!("has no {name}")))?;
            if saved.size() != var.size() {
                return Err(damaged(format!(
                    "{name} has shape {:?}, the model's {:?}",
                    saved.size(),
                    var.size()
                )));
            }
            var.shallow_clone().f_copy_(saved)?;
        }
        Ok(())
    })
}
