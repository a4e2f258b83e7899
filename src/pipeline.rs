//! Pipeline files: `pipelines/*.toml`. A `[dataset]` table, then one table per stage whose omitted
//! fields take the notebook's defaults. Unknown keys and wrong types are errors naming
//! `file:line:column` and the key. Relative paths resolve against the pipeline file's folder.

use anyhow::Result;
use maskflow_index::IndexParams;
use maskflow_prep::PrepParams;
use maskflow_synth::SynthParams;
use maskflow_train::TrainParams;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The stages, in order.
pub const STAGES: [&str; 5] = [
    maskflow_index::STAGE,
    maskflow_prep::STAGE,
    maskflow_train::STAGE,
    maskflow_eval::STAGE,
    maskflow_export::STAGE,
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Name used for run records (`artifacts/runs/<name>/`); default: the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    pub dataset: DatasetSection,
    #[serde(default)]
    pub index: IndexParams,
    #[serde(default)]
    pub prep: PrepParams,
    #[serde(default)]
    pub train: TrainParams,
    #[serde(default)]
    pub eval: maskflow_eval::EvalParams,
    #[serde(default)]
    pub export: maskflow_export::ExportParams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// The dataset folder: one sub-folder per class.
    pub root: PathBuf,
    /// When present, `root` is (re)generated with `maskflow synth` and these parameters unless it
    /// already holds exactly that dataset.
    #[serde(default)]
    pub synth: Option<SynthParams>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub name: String,
    pub root: PathBuf,
    pub file: PipelineFile,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self> {
        let file: PipelineFile = maskflow_core::config::load_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let root = if file.dataset.root.is_absolute() { file.dataset.root.clone() } else { base.join(&file.dataset.root) };
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into())
        });
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{}: pipeline name {name:?} must be letters, digits, '-', '_' or '.'",
            path.display()
        );
        file.index.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.prep.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.train.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), name, root, file })
    }
}
