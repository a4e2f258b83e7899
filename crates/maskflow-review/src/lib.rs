//! maskflow-review: the review stage. Lists suspected label problems for a human to decide on:
//!
//! - **copies labelled differently**: a group of byte-identical files or near-duplicates (the
//!   index's groups) whose members carry different labels;
//! - **unlikely labels**: images whose given label gets a low probability from *out-of-fold* models —
//!   k linear probes on the pretrained body's pooled features (computed once), each trained on the
//!   other folds. Folds follow the index's duplicate groups, so no copy of an image helps to judge it.
//!
//! Outputs: `review.csv` (one row per suspected file), `review.html` (one entry per group, with a
//! thumbnail, the given and the suspected label and the evidence), `overrides-draft.csv` (every
//! suspicion as a commented-out line of a label-overrides file: uncomment what you agree with and
//! name the file in `[dataset] overrides`), `thumbs/`, `summary.json`. Nothing in the dataset is
//! changed.

mod page;
mod probe;
#[cfg(test)]
mod tests;

use anyhow::{Context, Result};
use maskflow_contracts::index::{read_index, IndexRow, INDEX_FILE};
use maskflow_contracts::kinds;
use maskflow_contracts::model::{Arch, Precision};
use maskflow_contracts::shards::ShardSetMeta;
use maskflow_contracts::JsonFile;
use maskflow_core::fsutil::{write_atomic, write_json_atomic};
use maskflow_stage::{External, RunCtx, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

pub const CSV_FILE: &str = "review.csv";
pub const HTML_FILE: &str = "review.html";
pub const DRAFT_FILE: &str = "overrides-draft.csv";

/// `[review]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewParams {
    /// The body whose pooled features the probes read.
    pub arch: Arch,
    /// Its pretrained weights (a name of the weights registry).
    pub pretrained: String,
    /// Out-of-fold folds (by duplicate group).
    pub folds: usize,
    /// An image is suspected when its out-of-fold probability of its given label is below this.
    pub threshold: f64,
    /// Full-batch AdamW steps of each linear probe.
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Images per feature batch.
    pub batch_size: usize,
    /// Feature pass precision (`bf16` halves its time on CPUs with bf16 instructions).
    pub precision: Precision,
    /// Seeds the folds and the probes' initialisation.
    pub seed: u64,
}

impl Default for ReviewParams {
    fn default() -> Self {
        ReviewParams {
            arch: Arch::MobilenetV2,
            pretrained: "mobilenet_v2".into(),
            folds: 5,
            threshold: 0.2,
            steps: 300,
            lr: 1e-2,
            weight_decay: 1e-2,
            batch_size: 64,
            precision: Precision::Bf16,
            seed: 42,
        }
    }
}

/// The review stage kind.
pub struct ReviewStage;

impl Stage for ReviewStage {
    const KIND: &'static str = "review";
    const VERSION: u32 = 1;
    const OUTPUT: &'static str = kinds::LABEL_REVIEW;
    type Params = ReviewParams;
    type Report = ReviewReport;

    fn validate(p: &ReviewParams) -> std::result::Result<(), String> {
        if p.folds < 2 {
            return Err(format!("review.folds = {} must be at least 2", p.folds));
        }
        if !(0.0..1.0).contains(&p.threshold) || p.threshold == 0.0 {
            return Err(format!("review.threshold = {} must be in (0, 1)", p.threshold));
        }
        if p.steps == 0 || p.batch_size == 0 || !(p.lr > 0.0) {
            return Err("review: steps, batch_size and lr must be positive".into());
        }
        Ok(())
    }
    fn inputs(_: &ReviewParams) -> Vec<Slot> {
        vec![Slot::new("index", kinds::INDEX_TABLE).data(), Slot::new("data", kinds::SHARD_SET).data()]
    }
    fn externals(p: &ReviewParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        let search = maskflow_models::weights::SearchPaths::from_env();
        let w = maskflow_models::weights::ensure(&p.pretrained, None, &rt.artifacts, &search)
            .with_context(|| format!("review.pretrained = {:?}", p.pretrained))?;
        Ok([("weights".to_string(), External { path: w.safetensors(), key: format!("sha256:{}", w.sha256), files: None })].into())
    }
    fn run(p: &ReviewParams, ctx: &RunCtx) -> Result<ReviewReport> {
        let inputs = Inputs { index_dir: ctx.input("index")?, data_dir: ctx.input("data")?, weights: &ctx.external("weights")?.path };
        let device = maskflow_models::torch_device(ctx.runtime.device);
        tch::set_num_threads(ctx.runtime.threads.max(1) as i32);
        run(&inputs, p, device, ctx.runtime.progress, ctx.out)
    }
    fn summary(r: &ReviewReport) -> String {
        format!(
            "{} images, out-of-fold accuracy {:.4} ({} folds); {} suspected file(s) in {} group(s): {} with an unlikely label, \
             {} in groups of copies labelled differently; {HTML_FILE}, {DRAFT_FILE}",
            r.images, r.oof_accuracy, r.folds, r.suspected_files, r.suspected_groups, r.unlikely_files, r.conflict_files
        )
    }
}

/// What the stage reads.
pub struct Inputs<'a> {
    pub index_dir: &'a Path,
    pub data_dir: &'a Path,
    /// The pretrained body (safetensors).
    pub weights: &'a Path,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewReport {
    pub images: usize,
    pub folds: usize,
    /// Accuracy of the out-of-fold predictions against the given labels.
    pub oof_accuracy: f64,
    pub suspected_files: usize,
    /// Distinct images (duplicate groups) among them.
    pub suspected_groups: usize,
    pub unlikely_files: usize,
    pub conflict_files: usize,
    pub seconds: f64,
}

/// One suspected file.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    pub path: String,
    pub content_hash: String,
    pub group: String,
    pub split: String,
    pub given: String,
    /// The label the evidence points to.
    pub suspected: String,
    /// Out-of-fold probability of the given label.
    pub p_given: f64,
    /// Copies in the data (the group's size).
    pub copies: usize,
    /// Why, in words.
    pub evidence: String,
    /// Row in the shard data (for the thumbnail).
    pub row: usize,
}

/// Runs the stage into `out_dir`.
pub fn run(inputs: &Inputs, p: &ReviewParams, device: Device, progress: bool, out_dir: &Path) -> Result<ReviewReport> {
    let started = std::time::Instant::now();
    let meta = ShardSetMeta::read(inputs.data_dir)?;
    let rows = read_index(&inputs.index_dir.join(INDEX_FILE))?;
    let data = maskflow_data::open_splits(inputs.data_dir, &["train", "valid"], meta.classes.len(), maskflow_data::DataMode::Auto, 4 << 30)?;
    anyhow::ensure!(!data.is_empty(), "nothing to review: the data has no images");
    let group_of: BTreeMap<&str, &str> = rows.iter().map(|r| (r.content_hash.as_str(), r.group_hash.as_str())).collect();
    let groups: Vec<String> = data.hashes.iter().map(|h| group_of.get(h.as_str()).copied().unwrap_or(h).to_string()).collect();

    let features = probe::features(&data, inputs.weights, p, meta.classes.len() as i64, device, progress)?;
    let probs = probe::out_of_fold(&features, &data.label_idx, &groups, meta.classes.len() as i64, p)?;
    let labels: Vec<usize> = data.label_idx.iter().map(|&l| l as usize).collect();
    let oof_accuracy = labels.iter().zip(&probs).filter(|(&l, pr)| argmax(pr) == l).count() as f64 / labels.len() as f64;

    let suspects = suspects(&data, &rows, &groups, &labels, &probs, &meta.classes, p.threshold);
    write_outputs(out_dir, &data, &suspects)?;
    let report = ReviewReport {
        images: data.len(),
        folds: p.folds,
        oof_accuracy,
        suspected_files: suspects.len(),
        suspected_groups: suspects.iter().map(|s| &s.group).collect::<std::collections::BTreeSet<_>>().len(),
        unlikely_files: suspects.iter().filter(|s| s.p_given < p.threshold).count(),
        conflict_files: suspects.iter().filter(|s| s.evidence.contains("labelled differently")).count(),
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json_atomic(&out_dir.join("summary.json"), &report)?;
    Ok(report)
}

pub(crate) fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i)
}

/// Every suspected file, copies labelled differently first, then by out-of-fold p(given) ascending.
pub fn suspects(
    data: &maskflow_data::SplitData,
    rows: &[IndexRow],
    groups: &[String],
    labels: &[usize],
    probs: &[Vec<f64>],
    classes: &[String],
    threshold: f64,
) -> Vec<Suspect> {
    // Labels per group, from every accepted file of the index.
    let mut group_labels: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == "ok") {
        *group_labels.entry(r.group_hash.as_str()).or_default().entry(r.label.as_str()).or_default() += 1;
    }
    let split_of: BTreeMap<&str, &str> =
        rows.iter().map(|r| (r.content_hash.as_str(), r.split.as_deref().unwrap_or(""))).collect();
    let mut out = Vec::new();
    for i in 0..data.len() {
        let (given, p_given) = (labels[i], probs[i][labels[i]]);
        let by_label = group_labels.get(groups[i].as_str());
        let copies = by_label.map_or(1, |m| m.values().sum());
        let conflict = by_label.filter(|m| m.len() > 1).map(|m| {
            let parts: Vec<String> = m.iter().map(|(l, n)| format!("{n}× {l}")).collect();
            format!("copies labelled differently ({})", parts.join(", "))
        });
        let unlikely = (p_given < threshold).then(|| {
            format!("out-of-fold p({}) = {:.3}; the probes say {} ({:.3})", classes[given], p_given, classes[argmax(&probs[i])], probs[i][argmax(&probs[i])])
        });
        if conflict.is_none() && unlikely.is_none() {
            continue;
        }
        let suspected = match (&conflict, by_label) {
            // For a conflict, the label the probes favour among the group's labels.
            (Some(_), Some(m)) => m
                .keys()
                .filter_map(|l| classes.iter().position(|c| c == l))
                .max_by(|&a, &b| probs[i][a].total_cmp(&probs[i][b]))
                .map_or(classes[given].clone(), |c| classes[c].clone()),
            _ => classes[argmax(&probs[i])].clone(),
        };
        out.push(Suspect {
            path: data.paths[i].clone(),
            content_hash: data.hashes[i].clone(),
            group: groups[i].clone(),
            split: split_of.get(data.hashes[i].as_str()).unwrap_or(&"").to_string(),
            given: classes[given].clone(),
            suspected,
            p_given,
            copies,
            evidence: [conflict, unlikely].into_iter().flatten().collect::<Vec<_>>().join("; "),
            row: i,
        });
    }
    out.sort_by(|a, b| {
        let c = |s: &Suspect| !s.evidence.starts_with("copies");
        c(a).cmp(&c(b)).then(a.p_given.total_cmp(&b.p_given)).then(a.group.cmp(&b.group)).then(a.path.cmp(&b.path))
    });
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_outputs(out_dir: &Path, data: &maskflow_data::SplitData, suspects: &[Suspect]) -> Result<()> {
    let mut csv = String::from("path,given_label,suspected_label,p_given,copies,split,evidence,content_hash\n");
    let mut draft = String::from(
        "# Label overrides drafted by `maskflow review`: one decision per line, `path,label` or `path,exclude`.\n\
         # Every suspicion is commented out: uncomment the lines you agree with (or write `exclude`), save\n\
         # this file beside the pipeline and name it in [dataset] overrides = \"FILE\". The folder is never changed.\n",
    );
    for s in suspects {
        csv.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{}\n",
            csv_field(&s.path),
            s.given,
            s.suspected,
            s.p_given,
            s.copies,
            s.split,
            csv_field(&s.evidence),
            s.content_hash
        ));
        draft.push_str(&format!("# {}\n# {},{}\n", s.evidence, s.path, s.suspected));
    }
    write_atomic(&out_dir.join(CSV_FILE), csv.as_bytes())?;
    write_atomic(&out_dir.join(DRAFT_FILE), draft.as_bytes())?;
    page::write(out_dir, data, suspects)
}
