//! Plan → task → commit: a splittable stage's work spread over machines through the shared store.
//!
//! A stage kind that implements [`Split`] (index: chunks of the sorted file list; prep: one task
//! per output shard) can be run as independent tasks:
//!
//! 1. **plan** (one machine): the instance's key as `maskflow run` computes it, its inputs (which
//!    must be published), and the list of tasks, written to the shared store:
//!
//!    ```text
//!    plans/<kind>/<key>/<nonce>/task-<i>.json   what task i does (the stage's typed task)
//!    plans/<kind>/<key>/plan.json               the plan, naming its nonce (written last, create-only:
//!                                               the plan's commit point; a planner that died before it
//!                                               left task files no plan names)
//!    ```
//!
//! 2. **task** `i` (any machine, any order, any number of times): reads the plan, pulls the inputs,
//!    runs the stage's task into a temporary folder, uploads its files as blobs, then writes
//!    `plans/<kind>/<key>/done-<i>.json` create-only (its files and the stage's typed result). A
//!    task already done, or of a plan already committed, does nothing; one killed before its record
//!    left blobs nobody trusts and is simply run again.
//! 3. **commit** (one machine): every task's record, the stage's commit (the files that need all
//!    tasks: the index table, the shard list), then the artifact's manifest, create-only, naming
//!    every file — byte for byte the artifact a single machine would have made, under the same key.
//!
//! How many tasks there are is an execution setting ([`SplitHint`]); it is never part of a key.
//! Executors only loop over task indices: [`LocalExecutor`] here, Ray in the binary, a Slurm array
//! or a Kubernetes Indexed Job by hand (`maskflow task --plan URL` reads the index from
//! `$SLURM_ARRAY_TASK_ID` / `$JOB_COMPLETION_INDEX`).

use crate::{DynStage, External, InputArtifact, Registry, RunCtx, Runtime, Stage};
use anyhow::{bail, Context, Result};
use maskflow_core::record::{Format, RecordError};
use maskflow_core::store::{hash_files, now_unix, FileEntry, Manifest, StageSpec, Store};
use maskflow_remote::Remote;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Plans: format 2 records the planning tool's version (format 1 plans, transient, are refused:
/// commit them with the maskflow that made them). Fields a newer maskflow adds are ignored.
const PLAN_FORMAT: Format = Format::new("plan", 2);
/// Task records (`done-<i>.json`): format 2, with the writer's version.
const DONE_FORMAT: Format = Format::new("task record", 2);

pub use maskflow_stage::{Split, SplitHint};

/// [`Split`] with its types erased (JSON inside this crate only).
pub trait DynSplit: Send + Sync {
    fn plan(&self, p: &Value, ctx: &RunCtx, hint: &SplitHint) -> Result<Vec<Value>>;
    fn task(&self, p: &Value, ctx: &RunCtx, task: Value) -> Result<Value>;
    fn commit(&self, p: &Value, ctx: &RunCtx, tasks: Vec<Value>, done: Vec<Value>, files: &[FileEntry]) -> Result<Value>;
}

pub(crate) struct ErasedSplit<S: Split>(pub(crate) std::marker::PhantomData<fn() -> S>);

fn params<S: Stage>(p: &Value) -> Result<S::Params> {
    crate::typed::<S>(p).map_err(anyhow::Error::msg)
}

fn decode<T: DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("a {what} of another format (made by another maskflow version?)"))
}

impl<S: Split> DynSplit for ErasedSplit<S> {
    fn plan(&self, p: &Value, ctx: &RunCtx, hint: &SplitHint) -> Result<Vec<Value>> {
        let tasks = S::plan(&params::<S>(p)?, ctx, hint)?;
        tasks.iter().map(|t| serde_json::to_value(t).map_err(Into::into)).collect()
    }
    fn task(&self, p: &Value, ctx: &RunCtx, task: Value) -> Result<Value> {
        let task: S::Task = decode(task, "task")?;
        Ok(serde_json::to_value(S::task(&params::<S>(p)?, ctx, &task)?)?)
    }
    fn commit(&self, p: &Value, ctx: &RunCtx, tasks: Vec<Value>, done: Vec<Value>, files: &[FileEntry]) -> Result<Value> {
        let tasks: Vec<S::Task> = tasks.into_iter().map(|t| decode(t, "task")).collect::<Result<_>>()?;
        let done: Vec<S::Done> = done.into_iter().map(|d| decode(d, "task result")).collect::<Result<_>>()?;
        Ok(serde_json::to_value(S::commit(&params::<S>(p)?, ctx, tasks, done, files)?)?)
    }
}

/// An outside input as a plan records it: where it was on the planning machine, and its key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExternalRef {
    pub path: PathBuf,
    pub key: String,
}

/// An input artifact as a plan records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    pub kind: String,
    pub key: String,
}

/// `plans/<kind>/<key>/plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanDoc {
    pub format: u32,
    /// The planning maskflow's version.
    pub tool_version: String,
    /// The pipeline's name and the instance (`index`, `prep`).
    pub pipeline: String,
    pub instance: String,
    /// What the artifact's key is computed from.
    pub spec: StageSpec,
    pub tasks: usize,
    pub inputs: BTreeMap<String, InputRef>,
    pub externals: BTreeMap<String, ExternalRef>,
    /// The labelled folder on the planning machine (tasks elsewhere may name theirs).
    pub dataset_root: Option<PathBuf>,
    pub created_unix: u64,
    /// The folder of this plan's task files (unique per planning attempt).
    pub nonce: String,
}

impl PlanDoc {
    pub fn key(&self) -> String {
        self.spec.key()
    }
    fn rel(&self) -> String {
        plan_rel(&self.spec.stage, &self.key())
    }
}

/// `plans/<kind>/<key>/done-<i>.json`: what a finished task made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneDoc {
    pub format: u32,
    pub tool_version: String,
    pub index: usize,
    /// Its files (artifact-relative paths), uploaded as blobs before this record was written.
    pub files: Vec<FileEntry>,
    pub seconds: f64,
    pub host: String,
    pub done: Value,
}

pub fn plan_rel(kind: &str, key: &str) -> String {
    format!("plans/{kind}/{key}")
}

fn task_rel(plan: &str, nonce: &str, i: usize) -> String {
    format!("{plan}/{nonce}/task-{i}.json")
}

fn done_rel(plan: &str, i: usize) -> String {
    format!("{plan}/done-{i}.json")
}

/// A plan's URL: the store's URL followed by `/plans/<kind>/<key>`.
pub fn plan_url(remote: &Remote, kind: &str, key: &str) -> String {
    format!("{}/{}", remote.url(), plan_rel(kind, key))
}

/// Splits a plan URL into the store's URL, the kind and the key.
pub fn parse_plan_url(url: &str) -> Result<(String, String, String)> {
    let bad = || anyhow::anyhow!("plan URL {url:?}: expected <store URL>/plans/<kind>/<key> (as `maskflow plan` prints)");
    let (store, rest) = url.trim_end_matches('/').rsplit_once("/plans/").ok_or_else(bad)?;
    let (kind, key) = rest.split_once('/').ok_or_else(bad)?;
    if kind.is_empty() || key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) || store.is_empty() {
        return Err(bad());
    }
    Ok((store.to_string(), kind.to_string(), key.to_string()))
}

fn read_json<T: DeserializeOwned>(remote: &Remote, rel: &str) -> Result<Option<T>> {
    match remote.read(rel)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).with_context(|| format!("{}/{rel}: unreadable", remote.url())),
    }
}

/// A versioned record of the plan protocol: corrupt and newer ones are errors that name it (the
/// [`RecordError`] stays in the chain: [`is_newer_record`]).
fn read_record<T: DeserializeOwned>(remote: &Remote, rel: &str, format: Format) -> Result<Option<T>> {
    match remote.read(rel)? {
        None => Ok(None),
        Some(b) => format.decode(&b).map(Some).map_err(|e: RecordError| anyhow::Error::new(e).context(format!("{}/{rel}", remote.url()))),
    }
}

/// Whether `e` comes from a record (a plan, a task record, the artifact's manifest) of a newer
/// format than this maskflow reads.
pub fn is_newer_record(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<RecordError>().is_some_and(|r| r.newer().is_some())
            || matches!(c.downcast_ref::<maskflow_remote::RemoteError>(), Some(maskflow_remote::RemoteError::Newer { .. }))
    })
}

/// What `plan` found or made.
pub enum PlanState {
    /// The artifact is published already: nothing to do.
    Committed,
    Plan { doc: PlanDoc, url: String, created: bool, done: usize },
}

/// Where a plan's inputs come from on this machine.
pub struct PlanInputs<'a> {
    pub inputs: &'a BTreeMap<String, InputArtifact>,
    pub input_kinds: BTreeMap<String, String>,
    pub externals: &'a BTreeMap<String, External>,
    pub dataset_root: Option<&'a Path>,
}

/// Plans `spec` (an instance of a splittable kind) in the shared store, or finds the plan there.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    reg: &Registry,
    remote: &Remote,
    rt: &Runtime,
    pipeline: &str,
    instance: &str,
    spec: &StageSpec,
    given: &PlanInputs,
    hint: &SplitHint,
) -> Result<PlanState> {
    let (st, split) = splittable(reg, &spec.stage)?;
    let key = spec.key();
    if remote.manifest(&spec.stage, &key)?.is_some() {
        return Ok(PlanState::Committed);
    }
    let rel = plan_rel(&spec.stage, &key);
    let url = plan_url(remote, &spec.stage, &key);
    if let Some(doc) = read_plan(remote, &spec.stage, &key)? {
        check_plan(reg, &doc, &key).with_context(|| format!("refusing {url}"))?;
        let done = count_done(remote, &rel)?;
        return Ok(PlanState::Plan { doc, url, created: false, done });
    }
    let scratch = work_dir(&Store::new(&rt.artifacts), "plan")?;
    let ctx = RunCtx {
        instance,
        key: &key,
        inputs: given.inputs,
        externals: given.externals,
        runtime: rt,
        dataset_root: given.dataset_root,
        scratch: scratch.path(),
        out: scratch.path(),
        // Planning lists work; no stage says anything while doing it.
        notes: &crate::NoNotes,
    };
    let tasks = split.plan(&spec.params, &ctx, hint).with_context(|| format!("planning [{instance}] ({})", st.kind()))?;
    let nonce = format!("tasks-{}", maskflow_core::fsutil::unique_suffix());
    for (i, t) in tasks.iter().enumerate() {
        remote.create_once(&task_rel(&rel, &nonce, i), serde_json::to_vec(t)?)?;
    }
    let doc = PlanDoc {
        format: PLAN_FORMAT.current(),
        tool_version: maskflow_core::record::writer(),
        pipeline: pipeline.to_string(),
        instance: instance.to_string(),
        spec: spec.clone(),
        tasks: tasks.len(),
        inputs: given
            .inputs
            .iter()
            .map(|(slot, a)| {
                let kind = given.input_kinds.get(slot).cloned().unwrap_or_default();
                (slot.clone(), InputRef { kind, key: a.key.clone() })
            })
            .collect(),
        // Absolute: tasks run in other folders (and on other machines with the same mounts).
        externals: given.externals.iter().map(|(n, e)| (n.clone(), ExternalRef { path: absolute(&e.path), key: e.key.clone() })).collect(),
        dataset_root: given.dataset_root.map(absolute),
        created_unix: now_unix(),
        nonce,
    };
    let created = remote.create_once(&format!("{rel}/plan.json"), serde_json::to_vec_pretty(&doc)?)?;
    if !created {
        // Another machine planned the same key meanwhile: its plan is the plan.
        let theirs = read_plan(remote, &spec.stage, &key)?.context("plan vanished")?;
        check_plan(reg, &theirs, &key).with_context(|| format!("refusing {url}"))?;
        let done = count_done(remote, &rel)?;
        return Ok(PlanState::Plan { doc: theirs, url, created: false, done });
    }
    Ok(PlanState::Plan { doc, url, created: true, done: 0 })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn splittable<'r>(reg: &'r Registry, kind: &str) -> Result<(&'r dyn DynStage, &'r dyn DynSplit)> {
    let st = reg.get(kind).with_context(|| format!("stage kind {kind:?} is unknown to this maskflow"))?;
    let split = reg.split(kind).with_context(|| format!("stage kind {kind:?} does not split into tasks (only {} do)", reg.split_names().join(", ")))?;
    Ok((st, split))
}

fn count_done(remote: &Remote, rel: &str) -> Result<usize> {
    Ok(remote.list_under(rel)?.iter().filter(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("done-"))).count())
}

/// The plan of `kind`/`key` in the store, if any, of a format this maskflow reads and of this
/// kind. Nothing in it is trusted before [`check_plan`].
pub fn read_plan(remote: &Remote, kind: &str, key: &str) -> Result<Option<PlanDoc>> {
    let doc: Option<PlanDoc> = read_record(remote, &format!("{}/plan.json", plan_rel(kind, key)), PLAN_FORMAT)?;
    if let Some(d) = &doc {
        if d.spec.stage != kind {
            bail!("{}/{}: the plan is for stage kind {:?}", remote.url(), plan_rel(kind, key), d.spec.stage);
        }
    }
    Ok(doc)
}

/// Checks a plan read from the store before anything runs from it: the stage version is this
/// maskflow's, the params decode strictly as this kind's (and read back unchanged), every input
/// and outside input is the one the key names, and the key recomputed from all that is the plan's.
/// Returns the params as this maskflow reads them.
pub fn check_plan(reg: &Registry, doc: &PlanDoc, key: &str) -> Result<Value> {
    let kind = doc.spec.stage.as_str();
    let st = reg.get(kind).with_context(|| format!("stage kind {kind:?} is unknown to this maskflow"))?;
    let by = &doc.tool_version;
    if doc.spec.version != st.version() {
        bail!("the plan is for {kind} version {} (planned by {by}); this {} has {kind} version {}: use the same maskflow for plan, tasks and commit", doc.spec.version, maskflow_core::record::writer(), st.version());
    }
    let params = st
        .parse_value(doc.spec.params.clone())
        .map_err(|e| anyhow::anyhow!("the plan's params (planned by {by}) do not read as {kind}'s here: {e}"))?;
    if params != doc.spec.params {
        bail!("the plan's params (planned by {by}) do not read back unchanged as {kind}'s here: another maskflow's defaults?");
    }
    st.validate(&params).map_err(|e| anyhow::anyhow!("the plan's params: {e}"))?;
    let mut upstream = BTreeMap::new();
    for (slot, r) in &doc.inputs {
        upstream.insert(slot.clone(), r.key.clone());
    }
    for (name, e) in &doc.externals {
        if upstream.insert(name.clone(), e.key.clone()).is_some() {
            bail!("the plan names {name:?} both as an input and as an outside input");
        }
    }
    if upstream != doc.spec.upstream {
        bail!("the plan's inputs are not the ones its key was computed from");
    }
    let recomputed = StageSpec { stage: kind.to_string(), version: st.version(), params: params.clone(), upstream }.key();
    if recomputed != key {
        bail!("the plan's key {key} is not the key of what it says ({recomputed})");
    }
    Ok(params)
}

/// Where a task or commit runs.
pub struct Site<'a> {
    pub reg: &'a Registry,
    pub remote: &'a Remote,
    /// The local store (inputs are pulled into it; temporary folders live in it).
    pub store: &'a Store,
    pub rt: &'a Runtime,
    /// The labelled folder on this machine, when not where the plan says.
    pub dataset_root: Option<&'a Path>,
    /// Where the fan-out's events go.
    pub events: &'a dyn crate::events::Events,
}

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Ran { seconds: f64 },
    /// Its record was there (another run of it finished first).
    AlreadyDone,
    /// The artifact is committed: nothing to do.
    Committed,
}

struct Prepared {
    inputs: BTreeMap<String, InputArtifact>,
    externals: BTreeMap<String, External>,
    root: Option<PathBuf>,
}

impl Prepared {
    /// What a task or the commit of `doc` gets.
    fn ctx<'a>(&'a self, site: &'a Site, doc: &'a PlanDoc, key: &'a str, scratch: &'a Path, out: &'a Path, notes: &'a dyn crate::Notes) -> RunCtx<'a> {
        RunCtx {
            instance: &doc.instance,
            key,
            inputs: &self.inputs,
            externals: &self.externals,
            runtime: site.rt,
            dataset_root: self.root.as_deref(),
            scratch,
            out,
            notes,
        }
    }
}

/// The plan's inputs on this machine: artifacts pulled into the local store, outside inputs at the
/// plan's paths (or `site.dataset_root`), their keys as planned.
fn prepare(site: &Site, doc: &PlanDoc) -> Result<Prepared> {
    let mut inputs = BTreeMap::new();
    for (slot, r) in &doc.inputs {
        let dir = pull_input(site.store, site.remote, &r.kind, &r.key).with_context(|| format!("input {slot} ({} {})", r.kind, short(&r.key)))?;
        inputs.insert(slot.clone(), InputArtifact { dir, key: r.key.clone() });
    }
    let root = site.dataset_root.map(Path::to_path_buf).or_else(|| doc.dataset_root.clone());
    let externals = doc
        .externals
        .iter()
        .map(|(name, e)| {
            let path = match (name.as_str(), site.dataset_root) {
                (maskflow_stage::DATASET, Some(r)) => r.to_path_buf(),
                _ => e.path.clone(),
            };
            (name.clone(), External { path, key: e.key.clone(), files: None })
        })
        .collect();
    Ok(Prepared { inputs, externals, root })
}

/// The artifact `kind`/`key` in the local store: there already, or pulled from the shared one.
pub fn pull_input(store: &Store, remote: &Remote, kind: &str, key: &str) -> Result<PathBuf> {
    if let Some(o) = store.lookup(kind, key)? {
        return Ok(o.dir);
    }
    let rm = remote.manifest(kind, key)?.with_context(|| format!("not published in {}", remote.url()))?;
    let installed = store.install(kind, key, &rm.bytes, |tmp| remote.fetch(&rm.manifest, tmp).map(|_| ()))?;
    Ok(installed?.dir)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

fn work_dir(store: &Store, what: &str) -> Result<tempfile::TempDir> {
    let parent = store.root().join(".fanout");
    std::fs::create_dir_all(&parent).with_context(|| format!("{}", parent.display()))?;
    Ok(tempfile::Builder::new().prefix(&format!(".{what}-")).tempdir_in(parent)?)
}

/// Runs task `i` of the plan `kind`/`key` (idempotent).
pub fn run_task(site: &Site, kind: &str, key: &str, i: usize) -> Result<TaskOutcome> {
    let remote = site.remote;
    if remote.manifest(kind, key)?.is_some() {
        return Ok(TaskOutcome::Committed);
    }
    let doc = read_plan(remote, kind, key)?.with_context(|| format!("no plan at {}", plan_url(remote, kind, key)))?;
    let params = check_plan(site.reg, &doc, key).with_context(|| format!("refusing {}", plan_url(remote, kind, key)))?;
    if i >= doc.tasks {
        bail!("task {i}: the plan has {} tasks (0..={})", doc.tasks, doc.tasks.saturating_sub(1));
    }
    let rel = doc.rel();
    if remote.read(&done_rel(&rel, i))?.is_some() {
        return Ok(TaskOutcome::AlreadyDone);
    }
    let (_, split) = splittable(site.reg, kind)?;
    let Some(task) = read_json::<Value>(remote, &task_rel(&rel, &doc.nonce, i))? else {
        // A commit that landed meanwhile removes the plan's files.
        if remote.manifest(kind, key)?.is_some() {
            return Ok(TaskOutcome::Committed);
        }
        bail!("{}: task {i} is missing from the plan", plan_url(remote, kind, key));
    };
    let p = prepare(site, &doc)?;
    let out = work_dir(site.store, &format!("task-{}-{i}", short(key)))?;
    let scratch = work_dir(site.store, "scratch")?;
    let started = Instant::now();
    let notes = crate::events::InstanceNotes { events: site.events, instance: &doc.instance };
    let ctx = p.ctx(site, &doc, key, scratch.path(), out.path(), &notes);
    let done = split.task(&params, &ctx, task).with_context(|| format!("[{}] task {i}", doc.instance))?;
    let files = hash_files(out.path())?;
    // Protected from gc until the record naming them lands (maskflow_remote::guard).
    let intent = remote.intend(&format!("task {i} of {}", plan_url(remote, kind, key)), &files)?;
    remote.upload_blobs(out.path(), &files)?;
    maskflow_remote::failpoint("task-before-record");
    let seconds = started.elapsed().as_secs_f64();
    let record = DoneDoc {
        format: DONE_FORMAT.current(),
        tool_version: maskflow_core::record::writer(),
        index: i,
        files,
        seconds,
        host: maskflow_remote::host(),
        done,
    };
    remote.create_once(&done_rel(&rel, i), serde_json::to_vec(&record)?)?;
    drop(intent);
    Ok(TaskOutcome::Ran { seconds })
}

/// What a commit did.
#[derive(Debug)]
pub struct Committed {
    /// False when the artifact was committed already (by another commit, or a build elsewhere).
    pub created: bool,
    pub manifest: Manifest,
}

/// Commits the plan `kind`/`key`: every task must be done.
pub fn commit(site: &Site, kind: &str, key: &str) -> Result<Committed> {
    let remote = site.remote;
    if let Some(rm) = remote.manifest(kind, key)? {
        return Ok(Committed { created: false, manifest: rm.manifest });
    }
    let doc = read_plan(remote, kind, key)?.with_context(|| format!("no plan at {}", plan_url(remote, kind, key)))?;
    let params = check_plan(site.reg, &doc, key).with_context(|| format!("refusing {}", plan_url(remote, kind, key)))?;
    let rel = doc.rel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(doc.tasks);
    let mut done = Vec::with_capacity(doc.tasks);
    let mut missing = Vec::new();
    for i in 0..doc.tasks {
        match read_record::<DoneDoc>(remote, &done_rel(&rel, i), DONE_FORMAT)? {
            Some(d) if d.index == i => done.push(d),
            Some(_) => bail!("{}: the record of task {i} names another task", plan_url(remote, kind, key)),
            None => missing.push(i),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(|i| i.to_string()).collect();
        bail!(
            "{} of {} tasks are not done (task {}{}): run them (`maskflow task --plan {} --index I`), then commit again",
            missing.len(),
            doc.tasks,
            shown.join(", "),
            if missing.len() > 20 { ", …" } else { "" },
            plan_url(remote, kind, key)
        );
    }
    for i in 0..doc.tasks {
        tasks.push(read_json::<Value>(remote, &task_rel(&rel, &doc.nonce, i))?.with_context(|| format!("task {i} is missing from the plan"))?);
    }
    // Every task's blobs, protected from here on; a task whose blobs are gone (swept by a gc
    // after its plan was abandoned) loses its record, so that running it again redoes it.
    let all: Vec<FileEntry> = done.iter().flat_map(|d| d.files.iter().cloned()).collect();
    let _intent = remote.intend(&format!("commit of {}", plan_url(remote, kind, key)), &all)?;
    let mut lost = Vec::new();
    for d in &done {
        if let Err(e) = remote.check_blobs(&d.files) {
            if !e.is_corrupt_artifact() {
                return Err(e.into());
            }
            remote.remove(&done_rel(&rel, d.index))?;
            lost.push(d.index.to_string());
        }
    }
    if !lost.is_empty() {
        bail!(
            "the files of task(s) {} are gone from the store (collected by gc?): their records were removed; run them again (`maskflow task --plan {} --index I`), then commit",
            lost.join(", "),
            plan_url(remote, kind, key)
        );
    }
    let (_, split) = splittable(site.reg, kind)?;
    let mut files: Vec<FileEntry> = Vec::new();
    let mut task_seconds = 0.0;
    let mut results = Vec::with_capacity(done.len());
    for d in done {
        files.extend(d.files);
        task_seconds += d.seconds;
        results.push(d.done);
    }
    let p = prepare(site, &doc)?;
    let out = work_dir(site.store, &format!("commit-{}", short(key)))?;
    let scratch = work_dir(site.store, "scratch")?;
    let notes = crate::events::InstanceNotes { events: site.events, instance: &doc.instance };
    let ctx = p.ctx(site, &doc, key, scratch.path(), out.path(), &notes);
    let report = split.commit(&params, &ctx, tasks, results, &files).with_context(|| format!("committing [{}]", doc.instance))?;
    let own = hash_files(out.path())?;
    let mut seen: BTreeMap<&str, ()> = BTreeMap::new();
    for f in files.iter().chain(&own) {
        if seen.insert(f.path.as_str(), ()).is_some() {
            bail!("internal: two parts of [{}] both made {}", doc.instance, f.path);
        }
    }
    let _own = remote.intend(&format!("commit of {}", plan_url(remote, kind, key)), &own)?;
    remote.upload_blobs(out.path(), &own)?;
    files.extend(own);
    let manifest = Manifest::assemble(&doc.spec, files, report, now_unix(), task_seconds + started.elapsed().as_secs_f64());
    let created = remote.commit_manifest(&serde_json::to_vec_pretty(&manifest)?)?;
    // The plan has served; its task records go (their blobs are the artifact's now).
    for obj in remote.list_under(&rel)? {
        let _ = remote.remove(&obj);
    }
    Ok(Committed { created, manifest })
}

/// Runs every task of a plan: the executors differ only in where the indices run.
pub trait Executor: Sync {
    fn name(&self) -> &str;
    fn run_all(&self, plan_url: &str, tasks: usize) -> Result<()>;
}

/// Today's thread pool through the protocol: the tasks one after the other in this process, each
/// spread over the pool's threads.
pub struct LocalExecutor<'a> {
    pub site: Site<'a>,
}

impl Executor for LocalExecutor<'_> {
    fn name(&self) -> &str {
        "local"
    }
    fn run_all(&self, plan_url: &str, tasks: usize) -> Result<()> {
        let (_, kind, key) = parse_plan_url(plan_url)?;
        for i in 0..tasks {
            run_task(&self.site, &kind, &key, i)?;
        }
        Ok(())
    }
}

/// Plans, runs every task through `executor` (one progress bar over the tasks, read from the
/// store, whatever runs them) and commits. Nothing happens when the artifact is published.
#[allow(clippy::too_many_arguments)]
pub fn fan_out(
    site: &Site,
    executor: &dyn Executor,
    pipeline: &str,
    instance: &str,
    spec: &StageSpec,
    given: &PlanInputs,
    hint: &SplitHint,
) -> Result<Option<Committed>> {
    let kind = spec.stage.as_str();
    let (doc, url, done) = match plan(site.reg, site.remote, site.rt, pipeline, instance, spec, given, hint)? {
        PlanState::Committed => return Ok(None),
        PlanState::Plan { doc, url, done, .. } => (doc, url, done),
    };
    let key = doc.key();
    site.events.event(&crate::events::Event::FanOut { instance, tasks: doc.tasks, executor: executor.name(), done, plan: &url });
    let stop = AtomicBool::new(false);
    let ran = std::thread::scope(|s| {
        let _stop = crate::StopOnDrop(&stop);
        if site.rt.progress {
            let (stop, rel, n) = (&stop, doc.rel(), doc.tasks);
            s.spawn(move || {
                let pb = maskflow_core::progress::bar(n as u64, kind, "tasks");
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = count_done(site.remote, &rel) {
                        pb.set_position(n as u64);
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                pb.finish_and_clear();
            });
        }
        executor.run_all(&url, doc.tasks)
    });
    ran.with_context(|| format!("[{instance}] tasks on {}", executor.name()))?;
    Ok(Some(commit(site, kind, &key)?))
}
