//! maskflow-pipeline: the layer that chains stages. It knows the [`Stage`] trait (from
//! `maskflow-stage`, which stage crates depend on instead of this crate) and nothing of images,
//! tensors or any particular stage.
//!
//! - [`Registry`]: the kinds a binary knows (adding one is one line there).
//! - [`graph`]: a pipeline file → a graph of named instances with their inputs, checked before
//!   anything runs (unknown kinds, missing inputs, slot-kind mismatches, cycles: `file:line:col`).
//! - [`runner`]: keys, the store, `--force` / `--until`, run records, status with reasons.
//! - [`shared`]: the local store as a read-through cache of a shared one (pull, publish, leases).
//! - [`events`]: what the runner reports (the binary renders it; the library never prints).
//! - [`fanout`]: splittable kinds ([`fanout::Split`]) run as plan → tasks → commit on any executor.

pub mod events;
pub mod fanout;
pub mod graph;
pub mod runner;
pub mod shared;
pub mod testing;
pub mod variation;

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub use maskflow_stage::{Confusion, CtxError, Curve, Device, Metrics, Scalar, External, InputArtifact, NoNotes, Notes, Placement, RunCtx, Runtime, Slot, Split, SplitHint, Stage};

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
    /// Input slots. Every method given params decodes them strictly: params that do not read as
    /// this kind's (written by another maskflow, or damaged) are an error, never defaults.
    fn inputs(&self, p: &Value) -> Result<Vec<Slot>, String>;
    fn place(&self, p: &mut Value, at: Placement) -> Result<(), String>;
    fn externals(&self, p: &Value, rt: &Runtime) -> anyhow::Result<BTreeMap<String, External>>;
    fn run(&self, p: &Value, ctx: &RunCtx) -> anyhow::Result<Value>;
    /// The summary of a stored report; `None` when it does not read as this kind's report.
    fn summary(&self, report: &Value) -> Option<String>;
    /// The figures of a stored report; `None` when it does not read as this kind's report.
    fn metrics(&self, report: &Value) -> Option<Metrics>;
}

struct Erased<S: Stage>(std::marker::PhantomData<fn() -> S>);

/// Erased params back as the kind's own type. Strict: never a default for what does not read.
pub(crate) fn typed<S: Stage>(p: &Value) -> Result<S::Params, String> {
    serde_json::from_value(p.clone()).map_err(|e| format!("params of {} do not read as this maskflow's: {e}", S::KIND))
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
        S::validate(&typed::<S>(p)?)
    }
    fn inputs(&self, p: &Value) -> Result<Vec<Slot>, String> {
        Ok(S::inputs(&typed::<S>(p)?))
    }
    fn place(&self, p: &mut Value, at: Placement) -> Result<(), String> {
        let mut t = typed::<S>(p)?;
        S::place(&mut t, at);
        *p = to_value(&t);
        Ok(())
    }
    fn externals(&self, p: &Value, rt: &Runtime) -> anyhow::Result<BTreeMap<String, External>> {
        S::externals(&typed::<S>(p).map_err(anyhow::Error::msg)?, rt)
    }
    fn run(&self, p: &Value, ctx: &RunCtx) -> anyhow::Result<Value> {
        let r = S::run(&typed::<S>(p).map_err(anyhow::Error::msg)?, ctx)?;
        Ok(serde_json::to_value(&r)?)
    }
    fn summary(&self, report: &Value) -> Option<String> {
        serde_json::from_value::<S::Report>(report.clone()).ok().map(|r| S::summary(&r))
    }
    fn metrics(&self, report: &Value) -> Option<Metrics> {
        serde_json::from_value::<S::Report>(report.clone()).ok().map(|r| S::metrics(&r))
    }
}

/// Sets a flag when dropped: helper threads in a `std::thread::scope` watch it, so they end on
/// every way out of the scope's body — a panic included — instead of keeping the process alive.
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
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
