//! Errors of the clipping engine, noise and sampling.

/// What can go wrong in a private step; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A trainable parameter was not recorded by any DP layer in the forward pass, so it
    /// cannot be clipped: training it would silently break the privacy guarantee.
    #[error("parameter `{0}` is trainable but no DP layer recorded it in this forward pass: freeze it or build it from a DP layer")]
    UncoveredParameter(String),
    /// A parameter was recorded twice (a tied or reused layer); its per-example norm would
    /// need the cross terms of both uses, which are not computed.
    #[error("parameter `{0}` is used by more than one layer call (tied weights or a reused layer), which the clipping engine refuses")]
    TiedParameter(String),
    /// A recorded tensor does not have the batch as its first dimension.
    #[error("layer output for `{name}` has batch dimension {got}, expected {expected} (broadcast over the batch?)")]
    BatchMismatch {
        /// The parameter whose layer recorded the tensor.
        name: String,
        /// The first dimension found.
        got: i64,
        /// The number of per-example losses.
        expected: i64,
    },
    /// The per-example losses are not a vector.
    #[error("per-example losses must have shape [batch], got {0:?}")]
    LossShape(Vec<i64>),
    /// The clipping was asked with a bad clip norm.
    #[error("clip norm must be finite and positive, got {0}")]
    ClipNorm(f64),
    /// The automatic-clipping stability constant is not finite and positive.
    #[error("automatic clipping: the stability constant must be finite and positive, got {0}")]
    Stability(f64),
    /// The sampling rate is outside (0, 1].
    #[error("sampling rate must be in (0, 1], got {0}")]
    SamplingRate(f64),
    /// A noise standard deviation that is not finite and positive.
    #[error("noise standard deviation must be finite and positive, got {0}")]
    NoiseStd(f64),
    /// A saved correlated-noise state with an unexpected entry.
    #[error("correlated-noise state entry `{0}` is not of the form INDEX/NAME")]
    NoiseState(String),
    /// Regeneration was asked of a recurrence that keeps past outputs or buffers.
    #[error("only moving-average correlated noise (C^-1 banded) can regenerate its past draws")]
    NotRegenerable,
    /// The noise multiplier is not a positive finite number.
    #[error("noise multiplier must be finite and positive, got {0}")]
    NoiseMultiplier(f64),
    /// The secure sampler cannot represent this noise scale.
    #[error("secure noise: {0}")]
    NoiseScale(String),
    /// The sums to noise do not have the parameters the mechanism was built for.
    #[error("noise: {0}")]
    NoiseLayout(String),
    /// The background thread generating noise ahead stopped unexpectedly.
    #[error("the background noise generator stopped unexpectedly")]
    NoiseThread,
    /// A collective between the processes of a data-parallel run failed (a peer that died or
    /// never came, a timeout, tensors that do not match): the run cannot go on.
    #[error("collectives: {0}")]
    Collective(String),
    /// A libtorch call failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
