//! The `detection_result` artifact the `deteval` stage writes: a face detector (and what labels its
//! faces) scored on annotated photos.
//!
//! - `detection.json` ([`DetectionResult`]): the figures — COCO's AP for faces and per class, per
//!   face size; recall and precision at the operating threshold; the mask label's confusion matrix
//!   on matched faces; what the annotations reader rejected, counted by reason.
//! - `detections.json` ([`Scored`]): the faces and the detections exactly as the metrics took them,
//!   so that pycocotools (or anything else) can recompute the figures.
//! - `pr_curve.png`, `report.html` and `worst/NN.jpg` (the worst photos, annotated).

use maskflow_annotations::metrics::{Detection, Summary, Truth};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PR_CURVE_FILE: &str = "pr_curve.png";
pub const REPORT_FILE: &str = "report.html";
pub const WORST_DIR: &str = "worst";

/// Detection and recall at the operating threshold (detections scoring above it; a face is found
/// by the best-overlapping detection with IoU ≥ `iou`, highest score first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operating {
    /// The detector's score threshold.
    pub threshold: f32,
    pub iou: f64,
    pub faces: usize,
    pub detections: usize,
    pub found: usize,
    pub recall: f64,
    pub precision: f64,
    /// Faces whose box's shorter side is at least `min_side` px: how many, how many found, recall.
    pub min_side: f32,
    pub faces_min_side: usize,
    pub found_min_side: usize,
    pub recall_min_side: f64,
    /// Recall per COCO face size (`small` < 32², `medium`, `large` > 96² px of area): (faces, found).
    pub by_size: BTreeMap<String, (usize, usize)>,
}

/// The mask label on the faces found at the operating threshold: `matrix[truth][predicted]`, rows
/// the annotations' `classes`, columns the labeller's `predicted`. A row whose class the labeller
/// does not have (`not_scored`: e.g. masks worn incorrectly, kept apart) shows how it labels such
/// faces and counts in neither accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfusion {
    pub classes: Vec<String>,
    pub predicted: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
    pub not_scored: Vec<String>,
    /// The mean over the scored classes (with at least one face found) of the share labelled right.
    pub balanced_accuracy: Option<f64>,
    pub accuracy: Option<f64>,
}

/// One photo's mistakes at the operating threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoMistakes {
    /// Relative to the annotated images folder.
    pub image: String,
    pub missed: usize,
    pub false_positives: usize,
    pub wrong_labels: usize,
    /// The annotated copy under `worst/`, for the photos shown.
    pub file: Option<String>,
}

/// `detection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionResult {
    pub schema: u32,
    /// `ssd`, `ssd260` or `mtcnn`.
    pub detector: String,
    /// `classifier` (a bundle's) or `detector` (the detector's own mask scores).
    pub labeller: String,
    /// `valid` (the held part of the split) or `all`.
    pub part: String,
    pub photos: usize,
    /// Photos that could not be decoded by the detector's reader (their faces count as missed).
    pub unreadable: Vec<String>,
    /// The annotation reader's rejections, by reason (the photo and all its faces left out).
    pub rejected: BTreeMap<String, usize>,
    /// The annotations' classes (after the class map).
    pub classes: Vec<String>,
    /// Faces per class in the photos measured.
    pub faces_per_class: BTreeMap<String, usize>,
    /// Every face one class ("face"): how well the detector finds faces.
    pub faces: Summary,
    /// Each of the labeller's classes that has faces, with the labeller's label, and their mean.
    pub per_class: BTreeMap<String, Summary>,
    pub mean: Summary,
    pub operating: Operating,
    pub labels: LabelConfusion,
    /// The photos with the most mistakes first (all photos with at least one).
    pub worst: Vec<PhotoMistakes>,
}

crate::json_file!(DetectionResult, "detection.json", "detection result", 2);

/// `detections.json`: photo `i` is `images[i]`; classes index `classes`, the labeller's (a face of
/// a class it does not have is a crowd face in each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scored {
    pub schema: u32,
    pub images: Vec<String>,
    pub classes: Vec<String>,
    /// Every face as one class (0): what the faces figures score.
    pub faces: Vec<Truth>,
    /// The faces by the labeller's classes: what the per-class figures score.
    pub truth: Vec<Truth>,
    pub detections: Vec<Detection>,
}

crate::json_file!(Scored, "detections.json", "scored detections", 2);
