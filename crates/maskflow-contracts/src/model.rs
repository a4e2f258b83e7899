//! `trained_model`: what the train stage hands on.
//!
//! - `model.safetensors`: the weights (torchvision names for the body, `head.N.*` for fastai's head).
//! - `train_config.json`: [`TrainConfig`], everything needed to rebuild and run the model, plus the
//!   training recipe as `key = value` pairs for people and model cards.
//! - `metrics.jsonl`: one [`EpochMetrics`] per epoch; `curves.png`, `show_batch.png`, and with
//!   `lr = "find"` `lr_find.csv` / `lr_find.png`.
//!
//! The description types of a model ([`Arch`], [`HeadConfig`], [`Precision`], [`DataMode`]) live here,
//! without torch; `maskflow-models` builds the networks they describe.

use crate::Preprocess;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MODEL_FILE: &str = "model.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.png";
pub const SHOW_BATCH_FILE: &str = "show_batch.png";
pub const LR_FIND_CSV: &str = "lr_find.csv";
pub const LR_FIND_PNG: &str = "lr_find.png";

/// The architectures maskflow can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// torchvision `mobilenet_v2`: body = `features` (1280 × 7 × 7 at 224²).
    MobilenetV2,
    /// torchvision `resnet18`: body = conv1 … layer4 (512 × 7 × 7).
    Resnet18,
    /// torchvision `resnet34`: body = conv1 … layer4 (512 × 7 × 7).
    Resnet34,
    /// torchvision `resnet50`: body = conv1 … layer4 (2048 × 7 × 7); the notebook's choice.
    Resnet50,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::MobilenetV2, Arch::Resnet18, Arch::Resnet34, Arch::Resnet50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::MobilenetV2 => "mobilenet_v2",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Channels of the body's last feature map.
    pub fn feature_width(self) -> i64 {
        match self {
            Arch::MobilenetV2 => 1280,
            Arch::Resnet18 | Arch::Resnet34 => 512,
            Arch::Resnet50 => 2048,
        }
    }

    /// Prefixes of torchvision's ImageNet classifier, which the body does not contain.
    pub fn classifier_prefixes(self) -> &'static [&'static str] {
        match self {
            Arch::MobilenetV2 => &["classifier."],
            _ => &["fc."],
        }
    }

    /// The layer group (0 or 1) of a body parameter, as fastai splits the body in two halves:
    /// resnet: [conv1, bn1, layer1, layer2] | [layer3, layer4]; mobilenet_v2: features.0–9 | features.10–18.
    /// (Group 2 is the head.)
    pub fn body_group(self, name: &str) -> usize {
        match self {
            Arch::MobilenetV2 => {
                let idx = name
                    .strip_prefix("features.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .unwrap_or(0);
                usize::from(idx >= 10)
            }
            _ => usize::from(name.starts_with("layer3.") || name.starts_with("layer4.")),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the head pools the body's feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// fastai's `AdaptiveConcatPool2d`: max ‖ avg → 2·C features (fastai default).
    Concat,
    Avg,
    Max,
}

/// The head's shape. Defaults are fastai v1 `create_head(nf, nc, lin_ftrs=None, ps=0.5, concat_pool=True)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Hidden width (fastai `lin_ftrs=[512]`).
    pub width: i64,
    /// Dropout `ps`: the first dropout is ps/2, the last ps (fastai `ps=0.5` → 0.25, 0.5).
    pub dropout: f64,
    /// Pooling (fastai `concat_pool=True`).
    pub pool: Pool,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { width: 512, dropout: 0.5, pool: Pool::Concat }
    }
}

/// Number format of inference passes (validation, fixed-body features, the eval stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// A bf16 copy of the weights on bf16 inputs (tch has no CPU autocast); logits back in fp32.
    Bf16,
}

/// How a split's pixels are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// In memory when the split's pixels fit in `memory_limit_mb`, streamed otherwise.
    #[default]
    Auto,
    /// One (N, H, W, 3) uint8 tensor: random access, any order.
    Memory,
    /// Row groups read from the shards as the epoch needs them; training order from a shuffle buffer.
    Stream,
}

/// `train_config.json`: written by train through this struct, read by eval, export and `predict`'s
/// bundle maker through the same struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub schema: u32,
    pub arch: Arch,
    pub head: HeadConfig,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// The side of the images the model was trained on.
    pub image_size: i64,
    pub channels_last: bool,
    /// How inference runs (eval uses the same).
    pub inference_precision: Precision,
    pub inference_batch_size: usize,
    /// How eval holds data (the trainer's setting).
    pub data: DataMode,
    pub memory_limit_mb: u64,
    /// How files became pixels (the shard set's), for the bundle and `predict`.
    pub preprocess: Preprocess,
    /// The pretrained weights' registry name, or "none".
    pub pretrained: String,
    /// The content fingerprint of the training folder.
    pub dataset_fingerprint: String,
    /// Every training parameter as `name = value` (TOML-style values, nested tables dotted).
    pub recipe: BTreeMap<String, String>,
}

crate::json_file!(TrainConfig, "train_config.json", "training configuration", 2);

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// The training phase: `frozen` (body frozen) or `unfrozen`.
    pub phase: String,
    /// 1-based within the phase.
    pub epoch: usize,
    /// fastai's printed train loss: the smoothed (β = 0.98, bias-corrected) value at the epoch's end.
    pub train_loss_ema: f64,
    /// The true mean of the epoch's batch losses.
    pub train_loss_mean: f64,
    pub valid_loss: f64,
    pub accuracy: f64,
    pub error_rate: f64,
    /// The epoch's peak learning rate per layer group (one-cycle's max times the group's rate).
    pub lrs: Vec<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

pub fn read_epoch_metrics(dir: &std::path::Path) -> Result<Vec<EpochMetrics>, crate::ContractError> {
    read_epoch_metrics_file(&dir.join(METRICS_FILE))
}

/// Reads a `metrics.jsonl` at any path (eval keeps a copy as `train_metrics.jsonl`).
pub fn read_epoch_metrics_file(path: &std::path::Path) -> Result<Vec<EpochMetrics>, crate::ContractError> {
    let path = path.to_path_buf();
    let text = std::fs::read_to_string(&path).map_err(|source| crate::ContractError::Read { path: path.clone(), source })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| crate::ContractError::Parse {
                path: path.clone(),
                what: "epoch metrics line",
                source,
            })
        })
        .collect()
}

/// Flattens a serialisable value into `dotted.name = value` lines, values written as TOML would
/// (strings quoted, arrays in brackets): how a recipe is shown to people, never Rust's `Debug`.
pub fn flatten_recipe<T: Serialize>(value: &T) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&name, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), toml_like(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(value) {
        walk("", &v, &mut out);
    }
    out
}

/// A JSON value written as TOML would write it (`null` as `none`).
pub fn toml_like(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => format!("{s:?}"),
        serde_json::Value::Array(a) => format!("[{}]", a.iter().map(toml_like).collect::<Vec<_>>().join(", ")),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format_float(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Shortest round-trip form, in scientific notation below 1e-3 (`1e-5`, not `0.00001`).
pub fn format_float(f: f64) -> String {
    if f != 0.0 && f.abs() < 1e-3 {
        format!("{f:e}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_is_toml_like_not_debug() {
        let v = serde_json::json!({"frozen_mode": "fixed_body", "lr": [1e-5, 1e-4], "one": 0.003, "size": null, "head": {"width": 512}});
        let r = flatten_recipe(&v);
        assert_eq!(r["frozen_mode"], "\"fixed_body\"");
        assert_eq!(r["lr"], "[1e-5, 1e-4]");
        assert_eq!(r["one"], "0.003");
        assert_eq!(r["size"], "none");
        assert_eq!(r["head.width"], "512");
    }
}
