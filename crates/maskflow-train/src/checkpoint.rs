//! Epoch checkpoints: the weights, the optimizer's moments and the schedule's position, written
//! atomically after every epoch. `progress.json` is the commit point and names the tensors file
//! with its blake3; a resume trusts a checkpoint only when that file verifies.

use crate::lr_find::{LrFindResult, Smoother};
use crate::phase::Phase;
use anyhow::{Context, Result};
use maskflow_contracts::model::{EpochMetrics, METRICS_FILE};
use maskflow_core::fsutil::write_json_atomic;
use maskflow_models::Classifier;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

const PROGRESS_FILE: &str = "progress.json";

/// Where a run stands (`progress.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Progress {
    /// The run's configuration: a checkpoint of another one is ignored.
    pub config_hash: String,
    pub phase: Phase,
    /// Epochs of `phase` done.
    pub epochs_done: usize,
    pub tensors_file: String,
    pub tensors_blake3: String,
    pub ema: Smoother,
    pub metrics: Vec<EpochMetrics>,
    pub lr_found: Option<f64>,
    pub lr_find: Option<LrFindResult>,
}

impl Progress {
    pub fn fresh(config_hash: &str) -> Self {
        Progress {
            config_hash: config_hash.to_string(),
            phase: Phase::Frozen,
            epochs_done: 0,
            tensors_file: String::new(),
            tensors_blake3: String::new(),
            ema: Smoother::new(0.98),
            metrics: Vec::new(),
            lr_found: None,
            lr_find: None,
        }
    }
}

/// The model's variables, sorted by name, on the CPU.
pub(crate) fn sorted_variables(model: &Classifier) -> Vec<(String, Tensor)> {
    maskflow_fit::checkpoint::sorted_variables(&model.vs)
}

pub(crate) use maskflow_fit::checkpoint::save_safetensors;

/// The checkpoint in `dir` for this configuration, if there is one that verifies: its progress,
/// the model's tensors and the optimizer's.
pub(crate) type Restored = (Progress, Vec<(String, Tensor)>, Vec<(String, Tensor)>);

/// Why a checkpoint there is not used goes to `note`.
pub(crate) fn read(dir: &Path, config_hash: &str, note: &dyn Fn(String)) -> Option<Restored> {
    let p: Progress = serde_json::from_slice(&std::fs::read(dir.join(PROGRESS_FILE)).ok()?).ok()?;
    if p.config_hash != config_hash {
        note(format!("train: ignoring checkpoint in {} (made with another configuration)", dir.display()));
        return None;
    }
    let file = dir.join(&p.tensors_file);
    let tensors = match maskflow_fit::checkpoint::verified_tensors(&file, &p.tensors_blake3) {
        Ok(t) => t,
        Err(why) => {
            note(format!("train: ignoring checkpoint {why}"));
            return None;
        }
    };
    let (model, opt): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n.starts_with("model."));
    let model = model.into_iter().map(|(n, t)| (n["model.".len()..].to_owned(), t)).collect();
    let opt = opt.into_iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|s| (s.to_owned(), t))).collect();
    Some((p, model, opt))
}

/// Writes the checkpoint of the epoch `progress` has just recorded.
pub(crate) fn write(dir: &Path, model: &Classifier, opt_state: Vec<(String, Tensor)>, progress: &mut Progress) -> Result<()> {
    let name = format!("state-{}-{:03}.safetensors", progress.phase.number(), progress.epochs_done);
    let mut named: Vec<(String, Tensor)> =
        sorted_variables(model).into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    named.extend(opt_state.into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
    let path = dir.join(&name);
    save_safetensors(&named, &path)?;
    let (blake3, _) = maskflow_core::hash::blake3_file(&path).with_context(|| format!("hashing {}", path.display()))?;
    let old = std::mem::replace(&mut progress.tensors_file, name);
    progress.tensors_blake3 = blake3;
    write_json_atomic(&dir.join(PROGRESS_FILE), progress)?;
    if !old.is_empty() && old != progress.tensors_file {
        let _ = std::fs::remove_file(dir.join(old));
    }
    write_metrics(&dir.join(METRICS_FILE), &progress.metrics)
}

/// `metrics.jsonl`: one line per epoch.
pub(crate) fn write_metrics(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    maskflow_fit::checkpoint::write_jsonl(path, metrics)
}
