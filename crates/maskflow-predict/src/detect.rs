//! `maskflow detect`: faces in whole photos. Each photo is decoded and run through the face
//! detector (the face-mask SSD or MTCNN) in parallel (one detector per worker; photos of one size
//! detected as a batch); each face
//! is cut out with a margin and brought to the bundle's input exactly as its training images were
//! (the bundle's own resize, filter and crop); the faces of many photos are classified together in
//! batches. Per photo: a JSON record (box, detector score, landmarks, label, probabilities per face)
//! and optionally an annotated copy.

use crate::{classify_pixels, label_of, prepare_rgb, Bundle, Threshold};
use anyhow::Result;
use image::Rgb;
pub use image::RgbImage;
use maskflow_contracts::bundle::ModelCard;
use maskflow_imaging::Resizer;
use maskflow_models::detector::{Detector, FoundFace};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How faces are cut out and labelled.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Added around the face box on every side, as a fraction of its longer side (see
    /// [`maskflow_imaging::face_region`]).
    pub margin: f32,
    /// Faces per classifier forward pass.
    pub batch: usize,
    /// Photos decoded and detected per round (their faces are classified together).
    pub photos_per_round: usize,
    /// Photos of one size per detector batch (`None`: the detector's own, [`group_size`]).
    pub group: Option<usize>,
    pub threshold: Threshold,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions { margin: DEFAULT_MARGIN, batch: 64, photos_per_round: 32, group: None, threshold: None }
    }
}

/// The default margin: none. The classifier was trained on the face-mask dataset's pictures, which
/// are tight: over 242 of them (150 + 150 sampled, faces found in 242), the detector's box side is on
/// median 1.09× the picture's shorter side (the picture is 0.92× the box), so the box itself — made
/// square on its longer side by [`maskflow_imaging::face_region`] — is what training looked like
/// (docs/DETECT.md).
pub const DEFAULT_MARGIN: f32 = 0.0;

/// One face found and classified.
#[derive(Debug, Clone, Serialize)]
pub struct DetectedFace {
    /// `[x1, y1, x2, y2]` in the photo's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The detector's face probability.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corner (MTCNN only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<[[f32; 2]; 5]>,
    /// The SSD's own mask scores, `[with a mask, without]` (SSD only; the label comes from the
    /// bundle's classifier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector_mask_scores: Option<[f32; 2]>,
    /// The region given to the classifier (`[left, top, right, bottom]`, margin included).
    pub crop: [u32; 4],
    pub label: String,
    pub probabilities: BTreeMap<String, f32>,
}

/// One photo's result.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PhotoResult {
    Ok { path: String, width: u32, height: u32, faces: Vec<DetectedFace> },
    Failed { path: String, error: String },
}

impl PhotoResult {
    pub fn path(&self) -> &str {
        match self {
            PhotoResult::Ok { path, .. } | PhotoResult::Failed { path, .. } => path,
        }
    }
}

/// A decoded photo with its faces and the classifier inputs cut from it.
struct Detected {
    image: RgbImage,
    faces: Vec<(FoundFace, [u32; 4])>,
    pixels: Vec<u8>,
}

/// What labels the faces found.
pub enum Labeller<'a> {
    /// A bundle's classifier on each face's crop (the default everywhere).
    Classifier(&'a Bundle),
    /// The detector's own mask scores (the face-mask SSD's), classes [`DETECTOR_CLASSES`].
    Detector,
}

/// The classes of the face-mask SSD's own mask scores, in their order.
pub use maskflow_models::ssd::CLASSES as DETECTOR_CLASSES;

impl<'a> From<Option<&'a Bundle>> for Labeller<'a> {
    /// A bundle's classifier, or without one the detector's own scores.
    fn from(bundle: Option<&'a Bundle>) -> Self {
        match bundle {
            Some(b) => Labeller::Classifier(b),
            None => Labeller::Detector,
        }
    }
}

impl Labeller<'_> {
    /// The class names its probabilities are over, in order.
    pub fn classes(&self) -> Vec<String> {
        match self {
            Labeller::Classifier(b) => b.card.classes.clone(),
            Labeller::Detector => DETECTOR_CLASSES.map(String::from).to_vec(),
        }
    }
    fn card(&self) -> Option<&ModelCard> {
        match self {
            Labeller::Classifier(b) => Some(&b.card),
            Labeller::Detector => None,
        }
    }
}

/// Faces of the photos of one size together (the pyramid's levels run once for all of them), then
/// each face cut out and (for a classifier) prepared for the bundle.
fn detect_group(
    detector: &Detector,
    card: Option<&ModelCard>,
    images: Vec<RgbImage>,
    margin: f32,
    resizer: &mut Resizer,
) -> Vec<Result<Detected, String>> {
    let (w, h) = images[0].dimensions();
    let mut flat = Vec::with_capacity(images.len() * (w * h * 3) as usize);
    images.iter().for_each(|i| flat.extend_from_slice(i.as_raw()));
    let batch = tch::Tensor::from_data_size(&flat, &[images.len() as i64, h as i64, w as i64, 3], tch::Kind::Uint8);
    drop(flat);
    let found = match detector.detect_batch(&batch) {
        Ok(f) => f,
        Err(e) => return images.iter().map(|_| Err(format!("detector: {e}"))).collect(),
    };
    images
        .into_iter()
        .zip(found)
        .map(|(image, faces)| {
            let mut kept = Vec::with_capacity(faces.len());
            let mut pixels = Vec::new();
            for face in faces {
                let Some(region) = maskflow_imaging::face_region(w, h, face.bbox, margin) else {
                    continue;
                };
                if let Some(card) = card {
                    let [l, t, r, b] = region;
                    let crop = image::imageops::crop_imm(&image, l, t, r - l, b - t).to_image();
                    pixels.extend(prepare_rgb(&crop, card, resizer)?);
                }
                kept.push((face, region));
            }
            Ok(Detected { image, faces: kept, pixels })
        })
        .collect()
}

/// Photos of one size per detector batch, by default: MTCNN runs each pyramid level once for a
/// batch, so 8 save P-Net calls; the SSD gains nothing from batching on a CPU and its activations at
/// 360² grow with the batch, so 1 (measured: docs/BENCHMARKS.md, detect).
pub fn group_size(detector: &Detector) -> usize {
    match detector {
        Detector::Mtcnn(_) => 8,
        Detector::Ssd(_) => 1,
    }
}

/// One round of photos: decoded in parallel, then detected in parallel by groups of up to `group`
/// photos of one size (each group one detector batch). Results in input order; `progress` counts
/// photos.
fn detect_round(
    round: &[PathBuf],
    card: Option<&ModelCard>,
    source: &std::sync::Mutex<Detector>,
    margin: f32,
    group: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<Result<Detected, String>> {
    let decoded: Vec<Result<RgbImage, String>> = round.par_iter().map(|p| maskflow_imaging::read_photo(p).map_err(|e| e.message)).collect();
    let mut results: Vec<Option<Result<Detected, String>>> = (0..round.len()).map(|_| None).collect();
    let mut groups: BTreeMap<(u32, u32), Vec<Vec<(usize, RgbImage)>>> = BTreeMap::new();
    for (i, d) in decoded.into_iter().enumerate() {
        match d {
            Ok(img) => {
                let batches = groups.entry(img.dimensions()).or_default();
                match batches.last_mut() {
                    Some(b) if b.len() < group => b.push((i, img)),
                    _ => batches.push(vec![(i, img)]),
                }
            }
            Err(e) => {
                results[i] = Some(Err(e));
                progress(1);
            }
        }
    }
    let jobs: Vec<Vec<(usize, RgbImage)>> = groups.into_values().flatten().collect();
    let detected: Vec<Vec<(usize, Result<Detected, String>)>> = jobs
        .into_par_iter()
        .map_init(
            || (source.lock().unwrap_or_else(|p| p.into_inner()).duplicate(), Resizer::default()),
            |(m, r), job| {
                let (index, images): (Vec<usize>, Vec<RgbImage>) = job.into_iter().unzip();
                let d = detect_group(m, card, images, margin, r);
                progress(index.len() as u64);
                index.into_iter().zip(d).collect()
            },
        )
        .collect();
    for (i, r) in detected.into_iter().flatten() {
        results[i] = Some(r);
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err("internal: photo not processed".into()))).collect()
}

/// Detects, cuts out and labels the faces of `paths` (results in input order). `on_photo` is
/// called with each finished photo (its result and, when it decoded, the photo itself) — the
/// command writes its files there; `progress` counts photos. Labelling by the detector needs a
/// detector with mask scores (the SSD; MTCNN has none).
pub fn detect_photos(
    labeller: &Labeller,
    detector: &Detector,
    paths: &[PathBuf],
    o: &DetectOptions,
    on_photo: &mut dyn FnMut(&PhotoResult, Option<&RgbImage>) -> Result<()>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PhotoResult>> {
    if matches!(labeller, Labeller::Detector) && matches!(detector, Detector::Mtcnn(_)) {
        anyhow::bail!("MTCNN gives no mask label: label its faces with a bundle's classifier");
    }
    let classes = &labeller.classes();
    let k = classes.len();
    let threads = tch::get_num_threads();
    // Tensors are not `Sync`: each worker duplicates the detector from behind a lock.
    let source = std::sync::Mutex::new(detector.duplicate());
    let card = labeller.card();
    let mut out = Vec::with_capacity(paths.len());
    for round in paths.chunks(o.photos_per_round.max(1)) {
        // One intra-op thread per worker while the workers run detectors side by side.
        tch::set_num_threads(1);
        let group = o.group.unwrap_or_else(|| group_size(detector)).max(1);
        let per_photo = detect_round(round, card, &source, o.margin, group, progress);
        tch::set_num_threads(threads);
        // Every face of the round through the classifier together (or the detector's own scores).
        let probs = match labeller {
            Labeller::Classifier(bundle) => {
                let pixels: Vec<u8> = per_photo.iter().flatten().flat_map(|d| d.pixels.iter().copied()).collect();
                if pixels.is_empty() { Vec::new() } else { classify_pixels(bundle, &pixels, o.batch)? }
            }
            Labeller::Detector => per_photo
                .iter()
                .flatten()
                .flat_map(|d| d.faces.iter().flat_map(|(f, _)| f.mask_scores.unwrap_or([0.0, 0.0])))
                .collect(),
        };
        let mut next = 0;
        for (path, r) in round.iter().zip(per_photo) {
            let path = path.display().to_string();
            let (result, image) = match r {
                Ok(d) => {
                    let faces = d
                        .faces
                        .into_iter()
                        .map(|(f, crop)| {
                            let p = probs[next * k..(next + 1) * k].to_vec();
                            next += 1;
                            DetectedFace {
                                bbox: f.bbox,
                                score: f.score,
                                landmarks: f.landmarks,
                                detector_mask_scores: f.mask_scores,
                                crop,
                                label: label_of(&p, classes, o.threshold),
                                probabilities: classes.iter().cloned().zip(p).collect(),
                            }
                        })
                        .collect();
                    let (width, height) = d.image.dimensions();
                    (PhotoResult::Ok { path, width, height, faces }, Some(d.image))
                }
                Err(error) => (PhotoResult::Failed { path, error }, None),
            };
            on_photo(&result, image.as_ref())?;
            out.push(result);
        }
    }
    Ok(out)
}

/// The colour of a class's boxes: green for the first class (`with_mask`), red for the second
/// (`without_mask`), then a fixed palette.
pub fn class_colour(index: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 6] = [[0, 190, 70], [230, 30, 30], [30, 110, 240], [240, 150, 0], [170, 60, 200], [0, 170, 170]];
    Rgb(PALETTE[index % PALETTE.len()])
}

/// Draws each face's box (coloured by its label), its five landmarks and `label p` on a filled tag,
/// sized to the photo so it stays legible from thumbnails to large photos.
pub fn annotate(image: &RgbImage, faces: &[DetectedFace], classes: &[String]) -> RgbImage {
    use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_hollow_rect_mut, draw_text_mut, text_size};
    use imageproc::rect::Rect;
    let mut out = image.clone();
    let (w, h) = out.dimensions();
    let short = w.min(h) as f32;
    let thick = ((short / 250.0).round() as i32).max(2);
    let font_px = (short / 28.0).clamp(13.0, 64.0);
    let font = ab_glyph::FontRef::try_from_slice(dejavu::sans::bold()).ok();
    for f in faces {
        let colour = class_colour(classes.iter().position(|c| *c == f.label).unwrap_or(0));
        let [x1, y1, x2, y2] = f.bbox.map(|v| v.round() as i32);
        for t in 0..thick {
            let (rw, rh) = ((x2 - x1 + 2 * t).max(1) as u32, (y2 - y1 + 2 * t).max(1) as u32);
            draw_hollow_rect_mut(&mut out, Rect::at(x1 - t, y1 - t).of_size(rw, rh), colour);
        }
        let dot = (thick + 1) / 2 + 1;
        for [x, y] in f.landmarks.into_iter().flatten() {
            draw_filled_circle_mut(&mut out, (x.round() as i32, y.round() as i32), dot, colour);
        }
        let Some(font) = &font else { continue };
        // The tag's text size follows the photo, and the face when the face is large.
        let px = font_px.max(((x2 - x1) as f32 / 9.0).min(64.0));
        let p = f.probabilities.get(&f.label).copied().unwrap_or(0.0);
        let text = format!("{} {:.2}", f.label, p);
        let (tw, th) = text_size(px, font, &text);
        let pad = (px / 5.0).round() as i32;
        let (tag_w, tag_h) = (tw as i32 + 2 * pad, th as i32 + 2 * pad);
        // Above the box when there is room, else inside its top edge.
        let top = if y1 - thick - tag_h >= 0 { y1 - thick - tag_h } else { y1 + thick };
        let left = (x1 - thick).clamp(0, (w as i32 - tag_w).max(0));
        draw_filled_rect_mut(&mut out, Rect::at(left, top).of_size(tag_w as u32, tag_h as u32), colour);
        draw_text_mut(&mut out, Rgb([255, 255, 255]), left + pad, top + pad, px, font, &text);
    }
    out
}

/// An annotated photo as file bytes: PNG, or JPEG at quality 90.
pub fn encode(img: &RgbImage, png: bool) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if png {
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    } else {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(img)?;
    }
    Ok(bytes)
}
