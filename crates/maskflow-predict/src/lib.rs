//! maskflow-predict: `maskflow predict`: a bundle on files, folders (recursive) and globs, through exactly the prep
//! stage's decode/resize code, batched across cores. A file that cannot be read or decoded is reported
//! with its reason; the others go on.

use maskflow_contracts::bundle::{ModelCard, MODULE_FILE};
pub use maskflow_contracts::eval::Tta;
use maskflow_contracts::JsonFile;
use anyhow::{Context, Result};
use maskflow_imaging::Resizer;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub mod detect;

pub struct Bundle {
    pub module: tch::CModule,
    pub card: ModelCard,
    pub device: Device,
}

/// Loads `model.pt` and `model_card.json` from a bundle directory.
pub fn load(dir: &Path, device: Device) -> Result<Bundle> {
    let card = ModelCard::read(dir).with_context(|| format!("{}: not a maskflow bundle", dir.display()))?;
    let pt = dir.join(MODULE_FILE);
    let mut module = tch::CModule::load_on_device(&pt, device).with_context(|| format!("loading {}", pt.display()))?;
    module.set_eval();
    Ok(Bundle { module, card, device })
}

/// One input's result.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok { path: String, label: String, probs: Vec<f32> },
    Failed { path: String, reason: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
    pub fn path(&self) -> &str {
        match self {
            Outcome::Ok { path, .. } | Outcome::Failed { path, .. } => path,
        }
    }
    /// Why it failed (empty for a success).
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ok { .. } => "",
            Outcome::Failed { reason, .. } => reason,
        }
    }
}

/// Files named by `inputs`: files as given, folders walked recursively by the dataset's walk
/// ([`maskflow_core::dataset::walk_folder`]: hidden entries skipped, symlinks followed, loops
/// detected, sorted), anything else read as a glob. Inputs that match nothing, and what a walk could
/// not use (a broken link, a loop, an unreadable folder), come back as failures with the reason.
pub fn expand(inputs: &[String]) -> (Vec<PathBuf>, Vec<Outcome>) {
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for input in inputs {
        let p = Path::new(input);
        if p.is_file() {
            files.push(p.to_path_buf());
        } else if p.is_dir() {
            let (found, notes) = maskflow_core::dataset::walk_folder(p, Path::new(""), "");
            if found.is_empty() && notes.is_empty() {
                failed.push(Outcome::Failed { path: input.clone(), reason: "folder holds no files".into() });
            }
            files.extend(found.into_iter().map(|f| p.join(f.rel)));
            failed.extend(notes.into_iter().map(|n| Outcome::Failed {
                path: p.join(&n.path).display().to_string(),
                reason: n.what,
            }));
        } else if input.contains(['*', '?', '[']) {
            match glob::glob(input) {
                Ok(paths) => {
                    let mut matched: Vec<PathBuf> = paths.flatten().filter(|p| p.is_file()).collect();
                    matched.sort();
                    if matched.is_empty() {
                        failed.push(Outcome::Failed {
                            path: input.clone(),
                            reason: "no file matches this pattern".into(),
                        });
                    }
                    files.extend(matched);
                }
                Err(e) => failed.push(Outcome::Failed { path: input.clone(), reason: format!("bad pattern: {e}") }),
            }
        } else {
            failed.push(Outcome::Failed { path: input.clone(), reason: "no such file or folder".into() });
        }
    }
    (files, failed)
}

/// The image as the model takes it (prep's path, then a centre crop if training used a smaller crop).
pub fn prepare(path: &Path, card: &ModelCard, resizer: &mut Resizer) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    // The index stage's default header limits: a decompression bomb is refused, not decoded.
    let limits = maskflow_imaging::Limits::default();
    let img = maskflow_imaging::prepare_pixels(&bytes, &card.preprocessing, resizer, &limits)
        .map_err(|e| e.to_string())?;
    Ok(centre_crop(img, card))
}

/// An already decoded picture (a face cut from a photo) as the model takes it: the bundle's resize,
/// then its centre crop.
pub fn prepare_rgb(img: &image::RgbImage, card: &ModelCard, resizer: &mut Resizer) -> Result<Vec<u8>, String> {
    let p = &card.preprocessing;
    let img = resizer.square(img, p.size, p.resize, p.filter, p.background).map_err(|e| e.to_string())?;
    Ok(centre_crop(img, card))
}

fn centre_crop(img: image::RgbImage, card: &ModelCard) -> Vec<u8> {
    let (s, w) = (card.input.height as u32, img.width());
    if w == s {
        return img.into_raw();
    }
    let off = (w.saturating_sub(s)) / 2;
    image::imageops::crop_imm(&img, off, off, s, s).to_image().into_raw()
}

/// A decision rule: `Some((class, threshold))` labels an image `class` when its probability is at least
/// the threshold, else the most probable other class; `None` takes the most probable class.
pub type Threshold = Option<(usize, f64)>;

pub fn label_of(probs: &[f32], classes: &[String], threshold: Threshold) -> String {
    let argmax = |skip: Option<usize>| {
        probs
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0)
    };
    let i = match threshold {
        Some((c, t)) if f64::from(probs[c]) >= t => c,
        Some((c, _)) => argmax(Some(c)),
        None => argmax(None),
    };
    classes[i].clone()
}

/// One test-time-augmentation view of a uint8 batch (N, H, W, 3): `view` maps output to source
/// coordinates (normalised, as eval's views); a mirror is exact, a zoom is sampled bilinearly
/// (reflection at the borders, as eval) and rounded back to 8 bits, since the bundle takes bytes.
pub fn view_u8(x: &Tensor, view: &[f64; 9]) -> Tensor {
    const ID: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    const MIRROR: [f64; 9] = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    if *view == ID {
        return x.shallow_clone();
    }
    if *view == MIRROR {
        return x.flip([2]);
    }
    let (n, h, w) = (x.size()[0], x.size()[1], x.size()[2]);
    let theta: Vec<f32> = view[..6].iter().map(|&v| v as f32).collect();
    let theta = Tensor::from_slice(&theta).view([1, 2, 3]).expand([n, 2, 3], false).to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, [n, 3, h, w], false);
    let f = x.permute([0, 3, 1, 2]).to_kind(Kind::Float).contiguous();
    f.grid_sampler(&grid, 0, 2, false).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).permute([0, 2, 3, 1]).contiguous()
}

/// The bundle's probabilities for `(N, S, S, 3)` uint8 pixels (`images` packed), in batches of
/// `batch`: `N × classes` values.
pub fn classify_pixels(bundle: &Bundle, images: &[u8], batch: usize) -> Result<Vec<f32>> {
    let s = bundle.card.input.height;
    let per = (s * s * 3) as usize;
    let mut probs = Vec::with_capacity(images.len() / per.max(1) * bundle.card.classes.len());
    for chunk in images.chunks(per * batch.max(1)) {
        let n = (chunk.len() / per) as i64;
        let x = Tensor::from_data_size(chunk, &[n, s, s, 3], Kind::Uint8).to_device(bundle.device);
        let y = tch::no_grad(|| bundle.module.forward_ts(&[x])).context("running the TorchScript module")?;
        probs.extend(Vec::<f32>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?);
    }
    Ok(probs)
}

/// The bundle's probabilities for a uint8 batch, averaged over `tta`'s views (weighted).
fn forward(bundle: &Bundle, x: &Tensor, tta: Tta) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for (view, weight) in tta.views() {
        let y = tch::no_grad(|| bundle.module.forward_ts(&[view_u8(x, &view)])).context("running the TorchScript module")?;
        let y = y.to_kind(Kind::Float) * weight;
        sum = Some(match sum {
            Some(s) => s + y,
            None => y,
        });
    }
    sum.context("no views")
}

/// Runs the bundle on `paths` in batches of `batch`, decoding each batch in parallel; results in input
/// order.
pub fn predict(bundle: &Bundle, paths: &[PathBuf], batch: usize, threshold: Threshold) -> Result<Vec<Outcome>> {
    predict_tta(bundle, paths, batch, threshold, Tta::None)
}

/// [`predict`] with test-time augmentation (`Tta::None` is exactly [`predict`]).
pub fn predict_tta(bundle: &Bundle, paths: &[PathBuf], batch: usize, threshold: Threshold, tta: Tta) -> Result<Vec<Outcome>> {
    let s = bundle.card.input.height;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch.max(1)) {
        let prepared: Vec<Result<Vec<u8>, String>> =
            chunk.par_iter().map_init(Resizer::default, |r, p| prepare(p, &bundle.card, r)).collect();
        let good: Vec<&Vec<u8>> = prepared.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut probs: Vec<f32> = Vec::new();
        if !good.is_empty() {
            let mut flat = Vec::with_capacity(good.len() * (s * s * 3) as usize);
            good.iter().for_each(|g| flat.extend_from_slice(g));
            let x = Tensor::from_data_size(&flat, &[good.len() as i64, s, s, 3], Kind::Uint8).to_device(bundle.device);
            let y = if tta == Tta::None {
                tch::no_grad(|| bundle.module.forward_ts(&[x])).context("running the TorchScript module")?
            } else {
                forward(bundle, &x, tta)?
            };
            probs = Vec::<f32>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
        }
        let k = bundle.card.classes.len();
        let mut next = 0;
        for (p, r) in chunk.iter().zip(prepared) {
            let path = p.display().to_string();
            match r {
                Ok(_) => {
                    let pr = probs[next * k..(next + 1) * k].to_vec();
                    next += 1;
                    out.push(Outcome::Ok { label: label_of(&pr, &bundle.card.classes, threshold), probs: pr, path });
                }
                Err(reason) => out.push(Outcome::Failed { path, reason }),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tta_views_of_bytes() {
        let x = Tensor::randint(256, [2, 16, 16, 3], (Kind::Uint8, Device::Cpu));
        let views = Tta::Fastai.views();
        assert!(view_u8(&x, &views[0].0).equal(&x));
        assert!(view_u8(&x, &Tta::Flip.views()[1].0).equal(&x.flip([2])));
        // A zoom of a constant image is the same constant; of a real one, a different image.
        let c = Tensor::full([1, 16, 16, 3], 77, (Kind::Uint8, Device::Cpu));
        for (v, _) in &views[1..] {
            assert!(view_u8(&c, v).equal(&c));
            assert!(!view_u8(&x, v).equal(&x));
        }
    }

    #[test]
    fn threshold_rule() {
        let classes = vec!["with_mask".to_string(), "without_mask".to_string()];
        assert_eq!(label_of(&[0.7, 0.3], &classes, None), "with_mask");
        assert_eq!(label_of(&[0.7, 0.3], &classes, Some((1, 0.25))), "without_mask");
        assert_eq!(label_of(&[0.7, 0.3], &classes, Some((1, 0.5))), "with_mask");
    }

    #[test]
    fn expand_reports_what_matches_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/x.jpg"), b"x").unwrap();
        std::fs::write(d.path().join("a/.hidden.jpg"), b"x").unwrap();
        std::fs::write(d.path().join("y.png"), b"y").unwrap();
        let inputs = vec![
            d.path().join("a").display().to_string(),
            d.path().join("*.png").display().to_string(),
            d.path().join("*.gif").display().to_string(),
            d.path().join("missing.jpg").display().to_string(),
        ];
        let (files, failed) = expand(&inputs);
        assert_eq!(files, vec![d.path().join("a/b/x.jpg"), d.path().join("y.png")]);
        assert_eq!(failed.len(), 2);
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    /// `predict` / `detect` walk a folder as the index walks a dataset: a folder of symlinks gives
    /// their targets, a symlinked folder is entered, a loop and a broken link are reported with
    /// their reason (they once came back as "0 photo(s)" with no word).
    #[test]
    fn a_folder_of_symlinks_is_walked_as_the_index_walks_it() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir_all(real.join("deep")).unwrap();
        std::fs::write(real.join("one.jpg"), b"1").unwrap();
        std::fs::write(real.join("deep/two.jpg"), b"2").unwrap();
        let links = d.path().join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(real.join("one.jpg"), links.join("a.jpg")).unwrap();
        std::os::unix::fs::symlink(real.join("deep"), links.join("dir")).unwrap();
        std::os::unix::fs::symlink(&links, links.join("dir-loop")).unwrap();
        std::os::unix::fs::symlink(d.path().join("gone.jpg"), links.join("broken.jpg")).unwrap();
        let (files, failed) = expand(&[links.display().to_string()]);
        assert_eq!(files, vec![links.join("a.jpg"), links.join("dir/two.jpg")]);
        let reasons: Vec<String> = failed.iter().map(|f| format!("{}: {}", f.path(), f.reason())).collect();
        assert_eq!(failed.len(), 2, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("broken.jpg") && r.contains("broken symlink")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("dir-loop") && r.contains("symlink loop")), "{reasons:?}");
        // An empty folder is a failure too, not zero photos.
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        let (files, failed) = expand(&[d.path().join("empty").display().to_string()]);
        assert!(files.is_empty() && failed[0].reason().contains("no files"));
    }
}
