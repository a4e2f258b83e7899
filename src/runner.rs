//! The binary's pipeline commands that are not generic (`run`, `review`, `push`/`pull`, `gc`,
//! `status`, `graph`, `eval --data`, `lr-find`, `stage`, `stages`). Everything about graphs, keys,
//! the store and status is `maskflow-pipeline`'s; what the commands share is in `session`.

use crate::session::{ensure_synth, load, load_with, registry, Compute, Printer, StoreOptions};
use anyhow::{bail, Context, Result};
use maskflow_pipeline::graph::Graph;
use maskflow_pipeline::runner::{self, RunOptions};
use maskflow_pipeline::shared;
use maskflow_pipeline::variation::Variation;
use maskflow_pipeline::{params_from_file, InputArtifact, Placement, RunCtx};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `maskflow run` was asked.
pub struct RunCmd<'a> {
    pub pipeline: &'a Path,
    pub artifacts: &'a Path,
    pub force: Option<&'a str>,
    pub until: Option<&'a str>,
    pub variation: &'a Variation,
    pub jobs: usize,
    /// Bytes one instance may need (`--job-memory`), for starting parallel ones.
    pub job_memory: Option<u64>,
    /// Builds an instance in a child process (with `jobs` > 1).
    pub launcher: &'a ChildLauncher,
}

/// `run --jobs N`'s builds: `maskflow build-instance` in a child process per instance, with this
/// run's pipeline, overrides, sweep, store and compute options.
pub struct ChildLauncher {
    exe: std::io::Result<PathBuf>,
    args: Vec<std::ffi::OsString>,
}

impl ChildLauncher {
    pub fn new(pipeline: &Path, artifacts: &Path, vary: &crate::VaryArgs, compute: &crate::ComputeArgs, store: &crate::StoreArgs) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["build-instance".into(), pipeline.into(), "--artifacts".into(), artifacts.into()];
        args.extend(vary.to_args().into_iter().chain(compute.to_args()).chain(store.to_args()).map(Into::into));
        ChildLauncher { exe: std::env::current_exe(), args }
    }
}

impl runner::Launcher for ChildLauncher {
    fn build(&self, instance: &str, force: bool) -> Result<()> {
        let exe = self.exe.as_ref().map_err(|e| anyhow::anyhow!("cannot find this maskflow binary to start a build: {e}"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&self.args).args(["--instance", instance]);
        if force {
            cmd.arg("--force");
        }
        let status = cmd.status().with_context(|| format!("starting {}", exe.display()))?;
        anyhow::ensure!(status.success(), "its build process failed ({status}; its error is above)");
        Ok(())
    }
}

/// `maskflow build-instance`: one instance (its inputs cached) for a parent `run --jobs N`.
pub fn build_instance(pipeline: &Path, instance: &str, force: bool, artifacts: &Path, variation: &Variation, c: &Compute, store: &StoreOptions) -> Result<()> {
    let (reg, g) = load_with(pipeline, variation)?;
    let remote = store.open(true)?;
    let shared = remote.as_ref().map(|remote| store.shared(remote));
    let mut rt = c.runtime(artifacts);
    rt.progress = false;
    let only = crate::session::OnlyInstance { name: instance };
    let opts = RunOptions { until: Some(instance), force: force.then_some(instance), shared: shared.as_ref(), record: false, ..RunOptions::new(&only) };
    runner::run(&g, &reg, &rt, &opts)?;
    Ok(())
}

/// `maskflow run`.
pub fn run(
    cmd: &RunCmd,
    c: &Compute,
    store: &StoreOptions,
    fan: &crate::fanout_cmd::FanoutArgs,
    ranks: Option<(maskflow_train::ranks::SharedGroup, usize)>,
) -> Result<()> {
    let (reg, mut g) = load_with(cmd.pipeline, cmd.variation)?;
    ensure_synth(&g)?;
    let remote = store.open(true)?;
    let shared = remote.as_ref().map(|remote| store.shared(remote));
    let artifacts = cmd.artifacts;
    let mut rt = c.runtime(artifacts);
    // Several instances at once: their progress bars would overwrite each other; their notes
    // (epochs, resumes) and results still print.
    rt.progress = cmd.jobs <= 1;
    if let Some((group, world)) = ranks {
        // The world size is part of each train instance's key, as if written in the file.
        for node in g.nodes.iter_mut().filter(|n| n.kind == <maskflow_train::TrainStage as maskflow_stage::Stage>::KIND) {
            node.params["world_size"] = serde_json::json!(world);
        }
        rt.ranks = Some(group as std::sync::Arc<dyn std::any::Any + Send + Sync>);
    }
    let local = maskflow_core::store::Store::new(artifacts);
    let executor = match (fan.executor, &remote) {
        (None, _) => None,
        (Some(kind), Some(remote)) => {
            let site = maskflow_pipeline::fanout::Site { reg: &reg, remote, store: &local, rt: &rt, dataset_root: None, events: &Printer };
            Some(crate::fanout_cmd::executor_for(kind, fan, artifacts, site)?)
        }
        (Some(_), None) => bail!("--executor runs tasks through a shared store: add --store s3://bucket/prefix or file:///path"),
    };
    let opts = RunOptions {
        force: cmd.force,
        until: cmd.until,
        shared: shared.as_ref(),
        executor: executor.as_deref(),
        split_hint: fan.hint(),
        jobs: cmd.jobs,
        job_memory: cmd.job_memory,
        launcher: Some(cmd.launcher),
        git: crate::runs_cmd::git_state(cmd.pipeline),
        ..RunOptions::new(&Printer)
    };
    let ran = runner::run(&g, &reg, &rt, &opts)?;
    if ran.record.sweep.is_some() {
        crate::runs_cmd::sweep_table(artifacts, &reg, &ran)?;
    }
    Ok(())
}

/// `maskflow review`: the pipeline's `[review]` (with default params when it declares none), and what
/// it needs, run like any stage; then where the results are and the first suspects.
pub fn review(pipeline: &Path, artifacts: &Path, c: &Compute, store: &StoreOptions) -> Result<()> {
    let (reg, mut g) = load(pipeline)?;
    if g.node("review").is_none() {
        let text = std::fs::read_to_string(pipeline).with_context(|| pipeline.display().to_string())?;
        g = Graph::parse_with(pipeline, &format!("{text}\n[review]\n"), &reg, &g.variation)?;
    }
    ensure_synth(&g)?;
    let remote = store.open(true)?;
    let shared = remote.as_ref().map(|remote| store.shared(remote));
    let rt = c.runtime(artifacts);
    runner::run(&g, &reg, &rt, &RunOptions { until: Some("review"), shared: shared.as_ref(), ..RunOptions::new(&Printer) })?;
    let only = runner::until_set(&g, "review")?;
    let planned = runner::plan(&g, &reg, &rt, Some(&only), &Printer)?;
    let Some(review) = planned.iter().find(|p| p.node.name == "review") else { bail!("internal: review was not planned") };
    let dir = maskflow_core::store::Store::new(artifacts).artifact_dir("review", &review.key());
    let csv = std::fs::read_to_string(dir.join(maskflow_review::CSV_FILE)).with_context(|| dir.display().to_string())?;
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    println!();
    for l in lines.iter().take(12) {
        println!("  {l}");
    }
    if lines.len() > 12 {
        println!("  … {} more in {}", lines.len() - 12, maskflow_review::CSV_FILE);
    }
    println!("\nlook: {}\ndecide: copy {} beside the pipeline, uncomment what you agree with, and name it in [dataset] overrides",
        dir.join(maskflow_review::HTML_FILE).display(), dir.join(maskflow_review::DRAFT_FILE).display());
    Ok(())
}

/// `maskflow push` / `maskflow pull`.
pub fn push_pull(pipeline: &Path, artifacts: &Path, until: Option<&str>, store: &StoreOptions, push: bool) -> Result<()> {
    let (reg, g) = load(pipeline)?;
    ensure_synth(&g)?;
    if push && store.read_only {
        bail!("push writes to the shared store: drop --read-only");
    }
    let remote = store.require(if push { "push" } else { "pull" }, push)?;
    let rt = Compute { device: tch::Device::Cpu, threads: 1 }.runtime(artifacts);
    let only = until.map(|u| runner::until_set(&g, u)).transpose()?;
    let planned = runner::plan(&g, &reg, &rt, only.as_ref(), &Printer)?;
    let local = maskflow_core::store::Store::new(artifacts);
    let targets: Vec<(&str, &maskflow_core::store::StageSpec)> = planned.iter().map(|p| (p.node.name.as_str(), &p.spec)).collect();
    let lines = if push { shared::push(&local, &remote, &targets)? } else { shared::pull(&local, &remote, &targets)? };
    println!("{} {} ({})", if push { "push" } else { "pull" }, remote.url(), g.path.display());
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// `maskflow gc`.
pub fn gc(store: &StoreOptions, opts: &maskflow_remote::GcOptions) -> Result<()> {
    let remote = store.require("gc", opts.apply)?;
    let report = remote.gc(opts)?;
    println!("gc {} (grace {}s)", remote.url(), opts.grace.as_secs());
    for m in &report.manifests_swept {
        println!("  {} {m}", if report.applied { "swept" } else { "would sweep" });
    }
    println!("{report}");
    Ok(())
}

/// `maskflow status`.
pub fn status(pipeline: &Path, artifacts: &Path, store: &StoreOptions, variation: &Variation) -> Result<()> {
    let (reg, g) = load_with(pipeline, variation)?;
    let rt = Compute { device: tch::Device::Cpu, threads: 1 }.runtime(artifacts);
    let remote = store.open(false)?;
    // Keys need the dataset's fingerprint: a [dataset.synth] folder is generated (as `graph` and
    // `run` do; it is an input, not a stage).
    ensure_synth(&g)?;
    println!("pipeline {} ({})", g.name, g.path.display());
    if let Some(r) = &remote {
        println!("shared store {}", r.url());
    }
    for line in runner::status_lines(&g, &reg, &rt, remote.as_ref(), &Printer)? {
        println!("{line}");
    }
    Ok(())
}

/// `maskflow graph`.
pub fn graph(pipeline: &Path, artifacts: &Path, dot: bool, variation: &Variation) -> Result<()> {
    let (reg, g) = load_with(pipeline, variation)?;
    ensure_synth(&g)?;
    let rt = Compute { device: tch::Device::Cpu, threads: 1 }.runtime(artifacts);
    print!("{}", runner::describe(&g, &reg, &rt, dot, &Printer)?);
    Ok(())
}

/// `maskflow eval FILE --data FOLDER`: the pipeline plus `[eval.<folder>] data = FOLDER`, run up to it.
pub fn eval_folder(pipeline: &Path, artifacts: &Path, folder: &Path, c: &Compute) -> Result<()> {
    let (reg, mut g) = load(pipeline)?;
    ensure_synth(&g)?;
    let suffix: String = folder
        .file_name()
        .map(|n| n.to_string_lossy().chars().map(|ch| if ch.is_ascii_alphanumeric() || ch == '-' { ch } else { '_' }).collect())
        .filter(|s: &String| !s.is_empty())
        .unwrap_or_else(|| "folder".into());
    let folder = std::fs::canonicalize(folder).with_context(|| format!("--data {}", folder.display()))?;
    let name = g.add_folder_instance(&reg, "eval", &suffix, &folder)?;
    let outcomes = runner::run(&g, &reg, &c.runtime(artifacts), &RunOptions { until: Some(&name), ..RunOptions::new(&Printer) })?.outcomes;
    if let Some(o) = outcomes.last() {
        println!("report  {}", o.dir.join(maskflow_eval::REPORT_FILE).display());
    }
    Ok(())
}

/// `maskflow lr-find`: index and prep as the pipeline says (cached), then the lr finder alone.
pub fn lr_find(pipeline: &Path, artifacts: &Path, c: &Compute, out: &Path) -> Result<()> {
    let (reg, g) = load(pipeline)?;
    ensure_synth(&g)?;
    let Some(train) = g.node("train") else { bail!("{}: no [train] to find a learning rate for", pipeline.display()) };
    let shards_node = train.inputs.get("shards").cloned().unwrap_or_default();
    let rt = c.runtime(artifacts);
    let outcomes = runner::run(&g, &reg, &rt, &RunOptions { until: Some(&shards_node), ..RunOptions::new(&Printer) })?.outcomes;
    let Some(prep) = outcomes.last() else { bail!("internal: {shards_node} did not run") };
    let params: maskflow_train::TrainParams = serde_json::from_value(train.params.clone())?;
    let externals = reg.get("train").map(|s| s.externals(&train.params, &rt)).transpose()?.unwrap_or_default();
    let meta: maskflow_contracts::shards::ShardSetMeta = maskflow_contracts::JsonFile::read(&prep.dir)?;
    let inputs = maskflow_train::Inputs {
        prep_dir: prep.dir.clone(),
        classes: meta.classes,
        pretrained: externals.get("weights").map(|w| w.path.clone()),
    };
    let trt = maskflow_train::Runtime::new(c.device, c.threads, out.join(".unused"), true);
    let r = maskflow_train::lr_find_only(&inputs, &params, &trt, out)?;
    println!(
        "lr_find {} iterations{} → {} and {}",
        r.lrs.len(),
        if r.stopped_early { " (stopped early: the loss diverged)" } else { "" },
        out.join(maskflow_train::LR_FIND_CSV).display(),
        out.join(maskflow_train::LR_FIND_PNG).display()
    );
    if let Some(s) = r.suggestions {
        println!(
            "suggestions: valley {:.2e} (used by lr = \"find\"), steep {:.2e}, minimum/10 {:.2e}",
            s.valley, s.steep, s.minimum_div_10
        );
    }
    Ok(())
}

/// `maskflow stage KIND --input SLOT=DIR … --out DIR`: one stage kind on artifact folders.
pub struct StageArgs<'a> {
    pub kind: &'a str,
    pub inputs: &'a [String],
    pub dataset: Option<&'a Path>,
    pub params: Option<&'a Path>,
    pub artifacts: &'a Path,
    pub out: &'a Path,
}

pub fn stage_alone(a: &StageArgs, c: &Compute) -> Result<()> {
    let reg = registry();
    let Some(st) = reg.get(a.kind) else {
        bail!("unknown stage kind {:?} (kinds: {})", a.kind, reg.names().join(", "));
    };
    let mut params = match a.params {
        Some(p) => params_from_file(st, p)?,
        None => st.default_params(),
    };
    st.place(&mut params, Placement { own_data: false }).map_err(|e| anyhow::anyhow!("{}: {e}", a.kind))?;
    st.validate(&params).map_err(|e| anyhow::anyhow!("{}: {e}", a.kind))?;
    let slots = st.inputs(&params).map_err(|e| anyhow::anyhow!("{}: {e}", a.kind))?;
    let mut inputs: BTreeMap<String, InputArtifact> = BTreeMap::new();
    for spec in a.inputs {
        let Some((slot, dir)) = spec.split_once('=') else { bail!("--input {spec:?}: expected SLOT=DIR") };
        if !slots.iter().any(|s| s.name == slot) {
            let names: Vec<&str> = slots.iter().map(|s| s.name).collect();
            bail!("--input {slot}: {} has no such slot (slots: {})", a.kind, names.join(", "));
        }
        let dir = PathBuf::from(dir);
        anyhow::ensure!(dir.is_dir(), "--input {slot}={}: not a folder", dir.display());
        let key = maskflow_core::store::verify_dir(&dir, None).map(|m| m.key).unwrap_or_else(|_| format!("unkeyed:{}", dir.display()));
        inputs.insert(slot.to_string(), InputArtifact { dir, key });
    }
    for s in slots.iter().filter(|s| s.required) {
        anyhow::ensure!(inputs.contains_key(s.name), "{} needs --input {}=DIR (a {} artifact)", a.kind, s.name, s.kind);
    }
    let rt = c.runtime(a.artifacts);
    let mut externals = st.externals(&params, &rt)?;
    if st.reads_dataset() {
        let Some(root) = a.dataset else { bail!("{} reads a labelled folder: pass --dataset DIR", a.kind) };
        externals.insert(runner::DATASET.to_string(), runner::dataset_external(root, a.artifacts, &Printer)?);
    }
    if a.out.exists() && std::fs::read_dir(a.out)?.next().is_some() {
        bail!("{}: output folder exists and is not empty", a.out.display());
    }
    std::fs::create_dir_all(a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let scratch = a.out.join(".checkpoints");
    let ctx = RunCtx {
        instance: a.kind,
        key: "standalone",
        inputs: &inputs,
        externals: &externals,
        runtime: &rt,
        dataset_root: a.dataset,
        scratch: &scratch,
        out: a.out,
        notes: &maskflow_pipeline::events::InstanceNotes { events: &Printer, instance: a.kind },
    };
    let report = st.run(&params, &ctx)?;
    let _ = std::fs::remove_dir_all(&scratch);
    maskflow_core::fsutil::write_json_atomic(&a.out.join("report.json"), &report)?;
    println!("{:<7} {}", a.kind, runner::summary_of(st, &report));
    println!("{:<7} written to {}", a.kind, a.out.display());
    Ok(())
}

/// `maskflow stages`.
pub fn list_stages(json: bool) -> Result<()> {
    let reg = registry();
    if !json {
        println!("{:<8} {:<8} {:<16} {:<7} inputs", "kind", "version", "writes", "splits");
    }
    for st in reg.kinds() {
        let slots = st.inputs(&st.default_params()).map_err(anyhow::Error::msg)?;
        if json {
            let slots: Vec<serde_json::Value> = slots
                .iter()
                .map(|s| serde_json::json!({"name": s.name, "kind": s.kind, "required": s.required, "data": s.data}))
                .collect();
            let v = serde_json::json!({"kind": st.kind(), "version": st.version(), "output": st.output(), "reads_dataset": st.reads_dataset(), "splits": reg.split(st.kind()).is_some(), "inputs": slots});
            println!("{v}");
        } else {
            let mut from: Vec<String> = slots
                .iter()
                .map(|s| format!("{} ({}{})", s.name, s.kind, if s.required { "" } else { ", optional" }))
                .collect();
            if st.reads_dataset() {
                // Labelled (`root/<class>/…`) or annotated (`images/` + annotations): the kind's doc says.
                from.insert(0, "a dataset folder ([dataset] root, or data = …)".into());
            }
            let splits = if reg.split(st.kind()).is_some() { "yes" } else { "no" };
            println!("{:<8} {:<8} {:<16} {:<7} {}", st.kind(), st.version(), st.output(), splits, from.join(", "));
        }
    }
    Ok(())
}
