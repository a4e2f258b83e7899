//! `maskflow plan | task | commit` and `run --executor`: splittable stages (index, prep) fanned out
//! as tasks through the shared store (`maskflow_pipeline::fanout`). The Ray executor is a thin
//! Python driver carried inside this binary (`scripts/ray_executor.py`): it submits one subprocess
//! task (`maskflow task --plan URL --index I`) per index, with retries; pixels never pass through
//! Ray's object store.

use crate::session::{self, Compute, Printer, StoreOptions};
use anyhow::{bail, Context, Result};
use maskflow_core::store::Store;
use maskflow_pipeline::fanout::{self, Executor, PlanInputs, PlanState, Site, SplitHint, TaskOutcome};
use maskflow_pipeline::{runner as prunner, InputArtifact};
use maskflow_remote::Remote;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Ray driver, written to a temporary file when used.
const RAY_DRIVER: &str = include_str!("../scripts/ray_executor.py");

/// `run --executor …` and what it needs.
#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Run the splittable stages (index, prep) as plan → tasks → commit through the shared store
    /// (--store), their tasks on this executor: `local` (this machine's thread pool) or `ray` (a Ray
    /// cluster: --ray-address). Other stages run here as usual. The artifacts are byte-identical to
    /// a run without an executor.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// About how many items (files for index, images for prep: a shard is one task whatever this
    /// says) one task takes. An execution setting: never part of a key.
    #[arg(long, value_name = "N")]
    pub task_items: Option<usize>,
    /// The Ray cluster (`ray start --head` prints it; default: $RAY_ADDRESS, else a local Ray).
    #[arg(long, env = "RAY_ADDRESS", value_name = "HOST:PORT")]
    pub ray_address: Option<String>,
    /// The Python that has `ray` (default: the project's .venv/bin/python if present, else python3).
    #[arg(long, value_name = "PATH")]
    pub ray_python: Option<PathBuf>,
    /// Retries of a Ray task that failed or whose node died.
    #[arg(long, default_value_t = 3)]
    pub ray_retries: u32,
    /// CPUs each Ray task asks for (its `maskflow task` gets as many threads).
    #[arg(long, default_value_t = 1)]
    pub ray_cpus: u32,
    /// The local store of `maskflow task` on the Ray nodes (a path valid there; default: --artifacts).
    #[arg(long, value_name = "DIR")]
    pub task_artifacts: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum ExecutorKind {
    Local,
    Ray,
}

impl FanoutArgs {
    pub fn hint(&self) -> SplitHint {
        SplitHint { items_per_task: self.task_items }
    }
}

/// The Ray executor: the driver script submits `maskflow task` per index.
pub struct RayExecutor {
    pub python: PathBuf,
    pub address: Option<String>,
    pub retries: u32,
    pub cpus: u32,
    pub task_artifacts: PathBuf,
}

impl RayExecutor {
    pub fn new(a: &FanoutArgs, artifacts: &Path) -> Result<Self> {
        let python = match &a.ray_python {
            Some(p) => p.clone(),
            None if Path::new(".venv/bin/python").exists() => PathBuf::from(".venv/bin/python"),
            None => PathBuf::from("python3"),
        };
        let task_artifacts = a.task_artifacts.clone().unwrap_or_else(|| artifacts.to_path_buf());
        let task_artifacts = std::path::absolute(&task_artifacts).unwrap_or(task_artifacts);
        Ok(Self { python, address: a.ray_address.clone(), retries: a.ray_retries, cpus: a.ray_cpus.max(1), task_artifacts })
    }
}

impl Executor for RayExecutor {
    fn name(&self) -> &str {
        "ray"
    }
    fn run_all(&self, plan_url: &str, tasks: usize) -> Result<()> {
        let exe = std::env::current_exe().context("locating this maskflow binary")?;
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("ray_executor.py");
        std::fs::write(&script, RAY_DRIVER)?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&script)
            .args(["--plan", plan_url, "--tasks", &tasks.to_string(), "--retries", &self.retries.to_string()])
            .args(["--cpus-per-task", &self.cpus.to_string()])
            .arg("--maskflow")
            .arg(&exe)
            .arg("--task-arg=--artifacts")
            .arg(format!("--task-arg={}", self.task_artifacts.display()));
        if let Some(a) = &self.address {
            cmd.args(["--address", a]);
        }
        let status = cmd.status().with_context(|| format!("starting the Ray driver with {}", self.python.display()))?;
        if !status.success() {
            bail!("the Ray driver failed ({status}); its output is above");
        }
        Ok(())
    }
}

/// Opens the store and the local site pieces for `task` / `commit` from a plan URL.
fn open_plan(url: &str) -> Result<(Remote, String, String)> {
    let (store_url, kind, key) = fanout::parse_plan_url(url)?;
    let remote = Remote::open(&store_url)?;
    Ok((remote, kind, key))
}

/// `maskflow run` with an executor: checks, then the generic runner with it.
pub fn executor_for<'a>(
    kind: ExecutorKind,
    a: &FanoutArgs,
    artifacts: &Path,
    site: Site<'a>,
) -> Result<Box<dyn Executor + 'a>> {
    Ok(match kind {
        ExecutorKind::Local => Box::new(fanout::LocalExecutor { site }),
        ExecutorKind::Ray => Box::new(RayExecutor::new(a, artifacts)?),
    })
}

/// `maskflow plan PIPELINE --stage NAME --store URL`.
pub fn plan(pipeline: &Path, instance: &str, artifacts: &Path, store: &StoreOptions, hint: &SplitHint, c: &Compute, json: bool) -> Result<()> {
    let (reg, g) = session::load(pipeline)?;
    session::ensure_synth(&g)?;
    let Some(node) = g.node(instance) else {
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("--stage {instance:?}: not a stage of {} (stages: {})", pipeline.display(), names.join(", "));
    };
    if reg.split(node.kind).is_none() {
        bail!("[{instance}] is a {} stage, which does not split into tasks (kinds that do: {})", node.kind, reg.split_names().join(", "));
    }
    let remote = store.require("plan", true)?;
    let rt = c.runtime(artifacts);
    let only = prunner::until_set(&g, instance)?;
    let planned = prunner::plan(&g, &reg, &rt, Some(&only), &Printer)?;
    let local = Store::new(artifacts);
    let roots = prunner::dataset_roots(&planned);
    let Some(me) = planned.iter().find(|p| p.node.name == instance) else { bail!("internal: [{instance}] not planned") };
    let mut inputs = BTreeMap::new();
    for (slot, src) in &me.node.inputs {
        let Some(up) = planned.iter().find(|p| &p.node.name == src) else { bail!("internal: input {src} not planned") };
        let (kind, key) = (up.spec.stage.as_str(), up.key());
        let dir = fanout::pull_input(&local, &remote, kind, &key).with_context(|| {
            format!("[{instance}] needs [{src}] (key {}) published in {}: plan, run and commit it first, or `maskflow run --until {src} --store …`", &key[..12], remote.url())
        })?;
        inputs.insert(slot.clone(), InputArtifact { dir, key });
    }
    let given = PlanInputs {
        inputs: &inputs,
        input_kinds: prunner::input_kinds(&planned, me),
        externals: &me.externals,
        dataset_root: roots.get(instance).and_then(|r| r.as_deref()),
    };
    let state = fanout::plan(&reg, &remote, &rt, &g.name, instance, &me.spec, &given, hint)?;
    match state {
        PlanState::Committed => {
            if json {
                println!("{}", serde_json::json!({ "instance": instance, "key": me.key(), "committed": true }));
            } else {
                println!("{instance:<7} key {}  already in {}: nothing to do", &me.key()[..12], remote.url());
            }
        }
        PlanState::Plan { doc, url, created, done } => {
            if json {
                println!("{}", serde_json::json!({ "instance": instance, "key": doc.key(), "plan": url, "tasks": doc.tasks, "done": done, "created": created }));
            } else {
                let how = if created { "planned" } else { "plan exists" };
                println!("{instance:<7} {how}: {} task(s), {done} done\n        {url}", doc.tasks);
                println!("        run: maskflow task --plan {url} --index I   (I = 0..{}; or $SLURM_ARRAY_TASK_ID / $JOB_COMPLETION_INDEX)", doc.tasks.saturating_sub(1));
                println!("        then: maskflow commit --plan {url}");
            }
        }
    }
    Ok(())
}

/// The task index: --index, else a Slurm array's or a Kubernetes Indexed Job's variable.
fn task_index(index: Option<usize>) -> Result<usize> {
    if let Some(i) = index {
        return Ok(i);
    }
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v.trim().parse().with_context(|| format!("${var} = {v:?}: not a task index"));
        }
    }
    bail!("no task index: pass --index I (or run as a Slurm array / Kubernetes Indexed Job, which set $SLURM_ARRAY_TASK_ID / $JOB_COMPLETION_INDEX)")
}

/// `maskflow task --plan URL --index I`.
pub fn task(url: &str, index: Option<usize>, artifacts: &Path, dataset_root: Option<&Path>, c: &Compute, quiet: bool) -> Result<()> {
    let i = task_index(index)?;
    let (remote, kind, key) = open_plan(url)?;
    let reg = session::registry();
    let local = Store::new(artifacts);
    let mut rt = c.runtime(artifacts);
    rt.progress = !quiet;
    let site = Site { reg: &reg, remote: &remote, store: &local, rt: &rt, dataset_root, events: &Printer };
    match fanout::run_task(&site, &kind, &key, i)? {
        TaskOutcome::Ran { seconds } => println!("{kind} task {i} of {}: done in {seconds:.2}s", &key[..12]),
        TaskOutcome::AlreadyDone => println!("{kind} task {i} of {}: already done (nothing to do)", &key[..12]),
        TaskOutcome::Committed => println!("{kind} task {i} of {}: the artifact is committed (nothing to do)", &key[..12]),
    }
    Ok(())
}

/// `maskflow commit --plan URL`.
pub fn commit(url: &str, artifacts: &Path, dataset_root: Option<&Path>, c: &Compute) -> Result<()> {
    let (remote, kind, key) = open_plan(url)?;
    remote.check_conditional_writes()?;
    let reg = session::registry();
    let local = Store::new(artifacts);
    let rt = c.runtime(artifacts);
    let site = Site { reg: &reg, remote: &remote, store: &local, rt: &rt, dataset_root, events: &Printer };
    let done = fanout::commit(&site, &kind, &key)?;
    let summary = reg.get(&kind).map(|st| prunner::summary_of(st, &done.manifest.report)).unwrap_or_default();
    let files = done.manifest.files.len();
    if done.created {
        println!("{kind:<7} committed key {} ({files} files) to {}\n        {summary}", &key[..12], remote.url());
    } else {
        println!("{kind:<7} key {} was committed already\n        {summary}", &key[..12]);
    }
    Ok(())
}
