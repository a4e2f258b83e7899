//! Running a graph through the store, and explaining its state. Generic over the registry: nothing
//! here names a particular stage kind.

use crate::graph::{Graph, Node};
use crate::events::{Event, Events};
use crate::shared::{self, Shared, Via};
use crate::{DynStage, External, InputArtifact, Registry, RunCtx, Runtime};
use anyhow::{bail, Context, Result};
use maskflow_core::dataset::{self, HashCache};
use maskflow_core::runs::{RunRecord, StageRun};
use maskflow_core::store::{now_unix, Invalid, Outcome, StageSpec, Store};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use maskflow_stage::{DATASET, OVERRIDES};

/// The label-overrides file as an outside input: keyed by its bytes.
pub fn overrides_external(path: &Path) -> Result<External> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the label-overrides file {}", path.display()))?;
    Ok(External { path: path.to_path_buf(), key: maskflow_core::hash::blake3_hex(&bytes), files: None })
}

/// A node with its key computed.
#[derive(Debug, Clone)]
pub struct Planned {
    pub node: Node,
    pub spec: StageSpec,
    pub externals: BTreeMap<String, External>,
}

impl Planned {
    pub fn key(&self) -> String {
        self.spec.key()
    }
}

fn stage<'r>(reg: &'r Registry, node: &Node) -> &'r dyn DynStage {
    reg.get(node.kind).unwrap_or_else(|| unreachable!("graph kinds come from the registry"))
}

fn hash_cache_path(artifacts: &Path) -> PathBuf {
    artifacts.join(".cache").join("file-hashes.json")
}

fn listing_path(artifacts: &Path, fingerprint: &str) -> PathBuf {
    artifacts.join(".cache").join("listings").join(format!("{fingerprint}.json"))
}

/// The dataset folder as an outside input: its content fingerprint (through the stat-keyed hash
/// cache), and its listing kept in the store's cache so that `status` can name what changed later.
pub fn dataset_external(root: &Path, artifacts: &Path, events: &dyn Events) -> Result<External> {
    let listing = dataset::walk(root).with_context(|| format!("dataset {}", root.display()))?;
    let cache_path = hash_cache_path(artifacts);
    let mut cache = HashCache::load(&cache_path);
    let (fp, hashes) = dataset::fingerprint(&listing, &mut cache);
    if let Err(e) = cache.save(&cache_path) {
        events.event(&Event::Warning(format!("cannot save the hash cache {}: {e}", cache_path.display())));
    }
    let files: BTreeMap<String, String> = listing.files.iter().map(|f| f.display()).zip(hashes).collect();
    let lp = listing_path(artifacts, &fp);
    if !lp.exists() {
        let _ = maskflow_core::fsutil::write_json_atomic(&lp, &files);
    }
    Ok(External { path: root.to_path_buf(), key: fp, files: Some(files) })
}

/// Keys for every node of `graph` (or of `only`), upstream first.
pub fn plan(graph: &Graph, reg: &Registry, rt: &Runtime, only: Option<&BTreeSet<String>>, events: &dyn Events) -> Result<Vec<Planned>> {
    let mut planned: Vec<Planned> = Vec::new();
    let mut datasets: BTreeMap<PathBuf, External> = BTreeMap::new();
    for node in &graph.nodes {
        if only.is_some_and(|o| !o.contains(&node.name)) {
            continue;
        }
        let st = stage(reg, node);
        let mut externals = st.externals(&node.params, rt).with_context(|| format!("{}: [{}]", graph.path.display(), node.name))?;
        if let Some(root) = &node.dataset {
            let ext = match datasets.get(root) {
                Some(e) => e.clone(),
                None => {
                    let e = dataset_external(root, &rt.artifacts, events).with_context(|| format!("{}: [{}]", graph.path.display(), node.name))?;
                    datasets.insert(root.clone(), e.clone());
                    e
                }
            };
            externals.insert(DATASET.to_string(), ext);
            // The overrides name files of the pipeline's own folder, not of another (`data = …`).
            if let (true, Some(file)) = (st.reads_overrides() && *root == graph.root, &graph.overrides) {
                let ext = overrides_external(file).with_context(|| format!("{}: [dataset] overrides", graph.path.display()))?;
                externals.insert(OVERRIDES.to_string(), ext);
            }
        }
        let mut upstream: BTreeMap<String, String> = externals.iter().map(|(k, e)| (k.clone(), e.key.clone())).collect();
        for (slot, src) in &node.inputs {
            let Some(p) = planned.iter().find(|p| &p.node.name == src) else {
                bail!("internal: [{}] input {slot} = {src} is not planned before it", node.name);
            };
            upstream.insert(slot.clone(), p.key());
        }
        let spec = StageSpec::new(st.kind(), st.version(), &node.params, upstream)?;
        planned.push(Planned { node: node.clone(), spec, externals });
    }
    Ok(planned)
}

/// Each planned instance's dataset folder on this machine: its own, or the first upstream one's.
pub fn dataset_roots(planned: &[Planned]) -> BTreeMap<String, Option<PathBuf>> {
    let mut roots: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for p in planned {
        let root = p.node.dataset.clone().or_else(|| p.node.inputs.values().find_map(|src| roots.get(src).cloned().flatten()));
        roots.insert(p.node.name.clone(), root);
    }
    roots
}

/// The stage kind of the instance feeding each input slot of `p`.
pub fn input_kinds(planned: &[Planned], p: &Planned) -> BTreeMap<String, String> {
    p.node
        .inputs
        .iter()
        .map(|(slot, src)| {
            let kind = planned.iter().find(|q| &q.node.name == src).map(|q| q.spec.stage.clone()).unwrap_or_default();
            (slot.clone(), kind)
        })
        .collect()
}

/// `--force` / `--until` take an instance name, a kind (every instance of it) or `all`.
fn select(graph: &Graph, name: &str, what: &str) -> Result<BTreeSet<String>> {
    if name == "all" {
        return Ok(graph.nodes.iter().map(|n| n.name.clone()).collect());
    }
    let hit: BTreeSet<String> =
        graph.nodes.iter().filter(|n| n.name == name || n.kind == name).map(|n| n.name.clone()).collect();
    if hit.is_empty() {
        let names: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("{what} {name:?}: not a stage of this pipeline (stages: {})", names.join(", "));
    }
    Ok(hit)
}

/// What `--until NAME` runs: the instances NAME selects and everything they need.
pub fn until_set(graph: &Graph, name: &str) -> Result<BTreeSet<String>> {
    let targets = select(graph, name, "--until")?;
    Ok(targets.iter().flat_map(|t| graph.ancestors(t)).collect())
}

pub struct RunOptions<'a> {
    pub force: Option<&'a str>,
    pub until: Option<&'a str>,
    /// Where the run's events go (a line per stage, waits, warnings).
    pub events: &'a dyn Events,
    /// A shared store that the local one caches (pull what is published, publish what is built).
    pub shared: Option<&'a Shared<'a>>,
    /// Run splittable kinds as plan → tasks → commit on this executor (needs `shared`).
    pub executor: Option<&'a dyn crate::fanout::Executor>,
    /// How to cut the work into tasks (an execution setting, never part of a key).
    pub split_hint: crate::fanout::SplitHint,
    /// How many instances may be built at once (each as soon as its inputs are; 1: one after the
    /// other in graph order). Never part of a key.
    pub jobs: usize,
    /// With `jobs` > 1: the memory one instance may need. A further instance starts only while the
    /// machine has this much available (one always runs). `None`: no check.
    pub job_memory: Option<u64>,
    /// The checkout's commit, for the run record.
    pub git: Option<maskflow_core::runs::GitState>,
    /// With `jobs` > 1, builds each instance in its own process (needed then: see [`Launcher`]).
    pub launcher: Option<&'a dyn Launcher>,
    /// Write a run record (not for a run that builds one instance for another run's launcher).
    pub record: bool,
}

/// Builds one instance of the graph in another process, for instances built at once (`jobs` > 1):
/// a stage may use process-wide state — libtorch's default random generator, its thread count —
/// that two builds in one process would share, and then neither would be repeatable. Its inputs
/// are in the local store when it is called; it returns once the instance's artifact is there.
pub trait Launcher: Sync {
    fn build(&self, instance: &str, force: bool) -> Result<()>;
}

impl<'a> RunOptions<'a> {
    /// Everything, one instance at a time, nothing forced, no shared store.
    pub fn new(events: &'a dyn Events) -> Self {
        RunOptions { force: None, until: None, events, shared: None, executor: None, split_hint: Default::default(), jobs: 1, job_memory: None, git: None, launcher: None, record: true }
    }
}

/// Where a stage kind keeps its resumable work for a key (`<store>/<kind>/.checkpoints/<key>`).
pub fn scratch_dir(artifacts: &Path, kind: &str, key: &str) -> PathBuf {
    artifacts.join(kind).join(".checkpoints").join(key)
}

/// What a run covers: `--until`'s set, else a sweep's instances and what they need, else all.
fn run_set(graph: &Graph, until: Option<&str>) -> Result<Option<BTreeSet<String>>> {
    if let Some(u) = until {
        return until_set(graph, u).map(Some);
    }
    Ok(graph.sweep.as_ref().map(|s| s.points.iter().flat_map(|p| p.instances.values()).flat_map(|i| graph.ancestors(i)).collect()))
}

/// A finished run.
#[derive(Debug)]
pub struct Ran {
    pub record: RunRecord,
    /// Where the record was written (`<artifacts>/runs/<pipeline>/<stamp>.json`; its stem is the
    /// run's id in `maskflow runs`); `None` when asked for none.
    pub record_path: Option<PathBuf>,
    /// Each instance's artifact, in graph order.
    pub outcomes: Vec<Outcome>,
}

/// Runs the graph (or what `--until` needs), reusing verified artifacts; writes a run record.
pub fn run(graph: &Graph, reg: &Registry, rt: &Runtime, opts: &RunOptions) -> Result<Ran> {
    let started = Instant::now();
    let started_unix = now_unix();
    let forced = opts.force.map(|f| select(graph, f, "--force")).transpose()?.unwrap_or_default();
    let only = run_set(graph, opts.until)?;
    let planned = plan(graph, reg, rt, only.as_ref(), opts.events)?;
    let store = Store::new(&rt.artifacts);
    let roots = dataset_roots(&planned);
    if opts.jobs > 1 && opts.launcher.is_none() {
        bail!("internal: {} instances at once need a launcher (each builds in its own process)", opts.jobs);
    }
    let site = Site { graph, reg, rt, opts, store: &store, planned: &planned, roots: &roots };
    let build_one = |i: usize, done: &[Option<Outcome>]| -> Result<(Outcome, Via)> {
        let p = &planned[i];
        let inputs: BTreeMap<String, InputArtifact> = p
            .node
            .inputs
            .iter()
            .map(|(slot, src)| {
                let o = planned.iter().position(|q| &q.node.name == src).and_then(|j| done[j].as_ref());
                let o = o.unwrap_or_else(|| unreachable!("[{}] runs after its input {src}", p.node.name));
                (slot.clone(), InputArtifact { dir: o.dir.clone(), key: o.key.clone() })
            })
            .collect();
        let force = forced.contains(&p.node.name);
        match opts.launcher.filter(|_| opts.jobs > 1) {
            Some(l) => launched(l, p, &inputs, force, &site),
            None => obtain_one(p, &inputs, force, &site, true),
        }
    };
    let mut done: Vec<Option<Outcome>> = vec![None; planned.len()];
    let mut vias: Vec<Via> = (0..planned.len()).map(|_| Via::default()).collect();
    if opts.jobs <= 1 {
        for i in 0..planned.len() {
            let (o, via) = build_one(i, &done)?;
            done[i] = Some(o);
            vias[i] = via;
        }
    } else {
        let room = || match opts.job_memory {
            Some(need) => maskflow_core::device::available_memory().is_none_or(|free| free >= need),
            None => true,
        };
        in_parallel(&planned, opts.jobs, &room, &mut done, &mut vias, &build_one)?;
    }
    let outcomes: Vec<Outcome> = done.into_iter().map(|o| o.unwrap_or_else(|| unreachable!("every planned instance ran"))).collect();
    let runs: Vec<StageRun> = planned
        .iter()
        .zip(&outcomes)
        .zip(&vias)
        .map(|((p, outcome), via)| StageRun {
            stage: p.node.name.clone(),
            kind: p.spec.stage.clone(),
            key: outcome.key.clone(),
            dir: outcome.dir.clone(),
            cached: outcome.cached,
            pulled: via.pulled.is_some(),
            rebuilt_because: outcome.rebuilt_because.clone(),
            duration_s: outcome.duration_s,
            version: Some(p.spec.version),
            params: Some(p.spec.params.clone()),
            upstream: Some(p.spec.upstream.clone()),
        })
        .collect();
    let dataset_fingerprint = planned
        .iter()
        .find_map(|p| p.externals.get(DATASET).filter(|e| e.path == graph.root).map(|e| e.key.clone()))
        .unwrap_or_default();
    let record = RunRecord {
        pipeline: graph.name.clone(),
        pipeline_file: graph.path.clone(),
        tool_version: maskflow_core::record::writer(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        dataset_fingerprint,
        stages: runs,
        git: opts.git.clone(),
        overrides: Some(graph.variation.overrides.iter().map(|o| o.arg.clone()).collect()),
        sweep: graph.sweep.clone(),
    };
    if !opts.record {
        return Ok(Ran { record, record_path: None, outcomes });
    }
    let path = record.write(&rt.artifacts)?;
    if let Some(sh) = opts.shared.filter(|sh| !sh.read_only) {
        let name = format!(
            "{}-{}",
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            maskflow_core::fsutil::unique_suffix()
        );
        if let Err(e) = sh.remote.put_run_record(&record.pipeline, &name, record.to_bytes()) {
            opts.events.event(&Event::Warning(format!("the run record was not stored in {}: {e}", sh.remote.url())));
        }
    }
    let cached = record.stages.iter().filter(|s| s.cached).count();
    opts.events.event(&Event::RunDone { stages: record.stages.len(), cached, seconds: record.duration_s, record: &path });
    Ok(Ran { record, record_path: Some(path), outcomes })
}

/// Builds up to `jobs` instances at a time, each once its inputs are done, a second and later one
/// only while `room()` says memory allows. On a failure, starts nothing more, waits for what is
/// running and returns the first error.
fn in_parallel<F>(planned: &[Planned], jobs: usize, room: &dyn Fn() -> bool, done: &mut [Option<Outcome>], vias: &mut [Via], build_one: &F) -> Result<()>
where
    F: Fn(usize, &[Option<Outcome>]) -> Result<(Outcome, Via)> + Sync,
{
    let index: BTreeMap<&str, usize> = planned.iter().enumerate().map(|(i, p)| (p.node.name.as_str(), i)).collect();
    let needs: Vec<Vec<usize>> = planned.iter().map(|p| p.node.inputs.values().filter_map(|s| index.get(s.as_str()).copied()).collect()).collect();
    let mut started = vec![false; planned.len()];
    let mut running = 0usize;
    let mut first_err: Option<anyhow::Error> = None;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<(Outcome, Via)>)>();
    std::thread::scope(|scope| {
        loop {
            if first_err.is_none() {
                for i in 0..planned.len() {
                    if running >= jobs {
                        break;
                    }
                    if !started[i] && needs[i].iter().all(|&j| done[j].is_some()) {
                        if running > 0 && !room() {
                            break;
                        }
                        started[i] = true;
                        running += 1;
                        let snapshot: Vec<Option<Outcome>> = done.to_vec();
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build_one(i, &snapshot)))
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("[{}] panicked", planned[i].node.name)));
                            let _ = tx.send((i, r));
                        });
                    }
                }
            }
            if running == 0 {
                break;
            }
            let Ok((i, r)) = rx.recv() else { break };
            running -= 1;
            match r {
                Ok((o, via)) => {
                    done[i] = Some(o);
                    vias[i] = via;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    });
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What building one instance needs besides its inputs.
struct Site<'a> {
    graph: &'a Graph,
    reg: &'a Registry,
    rt: &'a Runtime,
    opts: &'a RunOptions<'a>,
    store: &'a Store,
    planned: &'a [Planned],
    roots: &'a BTreeMap<String, Option<PathBuf>>,
}

/// One instance through the launcher: in the store already (and not forced), it is used as it is;
/// else another process builds it (and says so), and it is taken from the store as built now.
fn launched(l: &dyn Launcher, p: &Planned, inputs: &BTreeMap<String, InputArtifact>, force: bool, site: &Site) -> Result<(Outcome, Via)> {
    if !force {
        match (site.store.lookup(&p.spec.stage, &p.key())?, site.opts.shared) {
            // Verified just now: not hashed a second time.
            (Some(outcome), None) => {
                let via = Via::default();
                announce(site, p, &outcome, &via);
                return Ok((outcome, via));
            }
            // Through the shared store (which may want it published).
            (Some(_), Some(_)) => return obtain_one(p, inputs, false, site, true),
            (None, _) => {}
        }
    }
    l.build(&p.node.name, force).with_context(|| format!("[{}]", p.node.name))?;
    let (mut outcome, via) = obtain_one(p, inputs, false, site, false)?;
    outcome.cached = false;
    outcome.duration_s = outcome.manifest.duration_s;
    Ok((outcome, via))
}

/// Obtains one planned instance's artifact: cached, pulled, fanned out or built here; `tell`: say so
/// to the events.
fn obtain_one(p: &Planned, inputs: &BTreeMap<String, InputArtifact>, force: bool, site: &Site, tell: bool) -> Result<(Outcome, Via)> {
    let Site { graph, reg, rt, opts, store, planned, roots } = *site;
    let st = stage(reg, &p.node);
    let key = p.key();
    let scratch = scratch_dir(&rt.artifacts, st.kind(), &key);
    let notes = crate::events::InstanceNotes { events: opts.events, instance: &p.node.name };
    let build = |tmp: &Path| {
        let ctx = RunCtx {
            instance: &p.node.name,
            key: &key,
            inputs,
            externals: &p.externals,
            runtime: rt,
            dataset_root: roots.get(p.node.name.as_str()).and_then(|r| r.as_deref()),
            scratch: &scratch,
            out: tmp,
            notes: &notes,
        };
        maskflow_remote::failpoint("stage-run");
        st.run(&p.node.params, &ctx)
    };
    if let (Some(ex), Some(sh), Some(_)) = (opts.executor, opts.shared, reg.split(st.kind())) {
        if sh.read_only {
            bail!("--executor {} needs a shared store it may write to (not --read-only)", ex.name());
        }
        // Fanned out unless built here already (`obtain` below verifies it; a corrupt one is
        // rebuilt here, as is everything under `--force`).
        if !force && store.read_manifest(st.kind(), &key).is_none() {
            let given = crate::fanout::PlanInputs {
                inputs,
                input_kinds: input_kinds(planned, p),
                externals: &p.externals,
                dataset_root: roots.get(p.node.name.as_str()).and_then(|r| r.as_deref()),
            };
            let site = crate::fanout::Site { reg, remote: sh.remote, store, rt, dataset_root: None, events: opts.events };
            match crate::fanout::fan_out(&site, ex, &graph.name, &p.node.name, &p.spec, &given, &opts.split_hint) {
                Ok(_) => {}
                // A plan or artifact a newer maskflow made: not joined; built here below
                // (`obtain` publishes nothing over a newer manifest, and only create-only).
                Err(e) if sh.on_newer == shared::OnNewer::BuildLocally && crate::fanout::is_newer_record(&e) => {
                    opts.events.event(&Event::Warning(format!("[{}]: {e:#}: built here instead of fanned out", p.node.name)));
                }
                Err(e) => return Err(e.context(format!("[{}]", p.node.name))),
            }
        }
    }
    let obtained = match opts.shared {
        None => store.ensure(&p.spec, force, build).map(|o| (o, Via::default())).map_err(anyhow::Error::from),
        Some(sh) => shared::obtain(store, sh, &p.spec, force, &scratch, build),
    };
    let (outcome, via) = obtained.with_context(|| format!("[{}]", p.node.name))?;
    if scratch.exists() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if tell {
        announce(site, p, &outcome, &via);
    }
    Ok((outcome, via))
}

/// Tells the events an instance's artifact was obtained.
fn announce(site: &Site, p: &Planned, outcome: &Outcome, via: &Via) {
    let summary = summary_of(stage(site.reg, &p.node), &outcome.manifest.report);
    site.opts.events.event(&Event::Stage { name: &p.node.name, outcome, via, summary });
}

pub fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// The one-line summary of a stored report.
pub fn summary_of(st: &dyn DynStage, report: &Value) -> String {
    st.summary(report).unwrap_or_else(|| "(its report is of an older format; --force rebuilds it)".into())
}

/// A node's state in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Cached,
    /// Not built; the last run of this instance had another key, for these reasons.
    Stale { last_key: String, reasons: Vec<String> },
    Missing,
    Corrupt(String),
}

impl State {
    pub fn word(&self) -> &'static str {
        match self {
            State::Cached => "cached",
            State::Stale { .. } => "stale",
            State::Missing => "missing",
            State::Corrupt(_) => "corrupt",
        }
    }
}

/// Every node's key and state (runs nothing).
pub fn states(graph: &Graph, reg: &Registry, rt: &Runtime, events: &dyn Events) -> Result<Vec<(Planned, State)>> {
    let planned = plan(graph, reg, rt, None, events)?;
    let store = Store::new(&rt.artifacts);
    let records = recent_records(&rt.artifacts, &graph.name);
    let mut out = Vec::new();
    for p in planned {
        let key = p.key();
        let state = match store.verify(&p.spec.stage, &key) {
            Ok(_) => State::Cached,
            Err(Invalid::Missing) => {
                // The last build of this instance: in the newest run record that ran it (an
                // `--until` run leaves the others out).
                let previous = records
                    .iter()
                    .find_map(|r| r.stages.iter().find(|s| s.stage == p.node.name))
                    .and_then(|s| store.read_manifest(&p.spec.stage, &s.key));
                match previous {
                    Some(m) => State::Stale {
                        last_key: m.key.clone(),
                        reasons: explain_change(&p, &m.params, &m.upstream, m.stage_version, &rt.artifacts),
                    },
                    None => State::Missing,
                }
            }
            Err(why) => State::Corrupt(why.to_string()),
        };
        out.push((p, state));
    }
    Ok(out)
}

/// The pipeline's run records, newest first (at most the last 100).
fn recent_records(artifacts: &Path, pipeline: &str) -> Vec<RunRecord> {
    let dir = artifacts.join("runs").join(pipeline);
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name() != "latest.json" && e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    files.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    files
        .into_iter()
        .take(100)
        .filter_map(|(_, p)| RunRecord::decode(&std::fs::read(p).ok()?).ok())
        .collect()
}

/// `maskflow status`: per node, cached / stale (what changed) / corrupt / missing.
pub fn status_lines(graph: &Graph, reg: &Registry, rt: &Runtime, remote: Option<&maskflow_remote::Remote>, events: &dyn Events) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (p, state) in states(graph, reg, rt, events)? {
        let key = p.key();
        let line = match &state {
            State::Cached => format!("cached   key {}", short(&key)),
            State::Stale { last_key, reasons } => {
                format!("stale    key {} (last run {}): {}", short(&key), short(last_key), reasons.join("; "))
            }
            State::Missing => format!("missing  key {}", short(&key)),
            State::Corrupt(why) => format!("corrupt  key {}: {why} (will be rebuilt)", short(&key)),
        };
        let line = match remote {
            Some(r) => format!("{line}  [{}]", shared::remote_state(r, &p.spec.stage, &key)),
            None => line,
        };
        lines.push(format!("{:<7} {line}", p.node.name));
    }
    Ok(lines)
}

/// One way two keys of an instance differ.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange {
    Version { old: u32, new: u32 },
    /// A param leaf (`train.augment.flip`); `None`: absent on that side.
    Param { name: String, old: Option<String>, new: Option<String> },
    /// An input slot or outside input whose key differs; `None`: absent on that side.
    Input { name: String, old: Option<String>, new: Option<String> },
}

/// What a key is made of: version, params, inputs' keys.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub version: u32,
    pub params: &'a Value,
    pub upstream: &'a BTreeMap<String, String>,
}

/// Every difference between two keys' parts; params named `prefix.leaf`.
pub fn key_changes(prefix: &str, old: KeyParts, new: KeyParts) -> Vec<KeyChange> {
    let mut out = Vec::new();
    if old.version != new.version {
        out.push(KeyChange::Version { old: old.version, new: new.version });
    }
    let (mut old_leaves, mut new_leaves) = (BTreeMap::new(), BTreeMap::new());
    flatten(prefix, old.params, &mut old_leaves);
    flatten(prefix, new.params, &mut new_leaves);
    for name in old_leaves.keys().chain(new_leaves.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old_leaves.get(name), new_leaves.get(name));
        if o != n {
            out.push(KeyChange::Param { name: name.clone(), old: o.cloned(), new: n.cloned() });
        }
    }
    for name in old.upstream.keys().chain(new.upstream.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.upstream.get(name), new.upstream.get(name));
        if o != n {
            out.push(KeyChange::Input { name: name.clone(), old: o.cloned(), new: n.cloned() });
        }
    }
    out
}

/// Why `p` differs from a previous build: version, each changed param leaf, changed inputs (for a
/// dataset: files added / removed / modified).
fn explain_change(
    p: &Planned,
    old_params: &Value,
    old_upstream: &BTreeMap<String, String>,
    old_version: u32,
    artifacts: &Path,
) -> Vec<String> {
    let old = KeyParts { version: old_version, params: old_params, upstream: old_upstream };
    let new = KeyParts { version: p.spec.version, params: &p.spec.params, upstream: &p.spec.upstream };
    let mut out: Vec<String> = key_changes(&p.node.name, old, new)
        .into_iter()
        .filter_map(|c| match c {
            KeyChange::Version { old, new } => Some(format!("stage version {old} → {new}")),
            KeyChange::Param { name, old: Some(o), new: Some(n) } => Some(format!("{name} {o} → {n}")),
            KeyChange::Param { name, old: None, new: Some(n) } => Some(format!("{name} new ({n})")),
            KeyChange::Param { old: Some(_), new: None, .. } => None,
            KeyChange::Input { name, old: Some(o), new: Some(_) } => Some(match p.externals.get(&name) {
                Some(ext) if ext.files.is_some() => listing_change(artifacts, &name, &o, ext),
                Some(_) => format!("{name} changed"),
                None => format!("upstream {name} changed"),
            }),
            KeyChange::Input { name, old: None, new: Some(_) } => Some(format!("new upstream {name}")),
            KeyChange::Input { old: Some(_), new: None, .. } => None,
            KeyChange::Param { old: None, new: None, .. } | KeyChange::Input { old: None, new: None, .. } => None,
        })
        .collect();
    if out.is_empty() {
        out.push("inputs differ".into());
    }
    out
}

fn listing_change(artifacts: &Path, name: &str, old_fp: &str, ext: &External) -> String {
    let fallback = format!("{name} changed (fingerprint {} → {})", short(old_fp), short(&ext.key));
    let (Some(new), Some(old)) = (
        ext.files.as_ref(),
        std::fs::read(listing_path(artifacts, old_fp))
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok()),
    ) else {
        return fallback;
    };
    let added = new.keys().filter(|k| !old.contains_key(*k)).count();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    let modified = new.iter().filter(|(k, h)| old.get(*k).is_some_and(|o| o != *h)).count();
    format!("{name} changed: {added} added, {removed} removed, {modified} modified")
}

/// A JSON value's leaves as `prefix.a.b` → JSON text.
pub fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `maskflow graph`: the nodes with kind, key, state and inputs (text), or Graphviz DOT.
pub fn describe(graph: &Graph, reg: &Registry, rt: &Runtime, dot: bool, events: &dyn Events) -> Result<String> {
    let states = states(graph, reg, rt, events)?;
    let mut s = String::new();
    if dot {
        s.push_str(&format!("digraph {:?} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n", graph.name));
        for (p, st) in &states {
            let colour = match st {
                State::Cached => "palegreen",
                State::Stale { .. } => "khaki",
                State::Missing => "white",
                State::Corrupt(_) => "salmon",
            };
            s.push_str(&format!(
                "  {:?} [label=\"{}\\n{} · {}\\n{}\", style=filled, fillcolor={colour}];\n",
                p.node.name,
                p.node.name,
                p.node.kind,
                short(&p.key()),
                st.word()
            ));
            for (slot, src) in &p.node.inputs {
                s.push_str(&format!("  {src:?} -> {:?} [label={slot:?}];\n", p.node.name));
            }
        }
        s.push_str("}\n");
        return Ok(s);
    }
    s.push_str(&format!("pipeline {} ({}): {} stages\n", graph.name, graph.path.display(), states.len()));
    for (p, st) in &states {
        let inputs: Vec<String> = p.node.inputs.iter().map(|(slot, src)| format!("{slot} ← {src}")).collect();
        let data = p.externals.get(DATASET).map(|e| format!("dataset {}", e.path.display()));
        let from: Vec<String> = data.into_iter().chain(inputs).collect();
        s.push_str(&format!(
            "{:<14} {:<7} key {}  {:<8} {}{}\n",
            p.node.name,
            p.node.kind,
            short(&p.key()),
            st.word(),
            if from.is_empty() { String::new() } else { format!("from {}", from.join(", ")) },
            if p.node.declared { "" } else { "  (implied)" }
        ));
    }
    Ok(s)
}
