//! The `deteval` stage: a face detector — and what labels its faces, a bundle's classifier or the
//! detector's own mask scores — scored on a folder of annotated whole photos (Pascal VOC, YOLO or
//! COCO; `[deteval.annotations]`), on the held part of a content-hashed split by photo, or all of it.
//!
//! ```toml
//! [deteval]
//! data = "../../shared/datasets/face-mask-scenes"   # the annotated folder (its content is keyed)
//! [deteval.annotations]
//! classes = { con_mascarilla = "with_mask", mascarilla_mal_puesta = "with_mask", sin_mascarilla = "without_mask" }
//! [deteval.detector]
//! kind = "ssd"
//! ```
//!
//! The detector runs once with a low score floor (`score_floor`), so that AP covers its whole
//! precision–recall curve; the figures at the operating threshold (the detector's own
//! `conf_threshold`) take the detections above it — the same boxes the detector gives at that
//! threshold, its NMS being greedy by score. The result (`detection_result`, see
//! [`maskflow_contracts::detection`]): COCO's AP@[.5:.95], AP@.5, AP@.75 and AP per face size, for
//! faces as one class and per labelled class; recall, precision and recall of faces at least
//! `min_side` px at the operating threshold; the labels' confusion matrix on the faces found;
//! `pr_curve.png`; `report.html` with the worst photos drawn; and `detections.json`, the exact
//! input of the metrics, so that pycocotools can recompute them.

mod report;
pub mod score;

use anyhow::{bail, Context, Result};
use maskflow_annotations::{metrics, AnnotatedFolder, Photo};
use maskflow_contracts::detection::{DetectionResult, Scored};
use maskflow_contracts::detector::{DetectorCard, WEIGHTS_FILE};
use maskflow_contracts::{kinds, JsonFile};
use maskflow_models::detector::{Detector, DetectorKind, DetectorParams};
use maskflow_predict::detect::{DetectOptions, Labeller, PhotoResult, DEFAULT_MARGIN, DETECTOR_CLASSES};
use maskflow_stage::{External, RunCtx, Slot, Stage};
use score::{Classes, PhotoBoxes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The deteval stage kind.
pub struct DetEvalStage;

/// The input slot of the classifier's bundle.
pub const BUNDLE_SLOT: &str = "bundle";
/// The input slot of a fine-tuned detector (with `trained = true`).
pub const DETECTOR_SLOT: &str = "detector";

/// Which photos are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The held part of the split (`valid_pct`, `seed`): the photos a detector trained on the same
    /// folder never saw.
    #[default]
    Valid,
    /// Every photo.
    All,
}

/// What labels the faces found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LabelledBy {
    /// The bundle of the `bundle` input (the pipeline's `[export]` by default) on each face's crop.
    #[default]
    Classifier,
    /// The detector's own mask scores (the SSD only), classes `with_mask` and `without_mask`.
    Detector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetEvalParams {
    /// The annotated folder's format and class names (`[deteval.annotations]`; `classes` required).
    pub annotations: AnnotatedFolder,
    /// `valid` (default): the held part of the split by photo content; `all`.
    pub part: Part,
    /// The held share of photos (0.2) and the split's seed (42), as the index splits images.
    pub valid_pct: f64,
    pub seed: u64,
    /// The detector and its knobs (`[deteval.detector]`, as `[faces.detector]`; the SSD by default).
    /// Its `conf_threshold` is the operating threshold.
    pub detector: DetectorParams,
    /// Score the fine-tuned detector of the `detector` input (a `dettrain` instance; the pipeline's
    /// `[dettrain]` by default) instead of the imported weights `detector.kind` names; the
    /// thresholds still come from `[deteval.detector]`.
    pub trained: bool,
    /// `classifier` (default) or `detector`.
    pub labels: LabelledBy,
    /// The SSD runs keeping boxes above this score (0.05), for AP over its whole curve; at most
    /// its `conf_threshold`. MTCNN's own thresholds apply, and all its faces count at the
    /// operating point.
    pub score_floor: f32,
    /// A detection finds a face at IoU ≥ this at the operating threshold (0.5).
    pub match_iou: f64,
    /// Recall is also given for faces whose box's shorter side is at least this many px (32).
    pub min_side: f32,
    /// Context around each face given to the classifier, as `maskflow detect --margin` (0).
    pub margin: f32,
    /// Photos drawn in the report, the most mistakes first (12).
    pub worst: usize,
}

impl Default for DetEvalParams {
    fn default() -> Self {
        DetEvalParams {
            annotations: AnnotatedFolder::default(),
            part: Part::Valid,
            valid_pct: 0.2,
            seed: 42,
            detector: DetectorParams::default(),
            trained: false,
            labels: LabelledBy::Classifier,
            score_floor: 0.05,
            match_iou: 0.5,
            min_side: 32.0,
            margin: DEFAULT_MARGIN,
            worst: 12,
        }
    }
}

impl DetEvalParams {
    pub fn validate(&self) -> Result<(), String> {
        self.annotations.validate().map_err(|e| format!("deteval.annotations: {e}"))?;
        self.detector.validate().map_err(|e| format!("deteval.detector: {e}"))?;
        if !(self.valid_pct > 0.0 && self.valid_pct < 1.0) {
            return Err(format!("valid_pct must be in (0, 1), got {}", self.valid_pct));
        }
        if !(0.0..=1.0).contains(&self.score_floor) {
            return Err(format!("score_floor must be in [0, 1], got {}", self.score_floor));
        }
        if !(self.match_iou > 0.0 && self.match_iou <= 1.0) {
            return Err(format!("match_iou must be in (0, 1], got {}", self.match_iou));
        }
        if !(self.min_side >= 0.0 && self.min_side.is_finite()) {
            return Err(format!("min_side must be ≥ 0, got {}", self.min_side));
        }
        if !(0.0..=2.0).contains(&self.margin) {
            return Err(format!("margin must be in [0, 2], got {}", self.margin));
        }
        if self.trained && self.detector.kind == DetectorKind::Mtcnn {
            return Err("trained = true scores a fine-tuned SSD: leave detector.kind at ssd".into());
        }
        if self.labels == LabelledBy::Detector {
            if self.detector.kind == DetectorKind::Mtcnn {
                return Err("labels = \"detector\" needs a detector with mask scores (ssd, ssd260); MTCNN has none".into());
            }
            if !self.annotations.classes.classes().iter().any(|c| DETECTOR_CLASSES.contains(&c.as_str())) {
                return Err(format!("labels = \"detector\": map at least one class onto the detector's {DETECTOR_CLASSES:?}"));
            }
        }
        Ok(())
    }

    /// The detector as run: the SSD down to the score floor.
    fn detector_as_run(&self) -> DetectorParams {
        let mut d = self.detector.clone();
        if d.kind != DetectorKind::Mtcnn {
            d.conf_threshold = self.score_floor.min(d.conf_threshold);
        }
        d
    }

    /// Detections scoring above this count at the operating point.
    fn operating_threshold(&self) -> f32 {
        match self.detector.kind {
            DetectorKind::Mtcnn => 0.0,
            DetectorKind::Ssd | DetectorKind::Ssd260 => self.detector.conf_threshold,
        }
    }
}

/// The report: the headline figures (the whole result is in `detection.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetEvalReport {
    pub detector: String,
    pub labels: String,
    pub photos: usize,
    pub faces: usize,
    pub face_ap50: Option<f64>,
    pub face_ap: Option<f64>,
    pub mean_ap50: Option<f64>,
    pub recall: f64,
    /// Recall of the faces whose shorter side is at least `min_side` px.
    pub min_side: f32,
    pub recall_min_side: f64,
    pub precision: f64,
    pub balanced_accuracy: Option<f64>,
}

impl Stage for DetEvalStage {
    const KIND: &'static str = "deteval";
    /// 2: a class the labeller lacks is found but not scored (its own row); detections.json keeps
    /// the faces as one class apart. 3: the worst photos drawn larger when small, small faces untagged.
    /// 4: the report names its `min_side`.
    const VERSION: u32 = 4;
    const OUTPUT: &'static str = kinds::DETECTION_RESULT;
    const READS_DATASET: bool = true;
    type Params = DetEvalParams;
    type Report = DetEvalReport;

    fn validate(p: &DetEvalParams) -> Result<(), String> {
        p.validate()
    }
    fn inputs(p: &DetEvalParams) -> Vec<Slot> {
        let mut slots = Vec::new();
        if p.labels == LabelledBy::Classifier {
            slots.push(Slot::new(BUNDLE_SLOT, kinds::BUNDLE));
        }
        if p.trained {
            slots.push(Slot::new(DETECTOR_SLOT, kinds::DETECTOR));
        }
        slots
    }
    /// The detector's weights, imported into the store, keyed by their sha256 (none when it scores
    /// a fine-tuned detector: that is an input).
    fn externals(p: &DetEvalParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        if p.trained {
            return Ok(BTreeMap::new());
        }
        let keyed = maskflow_models::weights::ensure_keyed(p.detector.weights(), &rt.artifacts, &maskflow_models::weights::SearchPaths::from_env()).context("the face detector's weights")?;
        Ok(keyed.into_iter().map(|(name, path, key)| (name.to_string(), External { path, key, files: None })).collect())
    }
    fn run(p: &DetEvalParams, ctx: &RunCtx) -> Result<DetEvalReport> {
        let ds = ctx.external(maskflow_stage::DATASET)?;
        let root = ctx.dataset_root.unwrap_or(&ds.path);
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let detector = if p.trained {
            let dir = ctx.input(DETECTOR_SLOT)?;
            let card = DetectorCard::read(dir)?;
            Detector::load_trained(&card.kind, &dir.join(WEIGHTS_FILE), &p.detector_as_run(), device).map_err(anyhow::Error::msg)?
        } else {
            let files: Vec<_> = p.detector.weights().iter().map(|n| ctx.external(n).map(|e| e.path.as_path())).collect::<Result<_, _>>()?;
            Detector::load(&p.detector_as_run(), &files, device).map_err(anyhow::Error::msg)?
        };
        let bundle = match p.labels {
            LabelledBy::Classifier => Some(maskflow_predict::load(ctx.input(BUNDLE_SLOT)?, device)?),
            LabelledBy::Detector => None,
        };
        let result = run(root, p, &detector, &Labeller::from(bundle.as_ref()), ctx.out)?;
        Ok(report_of(&result))
    }
    fn summary(r: &DetEvalReport) -> String {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        format!(
            "{} + {} labels on {} photos ({} faces): face AP@.5 {}, AP@[.5:.95] {}; recall {:.3} (≥ {} px {:.3}), precision {:.3}; labels balanced accuracy {}",
            r.detector,
            r.labels,
            r.photos,
            r.faces,
            f(r.face_ap50),
            f(r.face_ap),
            r.recall,
            r.min_side,
            r.recall_min_side,
            r.precision,
            f(r.balanced_accuracy)
        )
    }
}

fn report_of(r: &DetectionResult) -> DetEvalReport {
    DetEvalReport {
        detector: r.detector.clone(),
        labels: r.labeller.clone(),
        photos: r.photos,
        faces: r.operating.faces,
        face_ap50: r.faces.ap50,
        face_ap: r.faces.ap,
        mean_ap50: r.mean.ap50,
        recall: r.operating.recall,
        min_side: r.operating.min_side,
        recall_min_side: r.operating.recall_min_side,
        precision: r.operating.precision,
        balanced_accuracy: r.labels.balanced_accuracy,
    }
}

/// The photos scored: all, or the held part of the split.
fn photos_scored(root: &Path, p: &DetEvalParams, photos: Vec<Photo>) -> Result<Vec<Photo>> {
    if p.part == Part::All {
        return Ok(photos);
    }
    let images = root.join(maskflow_annotations::IMAGES_DIR);
    let held = maskflow_annotations::split(&photos, &images, p.valid_pct, p.seed)?;
    Ok(photos.into_iter().zip(held).filter_map(|(ph, h)| h.then_some(ph)).collect())
}

/// The stage on an annotated folder with a loaded detector and labeller: every file into `out`.
pub fn run(root: &Path, p: &DetEvalParams, detector: &Detector, labeller: &Labeller, out: &Path) -> Result<DetectionResult> {
    p.validate().map_err(anyhow::Error::msg)?;
    let annotated = p.annotations.read(root)?;
    let rejected: BTreeMap<String, usize> = annotated.counts().into_iter().map(|(r, n)| (r.name().to_string(), n)).collect();
    let photos = photos_scored(root, p, annotated.photos)?;
    if photos.is_empty() {
        bail!("{}: no annotated photo to score ({} rejected: {rejected:?})", root.display(), annotated.rejected.len());
    }
    let classes = Classes { truth: p.annotations.classes.classes(), labels: labeller.classes() };
    if !classes.truth.iter().any(|c| classes.labels.contains(c)) {
        bail!(
            "the labeller's classes are {:?} and the annotations' {:?}: map at least one onto the labeller's (a class it lacks is found but not scored)",
            classes.labels,
            classes.truth
        );
    }
    let images = root.join(maskflow_annotations::IMAGES_DIR);
    let paths: Vec<PathBuf> = photos.iter().map(|ph| images.join(&ph.image)).collect();
    let pb = maskflow_core::progress::bar(paths.len() as u64, "deteval", "photos");
    let opts = DetectOptions { margin: p.margin, ..Default::default() };
    let results = maskflow_predict::detect::detect_photos(labeller, detector, &paths, &opts, &mut |_, _| Ok(()), &|n| pb.inc(n))?;
    pb.finish_and_clear();

    let (boxes, unreadable) = photo_boxes(&photos, &classes, &results);
    let (mut result, curves) = score(p, &boxes, &classes, &photos, unreadable, rejected);
    result.detector = format!("{}{}", detector.kind().name(), if p.trained { " (fine-tuned)" } else { "" });
    let scored = {
        let (faces, _) = score::coco_inputs(&boxes, &classes, true);
        let (truth, detections) = score::coco_inputs(&boxes, &classes, false);
        let images = boxes.iter().map(|b| b.image.clone()).collect();
        Scored { schema: Scored::SCHEMA, images, classes: classes.labels.clone(), faces, truth, detections }
    };
    scored.write(out)?;
    let result = report::write(out, &images, p, result, &boxes, &curves)?;
    result.write(out)?;
    Ok(result)
}

/// Each photo's faces and detections as the scoring takes them; the photos that failed to decode.
fn photo_boxes(photos: &[Photo], classes: &Classes, results: &[PhotoResult]) -> (Vec<PhotoBoxes>, Vec<String>) {
    let index = |names: &[String], name: &str| names.iter().position(|c| c == name).unwrap_or_else(|| unreachable!("{name} is one of {names:?}"));
    let mut unreadable = Vec::new();
    let boxes = photos
        .iter()
        .zip(results)
        .map(|(ph, r)| {
            let image = ph.image.display().to_string();
            let faces = ph.faces.iter().map(|f| (f.bbox.map(f64::from), index(&classes.truth, &f.class), f.difficult)).collect();
            let detections = match r {
                PhotoResult::Ok { faces, .. } => {
                    faces.iter().map(|d| (d.bbox.map(f64::from), d.score as f64, index(&classes.labels, &d.label))).collect()
                }
                PhotoResult::Failed { error, .. } => {
                    unreadable.push(format!("{image}: {error}"));
                    Vec::new()
                }
            };
            PhotoBoxes { image, faces, detections }
        })
        .collect();
    (boxes, unreadable)
}

/// A precision–recall curve: its name and (recall, precision) points.
pub type Curve = (String, Vec<(f64, f64)>);

/// The curve at IoU 0.5 over all face sizes of class `k` (COCO's 101 recall points, precision
/// made monotone), up to the recall reached.
fn curve(acc: &metrics::Accumulated, k: usize, name: &str) -> Option<Curve> {
    let reached = acc.recall[0][k][0]?;
    let points = metrics::recall_points()
        .into_iter()
        .enumerate()
        .filter(|(_, r)| *r <= reached)
        .filter_map(|(ri, r)| acc.precision[0][ri][k][0].map(|pr| (r, pr)))
        .collect();
    Some((name.to_string(), points))
}

/// The figures — COCO AP for faces and per class, the operating point — and the PR curves.
fn score(
    p: &DetEvalParams,
    boxes: &[PhotoBoxes],
    classes: &Classes,
    photos: &[Photo],
    unreadable: Vec<String>,
    rejected: BTreeMap<String, usize>,
) -> (DetectionResult, Vec<Curve>) {
    let n = boxes.len();
    let (t, d) = score::coco_inputs(boxes, classes, true);
    let face_acc = metrics::accumulate(&t, &d, n, 1, 100);
    let faces = face_acc.summary(&[0]);
    let labels = &classes.labels;
    let (t, d) = score::coco_inputs(boxes, classes, false);
    let acc = metrics::accumulate(&t, &d, n, labels.len(), 100);
    let mut curves: Vec<Curve> = curve(&face_acc, 0, "faces (any label)").into_iter().collect();
    curves.extend(labels.iter().enumerate().filter_map(|(k, c)| curve(&acc, k, c)));
    let per_class = labels.iter().enumerate().filter(|(k, _)| acc.recall[0][*k][0].is_some()).map(|(k, c)| (c.clone(), acc.summary(&[k]))).collect();
    let all: Vec<usize> = (0..labels.len()).collect();
    let at = score::at_threshold(boxes, classes, p.operating_threshold(), p.match_iou, p.min_side);
    let mut faces_per_class: BTreeMap<String, usize> = classes.truth.iter().map(|c| (c.clone(), 0)).collect();
    for f in photos.iter().flat_map(|ph| &ph.faces) {
        *faces_per_class.entry(f.class.clone()).or_default() += 1;
    }
    let result = DetectionResult {
        schema: DetectionResult::SCHEMA,
        detector: p.detector.kind.name().to_string(),
        labeller: match p.labels {
            LabelledBy::Classifier => "classifier".into(),
            LabelledBy::Detector => "detector".into(),
        },
        part: match p.part {
            Part::Valid => "valid".into(),
            Part::All => "all".into(),
        },
        photos: n,
        unreadable,
        rejected,
        classes: classes.truth.clone(),
        faces_per_class,
        faces,
        per_class,
        mean: acc.summary(&all),
        operating: at.operating,
        labels: at.labels,
        worst: at.mistakes,
    };
    (result, curves)
}
