//! Data-parallel training: what changes when `Runtime::group` holds a c10d process group.
//!
//! Every rank runs the same loops on the same data. Rank `r` of `N` takes positions `r, r + N, …`
//! of every global batch with the augmentation draws those positions get in one process
//! (`data::Part`), its loss is scaled so that the mean over ranks of the gradients is the gradient
//! of the global batch's mean loss, and the gradients are all-reduced (mean, in buckets) before
//! every optimizer step — so every rank keeps identical weights and optimizer state. A fixed body's
//! features are computed in parts and summed. Rank 0 validates, writes the checkpoints and the
//! outputs; the others only train. At the start of each phase rank 0's weights are broadcast and
//! the ranks check that they stand at the same epoch (each read the same checkpoint).

use crate::Runtime;
use anyhow::{bail, Context, Result};
use maskflow_data::data::Part;
use maskflow_models::Classifier;
use maskflow_torchext::dist::{ProcessGroup, DEFAULT_BUCKET_BYTES};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Kind, Tensor};

/// A process group shared by the stage and its runner.
pub type SharedGroup = Arc<Mutex<ProcessGroup>>;

fn lock(g: &SharedGroup) -> MutexGuard<'_, ProcessGroup> {
    // A panic while holding the lock leaves a group whose collectives still work.
    g.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    /// This process's part of every batch.
    pub(crate) fn part(&self) -> Part {
        match &self.group {
            Some(g) => {
                let g = lock(g);
                Part { rank: g.rank(), world: g.world() }
            }
            None => Part::WHOLE,
        }
    }

    /// Rank 0 (or the only process): validates and writes.
    pub(crate) fn is_root(&self) -> bool {
        self.part().rank == 0
    }
}

/// The factor for this rank's mean loss over `mine` rows of a global batch of `global` rows, so
/// that the mean over the ranks of the scaled losses is the global batch's mean loss.
pub(crate) fn loss_scale(part: Part, mine: usize, global: usize) -> f64 {
    (mine * part.world) as f64 / global.max(1) as f64
}

/// After the backward pass: the mean over the ranks of every trainable parameter's gradient and of
/// the (scaled) loss; returns the global loss. Without a group, the loss.
pub(crate) fn reduce_gradients(rt: &Runtime, model: &Classifier, loss: &Tensor) -> Result<f64> {
    let Some(g) = &rt.group else { return Ok(loss.double_value(&[])) };
    let trainable: Vec<&Tensor> = model.params().iter().map(|p| &p.tensor).filter(|t| t.requires_grad()).collect();
    let grads = maskflow_torchext::dist::grads_of(&trainable)?;
    let loss = loss.detach().to_kind(Kind::Float).reshape([1]);
    let mut all: Vec<&Tensor> = grads.iter().collect();
    all.push(&loss);
    lock(g).allreduce_mean(&all, DEFAULT_BUCKET_BYTES).context("all-reducing the gradients (did another rank stop?)")?;
    Ok(loss.double_value(&[0]))
}

/// Where this phase starts, as rank 0 sees it: its weights (all variables, BatchNorm statistics
/// included) go to every rank, and every rank must stand at the same epoch.
pub(crate) fn sync_start(rt: &Runtime, model: &Classifier, phase_index: i64, epochs_done: usize) -> Result<()> {
    let Some(g) = &rt.group else { return Ok(()) };
    let g = lock(g);
    let here = Tensor::from_slice(&[phase_index, epochs_done as i64]);
    let root = here.copy();
    g.broadcast(&[&root], 0).context("broadcasting the starting epoch")?;
    if !root.equal(&here) {
        bail!(
            "rank {} would start at {:?}, rank 0 at {:?} (phase, epochs done): the ranks read different checkpoints",
            g.rank(),
            Vec::<i64>::try_from(&here)?,
            Vec::<i64>::try_from(&root)?
        );
    }
    let vars = model.vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let tensors: Vec<&Tensor> = names.iter().map(|n| &vars[*n]).collect();
    g.broadcast_packed(&tensors, 0, DEFAULT_BUCKET_BYTES).context("broadcasting rank 0's weights")?;
    Ok(())
}

/// Rows computed in parts → the whole: `mine` holds this rank's rows `rows` of an (n, …) tensor;
/// every rank gets the whole (a sum of zero-padded parts, so exact).
pub(crate) fn assemble_rows(rt: &Runtime, mine: &Tensor, rows: &[i64], n: i64) -> Result<Tensor> {
    let Some(g) = &rt.group else { return Ok(mine.shallow_clone()) };
    let mut shape = mine.size();
    shape[0] = n;
    let mut full = Tensor::zeros(shape.as_slice(), (mine.kind(), mine.device()));
    let _ = full.index_copy_(0, &Tensor::from_slice(rows).to_device(mine.device()), mine);
    lock(g).allreduce_sum(&[&full]).context("assembling the features computed by each rank")?;
    Ok(full)
}

/// What rank 0 sends the other ranks of a `maskflow run` (they wait for it): a train stage to run
/// with them, or the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RankMessage {
    Train(Box<RankJob>),
    Done,
}

/// A train stage as every rank runs it: the same inputs (paths on a file system all ranks see),
/// params and checkpoint folder as rank 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankJob {
    pub inputs: crate::Inputs,
    pub params: crate::TrainParams,
    pub checkpoint_dir: std::path::PathBuf,
}

/// The message format's version: a rank of another maskflow refuses instead of guessing.
const MESSAGE_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<M> {
    format: u32,
    tool_version: String,
    message: M,
}

/// Rank 0: sends `message` to every rank.
pub fn send(group: &SharedGroup, message: &RankMessage) -> Result<()> {
    let env = Envelope { format: MESSAGE_FORMAT, tool_version: env!("CARGO_PKG_VERSION").into(), message };
    let bytes = serde_json::to_vec(&env)?;
    lock(group).broadcast_bytes(Some(&bytes)).context("sending the other ranks their work")?;
    Ok(())
}

/// Ranks above 0: waits for rank 0's next message.
pub fn receive(group: &SharedGroup) -> Result<RankMessage> {
    let bytes = lock(group).broadcast_bytes(None).context("waiting for rank 0 (did it stop?)")?;
    let env: Envelope<RankMessage> = serde_json::from_slice(&bytes).context("rank 0's message does not decode (another maskflow?)")?;
    if env.format != MESSAGE_FORMAT || env.tool_version != env!("CARGO_PKG_VERSION") {
        bail!(
            "rank 0 runs maskflow {} (message format {}), this rank {} (format {MESSAGE_FORMAT}): every rank must run the same build",
            env.tool_version,
            env.format,
            env!("CARGO_PKG_VERSION")
        );
    }
    Ok(env.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_losses_average_to_the_global_mean() {
        // A batch of 5 over 2 ranks: rank 0 takes 3 rows (mean a), rank 1 two (mean b).
        let (a, b) = (2.0, 7.0);
        let global = (3.0 * a + 2.0 * b) / 5.0;
        let s0 = a * loss_scale(Part { rank: 0, world: 2 }, 3, 5);
        let s1 = b * loss_scale(Part { rank: 1, world: 2 }, 2, 5);
        assert!(((s0 + s1) / 2.0 - global).abs() < 1e-12);
        assert_eq!(loss_scale(Part::WHOLE, 64, 64), 1.0);
    }
}
