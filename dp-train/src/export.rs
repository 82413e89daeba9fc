//! Exports a trained model as a folder other tools load, with its privacy statement.
//!
//! - An encoder becomes a Hugging Face BERT folder: `config.json` (the pretrained config, with
//!   the labels), `model.safetensors` (the encoder with every LoRA adapter merged into the
//!   weight it adapts, `W + (alpha / r) B A`, the pretrained pooler unchanged so that
//!   `AutoModel` finds every weight it expects, and the head as `classifier.weight` and
//!   `classifier.bias`), the tokenizer (`tokenizer.json`, `vocab.txt`, `tokenizer_config.json`)
//!   and a model card. The head reads the mean of the last hidden states over real tokens (mean
//!   pooling, as sentence-transformers), not BERT's pooler: the card shows the three lines
//!   that compute the logits.
//! - An MLP becomes `model.safetensors` (`linear{i}.weight`, `linear{i}.bias`, tanh between
//!   layers), a `config.json` with its widths and input scaling, and a model card.
//!
//! Every `model.safetensors` carries the privacy statement in its metadata (`dp_privacy`, JSON;
//! `dp_privacy_text`, the text), next to `format = pt`. Nothing secret is exported: no
//! generator state, no correlated-noise state, no optimizer moments, no checkpoint, and not the
//! seed of a seeded run (only that it was seeded). The folder is written under a temporary
//! name and renamed into place, so a crash leaves no half export.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Kind, Tensor};

use crate::error::{AtPath, TrainError};
use crate::evaluation::Evaluation;
use crate::models::Finetune;
use crate::plan::Dataset;
use crate::statement::PrivacyStatement;
use crate::trained::TrainedModel;

/// The metadata key of the privacy statement (JSON) in an exported `model.safetensors`.
pub const PRIVACY_METADATA: &str = "dp_privacy";

/// The metadata key of the privacy statement's text.
pub const PRIVACY_TEXT_METADATA: &str = "dp_privacy_text";

/// The tokenizer files copied from the pretrained folder when present.
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "special_tokens_map.json"];

/// Writes the export of `model` to `out` (a new or empty folder); `test` is the model's
/// evaluation on its test split, for the card. Returns the files written, sorted.
pub fn export(
    model: &TrainedModel,
    test: &Evaluation,
    out: &Path,
) -> Result<Vec<String>, TrainError> {
    if fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(TrainError::File {
            action: "export to",
            path: out.display().to_string(),
            source: std::io::Error::other("the folder is not empty; choose a new one"),
        });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let staging = out.with_file_name(format!(".{name}.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging).at("remove", &staging)?;
    }
    fs::create_dir_all(&staging).at("create", &staging)?;
    write_export(model, test, &staging).at("write the export in", &staging)?;
    if out.exists() {
        fs::remove_dir(out).at("replace the empty folder", out)?;
    }
    fs::rename(&staging, out).at("move the export to", out)?;
    let mut files: Vec<String> = fs::read_dir(out)
        .at("read", out)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    Ok(files)
}

fn write_export(model: &TrainedModel, test: &Evaluation, dir: &Path) -> Result<(), TrainError> {
    let statement = model.statement()?.withhold_seed();
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            PRIVACY_METADATA.to_string(),
            serde_json::to_string(&statement).map_err(std::io::Error::other)?,
        ),
        (PRIVACY_TEXT_METADATA.to_string(), statement.to_string()),
        (
            "dp_train_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    let tensors = match model.pretrained_dir() {
        Some(pretrained) => {
            let tensors = merged_encoder(model, pretrained)?;
            write_encoder_config(model, pretrained, dir)?;
            for file in TOKENIZER_FILES {
                let from = pretrained.join(file);
                if from.exists() {
                    fs::copy(&from, dir.join(file)).at("copy", &from)?;
                }
            }
            let tokenizer_config = serde_json::json!({
                "tokenizer_class": "BertTokenizer",
                "model_max_length": model.config.data.max_length,
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
            });
            write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;
            tensors
        }
        None => {
            let widths: Vec<i64> = mlp_widths(model);
            let config = serde_json::json!({
                "model_type": "dp-train-mlp",
                "widths": widths,
                "activation": "tanh between layers, none after the last",
                "input": "28x28 grayscale pixels in [0, 1], flattened row by row, then (x - 0.2860) / 0.3530",
                "id2label": id2label(model),
            });
            write_json(&dir.join("config.json"), &config)?;
            model.variables().into_iter().collect()
        }
    };
    metadata.insert("dp_test_accuracy".into(), test.accuracy.to_string());
    write_safetensors(&dir.join("model.safetensors"), &tensors, metadata)?;
    let card = model_card(model, &statement, test);
    fs::write(dir.join("README.md"), card).at("write", &dir.join("README.md"))?;
    Ok(())
}

/// The encoder's weights with LoRA merged, its head, and the pretrained pooler.
fn merged_encoder(
    model: &TrainedModel,
    pretrained: &Path,
) -> Result<Vec<(String, Tensor)>, TrainError> {
    let variables = model.variables();
    let scale = match model.config.model.finetune {
        Finetune::Lora { rank, alpha } => alpha / rank as f64,
        _ => 0.0,
    };
    let mut tensors = Vec::new();
    for (name, weight) in &variables {
        if name.contains(".lora_") {
            continue;
        }
        let base = name.strip_suffix(".weight").unwrap_or(name);
        let merged = match (
            variables.get(&format!("{base}.lora_down.weight")),
            variables.get(&format!("{base}.lora_up.weight")),
        ) {
            (Some(down), Some(up)) => tch::no_grad(|| weight + up.matmul(down) * scale),
            _ => weight.shallow_clone(),
        };
        tensors.push((name.clone(), merged));
    }
    let path = pretrained.join("model.safetensors");
    for (name, t) in Tensor::read_safetensors(&path).at("read", &path)? {
        let name = name.strip_prefix("bert.").unwrap_or(&name).to_string();
        if name.starts_with("pooler.") {
            tensors.push((name, t));
        }
    }
    Ok(tensors)
}

fn mlp_widths(model: &TrainedModel) -> Vec<i64> {
    let mut widths = vec![784];
    widths.extend(&model.config.model.hidden);
    widths.push(model.class_names.len() as i64);
    widths
}

fn id2label(model: &TrainedModel) -> serde_json::Value {
    model
        .class_names
        .iter()
        .enumerate()
        .map(|(k, name)| (k.to_string(), serde_json::Value::from(name.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The pretrained `config.json` with the labels and how the head reads the encoder.
fn write_encoder_config(
    model: &TrainedModel,
    pretrained: &Path,
    dir: &Path,
) -> Result<(), TrainError> {
    let path = pretrained.join("config.json");
    let text = fs::read_to_string(&path).at("read", &path)?;
    let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| TrainError::Data {
            what: "a BERT config.json",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    config.remove("_name_or_path");
    config.insert("architectures".into(), serde_json::json!(["BertModel"]));
    config.insert("id2label".into(), id2label(model));
    let label2id: serde_json::Map<String, serde_json::Value> = model
        .class_names
        .iter()
        .enumerate()
        .map(|(k, name)| (name.clone(), serde_json::Value::from(k)))
        .collect();
    config.insert("label2id".into(), label2id.into());
    config.insert(
        "dp_train_head".into(),
        serde_json::json!({
            "pooling": "mean of the last hidden states over tokens with attention_mask 1",
            "logits": "pooled @ classifier.weight.T + classifier.bias",
            "max_length": model.config.data.max_length,
        }),
    );
    write_json(&dir.join("config.json"), &serde_json::Value::Object(config))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    fs::write(path, text + "\n").at("write", path)
}

/// Writes f32 `tensors` to `path` with `metadata` in the header.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    safetensors::serialize_to_file(views, &Some(metadata), path)
        .map_err(|e| std::io::Error::other(format!("{e:?}")))
        .at("write", path)
}

/// The metadata of a safetensors file.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, TrainError> {
    let bytes = fs::read(path).at("read", path)?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| TrainError::Data {
            what: "a safetensors file",
            path: path.display().to_string(),
            reason: format!("{e:?}"),
        })?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

fn dataset_line(model: &TrainedModel) -> String {
    let data = &model.config.data;
    match data.dataset {
        Dataset::FashionMnist => format!("Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): the first {} of its 60,000 training images; 10 classes", data.dataset_size),
        Dataset::RottenTomatoes => format!("Rotten Tomatoes review snippets (Pang and Lee 2005): the first {} training snippets of the toolkit's fixed split (a snippet is in the test split iff the FNV-1a hash of its text is 0 mod 5); labels rotten (0) and fresh (1)", data.dataset_size),
        Dataset::TextCsv => format!(
            "the text CSV {}: its first {} records; {} classes",
            data.train_file
                .as_deref()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            data.dataset_size,
            model.class_names.len()
        ),
    }
}

/// The model card (`README.md`), with Hugging Face's front matter.
fn model_card(model: &TrainedModel, statement: &PrivacyStatement, test: &Evaluation) -> String {
    let encoder = model.pretrained_dir().is_some();
    let eps = if statement.noise_multiplier > 0.0 {
        format!("{:.3}", statement.epsilon)
    } else {
        "infinite (NOT PRIVATE)".into()
    };
    let finished = if model.ledger.steps >= model.planned_steps {
        format!("{} steps (the whole plan)", model.ledger.steps)
    } else {
        format!(
            "{} of {} planned steps (the run was not finished when exported)",
            model.ledger.steps, model.planned_steps
        )
    };
    let relation = if statement.correlated_steps.is_some() {
        "zero-out: one example's gradient replaced by zero (example-level)"
    } else {
        "add/remove one training example (example-level)"
    };
    let mechanism = if statement.correlated_steps.is_some() {
        "matrix-factorization DP-SGD (correlated Gaussian noise, fixed cyclic batches)"
    } else {
        "DP-SGD (Poisson-sampled batches, per-example clipping, Gaussian noise)"
    };
    let what = if encoder {
        format!(
            "A BERT-style encoder (pretrained weights from the folder `{}`) with a {}-way linear head on mean-pooled token states; trained privately: {}{}.",
            model
                .pretrained_dir()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model.class_names.len(),
            model
                .config
                .model
                .finetune
                .describe(model.encoder_layers().unwrap_or(0)),
            if matches!(model.config.model.finetune, Finetune::Lora { .. }) {
                " (merged here into the weights they adapt)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "A multi-layer perceptron (widths {:?}, tanh) classifying 28x28 grayscale images.",
            mlp_widths(model)
        )
    };
    let usage = if encoder {
        format!(
            r#"```python
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(folder)
encoder = AutoModel.from_pretrained(folder).eval()
head = load_file(f"{{folder}}/model.safetensors")
batch = tokenizer(["a gorgeous, witty film"], padding=True, truncation=True,
                  max_length={max_length}, return_tensors="pt")
with torch.no_grad():
    hidden = encoder(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
pooled = (hidden * mask).sum(1) / mask.sum(1)
logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
```

`AutoModel` reports `classifier.weight` and `classifier.bias` as unexpected keys: they are the
head, read by the last line. `tools/check_export.py` in the toolkit runs this code and compares
its probabilities with `dp-train predict`.
"#,
            max_length = model.config.data.max_length
        )
    } else {
        r#"```python
import torch
from safetensors.torch import load_file

w = load_file("path/to/this/folder/model.safetensors")
x = (images.float().flatten(1) / 255 - 0.2860) / 0.3530   # images: (N, 28, 28) uint8
layers = sorted({k.split(".")[0] for k in w}, key=lambda n: int(n[6:]))
for i, name in enumerate(layers):
    x = x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
    if i < len(layers) - 1:
        x = torch.tanh(x)
logits = x
```
"#
        .to_string()
    };
    let front = format!(
        "---\n{}tags:\n- differential-privacy\n- dp-sgd\n- {}\nmetrics:\n- accuracy\n---\n",
        if encoder {
            "library_name: transformers\n"
        } else {
            ""
        },
        if encoder {
            "text-classification"
        } else {
            "image-classification"
        }
    );
    format!(
        r#"{front}
# Differentially private {task} model

{what}

Trained with dp-train {version} (differentially private training in Rust on libtorch).

## Privacy

| | |
|---|---|
| guarantee | ({eps}, {delta:e})-differential privacy (epsilon rounded up) |
| neighbouring relation | {relation} |
| mechanism | {mechanism} |
| accountant | {accountant} |{prv}
| steps | {finished} |
| sampling rate | {q:.6} |
| noise multiplier | {sigma:.4} |
| clip norm | {clip} |
| training examples | {n} |
| randomness | {randomness} |

What the guarantee covers: these weights (and every intermediate model of the run). It does not
cover the test accuracy below (computed on the test split, treated as public), nor any number a
user computes from private data with this model.

The full statement, as printed by the run (also in the metadata of `model.safetensors`: this
text as `{key}`, as JSON as `{json_key}`):

```text
{text}```

## Training data

{dataset}

## Evaluation

Accuracy {acc:.2}% and mean cross-entropy {loss:.4} on {source} ({examples} examples).

## Use

{usage}
Exported by `dp-train export`: no generator state, noise state, optimizer state or checkpoint is
included.
"#,
        task = if encoder {
            "text classification"
        } else {
            "image classification"
        },
        version = env!("CARGO_PKG_VERSION"),
        delta = statement.delta,
        accountant = statement.accountant,
        prv = match (statement.prv_epsilon, statement.rdp_epsilon) {
            (Some(e), _) => format!(
                "\n| PRV bound | epsilon at most {e:.3} by the PRV accountant (Gopi et al. 2021) for the same steps |"
            ),
            (None, Some(e)) => format!(
                "\n| RDP bound | epsilon at most {e:.3} by RDP alone for the same steps (looser) |"
            ),
            (None, None) => String::new(),
        },
        q = statement.sampling_rate,
        sigma = statement.noise_multiplier,
        clip = statement.clip_norm,
        n = statement.dataset_size,
        randomness = if statement.seeded {
            "seeded (reproducible by whoever knows the seed, which is not exported)"
        } else {
            "seeded from the operating system"
        },
        key = PRIVACY_TEXT_METADATA,
        json_key = PRIVACY_METADATA,
        text = statement,
        dataset = dataset_line(model),
        acc = 100.0 * test.accuracy,
        loss = test.loss,
        source = test.source,
        examples = test.examples,
    )
}
