//! maskflow-eval: the eval stage. A trained model on the validation split of the prep shards, or on
//! any other labelled folder (indexed and prepped by the same code, so it is preprocessed exactly as
//! the training data was), with fastai's interpretation outputs and a static HTML run report.
//!
//! Outputs: `metrics.json`, `confusion_matrix.{csv,json,png}`, `confusion_matrix_normalized.png`,
//! `most_confused.csv`, `top_losses.png`, `predictions.parquet`, `show_batch.png`, `summary.json`,
//! `report.html` (with copies of the training curves and lr-finder plot beside it).

pub mod metrics;
mod report;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use maskflow_core::fsutil::{write_atomic, write_json_atomic};
use maskflow_models::classifier::{load_named, Classifier};
use maskflow_plot::Tile;
use maskflow_train::augment;
use maskflow_train::data::{self, SplitData};
use maskflow_train::TrainParams;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Tensor};

pub const STAGE: &str = "eval";
pub const VERSION: u32 = 1;
pub const METRICS_FILE: &str = "metrics.json";
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
pub const REPORT_FILE: &str = "report.html";

/// `[eval]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Images in the top-losses grid (fastai `plot_top_losses(9)`).
    pub top_losses: usize,
    /// Images in the show_batch grid (fastai `show_batch(rows=3)` → 9).
    pub show_batch: usize,
    /// Minimum count for `most_confused` (fastai `min_val=1`).
    pub most_confused_min: u64,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams { top_losses: 9, show_batch: 9, most_confused_min: 1 }
    }
}

/// What the stage reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The train artifact (model.safetensors, train_config.json, metrics.jsonl, curves.png, …).
    pub train_dir: PathBuf,
    /// The prep artifact of the data to evaluate.
    pub prep_dir: PathBuf,
    /// Which splits of it: `["valid"]` for the pipeline's validation split, both for a whole folder.
    pub splits: Vec<String>,
    /// The class names of the evaluated data (its index's classes.json), in its label order.
    pub data_classes: Vec<String>,
    /// The prep artifact with the training split (for show_batch); None to skip it.
    pub train_prep_dir: Option<PathBuf>,
    /// The index report of the evaluated data (for the summary).
    pub index_report: Value,
    /// What made this: stage keys and params (for the report's provenance table).
    pub provenance: Value,
    /// A name for the evaluated data in titles ("validation split", a folder path).
    pub data_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub data: String,
    pub images: u64,
    pub accuracy: f64,
    pub error_rate: f64,
    pub log_loss: f64,
    pub roc_auc: Option<f64>,
    pub balanced_accuracy: f64,
    pub confusion_matrix: Vec<Vec<u64>>,
    pub classes: Vec<String>,
    pub classes_without_support: Vec<String>,
    pub seconds: f64,
}

/// The resolved training configuration the train stage wrote.
#[derive(Debug, Clone, Deserialize)]
pub struct TrainConfig {
    pub params: TrainParams,
    pub classes: Vec<String>,
    pub image_size: i64,
}

pub fn read_train_config(train_dir: &Path) -> Result<TrainConfig> {
    let p = train_dir.join(maskflow_train::CONFIG_FILE);
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Builds the trained model from a train artifact.
pub fn load_model(train_dir: &Path, device: Device) -> Result<(Classifier, TrainConfig)> {
    let cfg = read_train_config(train_dir)?;
    let mut model = Classifier::new(cfg.params.arch, cfg.classes.len() as i64, &cfg.params.head, device);
    let st = train_dir.join(maskflow_train::MODEL_FILE);
    let tensors = Tensor::read_safetensors(&st).with_context(|| format!("reading {}", st.display()))?;
    load_named(&model.vs, &tensors, &[], &[]).with_context(|| format!("loading {}", st.display()))?;
    if cfg.params.channels_last {
        model.to_channels_last();
    }
    Ok((model, cfg))
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

/// An (H, W, 3) uint8 tensor as an image.
fn to_rgb(image: &Tensor) -> image::RgbImage {
    let t = image.to_device(Device::Cpu).contiguous();
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    let len = (h * w * 3) as usize;
    let mut buf = vec![0u8; len];
    t.copy_data_u8(&mut buf, len);
    image::RgbImage::from_raw(w, h, buf).unwrap_or_else(|| image::RgbImage::new(1, 1))
}

/// Runs the stage into `out_dir`.
pub fn run(inputs: &Inputs, params: &EvalParams, device: Device, threads: usize, out_dir: &Path) -> Result<EvalReport> {
    let started = std::time::Instant::now();
    tch::set_num_threads(threads.max(1) as i32);
    let (model, cfg) = load_model(&inputs.train_dir, device)?;
    let mapping = class_mapping(&inputs.data_classes, &cfg.classes)?;
    let splits: Vec<&str> = inputs.splits.iter().map(String::as_str).collect();
    let limit = cfg.params.memory_limit_mb.saturating_mul(1 << 20);
    let mut data = data::open_splits(&inputs.prep_dir, &splits, inputs.data_classes.len(), cfg.params.data, limit)?;
    if data.is_empty() {
        bail!("nothing to evaluate: {} has no images in {:?}", inputs.data_name, inputs.splits);
    }
    if data.size < cfg.image_size {
        bail!("the evaluated images are {}² but the model was trained at {}²", data.size, cfg.image_size);
    }
    data.label_idx = data.label_idx.iter().map(|&l| mapping[l as usize] as i64).collect();
    data.labels = Tensor::from_slice(&data.label_idx);

    let (_, _, probs) = maskflow_train::evaluate_split(
        &model,
        &data,
        cfg.image_size,
        cfg.params.valid_batch_size,
        device,
        cfg.params.channels_last,
        cfg.params.inference_precision,
    )?;
    let probs = probs.to_kind(tch::Kind::Double);
    let k = cfg.classes.len();
    let flat: Vec<f64> = Vec::<f64>::try_from(probs.flatten(0, -1)).context("reading probabilities")?;
    let rows: Vec<Vec<f64>> = flat.chunks(k).map(<[f64]>::to_vec).collect();
    let actual: Vec<usize> = data.label_idx.iter().map(|&l| l as usize).collect();
    let m = metrics::compute(&actual, &rows, &cfg.classes);
    let predicted: Vec<usize> = rows.iter().map(|p| metrics::argmax(p)).collect();
    let cm = metrics::confusion_matrix(&actual, &predicted, k);
    let losses: Vec<f64> = actual.iter().zip(&rows).map(|(&a, p)| -p[a].clamp(1e-15, 1.0).ln()).collect();

    write_json_atomic(&out_dir.join(METRICS_FILE), &m)?;
    write_confusion(out_dir, &cm, &cfg.classes)?;
    let mc = metrics::most_confused(&cm, &cfg.classes, params.most_confused_min);
    let mut csv = String::from("actual,predicted,count\n");
    for (a, p, c) in &mc {
        csv.push_str(&format!("{a},{p},{c}\n"));
    }
    write_atomic(&out_dir.join("most_confused.csv"), csv.as_bytes())?;
    let preds = Predictions { actual: &actual, predicted: &predicted, probs: &rows, losses: &losses };
    write_predictions(&out_dir.join(PREDICTIONS_FILE), &data, &cfg.classes, &preds)?;
    top_losses(out_dir, &data, &cfg.classes, &preds, params.top_losses)?;
    let show_batch_ok = match &inputs.train_prep_dir {
        Some(dir) if params.show_batch > 0 => {
            show_batch(&out_dir.join("show_batch.png"), dir, &cfg, params.show_batch)?;
            true
        }
        _ => false,
    };
    for f in [maskflow_train::CURVES_FILE, maskflow_train::LR_FIND_PNG, maskflow_train::METRICS_FILE] {
        let src = inputs.train_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            write_atomic(&out_dir.join(format!("train_{f}")), &bytes)?;
        }
    }
    let summary = serde_json::json!({
        "data": inputs.data_name,
        "classes": inputs.data_classes,
        "images": data.len(),
        "per_class": data.counts(k).iter().zip(&cfg.classes).map(|(c, n)| (n.clone(), *c)).collect::<std::collections::BTreeMap<_, _>>(),
        "index": inputs.index_report,
    });
    write_json_atomic(&out_dir.join("summary.json"), &summary)?;
    report::write(out_dir, inputs, &cfg, &m, &cm, &mc, show_batch_ok)?;
    Ok(EvalReport {
        data: inputs.data_name.clone(),
        images: m.images,
        accuracy: m.accuracy,
        error_rate: m.error_rate,
        log_loss: m.log_loss,
        roc_auc: m.roc_auc,
        balanced_accuracy: m.balanced_accuracy,
        confusion_matrix: cm,
        classes: cfg.classes.clone(),
        classes_without_support: m.classes_without_support.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
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

fn write_predictions(path: &Path, data: &SplitData, names: &[String], p: &Predictions) -> Result<()> {
    let Predictions { actual, predicted, probs, losses } = *p;
    let k = names.len() as i32;
    let flat: Vec<f32> = probs.iter().flatten().map(|&p| p as f32).collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let probs_arr = FixedSizeListArray::try_new(item.clone(), k, Arc::new(Float32Array::from(flat)), None)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("predicted", DataType::Utf8, false),
        Field::new("probabilities", DataType::FixedSizeList(item, k), false),
        Field::new("loss", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(data.hashes.clone())),
        Arc::new(StringArray::from(data.paths.clone())),
        Arc::new(StringArray::from(actual.iter().map(|&a| names[a].clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(predicted.iter().map(|&p| names[p].clone()).collect::<Vec<_>>())),
        Arc::new(probs_arr),
        Arc::new(Float64Array::from(losses.to_vec())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("classes".to_string(), serde_json::to_string(names)?);
    let schema = Arc::new(schema.as_ref().clone().with_metadata(meta));
    let batch = batch.with_schema(schema.clone())?;
    let mut bytes = Vec::new();
    {
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
        w.write(&batch)?;
        w.close()?;
    }
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

fn top_losses(out_dir: &Path, data: &SplitData, names: &[String], p: &Predictions, k: usize) -> Result<()> {
    let Predictions { actual, predicted, probs, losses } = *p;
    let mut order: Vec<usize> = (0..losses.len()).collect();
    order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]).then(a.cmp(&b)));
    let tiles: Vec<Tile> = order
        .iter()
        .take(k)
        .map(|&i| {
            Ok(Tile {
                image: to_rgb(&data.image(i)?),
                title: vec![
                    format!("{} / {}", names[predicted[i]], names[actual[i]]),
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
        "Top losses — predicted / actual, loss / probability of the actual class",
    )?;
    Ok(())
}

/// fastai's `show_batch`: augmented training images with their class.
fn show_batch(path: &Path, train_prep: &Path, cfg: &TrainConfig, n: usize) -> Result<()> {
    // Streamed: only the row groups of the n images shown are read.
    let train = data::open_splits(train_prep, &["train"], cfg.classes.len(), data::DataMode::Stream, 0)?;
    if train.is_empty() {
        return Ok(());
    }
    let p = &cfg.params;
    let order = data::epoch_order(&train.label_idx, cfg.classes.len(), p.seed, 0, 0, false);
    let plan = data::EpochPlan {
        order: order.into_iter().take(n).collect(),
        batch_size: n,
        drop_last: false,
        augment: Some((p.augment.clone(), p.seed, 0)),
        out_size: cfg.image_size,
        device: Device::Cpu,
        channels_last: false,
    };
    let batch = data::spawn_producer(&train, plan, n)
        .recv()
        .map_err(|_| anyhow::anyhow!("show_batch: no batch was produced"))??;
    let mean = Tensor::from_slice(&augment::MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&augment::STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let pixels =
        ((batch.x * std + mean).clamp(0.0, 1.0) * 255.0).round().to_kind(tch::Kind::Uint8).permute([0, 2, 3, 1]);
    let labels: Vec<i64> = Vec::<i64>::try_from(&batch.y)?;
    let tiles: Vec<Tile> = (0..labels.len())
        .map(|i| Tile { image: to_rgb(&pixels.get(i as i64)), title: vec![cfg.classes[labels[i] as usize].clone()] })
        .collect();
    let cols = (tiles.len() as f64).sqrt().ceil().max(1.0) as usize;
    maskflow_plot::image_grid(path, &tiles, cols, 180, "show_batch — augmented training images")?;
    Ok(())
}
