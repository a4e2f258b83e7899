//! A deterministic generator of a two-class dataset of drawn faces, `with_mask/` and `without_mask/`.
//!
//! What varies per image (all drawn from a SplitMix64 stream derived from (seed, class, index)):
//! canvas size and aspect, background (flat, gradient, stripes, noise), face position, size and
//! skin tone, a small rotation of the whole face, eye and mouth shapes, lighting (a brightness ramp)
//! and sensor noise. Masks take colours from a wide palette that includes skin tones, and faces
//! without a mask often wear a scarf, hat or collar in the same palette — so no single pixel or colour
//! decides the class; where the colour sits (over nose and mouth, or not) does.
//!
//! Files are a mix of JPEG (several qualities), PNG (RGB, RGBA with a partly transparent background,
//! grayscale), grayscale JPEG and lossless WebP, with some lying or upper-case extensions and names
//! with spaces and non-ASCII characters. Some exact duplicates and near-duplicates (re-encoded,
//! resized) are planted, and a few bad files: zero bytes, a truncated JPEG, a text file named `.jpg`,
//! a PNG whose header claims 60000×60000 pixels, and an unsupported container (HEIF).
//!
//! Same parameters ⇒ identical bytes.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use imageproc::drawing::draw_polygon_mut;
use imageproc::point::Point;
use maskflow_core::rng::SplitMix64;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CLASSES: [&str; 2] = ["with_mask", "without_mask"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthParams {
    pub seed: u64,
    /// Images drawn per class (duplicates and bad files come on top).
    pub per_class: usize,
    /// Smallest and largest canvas side in pixels.
    pub min_side: u32,
    pub max_side: u32,
    /// Plant exact and near duplicates.
    pub duplicates: bool,
    /// Plant bad files (zero bytes, truncated, not an image, too large, unsupported).
    pub bad_files: bool,
}

impl Default for SynthParams {
    fn default() -> Self {
        Self { seed: 7, per_class: 150, min_side: 96, max_side: 320, duplicates: true, bad_files: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("encoding {path}: {source}")]
    Encode { path: PathBuf, source: image::ImageError },
    #[error("invalid parameters: {0}")]
    Params(String),
}

/// What was written, for the caller's summary.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct SynthSummary {
    pub images: usize,
    pub exact_duplicates: usize,
    pub near_duplicates: usize,
    pub bad_files: Vec<String>,
    pub files: usize,
}

/// One planned output file (relative path + bytes).
struct FileOut {
    rel: String,
    bytes: Vec<u8>,
}

/// Writes the dataset under `out` (which may exist; files are overwritten, nothing else is touched).
pub fn generate(params: &SynthParams, out: &Path) -> Result<SynthSummary, SynthError> {
    let files = plan(params)?;
    let mut summary = SynthSummary::default();
    for f in &files {
        let path = out.join(&f.rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SynthError::Io { path: parent.into(), source })?;
        }
        maskflow_core::fsutil::write_atomic(&path, &f.bytes)
            .map_err(|source| SynthError::Io { path: path.clone(), source })?;
        if f.rel.contains("/broken_") {
            summary.bad_files.push(f.rel.clone());
        } else if f.rel.contains("/copy of ") {
            summary.exact_duplicates += 1;
        } else if f.rel.contains("/near ") {
            summary.near_duplicates += 1;
        } else {
            summary.images += 1;
        }
    }
    summary.files = files.len();
    Ok(summary)
}

fn plan(p: &SynthParams) -> Result<Vec<FileOut>, SynthError> {
    if p.min_side < 32 || p.max_side < p.min_side || p.max_side > 4096 {
        return Err(SynthError::Params(format!(
            "need 32 <= min_side <= max_side <= 4096, got {}..{}",
            p.min_side, p.max_side
        )));
    }
    let jobs: Vec<(usize, usize)> =
        (0..CLASSES.len()).flat_map(|c| (0..p.per_class).map(move |i| (c, i))).collect();
    let drawn: Vec<Result<Vec<FileOut>, SynthError>> =
        jobs.par_iter().map(|&(c, i)| draw_files(p, c, i)).collect();
    let mut files = Vec::new();
    for d in drawn {
        files.extend(d?);
    }
    if p.bad_files {
        files.extend(bad_files(p)?);
    }
    Ok(files)
}

const SKIN: [[u8; 3]; 8] = [
    [255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
    [161, 102, 56], [141, 85, 36], [110, 66, 32], [80, 50, 30],
];
/// Mask / scarf palette: medical blues and whites, dark cloth, prints, and skin-like tones.
const CLOTH: [[u8; 3]; 14] = [
    [170, 210, 235], [120, 180, 220], [245, 245, 245], [30, 30, 35], [60, 60, 70], [200, 40, 50],
    [40, 120, 60], [240, 200, 60], [230, 150, 170], [120, 70, 150], [224, 172, 105], [198, 134, 66],
    [141, 85, 36], [255, 224, 196],
];

fn random_color(rng: &mut SplitMix64) -> Rgb<u8> {
    Rgb([rng.int(0, 255) as u8, rng.int(0, 255) as u8, rng.int(0, 255) as u8])
}

fn jitter(rng: &mut SplitMix64, c: [u8; 3], amount: i64) -> Rgb<u8> {
    let mut out = [0u8; 3];
    for k in 0..3 {
        out[k] = (c[k] as i64 + rng.int(-amount, amount)).clamp(0, 255) as u8;
    }
    Rgb(out)
}

/// Points of an ellipse (centre, radii, rotation about `pivot` by `angle` radians), as a polygon.
fn ellipse(cx: f64, cy: f64, rx: f64, ry: f64, pivot: (f64, f64), angle: f64) -> Vec<Point<i32>> {
    let n = 40;
    (0..n)
        .map(|k| {
            let t = k as f64 / n as f64 * std::f64::consts::TAU;
            rotate(cx + rx * t.cos(), cy + ry * t.sin(), pivot, angle)
        })
        .collect()
}

fn poly(pts: &[(f64, f64)], pivot: (f64, f64), angle: f64) -> Vec<Point<i32>> {
    pts.iter().map(|&(x, y)| rotate(x, y, pivot, angle)).collect()
}

fn rotate(x: f64, y: f64, pivot: (f64, f64), angle: f64) -> Point<i32> {
    let (s, c) = angle.sin_cos();
    let dx = x - pivot.0;
    let dy = y - pivot.1;
    Point::new((pivot.0 + dx * c - dy * s).round() as i32, (pivot.1 + dx * s + dy * c).round() as i32)
}

fn fill(img: &mut RgbImage, pts: Vec<Point<i32>>, color: Rgb<u8>) {
    // imageproc refuses polygons whose first and last points coincide.
    let mut pts = pts;
    pts.dedup();
    while pts.len() > 2 && pts.first() == pts.last() {
        pts.pop();
    }
    if pts.len() >= 3 {
        draw_polygon_mut(img, &pts, color);
    }
}

/// Draws one face at 2× resolution and returns it downsampled (anti-aliased) to (w, h), plus the
/// per-pixel background mask (true where the background shows) for the alpha variants.
fn draw_face(rng: &mut SplitMix64, masked: bool, w: u32, h: u32) -> (RgbImage, Vec<bool>) {
    let (w2, h2) = (w * 2, h * 2);
    let mut img = RgbImage::new(w2, h2);
    // Background.
    let bg_a = random_color(rng);
    let bg_b = random_color(rng);
    let pattern = rng.int(0, 3);
    let stripe = rng.int(6, 30) as u32;
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = match pattern {
            0 => 0.0,
            1 => (x + y) as f64 / (w2 + h2) as f64,
            2 => (((x / stripe) + (y / stripe)) % 2) as f64,
            _ => ((x as f64 * 0.07).sin() * (y as f64 * 0.05).cos() + 1.0) / 2.0,
        };
        for k in 0..3 {
            px.0[k] = (bg_a.0[k] as f64 * (1.0 - t) + bg_b.0[k] as f64 * t) as u8;
        }
    }

    let m = w2.min(h2) as f64;
    let rx = m * rng.range(0.2, 0.34);
    let ry = rx * rng.range(1.15, 1.35);
    let cx = w2 as f64 * rng.range(0.38, 0.62);
    let cy = h2 as f64 * rng.range(0.4, 0.6);
    let angle = rng.range(-0.22, 0.22);
    let piv = (cx, cy);
    let skin = { let base = *rng.pick(&SKIN); jitter(rng, base, 12) };
    let cloth = { let base = *rng.pick(&CLOTH); jitter(rng, base, 15) };
    let hair = { let base = *rng.pick(&[[20u8, 15, 10], [90, 60, 30], [200, 170, 90], [120, 120, 120]]); jitter(rng, base, 10) };

    // Neck and shoulders / collar, hair, face.
    fill(&mut img, poly(&[(cx - rx * 0.45, cy + ry * 0.7), (cx + rx * 0.45, cy + ry * 0.7),
        (cx + rx * 0.5, cy + ry * 1.6), (cx - rx * 0.5, cy + ry * 1.6)], piv, angle), skin);
    if rng.chance(0.6) {
        fill(&mut img, ellipse(cx, cy - ry * 0.25, rx * 1.08, ry * 0.85, piv, angle), hair);
    }
    fill(&mut img, ellipse(cx, cy, rx, ry, piv, angle), skin);
    // A scarf, collar or hat in the mask palette on faces without a mask (colour is not the cue).
    if !masked && rng.chance(0.6) {
        match rng.int(0, 2) {
            0 => fill(&mut img, poly(&[(cx - rx * 1.1, cy + ry * 1.05), (cx + rx * 1.1, cy + ry * 1.05),
                (cx + rx * 1.3, cy + ry * 1.7), (cx - rx * 1.3, cy + ry * 1.7)], piv, angle), cloth),
            1 => fill(&mut img, ellipse(cx, cy - ry * 0.85, rx * 1.05, ry * 0.35, piv, angle), cloth),
            _ => fill(&mut img, ellipse(cx, cy + ry * 1.25, rx * 0.9, ry * 0.3, piv, angle), cloth),
        }
    }
    // Eyes.
    let eye = jitter(rng, [40, 30, 25], 20);
    let ey = cy - ry * rng.range(0.12, 0.25);
    let ex = rx * rng.range(0.3, 0.42);
    let er = rx * rng.range(0.08, 0.14);
    for sx in [-1.0, 1.0] {
        fill(&mut img, ellipse(cx + sx * ex, ey, er * 1.4, er * 0.9, piv, angle), Rgb([240, 240, 240]));
        fill(&mut img, ellipse(cx + sx * ex, ey, er * 0.7, er * 0.7, piv, angle), eye);
    }
    if masked {
        // The mask: from the bridge of the nose to the chin, ear loops, pleats.
        let top = cy + ry * rng.range(-0.05, 0.12);
        let bottom = cy + ry * rng.range(0.8, 0.98);
        let half = rx * rng.range(0.85, 1.0);
        fill(&mut img, poly(&[(cx - half, top + ry * 0.08), (cx - half * 0.4, top - ry * 0.02),
            (cx + half * 0.4, top - ry * 0.02), (cx + half, top + ry * 0.08),
            (cx + half * 0.75, bottom - ry * 0.1), (cx, bottom), (cx - half * 0.75, bottom - ry * 0.1)],
            piv, angle), cloth);
        let shade = Rgb([cloth.0[0].saturating_sub(40), cloth.0[1].saturating_sub(40), cloth.0[2].saturating_sub(40)]);
        for k in 1..=3 {
            let y = top + (bottom - top) * k as f64 / 4.0;
            fill(&mut img, poly(&[(cx - half * 0.8, y), (cx + half * 0.8, y), (cx + half * 0.8, y + 3.0),
                (cx - half * 0.8, y + 3.0)], piv, angle), shade);
        }
        for sx in [-1.0, 1.0] {
            fill(&mut img, poly(&[(cx + sx * half, top + ry * 0.1), (cx + sx * rx * 1.02, cy - ry * 0.05),
                (cx + sx * rx * 1.02, cy - ry * 0.05 + 3.0), (cx + sx * half, top + ry * 0.1 + 3.0)],
                piv, angle), shade);
        }
    } else {
        // Nose and mouth.
        let nose = Rgb([skin.0[0].saturating_sub(35), skin.0[1].saturating_sub(35), skin.0[2].saturating_sub(35)]);
        fill(&mut img, poly(&[(cx, cy - ry * 0.05), (cx - rx * 0.12, cy + ry * 0.22),
            (cx + rx * 0.12, cy + ry * 0.22)], piv, angle), nose);
        let lips = { let base = *rng.pick(&[[180u8, 60, 70], [150, 70, 60], [120, 50, 50], [200, 110, 110]]); jitter(rng, base, 15) };
        let my = cy + ry * rng.range(0.42, 0.55);
        let mw = rx * rng.range(0.3, 0.5);
        let mh = ry * rng.range(0.05, 0.14);
        fill(&mut img, ellipse(cx, my, mw, mh, piv, angle), lips);
        if rng.chance(0.3) {
            fill(&mut img, ellipse(cx, my, mw * 0.8, mh * 0.35, piv, angle), Rgb([60, 20, 20]));
        }
    }
    // Lighting ramp and noise.
    let gain_a = rng.range(0.7, 1.3);
    let gain_b = rng.range(0.7, 1.3);
    let horizontal = rng.chance(0.5);
    let noise = rng.range(0.0, 10.0);
    let mut noise_rng = SplitMix64::new(rng.next_u64());
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = if horizontal { x as f64 / w2 as f64 } else { y as f64 / h2 as f64 };
        let g = gain_a * (1.0 - t) + gain_b * t;
        for k in 0..3 {
            let n = (noise_rng.f64() - 0.5) * 2.0 * noise;
            px.0[k] = (px.0[k] as f64 * g + n).clamp(0.0, 255.0) as u8;
        }
    }
    // Background mask at 1×: a pixel is background when outside the face's bounding ellipse (with
    // margin) — used only to make a partly transparent background for the RGBA variants.
    let small = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    let bg: Vec<bool> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let dx = (x as f64 * 2.0 - cx) / (rx * 1.25);
            let dy = (y as f64 * 2.0 - cy) / (ry * 1.9);
            dx * dx + dy * dy > 1.0
        })
        .collect();
    (small, bg)
}

#[derive(Clone, Copy)]
enum Encoding {
    Jpeg(u8),
    Png,
    PngRgba,
    PngGray,
    JpegGray(u8),
    WebP,
}

fn encode(img: &RgbImage, bg: &[bool], enc: Encoding, rng: &mut SplitMix64) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    match enc {
        Encoding::Jpeg(q) => JpegEncoder::new_with_quality(&mut out, q).encode_image(img)?,
        Encoding::Png => PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)?,
        Encoding::PngRgba => {
            let alpha = rng.int(0, 160) as u8;
            let rgba = RgbaImage::from_fn(w, h, |x, y| {
                let p = img.get_pixel(x, y).0;
                let a = if bg[(y * w + x) as usize] { alpha } else { 255 };
                Rgba([p[0], p[1], p[2], a])
            });
            PngEncoder::new(&mut out).write_image(rgba.as_raw(), w, h, image::ExtendedColorType::Rgba8)?
        }
        Encoding::PngGray => {
            let g = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
            PngEncoder::new(&mut out).write_image(g.as_raw(), w, h, image::ExtendedColorType::L8)?
        }
        Encoding::JpegGray(q) => {
            let g = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
            JpegEncoder::new_with_quality(&mut out, q).encode_image(&g)?
        }
        Encoding::WebP => WebPEncoder::new_lossless(&mut out).write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)?,
    }
    Ok(out)
}

fn draw_files(p: &SynthParams, class: usize, i: usize) -> Result<Vec<FileOut>, SynthError> {
    let mut rng = SplitMix64::derive(p.seed, &[class as u64, i as u64]);
    let w = rng.int(p.min_side as i64, p.max_side as i64) as u32;
    let aspect = rng.range(0.75, 1.33);
    let h = ((w as f64 * aspect) as u32).clamp(p.min_side, p.max_side);
    let (img, bg) = draw_face(&mut rng, class == 0, w, h);
    // Originals of near copies are plain JPEGs, so the near copy shows the same picture (an RGBA
    // original would show its background differently once composited).
    let near_copy = p.duplicates && i % 25 == 11;
    let roll = if near_copy { 0.0 } else { rng.f64() };
    let (enc, ext) = match roll {
        r if r < 0.50 => (Encoding::Jpeg(rng.int(60, 95) as u8), "jpg"),
        r if r < 0.62 => (Encoding::Png, "png"),
        r if r < 0.74 => (Encoding::PngRgba, "png"),
        r if r < 0.80 => (Encoding::PngGray, "png"),
        r if r < 0.90 => (Encoding::JpegGray(rng.int(70, 95) as u8), "jpeg"),
        _ => (Encoding::WebP, "webp"),
    };
    // Names: mostly plain, some with spaces, non-ASCII, upper case, or a lying extension.
    let stem = match rng.int(0, 9) {
        0 => format!("visage été {i:04}"),
        1 => format!("img ({i})"),
        2 => format!("IMG_{i:04}"),
        _ => format!("{}_{i:04}", if class == 0 { "masked" } else { "face" }),
    };
    let ext = match rng.int(0, 11) {
        0 => "jpg".to_string(), // lies for PNG/WebP, true for JPEG
        1 => ext.to_uppercase(),
        _ => ext.to_string(),
    };
    let dir = CLASSES[class];
    let path = |name: String| PathBuf::from(dir).join(name).to_string_lossy().into_owned();
    let err = |e| SynthError::Encode { path: PathBuf::from(path(format!("{stem}.{ext}"))), source: e };
    let bytes = encode(&img, &bg, enc, &mut rng).map_err(err)?;
    let mut files = vec![FileOut { rel: path(format!("{stem}.{ext}")), bytes: bytes.clone() }];
    if p.duplicates && i % 25 == 3 {
        files.push(FileOut { rel: path(format!("copy of {stem}.{ext}")), bytes });
    }
    if near_copy {
        // Near duplicate: the same picture, resized to 90% and re-encoded as JPEG at another quality.
        let small = image::imageops::resize(&img, w * 9 / 10, h * 9 / 10, image::imageops::FilterType::Triangle);
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 80).encode_image(&small).map_err(err)?;
        files.push(FileOut { rel: path(format!("near {stem}.jpg")), bytes: out });
    }
    Ok(files)
}

fn bad_files(p: &SynthParams) -> Result<Vec<FileOut>, SynthError> {
    let mut rng = SplitMix64::derive(p.seed, &[99]);
    let (img, _) = draw_face(&mut rng, true, 160, 160);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .map_err(|e| SynthError::Encode { path: "broken_truncated.jpg".into(), source: e })?;
    let truncated = jpeg[..jpeg.len() * 3 / 5].to_vec();
    Ok(vec![
        FileOut { rel: "with_mask/broken_empty.jpg".into(), bytes: Vec::new() },
        FileOut { rel: "with_mask/broken_truncated.jpg".into(), bytes: truncated },
        FileOut { rel: "without_mask/broken_notes.jpg".into(), bytes: b"these are my notes, not a picture\n".to_vec() },
        FileOut { rel: "without_mask/broken_bomb.png".into(), bytes: png_bomb_header(60_000, 60_000) },
        FileOut { rel: "without_mask/broken_photo.heic".into(), bytes: heif_stub() },
    ])
}

/// A PNG signature and an IHDR chunk that claims `w`×`h` RGB pixels, then a tiny IDAT and IEND: a
/// decompression-bomb shape that must be refused from its header, before any allocation.
pub fn png_bomb_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_in = kind.to_vec();
        crc_in.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The start of a HEIF file (an ISO-BMFF `ftyp` box with brand `heic`): a real image format that
/// maskflow does not decode.
pub fn heif_stub() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&24u32.to_be_bytes());
    out.extend_from_slice(b"ftypheic");
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"mif1heic");
    out.extend_from_slice(&[0u8; 64]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthParams {
        SynthParams { per_class: 30, ..SynthParams::default() }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = plan(&small()).unwrap();
        let b = plan(&small()).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.rel, y.rel);
            assert!(x.bytes == y.bytes, "{} differs between runs", x.rel);
        }
        let c = plan(&SynthParams { seed: 8, ..small() }).unwrap();
        let same = a.iter().zip(&c).filter(|(x, y)| x.bytes == y.bytes).count();
        assert!(same <= 6, "{same} files equal across seeds (only fixed bad files should be)");
    }

    #[test]
    fn writes_classes_duplicates_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let s = generate(&small(), d.path()).unwrap();
        assert_eq!(s.images, 60);
        assert_eq!(s.exact_duplicates, 4); // i = 3 and 28 in each class
        assert_eq!(s.near_duplicates, 2); // i = 11 in each class
        assert_eq!(s.bad_files.len(), 5);
        assert_eq!(std::fs::metadata(d.path().join("with_mask/broken_empty.jpg")).unwrap().len(), 0);
        for c in CLASSES {
            assert!(d.path().join(c).is_dir());
        }
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }
}
