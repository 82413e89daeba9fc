//! An exponential moving average of the trained weights (Polyak averaging; used for DP
//! training by De et al. 2022, "Unlocking High-Accuracy Differentially Private Image
//! Classification through Scale", section 3.3): after each step,
//! `a = d a + (1 - d) theta`, started at the weights after the first step, and the run releases
//! `a` in place of its last iterate. Each step's noise moves the weights at random; the
//! average keeps the direction the steps share and damps the noise of the last few.
//!
//! The average is a function of the noisy iterates, each of which the ledger already accounts
//! as released, so it costs no privacy. Checkpoints keep it beside the iterate
//! (`average.safetensors`): a resumed run continues both, and a run folder's model
//! ([`crate::TrainedModel`]) is the average.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::Tensor;

use crate::error::TrainError;

/// The file of a checkpoint that holds the average of the weights.
pub(crate) const AVERAGE_FILE: &str = "average.safetensors";

/// The running average of the trained variables.
#[derive(Debug)]
pub(crate) struct WeightAverage {
    decay: f64,
    average: BTreeMap<String, Tensor>,
}

impl WeightAverage {
    /// No step averaged yet.
    pub fn new(decay: f64) -> Self {
        Self {
            decay,
            average: BTreeMap::new(),
        }
    }

    /// Checks that `decay` is in (0, 1).
    pub fn check(decay: f64) -> Result<(), TrainError> {
        if decay > 0.0 && decay < 1.0 {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "training.average_decay must be in (0, 1), got {decay}"
            )))
        }
    }

    /// Folds in the variables `names` of `variables` after a step.
    pub fn update<'a>(
        &mut self,
        variables: &HashMap<String, Tensor>,
        names: impl Iterator<Item = &'a String>,
    ) -> Result<(), TrainError> {
        let d = self.decay;
        tch::no_grad(|| {
            for name in names {
                let theta = &variables[name];
                let a = self
                    .average
                    .entry(name.clone())
                    .or_insert_with(|| theta.copy());
                *a = a.f_mul_scalar(d)?.f_add(&theta.f_mul_scalar(1.0 - d)?)?;
            }
            Ok(())
        })
    }

    /// Writes the average into the variables it averages: what the run releases.
    pub fn release_into(&self, variables: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        tch::no_grad(|| {
            for (name, a) in &self.average {
                variables[name].shallow_clone().f_copy_(a)?;
            }
            Ok(())
        })
    }

    /// Writes the average to `path` (safetensors, by variable name).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let named: Vec<(&str, &Tensor)> =
            self.average.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Ok(Tensor::write_safetensors(&named, path)?)
    }

    /// The average saved at `path` by [`WeightAverage::save`].
    pub fn load(decay: f64, path: &Path) -> Result<Self, TrainError> {
        Ok(Self {
            decay,
            average: read(path)?,
        })
    }
}

/// The averaged variables of a checkpoint folder, if the run averages: they replace the
/// iterate's values in the model the run folder holds.
pub(crate) fn released_from(
    checkpoint: &Path,
) -> Result<Option<BTreeMap<String, Tensor>>, TrainError> {
    let path = checkpoint.join(AVERAGE_FILE);
    path.exists().then(|| read(&path)).transpose()
}

fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(path)?.into_iter().collect())
}
