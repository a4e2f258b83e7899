//! The annotated photos a detector trains on: decoded once, kept as `(3, H, W)` uint8 tensors with
//! their faces in pixels, split by content as `deteval` splits them (so the photos it scores are
//! the ones training never saw).

use anyhow::{bail, Result};
use maskflow_annotations::{AnnotatedFolder, Photo, IMAGES_DIR};
use maskflow_models::ssd_train::Target;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// One photo: its pixels and faces (`[x1, y1, x2, y2]` in pixels, class index).
pub struct Sample {
    pub image: Tensor,
    pub faces: Vec<Target>,
}

/// The two parts and what was left out.
pub struct Photos {
    pub train: Vec<Sample>,
    pub valid: Vec<Sample>,
    /// The annotation reader's rejections, by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Photos that failed to decode (left out), with the reason.
    pub unreadable: Vec<String>,
    /// Difficult faces left out of the targets (neither taught nor counted against).
    pub difficult: usize,
}

/// Reads the folder, splits it (`valid_pct`, `seed`), decodes every photo. `classes` are the
/// detector's, in its output order; the folder's mapped classes must be among them.
pub fn load(root: &Path, folder: &AnnotatedFolder, classes: &[&str], valid_pct: f64, seed: u64) -> Result<Photos> {
    let annotated = folder.read(root)?;
    let rejected = annotated.counts().into_iter().map(|(r, n)| (r.name().to_string(), n)).collect();
    if let Some(c) = folder.classes.classes().into_iter().find(|c| !classes.contains(&c.as_str())) {
        bail!("the detector's classes are {classes:?}; the annotations map a face to {c:?}");
    }
    let images = root.join(IMAGES_DIR);
    let held = maskflow_annotations::split(&annotated.photos, &images, valid_pct, seed)?;
    let decoded: Vec<Result<Sample, String>> = annotated.photos.par_iter().map(|p| sample(&images, p, classes)).collect();
    let mut out = Photos { train: Vec::new(), valid: Vec::new(), rejected, unreadable: Vec::new(), difficult: 0 };
    out.difficult = annotated.photos.iter().flat_map(|p| &p.faces).filter(|f| f.difficult).count();
    for ((p, s), h) in annotated.photos.iter().zip(decoded).zip(held) {
        match s {
            Ok(s) if h => out.valid.push(s),
            Ok(s) => out.train.push(s),
            Err(e) => out.unreadable.push(format!("{}: {e}", p.image.display())),
        }
    }
    if out.train.is_empty() {
        bail!("{}: no annotated photo to train on ({} held out, {} unreadable)", root.display(), out.valid.len(), out.unreadable.len());
    }
    Ok(out)
}

fn sample(images: &Path, p: &Photo, classes: &[&str]) -> Result<Sample, String> {
    let rgb = maskflow_imaging::read_photo(&images.join(&p.image)).map_err(|e| e.message)?;
    let (w, h) = rgb.dimensions();
    let image = Tensor::from_data_size(rgb.as_raw(), &[h as i64, w as i64, 3], Kind::Uint8).permute([2, 0, 1]).contiguous();
    let faces = p
        .faces
        .iter()
        .filter(|f| !f.difficult)
        .map(|f| Target {
            bbox: f.bbox.map(f64::from),
            class: classes.iter().position(|c| *c == f.class).unwrap_or_else(|| unreachable!("checked above")),
        })
        .collect();
    Ok(Sample { image, faces })
}
