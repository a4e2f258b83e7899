//! Annotated photos as a dataset: whole photos with a box and a class name for every face.
//!
//! Three on-disk formats are read — Pascal VOC (an XML file per photo), YOLO (a text file per photo,
//! boxes as fractions of the photo) and COCO (one JSON file) — into one shape, [`Annotated`]: photos
//! with pixel boxes `[x1, y1, x2, y2]` and class names mapped through a [`ClassMap`] (the names of a
//! set are rarely the pipeline's: `con_mascarilla` → `with_mask`).
//!
//! Validated as the index validates images: a photo whose file is missing or unreadable, whose
//! recorded size differs from the file's, with a box that is empty, not finite or outside the photo
//! (by more than [`EDGE_TOLERANCE`] px, which is clipped), or with a class name the map does not
//! know, is rejected whole — its other boxes would make an incomplete ground truth — and counted
//! with its reason ([`Reason`]); a malformed annotation file likewise. Nothing is dropped silently,
//! nothing panics. Photos come back sorted by their path, so the result does not depend on the
//! order of a folder listing.
//!
//! [`split`] assigns photos to validation by their content (blake3 of the file's bytes, the index's
//! rule), so a photo keeps its side whatever else is added to the set. [`metrics`] scores detections
//! against the faces as COCO does (AP@[.5:.95], AP@.5, per class and face size, recall).

pub mod metrics;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A box may overshoot the photo by this many pixels (annotation tools round, and Pascal VOC counts
/// from 1): it is clipped. Beyond it the box is rejected.
pub const EDGE_TOLERANCE: f32 = 2.0;

/// One annotated face.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labelled {
    /// The mapped class name.
    pub class: String,
    /// `[x1, y1, x2, y2]` in the photo's pixels, inside the photo.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Marked difficult (VOC) or a crowd (COCO): evaluation neither requires nor penalises it.
    pub difficult: bool,
}

/// One photo and its faces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Photo {
    /// The photo's path relative to the images folder.
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Labelled>,
}

/// Why a photo (or an annotation file) was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The annotation file cannot be read or parsed, or lacks a required field.
    Malformed,
    /// The photo the annotation names is not there.
    MissingImage,
    /// The photo is there but its size cannot be read (not an image, truncated header).
    UnreadableImage,
    /// The size recorded in the annotation is not the photo's.
    SizeMismatch,
    /// A box is empty, not finite, or outside the photo.
    BadBox,
    /// A class name (or YOLO class number) the class map does not know.
    UnknownClass,
    /// A second annotation for a photo already annotated.
    Duplicate,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::MissingImage => "missing_image",
            Reason::UnreadableImage => "unreadable_image",
            Reason::SizeMismatch => "size_mismatch",
            Reason::BadBox => "bad_box",
            Reason::UnknownClass => "unknown_class",
            Reason::Duplicate => "duplicate",
        }
    }
}

/// A rejected photo or annotation file, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The annotation file (or, for COCO, the photo's file name).
    pub source: String,
    pub reason: Reason,
    pub detail: String,
}

/// What a reader found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotated {
    pub photos: Vec<Photo>,
    pub rejected: Vec<Rejected>,
}

impl Annotated {
    /// Rejections per reason.
    pub fn counts(&self) -> BTreeMap<Reason, usize> {
        let mut c = BTreeMap::new();
        for r in &self.rejected {
            *c.entry(r.reason).or_insert(0) += 1;
        }
        c
    }

    /// Faces per class.
    pub fn faces_per_class(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for f in self.photos.iter().flat_map(|p| &p.faces) {
            *c.entry(f.class.clone()).or_insert(0) += 1;
        }
        c
    }

    fn reject(&mut self, source: impl Into<String>, reason: Reason, detail: impl Into<String>) {
        self.rejected.push(Rejected { source: source.into(), reason, detail: detail.into() });
    }

    fn finish(mut self) -> Annotated {
        self.photos.sort_by(|a, b| a.image.as_os_str().as_encoded_bytes().cmp(b.image.as_os_str().as_encoded_bytes()));
        self.rejected.sort_by(|a, b| (&a.source, a.reason).cmp(&(&b.source, b.reason)));
        self
    }
}

/// The set's class names → the pipeline's (`con_mascarilla = "with_mask"`). A name not in the map
/// rejects its photo; several names may map to one class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClassMap(pub BTreeMap<String, String>);

impl ClassMap {
    /// Each name to itself.
    pub fn identity<S: AsRef<str>>(names: &[S]) -> ClassMap {
        ClassMap(names.iter().map(|n| (n.as_ref().to_string(), n.as_ref().to_string())).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The classes it maps to, sorted.
    pub fn classes(&self) -> Vec<String> {
        self.0.values().cloned().collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// A folder that cannot be listed, or a COCO file that is not COCO: the whole read fails.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Malformed { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AnnotationError + '_ {
    move |source| AnnotationError::Io { path: path.to_path_buf(), source }
}

/// A raw box before validation: class name, `[x1, y1, x2, y2]` in pixels, difficult.
type RawBox = (String, [f32; 4], bool);

/// Checks one photo's file and boxes; a photo or the reason it is rejected.
fn validate(
    images: &Path,
    image: &Path,
    recorded: Option<(u32, u32)>,
    boxes: Vec<RawBox>,
    map: &ClassMap,
) -> Result<Photo, (Reason, String)> {
    let (width, height) = image_size(&images.join(image))?;
    if let Some((w, h)) = recorded {
        if (w, h) != (width, height) {
            return Err((Reason::SizeMismatch, format!("annotated as {w}×{h}, the photo is {width}×{height}")));
        }
    }
    let mut faces = Vec::with_capacity(boxes.len());
    for (i, (name, b, difficult)) in boxes.into_iter().enumerate() {
        let class = map
            .get(&name)
            .ok_or_else(|| (Reason::UnknownClass, format!("box {i}: class `{name}` is not in the class map")))?;
        let bbox = check_box(b, width as f32, height as f32).map_err(|why| (Reason::BadBox, format!("box {i} {b:?}: {why}")))?;
        faces.push(Labelled { class: class.to_string(), bbox, difficult });
    }
    Ok(Photo { image: image.to_path_buf(), width, height, faces })
}

/// A box inside `[0, w] × [0, h]` after clipping an overshoot of at most [`EDGE_TOLERANCE`].
pub fn check_box(b: [f32; 4], w: f32, h: f32) -> Result<[f32; 4], String> {
    if !b.iter().all(|v| v.is_finite()) {
        return Err("not finite".into());
    }
    let [x1, y1, x2, y2] = b;
    if x2 <= x1 || y2 <= y1 {
        return Err("empty (x2 ≤ x1 or y2 ≤ y1)".into());
    }
    let t = EDGE_TOLERANCE;
    if x1 < -t || y1 < -t || x2 > w + t || y2 > h + t {
        return Err(format!("outside the {w}×{h} photo"));
    }
    let c = [x1.max(0.0), y1.max(0.0), x2.min(w), y2.min(h)];
    if c[2] - c[0] < 1.0 || c[3] - c[1] < 1.0 {
        return Err("less than a pixel wide or high inside the photo".into());
    }
    Ok(c)
}

fn image_size(path: &Path) -> Result<(u32, u32), (Reason, String)> {
    if !path.is_file() {
        return Err((Reason::MissingImage, format!("{}: no such file", path.display())));
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
        .map_err(|e| (Reason::UnreadableImage, format!("{}: {e}", path.display())))
}

/// The files in `dir` (not recursive, hidden ones skipped) whose name ends with `ext`, sorted.
fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, AnnotationError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                !n.starts_with('.') && n.to_ascii_lowercase().ends_with(ext)
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

fn take(set: &mut Annotated, seen: &mut BTreeSet<PathBuf>, source: &str, photo: Result<Photo, (Reason, String)>) {
    match photo {
        Ok(p) if !seen.insert(p.image.clone()) => {
            set.reject(source, Reason::Duplicate, format!("{} is annotated more than once", p.image.display()))
        }
        Ok(p) => set.photos.push(p),
        Err((reason, detail)) => set.reject(source, reason, detail),
    }
}

/// Pascal VOC: `annotations/*.xml`, each naming its photo in `images/` (`<filename>`), its size
/// and an `<object>` per face (`<name>`, `<difficult>`, `<bndbox>` with `xmin ymin xmax ymax`).
pub fn read_voc(annotations: &Path, images: &Path, map: &ClassMap) -> Result<Annotated, AnnotationError> {
    let mut set = Annotated::default();
    let mut seen = BTreeSet::new();
    for xml in files_with(annotations, ".xml")? {
        let source = xml.display().to_string();
        let parsed = std::fs::read_to_string(&xml)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_voc(&text));
        match parsed {
            Ok(v) => {
                let photo = validate(images, Path::new(&v.file), v.size, v.boxes, map);
                take(&mut set, &mut seen, &source, photo);
            }
            Err(why) => set.reject(source, Reason::Malformed, why),
        }
    }
    Ok(set.finish())
}

/// What one VOC file says: its photo's file name, the size it records (if any), the boxes.
struct VocFile {
    file: String,
    size: Option<(u32, u32)>,
    boxes: Vec<RawBox>,
}

fn parse_voc(text: &str) -> Result<VocFile, String> {
    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.has_tag_name(tag))
    }
    fn text_of(n: roxmltree::Node<'_, '_>, tag: &str) -> Result<String, String> {
        child(n, tag).and_then(|c| c.text()).map(|t| t.trim().to_string()).ok_or_else(|| format!("no <{tag}>"))
    }
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    let file = text_of(root, "filename")?;
    if file.is_empty() || file.contains("..") || file.starts_with('/') {
        return Err(format!("<filename> `{file}` is not a file name"));
    }
    let size = match child(root, "size") {
        Some(s) => {
            let num = |tag| text_of(s, tag)?.parse::<u32>().map_err(|e| format!("<size><{tag}>: {e}"));
            Some((num("width")?, num("height")?))
        }
        None => None,
    };
    let mut boxes = Vec::new();
    for (i, o) in root.children().filter(|c| c.has_tag_name("object")).enumerate() {
        let name = text_of(o, "name").map_err(|e| format!("object {i}: {e}"))?;
        let difficult = match child(o, "difficult").and_then(|d| d.text()) {
            Some(t) => t.trim() == "1",
            None => false,
        };
        let b = child(o, "bndbox").ok_or_else(|| format!("object {i}: no <bndbox>"))?;
        let mut v = [0f32; 4];
        for (k, tag) in ["xmin", "ymin", "xmax", "ymax"].iter().enumerate() {
            v[k] = text_of(b, tag)?.parse::<f32>().map_err(|e| format!("object {i}: <{tag}>: {e}"))?;
        }
        boxes.push((name, v, difficult));
    }
    Ok(VocFile { file, size, boxes })
}

/// YOLO: `labels/<stem>.txt` per photo in `images/<stem>.<ext>`, a line per face:
/// `class cx cy w h`, the class a number into `names` and the box in fractions of the photo. A photo
/// without a label file has no faces (YOLO's convention for background photos); a label file
/// without its photo is rejected.
pub fn read_yolo(labels: &Path, images: &Path, names: &[String], map: &ClassMap) -> Result<Annotated, AnnotationError> {
    let mut set = Annotated::default();
    let mut seen = BTreeSet::new();
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for p in files_with(images, "")? {
        let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if ["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"].contains(&ext.as_str()) {
            if let (Some(stem), Some(name)) = (p.file_stem(), p.file_name()) {
                by_stem.insert(stem.to_string_lossy().into_owned(), PathBuf::from(name));
            }
        }
    }
    let mut labelled = BTreeSet::new();
    for txt in files_with(labels, ".txt")? {
        let source = txt.display().to_string();
        let stem = txt.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(image) = by_stem.get(&stem) else {
            set.reject(source, Reason::MissingImage, format!("no photo named {stem}.* in {}", images.display()));
            continue;
        };
        labelled.insert(stem);
        let lines = match std::fs::read_to_string(&txt) {
            Ok(t) => t,
            Err(e) => {
                set.reject(source, Reason::Malformed, e.to_string());
                continue;
            }
        };
        let photo = image_size(&images.join(image)).and_then(|(w, h)| {
            let boxes = parse_yolo(&lines, names, w as f32, h as f32)?;
            validate(images, image, Some((w, h)), boxes, map)
        });
        take(&mut set, &mut seen, &source, photo);
    }
    for (stem, image) in &by_stem {
        if !labelled.contains(stem) {
            let photo = validate(images, image, None, Vec::new(), map);
            take(&mut set, &mut seen, &image.display().to_string(), photo);
        }
    }
    Ok(set.finish())
}

fn parse_yolo(text: &str, names: &[String], w: f32, h: f32) -> Result<Vec<RawBox>, (Reason, String)> {
    let mut boxes = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: String| (Reason::Malformed, format!("line {}: {why}", i + 1));
        if f.len() != 5 {
            return Err(bad(format!("{} fields, expected `class cx cy w h`", f.len())));
        }
        let class: usize = f[0].parse().map_err(|e| bad(format!("class `{}`: {e}", f[0])))?;
        let name = names
            .get(class)
            .ok_or_else(|| (Reason::UnknownClass, format!("line {}: class {class}, the set names {}", i + 1, names.len())))?;
        let mut v = [0f64; 4];
        for k in 0..4 {
            v[k] = f[k + 1].parse().map_err(|e| bad(format!("`{}`: {e}", f[k + 1])))?;
        }
        let [cx, cy, bw, bh] = v;
        let (w, h) = (w as f64, h as f64);
        let px = [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h];
        boxes.push((name.clone(), px.map(|x| x as f32), false));
    }
    Ok(boxes)
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    /// `[x, y, width, height]`.
    bbox: [f32; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// COCO: one JSON file with `images` (`id`, `file_name`, `width`, `height`), `annotations`
/// (`image_id`, `category_id`, `bbox` as `[x, y, w, h]`, `iscrowd`) and `categories` (`id`, `name`);
/// photos in `images/`. Other fields are ignored; a missing one fails the file.
pub fn read_coco(json: &Path, images: &Path, map: &ClassMap) -> Result<Annotated, AnnotationError> {
    let bytes = std::fs::read(json).map_err(io_err(json))?;
    let coco: CocoFile = serde_json::from_slice(&bytes)
        .map_err(|e| AnnotationError::Malformed { path: json.to_path_buf(), why: format!("not a COCO file: {e}") })?;
    let categories: BTreeMap<u64, &str> = coco.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
    let mut per_image: BTreeMap<u64, Vec<&CocoAnnotation>> = BTreeMap::new();
    for a in &coco.annotations {
        per_image.entry(a.image_id).or_default().push(a);
    }
    let mut set = Annotated::default();
    let ids: BTreeSet<u64> = coco.images.iter().map(|i| i.id).collect();
    for (id, anns) in &per_image {
        if !ids.contains(id) {
            set.reject(json.display().to_string(), Reason::Malformed, format!("{} annotation(s) for image id {id}, which `images` does not list", anns.len()));
        }
    }
    let mut seen = BTreeSet::new();
    for img in &coco.images {
        let source = img.file_name.clone();
        let mut boxes = Vec::new();
        let mut unknown = None;
        for a in per_image.get(&img.id).into_iter().flatten() {
            match categories.get(&a.category_id) {
                Some(name) => {
                    let [x, y, w, h] = a.bbox;
                    boxes.push((name.to_string(), [x, y, x + w, y + h], a.iscrowd == 1));
                }
                None => unknown = Some(a.category_id),
            }
        }
        if let Some(c) = unknown {
            set.reject(source, Reason::UnknownClass, format!("category id {c} is not in `categories`"));
            continue;
        }
        if img.file_name.contains("..") || img.file_name.starts_with('/') {
            set.reject(source, Reason::Malformed, "file_name is not a relative path inside the images folder");
            continue;
        }
        let photo = validate(images, Path::new(&img.file_name), Some((img.width, img.height)), boxes, map);
        take(&mut set, &mut seen, &source, photo);
    }
    Ok(set.finish())
}

/// The annotation format of an annotated folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `annotations/*.xml` beside `images/`.
    #[default]
    Voc,
    /// `labels/*.txt` beside `images/`, class numbers into `names`.
    Yolo,
    /// One JSON file (`coco_file`) beside `images/`.
    Coco,
}

/// The photos of an annotated folder are always in `images/`.
pub const IMAGES_DIR: &str = "images";

/// An annotated folder's layout and class names, as a pipeline file gives them
/// (`[deteval.annotations]`): everything needed to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnotatedFolder {
    /// `voc` (default): `annotations/*.xml`; `yolo`: `labels/*.txt`; `coco`: `coco_file`. The
    /// photos are in `images/` in each case.
    pub format: Format,
    /// The set's class names → the pipeline's (`con_mascarilla = "with_mask"`); several may map to
    /// one. Required: a face whose class is not here rejects its photo (counted).
    pub classes: ClassMap,
    /// YOLO only: class number → the set's class name (YOLO files carry numbers).
    pub names: Vec<String>,
    /// COCO only: the JSON file, relative to the folder (default `annotations.json`).
    pub coco_file: String,
}

impl Default for AnnotatedFolder {
    fn default() -> Self {
        AnnotatedFolder { format: Format::Voc, classes: ClassMap::default(), names: Vec::new(), coco_file: "annotations.json".into() }
    }
}

impl AnnotatedFolder {
    pub fn validate(&self) -> Result<(), String> {
        if self.classes.0.is_empty() {
            return Err("classes: map the set's class names to the pipeline's, e.g. classes = { con_mascarilla = \"with_mask\" }".into());
        }
        if let Some((k, _)) = self.classes.0.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(format!("classes: an empty class name ({k:?})"));
        }
        match self.format {
            Format::Yolo if self.names.is_empty() => Err("format = \"yolo\" needs names = [...] (class number → name)".into()),
            Format::Coco if self.coco_file.is_empty() || self.coco_file.contains("..") => {
                Err(format!("coco_file {:?} must be a file inside the folder", self.coco_file))
            }
            _ => Ok(()),
        }
    }

    /// The photos of the folder `root` and their faces, the rejections counted.
    pub fn read(&self, root: &Path) -> Result<Annotated, AnnotationError> {
        let images = root.join(IMAGES_DIR);
        match self.format {
            Format::Voc => read_voc(&root.join("annotations"), &images, &self.classes),
            Format::Yolo => read_yolo(&root.join("labels"), &images, &self.names, &self.classes),
            Format::Coco => read_coco(&root.join(&self.coco_file), &images, &self.classes),
        }
    }
}

/// For each photo, whether it is in the validation part: `u(blake3 of its bytes, seed) < valid_pct`
/// (the index's rule), so a photo's side depends on its content alone.
pub fn split(photos: &[Photo], images: &Path, valid_pct: f64, seed: u64) -> Result<Vec<bool>, AnnotationError> {
    photos
        .iter()
        .map(|p| {
            let path = images.join(&p.image);
            let (hash, _) = maskflow_core::hash::blake3_file(&path).map_err(io_err(&path))?;
            Ok(maskflow_core::hash::unit_interval(seed, &hash) < valid_pct)
        })
        .collect()
}

#[cfg(test)]
mod tests;
