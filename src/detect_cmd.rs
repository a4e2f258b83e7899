//! `maskflow detect --bundle DIR PHOTO|FOLDER|GLOB…`: faces found, cut out, classified; per photo a
//! JSON file and an annotated copy in `--out`, all of them in `detections.jsonl`, a line per photo
//! on stdout. Exit code 2 when any input failed (as `predict`).

use anyhow::{bail, Context, Result};
use maskflow_contracts::bundle::ModelCard;
use maskflow_contracts::detector::WEIGHTS_FILE as DETECTOR_WEIGHTS;
use maskflow_contracts::JsonFile;
use maskflow_models::detector::{Detector, DetectorParams};
use maskflow_models::weights::{self, SearchPaths};
use maskflow_predict::detect::{self, DetectOptions, PhotoResult, RgbImage};
use crate::predict_cmd::Classifier;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Options<'a> {
    pub classifier: Classifier<'a>,
    pub inputs: &'a [String],
    pub out: &'a Path,
    pub artifacts: &'a Path,
    pub detector: DetectorParams,
    /// Use the bundle's fine-tuned detector when it has one (no `--detector` given).
    pub bundled_detector: bool,
    /// Label faces with the SSD's own mask scores instead of the bundle's classifier.
    pub own_labels: bool,
    pub margin: f32,
    pub annotate: bool,
    pub jsonl: bool,
    /// Photos per detector batch (`None`: the detector's default).
    pub group: Option<usize>,
}

/// `photo.jpg` → `photo`, then `photo-2`, … for later photos of the same stem (input order).
fn unique_name(path: &str, taken: &mut BTreeSet<String>) -> String {
    let stem = Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "photo".into());
    let stem: String = stem.chars().map(|c| if c.is_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let mut name = stem.clone();
    let mut n = 1;
    while !taken.insert(name.clone()) {
        n += 1;
        name = format!("{stem}-{n}");
    }
    name
}

/// Runs the detection; returns the number of inputs that failed.
pub fn run(o: &Options) -> Result<usize> {
    anyhow::ensure!(o.margin >= 0.0 && o.margin <= 2.0, "--margin {}: must be in [0, 2]", o.margin);
    // The classifier is loaded only when it labels the faces; the card (classes, a bundled
    // detector) is read either way.
    let (bundle, threshold) = if o.own_labels {
        tch::set_num_threads(o.classifier.compute.threads.max(1) as i32);
        (None, None)
    } else {
        let (b, t) = o.classifier.open()?;
        (Some(b), t)
    };
    let card = match &bundle {
        Some(b) => b.card.clone(),
        None => ModelCard::read(o.classifier.bundle).with_context(|| format!("{}: not a maskflow bundle", o.classifier.bundle.display()))?,
    };
    let (detector, which) = match (&card.detector, o.bundled_detector) {
        (Some(c), true) => {
            let file = o.classifier.bundle.join(DETECTOR_WEIGHTS);
            let d = Detector::load_trained(&c.kind, &file, &o.detector, o.classifier.compute.device)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("loading the bundle's face detector {}", file.display()))?;
            (d, format!("{} fine-tuned, from the bundle", c.kind))
        }
        _ => {
            let d = weights::detector(o.artifacts, &SearchPaths::from_env(), &o.detector, o.classifier.compute.device)
                .with_context(|| format!("loading the {} face detector", o.detector.kind))?;
            (d, o.detector.kind.to_string())
        }
    };
    let (files, failed) = maskflow_predict::expand(o.inputs);
    std::fs::create_dir_all(o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut all = String::new();
    let mut taken = BTreeSet::new();
    let labeller = detect::Labeller::from(bundle.as_ref());
    let classes = labeller.classes();
    let stdout = std::io::stdout();
    let pb = maskflow_core::progress::bar(files.len() as u64, "detect", "photos");
    let mut write_photo = |r: &PhotoResult, image: Option<&RgbImage>| -> Result<()> {
        let name = unique_name(r.path(), &mut taken);
        let line = serde_json::to_string(r)?;
        all.push_str(&line);
        all.push('\n');
        maskflow_core::fsutil::write_json_atomic(&o.out.join(format!("{name}.json")), r)?;
        let mut w = stdout.lock();
        match (r, image) {
            (PhotoResult::Ok { path, faces, .. }, Some(img)) => {
                if o.annotate {
                    let png = path.to_ascii_lowercase().ends_with(".png");
                    let file = o.out.join(format!("{name}.annotated.{}", if png { "png" } else { "jpg" }));
                    write_image(&detect::annotate(img, faces.as_slice(), &classes), &file)?;
                }
                if o.jsonl {
                    writeln!(w, "{line}")?;
                } else if faces.is_empty() {
                    writeln!(w, "{path}  no face found")?;
                } else {
                    let labels: Vec<String> = faces
                        .iter()
                        .map(|f| format!("{} {:.3}", f.label, f.probabilities.get(&f.label).copied().unwrap_or(0.0)))
                        .collect();
                    writeln!(w, "{path}  {} face(s): {}", faces.len(), labels.join(", "))?;
                }
            }
            (PhotoResult::Failed { path, error }, _) => {
                if o.jsonl {
                    writeln!(w, "{line}")?;
                } else {
                    writeln!(w, "{path}  ERROR  {error}")?;
                }
            }
            (PhotoResult::Ok { .. }, None) => bail!("internal: a detected photo without its pixels"),
        }
        Ok(())
    };
    let opts = DetectOptions { margin: o.margin, batch: o.classifier.batch, threshold, group: o.group, ..Default::default() };
    let labelled_by = if o.own_labels { "its own" } else { "the classifier's" };
    let started = std::time::Instant::now();
    let mut results = detect::detect_photos(&labeller, &detector, &files, &opts, &mut write_photo, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    for f in &failed {
        let r = PhotoResult::Failed { path: f.path().to_string(), error: f.reason().to_string() };
        write_photo(&r, None)?;
        results.push(r);
    }
    let jsonl_path = o.out.join("detections.jsonl");
    maskflow_core::fsutil::write_atomic(&jsonl_path, all.as_bytes())
        .with_context(|| format!("writing {}", jsonl_path.display()))?;
    let faces: usize = results.iter().map(|r| if let PhotoResult::Ok { faces, .. } = r { faces.len() } else { 0 }).sum();
    let bad = results.iter().filter(|r| matches!(r, PhotoResult::Failed { .. })).count();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "detect ({which}, {} labels): {} photo(s), {faces} face(s), {bad} failed in {secs:.2} s ({:.2} photos/s after loading) → {}",
        labelled_by,
        results.len(),
        results.len() as f64 / secs.max(1e-9),
        o.out.display()
    );
    Ok(bad)
}

fn write_image(img: &RgbImage, path: &PathBuf) -> Result<()> {
    let bytes = detect::encode(img, path.extension().is_some_and(|e| e == "png"))?;
    maskflow_core::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
