//! Errors of the training loop; the binary prints them in one line and exits non-zero.

/// A training run that cannot start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The run folder was made by another plan (or holds no run): it is refused as it is, and
    /// nothing in it is written. Use the same plan, or a new folder.
    #[error("{0}")]
    RunFolderMismatch(String),
    /// An invariant of the toolkit failed (a bug, not a bad input): the run stopped before
    /// releasing anything that breaks it.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    /// A dataset could not be read.
    #[error("cannot load {what} from {path}: {reason}{}", setup_hint(.path))]
    Data {
        /// Which dataset.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The next step would spend more privacy than the budget allows; it was not taken.
    #[error("budget exhausted: step {step} would reach epsilon {epsilon:.4} > budget {budget}")]
    BudgetExhausted {
        /// The step that was refused (1-based).
        step: u64,
        /// The epsilon it would have reached.
        epsilon: f64,
        /// The budget.
        budget: f64,
    },
    /// An accounting error.
    #[error(transparent)]
    Accounting(#[from] dp_accounting::AccountingError),
    /// A clipping, noise or sampling error.
    #[error(transparent)]
    Core(#[from] dp_core::CoreError),
    /// A run folder's record (a checkpoint file, its manifest, the ledger) is damaged or
    /// disagrees with the rest; the run was refused before anything was written.
    #[error("{path}: {reason}; refused, nothing was written")]
    Damaged {
        /// The file (or folder) at fault.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a named file or folder failed.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// What was being done ("read", "write", "create the run folder").
        action: &'static str,
        /// The file or folder.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An input or output operation failed (inside a step whose file is named by the caller).
    #[error("input/output error: {0}")]
    Io(#[from] std::io::Error),
    /// A process of a data-parallel run failed or could not be started; the others were
    /// stopped.
    #[error("data-parallel run: {0}")]
    Distributed(String),
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    /// The exit code the `dp-train` command ends with: 2 for invalid input (a plan key or
    /// flag, the data, the accounting's parameters, a run folder made by another plan), 70 for
    /// an internal error, 1 for a run that failed (I/O, a damaged run folder, a data-parallel
    /// process, libtorch).
    pub fn exit_code(&self) -> u8 {
        match self {
            TrainError::Config(_)
            | TrainError::RunFolderMismatch(_)
            | TrainError::Accounting(_)
            | TrainError::Data { .. } => 2,
            TrainError::Internal(_) => 70,
            TrainError::BudgetExhausted { .. }
            | TrainError::Core(_)
            | TrainError::Damaged { .. }
            | TrainError::File { .. }
            | TrainError::Io(_)
            | TrainError::Distributed(_)
            | TrainError::Torch(_) => 1,
        }
    }
}

/// Names the file (and what was being done) in an I/O error.
pub trait AtPath<T> {
    /// The error as [`TrainError::File`] for `path`.
    fn at(self, action: &'static str, path: &std::path::Path) -> Result<T, TrainError>;
}

impl<T> AtPath<T> for Result<T, std::io::Error> {
    fn at(self, action: &'static str, path: &std::path::Path) -> Result<T, TrainError> {
        self.map_err(|source| TrainError::File {
            action,
            path: path.display().to_string(),
            source,
        })
    }
}

impl<T> AtPath<T> for Result<T, tch::TchError> {
    fn at(self, action: &'static str, path: &std::path::Path) -> Result<T, TrainError> {
        self.map_err(|e| TrainError::File {
            action,
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

impl<T> AtPath<T> for Result<T, TrainError> {
    /// Names the path on a bare I/O error; other errors pass unchanged.
    fn at(self, action: &'static str, path: &std::path::Path) -> Result<T, TrainError> {
        self.map_err(|e| match e {
            TrainError::Io(source) => TrainError::File {
                action,
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }
}

/// The hint for a dataset or model that `make setup` fetches (under the assets folder); a
/// user's own file gets none.
fn setup_hint(path: &str) -> &'static str {
    if std::path::Path::new(path).starts_with(crate::data::assets_dir()) {
        " (run `make setup` to fetch the assets)"
    } else {
        ""
    }
}
