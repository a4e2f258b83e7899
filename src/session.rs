//! What every command of the binary shares: the registry of stage kinds, devices and threads
//! (`Compute`), the shared-store options, loading a pipeline file (and generating its
//! `[dataset.synth]` folder), and how the runner's events are printed (`Printer`).

use anyhow::{bail, Context, Result};
use maskflow_pipeline::events::{Event, Events};
use maskflow_pipeline::graph::Graph;
use maskflow_pipeline::runner::short;
use maskflow_pipeline::shared::{self, Shared};
use maskflow_pipeline::{Registry, Runtime};
use maskflow_remote::Remote;
use maskflow_synth::SynthParams;
use std::path::Path;
use std::time::Instant;

/// Every stage kind this binary knows, in the default chain's order. A new kind: one line here.
pub fn registry() -> Registry {
    Registry::new()
        .register::<maskflow_faces::FacesStage>()
        .register_split::<maskflow_index::IndexStage>()
        .register_split::<maskflow_prep::PrepStage>()
        .register::<maskflow_train::TrainStage>()
        .register::<maskflow_eval::EvalStage>()
        .register::<maskflow_export::ExportStage>()
        .register::<maskflow_review::ReviewStage>()
        .register::<maskflow_dettrain::DetTrainStage>()
        .register::<maskflow_deteval::DetEvalStage>()
}

/// Where and how compute runs (not part of any key).
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: tch::Device,
    pub threads: usize,
}

impl Compute {
    pub fn runtime(&self, artifacts: &Path) -> Runtime {
        let device = match self.device {
            tch::Device::Cuda(n) => maskflow_pipeline::Device::Cuda(n),
            _ => maskflow_pipeline::Device::Cpu,
        };
        Runtime { device, threads: self.threads, progress: true, artifacts: artifacts.to_path_buf(), ranks: None }
    }
}

/// Parses `--device cpu|cuda|cuda:N|auto`.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    if s == "cpu" {
        return Ok(tch::Device::Cpu);
    }
    let backend = maskflow_core::cuda::load_backend();
    if s == "auto" {
        return Ok(tch::Device::cuda_if_available());
    }
    if let Err(e) = &backend {
        if s == "cuda" || s.starts_with("cuda:") {
            bail!("--device {s}: libtorch's CUDA backend could not be loaded ({e}); use cpu or auto");
        }
    }
    Ok(match s {
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: no CUDA device is available here (use cpu or auto)");
            }
            tch::Device::Cuda(0)
        }
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if (n as i64) < tch::Cuda::device_count() => tch::Device::Cuda(n),
            Some(n) => bail!("--device {other}: there are {} CUDA devices, not {}", tch::Cuda::device_count(), n + 1),
            None => bail!("--device {other:?}: expected cpu, cuda, cuda:N or auto"),
        },
    })
}

const SYNTH_STAMP: &str = ".maskflow-synth.json";

/// Generates the synthetic dataset of `[dataset.synth]` into the root unless it is already there.
/// Never replaces a folder it did not write (one without the stamp).
pub fn ensure_synth(g: &Graph) -> Result<()> {
    let Some(params) = g.dataset_table::<SynthParams>("synth")? else { return Ok(()) };
    let want = serde_json::to_string_pretty(&params)?;
    let stamp = g.root.join(SYNTH_STAMP);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    // One generator at a time (two runs of the same pipeline may start together); re-check once
    // the lock is held.
    let parent = g.root.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let root_name = g.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock_path = parent.join(format!(".{root_name}.synth.lock"));
    let lock = std::fs::File::create(&lock_path).with_context(|| lock_path.display().to_string())?;
    lock.lock().with_context(|| lock_path.display().to_string())?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    if g.root.exists() && !stamp.exists() && std::fs::read_dir(&g.root)?.next().is_some() {
        bail!(
            "{}: [dataset.synth] would overwrite {}, which holds files maskflow did not generate; \
             point dataset.root at an empty or new folder",
            g.path.display(),
            g.root.display()
        );
    }
    let started = Instant::now();
    let tmp = parent.join(format!(".synth-tmp-{}", maskflow_core::fsutil::unique_suffix()));
    let summary = maskflow_synth::generate(&params, &tmp)?;
    std::fs::write(tmp.join(SYNTH_STAMP), &want)?;
    if g.root.exists() {
        let old = parent.join(format!(".synth-old-{}", maskflow_core::fsutil::unique_suffix()));
        std::fs::rename(&g.root, &old)?;
        std::fs::remove_dir_all(&old)?;
    }
    std::fs::rename(&tmp, &g.root)?;
    println!("{:<7} generated {} files in {} ({:.1}s)", "synth", summary.files, g.root.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Loads a pipeline file as a graph (with this binary's registry).
pub fn load(pipeline: &Path) -> Result<(Registry, Graph)> {
    load_with(pipeline, &Default::default())
}

/// Loads a pipeline file with `-S` overrides and a sweep.
pub fn load_with(pipeline: &Path, variation: &maskflow_pipeline::variation::Variation) -> Result<(Registry, Graph)> {
    let reg = registry();
    let g = Graph::load_with(pipeline, &reg, variation)?;
    Ok((reg, g))
}

/// `--store`, `--read-only`, `--lease-ttl`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: Option<String>,
    pub read_only: bool,
    pub lease_ttl: std::time::Duration,
    pub strict_versions: bool,
}

impl StoreOptions {
    /// Opens the shared store, if one is named. One that will be written is first checked to
    /// honour create-only writes (refused with the reason otherwise).
    pub fn open(&self, writes: bool) -> Result<Option<Remote>> {
        let Some(url) = &self.url else { return Ok(None) };
        let remote = Remote::open(url)?.with_progress(true);
        if writes && !self.read_only {
            remote.check_conditional_writes()?;
        }
        Ok(Some(remote))
    }

    /// How the runner uses `remote`.
    pub fn shared<'r>(&self, remote: &'r Remote) -> Shared<'r> {
        let on_newer = if self.strict_versions { shared::OnNewer::Fail } else { shared::OnNewer::BuildLocally };
        Shared { remote, read_only: self.read_only, lease_ttl: self.lease_ttl, on_newer, events: &Printer }
    }

    pub fn require(&self, what: &str, writes: bool) -> Result<Remote> {
        match self.open(writes)? {
            Some(r) => Ok(r),
            None => bail!("{what} needs a shared store: --store s3://bucket/prefix or file:///path (or MASKFLOW_STORE)"),
        }
    }
}


/// The runner's events on the terminal: a few lines per stage on stdout, waits and warnings on
/// stderr.
pub struct Printer;

impl Events for Printer {
    fn event(&self, e: &Event) {
        match e {
            Event::Stage { name, outcome: o, via, summary } => {
                let state = if let Some(t) = &via.pulled {
                    format!("pulled ({t})")
                } else if o.cached {
                    "cached".to_string()
                } else {
                    match &o.rebuilt_because {
                        Some(why) => format!("rebuilt in {:.2}s ({why})", o.duration_s),
                        None => format!("built in {:.2}s", o.duration_s),
                    }
                };
                // One write per event: instances built in parallel (--jobs) do not interleave lines.
                let mut out = format!("{name:<7} {state}  key {}  {}\n", short(&o.key), o.dir.display());
                for note in &via.notes {
                    out.push_str(&format!("        {note}\n"));
                }
                if let Some(p) = &via.published {
                    match p.created {
                        true => out.push_str(&format!("        published ({})\n", p.transfer)),
                        false => out.push_str(&format!("        already published by another machine (blobs: {})\n", p.transfer)),
                    }
                }
                out.push_str(&format!("        {summary}\n"));
                print!("{out}");
            }
            Event::RunDone { stages, cached, seconds, record } => {
                println!("run     {stages} stage(s), {cached} cached, {seconds:.2}s; record {}", record.display())
            }
            Event::Waiting { kind, key, holder, left } => {
                eprintln!("{kind:<7} waiting: {holder} is building {} (lease for {}s more)", short(key), left.as_secs())
            }
            Event::FanOut { instance, tasks, executor, done, plan } => {
                eprintln!("{instance:<7} {tasks} task(s) on {executor} ({done} done already); plan {plan}")
            }
            Event::Note { line, .. } => eprintln!("{line}"),
            Event::Warning(w) => eprintln!("warning: {w}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key coverage through the runner's real planning, with this binary's registry: every kind
    /// (faces included), every param, every upstream and every outside input.
    #[test]
    fn every_kinds_key_covers_its_params_upstreams_and_outside_inputs_through_real_planning() {
        let d = tempfile::tempdir().unwrap();
        // Planning hashes the dataset's files; it decodes none.
        for (class, file, bytes) in [("with_mask", "1.jpg", &b"one"[..]), ("without_mask", "2.jpg", b"two"), ("without_mask", "3.jpg", b"three")] {
            std::fs::create_dir_all(d.path().join("data").join(class)).unwrap();
            std::fs::write(d.path().join("data").join(class).join(file), bytes).unwrap();
        }
        let reg = registry();
        let rt = Compute { device: tch::Device::Cpu, threads: 1 }.runtime(&d.path().join("artifacts"));
        let mut kinds = std::collections::BTreeSet::new();
        let mut unplannable = Vec::new();
        // An annotated folder for the detection kinds (planning reads no annotation either).
        for (dir, file, bytes) in [("images", "1.jpg", &b"one"[..]), ("annotations", "1.xml", b"<annotation/>")] {
            std::fs::create_dir_all(d.path().join("scenes").join(dir)).unwrap();
            std::fs::write(d.path().join("scenes").join(dir).join(file), bytes).unwrap();
        }
        let detection = "[dettrain]\n[dettrain.annotations]\nclasses = { a = \"with_mask\" }\n\
                         [deteval]\ntrained = true\nlabels = \"detector\"\n[deteval.annotations]\nclasses = { a = \"with_mask\" }\n";
        for (name, root, file, tables) in [
            ("chain", "data", "with_mask/1.jpg", "[index]\n[prep]\n[train]\npretrained = \"none\"\n[eval]\n[export]\n[review]\n"),
            ("faces", "data", "with_mask/1.jpg", "[faces]\n[faces.annotations]\nclasses = { a = \"with_mask\" }\n[index]\n[prep]\n"),
            ("detection", "scenes", "images/1.jpg", detection),
        ] {
            let path = d.path().join(format!("{name}.toml"));
            std::fs::write(&path, format!("name = \"{name}\"\n\n[dataset]\nroot = \"{root}\"\n\n{tables}")).unwrap();
            let g = Graph::load(&path, &reg).unwrap();
            let alternatives = [
                ("train", "pretrained", serde_json::json!("mobilenet_v2")),
                ("train", "unfrozen_lr", serde_json::json!([2e-5, 1e-4])),
                ("faces", "annotations.names", serde_json::json!(["a"])),
                ("dettrain", "annotations.names", serde_json::json!(["a"])),
                ("deteval", "annotations.names", serde_json::json!(["a"])),
                ("dettrain", "annotations.classes.a", serde_json::json!("without_mask")),
                ("deteval", "annotations.classes.a", serde_json::json!("without_mask")),
            ];
            let (tried, skipped) = maskflow_pipeline::testing::assert_planning_covers(&g, &reg, &rt, &d.path().join(root).join(file), &alternatives);
            assert!(tried >= 3 * g.nodes.len(), "{name}: {tried} param changes checked");
            unplannable.extend(skipped);
            kinds.extend(g.nodes.iter().map(|n| n.kind));
        }
        let all: std::collections::BTreeSet<&str> = reg.names().into_iter().collect();
        assert_eq!(kinds, all, "every registered kind is covered");
        // Only mobilenet_v2's weights can be imported here: review's weights are checked as an
        // outside input in its key (above), not by swapping them.
        assert_eq!(unplannable, vec!["[review] pretrained".to_string()]);
    }
}

/// A child build's events (`run --jobs N`): its own instance's result, its notes and warnings; not
/// the cached inputs the parent has announced already.
pub struct OnlyInstance<'a> {
    pub name: &'a str,
}

impl Events for OnlyInstance<'_> {
    fn event(&self, e: &Event) {
        match e {
            Event::Stage { name, .. } if *name != self.name => {}
            other => Printer.event(other),
        }
    }
}
