//! `bundle`: what a deployment takes (written by export, read by `predict`).
//!
//! - `model.pt`: TorchScript; uint8 (N, H, W, 3) RGB in, float32 (N, classes) probabilities out,
//!   normalisation inside.
//! - `model.safetensors`: the weights.
//! - `model_card.json`: [`ModelCard`].
//! - `README.md`: how to load it from Python and Rust.

use crate::eval::Metrics;
use crate::model::Arch;
use crate::Preprocess;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MODULE_FILE: &str = "model.pt";
pub const WEIGHTS_FILE: &str = crate::model::MODEL_FILE;
pub const README_FILE: &str = "README.md";

/// `model_card.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub schema: u32,
    pub name: String,
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// How files become the input (decode, EXIF, RGB, resize): exactly what training saw.
    pub preprocessing: Preprocess,
    pub normalization: Normalization,
    pub arch: Arch,
    pub architecture: String,
    /// The training recipe, `name = value`.
    pub training: BTreeMap<String, String>,
    /// The eval metrics of the model on the data the pipeline evaluated, when export had them.
    pub metrics: Option<Metrics>,
    pub dataset_fingerprint: String,
    /// The keys of the artifacts this bundle was made from (slot → key).
    pub upstream: BTreeMap<String, String>,
    pub maskflow_version: String,
    /// A fine-tuned face detector shipped beside the classifier (`detector.safetensors`, made by
    /// `dettrain`): `maskflow detect --bundle` finds faces with it. `null` when there is none.
    pub detector: Option<crate::detector::DetectorCard>,
}

crate::json_file!(ModelCard, "model_card.json", "model card", 2);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub layout: String,
    pub dtype: String,
    pub height: i64,
    pub width: i64,
    pub channels: i64,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub inside_module: bool,
    pub scale: String,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}
