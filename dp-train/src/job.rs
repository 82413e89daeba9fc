//! What a plan trains: the dataset named by `[data]` and the model named by `[model]`, placed
//! on a device. `[data]` fixes the N of the sampling rate; the loaders never change it.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};

use crate::data::assets_dir;
use crate::dpsgd::Batches;
use crate::error::TrainError;
use crate::fashion_mnist::FashionMnist;
use crate::models::{Classifier, EncoderClassifier, Mlp};
use crate::plan::TrainConfig;
use crate::rotten_tomatoes::RottenTomatoes;

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
    /// the model on `device`.
    pub fn load(
        config: &TrainConfig,
        device: Device,
        data_dir: Option<&Path>,
    ) -> Result<Self, TrainError> {
        config.resolve()?;
        let folder = |name: &str| {
            data_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| assets_dir().join(name))
        };
        let vs = nn::VarStore::new(device);
        let (model, description, train, test): (Box<dyn Classifier>, _, _, _) =
            match config.data.dataset.as_str() {
                "fashion-mnist" => {
                    let data = FashionMnist::load(&folder("fashion-mnist"))?;
                    let mut dims = vec![784];
                    dims.extend(&config.model.hidden);
                    dims.push(10);
                    (
                        Box::new(Mlp::new(&vs.root(), &dims)),
                        format!("Fashion-MNIST MLP {:?}", config.model.hidden),
                        (data.train_images, data.train_labels),
                        (data.test_images, data.test_labels),
                    )
                }
                _ => {
                    let data = RottenTomatoes::load(
                        &folder("rotten-tomatoes"),
                        &pretrained_dir(config).join("tokenizer.json"),
                        config.data.max_length,
                    )?;
                    let dir = pretrained_dir(config);
                    let finetune = config.model.finetune;
                    let model = EncoderClassifier::pretrained(&vs, &dir, 2, finetune)?;
                    let layers = model.layers();
                    (
                        Box::new(model),
                        format!(
                            "Rotten Tomatoes, encoder {} fine-tuned on {}",
                            dir.display(),
                            finetune.describe(layers)
                        ),
                        (data.train.ids, data.train.labels),
                        (data.test.ids, data.test.labels),
                    )
                }
            };
        let n = config.data.dataset_size;
        let available = train.1.size()[0] as usize;
        if n > available {
            return Err(TrainError::Config(format!(
                "data.dataset_size {n} exceeds the {available} training examples of {}",
                config.data.dataset
            )));
        }
        let first = |t: &Tensor| t.narrow(0, 0, n as i64);
        let (train_inputs, train_labels) = by_length(first(&train.0), first(&train.1));
        let (test_inputs, test_labels) = by_length(test.0, test.1);
        Ok(Self {
            vs,
            model,
            train_inputs: train_inputs.to_device(device),
            train_labels: train_labels.to_device(device),
            test_inputs: test_inputs.to_device(device),
            test_labels: test_labels.to_device(device),
            description,
        })
    }

    /// The training data.
    pub fn train_data(&self) -> Batches<'_> {
        Batches {
            inputs: &self.train_inputs,
            labels: &self.train_labels,
        }
    }

    /// The test data.
    pub fn test_data(&self) -> Batches<'_> {
        Batches {
            inputs: &self.test_inputs,
            labels: &self.test_labels,
        }
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

/// Token sequences (N, L) padded with 0 reordered by length (stable), with their labels; other
/// inputs unchanged. Poisson batches list their examples in dataset order, so the physical
/// batches of a logical batch then hold snippets of similar length and need little padding.
/// The order of the dataset has no effect on privacy: each example still joins each batch
/// independently with probability q, and clipped sums do not depend on order.
fn by_length(inputs: Tensor, labels: Tensor) -> (Tensor, Tensor) {
    if inputs.kind() != tch::Kind::Int64 || inputs.dim() != 2 {
        return (inputs, labels);
    }
    let lengths = inputs.ne(0).sum_dim_intlist(1, false, tch::Kind::Int64);
    let (_, order) = lengths.sort_stable(true, 0, false);
    (
        inputs.index_select(0, &order),
        labels.index_select(0, &order),
    )
}

fn pretrained_dir(config: &TrainConfig) -> PathBuf {
    config
        .model
        .pretrained
        .clone()
        .unwrap_or_else(|| assets_dir().join("minilm"))
}
