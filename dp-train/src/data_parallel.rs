//! Data-parallel DP-SGD: the same mechanism as one process, its work shared by several.
//!
//! Rank 0 (the leader) is the only process that holds the run's privacy randomness, ledger,
//! checkpoints and run folder. Each step:
//! 1. the leader draws the logical batch exactly as alone (Poisson sampling over the whole
//!    dataset, or the cyclic batch of matrix-factorization noise) and broadcasts its example
//!    indices; every rank holds the whole dataset and takes the examples at positions
//!    `rank, rank + W, rank + 2W, ...` of the batch (`W` processes), so each sampled example
//!    is processed by exactly one rank;
//! 2. each rank clips its examples' gradients (any clipping style) and sums them; the sums
//!    are all-reduced, so every rank holds `sum_i clip(g_i)` over the whole batch, the same
//!    sum one process computes (up to the order of floating-point additions);
//! 3. the leader records the step in the ledger, adds the noise once (secure or fast,
//!    independent or correlated), steps the optimizer, and broadcasts the updated trainable
//!    variables, which the other ranks copy: no other rank ever draws noise, so the released
//!    model is the one-process mechanism's output, accounted once.
//!
//! Before the first step the leader broadcasts every variable (its resumed checkpoint, or its
//! initialisation), so all ranks start from the same model. When the budget would be exceeded,
//! or the planned steps are done, the leader tells the others to stop. A rank that fails ends
//! its process with an error; the leader's last checkpoint holds only completed steps, so a
//! rerun resumes without counting any step twice.

use std::collections::BTreeMap;

use dp_core::{ClippingEngine, Collectives, Tape};
use tch::{nn, Kind, Tensor};

use crate::dpsgd::{clipped_sums, validate, Batches, DpSgdConfig, ShareStats};
use crate::error::TrainError;
use crate::per_example_loss::{CrossEntropy, PerExampleLoss};

/// The leader's first message of a step when there is no step: the others stop.
const STOP: i64 = -1;

/// The messages of the protocol above, for the leader and the other ranks alike; with one
/// process every message is a no-op.
pub(crate) struct Protocol<'a> {
    collectives: &'a Collectives,
}

impl<'a> Protocol<'a> {
    pub(crate) fn new(collectives: &'a Collectives) -> Self {
        Protocol { collectives }
    }

    /// Every variable of `vs` made the leader's, on every rank.
    pub(crate) fn share_model(&self, vs: &nn::VarStore) -> Result<(), TrainError> {
        broadcast_by_kind(self.collectives, named(vs).into_values().collect())
    }

    /// The leader's logical batch (`Some`) or its order to stop (`None`), on every rank (the
    /// argument is the leader's; the other ranks pass `None` and receive).
    pub(crate) fn announce(&self, batch: Option<&[i64]>) -> Result<Option<Vec<i64>>, TrainError> {
        if self.collectives.world_size() == 1 {
            return Ok(batch.map(<[i64]>::to_vec));
        }
        let len = batch.map_or(STOP, |b| b.len() as i64);
        let mut header = [Tensor::from_slice(&[len])];
        self.collectives.broadcast(&mut header, 0)?;
        let len = header[0].int64_value(&[0]);
        if len == STOP {
            return Ok(None);
        }
        let mut indices = [match batch {
            Some(batch) => Tensor::from_slice(batch),
            None => Tensor::zeros([len], (Kind::Int64, tch::Device::Cpu)),
        }];
        if len > 0 {
            self.collectives.broadcast(&mut indices, 0)?;
        }
        Ok(Some(Vec::<i64>::try_from(&indices[0])?))
    }

    /// This rank's examples of the logical batch: positions `rank, rank + W, ...`.
    pub(crate) fn share(&self, batch: &[i64]) -> Vec<i64> {
        let (rank, world) = (self.collectives.rank(), self.collectives.world_size());
        batch.iter().skip(rank).step_by(world).copied().collect()
    }

    /// The sums and statistics of every rank's share, added up, on every rank.
    pub(crate) fn reduce(
        &self,
        sums: &mut BTreeMap<String, Tensor>,
        stats: &mut ShareStats,
    ) -> Result<(), TrainError> {
        if self.collectives.world_size() == 1 {
            return Ok(());
        }
        for mut group in by_kind(sums.values().map(Tensor::shallow_clone)) {
            self.collectives.all_reduce_sum(&mut group)?;
        }
        let mut totals = [Tensor::from_slice(&[
            stats.loss_sum,
            stats.correct,
            stats.nonfinite as f64,
        ])];
        self.collectives.all_reduce_sum(&mut totals)?;
        let totals = Vec::<f64>::try_from(&totals[0])?;
        *stats = ShareStats {
            loss_sum: totals[0],
            correct: totals[1],
            nonfinite: totals[2] as i64,
        };
        Ok(())
    }

    /// After a reduce: the leader's updated trainable variables (`update`), copied into `vs` on
    /// every rank, or its order to stop (the other ranks pass `false` and receive). Returns
    /// whether an update came.
    pub(crate) fn conclude(&self, vs: &nn::VarStore, update: bool) -> Result<bool, TrainError> {
        if self.collectives.world_size() == 1 {
            return Ok(update);
        }
        let mut status = [Tensor::from_slice(&[i64::from(update)])];
        self.collectives.broadcast(&mut status, 0)?;
        if status[0].int64_value(&[0]) == 0 {
            return Ok(false);
        }
        let trainable = named(vs)
            .into_values()
            .filter(Tensor::requires_grad)
            .collect();
        broadcast_by_kind(self.collectives, trainable)?;
        Ok(true)
    }
}

/// A rank other than the leader in a data-parallel run of `config`: it clips and sums its
/// share of each batch the leader announces, until the leader stops. It draws no randomness,
/// keeps no ledger and writes nothing; returns the number of steps it took part in.
pub fn serve_as_worker(
    collectives: &Collectives,
    vs: &nn::VarStore,
    logits: impl Fn(&Tensor, &mut Tape) -> Tensor,
    data: Batches<'_>,
    config: &DpSgdConfig,
) -> Result<u64, TrainError> {
    if collectives.is_leader() {
        return Err(TrainError::Config(
            "rank 0 leads a data-parallel run: it trains, it does not serve".into(),
        ));
    }
    let examples = CrossEntropy { logits, data };
    validate(config, examples.len())?;
    let engine = ClippingEngine::new(vs, config.clip_norm)?.with_style(config.clipping)?;
    let protocol = Protocol::new(collectives);
    protocol.share_model(vs)?;
    let mut steps = 0;
    while let Some(batch) = protocol.announce(None)? {
        let share = protocol.share(&batch);
        let (mut sums, mut stats) =
            clipped_sums(&engine, &examples, &share, config.physical_batch_size)?;
        protocol.reduce(&mut sums, &mut stats)?;
        if !protocol.conclude(vs, false)? {
            break;
        }
        steps += 1;
    }
    Ok(steps)
}

/// The variables of `vs` by name (the same order on every rank).
fn named(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

/// Broadcasts from the leader, one collective per dtype and device.
fn broadcast_by_kind(collectives: &Collectives, tensors: Vec<Tensor>) -> Result<(), TrainError> {
    if collectives.world_size() == 1 {
        return Ok(());
    }
    for mut group in by_kind(tensors) {
        collectives.broadcast(&mut group, 0)?;
    }
    Ok(())
}

/// The tensors in groups of one dtype and device (a collective moves one buffer), in order.
fn by_kind(tensors: impl IntoIterator<Item = Tensor>) -> Vec<Vec<Tensor>> {
    let mut groups: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    for tensor in tensors {
        groups
            .entry(format!("{:?}/{:?}", tensor.kind(), tensor.device()))
            .or_default()
            .push(tensor);
    }
    groups.into_values().collect()
}
