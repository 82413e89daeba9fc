//! A trained model read back from its run folder, for `evaluate`, `predict` and `export`: the
//! plan it was trained with (`config.resolved.toml`), the weights of its latest checkpoint
//! (verified against the checkpoint's manifest first) and the ledger of the steps that made
//! those weights.
//!
//! What the model computes is post-processing of its weights: it costs no privacy on data that
//! was not trained on. Numbers computed *from* a private dataset (an accuracy on it) are a new
//! query to that dataset, not covered by the run's guarantee; `evaluate` says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dp_core::Tape;
use tch::{nn, Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::averaging::{released_from, AVERAGE_FILE};
use crate::checkpoint::{copy_weights, Checkpointing};
use crate::data::assets_dir;
use crate::error::{AtPath, TrainError};
use crate::fashion_mnist::FashionMnist;
use crate::ledger::{LedgerRecord, PrivacyLedger};
use crate::models::{Classifier, EncoderClassifier, EncoderShape, Mlp, PAD_ID};
use crate::plan::{Dataset, ModelKind, TrainConfig};
use crate::statement::PrivacyStatement;
use crate::text::{self, Snippet};

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Rotten Tomatoes' class names, by label.
pub const ROTTEN_TOMATOES_CLASSES: [&str; 2] = ["rotten", "fresh"];

/// Examples per forward pass.
const BATCH: i64 = 128;

/// Inputs for the model.
#[derive(Debug)]
pub enum Examples {
    /// Standardised Fashion-MNIST images, (N, 784).
    Images(Tensor),
    /// Texts, tokenized with the run's tokenizer and truncated to its `max_length`.
    Texts(Vec<String>),
}

impl Examples {
    /// How many examples.
    pub fn len(&self) -> usize {
        match self {
            Examples::Images(x) => x.size()[0] as usize,
            Examples::Texts(t) => t.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Examples with their labels, and where they came from (for reports).
#[derive(Debug)]
pub struct Labelled {
    /// The inputs.
    pub examples: Examples,
    /// Their labels.
    pub labels: Vec<i64>,
    /// Where they came from ("the test split of Rotten Tomatoes", a file name).
    pub source: String,
}

enum Net {
    Mlp(Mlp),
    Encoder {
        model: Box<EncoderClassifier>,
        tokenizer: Box<Tokenizer>,
        dir: PathBuf,
    },
}

/// A trained model and what it was trained with.
pub struct TrainedModel {
    /// The run's plan.
    pub config: TrainConfig,
    /// The ledger of the steps that made these weights.
    pub ledger: LedgerRecord,
    /// The steps the plan planned (more than `ledger.steps` for an unfinished run).
    pub planned_steps: u64,
    /// Class names, by label.
    pub class_names: Vec<String>,
    /// The checkpoint the weights come from.
    pub checkpoint: PathBuf,
    vs: nn::VarStore,
    net: Net,
}

impl std::fmt::Debug for TrainedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainedModel")
            .field("checkpoint", &self.checkpoint)
            .field("class_names", &self.class_names)
            .finish_non_exhaustive()
    }
}

impl TrainedModel {
    /// Reads the run folder `run_dir` and builds its model on `device` with the weights of its
    /// latest checkpoint.
    pub fn load(run_dir: &Path, device: Device) -> Result<Self, TrainError> {
        let (checkpoint, ledger) = Checkpointing::latest_checkpoint(run_dir)?;
        let plan_path = checkpoint.join("config.resolved.toml");
        let text = std::fs::read_to_string(&plan_path).at("read", &plan_path)?;
        let config = TrainConfig::from_resolved(&text)?;
        let planned_steps = config.resolve()?.steps;
        let weights_path = checkpoint.join("weights.safetensors");
        let mut weights: BTreeMap<String, Tensor> = Tensor::read_safetensors(&weights_path)
            .at("read", &weights_path)?
            .into_iter()
            .collect();
        // A run that averages its weights releases the average (docs/training.md).
        if let Some(average) = released_from(&checkpoint).at("read the average in", &checkpoint)? {
            for (name, a) in average {
                if !weights.contains_key(&name) {
                    return Err(TrainError::Damaged {
                        path: checkpoint.join(AVERAGE_FILE).display().to_string(),
                        reason: format!("averages {name}, which the weights do not hold"),
                    });
                }
                weights.insert(name, a);
            }
        }
        let vs = nn::VarStore::new(device);
        let (net, class_names) = if config.model.kind == ModelKind::Mlp {
            let mut dims = vec![784];
            dims.extend(&config.model.hidden);
            dims.push(10);
            let names = FASHION_MNIST_CLASSES.map(String::from).to_vec();
            (Net::Mlp(Mlp::new(&vs.root(), &dims)), names)
        } else {
            let dir = pretrained_dir(&config);
            let shape = EncoderShape::from_config_json(&dir.join("config.json"))?;
            let classes = weights
                .get("classifier.weight")
                .map(|w| w.size()[0])
                .ok_or_else(|| TrainError::Damaged {
                    path: weights_path.display().to_string(),
                    reason: "has no classifier.weight".into(),
                })?;
            let model = EncoderClassifier::new(&vs.root(), shape, classes, config.model.finetune)
                .with_precision(config.model.precision);
            let tokenizer =
                text::load_tokenizer(&dir.join("tokenizer.json"), config.data.max_length)?;
            let names = match config.data.dataset {
                Dataset::RottenTomatoes => ROTTEN_TOMATOES_CLASSES.map(String::from).to_vec(),
                _ => (0..classes).map(|k| k.to_string()).collect(),
            };
            let net = Net::Encoder {
                model: Box::new(model),
                tokenizer: Box::new(tokenizer),
                dir,
            };
            (net, names)
        };
        copy_weights(&vs, &weights, &weights_path)?;
        Ok(Self {
            config,
            ledger,
            planned_steps,
            class_names,
            checkpoint,
            vs,
            net,
        })
    }

    /// The privacy statement of the steps that made these weights.
    pub fn statement(&self) -> Result<PrivacyStatement, TrainError> {
        PrivacyStatement::from_ledger(
            &PrivacyLedger::from_record(&self.ledger)?,
            self.config.data.dataset_size,
            self.config.privacy.clip_norm,
            self.ledger.seed,
        )
    }

    /// The model's variables by name (LoRA adapters separate from the weights they adapt).
    pub fn variables(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// For an encoder, the pretrained folder it started from (config, tokenizer).
    pub fn pretrained_dir(&self) -> Option<&Path> {
        match &self.net {
            Net::Encoder { dir, .. } => Some(dir),
            Net::Mlp(_) => None,
        }
    }

    /// For an encoder, its number of transformer blocks.
    pub fn encoder_layers(&self) -> Option<i64> {
        match &self.net {
            Net::Encoder { model, .. } => Some(model.layers()),
            Net::Mlp(_) => None,
        }
    }

    /// The plan's test split: Fashion-MNIST's 10,000 test images, the Rotten Tomatoes test
    /// snippets, or the plan's `test_file`.
    pub fn test_set(&self) -> Result<Labelled, TrainError> {
        let data = &self.config.data;
        match data.dataset {
            Dataset::FashionMnist => {
                let data = FashionMnist::load(&assets_dir().join("fashion-mnist"))?;
                let labels = Vec::<i64>::try_from(&data.test_labels)?;
                Ok(Labelled {
                    examples: Examples::Images(data.test_images),
                    labels,
                    source: "the Fashion-MNIST test split".into(),
                })
            }
            Dataset::RottenTomatoes => {
                let path = assets_dir().join("rotten-tomatoes").join(text::CSV_FILE);
                let test: Vec<Snippet> = text::read_rotten_tomatoes(&path)?
                    .into_iter()
                    .filter(|s| text::is_test(&s.text))
                    .collect();
                Ok(self.labelled_texts(test, "the Rotten Tomatoes test split".into()))
            }
            Dataset::TextCsv => {
                let path = data.test_file.as_deref().ok_or_else(|| {
                    TrainError::Config("the run's plan names no data.test_file".into())
                })?;
                self.labelled_csv(path)
            }
        }
    }

    /// The labelled CSV at `path` (`text` and `label` columns), for a text model.
    pub fn labelled_csv(&self, path: &Path) -> Result<Labelled, TrainError> {
        if matches!(self.net, Net::Mlp(_)) {
            return Err(TrainError::Config(
                "--data takes a labelled text CSV, for text models; a Fashion-MNIST run is evaluated on its test split".into(),
            ));
        }
        let snippets = text::read_labelled_csv(path)?;
        let classes = self.class_names.len() as i64;
        if let Some(s) = snippets.iter().find(|s| s.label >= classes) {
            return Err(TrainError::Data {
                what: "a labelled CSV",
                path: path.display().to_string(),
                reason: format!(
                    "label {} is not one of the model's {classes} classes (0..{})",
                    s.label,
                    classes - 1
                ),
            });
        }
        Ok(self.labelled_texts(snippets, path.display().to_string()))
    }

    fn labelled_texts(&self, snippets: Vec<Snippet>, source: String) -> Labelled {
        let labels = snippets.iter().map(|s| s.label).collect();
        Labelled {
            examples: Examples::Texts(snippets.into_iter().map(|s| s.text).collect()),
            labels,
            source,
        }
    }

    /// Logits (N, classes) in f32 on the CPU, in the examples' order.
    pub fn logits(&self, examples: &Examples) -> Result<Tensor, TrainError> {
        let device = self.vs.device();
        let (inputs, model): (Tensor, &dyn Classifier) = match (examples, &self.net) {
            (Examples::Images(x), Net::Mlp(mlp)) => (x.to_device(device), mlp),
            (
                Examples::Texts(texts),
                Net::Encoder {
                    model, tokenizer, ..
                },
            ) => {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                let ids = text::token_ids(tokenizer, &texts, self.config.data.max_length)?;
                (ids.to_device(device), model.as_ref())
            }
            _ => {
                return Err(TrainError::Config(
                    "this model takes other inputs (images for an MLP, texts for an encoder)"
                        .into(),
                ))
            }
        };
        let n = inputs.size()[0];
        // Texts run longest first, so each batch is cut to similar lengths.
        let order = if matches!(examples, Examples::Texts(_)) {
            let lengths = inputs.ne(PAD_ID).sum_dim_intlist(1, false, Kind::Int64);
            lengths.sort_stable(true, 0, true).1
        } else {
            Tensor::arange(n, (Kind::Int64, device))
        };
        let classes = self.class_names.len() as i64;
        let mut out = Tensor::zeros([n, classes], (Kind::Float, device));
        tch::no_grad(|| -> Result<(), TrainError> {
            for start in (0..n).step_by(BATCH as usize) {
                let rows = order.narrow(0, start, BATCH.min(n - start));
                let logits = model.logits(&inputs.index_select(0, &rows), &mut Tape::off());
                let _ = out.f_index_copy_(0, &rows, &logits.to_kind(Kind::Float))?;
            }
            Ok(())
        })?;
        Ok(out.to_device(Device::Cpu))
    }
}

/// The pretrained folder of an encoder plan.
pub(crate) fn pretrained_dir(config: &TrainConfig) -> PathBuf {
    config
        .model
        .pretrained
        .clone()
        .unwrap_or_else(|| assets_dir().join("minilm"))
}
