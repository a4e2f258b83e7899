//! maskflow-stage: the API a stage kind is written against, and nothing else. A stage crate
//! depends on this crate (and on the libraries it computes with), never on `maskflow-pipeline`
//! (the runner, graphs, the shared store) or `maskflow-remote` (object storage, tokio): a change
//! to the store or the runner leaves every stage's sources — and its `stages.lock` hash — as they
//! are (`tests/local/architecture.rs` enforces it).
//!
//! - [`Stage`]: a stage kind — name, code version, typed `Params`, input slots, typed `Report` with
//!   its one-line summary, and `run`.
//! - [`Split`]: a kind whose work splits into independent tasks (plan → task → commit).
//! - [`RunCtx`], [`Slot`], [`External`], [`InputArtifact`], [`Placement`], [`Notes`]: what `run` gets.
//! - [`Runtime`] and its typed [`Device`]: where compute runs (never part of a key).
//! - [`Metrics`]: a report's figures for comparing runs.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use maskflow_core::device::Device;
pub use maskflow_core::store::FileEntry;

/// The name of the outside input every dataset-reading kind gets: the labelled folder.
pub const DATASET: &str = "dataset";
/// The outside input of the pipeline's label-overrides file (`[dataset] overrides`).
pub const OVERRIDES: &str = "label_overrides";

/// An input slot of a stage kind: its name and the artifact kind it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: &'static str,
    /// The artifact kind it expects (`maskflow_contracts::kinds`).
    pub kind: &'static str,
    pub required: bool,
    /// A slot holding *the data*: `data = "FOLDER"` on an instance rebinds it (and what it needs) to
    /// that folder, leaving the other slots (the model) as they are.
    pub data: bool,
}

impl Slot {
    pub const fn new(name: &'static str, kind: &'static str) -> Self {
        Slot { name, kind, required: true, data: false }
    }
    pub const fn optional(mut self) -> Self {
        self.required = false;
        self
    }
    pub const fn data(mut self) -> Self {
        self.data = true;
        self
    }
}

/// Where and how compute runs. Never part of a key.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Already resolved from `auto`.
    pub device: Device,
    pub threads: usize,
    pub progress: bool,
    /// The store root (imported weights live there).
    pub artifacts: PathBuf,
    /// The data-parallel ranks of this run (`maskflow run --world-size N`, torchrun), for the
    /// stages that train with them (train: a `maskflow_train::ranks::SharedGroup`); this process
    /// is rank 0. None: one process. Opaque here so that this crate — in every stage's lock hash —
    /// depends on no process-group code.
    pub ranks: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

/// An outside input that is not an artifact (the dataset folder, pretrained weights): where it is
/// and the content key it adds to the stage's key.
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    pub path: PathBuf,
    pub key: String,
    /// Files it had, when known (a dataset's listing: `status` names added / removed / modified).
    pub files: Option<BTreeMap<String, String>>,
}

/// An upstream artifact handed to a stage.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub dir: PathBuf,
    pub key: String,
}

/// Where a stage's messages for the user go (resuming from a checkpoint, a checkpoint ignored and
/// why, an epoch's figures): the runner turns them into events, which the binary prints. A stage
/// never prints.
pub trait Notes: Sync {
    fn note(&self, line: &str);
}

/// Drops every note (tests, embedders that want none).
pub struct NoNotes;

impl Notes for NoNotes {
    fn note(&self, _line: &str) {}
}

/// What a stage's `run` gets besides its params.
pub struct RunCtx<'a> {
    /// The instance's name in the pipeline (`train`, `eval.street`).
    pub instance: &'a str,
    pub key: &'a str,
    pub inputs: &'a BTreeMap<String, InputArtifact>,
    pub externals: &'a BTreeMap<String, External>,
    pub runtime: &'a Runtime,
    /// The labelled folder, on this machine, that the instance's data comes from (its own dataset,
    /// or its upstream's). An index artifact records the folder it was made from, but one pulled
    /// from a shared store was made on another machine: read the images from here.
    pub dataset_root: Option<&'a Path>,
    /// Kept across failed attempts at this key and removed after success (training checkpoints).
    pub scratch: &'a Path,
    /// The empty folder the stage writes into.
    pub out: &'a Path,
    /// Where its messages go.
    pub notes: &'a dyn Notes,
}

#[derive(Debug, thiserror::Error)]
pub enum CtxError {
    #[error("no input artifact in slot {0:?}")]
    MissingInput(String),
    #[error("no outside input {0:?}")]
    MissingExternal(String),
}

impl RunCtx<'_> {
    pub fn input(&self, slot: &str) -> Result<&Path, CtxError> {
        self.inputs.get(slot).map(|a| a.dir.as_path()).ok_or_else(|| CtxError::MissingInput(slot.into()))
    }
    pub fn optional_input(&self, slot: &str) -> Option<&Path> {
        self.inputs.get(slot).map(|a| a.dir.as_path())
    }
    pub fn external(&self, name: &str) -> Result<&External, CtxError> {
        self.externals.get(name).ok_or_else(|| CtxError::MissingExternal(name.into()))
    }
    /// Slot → key of every input, for provenance (only what the key covers).
    pub fn input_keys(&self) -> BTreeMap<String, String> {
        self.inputs.iter().map(|(k, a)| (k.clone(), a.key.clone())).collect()
    }
}

/// Facts about where an instance sits, for params whose default depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The instance was given `data = "FOLDER"`: its data slots read that folder.
    pub own_data: bool,
}

/// One stage kind.
pub trait Stage: 'static {
    /// The name in pipeline files and the store (`prep`).
    const KIND: &'static str;
    /// Bumped when outputs change for the same inputs; `stages.lock` keeps it honest.
    const VERSION: u32;
    /// The artifact kind it writes.
    const OUTPUT: &'static str;
    /// Reads the pipeline's labelled folder (gets the `dataset` outside input).
    const READS_DATASET: bool = false;
    /// Applies the pipeline's label-overrides file (`[dataset] overrides`), given to it as the
    /// outside input [`OVERRIDES`] keyed by its content.
    const READS_OVERRIDES: bool = false;
    /// Everything that shapes the output; `deny_unknown_fields`, every default documented.
    type Params: Serialize + DeserializeOwned + Default + Clone;
    type Report: Serialize + DeserializeOwned;

    fn validate(_p: &Self::Params) -> Result<(), String> {
        Ok(())
    }
    /// Input slots.
    fn inputs(p: &Self::Params) -> Vec<Slot>;
    /// Fills params whose default depends on the instance's place (called before keying).
    fn place(_p: &mut Self::Params, _at: Placement) {}
    /// Outside inputs besides the dataset, by name, each with its content key (e.g. weights' sha256).
    fn externals(_p: &Self::Params, _rt: &Runtime) -> anyhow::Result<BTreeMap<String, External>> {
        Ok(BTreeMap::new())
    }
    fn run(p: &Self::Params, ctx: &RunCtx) -> anyhow::Result<Self::Report>;
    /// One line about a report, the same whether just built or read from the store.
    fn summary(r: &Self::Report) -> String;
    /// What runs are compared by (`maskflow runs`, `diff`, runs.html): headline figures, curves,
    /// a confusion matrix. None by default.
    fn metrics(_r: &Self::Report) -> Metrics {
        Metrics::default()
    }
}

/// A report's figures for comparing runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Numbers by name (`accuracy`, `log_loss`, `seconds`), in display order.
    pub scalars: Vec<Scalar>,
    /// Per-epoch (or per-step) curves.
    pub curves: Vec<Curve>,
    pub confusion: Option<Confusion>,
}

/// One named number of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub name: &'static str,
    pub value: f64,
    /// Shown in `maskflow runs`' table (every scalar is in its JSON and CSV).
    pub headline: bool,
}

impl Scalar {
    pub fn headline(name: &'static str, value: f64) -> Scalar {
        Scalar { name, value, headline: true }
    }
    pub fn other(name: &'static str, value: f64) -> Scalar {
        Scalar { name, value, headline: false }
    }
}

/// One curve: `points` are (x, y), x named by `x_label`.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub name: &'static str,
    pub x_label: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Counts by actual (rows) and predicted (columns) class.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}


/// How to cut a splittable stage's work: execution settings, never part of a key.
#[derive(Debug, Clone, Default)]
pub struct SplitHint {
    /// About how many items (files, images) one task should take; the stage's default if `None`.
    pub items_per_task: Option<usize>,
}

/// A stage kind whose work splits into independent tasks whose results a commit assembles into
/// exactly the artifact [`Stage::run`] makes.
pub trait Split: Stage {
    /// What one task does (written into the plan).
    type Task: Serialize + DeserializeOwned;
    /// What one task made besides its files (small: counts, per-file records).
    type Done: Serialize + DeserializeOwned;

    /// The tasks, in the order their results are assembled. `ctx.out` is not used.
    fn plan(p: &Self::Params, ctx: &RunCtx, hint: &SplitHint) -> anyhow::Result<Vec<Self::Task>>;
    /// Runs one task, writing its files (artifact-relative paths) into `ctx.out`.
    fn task(p: &Self::Params, ctx: &RunCtx, task: &Self::Task) -> anyhow::Result<Self::Done>;
    /// Writes the artifact's remaining files into `ctx.out` from every task's result (in plan
    /// order) and returns the stage's report. `files` are the files the tasks made.
    fn commit(p: &Self::Params, ctx: &RunCtx, tasks: Vec<Self::Task>, done: Vec<Self::Done>, files: &[FileEntry]) -> anyhow::Result<Self::Report>;
}
