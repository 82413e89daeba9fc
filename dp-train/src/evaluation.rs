//! A classifier's scores on labelled examples: accuracy, mean cross-entropy, the confusion
//! matrix and each class's precision, recall and F1.
//!
//! With `C[i][j]` the examples of class `i` predicted as `j` (the argmax of the logits, ties to
//! the lowest class): precision of `k` = `C[k][k] / sum_i C[i][k]`, recall of `k` =
//! `C[k][k] / sum_j C[k][j]`, F1 their harmonic mean; the loss is the mean of
//! `logsumexp(z) - z_y` in nats.

use std::fmt;

use serde::Serialize;

use crate::error::TrainError;

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// The class's name.
    pub name: String,
    /// Examples of this class.
    pub support: u64,
    /// Share of the predictions of this class that are right (none if never predicted).
    pub precision: Option<f64>,
    /// Share of this class's examples predicted as it (none without examples).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (none if either is none or both are 0).
    pub f1: Option<f64>,
}

/// Scores on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Where the examples came from.
    pub source: String,
    /// How many examples.
    pub examples: usize,
    /// Share predicted right.
    pub accuracy: f64,
    /// Mean cross-entropy, in nats.
    pub loss: f64,
    /// Each class's scores.
    pub classes: Vec<ClassScores>,
    /// `confusion[i][j]`: examples of class `i` predicted as `j`.
    pub confusion: Vec<Vec<u64>>,
}

/// The predicted class of one row of logits: the first largest.
pub fn predicted(logits: &[f64]) -> usize {
    logits
        .iter()
        .enumerate()
        .fold(0, |best, (k, &z)| if z > logits[best] { k } else { best })
}

/// Softmax of one row of logits.
pub fn probabilities(logits: &[f64]) -> Vec<f64> {
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|z| (z - top).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

impl Evaluation {
    /// Scores `logits` (one row per example, one column per class) against `labels`.
    pub fn from_logits(
        logits: &[Vec<f64>],
        labels: &[i64],
        class_names: &[String],
        source: &str,
    ) -> Result<Self, TrainError> {
        let k = class_names.len();
        if logits.is_empty() || logits.len() != labels.len() {
            return Err(TrainError::Config(format!(
                "cannot score {} rows of logits against {} labels",
                logits.len(),
                labels.len()
            )));
        }
        let mut confusion = vec![vec![0u64; k]; k];
        let mut loss = 0.0;
        for (row, &label) in logits.iter().zip(labels) {
            let y = usize::try_from(label)
                .ok()
                .filter(|&y| y < k && row.len() == k)
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "label {label} is not one of the model's {k} classes"
                    ))
                })?;
            confusion[y][predicted(row)] += 1;
            let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = top + row.iter().map(|z| (z - top).exp()).sum::<f64>().ln();
            loss += log_sum - row[y];
        }
        let n = labels.len();
        let right: u64 = (0..k).map(|c| confusion[c][c]).sum();
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let classes = class_names
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let support: u64 = confusion[c].iter().sum();
                let predicted_as: u64 = confusion.iter().map(|row| row[c]).sum();
                let precision = ratio(confusion[c][c], predicted_as);
                let recall = ratio(confusion[c][c], support);
                let f1 = match (precision, recall) {
                    (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                    _ => None,
                };
                ClassScores {
                    name: name.clone(),
                    support,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect();
        Ok(Self {
            source: source.to_string(),
            examples: n,
            accuracy: right as f64 / n as f64,
            loss: loss / n as f64,
            classes,
            confusion,
        })
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.4}"));
        writeln!(f, "{} examples from {}", self.examples, self.source)?;
        writeln!(f, "  accuracy  {:.4}", self.accuracy)?;
        writeln!(f, "  loss      {:.4} (mean cross-entropy, nats)", self.loss)?;
        let width = self
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "\n  {:width$}  precision  recall     f1         support",
            "class"
        )?;
        for c in &self.classes {
            writeln!(
                f,
                "  {:width$}  {:9}  {:9}  {:9}  {}",
                c.name,
                shown(c.precision),
                shown(c.recall),
                shown(c.f1),
                c.support
            )?;
        }
        let cell = self
            .confusion
            .iter()
            .flatten()
            .map(|x| x.to_string().len())
            .max()
            .unwrap_or(1)
            .max(3);
        writeln!(
            f,
            "\n  confusion matrix (rows: true class, columns: predicted, in the order above)"
        )?;
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            let cells: Vec<String> = row.iter().map(|x| format!("{x:>cell$}")).collect();
            writeln!(f, "  {:width$}  {}", c.name, cells.join(" "))?;
        }
        Ok(())
    }
}
