//! `eval_result`: a model measured on labelled data.
//!
//! - `metrics.json`: [`Metrics`] (per class, macro, balanced, log loss, ROC AUC).
//! - `predictions.parquet`: one row per image ([`PredictionRow`]): `content_hash`, `path`, `label`,
//!   `predicted`, `probabilities` (fixed-size list of float32 in class order; the class list is in
//!   the schema's `classes` metadata), `loss`.
//! - `confusion_matrix.{csv,json,png}`, `most_confused.csv`, `top_losses.png`, `report.html`.

use serde::{Deserialize, Serialize};

pub const METRICS_FILE: &str = "metrics.json";
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
pub const REPORT_FILE: &str = "report.html";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub images: u64,
    pub accuracy: f64,
    pub error_rate: f64,
    pub per_class: Vec<ClassMetrics>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Mean recall over the classes that have support.
    pub balanced_accuracy: f64,
    /// Mean −ln p(actual class), probabilities clipped to [1e-15, 1].
    pub log_loss: f64,
    /// For two classes: ROC AUC of the second class's probability (ties count one half).
    pub roc_auc: Option<f64>,
    /// Classes with no image in the evaluated data (their recall is undefined, reported as 0).
    pub classes_without_support: Vec<String>,
    /// The same data under corruptions (absent when the eval scored none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robustness: Option<Robustness>,
}

/// Accuracy under ImageNet-C-style corruptions (`maskflow_data::corrupt`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Robustness {
    /// Accuracy on the clean images (the same as the top level's).
    pub clean_accuracy: f64,
    /// Mean accuracy over every corruption × severity scored.
    pub mean_corruption_accuracy: f64,
    /// Per family: mean accuracy over its severities.
    pub per_family: Vec<FamilyAccuracy>,
    /// Every corruption × severity.
    pub scores: Vec<CorruptionScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FamilyAccuracy {
    pub family: String,
    pub accuracy: f64,
}

/// One corruption at one severity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorruptionScore {
    pub family: String,
    /// 1 (mildest) … 5.
    pub severity: u8,
    /// The strength in the family's unit (`unit`).
    pub level: f64,
    pub unit: String,
    pub accuracy: f64,
    pub log_loss: f64,
    /// Recall per class, in class order (which class the corruption hurts).
    pub recall: Vec<f64>,
}

/// Test-time augmentation: which views of each image are averaged (eval and predict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The plain view.
    #[default]
    None,
    /// The plain view and its mirror image, probabilities averaged.
    Flip,
    /// fastai's `TTA(beta=0.4, scale=1.35)`: 0.4 × the plain view + 0.6 × the mean of eight views
    /// (zoomed 1.35× towards each corner, each also mirrored). Nine passes.
    Fastai,
}

impl Tta {
    /// The views — output → source transforms in normalised coordinates (row-major 3×3) — and
    /// the weight of each view's probabilities (summing to 1).
    pub fn views(self) -> Vec<([f64; 9], f64)> {
        const ID: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        const FLIP: [f64; 9] = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        match self {
            Tta::None => vec![(ID, 1.0)],
            Tta::Flip => vec![(ID, 0.5), (FLIP, 0.5)],
            Tta::Fastai => {
                let (scale, beta) = (1.35f64, 0.4);
                let k = 1.0 - 1.0 / scale;
                let mut v = vec![(ID, beta)];
                // fastai's order: i & 1 → row, i & 2 → column, i & 4 → flipped.
                for i in 0..8u32 {
                    let row = if i & 1 != 0 { 1.0 } else { 0.0 };
                    let col = if i & 2 != 0 { 1.0 } else { 0.0 };
                    let mut z = [1.0 / scale, 0.0, k * (2.0 * col - 1.0), 0.0, 1.0 / scale, k * (2.0 * row - 1.0), 0.0, 0.0, 1.0];
                    if i & 4 != 0 {
                        z[0] = -z[0]; // mirror, then zoom: (x, y) → (−x/s + t, y/s + u)
                    }
                    v.push((z, (1.0 - beta) / 8.0));
                }
                v
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
            Tta::Fastai => "fastai",
        }
    }
}

pub fn read_metrics(dir: &std::path::Path) -> Result<Metrics, crate::ContractError> {
    crate::read_json(&dir.join(METRICS_FILE), "eval metrics")
}

/// One row of `predictions.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    pub content_hash: String,
    pub path: String,
    pub label: String,
    pub predicted: String,
    pub probabilities: Vec<f32>,
    pub loss: f64,
}

#[cfg(feature = "tables")]
mod table {
    use super::PredictionRow;
    use anyhow::Context;
    use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::path::Path;
    use std::sync::Arc;

    /// Writes `predictions.parquet` (atomically).
    pub fn write_predictions(path: &Path, classes: &[String], rows: &[PredictionRow]) -> anyhow::Result<()> {
        let k = classes.len() as i32;
        anyhow::ensure!(rows.iter().all(|r| r.probabilities.len() == classes.len()), "predictions: probabilities per row ≠ classes");
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.probabilities.iter().copied()).collect();
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let probs = FixedSizeListArray::try_new(item.clone(), k, Arc::new(Float32Array::from(flat)), None)?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("classes".to_string(), serde_json::to_string(classes)?);
        let schema = Arc::new(
            Schema::new(vec![
                Field::new("content_hash", DataType::Utf8, false),
                Field::new("path", DataType::Utf8, false),
                Field::new("label", DataType::Utf8, false),
                Field::new("predicted", DataType::Utf8, false),
                Field::new("probabilities", DataType::FixedSizeList(item, k), false),
                Field::new("loss", DataType::Float64, false),
            ])
            .with_metadata(meta),
        );
        let s = |f: fn(&PredictionRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
        let cols: Vec<ArrayRef> = vec![
            s(|r| &r.content_hash),
            s(|r| &r.path),
            s(|r| &r.label),
            s(|r| &r.predicted),
            Arc::new(probs),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.loss))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        let mut bytes = Vec::new();
        {
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
            w.write(&batch)?;
            w.close()?;
        }
        maskflow_core::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads `predictions.parquet`: the class list and the rows.
    pub fn read_predictions(path: &Path) -> anyhow::Result<(Vec<String>, Vec<PredictionRow>)> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{}: not a Parquet file", path.display()))?;
        let classes: Vec<String> = builder
            .schema()
            .metadata()
            .get("classes")
            .map(|c| serde_json::from_str(c))
            .transpose()?
            .with_context(|| format!("{}: no classes metadata", path.display()))?;
        let mut out = Vec::new();
        for batch in builder.build()? {
            let b = batch?;
            let col = |name: &str| b.column_by_name(name).with_context(|| format!("{}: no column {name}", path.display()));
            let st = |name: &str| -> anyhow::Result<StringArray> {
                col(name)?.as_any().downcast_ref::<StringArray>().cloned().with_context(|| format!("{name}: not utf8"))
            };
            let (h, p, l, pr) = (st("content_hash")?, st("path")?, st("label")?, st("predicted")?);
            let probs = col("probabilities")?
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .cloned()
                .context("probabilities: not a fixed-size list")?;
            let loss = col("loss")?.as_any().downcast_ref::<Float64Array>().cloned().context("loss: not float64")?;
            for i in 0..b.num_rows() {
                let v = probs.value(i);
                let v = v.as_any().downcast_ref::<Float32Array>().context("probabilities: not float32")?;
                out.push(PredictionRow {
                    content_hash: h.value(i).to_string(),
                    path: p.value(i).to_string(),
                    label: l.value(i).to_string(),
                    predicted: pr.value(i).to_string(),
                    probabilities: v.values().to_vec(),
                    loss: loss.value(i),
                });
            }
        }
        Ok((classes, out))
    }
}

#[cfg(feature = "tables")]
pub use table::{read_predictions, write_predictions};
