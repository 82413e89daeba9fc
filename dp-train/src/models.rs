//! Small models built from DP layers, for fast private runs.

use dp_core::layers::{DpEmbedding, DpLinear, DpNorm};
use dp_core::Tape;
use tch::{nn, Kind, Tensor};

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
}

/// One transformer block: self-attention and feed-forward, each with a residual and a
/// post-LayerNorm, as in BERT.
#[derive(Debug)]
struct EncoderBlock {
    query: DpLinear,
    key: DpLinear,
    value: DpLinear,
    attention_out: DpLinear,
    attention_norm: DpNorm,
    intermediate: DpLinear,
    output: DpLinear,
    output_norm: DpNorm,
    heads: i64,
}

impl EncoderBlock {
    fn new(path: &nn::Path, s: EncoderShape) -> Self {
        let (h, i) = (s.hidden, s.intermediate);
        Self {
            query: DpLinear::new(&(path / "attention" / "self" / "query"), h, h, true),
            key: DpLinear::new(&(path / "attention" / "self" / "key"), h, h, true),
            value: DpLinear::new(&(path / "attention" / "self" / "value"), h, h, true),
            attention_out: DpLinear::new(&(path / "attention" / "output" / "dense"), h, h, true),
            attention_norm: DpNorm::layer_norm(
                &(path / "attention" / "output" / "LayerNorm"),
                h,
                1e-12,
            ),
            intermediate: DpLinear::new(&(path / "intermediate" / "dense"), h, i, true),
            output: DpLinear::new(&(path / "output" / "dense"), i, h, true),
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
        let context = scores
            .softmax(-1, scores.kind())
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
}

impl EncoderClassifier {
    /// A randomly initialised encoder of `shape` with `classes` outputs, under `path`.
    pub fn new(path: &nn::Path, shape: EncoderShape, classes: i64) -> Self {
        let e = path / "embeddings";
        Self {
            words: DpEmbedding::new(
                &(&e / "word_embeddings"),
                shape.vocab,
                shape.hidden,
                Some(0),
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
                .map(|i| EncoderBlock::new(&(path / "encoder" / "layer" / i), shape))
                .collect(),
            head: DpLinear::new(&(path / "classifier"), shape.hidden, classes, true),
        }
    }

    /// Logits (B, classes) for token ids (B, T) with `attention_mask` (B, T) of 1 for tokens and
    /// 0 for padding. Position and token-type ids are per example (B, T).
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, tape: &mut Tape) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()))
            .unsqueeze(0)
            .expand([b, t], true)
            .contiguous();
        let types = ids.zeros_like();
        let x = self.words.forward(ids, tape)
            + self.positions.forward(&positions, tape)
            + self.token_types.forward(&types, tape);
        let mut x = self.embedding_norm.forward(&x, tape);
        let mask = attention_mask.to_kind(x.kind());
        let mask_bias = ((mask.ones_like() - &mask) * -1e4).view([b, 1, 1, t]);
        for block in &self.blocks {
            x = block.forward(&x, &mask_bias, tape);
        }
        let m = mask.unsqueeze(2);
        let pooled = (&x * &m).sum_dim_intlist(1, false, x.kind())
            / m.sum_dim_intlist(1, false, x.kind()).clamp_min(1.0);
        self.head.forward(&pooled, tape)
    }
}
