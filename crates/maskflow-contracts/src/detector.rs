//! The `detector` artifact the `dettrain` stage writes: a face detector fine-tuned on annotated
//! photos — `detector.safetensors` (the SSD's variables under their original names, loadable as the
//! imported weights are), `detector.json` ([`DetectorCard`]), `metrics.jsonl` (an
//! [`DetEpoch`] per epoch) and `curves.png`. The export stage copies the first two into a bundle.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const WEIGHTS_FILE: &str = "detector.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.png";

/// `detector.json`: what the weights are and how they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorCard {
    pub schema: u32,
    /// The architecture and input size: `ssd` (360²) or `ssd260`.
    pub kind: String,
    /// Its classes, in output order.
    pub classes: Vec<String>,
    /// The imported weights it started from (registry name and sha256).
    pub started_from: String,
    /// Photos trained on and held out, faces taught.
    pub train_photos: usize,
    pub valid_photos: usize,
    pub train_faces: usize,
    /// Epochs with the body frozen, then of the whole network.
    pub head_epochs: usize,
    pub full_epochs: usize,
    /// The last epoch's loss on the held photos.
    pub valid_loss: Option<f64>,
    /// The annotation reader's rejections, by reason; photos that did not decode.
    pub rejected: BTreeMap<String, usize>,
    pub unreadable: usize,
}

crate::json_file!(DetectorCard, "detector.json", "detector card", 1);

/// One epoch's figures (`metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetEpoch {
    /// `frozen` (the heads) or `unfrozen` (everything).
    pub phase: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub box_loss: f64,
    pub class_loss: f64,
    pub valid_loss: Option<f64>,
    pub seconds: f64,
}
