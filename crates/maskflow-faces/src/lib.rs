//! The `faces` stage: the pipeline's labelled folder of whole photos → an `image_folder` artifact,
//! `images/<class>/<photo>.face<N>.png`: the largest (or every) face the detector (MTCNN or the
//! face-mask SSD, `[faces.detector] kind`) finds in
//! each photo, cut out with a margin, lossless. With `[faces]` in a pipeline, the index and prep
//! stages read these crops instead of the photos (their optional `images` slot), so the rest of the
//! pipeline trains on faces. Every photo without a crop — no face found, or unreadable — is listed
//! with its reason in `faces.json` and counted in the report.

use anyhow::{Context, Result};
use maskflow_contracts::faces::{FaceCrop, FacesManifest, NoCrop, IMAGES_DIR};
use maskflow_contracts::{kinds, JsonFile};
use maskflow_annotations::{AnnotatedFolder, Photo};
use maskflow_core::dataset::DatasetFile;
use maskflow_models::detector::{Detector, DetectorParams};
use maskflow_stage::{External, RunCtx, Slot, Stage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The faces stage kind.
pub struct FacesStage;

/// Which faces of a photo become crops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The largest face (by box area): one crop per photo, as facenet-pytorch's `select_largest`.
    #[default]
    Largest,
    /// Every face found, each a crop with the photo's label.
    All,
}

/// Where the faces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The detector (`[faces.detector]`) on every photo of a labelled folder (`root/<class>/…`),
    /// each face labelled as its photo.
    #[default]
    Detector,
    /// The boxes of an annotated folder (`[faces.annotations]`), each face labelled by its own
    /// mapped class, from the photos outside the held part (`valid_pct`, `seed`: deteval's), so
    /// that a classifier trained on them never saw the photos `deteval` scores.
    Annotations,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacesParams {
    /// `detector` (default) or `annotations`.
    pub source: Source,
    /// With `source = "annotations"`: the annotated folder's format and class names (the crops'
    /// classes are the mapped names), and the held part left out (0.2, seed 42).
    pub annotations: AnnotatedFolder,
    pub valid_pct: f64,
    pub seed: u64,
    /// The detector (`[faces.detector]`: `kind` = mtcnn | ssd | ssd260; MTCNN's `min_face_size`,
    /// `thresholds`, `factor` with facenet-pytorch's defaults 20, [0.6, 0.7, 0.7], 0.709; the SSD's
    /// `conf_threshold` 0.5 and `iou_threshold` 0.4). Only the chosen detector's knobs are used.
    pub detector: DetectorParams,
    /// Context added on every side of the face box, as a fraction of its longer side (0: the
    /// square on the box, what `maskflow detect` gives the classifier by default).
    pub margin: f32,
    /// `largest` (one crop per photo) or `all`.
    pub keep: Keep,
}

impl Default for FacesParams {
    fn default() -> Self {
        FacesParams {
            source: Source::Detector,
            annotations: AnnotatedFolder::default(),
            valid_pct: 0.2,
            seed: 42,
            detector: DetectorParams::default(),
            margin: 0.0,
            keep: Keep::Largest,
        }
    }
}

impl FacesParams {
    pub fn validate(&self) -> Result<(), String> {
        self.detector.validate().map_err(|e| format!("faces.detector: {e}"))?;
        if !(0.0..=2.0).contains(&self.margin) {
            return Err(format!("faces.margin must be in [0, 2], got {}", self.margin));
        }
        if self.source == Source::Annotations {
            self.annotations.validate().map_err(|e| format!("faces.annotations: {e}"))?;
            if !(self.valid_pct >= 0.0 && self.valid_pct < 1.0) {
                return Err(format!("faces.valid_pct must be in [0, 1), got {}", self.valid_pct));
            }
        }
        Ok(())
    }
}

/// What the stage did, per class and in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FacesReport {
    pub photos: usize,
    pub crops: usize,
    /// Photos in which the detector found no face.
    pub no_face: usize,
    /// Files that could not be read or decoded.
    pub unreadable: usize,
    /// Annotation files (or photos) the annotation reader rejected (`source = "annotations"`).
    pub rejected: usize,
    /// Photos of the held part left out (`source = "annotations"`).
    pub held_out: usize,
    /// Class → (photos, crops).
    pub per_class: BTreeMap<String, (usize, usize)>,
}

impl Stage for FacesStage {
    const KIND: &'static str = "faces";
    /// 2: the detector became a choice (`[faces.detector] kind`); its knobs all enter the key.
    /// 3: faces from an annotated folder's boxes (`source = "annotations"`); the report counts
    /// rejections and the held-out photos.
    const VERSION: u32 = 3;
    const OUTPUT: &'static str = kinds::IMAGE_FOLDER;
    const READS_DATASET: bool = true;
    type Params = FacesParams;
    type Report = FacesReport;

    fn validate(p: &FacesParams) -> Result<(), String> {
        p.validate()
    }
    fn inputs(_: &FacesParams) -> Vec<Slot> {
        Vec::new()
    }
    /// The chosen detector's weights (MTCNN's three nets, or the SSD), imported into the store,
    /// keyed by their sha256.
    fn externals(p: &FacesParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        if p.source == Source::Annotations {
            return Ok(BTreeMap::new());
        }
        let keyed = maskflow_models::weights::ensure_keyed(p.detector.weights(), &rt.artifacts, &maskflow_models::weights::SearchPaths::from_env()).context("the face detector's weights")?;
        Ok(keyed.into_iter().map(|(name, path, key)| (name.to_string(), External { path, key, files: None })).collect())
    }
    fn run(p: &FacesParams, ctx: &RunCtx) -> Result<FacesReport> {
        let ds = ctx.external(maskflow_stage::DATASET)?;
        let root = ctx.dataset_root.unwrap_or(&ds.path);
        if p.source == Source::Annotations {
            return run_annotated(root, p, ctx.out);
        }
        let files: Vec<_> = p.detector.weights().iter().map(|n| ctx.external(n).map(|e| e.path.as_path())).collect::<Result<_, _>>()?;
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let detector = Detector::load(&p.detector, &files, device).map_err(anyhow::Error::msg)?;
        run(root, p, &detector, ctx.out)
    }
    fn summary(r: &FacesReport) -> String {
        let annotated = if r.rejected + r.held_out > 0 {
            format!("; {} held out, {} annotation(s) rejected", r.held_out, r.rejected)
        } else {
            String::new()
        };
        format!("{} photos → {} face crops ({} with no face, {} unreadable{annotated})", r.photos, r.crops, r.no_face, r.unreadable)
    }
}

/// One photo's crops (written) or why it has none.
type PhotoCrops = Result<Vec<FaceCrop>, NoCrop>;

/// Detects the faces of one photo and writes their crops under `images`. A photo that cannot be
/// read or has no face is an `Ok(Err(NoCrop))`; a crop that cannot be written fails the stage.
fn crops_of(root: &Path, f: &DatasetFile, p: &FacesParams, detector: &Detector, images: &Path) -> Result<PhotoCrops> {
    let rel = f.display();
    let img = match maskflow_imaging::read_photo(&root.join(&f.rel)) {
        Ok(img) => img,
        Err(e) => return Ok(Err(no_crop(&rel, e.code, e.message))),
    };
    let (w, h) = img.dimensions();
    let photo = tch::Tensor::from_data_size(img.as_raw(), &[1, h as i64, w as i64, 3], tch::Kind::Uint8);
    let mut faces = detector.detect_batch(&photo).map_err(anyhow::Error::msg)?.pop().unwrap_or_default();
    // Largest first (MTCNN's order already; the SSD gives its faces by score), ties by score.
    faces.sort_by(|a, b| area(b).total_cmp(&area(a)).then(b.score.total_cmp(&a.score)));
    let take = match p.keep {
        Keep::Largest => 1,
        Keep::All => faces.len(),
    };
    let mut out = Vec::new();
    for (i, f) in faces.iter().take(take).enumerate() {
        if let Some(crop) = write_crop(&img, f.bbox, p.margin, images, format!("{rel}.face{i}.png"), &rel, f.score)? {
            out.push(crop);
        }
    }
    if out.is_empty() {
        return Ok(Err(no_crop(&rel, "no_face", "the detector found no face".into())));
    }
    Ok(Ok(out))
}

fn no_crop(source: &str, code: &str, detail: String) -> NoCrop {
    NoCrop { source: source.to_string(), code: code.to_string(), detail }
}

/// Cuts the square region of `bbox` (with `margin`) out of `img` into `images/<file>` (PNG);
/// `None` when the region is empty.
fn write_crop(img: &image::RgbImage, bbox: [f32; 4], margin: f32, images: &Path, file: String, source: &str, score: f32) -> Result<Option<FaceCrop>> {
    let (w, h) = img.dimensions();
    let Some(region) = maskflow_imaging::face_region(w, h, bbox, margin) else { return Ok(None) };
    let [l, t, r, b] = region;
    let path = images.join(&file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let crop = image::imageops::crop_imm(img, l, t, r - l, b - t).to_image();
    crop.save_with_format(&path, image::ImageFormat::Png).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(FaceCrop { file, source: source.to_string(), bbox, score, region }))
}

/// Adds one photo's outcome to the manifest and the counts; returns the crops it added.
fn tally<'m>(report: &mut FacesReport, manifest: &'m mut FacesManifest, r: PhotoCrops) -> &'m [FaceCrop] {
    match r {
        Ok(crops) => {
            report.crops += crops.len();
            let start = manifest.crops.len();
            manifest.crops.extend(crops);
            &manifest.crops[start..]
        }
        Err(no) => {
            if no.code == "no_face" {
                report.no_face += 1;
            } else {
                report.unreadable += 1;
            }
            manifest.without.push(no);
            &[]
        }
    }
}

fn area(f: &maskflow_models::detector::FoundFace) -> f32 {
    (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])
}

/// One annotated photo's faces cut out under `images/<class>/` (difficult ones left out).
fn annotated_crops(images: &Path, photo: &Photo, margin: f32, out: &Path) -> Result<PhotoCrops> {
    let rel = photo.image.display().to_string();
    let img = match maskflow_imaging::read_photo(&images.join(&photo.image)) {
        Ok(img) => img,
        Err(e) => return Ok(Err(no_crop(&rel, e.code, e.message))),
    };
    let mut crops = Vec::new();
    for (i, f) in photo.faces.iter().enumerate().filter(|(_, f)| !f.difficult) {
        if let Some(crop) = write_crop(&img, f.bbox, margin, out, format!("{}/{rel}.face{i}.png", f.class), &rel, 1.0)? {
            crops.push(crop);
        }
    }
    if crops.is_empty() {
        return Ok(Err(no_crop(&rel, "no_face", "no annotated face (or only difficult ones)".into())));
    }
    Ok(Ok(crops))
}

/// `source = "annotations"`: the annotated faces of the photos outside the held part, each a crop
/// labelled by its class.
pub fn run_annotated(root: &Path, p: &FacesParams, out: &Path) -> Result<FacesReport> {
    p.validate().map_err(anyhow::Error::msg)?;
    let set = p.annotations.read(root)?;
    let images = root.join(maskflow_annotations::IMAGES_DIR);
    let held = maskflow_annotations::split(&set.photos, &images, p.valid_pct, p.seed)?;
    let taken: Vec<&Photo> = set.photos.iter().zip(&held).filter(|(_, h)| !**h).map(|(ph, _)| ph).collect();
    let crops_dir = out.join(IMAGES_DIR);
    let pb = maskflow_core::progress::bar(taken.len() as u64, "faces", "photos");
    let results: Result<Vec<PhotoCrops>> = taken
        .par_iter()
        .map(|ph| {
            let r = annotated_crops(&images, ph, p.margin, &crops_dir);
            pb.inc(1);
            r
        })
        .collect();
    pb.finish_and_clear();
    let mut manifest = FacesManifest { schema: FacesManifest::SCHEMA, ..Default::default() };
    let mut report = FacesReport { photos: taken.len(), rejected: set.rejected.len(), held_out: set.photos.len() - taken.len(), ..Default::default() };
    for r in results? {
        // Per class: the photos with a face of it, and its crops.
        let classes: Vec<String> = tally(&mut report, &mut manifest, r).iter().map(|c| c.file.split('/').next().unwrap_or_default().to_string()).collect();
        for (i, class) in classes.iter().enumerate() {
            let e = report.per_class.entry(class.clone()).or_default();
            e.1 += 1;
            e.0 += usize::from(!classes[..i].contains(class));
        }
    }
    manifest.write(out)?;
    Ok(report)
}

/// The stage on a folder: crops into `out/images/`, `faces.json`, the report.
pub fn run(root: &Path, p: &FacesParams, detector: &Detector, out: &Path) -> Result<FacesReport> {
    p.validate().map_err(anyhow::Error::msg)?;
    let listing = maskflow_core::dataset::walk(root)?;
    let pb = maskflow_core::progress::bar(listing.files.len() as u64, "faces", "photos");
    // One intra-op thread per worker: detections do not depend on how photos are shared out.
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let source = std::sync::Mutex::new(detector.duplicate());
    let images = out.join(IMAGES_DIR);
    let results: Result<Vec<PhotoCrops>> = listing
        .files
        .par_iter()
        .map_init(
            || source.lock().unwrap_or_else(|e| e.into_inner()).duplicate(),
            |m, f| {
                let r = crops_of(&listing.root, f, p, m, &images);
                pb.inc(1);
                r
            },
        )
        .collect();
    tch::set_num_threads(threads);
    pb.finish_and_clear();
    let results = results?;

    let mut manifest = FacesManifest { schema: FacesManifest::SCHEMA, ..Default::default() };
    let mut report = FacesReport { photos: listing.files.len(), ..Default::default() };
    for (f, r) in listing.files.iter().zip(results) {
        let crops = tally(&mut report, &mut manifest, r).len();
        let entry = report.per_class.entry(f.label.clone()).or_default();
        entry.0 += 1;
        entry.1 += crops;
    }
    manifest.write(out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_and_documented_defaults_hold() {
        let p = FacesParams::default();
        assert_eq!(p.detector, DetectorParams::default());
        assert_eq!((p.detector.min_face_size, p.detector.thresholds, p.detector.factor), (20.0, [0.6, 0.7, 0.7], 0.709));
        assert_eq!((p.detector.conf_threshold, p.detector.iou_threshold), (0.5, 0.4));
        assert_eq!((p.margin, p.keep), (0.0, Keep::Largest));
        assert!(FacesParams { margin: -0.1, ..Default::default() }.validate().is_err());
        let bad = FacesParams { detector: DetectorParams { factor: 1.5, ..Default::default() }, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("faces.detector"));
        let bad = FacesParams { detector: DetectorParams { iou_threshold: 0.0, ..Default::default() }, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("faces.detector"));
    }
}
