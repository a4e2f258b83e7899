//! Running a pipeline through the artifact store, and explaining its status.

use crate::pipeline::{Pipeline, STAGES};
use anyhow::{bail, Context, Result};
use maskflow_core::dataset::{self, HashCache};
use maskflow_core::progress;
use maskflow_core::runs::{RunRecord, StageRun};
use maskflow_core::store::{Invalid, Outcome, StageSpec, Store};
use maskflow_index::{read_index, IndexParams, IndexRow};
use maskflow_models::weights::{self, ImportedWeights, SearchPaths};
use maskflow_prep::PrepParams;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SYNTH_STAMP: &str = ".maskflow-synth.json";

/// Generates the synthetic dataset of `[dataset.synth]` into the root unless it is already there.
/// Never replaces a folder it did not write (one without the stamp).
fn ensure_synth(p: &Pipeline) -> Result<()> {
    let Some(params) = &p.file.dataset.synth else { return Ok(()) };
    let want = serde_json::to_string_pretty(params)?;
    let stamp = p.root.join(SYNTH_STAMP);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    // One generator at a time (two runs of the same pipeline may start together); re-check once
    // the lock is held.
    let parent = p.root.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let root_name = p.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock_path = parent.join(format!(".{root_name}.synth.lock"));
    let lock = std::fs::File::create(&lock_path).with_context(|| lock_path.display().to_string())?;
    lock.lock().with_context(|| lock_path.display().to_string())?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    if p.root.exists() && !stamp.exists() && std::fs::read_dir(&p.root)?.next().is_some() {
        bail!(
            "{}: [dataset.synth] would overwrite {}, which holds files maskflow did not generate; \
             point dataset.root at an empty or new folder",
            p.path.display(),
            p.root.display()
        );
    }
    let started = Instant::now();
    let tmp = parent.join(format!(".synth-tmp-{}", maskflow_core::fsutil::unique_suffix()));
    let summary = maskflow_synth::generate(params, &tmp)?;
    std::fs::write(tmp.join(SYNTH_STAMP), &want)?;
    if p.root.exists() {
        let old = parent.join(format!(".synth-old-{}", maskflow_core::fsutil::unique_suffix()));
        std::fs::rename(&p.root, &old)?;
        std::fs::remove_dir_all(&old)?;
    }
    std::fs::rename(&tmp, &p.root)?;
    println!(
        "{:<7} generated {} files in {} ({:.1}s)",
        "synth",
        summary.files,
        p.root.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The dataset fingerprint, using (and refreshing) the stat-keyed hash cache in the store.
fn hash_cache_path(artifacts: &Path) -> PathBuf {
    artifacts.join(".cache").join("file-hashes.json")
}

/// Returns the fingerprint and the number of files listed.
fn fingerprint(p: &Pipeline, artifacts: &Path) -> Result<(String, usize)> {
    fingerprint_root(&p.root, artifacts).with_context(|| format!("pipeline {}", p.path.display()))
}

fn fingerprint_root(root: &Path, artifacts: &Path) -> Result<(String, usize)> {
    let listing = dataset::walk(root)?;
    let cache_path = hash_cache_path(artifacts);
    let mut cache = HashCache::load(&cache_path);
    let (fp, _) = dataset::fingerprint(&listing, &mut cache);
    if let Err(e) = cache.save(&cache_path) {
        eprintln!("warning: cannot save the hash cache {}: {e}", cache_path.display());
    }
    Ok((fp, listing.files.len()))
}

/// Where and how compute runs (not part of any key).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: tch::Device,
    pub threads: usize,
    pub progress: bool,
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

/// The pretrained weights of `[train]`, imported into the store (or none for `pretrained = "none"`).
/// Fails early, before any stage runs, with the message that says which file to place where.
fn train_weights(p: &Pipeline, artifacts: &Path) -> Result<Option<ImportedWeights>> {
    if p.file.train.pretrained == "none" {
        return Ok(None);
    }
    let w = weights::ensure(&p.file.train.pretrained, None, artifacts, &SearchPaths::from_env())
        .with_context(|| format!("{}: [train] pretrained = {:?}", p.path.display(), p.file.train.pretrained))?;
    Ok(Some(w))
}

/// Every stage's spec, in order (keys chain: each stage names its upstream's key).
fn specs(p: &Pipeline, fingerprint: &str, weights: Option<&ImportedWeights>) -> Result<Vec<StageSpec>> {
    let index = StageSpec::new(
        maskflow_index::STAGE,
        maskflow_index::VERSION,
        &p.file.index,
        BTreeMap::from([("dataset".to_string(), fingerprint.to_string())]),
    )?;
    let prep = StageSpec::new(
        maskflow_prep::STAGE,
        maskflow_prep::VERSION,
        &p.file.prep,
        BTreeMap::from([(maskflow_index::STAGE.to_string(), index.key())]),
    )?;
    let mut upstream = BTreeMap::from([(maskflow_prep::STAGE.to_string(), prep.key())]);
    if let Some(w) = weights {
        upstream.insert("weights".to_string(), format!("sha256:{}", w.sha256));
    }
    let train = StageSpec::new(maskflow_train::STAGE, maskflow_train::VERSION, &p.file.train, upstream)?;
    let eval = StageSpec::new(
        maskflow_eval::STAGE,
        maskflow_eval::VERSION,
        &p.file.eval,
        BTreeMap::from([
            (maskflow_index::STAGE.to_string(), index.key()),
            (maskflow_prep::STAGE.to_string(), prep.key()),
            (maskflow_train::STAGE.to_string(), train.key()),
        ]),
    )?;
    let export = StageSpec::new(
        maskflow_export::STAGE,
        maskflow_export::VERSION,
        &p.file.export,
        BTreeMap::from([
            (maskflow_prep::STAGE.to_string(), prep.key()),
            (maskflow_train::STAGE.to_string(), train.key()),
            (maskflow_eval::STAGE.to_string(), eval.key()),
        ]),
    )?;
    Ok(vec![index, prep, train, eval, export])
}

/// The provenance table of the report: every stage's key, version, params and upstream keys.
fn provenance(specs: &[StageSpec], p: &Pipeline) -> Value {
    let stages: Vec<Value> = specs
        .iter()
        .map(|s| {
            serde_json::json!({"stage": s.stage, "version": s.version, "key": s.key(), "params": s.params, "upstream": s.upstream})
        })
        .collect();
    serde_json::json!({"pipeline": p.path.display().to_string(), "stages": stages})
}

#[allow(clippy::too_many_arguments)]
fn build_eval(
    p: &Pipeline,
    index: &Outcome,
    prep_dir: &Path,
    train_dir: &Path,
    train_prep_dir: &Path,
    splits: &[&str],
    data_name: String,
    provenance: Value,
    opts: &RunOptions,
    out: &Path,
) -> Result<Value> {
    let classes_path = index.dir.join(maskflow_index::CLASSES_FILE);
    let data_classes: Vec<String> = serde_json::from_slice(
        &std::fs::read(&classes_path).with_context(|| format!("reading {}", classes_path.display()))?,
    )?;
    let inputs = maskflow_eval::Inputs {
        train_dir: train_dir.to_path_buf(),
        prep_dir: prep_dir.to_path_buf(),
        splits: splits.iter().map(|s| s.to_string()).collect(),
        data_classes,
        train_prep_dir: Some(train_prep_dir.to_path_buf()),
        index_report: index.manifest.report.clone(),
        provenance,
        data_name,
    };
    let report = maskflow_eval::run(&inputs, &p.file.eval, opts.device, opts.threads, out)?;
    Ok(serde_json::to_value(report)?)
}

fn build_train(
    p: &Pipeline,
    index_dir: &Path,
    prep_dir: &Path,
    weights: Option<&ImportedWeights>,
    checkpoint_dir: &Path,
    opts: &RunOptions,
    out: &Path,
) -> Result<Value> {
    let classes_path = index_dir.join(maskflow_index::CLASSES_FILE);
    let classes: Vec<String> = serde_json::from_slice(
        &std::fs::read(&classes_path).with_context(|| format!("reading {}", classes_path.display()))?,
    )?;
    let inputs = maskflow_train::Inputs {
        prep_dir: prep_dir.to_path_buf(),
        classes,
        pretrained: weights.map(|w| w.safetensors()),
    };
    let rt = maskflow_train::Runtime {
        device: opts.device,
        threads: opts.threads,
        checkpoint_dir: checkpoint_dir.to_path_buf(),
        stop_after_epochs: std::env::var("MASKFLOW_STOP_AFTER_EPOCHS").ok().and_then(|v| v.parse().ok()),
        progress: opts.progress,
    };
    let report = maskflow_train::run(&inputs, &p.file.train, &rt, out)?;
    Ok(serde_json::to_value(report)?)
}

/// `maskflow lr-find`: index and prep as the pipeline says (cached), then the lr finder alone.
pub fn lr_find(pipeline: &Path, artifacts: &Path, opts: &RunOptions, out: &Path) -> Result<()> {
    let record = run(pipeline, artifacts, None, Some(maskflow_prep::STAGE), opts)?;
    let p = Pipeline::load(pipeline)?;
    let weights = train_weights(&p, artifacts)?;
    let dir = |stage: &str| record.stages.iter().find(|s| s.stage == stage).map(|s| s.dir.clone());
    let (Some(index_dir), Some(prep_dir)) = (dir(maskflow_index::STAGE), dir(maskflow_prep::STAGE)) else {
        bail!("internal: index/prep did not run");
    };
    let classes_path = index_dir.join(maskflow_index::CLASSES_FILE);
    let classes: Vec<String> = serde_json::from_slice(&std::fs::read(&classes_path)?)?;
    let inputs = maskflow_train::Inputs { prep_dir, classes, pretrained: weights.map(|w| w.safetensors()) };
    let rt = maskflow_train::Runtime {
        device: opts.device,
        threads: opts.threads,
        checkpoint_dir: out.join(".unused"),
        stop_after_epochs: None,
        progress: opts.progress,
    };
    let r = maskflow_train::lr_find_only(&inputs, &p.file.train, &rt, out)?;
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

/// `maskflow eval --data FOLDER`: the pipeline's model (trained if needed, usually cached) on a
/// labelled folder it never saw, indexed and prepped with the pipeline's own parameters — every
/// artifact cached like any stage.
pub fn eval_folder(pipeline: &Path, artifacts: &Path, folder: &Path, opts: &RunOptions) -> Result<()> {
    let record = run(pipeline, artifacts, None, Some(maskflow_train::STAGE), opts)?;
    let p = Pipeline::load(pipeline)?;
    let dir = |stage: &str| record.stages.iter().find(|s| s.stage == stage).map(|s| s.dir.clone());
    let (Some(train_dir), Some(train_prep_dir)) = (dir(maskflow_train::STAGE), dir(maskflow_prep::STAGE)) else {
        bail!("internal: the pipeline did not reach the train stage");
    };
    let (fp, files) = fingerprint_root(folder, artifacts).with_context(|| format!("--data {}", folder.display()))?;
    let store = Store::new(artifacts);
    let index_spec = StageSpec::new(
        maskflow_index::STAGE,
        maskflow_index::VERSION,
        &p.file.index,
        BTreeMap::from([("dataset".to_string(), fp.clone())]),
    )?;
    let index = store.ensure(&index_spec, false, |tmp| build_index(folder, &p.file.index, tmp, files))?;
    print_outcome(&index);
    let rows = read_index(&index.dir.join(maskflow_index::INDEX_FILE))?;
    if !rows.iter().any(|r| r.status == "ok") {
        bail!("--data {}: no readable images to evaluate (see the index summary above)", folder.display());
    }
    let prep_spec = StageSpec::new(
        maskflow_prep::STAGE,
        maskflow_prep::VERSION,
        &p.file.prep,
        BTreeMap::from([(maskflow_index::STAGE.to_string(), index.key.clone())]),
    )?;
    let prep = store.ensure(&prep_spec, false, |tmp| build_prep(folder, &rows, &p.file.prep, tmp))?;
    print_outcome(&prep);
    let train_key =
        record.stages.iter().find(|s| s.stage == maskflow_train::STAGE).map(|s| s.key.clone()).unwrap_or_default();
    let eval_spec = StageSpec::new(
        maskflow_eval::STAGE,
        maskflow_eval::VERSION,
        &p.file.eval,
        BTreeMap::from([
            (maskflow_index::STAGE.to_string(), index.key.clone()),
            (maskflow_prep::STAGE.to_string(), prep.key.clone()),
            (maskflow_train::STAGE.to_string(), train_key),
        ]),
    )?;
    let stages: Vec<Value> = [&index_spec, &prep_spec, &eval_spec]
        .iter()
        .map(|s| serde_json::json!({"stage": s.stage, "key": s.key(), "params": s.params, "upstream": s.upstream}))
        .collect();
    let prov = serde_json::json!({
        "pipeline": p.path.display().to_string(),
        "data": folder.display().to_string(),
        "stages": stages,
    });
    let name = format!("folder {}", folder.display());
    let eval = store.ensure(&eval_spec, false, |tmp| {
        build_eval(
            &p,
            &index,
            &prep.dir,
            &train_dir,
            &train_prep_dir,
            &["train", "valid"],
            name.clone(),
            prov.clone(),
            opts,
            tmp,
        )
    })?;
    print_outcome(&eval);
    println!("report  {}", eval.dir.join(maskflow_eval::REPORT_FILE).display());
    Ok(())
}

/// Where the train stage keeps the checkpoints of the run with this key.
pub fn checkpoint_dir(artifacts: &Path, key: &str) -> PathBuf {
    artifacts.join(maskflow_train::STAGE).join(".checkpoints").join(key)
}

fn check_stage_name(name: &str, what: &str) -> Result<()> {
    if name != "all" && !STAGES.contains(&name) {
        bail!("{what} {name:?}: not a stage of this pipeline (stages: {})", STAGES.join(", "));
    }
    Ok(())
}

fn build_index(root: &Path, params: &IndexParams, out: &Path, files: usize) -> Result<Value> {
    let pb = progress::bar(files as u64, "index", "files");
    let report = maskflow_index::run(root, params, out, &|n| pb.inc(n));
    pb.finish_and_clear();
    Ok(serde_json::to_value(report?)?)
}

fn build_prep(root: &Path, rows: &[IndexRow], params: &PrepParams, out: &Path) -> Result<Value> {
    let n = rows.iter().filter(|r| r.status == "ok").count();
    let pb = progress::bar(n as u64, "prep", "images");
    let report = maskflow_prep::run(root, rows, params, out, &|k| pb.inc(k));
    pb.finish_and_clear();
    Ok(serde_json::to_value(report?)?)
}

pub fn run(
    pipeline: &Path,
    artifacts: &Path,
    force: Option<&str>,
    until: Option<&str>,
    opts: &RunOptions,
) -> Result<RunRecord> {
    let started = Instant::now();
    let started_unix = now_unix();
    let p = Pipeline::load(pipeline)?;
    if let Some(f) = force {
        check_stage_name(f, "--force")?;
    }
    if let Some(u) = until {
        check_stage_name(u, "--until")?;
    }
    let needs_train = until.is_none_or(|u| {
        u == "all" || STAGES.iter().position(|s| *s == u) >= STAGES.iter().position(|s| *s == maskflow_train::STAGE)
    });
    let weights = if needs_train { train_weights(&p, artifacts)? } else { None };
    ensure_synth(&p)?;
    let (fp, files) = fingerprint(&p, artifacts)?;
    let store = Store::new(artifacts);
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let all_specs = specs(&p, &fp, weights.as_ref())?;
    let prov = provenance(&all_specs, &p);
    for spec in all_specs {
        if spec.stage == maskflow_train::STAGE && !needs_train {
            break;
        }
        let forced = matches!(force, Some("all")) || force == Some(spec.stage.as_str());
        let outcome = match spec.stage.as_str() {
            maskflow_index::STAGE => {
                store.ensure(&spec, forced, |tmp| build_index(&p.root, &p.file.index, tmp, files))?
            }
            maskflow_prep::STAGE => {
                let index_dir = &outcomes[maskflow_index::STAGE].dir;
                let rows = read_index(&index_dir.join(maskflow_index::INDEX_FILE))?;
                store.ensure(&spec, forced, |tmp| build_prep(&p.root, &rows, &p.file.prep, tmp))?
            }
            maskflow_train::STAGE => {
                let index_dir = outcomes[maskflow_index::STAGE].dir.clone();
                let prep_dir = outcomes[maskflow_prep::STAGE].dir.clone();
                let ckpt = checkpoint_dir(artifacts, &spec.key());
                let o = store.ensure(&spec, forced, |tmp| {
                    build_train(&p, &index_dir, &prep_dir, weights.as_ref(), &ckpt, opts, tmp)
                })?;
                maskflow_train::clear_checkpoints(&ckpt);
                o
            }
            maskflow_export::STAGE => {
                let train_dir = outcomes[maskflow_train::STAGE].dir.clone();
                let eval_dir = outcomes[maskflow_eval::STAGE].dir.clone();
                let upstream: BTreeMap<String, String> =
                    outcomes.iter().map(|(stage, o)| (stage.clone(), o.key.clone())).collect();
                store.ensure(&spec, forced, |tmp| {
                    let inputs = maskflow_export::Inputs {
                        train_dir: &train_dir,
                        eval_dir: Some(&eval_dir),
                        prep: &p.file.prep,
                        dataset_fingerprint: fp.clone(),
                        upstream: upstream.clone(),
                    };
                    maskflow_export::run(&inputs, &p.file.export, tmp)
                })?
            }
            maskflow_eval::STAGE => {
                let index = outcomes[maskflow_index::STAGE].clone();
                let prep_dir = outcomes[maskflow_prep::STAGE].dir.clone();
                let train_dir = outcomes[maskflow_train::STAGE].dir.clone();
                store.ensure(&spec, forced, |tmp| {
                    build_eval(
                        &p,
                        &index,
                        &prep_dir,
                        &train_dir,
                        &prep_dir,
                        &["valid"],
                        "the validation split".into(),
                        prov.clone(),
                        opts,
                        tmp,
                    )
                })?
            }
            other => bail!("internal: no runner for stage {other}"),
        };
        print_outcome(&outcome);
        let stage = spec.stage.clone();
        outcomes.insert(stage.clone(), outcome);
        if until == Some(stage.as_str()) {
            break;
        }
    }
    let record = RunRecord {
        pipeline: p.name.clone(),
        pipeline_file: p.path.clone(),
        tool_version: maskflow_core::TOOL_VERSION.to_string(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        dataset_fingerprint: fp,
        stages: STAGES
            .iter()
            .filter_map(|s| outcomes.get(*s))
            .map(|o| StageRun {
                stage: o.stage.clone(),
                key: o.key.clone(),
                dir: o.dir.clone(),
                cached: o.cached,
                rebuilt_because: o.rebuilt_because.clone(),
                duration_s: o.duration_s,
            })
            .collect(),
    };
    let path = record.write(artifacts)?;
    let cached = record.stages.iter().filter(|s| s.cached).count();
    println!(
        "run     {} stage(s), {} cached, {:.2}s; record {}",
        record.stages.len(),
        cached,
        record.duration_s,
        path.display()
    );
    Ok(record)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

fn print_outcome(o: &Outcome) {
    let state = if o.cached {
        "cached".to_string()
    } else {
        match &o.rebuilt_because {
            Some(why) => format!("rebuilt in {:.2}s ({why})", o.duration_s),
            None => format!("built in {:.2}s", o.duration_s),
        }
    };
    println!("{:<7} {state}  key {}  {}", o.stage, short(&o.key), o.dir.display());
    if let Some(line) = summary_line(&o.stage, &o.manifest.report) {
        println!("        {line}");
    }
}

/// One line about a stage's report, the same whether it was just built or read from the cache.
fn summary_line(stage: &str, r: &Value) -> Option<String> {
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    match stage {
        maskflow_index::STAGE => {
            let reasons = r
                .get("rejected_by_reason")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let classes = r
                .get("classes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let across_classes = match n("groups_across_classes") {
                0 => String::new(),
                k => format!("; {k} group(s) span classes (see duplicates.json)"),
            };
            Some(format!(
                "{} files, {} ok, {} rejected{}; classes {classes}; train {} / valid {}; \
                 {} exact-duplicate groups, {} near-duplicate groups, {} across sides{across_classes}",
                n("files"),
                n("accepted"),
                n("rejected"),
                if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
                n("train"),
                n("valid"),
                n("exact_duplicate_groups"),
                n("near_duplicate_groups"),
                n("groups_across_sides"),
            ))
        }
        maskflow_export::STAGE => Some(format!(
            "bundle: model.pt (TorchScript, uint8 NHWC {}² → probabilities of {}), model.safetensors, model_card.json, README.md",
            r.get("input").and_then(|i| i.get("height")).and_then(Value::as_i64).unwrap_or(0),
            r.get("classes").map(|c| c.to_string()).unwrap_or_default(),
        )),
        maskflow_eval::STAGE => {
            let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let cm = r.get("confusion_matrix").map(|v| v.to_string()).unwrap_or_default();
            Some(format!(
                "{} images of {}: accuracy {:.4}, error rate {:.4}, log loss {:.4}, ROC AUC {}; confusion [actual][predicted] {cm}; report {}",
                n("images"),
                r.get("data").and_then(Value::as_str).unwrap_or("?"),
                f("accuracy"),
                f("error_rate"),
                f("log_loss"),
                r.get("roc_auc").and_then(Value::as_f64).map(|a| format!("{a:.4}")).unwrap_or_else(|| "—".into()),
                maskflow_eval::REPORT_FILE,
            ))
        }
        maskflow_train::STAGE => {
            let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let epochs = r.get("epochs").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0);
            Some(format!(
                "{} {} epochs on {} images: accuracy {:.4}, valid loss {:.4} on {} images; {:.0}s on {}{}",
                r.get("arch").and_then(Value::as_str).unwrap_or("?"),
                epochs,
                n("train_images"),
                f("accuracy"),
                f("valid_loss"),
                n("valid_images"),
                f("seconds"),
                r.get("device").and_then(Value::as_str).unwrap_or("?"),
                r.get("resumed_from").and_then(Value::as_str).map(|s| format!(" (resumed from {s})")).unwrap_or_default(),
            ))
        }
        maskflow_prep::STAGE => Some(format!(
            "{} images into {} shards ({:.1} MB), {:.0} images/s on {} threads",
            n("images"),
            r.get("shards").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0),
            n("bytes_written") as f64 / 1e6,
            r.get("images_per_second").and_then(Value::as_f64).unwrap_or(0.0),
            n("threads"),
        )),
        _ => None,
    }
}

/// `maskflow status`: per stage, cached / stale (what changed) / corrupt / missing.
pub fn status(pipeline: &Path, artifacts: &Path) -> Result<()> {
    let p = Pipeline::load(pipeline)?;
    if p.file.dataset.synth.is_some() && !p.root.join(SYNTH_STAMP).exists() {
        println!("dataset {}: not generated yet (run will generate it)", p.root.display());
        for s in STAGES {
            println!("{s:<7} missing");
        }
        return Ok(());
    }
    let (fp, _) = fingerprint(&p, artifacts)?;
    let store = Store::new(artifacts);
    let latest = RunRecord::read_latest(artifacts, &p.name);
    let weights = match train_weights(&p, artifacts) {
        Ok(w) => w,
        Err(e) => {
            println!("weights: {e:#}");
            None
        }
    };
    println!("pipeline {} ({}), dataset fingerprint {}", p.name, p.path.display(), short(&fp));
    for spec in specs(&p, &fp, weights.as_ref())? {
        let key = spec.key();
        let line = match store.verify(&spec.stage, &key) {
            Ok(_) => format!("cached   key {}", short(&key)),
            Err(Invalid::Missing) => {
                let previous = latest
                    .as_ref()
                    .and_then(|r| r.stages.iter().find(|s| s.stage == spec.stage))
                    .and_then(|s| store.read_manifest(&spec.stage, &s.key));
                match previous {
                    Some(m) => {
                        let reasons = explain_change(&spec, &m.params, &m.upstream, m.stage_version, &store);
                        format!("stale    key {} (last run {}): {}", short(&key), short(&m.key), reasons.join("; "))
                    }
                    None => format!("missing  key {}", short(&key)),
                }
            }
            Err(why) => format!("corrupt  key {}: {why} (will be rebuilt)", short(&key)),
        };
        println!("{:<7} {line}", spec.stage);
    }
    Ok(())
}

/// Why `spec` differs from a previous build: changed params (each leaf named), changed version,
/// changed upstream (for the dataset: files added / removed / modified).
fn explain_change(
    spec: &StageSpec,
    old_params: &Value,
    old_upstream: &BTreeMap<String, String>,
    old_version: u32,
    store: &Store,
) -> Vec<String> {
    let mut out = Vec::new();
    if old_version != spec.version {
        out.push(format!("stage version {old_version} → {}", spec.version));
    }
    let mut old_leaves = BTreeMap::new();
    let mut new_leaves = BTreeMap::new();
    flatten(&spec.stage, old_params, &mut old_leaves);
    flatten(&spec.stage, &spec.params, &mut new_leaves);
    for (k, v) in &new_leaves {
        match old_leaves.get(k) {
            Some(o) if o == v => {}
            Some(o) => out.push(format!("{k} {o} → {v}")),
            None => out.push(format!("{k} new ({v})")),
        }
    }
    for (name, key) in &spec.upstream {
        match old_upstream.get(name) {
            Some(old) if old == key => {}
            Some(old) if name == "dataset" => out.push(dataset_change(store, spec, old)),
            Some(_) => out.push(format!("upstream {name} changed")),
            None => out.push(format!("new upstream {name}")),
        }
    }
    if out.is_empty() {
        out.push("inputs differ".into());
    }
    out
}

/// Compares the previous index artifact's rows with the current dataset.
fn dataset_change(store: &Store, spec: &StageSpec, old_fp: &str) -> String {
    let fallback = format!("dataset changed (fingerprint {} → {})", short(old_fp), short(&spec.upstream["dataset"]));
    // The previous index artifact for that fingerprint, if still present, lists the old files.
    let Ok(entries) = std::fs::read_dir(store.root().join(maskflow_index::STAGE)) else { return fallback };
    for e in entries.flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        let Some(m) = store.read_manifest(maskflow_index::STAGE, &key) else { continue };
        if m.upstream.get("dataset").map(String::as_str) != Some(old_fp) {
            continue;
        }
        let Some(root) = m.report.get("root").and_then(Value::as_str).map(PathBuf::from) else { continue };
        let Ok(old_rows) = read_index(&e.path().join(maskflow_index::INDEX_FILE)) else { continue };
        let Ok(listing) = dataset::walk(&root) else { continue };
        let (_, hashes) = dataset::fingerprint(&listing, &mut HashCache::load(&hash_cache_path(store.root())));
        let old: BTreeMap<Vec<u8>, String> = old_rows.into_iter().map(|r| (r.path_raw, r.content_hash)).collect();
        let new: BTreeMap<Vec<u8>, String> = listing.files.iter().map(|f| f.rel_bytes().to_vec()).zip(hashes).collect();
        let added = new.keys().filter(|k| !old.contains_key(*k)).count();
        let removed = old.keys().filter(|k| !new.contains_key(*k)).count();
        let modified = new.iter().filter(|(k, h)| old.get(*k).is_some_and(|o| o != *h)).count();
        return format!("dataset changed: {added} added, {removed} removed, {modified} modified");
    }
    fallback
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
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

fn fresh_out_dir(out: &Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{}: output folder exists and is not empty", out.display());
    }
    std::fs::create_dir_all(out)?;
    Ok(())
}

pub fn index_alone(root: &Path, params: &IndexParams, out: &Path) -> Result<()> {
    params.validate()?;
    fresh_out_dir(out)?;
    let files = dataset::walk(root).map(|l| l.files.len()).unwrap_or(0);
    let report = build_index(root, params, out, files)?;
    maskflow_core::fsutil::write_json_atomic(&out.join("report.json"), &report)?;
    if let Some(line) = summary_line(maskflow_index::STAGE, &report) {
        println!("index   {line}");
    }
    println!("index   written to {}", out.display());
    Ok(())
}

pub fn prep_alone(index_dir: &Path, root: Option<&Path>, params: &PrepParams, out: &Path) -> Result<()> {
    params.validate()?;
    let index_file = index_dir.join(maskflow_index::INDEX_FILE);
    let rows =
        read_index(&index_file).with_context(|| format!("reading the index artifact {}", index_dir.display()))?;
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => {
            let report: Option<Value> = std::fs::read(index_dir.join(maskflow_core::store::MANIFEST))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|m| m.get("report").cloned())
                .or_else(|| {
                    std::fs::read(index_dir.join("report.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
                });
            match report.as_ref().and_then(|r| r.get("root")).and_then(Value::as_str) {
                Some(r) => PathBuf::from(r),
                None => bail!("{}: no dataset root recorded; pass --root", index_dir.display()),
            }
        }
    };
    fresh_out_dir(out)?;
    let report = build_prep(&root, &rows, params, out)?;
    maskflow_core::fsutil::write_json_atomic(&out.join("report.json"), &report)?;
    if let Some(line) = summary_line(maskflow_prep::STAGE, &report) {
        println!("prep    {line}");
    }
    println!("prep    written to {}", out.display());
    Ok(())
}

/// `maskflow train` alone: an index artifact (for the classes) and a prep artifact → a train output in
/// `out` (checkpoints in `out/.checkpoints`, so a killed run resumes when the command is repeated).
pub fn train_alone(
    index_dir: &Path,
    prep_dir: &Path,
    params: &maskflow_train::TrainParams,
    artifacts: &Path,
    opts: &RunOptions,
    out: &Path,
) -> Result<()> {
    params.validate().map_err(anyhow::Error::msg)?;
    let weights = if params.pretrained == "none" {
        None
    } else {
        Some(weights::ensure(&params.pretrained, None, artifacts, &SearchPaths::from_env())?)
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let classes_path = index_dir.join(maskflow_index::CLASSES_FILE);
    let classes: Vec<String> = serde_json::from_slice(
        &std::fs::read(&classes_path).with_context(|| format!("reading {}", classes_path.display()))?,
    )?;
    let inputs = maskflow_train::Inputs {
        prep_dir: prep_dir.to_path_buf(),
        classes,
        pretrained: weights.map(|w| w.safetensors()),
    };
    let ckpt = out.join(".checkpoints");
    let rt = maskflow_train::Runtime {
        device: opts.device,
        threads: opts.threads,
        checkpoint_dir: ckpt.clone(),
        stop_after_epochs: None,
        progress: opts.progress,
    };
    let report = serde_json::to_value(maskflow_train::run(&inputs, params, &rt, out)?)?;
    maskflow_core::fsutil::write_json_atomic(&out.join("report.json"), &report)?;
    maskflow_train::clear_checkpoints(&ckpt);
    if let Some(line) = summary_line(maskflow_train::STAGE, &report) {
        println!("train   {line}");
    }
    println!("train   written to {}", out.display());
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
