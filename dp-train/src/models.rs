//! Models built from DP layers: an MLP for fast private runs, and a BERT-style encoder that
//! loads pretrained Hugging Face checkpoints (all-MiniLM-L6-v2) for private fine-tuning, fully
//! or through LoRA adapters.

use std::path::Path;

use dp_core::layers::{DpEmbedding, DpLinear, DpNorm, LoraAdapter};
use dp_core::{accumulation_kind, Tape};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::TrainError;

/// A model that maps a batch of inputs to class logits, recording its DP layers on the tape.
pub trait Classifier {
    /// Logits (B, classes) for a batch of inputs.
    fn logits(&self, inputs: &Tensor, tape: &mut Tape) -> Tensor;
}

/// A multi-layer perceptron with tanh activations (bounded activations suit DP-SGD:
/// Papernot et al. 2021, "Tempered sigmoid activations for deep learning with DP").
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<DpLinear>,
}

impl Mlp {
    /// Layers of widths `dims[0] -> dims[1] -> ... -> dims[n]`, under `path`.
    pub fn new(path: &nn::Path, dims: &[i64]) -> Self {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| DpLinear::new(&(path / format!("linear{i}")), w[0], w[1], true))
            .collect();
        Self { layers }
    }

    /// Logits for a batch of flattened inputs.
    pub fn forward(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .fold(x.shallow_clone(), |h, (i, layer)| {
                let z = layer.forward(&h, tape);
                if i < last {
                    z.tanh()
                } else {
                    z
                }
            })
    }
}

impl Classifier for Mlp {
    fn logits(&self, inputs: &Tensor, tape: &mut Tape) -> Tensor {
        self.forward(inputs, tape)
    }
}

/// The precision of an encoder's activations. Parameters (the optimizer's master copy),
/// per-example norms and clipped sums stay in f32 either way; with bf16 the linear layers and
/// attention products run in bf16, softmax, LayerNorm statistics and pooling in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Activations in the parameters' precision.
    #[default]
    F32,
    /// bfloat16 activations (for CUDA; on CPU libtorch's bf16 kernels are usually slower).
    Bf16,
}

display_as_value_name!(Precision);

/// Shape of a BERT-style encoder (Devlin et al. 2019); the defaults are MiniLM-L6-H384
/// (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, feed-forward 1536, vocabulary 30522).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderShape {
    /// Vocabulary size.
    pub vocab: i64,
    /// Hidden size.
    pub hidden: i64,
    /// Transformer blocks.
    pub layers: i64,
    /// Attention heads (hidden must be divisible by it).
    pub heads: i64,
    /// Feed-forward width.
    pub intermediate: i64,
    /// Largest sequence length.
    pub max_positions: i64,
    /// Token-type vocabulary.
    pub type_vocab: i64,
}

impl EncoderShape {
    /// all-MiniLM-L6-v2.
    pub const MINILM: Self = Self {
        vocab: 30522,
        hidden: 384,
        layers: 6,
        heads: 12,
        intermediate: 1536,
        max_positions: 512,
        type_vocab: 2,
    };
    /// BERT-base.
    pub const BERT_BASE: Self = Self {
        vocab: 30522,
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        max_positions: 512,
        type_vocab: 2,
    };

    /// The shape in a Hugging Face BERT `config.json`. Only what this encoder implements is
    /// accepted: post-LayerNorm blocks with eps 1e-12, exact GELU, absolute positions.
    pub fn from_config_json(path: &Path) -> Result<Self, TrainError> {
        let bad = |reason: String| TrainError::Data {
            what: "a BERT config.json",
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let int = |key: &str| {
            v[key]
                .as_i64()
                .filter(|x| *x > 0)
                .ok_or_else(|| bad(format!("'{key}' is missing or not a positive integer")))
        };
        let expect = |key: &str, want: serde_json::Value| {
            if v.get(key).is_some_and(|x| *x != want) {
                Err(bad(format!(
                    "{key} = {} is not supported (only {want})",
                    v[key]
                )))
            } else {
                Ok(())
            }
        };
        expect("hidden_act", "gelu".into())?;
        expect("layer_norm_eps", 1e-12.into())?;
        expect("position_embedding_type", "absolute".into())?;
        let shape = Self {
            vocab: int("vocab_size")?,
            hidden: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads: int("num_attention_heads")?,
            intermediate: int("intermediate_size")?,
            max_positions: int("max_position_embeddings")?,
            type_vocab: int("type_vocab_size")?,
        };
        if shape.hidden % shape.heads != 0 {
            return Err(bad(
                "hidden_size is not a multiple of num_attention_heads".into()
            ));
        }
        Ok(shape)
    }
}

/// Which weights of a pretrained encoder are trained; the rest are frozen
/// (`requires_grad = false`), which also keeps them out of clipping and noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Finetune {
    /// Every weight.
    All,
    /// The top `blocks` transformer blocks (0 or more) and the classification head.
    Top {
        /// How many blocks from the top.
        blocks: i64,
    },
    /// LoRA adapters of rank `rank` and scale `alpha / rank` on every attention and
    /// feed-forward linear map, and the classification head.
    Lora {
        /// Adapter rank r.
        rank: i64,
        /// LoRA alpha.
        alpha: f64,
    },
}

/// The prefix of the classification head's variable names (`classifier.weight`,
/// `classifier.bias`, as in Hugging Face's BERT classifiers).
pub const HEAD_PREFIX: &str = "classifier.";

impl Finetune {
    /// Whether the variable `name` of an [`EncoderClassifier`] is trained.
    pub fn trains(&self, name: &str, layers: i64) -> bool {
        if name.starts_with(HEAD_PREFIX) {
            return true;
        }
        match *self {
            Finetune::All => true,
            Finetune::Top { blocks } => name
                .strip_prefix("encoder.layer.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<i64>().ok())
                .is_some_and(|i| i >= layers - blocks),
            Finetune::Lora { .. } => name.contains(".lora_"),
        }
    }

    /// How many bottom blocks (with the embeddings) are frozen as a whole, so that their
    /// output can be computed once per example ([`CachedEncoder`]).
    pub fn frozen_blocks(&self, layers: i64) -> i64 {
        match *self {
            Finetune::Top { blocks } => (layers - blocks).max(0),
            Finetune::All | Finetune::Lora { .. } => 0,
        }
    }

    /// One line for reports.
    pub fn describe(&self, layers: i64) -> String {
        match *self {
            Finetune::All => "all weights".into(),
            Finetune::Top { blocks: 0 } => "the head only (a linear probe)".into(),
            Finetune::Top { blocks } => {
                format!("top {} of {layers} blocks and the head", blocks.min(layers))
            }
            Finetune::Lora { rank, alpha } => {
                format!("LoRA adapters (rank {rank}, alpha {alpha}) and the head")
            }
        }
    }
}

/// A linear map with an optional LoRA adapter: `a W^T + b (+ s (a A^T) B^T)`.
#[derive(Debug)]
struct AdaptedLinear {
    base: DpLinear,
    lora: Option<LoraAdapter>,
}

impl AdaptedLinear {
    fn new(path: &nn::Path, in_dim: i64, out_dim: i64, lora: Option<(i64, f64)>) -> Self {
        Self {
            base: DpLinear::new(path, in_dim, out_dim, true),
            lora: lora.map(|(rank, alpha)| LoraAdapter::new(path, in_dim, out_dim, rank, alpha)),
        }
    }

    fn forward(&self, x: &Tensor, tape: &mut Tape) -> Tensor {
        let z = self.base.forward(x, tape);
        match &self.lora {
            Some(adapter) => z + adapter.forward(x, tape),
            None => z,
        }
    }
}

/// One transformer block: self-attention and feed-forward, each with a residual and a
/// post-LayerNorm, as in BERT.
#[derive(Debug)]
struct EncoderBlock {
    query: AdaptedLinear,
    key: AdaptedLinear,
    value: AdaptedLinear,
    attention_out: AdaptedLinear,
    attention_norm: DpNorm,
    intermediate: AdaptedLinear,
    output: AdaptedLinear,
    output_norm: DpNorm,
    heads: i64,
}

impl EncoderBlock {
    fn new(path: &nn::Path, s: EncoderShape, lora: Option<(i64, f64)>) -> Self {
        let (h, i) = (s.hidden, s.intermediate);
        let linear = |p: &nn::Path, d, o| AdaptedLinear::new(p, d, o, lora);
        let attention = path / "attention";
        Self {
            query: linear(&(&attention / "self" / "query"), h, h),
            key: linear(&(&attention / "self" / "key"), h, h),
            value: linear(&(&attention / "self" / "value"), h, h),
            attention_out: linear(&(&attention / "output" / "dense"), h, h),
            attention_norm: DpNorm::layer_norm(
                &(path / "attention" / "output" / "LayerNorm"),
                h,
                1e-12,
            ),
            intermediate: linear(&(path / "intermediate" / "dense"), h, i),
            output: linear(&(path / "output" / "dense"), i, h),
            output_norm: DpNorm::layer_norm(&(path / "output" / "LayerNorm"), h, 1e-12),
            heads: s.heads,
        }
    }

    /// `x` (B, T, H); `mask_bias` (B, 1, 1, T): 0 for tokens, a large negative for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor, tape: &mut Tape) -> Tensor {
        let (b, t, h) = (x.size()[0], x.size()[1], x.size()[2]);
        let dh = h / self.heads;
        let split = |y: Tensor| y.view([b, t, self.heads, dh]).transpose(1, 2);
        let q = split(self.query.forward(x, tape));
        let k = split(self.key.forward(x, tape));
        let v = split(self.value.forward(x, tape));
        let scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt() + mask_bias;
        // Softmax in at least f32: in bf16 it loses too much.
        let context = scores
            .softmax(-1, accumulation_kind(scores.kind()))
            .to_kind(v.kind())
            .matmul(&v)
            .transpose(1, 2)
            .reshape([b, t, h]);
        let x = self
            .attention_norm
            .forward(&(x + self.attention_out.forward(&context, tape)), tape);
        let inner = self.intermediate.forward(&x, tape).gelu("none");
        self.output_norm
            .forward(&(&x + self.output.forward(&inner, tape)), tape)
    }
}

/// A BERT-style encoder built from DP layers, with mean pooling over tokens and a linear
/// classification head. Parameter names follow Hugging Face's BERT layout.
#[derive(Debug)]
pub struct EncoderClassifier {
    words: DpEmbedding,
    positions: DpEmbedding,
    token_types: DpEmbedding,
    embedding_norm: DpNorm,
    blocks: Vec<EncoderBlock>,
    head: DpLinear,
    precision: Precision,
}

impl EncoderClassifier {
    /// A randomly initialised encoder of `shape` with `classes` outputs, under `path`; with
    /// [`Finetune::Lora`], every attention and feed-forward linear map gets an adapter.
    pub fn new(path: &nn::Path, shape: EncoderShape, classes: i64, finetune: Finetune) -> Self {
        let lora = match finetune {
            Finetune::Lora { rank, alpha } => Some((rank, alpha)),
            _ => None,
        };
        let e = path / "embeddings";
        Self {
            words: DpEmbedding::new(
                &(&e / "word_embeddings"),
                shape.vocab,
                shape.hidden,
                Some(PAD_ID),
            ),
            positions: DpEmbedding::new(
                &(&e / "position_embeddings"),
                shape.max_positions,
                shape.hidden,
                None,
            ),
            token_types: DpEmbedding::new(
                &(&e / "token_type_embeddings"),
                shape.type_vocab,
                shape.hidden,
                None,
            ),
            embedding_norm: DpNorm::layer_norm(&(&e / "LayerNorm"), shape.hidden, 1e-12),
            blocks: (0..shape.layers)
                .map(|i| EncoderBlock::new(&(path / "encoder" / "layer" / i), shape, lora))
                .collect(),
            head: DpLinear::new(&(path / "classifier"), shape.hidden, classes, true),
            precision: Precision::F32,
        }
    }

    /// The same model computing its activations in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The kind of the activations between blocks.
    fn activation_kind(&self) -> Kind {
        match self.precision {
            Precision::F32 => self.words.table.kind(),
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// The pretrained encoder in `dir` (Hugging Face layout: `config.json` and
    /// `model.safetensors` with BERT names, with or without a `bert.` prefix) with a fresh
    /// `classes`-way head, built in `vs` with everything that `finetune` does not train frozen.
    ///
    /// Strict: every encoder weight must be in the file with its shape, and every tensor of the
    /// file must be used, except the pooler and the position-id buffer (mean pooling replaces
    /// the pooler, as in sentence-transformers).
    pub fn pretrained(
        vs: &nn::VarStore,
        dir: &Path,
        classes: i64,
        finetune: Finetune,
    ) -> Result<Self, TrainError> {
        let shape = EncoderShape::from_config_json(&dir.join("config.json"))?;
        if let Finetune::Top { blocks } = finetune {
            if !(0..=shape.layers).contains(&blocks) {
                return Err(TrainError::Config(format!(
                    "model.finetune: top blocks {blocks} must be in 0..={} (0: the head only)",
                    shape.layers
                )));
            }
        }
        if let Finetune::Lora { rank, alpha } = finetune {
            if rank < 1 || !(alpha.is_finite() && alpha > 0.0) {
                return Err(TrainError::Config(
                    "model.finetune: LoRA rank must be >= 1 and alpha > 0".into(),
                ));
            }
        }
        let model = Self::new(&vs.root(), shape, classes, finetune);
        let path = dir.join("model.safetensors");
        let bad = |reason: String| TrainError::Data {
            what: "pretrained weights",
            path: path.display().to_string(),
            reason,
        };
        let mut file: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(&name).to_string(), t))
            .collect();
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &variables {
            let fresh = name.starts_with(HEAD_PREFIX) || name.contains(".lora_");
            match file.remove(name) {
                Some(t) if t.size() == var.size() => tch::no_grad(|| {
                    var.shallow_clone().copy_(&t);
                }),
                Some(t) => {
                    return Err(bad(format!(
                        "{name} has shape {:?} in the file, {:?} in the model",
                        t.size(),
                        var.size()
                    )))
                }
                None if fresh => {}
                None => return Err(bad(format!("{name} is missing"))),
            }
            if !finetune.trains(name, shape.layers) {
                let _ = var.set_requires_grad(false);
            }
        }
        let mut unused: Vec<&String> = file
            .keys()
            .filter(|n| !n.starts_with("pooler.") && n.as_str() != "embeddings.position_ids")
            .collect();
        unused.sort();
        if let Some(first) = unused.first() {
            return Err(bad(format!(
                "{} tensors the model does not use, e.g. {first}",
                unused.len()
            )));
        }
        Ok(model)
    }

    /// Number of transformer blocks.
    pub fn layers(&self) -> i64 {
        self.blocks.len() as i64
    }

    /// Logits (B, classes) for token ids (B, T) with `attention_mask` (B, T) of 1 for tokens and
    /// 0 for padding. Position and token-type ids are per example (B, T). The sentence is the
    /// mean of its tokens' last hidden states (mean pooling, as all-MiniLM-L6-v2 was trained).
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, tape: &mut Tape) -> Tensor {
        self.head
            .forward(&self.mean_pooled(ids, attention_mask, tape), tape)
    }

    /// Mean over real tokens of the last hidden states, (B, hidden).
    pub fn mean_pooled(&self, ids: &Tensor, attention_mask: &Tensor, tape: &mut Tape) -> Tensor {
        let x = self.hidden_states(ids, attention_mask, self.layers(), tape);
        self.pool_from(x, attention_mask, self.layers(), tape)
    }

    /// Hidden states (B, T, hidden) after the embeddings and the first `blocks` blocks.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        blocks: i64,
        tape: &mut Tape,
    ) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()))
            .unsqueeze(0)
            .expand([b, t], true)
            .contiguous();
        let types = ids.zeros_like();
        let x = self.words.forward(ids, tape)
            + self.positions.forward(&positions, tape)
            + self.token_types.forward(&types, tape);
        let x = self
            .embedding_norm
            .forward(&x, tape)
            .to_kind(self.activation_kind());
        self.run_blocks(x, attention_mask, 0..blocks, tape)
    }

    /// Logits from the hidden states after the first `start` blocks.
    pub fn logits_from(
        &self,
        hidden: Tensor,
        attention_mask: &Tensor,
        start: i64,
        tape: &mut Tape,
    ) -> Tensor {
        let hidden = hidden.to_kind(self.activation_kind());
        let pooled = self.pool_from(hidden, attention_mask, start, tape);
        self.head.forward(&pooled, tape)
    }

    /// Runs blocks `start..` and mean-pools over real tokens, in the parameters' precision.
    fn pool_from(&self, x: Tensor, attention_mask: &Tensor, start: i64, tape: &mut Tape) -> Tensor {
        let x = self
            .run_blocks(x, attention_mask, start..self.layers(), tape)
            .to_kind(self.head.weight.kind());
        let m = attention_mask.to_kind(x.kind()).unsqueeze(2);
        (&x * &m).sum_dim_intlist(1, false, x.kind())
            / m.sum_dim_intlist(1, false, x.kind()).clamp_min(1.0)
    }

    fn run_blocks(
        &self,
        mut x: Tensor,
        attention_mask: &Tensor,
        blocks: std::ops::Range<i64>,
        tape: &mut Tape,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let mask = attention_mask.to_kind(x.kind());
        let mask_bias = ((mask.ones_like() - &mask) * -1e4).view([b, 1, 1, t]);
        for block in &self.blocks[blocks.start as usize..blocks.end as usize] {
            x = block.forward(&x, &mask_bias, tape);
        }
        x
    }
}

/// An encoder whose frozen bottom (embeddings and the first `start` blocks) has been run once
/// over every example: its inputs are example indices (B) into the cached hidden states.
/// Exact, not an approximation: frozen layers without dropout compute the same function at
/// every step. Each step then runs only the trained blocks and the head.
#[derive(Debug)]
pub struct CachedEncoder {
    model: EncoderClassifier,
    start: i64,
    hidden: Tensor,
    mask: Tensor,
}

impl CachedEncoder {
    /// Runs the embeddings and the first `start` blocks of `model` over `ids` (N, L), padded
    /// with [`PAD_ID`], in batches of `batch_size` (rows of similar length batch best).
    /// `on_batch` sees the examples done so far.
    pub fn new(
        model: EncoderClassifier,
        start: i64,
        ids: &Tensor,
        batch_size: i64,
        mut on_batch: impl FnMut(i64),
    ) -> Self {
        let (n, l) = (ids.size()[0], ids.size()[1]);
        let mask = ids.ne(PAD_ID);
        let width = model.words.table.size()[1];
        let hidden = Tensor::zeros([n, l, width], (model.activation_kind(), ids.device()));
        tch::no_grad(|| {
            for first in (0..n).step_by(batch_size.max(1) as usize) {
                let len = batch_size.min(n - first);
                let rows = mask.narrow(0, first, len);
                let longest = longest_row(&rows);
                let h = model.hidden_states(
                    &ids.narrow(0, first, len).narrow(1, 0, longest),
                    &rows.narrow(1, 0, longest),
                    start,
                    &mut Tape::off(),
                );
                hidden.narrow(0, first, len).narrow(1, 0, longest).copy_(&h);
                on_batch(first + len);
            }
        });
        Self {
            model,
            start,
            hidden,
            mask,
        }
    }
}

impl Classifier for CachedEncoder {
    /// `inputs`: example indices (B) into the cache.
    fn logits(&self, inputs: &Tensor, tape: &mut Tape) -> Tensor {
        let rows = self.mask.index_select(0, inputs);
        let longest = longest_row(&rows);
        let hidden = self.hidden.index_select(0, inputs).narrow(1, 0, longest);
        self.model
            .logits_from(hidden, &rows.narrow(1, 0, longest), self.start, tape)
    }
}

/// The largest number of real tokens in a row of `mask` (at least 1).
fn longest_row(mask: &Tensor) -> i64 {
    mask.sum_dim_intlist(1, false, Kind::Int64)
        .max()
        .int64_value(&[])
        .max(1)
}

/// The id of `[PAD]` in BERT vocabularies.
pub const PAD_ID: i64 = 0;

impl Classifier for EncoderClassifier {
    /// `inputs`: token ids (B, L) padded with [`PAD_ID`]; the batch is cut to its longest
    /// example before the forward pass (per-batch padding).
    fn logits(&self, inputs: &Tensor, tape: &mut Tape) -> Tensor {
        let mask = inputs.ne(PAD_ID);
        let longest = longest_row(&mask);
        let ids = inputs.narrow(1, 0, longest);
        self.forward(&ids, &mask.narrow(1, 0, longest), tape)
    }
}
