//! Loading a `trained_model` artifact (see `maskflow_contracts::model`) as a runnable model, and a
//! fixture of one for tests that must not train.

use crate::classifier::{load_named, Classifier, LoadError};
use maskflow_contracts::model::{TrainConfig, MODEL_FILE};
use maskflow_contracts::{ContractError, JsonFile};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TrainedError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: tch::TchError },
    #[error("{path}: {source}")]
    Load { path: PathBuf, source: LoadError },
}

/// Builds the trained model of a `trained_model` artifact directory on `device`.
pub fn load_trained(dir: &Path, device: Device) -> Result<(Classifier, TrainConfig), TrainedError> {
    let cfg = TrainConfig::read(dir)?;
    let mut model = Classifier::new(cfg.arch, cfg.classes.len() as i64, &cfg.head, device);
    let path = dir.join(MODEL_FILE);
    let tensors = Tensor::read_safetensors(&path).map_err(|source| TrainedError::Read { path: path.clone(), source })?;
    load_named(&model.vs, &tensors, &[], &[]).map_err(|source| TrainedError::Load { path, source })?;
    if cfg.channels_last {
        model.to_channels_last();
    }
    Ok((model, cfg))
}

/// The stage runtime's device as libtorch's.
pub fn torch_device(d: maskflow_core::device::Device) -> Device {
    match d {
        maskflow_core::device::Device::Cpu => Device::Cpu,
        maskflow_core::device::Device::Cuda(n) => Device::Cuda(n),
    }
}

/// A `trained_model` artifact with a randomly initialised (seeded) model: what eval and export
/// test against instead of training one.
pub fn fixture(dir: &Path, cfg: &TrainConfig, seed: i64) -> Result<(), TrainedError> {
    std::fs::create_dir_all(dir).map_err(|source| ContractError::Write { path: dir.to_path_buf(), source })?;
    tch::manual_seed(seed);
    let model = Classifier::new(cfg.arch, cfg.classes.len() as i64, &cfg.head, Device::Cpu);
    let mut named: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join(MODEL_FILE);
    Tensor::write_safetensors(&named, &path).map_err(|source| TrainedError::Read { path, source })?;
    cfg.write(dir)?;
    Ok(())
}
