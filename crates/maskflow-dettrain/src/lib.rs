//! The `dettrain` stage: annotated whole photos → a fine-tuned face detector (`detector`
//! artifact, [`maskflow_contracts::detector`]). It starts from the imported face-mask SSD
//! (AIZOOTech's, `ssd` at 360² or `ssd260`) and fine-tunes it the way `train` fine-tunes the
//! classifier: the heads with the body frozen, then everything, each phase one-cycle with Adam and
//! decoupled weight decay (`maskflow-fit`); SSD matching with hard-negative mining
//! (`maskflow_models::ssd_train`); box-preserving augmentations ([`augment`]); a checkpoint after
//! every epoch, from which a killed run resumes to the same bytes; every random stream named by the
//! seed, the phase, the epoch and the photo.
//!
//! ```toml
//! [dettrain]
//! data = "../../shared/datasets/face-mask-scenes"
//! [dettrain.annotations]
//! classes = { con_mascarilla = "with_mask", mascarilla_mal_puesta = "with_mask", sin_mascarilla = "without_mask" }
//! ```
//!
//! It trains on the part of the folder that `deteval` (same `valid_pct` and `seed`) does not score;
//! the held part gives the validation loss of each epoch.

pub mod augment;
pub mod data;
mod fit;

use anyhow::{Context, Result};
use augment::BoxAugment;
use maskflow_annotations::AnnotatedFolder;
use maskflow_contracts::detector::{DetEpoch, DetectorCard};
use maskflow_contracts::{kinds, JsonFile};
use maskflow_fit::schedule::OneCycle;
use maskflow_models::detector::DetectorKind;
use maskflow_models::ssd::CLASSES as DETECTOR_CLASSES;
use maskflow_stage::{External, RunCtx, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The dettrain stage kind.
pub struct DetTrainStage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetTrainParams {
    /// The annotated folder's format and class names (`[dettrain.annotations]`; `classes` must
    /// map onto the detector's `with_mask` / `without_mask`).
    pub annotations: AnnotatedFolder,
    /// The held share of photos (0.2) and the split's seed (42): those of `deteval`, so that it
    /// scores photos this stage never trained on.
    pub valid_pct: f64,
    pub seed: u64,
    /// The imported detector to start from: `ssd` (360², default) or `ssd260`.
    pub start: DetectorKind,
    /// Epochs with the body frozen (the heads train) and their peak learning rate.
    pub head_epochs: usize,
    pub head_lr: f64,
    /// Epochs of the whole network and their peak learning rate.
    pub full_epochs: usize,
    pub full_lr: f64,
    pub batch_size: usize,
    /// Adam's β2 and ε, and the decoupled weight decay (fastai's 0.99, 1e-5, 0.01).
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// fastai's one-cycle parameters, for each phase.
    pub one_cycle: OneCycle,
    /// An anchor learns a face it overlaps by at least this IoU (0.5; each face's best anchor too).
    pub match_iou: f64,
    /// Hard negatives per matched anchor (3).
    pub neg_pos: f64,
    /// The augmentations (`[dettrain.augment]`).
    pub augment: BoxAugment,
    /// The root of every random stream of training (photo order, augmentation draws).
    pub train_seed: u64,
}

impl Default for DetTrainParams {
    fn default() -> Self {
        DetTrainParams {
            annotations: AnnotatedFolder::default(),
            valid_pct: 0.2,
            seed: 42,
            start: DetectorKind::Ssd,
            head_epochs: 2,
            head_lr: 1e-3,
            full_epochs: 6,
            full_lr: 3e-4,
            batch_size: 16,
            beta2: 0.99,
            eps: 1e-5,
            weight_decay: 0.01,
            one_cycle: OneCycle::default(),
            match_iou: 0.5,
            neg_pos: 3.0,
            augment: BoxAugment::default(),
            train_seed: 0,
        }
    }
}

impl DetTrainParams {
    pub fn validate(&self) -> Result<(), String> {
        self.annotations.validate().map_err(|e| format!("dettrain.annotations: {e}"))?;
        if let Some(c) = self.annotations.classes.classes().into_iter().find(|c| !DETECTOR_CLASSES.contains(&c.as_str())) {
            return Err(format!("dettrain.annotations: the detector's classes are {DETECTOR_CLASSES:?}, not {c:?}"));
        }
        if self.start == DetectorKind::Mtcnn {
            return Err("dettrain.start: the SSD (ssd or ssd260) is what fine-tunes; MTCNN is not supported".into());
        }
        if !(self.valid_pct > 0.0 && self.valid_pct < 1.0) {
            return Err(format!("valid_pct must be in (0, 1), got {}", self.valid_pct));
        }
        if self.head_epochs + self.full_epochs == 0 || self.batch_size == 0 {
            return Err("dettrain needs at least one epoch and a batch size ≥ 1".into());
        }
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(self.head_lr) || !ok(self.full_lr) || !ok(self.eps) || !(0.0..1.0).contains(&self.beta2) || self.weight_decay < 0.0 {
            return Err("dettrain: learning rates and eps > 0, beta2 in [0, 1), weight_decay ≥ 0".into());
        }
        if !(self.match_iou > 0.0 && self.match_iou <= 1.0) || !(self.neg_pos >= 0.0) {
            return Err("dettrain: match_iou in (0, 1], neg_pos ≥ 0".into());
        }
        self.augment.validate().map_err(|e| format!("dettrain.{e}"))
    }
}

/// What the stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetTrainReport {
    /// The detector fine-tuned (`ssd`, `ssd260`).
    pub detector: String,
    pub train_photos: usize,
    pub valid_photos: usize,
    pub train_faces: usize,
    pub epochs: Vec<DetEpoch>,
    pub seconds: f64,
    /// The epoch it resumed after, when it did.
    pub resumed_after: Option<String>,
}

impl Stage for DetTrainStage {
    const KIND: &'static str = "dettrain";
    const VERSION: u32 = 1;
    const OUTPUT: &'static str = kinds::DETECTOR;
    const READS_DATASET: bool = true;
    type Params = DetTrainParams;
    type Report = DetTrainReport;

    fn validate(p: &DetTrainParams) -> Result<(), String> {
        p.validate()
    }
    fn inputs(_: &DetTrainParams) -> Vec<Slot> {
        Vec::new()
    }
    /// The imported weights it starts from, keyed by their sha256.
    fn externals(p: &DetTrainParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        let keyed = maskflow_models::weights::ensure_keyed(&[start_weights(p)], &rt.artifacts, &maskflow_models::weights::SearchPaths::from_env()).context("the detector's weights")?;
        Ok(keyed.into_iter().map(|(name, path, key)| (name.to_string(), External { path, key, files: None })).collect())
    }
    fn run(p: &DetTrainParams, ctx: &RunCtx) -> Result<DetTrainReport> {
        let ds = ctx.external(maskflow_stage::DATASET)?;
        let root = ctx.dataset_root.unwrap_or(&ds.path);
        let weights = ctx.external(start_weights(p))?;
        let photos = data::load(root, &p.annotations, &DETECTOR_CLASSES, p.valid_pct, p.seed)?;
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let started_from = format!("{} {}", start_weights(p), weights.key);
        let run = fit::Run { params: p, photos: &photos, device, scratch: ctx.scratch, key: ctx.key, notes: ctx.notes };
        let (report, model) = fit::fit(&run, &weights.path)?;
        write_outputs(p, &photos, &report, model.var_store(), started_from, ctx.out)?;
        Ok(report)
    }
    fn summary(r: &DetTrainReport) -> String {
        let last = r.epochs.last();
        format!(
            "{} fine-tuned {} epoch(s) on {} photos ({} faces){}: train loss {}, valid loss {} on {} photos; {:.0}s",
            r.detector,
            r.epochs.len(),
            r.train_photos,
            r.train_faces,
            r.resumed_after.as_ref().map(|e| format!(", resumed after {e}")).unwrap_or_default(),
            last.map(|e| format!("{:.4}", e.train_loss)).unwrap_or_else(|| "–".into()),
            last.and_then(|e| e.valid_loss).map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
            r.valid_photos,
            r.seconds
        )
    }
}

/// The registry name of the weights it starts from.
fn start_weights(p: &DetTrainParams) -> &'static str {
    maskflow_models::detector::DetectorParams::of(p.start).weights()[0]
}

fn write_outputs(p: &DetTrainParams, photos: &data::Photos, r: &DetTrainReport, vs: &tch::nn::VarStore, started_from: String, out: &std::path::Path) -> Result<()> {
    use maskflow_contracts::detector::{CURVES_FILE, METRICS_FILE, WEIGHTS_FILE};
    maskflow_fit::checkpoint::save_safetensors(&maskflow_fit::checkpoint::sorted_variables(vs), &out.join(WEIGHTS_FILE))?;
    let card = DetectorCard {
        schema: DetectorCard::SCHEMA,
        kind: p.start.name().to_string(),
        classes: DETECTOR_CLASSES.map(String::from).to_vec(),
        started_from,
        train_photos: photos.train.len(),
        valid_photos: photos.valid.len(),
        train_faces: r.train_faces,
        head_epochs: p.head_epochs,
        full_epochs: p.full_epochs,
        valid_loss: r.epochs.last().and_then(|e| e.valid_loss),
        rejected: photos.rejected.clone(),
        unreadable: photos.unreadable.len(),
    };
    card.write(out)?;
    maskflow_fit::checkpoint::write_jsonl(&out.join(METRICS_FILE), &r.epochs)?;
    let points = |f: &dyn Fn(&DetEpoch) -> Option<f64>| r.epochs.iter().enumerate().filter_map(|(i, e)| f(e).map(|v| ((i + 1) as f64, v))).collect();
    let chart = maskflow_plot::LineChart {
        title: "Detector fine-tuning: loss per epoch",
        x_label: "epoch (heads, then everything)",
        y_label: "loss per matched anchor",
        series: vec![
            maskflow_plot::Series { name: "train", points: points(&|e| Some(e.train_loss)) },
            maskflow_plot::Series { name: "valid", points: points(&|e| e.valid_loss) },
        ],
        markers: Vec::new(),
        log_x: false,
    };
    maskflow_plot::line_chart(&out.join(CURVES_FILE), &chart, 720, 420)
}
