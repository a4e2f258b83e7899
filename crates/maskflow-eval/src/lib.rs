//! maskflow-eval: the eval stage. A trained model on the validation split of the prep shards, or on
//! any other labelled folder (indexed and prepped by the same code, so it is preprocessed exactly as
//! the training data was), with fastai's interpretation outputs and a static HTML run report.
//!
//! Outputs: `metrics.json`, `confusion_matrix.{csv,json,png}`, `confusion_matrix_normalized.png`,
//! `most_confused.csv`, `top_losses.png`, `predictions.parquet`, `show_batch.png`, `summary.json`,
//! `report.html` (with copies of the training curves and lr-finder plot beside it).

pub mod metrics;
mod report;
pub mod robustness;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use maskflow_contracts::eval::{write_predictions, PredictionRow};
pub use maskflow_contracts::eval::Tta;
pub use maskflow_data::corrupt::Family;
pub use maskflow_contracts::eval::{Metrics, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE};
use maskflow_contracts::index::{IndexDataset, IndexSummary};
use maskflow_contracts::model::{CURVES_FILE, LR_FIND_PNG, METRICS_FILE as TRAIN_METRICS_FILE, SHOW_BATCH_FILE};
use maskflow_contracts::shards::ShardSetMeta;
use maskflow_contracts::{kinds, JsonFile};
use maskflow_core::fsutil::{write_atomic, write_json_atomic};
use maskflow_data::data::{self, SplitData};
use maskflow_data::infer::{self, InferOptions};
use maskflow_stage::{Placement, RunCtx, Slot, Stage};
use maskflow_plot::Tile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

/// Which images of the data to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Splits {
    /// The validation split (the pipeline's own data: images the model never trained on).
    Valid,
    Train,
    /// Every good image (a folder given with `data = …`).
    All,
}

impl Splits {
    fn names(self) -> &'static [&'static str] {
        match self {
            Splits::Valid => &["valid"],
            Splits::Train => &["train"],
            Splits::All => &["train", "valid"],
        }
    }
}

/// `[eval]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Tiles in the top-losses grid (fastai `plot_top_losses(9)`); copies (byte-identical, or
    /// near-duplicates by the index's grouping) share one tile, marked ×N.
    pub top_losses: usize,
    /// Minimum count for `most_confused` (fastai `min_val=1`); `most_confused.csv` also gives the
    /// distinct images in each cell (copies count once).
    pub most_confused_min: u64,
    /// `valid`, `train` or `all`. Default: `valid` on the pipeline's own data, `all` for an instance
    /// with `data = "FOLDER"` (every good image of a folder the model never saw).
    pub splits: Option<Splits>,
    /// Corruption families of the robustness section, each scored at every one of `severities`
    /// (ImageNet-C style; `maskflow_data::corrupt` has the levels): `downscale` (a small face scaled
    /// back up), `blur`, `jpeg`, `noise`, `brightness` (dim), `contrast`. `[]` = no robustness section.
    pub robustness: Vec<Family>,
    /// Severities 1 (mildest) … 5 scored for each family. Default `[1, 3, 5]`: each pass costs about
    /// as much as the clean one, so the default is 18 passes; `[1, 2, 3, 4, 5]` is ImageNet-C's grid.
    pub severities: Vec<u8>,
    /// Test-time augmentation of every prediction, clean and corrupted: `none`, `flip` (2 passes) or
    /// `fastai` (fastai's `TTA()`: 9 passes).
    pub tta: Tta,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            top_losses: 9,
            most_confused_min: 1,
            splits: None,
            robustness: Family::ALL.to_vec(),
            severities: vec![1, 3, 5],
            tta: Tta::None,
        }
    }
}

/// The eval stage kind.
pub struct EvalStage;

impl Stage for EvalStage {
    const KIND: &'static str = "eval";
    const VERSION: u32 = 4;
    const OUTPUT: &'static str = kinds::EVAL_RESULT;
    type Params = EvalParams;
    type Report = EvalReport;

    fn inputs(_: &EvalParams) -> Vec<Slot> {
        vec![
            Slot::new("model", kinds::TRAINED_MODEL),
            Slot::new("data", kinds::SHARD_SET).data(),
            Slot::new("index", kinds::INDEX_TABLE).optional().data(),
        ]
    }
    fn validate(p: &EvalParams) -> std::result::Result<(), String> {
        if let Some(s) = p.severities.iter().find(|s| !(1..=maskflow_data::corrupt::SEVERITIES).contains(s)) {
            return Err(format!("eval.severities: {s} is not a severity (1 … {})", maskflow_data::corrupt::SEVERITIES));
        }
        if !p.robustness.is_empty() && p.severities.is_empty() {
            return Err("eval.severities is empty but eval.robustness names corruptions: give severities 1 … 5, or robustness = []".into());
        }
        Ok(())
    }
    fn place(p: &mut EvalParams, at: Placement) {
        if p.splits.is_none() {
            p.splits = Some(if at.own_data { Splits::All } else { Splits::Valid });
        }
    }
    fn run(p: &EvalParams, ctx: &RunCtx) -> Result<EvalReport> {
        let inputs = Inputs {
            model_dir: ctx.input("model")?,
            data_dir: ctx.input("data")?,
            index_dir: ctx.optional_input("index"),
            provenance: Provenance { key: ctx.key.to_string(), params: p.clone(), inputs: ctx.input_keys() },
        };
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let rt = EvalRuntime { device, threads: ctx.runtime.threads, progress: ctx.runtime.progress };
        run(&inputs, p, &rt, ctx.out)
    }
    fn summary(r: &EvalReport) -> String {
        format!(
            "{} images of {}: accuracy {:.4}, error rate {:.4}, log loss {:.4}, ROC AUC {}; confusion [actual][predicted] {:?}{}; report {}",
            r.images,
            r.data,
            r.accuracy,
            r.error_rate,
            r.log_loss,
            r.roc_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "—".into()),
            r.confusion_matrix,
            r.mean_corruption_accuracy.map(|a| format!("; mean corruption accuracy {a:.4}")).unwrap_or_default(),
            REPORT_FILE,
        )
    }
    fn metrics(r: &EvalReport) -> maskflow_stage::Metrics {
        use maskflow_stage::Scalar;
        let mut scalars = vec![Scalar::headline("accuracy", r.accuracy), Scalar::headline("log_loss", r.log_loss)];
        if let Some(a) = r.mean_corruption_accuracy {
            scalars.push(Scalar::headline("corruption_accuracy", a));
        }
        scalars.push(Scalar::other("balanced_accuracy", r.balanced_accuracy));
        scalars.push(Scalar::other("error_rate", r.error_rate));
        maskflow_stage::Metrics {
            scalars,
            curves: Vec::new(),
            confusion: Some(maskflow_stage::Confusion { classes: r.classes.clone(), counts: r.confusion_matrix.clone() }),
        }
    }
}

/// What made an eval result: exactly what its key covers.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub key: String,
    pub params: EvalParams,
    /// Slot → key of each input artifact.
    pub inputs: BTreeMap<String, String>,
}

/// What the stage reads.
pub struct Inputs<'a> {
    /// A `trained_model` artifact.
    pub model_dir: &'a Path,
    /// A `shard_set` artifact of the data to evaluate.
    pub data_dir: &'a Path,
    /// Its `index_table` (for the report's data summary), when known.
    pub index_dir: Option<&'a Path>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub data: String,
    pub splits: Vec<String>,
    pub images: u64,
    pub accuracy: f64,
    pub error_rate: f64,
    pub log_loss: f64,
    pub roc_auc: Option<f64>,
    pub balanced_accuracy: f64,
    pub confusion_matrix: Vec<Vec<u64>>,
    pub classes: Vec<String>,
    pub classes_without_support: Vec<String>,
    /// Mean accuracy over the corruptions scored (none when the robustness section is off).
    #[serde(default)]
    pub mean_corruption_accuracy: Option<f64>,
    pub seconds: f64,
}

/// Where and how the stage computes.
pub struct EvalRuntime {
    pub device: Device,
    pub threads: usize,
    pub progress: bool,
}

/// Maps the evaluated data's labels onto the model's classes; refuses data with classes the model
/// does not know, naming both lists.
pub fn class_mapping(data_classes: &[String], model_classes: &[String]) -> Result<Vec<usize>> {
    let unknown: Vec<&String> = data_classes.iter().filter(|c| !model_classes.contains(c)).collect();
    if !unknown.is_empty() {
        bail!(
            "the evaluated data has classes the model does not know: {unknown:?} (data classes {data_classes:?}, \
             model classes {model_classes:?})"
        );
    }
    Ok(data_classes.iter().map(|c| model_classes.iter().position(|m| m == c).unwrap_or(0)).collect())
}

/// Runs the stage into `out_dir`.
pub fn run(inputs: &Inputs, params: &EvalParams, rt: &EvalRuntime, out_dir: &Path) -> Result<EvalReport> {
    let started = std::time::Instant::now();
    let device = rt.device;
    tch::set_num_threads(rt.threads.max(1) as i32);
    let (model, cfg) = maskflow_models::load_trained(inputs.model_dir, device)?;
    let meta = ShardSetMeta::read(inputs.data_dir)?;
    let mapping = class_mapping(&meta.classes, &cfg.classes)?;
    let splits = params.splits.unwrap_or(Splits::Valid);
    let index = inputs.index_dir.map(IndexSummary::read).transpose()?;
    let data_name = match (splits, inputs.index_dir.map(IndexDataset::read).transpose()?) {
        (Splits::Valid, _) => "the validation split".to_string(),
        (s, Some(ds)) => format!("{} ({})", ds.root.display(), s.names().join(" + ")),
        (s, None) => format!("the {} split(s)", s.names().join(" + ")),
    };
    let limit = cfg.memory_limit_mb.saturating_mul(1 << 20);
    let mut data = data::open_splits(inputs.data_dir, splits.names(), meta.classes.len(), cfg.data, limit)?;
    if data.is_empty() {
        bail!("nothing to evaluate: {data_name} has no images");
    }
    if data.size < cfg.image_size {
        bail!("the evaluated images are {}² but the model was trained at {}²", data.size, cfg.image_size);
    }
    data.label_idx = data.label_idx.iter().map(|&l| mapping[l as usize] as i64).collect();
    data.labels = tch::Tensor::from_slice(&data.label_idx);

    let options = InferOptions {
        out_size: cfg.image_size,
        batch_size: cfg.inference_batch_size,
        device,
        channels_last: cfg.channels_last,
        precision: cfg.inference_precision,
        view: Default::default(),
    };
    let (_, _, probs) = infer::evaluate_tta(&model, &data, &options, params.tta)?;
    let probs = probs.to_kind(tch::Kind::Double);
    let k = cfg.classes.len();
    let flat: Vec<f64> = Vec::<f64>::try_from(probs.flatten(0, -1)).context("reading probabilities")?;
    let rows: Vec<Vec<f64>> = flat.chunks(k).map(<[f64]>::to_vec).collect();
    let actual: Vec<usize> = data.label_idx.iter().map(|&l| l as usize).collect();
    let mut m = metrics::compute(&actual, &rows, &cfg.classes);
    if !params.robustness.is_empty() {
        let plan = robustness::Plan {
            families: &params.robustness,
            severities: &params.severities,
            tta: params.tta,
            progress: rt.progress,
            classes: k,
        };
        let r = robustness::score(&model, &data, &options, &plan, m.accuracy)?;
        robustness::heatmap(out_dir, &r)?;
        m.robustness = Some(r);
    }
    let predicted: Vec<usize> = rows.iter().map(|p| metrics::argmax(p)).collect();
    let cm = metrics::confusion_matrix(&actual, &predicted, k);
    let losses: Vec<f64> = actual.iter().zip(&rows).map(|(&a, p)| -p[a].clamp(1e-15, 1.0).ln()).collect();

    write_json_atomic(&out_dir.join(METRICS_FILE), &m)?;
    write_confusion(out_dir, &cm, &cfg.classes)?;
    // Copies share a group: byte-identical ones always, near-duplicates too when the index is known.
    let index_rows = match inputs.index_dir {
        Some(dir) => Some(maskflow_contracts::index::read_index(&dir.join(maskflow_contracts::index::INDEX_FILE))?),
        None => None,
    };
    let group_keys = group_keys(&data.hashes, index_rows.as_deref());
    let groups = duplicate_groups(&group_keys);
    let distinct = distinct_per_cell(&actual, &predicted, &groups);
    let mc: Vec<Confused> = metrics::most_confused(&cm, &cfg.classes, params.most_confused_min)
        .into_iter()
        .map(|(a, p, count)| {
            let cell = (cfg.classes.iter().position(|c| *c == a).unwrap_or(0), cfg.classes.iter().position(|c| *c == p).unwrap_or(0));
            Confused { distinct: distinct.get(&cell).copied().unwrap_or(0), actual: a, predicted: p, count }
        })
        .collect();
    let mut csv = String::from("actual,predicted,count,distinct_images\n");
    for c in &mc {
        csv.push_str(&format!("{},{},{},{}\n", c.actual, c.predicted, c.count, c.distinct));
    }
    write_atomic(&out_dir.join("most_confused.csv"), csv.as_bytes())?;
    let preds = Predictions { actual: &actual, predicted: &predicted, probs: &rows, losses: &losses };
    let table: Vec<PredictionRow> = (0..actual.len())
        .map(|i| PredictionRow {
            content_hash: data.hashes[i].clone(),
            path: data.paths[i].clone(),
            label: cfg.classes[actual[i]].clone(),
            predicted: cfg.classes[predicted[i]].clone(),
            probabilities: rows[i].iter().map(|&p| p as f32).collect(),
            loss: losses[i],
        })
        .collect();
    write_predictions(&out_dir.join(PREDICTIONS_FILE), &cfg.classes, &table)?;
    top_losses(out_dir, &data, &cfg.classes, &preds, &groups, params.top_losses)?;
    for f in [CURVES_FILE, LR_FIND_PNG, TRAIN_METRICS_FILE, SHOW_BATCH_FILE] {
        let src = inputs.model_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            write_atomic(&out_dir.join(format!("train_{f}")), &bytes)?;
        }
    }
    let summary = Summary {
        data: data_name.clone(),
        classes: meta.classes.clone(),
        images: data.len(),
        per_class: data.counts(k).iter().zip(&cfg.classes).map(|(c, n)| (n.clone(), *c)).collect(),
        index: index.clone(),
    };
    write_json_atomic(&out_dir.join("summary.json"), &summary)?;
    let page = report::Page { title_data: &data_name, index: index.as_ref(), cfg: &cfg, provenance: &inputs.provenance };
    report::write(out_dir, &page, &m, &cm, &mc)?;
    Ok(EvalReport {
        data: data_name,
        splits: splits.names().iter().map(|s| s.to_string()).collect(),
        images: m.images,
        accuracy: m.accuracy,
        error_rate: m.error_rate,
        log_loss: m.log_loss,
        roc_auc: m.roc_auc,
        balanced_accuracy: m.balanced_accuracy,
        confusion_matrix: cm,
        classes: cfg.classes.clone(),
        classes_without_support: m.classes_without_support.clone(),
        mean_corruption_accuracy: m.robustness.as_ref().map(|r| r.mean_corruption_accuracy),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    data: String,
    classes: Vec<String>,
    images: usize,
    per_class: BTreeMap<String, usize>,
    index: Option<IndexSummary>,
}

fn write_confusion(out_dir: &Path, cm: &[Vec<u64>], names: &[String]) -> Result<()> {
    let mut csv = format!("actual\\predicted,{}\n", names.join(","));
    for (n, row) in names.iter().zip(cm) {
        csv.push_str(&format!("{n},{}\n", row.iter().map(u64::to_string).collect::<Vec<_>>().join(",")));
    }
    write_atomic(&out_dir.join("confusion_matrix.csv"), csv.as_bytes())?;
    write_json_atomic(
        &out_dir.join("confusion_matrix.json"),
        &serde_json::json!({"orientation": "[actual][predicted]", "classes": names, "matrix": cm}),
    )?;
    let counts: Vec<Vec<f64>> = cm.iter().map(|r| r.iter().map(|&c| c as f64).collect()).collect();
    maskflow_plot::confusion_png(&out_dir.join("confusion_matrix.png"), &counts, names, false, "Confusion matrix")?;
    let norm: Vec<Vec<f64>> = cm
        .iter()
        .map(|r| {
            let s: u64 = r.iter().sum();
            r.iter().map(|&c| if s == 0 { 0.0 } else { c as f64 / s as f64 }).collect()
        })
        .collect();
    maskflow_plot::confusion_png(
        &out_dir.join("confusion_matrix_normalized.png"),
        &norm,
        names,
        true,
        "Confusion matrix (row-normalised)",
    )
}

/// Per image: actual and predicted class, probabilities, loss.
struct Predictions<'a> {
    actual: &'a [usize],
    predicted: &'a [usize],
    probs: &'a [Vec<f64>],
    losses: &'a [f64],
}

/// A most-confused cell: how many images, and how many distinct ones (copies count once).
pub struct Confused {
    pub actual: String,
    pub predicted: String,
    pub count: u64,
    pub distinct: usize,
}

/// Per image, what makes it a copy of another: the index's group (near-duplicates by dHash,
/// byte-identical files) when the index is known, else its content hash.
fn group_keys(hashes: &[String], index: Option<&[maskflow_contracts::index::IndexRow]>) -> Vec<String> {
    let group_of: BTreeMap<&str, &str> =
        index.unwrap_or_default().iter().map(|r| (r.content_hash.as_str(), r.group_hash.as_str())).collect();
    hashes.iter().map(|h| group_of.get(h.as_str()).copied().unwrap_or(h).to_string()).collect()
}

/// Per row, the first row with the same group key (content hash, or the index's near-duplicate
/// group): copies share a group.
fn duplicate_groups(hashes: &[String]) -> Vec<usize> {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    hashes.iter().enumerate().map(|(i, h)| *first.entry(h.as_str()).or_insert(i)).collect()
}

/// Distinct images (duplicate groups) per (actual, predicted) cell.
fn distinct_per_cell(actual: &[usize], predicted: &[usize], groups: &[usize]) -> BTreeMap<(usize, usize), usize> {
    let mut cells: BTreeMap<(usize, usize), std::collections::BTreeSet<usize>> = BTreeMap::new();
    for i in 0..actual.len() {
        cells.entry((actual[i], predicted[i])).or_default().insert(groups[i]);
    }
    cells.into_iter().map(|(k, v)| (k, v.len())).collect()
}

/// The `k` highest-loss images, one per duplicate group: (row, copies in the evaluated data).
fn top_loss_rows(losses: &[f64], groups: &[usize], k: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..losses.len()).collect();
    order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]).then(a.cmp(&b)));
    let mut size: BTreeMap<usize, usize> = BTreeMap::new();
    for &g in groups {
        *size.entry(g).or_default() += 1;
    }
    let mut seen = std::collections::BTreeSet::new();
    order.into_iter().filter(|&i| seen.insert(groups[i])).take(k).map(|i| (i, size[&groups[i]])).collect()
}

fn top_losses(out_dir: &Path, data: &SplitData, names: &[String], p: &Predictions, groups: &[usize], k: usize) -> Result<()> {
    let Predictions { actual, predicted, probs, losses } = *p;
    let tiles: Vec<Tile> = top_loss_rows(losses, groups, k)
        .into_iter()
        .map(|(i, copies)| {
            let times = if copies > 1 { format!("  ×{copies}") } else { String::new() };
            Ok(Tile {
                image: data::to_rgb(&data.image(i)?),
                title: vec![
                    format!("{} / {}{times}", names[predicted[i]], names[actual[i]]),
                    format!("loss {:.2} / p {:.2}", losses[i], probs[i][actual[i]]),
                ],
            })
        })
        .collect::<Result<_>>()?;
    let cols = (tiles.len() as f64).sqrt().ceil().max(1.0) as usize;
    maskflow_plot::image_grid(
        &out_dir.join("top_losses.png"),
        &tiles,
        cols,
        180,
        "Top losses — predicted / actual (×N: N copies), loss / p(actual)",
    )?;
    Ok(())
}

