//! maskflow-pipeline: the layer that chains stages. It knows the [`Stage`] trait and nothing of
//! images, tensors or any particular stage.
//!
//! - [`Stage`]: a stage kind — name, code version, typed `Params`, input slots, typed `Report` with
//!   its one-line summary, and `run`.
//! - [`Registry`]: the kinds a binary knows (adding one is one line there).
//! - [`graph`]: a pipeline file → a graph of named instances with their inputs, checked before
//!   anything runs (unknown kinds, missing inputs, slot-kind mismatches, cycles: `file:line:col`).
//! - [`runner`]: keys, the store, `--force` / `--until`, run records, status with reasons.
//! - [`shared`]: the local store as a read-through cache of a shared one (pull, publish, leases).
//! - [`fanout`]: splittable kinds ([`fanout::Split`]) run as plan → tasks → commit on any executor.

pub mod fanout;
pub mod graph;
pub mod runner;
pub mod shared;
pub mod testing;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// `cpu`, `cuda:N` (already resolved from `auto`).
    pub device: String,
    pub threads: usize,
    pub progress: bool,
    /// The store root (imported weights live there).
    pub artifacts: PathBuf,
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
    /// outside input [`runner::OVERRIDES`] keyed by its content.
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
}

/// A stage kind with its types erased (params as canonical JSON inside this crate only).
pub trait DynStage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn output(&self) -> &'static str;
    fn reads_dataset(&self) -> bool;
    fn reads_overrides(&self) -> bool;
    /// Params from a pipeline-file table (errors keep the file position).
    fn parse(&self, de: toml::de::ValueDeserializer<'_>) -> Result<Value, toml::de::Error>;
    fn parse_value(&self, v: Value) -> Result<Value, String>;
    fn default_params(&self) -> Value;
    fn validate(&self, p: &Value) -> Result<(), String>;
    fn inputs(&self, p: &Value) -> Vec<Slot>;
    fn place(&self, p: &mut Value, at: Placement);
    fn externals(&self, p: &Value, rt: &Runtime) -> anyhow::Result<BTreeMap<String, External>>;
    fn run(&self, p: &Value, ctx: &RunCtx) -> anyhow::Result<Value>;
    /// The summary of a stored report; `None` when it does not read as this kind's report.
    fn summary(&self, report: &Value) -> Option<String>;
}

struct Erased<S: Stage>(std::marker::PhantomData<fn() -> S>);

fn typed<S: Stage>(p: &Value) -> S::Params {
    // Values in a graph came from `S::Params` through `to_value`, so they always read back.
    serde_json::from_value(p.clone()).unwrap_or_default()
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl<S: Stage> DynStage for Erased<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn output(&self) -> &'static str {
        S::OUTPUT
    }
    fn reads_dataset(&self) -> bool {
        S::READS_DATASET
    }
    fn reads_overrides(&self) -> bool {
        S::READS_OVERRIDES
    }
    fn parse(&self, de: toml::de::ValueDeserializer<'_>) -> Result<Value, toml::de::Error> {
        let p: S::Params = serde::Deserialize::deserialize(de)?;
        Ok(to_value(&p))
    }
    fn parse_value(&self, v: Value) -> Result<Value, String> {
        let p: S::Params = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Ok(to_value(&p))
    }
    fn default_params(&self) -> Value {
        to_value(&S::Params::default())
    }
    fn validate(&self, p: &Value) -> Result<(), String> {
        S::validate(&typed::<S>(p))
    }
    fn inputs(&self, p: &Value) -> Vec<Slot> {
        S::inputs(&typed::<S>(p))
    }
    fn place(&self, p: &mut Value, at: Placement) {
        let mut t = typed::<S>(p);
        S::place(&mut t, at);
        *p = to_value(&t);
    }
    fn externals(&self, p: &Value, rt: &Runtime) -> anyhow::Result<BTreeMap<String, External>> {
        S::externals(&typed::<S>(p), rt)
    }
    fn run(&self, p: &Value, ctx: &RunCtx) -> anyhow::Result<Value> {
        let r = S::run(&typed::<S>(p), ctx)?;
        Ok(serde_json::to_value(&r)?)
    }
    fn summary(&self, report: &Value) -> Option<String> {
        serde_json::from_value::<S::Report>(report.clone()).ok().map(|r| S::summary(&r))
    }
}

/// The stage kinds a binary knows, in their default order.
#[derive(Default)]
pub struct Registry {
    kinds: Vec<Box<dyn DynStage>>,
    splits: Vec<(&'static str, Box<dyn fanout::DynSplit>)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register<S: Stage>(mut self) -> Self {
        self.kinds.push(Box::new(Erased::<S>(std::marker::PhantomData)));
        self
    }
    /// Registers a kind that can also run as plan → tasks → commit.
    pub fn register_split<S: fanout::Split>(mut self) -> Self {
        self.splits.push((S::KIND, Box::new(fanout::ErasedSplit::<S>(std::marker::PhantomData))));
        self.register::<S>()
    }
    /// The kind's split, if it has one.
    pub fn split(&self, kind: &str) -> Option<&dyn fanout::DynSplit> {
        self.splits.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.as_ref())
    }
    pub fn split_names(&self) -> Vec<&'static str> {
        self.splits.iter().map(|(k, _)| *k).collect()
    }
    pub fn get(&self, kind: &str) -> Option<&dyn DynStage> {
        self.kinds.iter().find(|k| k.kind() == kind).map(|k| k.as_ref())
    }
    pub fn kinds(&self) -> impl Iterator<Item = &dyn DynStage> {
        self.kinds.iter().map(|k| k.as_ref())
    }
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.kind()).collect()
    }
    /// The kind that writes `artifact` (the first registered).
    pub fn producer(&self, artifact: &str) -> Option<&dyn DynStage> {
        self.kinds().find(|k| k.output() == artifact)
    }
}

/// Parses a stage's params from a standalone TOML file (the whole file is the params table), with
/// `file:line:col` errors.
pub fn params_from_file(stage: &dyn DynStage, path: &Path) -> Result<Value, maskflow_core::config::ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| maskflow_core::config::ConfigError::Read { path: path.to_path_buf(), source })?;
    let table = toml::de::DeTable::parse(&text).map_err(|e| graph::config_error(path, &text, &e))?;
    let span = table.span();
    let value = toml::de::DeValue::Table(table.into_inner());
    stage
        .parse(toml::de::ValueDeserializer::from(toml::Spanned::new(span, value)))
        .map_err(|e| graph::config_error(path, &text, &e))
}

#[cfg(test)]
mod tests;
