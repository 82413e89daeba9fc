//! What a plan trains: the dataset named by `[data]` and the model named by `[model]`, placed
//! on a device. `[data]` fixes the N of the sampling rate; the loaders never change it.

use std::path::Path;

use tch::{nn, Device, Tensor};

use crate::data::assets_dir;
use crate::dpsgd::Batches;
use crate::error::TrainError;
use crate::fashion_mnist::FashionMnist;
use crate::models::{CachedEncoder, Classifier, EncoderClassifier, Mlp, Precision};
use crate::plan::{Dataset, Sampling, TrainConfig};
use crate::text::TextClassification;
use crate::trained::pretrained_dir;

/// A model with its variables and its data, ready for [`crate::train_with_hooks`].
pub struct Job {
    /// The model's variables (frozen ones have `requires_grad = false`).
    pub vs: nn::VarStore,
    /// The model.
    pub model: Box<dyn Classifier>,
    /// Training inputs (the first `data.dataset_size`).
    pub train_inputs: Tensor,
    /// Training labels.
    pub train_labels: Tensor,
    /// Validation inputs: the `validation` training examples after the first N, in file order
    /// (none unless asked for, by tuning).
    pub validation_inputs: Tensor,
    /// Validation labels.
    pub validation_labels: Tensor,
    /// Test inputs.
    pub test_inputs: Tensor,
    /// Test labels.
    pub test_labels: Tensor,
    /// What is trained on what, for reports.
    pub description: String,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Loads the data (from `data_dir`, or the dataset's folder under the assets) and builds
    /// the model on `device`. With frozen bottom blocks, their outputs are computed once for
    /// every example first; `on_cache` sees (examples done, total).
    pub fn load(
        config: &TrainConfig,
        device: Device,
        data_dir: Option<&Path>,
        on_cache: impl FnMut(i64, i64),
    ) -> Result<Self, TrainError> {
        Self::load_with_validation(config, device, data_dir, 0, on_cache)
    }

    /// Like [`Job::load`], with a validation split of the `validation` training examples after
    /// the first N (by position in the file: adding or removing one of them moves at most one
    /// other across the split).
    pub fn load_with_validation(
        config: &TrainConfig,
        device: Device,
        data_dir: Option<&Path>,
        validation: usize,
        mut on_cache: impl FnMut(i64, i64),
    ) -> Result<Self, TrainError> {
        config.check()?;
        let folder = |name: &str| {
            data_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| assets_dir().join(name))
        };
        let vs = nn::VarStore::new(device);
        let n = config.data.dataset_size;
        let v = validation as i64;
        let check_size = |available: i64| {
            if n as i64 + v > available {
                Err(TrainError::Config(format!(
                    "data.dataset_size {n}{} exceeds the {available} training examples of {}",
                    if v > 0 {
                        format!(" and {v} validation examples")
                    } else {
                        String::new()
                    },
                    config.data.dataset
                )))
            } else {
                Ok(())
            }
        };
        if config.data.dataset == Dataset::FashionMnist {
            let data = FashionMnist::load(&folder("fashion-mnist"))?;
            check_size(data.train_labels.size()[0])?;
            let mut dims = vec![784];
            dims.extend(&config.model.hidden);
            dims.push(10);
            let model = Box::new(Mlp::new(&vs.root(), &dims));
            let first = |t: &Tensor| t.narrow(0, 0, n as i64).to_device(device);
            let after = |t: &Tensor| t.narrow(0, n as i64, v).to_device(device);
            return Ok(Self {
                model,
                train_inputs: first(&data.train_images),
                train_labels: first(&data.train_labels),
                validation_inputs: after(&data.train_images),
                validation_labels: after(&data.train_labels),
                test_inputs: data.test_images.to_device(device),
                test_labels: data.test_labels.to_device(device),
                description: format!("Fashion-MNIST MLP {:?}", config.model.hidden),
                vs,
            });
        }
        let dir = pretrained_dir(config);
        let tokenizer = dir.join("tokenizer.json");
        let (data, name) = match (&config.data.train_file, &config.data.test_file) {
            (Some(train), Some(test)) => (
                TextClassification::from_csv(train, test, &tokenizer, config.data.max_length)?,
                train.display().to_string(),
            ),
            _ => (
                TextClassification::rotten_tomatoes(
                    &folder("rotten-tomatoes"),
                    &tokenizer,
                    config.data.max_length,
                )?,
                "Rotten Tomatoes".to_string(),
            ),
        };
        check_size(data.train.labels.size()[0])?;
        let finetune = config.model.finetune;
        let model = EncoderClassifier::pretrained(&vs, &dir, data.classes, finetune)?
            .with_precision(config.model.precision);
        let layers = model.layers();
        let description = format!(
            "{name}, encoder {} fine-tuned on {}, {} activations",
            dir.display(),
            finetune.describe(layers),
            match config.model.precision {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            }
        );
        let first = |t: &Tensor| t.narrow(0, 0, n as i64);
        // Cyclic (matrix-factorization) runs put example i in batch i mod b: the order must not
        // depend on any example's content, or zeroing one example would move others between
        // batches. Poisson runs sample each example independently, so any order will do.
        let (train_ids, train_labels) = if config.privacy.sampling == Sampling::Cyclic {
            (first(&data.train.ids), first(&data.train.labels))
        } else {
            by_length(first(&data.train.ids), first(&data.train.labels))
        };
        let (validation_ids, validation_labels) = (
            data.train.ids.narrow(0, n as i64, v).to_device(device),
            data.train.labels.narrow(0, n as i64, v).to_device(device),
        );
        let (test_ids, test_labels) = by_length(data.test.ids, data.test.labels);
        let (train_ids, test_ids) = (train_ids.to_device(device), test_ids.to_device(device));
        let (train_labels, test_labels) = (
            train_labels.to_device(device),
            test_labels.to_device(device),
        );
        let frozen = finetune.frozen_blocks(layers);
        if frozen == 0 {
            return Ok(Self {
                vs,
                model: Box::new(model),
                train_inputs: train_ids,
                train_labels,
                validation_inputs: validation_ids,
                validation_labels,
                test_inputs: test_ids,
                test_labels,
                description,
            });
        }
        // The frozen bottom runs once per example; inputs become indices into its outputs.
        let all_ids = Tensor::cat(&[&train_ids, &validation_ids, &test_ids], 0);
        let total = all_ids.size()[0];
        let cached = CachedEncoder::new(model, frozen, &all_ids, 256, |done| on_cache(done, total));
        let index = |range: std::ops::Range<i64>| {
            Tensor::arange_start(range.start, range.end, (tch::Kind::Int64, device))
        };
        let n_train = train_labels.size()[0];
        Ok(Self {
            vs,
            model: Box::new(cached),
            train_inputs: index(0..n_train),
            train_labels,
            validation_inputs: index(n_train..n_train + v),
            validation_labels,
            test_inputs: index(n_train + v..total),
            test_labels,
            description: format!("{description}; the {frozen} frozen blocks run once per example"),
        })
    }

    /// The training data.
    pub fn train_data(&self) -> Batches<'_> {
        Batches {
            inputs: &self.train_inputs,
            labels: &self.train_labels,
        }
    }

    /// The validation data (empty unless loaded with a validation split).
    pub fn validation_data(&self) -> Batches<'_> {
        Batches {
            inputs: &self.validation_inputs,
            labels: &self.validation_labels,
        }
    }

    /// The test data.
    pub fn test_data(&self) -> Batches<'_> {
        Batches {
            inputs: &self.test_inputs,
            labels: &self.test_labels,
        }
    }

    /// A copy of every variable's current value, by name.
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.detach().copy()))
            .collect()
    }

    /// Sets every variable to its value in `snapshot` (from [`Job::snapshot`]).
    pub fn restore(&self, snapshot: &[(String, Tensor)]) {
        tch::no_grad(|| {
            let variables = self.vs.variables();
            for (name, value) in snapshot {
                variables[name].shallow_clone().copy_(value);
            }
        });
    }

    /// Trainable and total parameter counts.
    pub fn parameter_counts(&self) -> (i64, i64) {
        self.vs
            .variables()
            .values()
            .fold((0, 0), |(trainable, total), t| {
                let n = t.numel() as i64;
                (trainable + if t.requires_grad() { n } else { 0 }, total + n)
            })
    }
}

/// Token sequences (N, L) padded with 0 reordered by length (stable), with their labels, for
/// Poisson runs. Poisson batches list their examples in dataset order, so the physical batches
/// of a logical batch then hold snippets of similar length and need little padding. The order
/// has no effect on a Poisson run's privacy: each example still joins each batch independently
/// with probability q, and clipped sums do not depend on order. (Cyclic runs keep the file's
/// order: their batches are fixed by position.)
fn by_length(inputs: Tensor, labels: Tensor) -> (Tensor, Tensor) {
    let lengths = inputs.ne(0).sum_dim_intlist(1, false, tch::Kind::Int64);
    let (_, order) = lengths.sort_stable(true, 0, false);
    (
        inputs.index_select(0, &order),
        labels.index_select(0, &order),
    )
}
