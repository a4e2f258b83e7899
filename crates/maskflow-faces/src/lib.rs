//! The `faces` stage: the pipeline's labelled folder of whole photos → an `image_folder` artifact,
//! `images/<class>/<photo>.face<N>.png`: the largest (or every) face the MTCNN detector finds in
//! each photo, cut out with a margin, lossless. With `[faces]` in a pipeline, the index and prep
//! stages read these crops instead of the photos (their optional `images` slot), so the rest of the
//! pipeline trains on faces. Every photo without a crop — no face found, or unreadable — is listed
//! with its reason in `faces.json` and counted in the report.

use anyhow::{Context, Result};
use maskflow_contracts::faces::{FaceCrop, FacesManifest, NoCrop, IMAGES_DIR};
use maskflow_contracts::{kinds, JsonFile};
use maskflow_core::dataset::DatasetFile;
use maskflow_imaging::Limits;
use maskflow_models::mtcnn::{Mtcnn, MtcnnNet, MtcnnParams};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacesParams {
    /// The detector (`[faces.detector]`: `min_face_size`, `thresholds`, `factor`), with
    /// facenet-pytorch's defaults (20, [0.6, 0.7, 0.7], 0.709).
    pub detector: MtcnnParams,
    /// Context added on every side of the face box, as a fraction of its longer side (0: the
    /// square on the box, what `maskflow detect` gives the classifier by default).
    pub margin: f32,
    /// `largest` (one crop per photo) or `all`.
    pub keep: Keep,
}

impl Default for FacesParams {
    fn default() -> Self {
        FacesParams { detector: MtcnnParams::default(), margin: 0.0, keep: Keep::Largest }
    }
}

impl FacesParams {
    pub fn validate(&self) -> Result<(), String> {
        self.detector.validate().map_err(|e| format!("faces.detector: {e}"))?;
        if !(0.0..=2.0).contains(&self.margin) {
            return Err(format!("faces.margin must be in [0, 2], got {}", self.margin));
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
    /// Class → (photos, crops).
    pub per_class: BTreeMap<String, (usize, usize)>,
}

impl Stage for FacesStage {
    const KIND: &'static str = "faces";
    const VERSION: u32 = 1;
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
    /// The detector's three nets, imported into the store, keyed by their sha256.
    fn externals(_: &FacesParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        let search = maskflow_models::weights::SearchPaths::from_env();
        let mut out = BTreeMap::new();
        for net in MtcnnNet::ALL {
            let w = maskflow_models::weights::ensure(net.name(), None, &rt.artifacts, &search)
                .with_context(|| format!("the face detector's weights {net}"))?;
            out.insert(net.name().to_string(), External { path: w.safetensors(), key: format!("sha256:{}", w.sha256), files: None });
        }
        Ok(out)
    }
    fn run(p: &FacesParams, ctx: &RunCtx) -> Result<FacesReport> {
        let ds = ctx.external(maskflow_stage::DATASET)?;
        let root = ctx.dataset_root.unwrap_or(&ds.path);
        let files: Vec<_> = MtcnnNet::ALL.iter().map(|n| ctx.external(n.name()).map(|e| e.path.clone())).collect::<Result<_, _>>()?;
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let mtcnn = Mtcnn::load([&files[0], &files[1], &files[2]], p.detector.clone(), device)?;
        run(root, p, &mtcnn, ctx.out)
    }
    fn summary(r: &FacesReport) -> String {
        format!("{} photos → {} face crops ({} with no face, {} unreadable)", r.photos, r.crops, r.no_face, r.unreadable)
    }
}

/// One photo's crops (written) or why it has none.
type PhotoCrops = Result<Vec<FaceCrop>, NoCrop>;

/// Detects the faces of one photo and writes their crops under `images`. A photo that cannot be
/// read or has no face is an `Ok(Err(NoCrop))`; a crop that cannot be written fails the stage.
fn crops_of(root: &Path, f: &DatasetFile, p: &FacesParams, mtcnn: &Mtcnn, images: &Path) -> Result<PhotoCrops> {
    let rel = f.display();
    let no = |code: &str, detail: String| Ok(Err(NoCrop { source: rel.clone(), code: code.to_string(), detail }));
    let bytes = match std::fs::read(root.join(&f.rel)) {
        Ok(b) => b,
        Err(e) => return no("unreadable", format!("cannot read: {e}")),
    };
    let d = match maskflow_imaging::decode(&bytes, &Limits::default()) {
        Ok(d) => d,
        Err(e) => return no(e.code(), e.to_string()),
    };
    let img = maskflow_imaging::to_rgb8(d.image, [255, 255, 255]);
    let (w, h) = img.dimensions();
    let faces = mtcnn.detect_rgb(w, h, img.as_raw())?;
    let take = match p.keep {
        Keep::Largest => 1,
        Keep::All => faces.len(),
    };
    let mut out = Vec::new();
    for (i, f) in faces.iter().take(take).enumerate() {
        let Some(region) = maskflow_imaging::face_region(w, h, f.bbox, p.margin) else { continue };
        let [l, t, r, b] = region;
        let file = format!("{rel}.face{i}.png");
        let path = images.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let crop = image::imageops::crop_imm(&img, l, t, r - l, b - t).to_image();
        crop.save_with_format(&path, image::ImageFormat::Png).with_context(|| format!("writing {}", path.display()))?;
        out.push(FaceCrop { file, source: rel.clone(), bbox: f.bbox, score: f.score, region });
    }
    if out.is_empty() {
        return no("no_face", "the detector found no face".into());
    }
    Ok(Ok(out))
}

/// The stage on a folder: crops into `out/images/`, `faces.json`, the report.
pub fn run(root: &Path, p: &FacesParams, mtcnn: &Mtcnn, out: &Path) -> Result<FacesReport> {
    p.validate().map_err(anyhow::Error::msg)?;
    let listing = maskflow_core::dataset::walk(root)?;
    let pb = maskflow_core::progress::bar(listing.files.len() as u64, "faces", "photos");
    // One intra-op thread per worker: detections do not depend on how photos are shared out.
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let source = std::sync::Mutex::new(mtcnn.duplicate());
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
        let entry = report.per_class.entry(f.label.clone()).or_default();
        entry.0 += 1;
        match r {
            Ok(crops) => {
                entry.1 += crops.len();
                report.crops += crops.len();
                manifest.crops.extend(crops);
            }
            Err(no) => {
                if no.code == "no_face" {
                    report.no_face += 1;
                } else {
                    report.unreadable += 1;
                }
                manifest.without.push(no);
            }
        }
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
        assert_eq!(p.detector, MtcnnParams::default());
        assert_eq!((p.margin, p.keep), (0.0, Keep::Largest));
        assert!(FacesParams { margin: -0.1, ..Default::default() }.validate().is_err());
        let bad = FacesParams { detector: MtcnnParams { factor: 1.5, ..Default::default() }, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("faces.detector"));
    }
}
