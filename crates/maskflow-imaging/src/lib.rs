//! Decoding and geometry shared by every stage that touches pixels (index, prep, predict), so unseen
//! data is treated exactly as training data was.
//!
//! - [`sniff`]: the format from the bytes, never the extension.
//! - [`decode`]: a validating full decode with the header checked against [`Limits`] before any
//!   pixel buffer is allocated, EXIF orientation applied; failures are [`Rejection`]s with a reason.
//! - [`decode_reduced`]: JPEGs through libjpeg-turbo, at a reduced DCT scale when the result still
//!   covers the needed size (PIL's draft mode); anything it cannot or will not vouch for goes to [`decode`].
//! - [`to_rgb8`]: alpha composited on a background, gray and palette expanded, 16-bit reduced.
//! - [`resize`]: `squish` | `crop` | `pad` to a square, with fast_image_resize (SIMD convolution,
//!   the same filters as Pillow).
//! - [`dhash`]: a 64-bit difference hash for near-duplicate grouping.

mod draft;

pub use draft::decode_reduced;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// Formats recognised from their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
    Tiff,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Gif => "gif",
            Format::Bmp => "bmp",
            Format::Tiff => "tiff",
        }
    }
    fn image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::WebP => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
            Format::Bmp => image::ImageFormat::Bmp,
            Format::Tiff => image::ImageFormat::Tiff,
        }
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    Supported(Format),
    /// A real image format that maskflow does not decode (name given).
    Unsupported(&'static str),
    Unknown,
}

pub fn sniff(b: &[u8]) -> Sniffed {
    use Sniffed::*;
    let starts = |m: &[u8]| b.len() >= m.len() && &b[..m.len()] == m;
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Supported(Format::Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Supported(Format::Png)
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Supported(Format::WebP)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Supported(Format::Gif)
    } else if starts(b"BM") && b.len() >= 26 {
        Supported(Format::Bmp)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Supported(Format::Tiff)
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        match &b[8..12] {
            b"avif" | b"avis" => Unsupported("avif"),
            b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" => Unsupported("heif"),
            _ => Unknown,
        }
    } else if starts(b"8BPS") {
        Unsupported("psd")
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        Unsupported("jpeg-xl")
    } else if starts(&[0, 0, 1, 0]) {
        Unsupported("ico")
    } else if starts(b"\0\0\0\x0cjP  \r\n\x87\n") {
        Unsupported("jpeg-2000")
    } else if starts(b"<svg") || starts(b"<?xml") {
        Unsupported("svg")
    } else {
        Unknown
    }
}

/// Why a file was refused. `code()` is the stable reason written to the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("truncated {format} data: {detail}")]
    Truncated { format: &'static str, detail: String },
    #[error("corrupt {format} data: {detail}")]
    Corrupt { format: &'static str, detail: String },
    #[error("not an image (unrecognised content)")]
    NotAnImage,
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("{width}×{height} pixels exceeds the limit ({limit})")]
    TooLarge { width: u32, height: u32, limit: String },
    #[error("unreadable: {0}")]
    Unreadable(String),
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::Truncated { .. } => "truncated",
            Rejection::Corrupt { .. } => "corrupt",
            Rejection::NotAnImage => "not_an_image",
            Rejection::Unsupported(_) => "unsupported_format",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Unreadable(_) => "unreadable",
        }
    }
}

/// Size limits checked on the header, before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest width × height accepted (decompression bombs). Default 100 megapixels.
    pub max_pixels: u64,
    /// Largest single side. Default 30000.
    pub max_side: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_pixels: 100_000_000, max_side: 30_000 }
    }
}

/// A decoded, EXIF-oriented image and what the header said.
#[derive(Debug)]
pub struct Decoded {
    pub image: DynamicImage,
    pub format: Format,
    /// Dimensions after orientation.
    pub width: u32,
    pub height: u32,
}

/// Fully decodes `bytes`, validating them. The only failure mode is a [`Rejection`].
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let format = match sniff(bytes) {
        Sniffed::Supported(f) => f,
        Sniffed::Unsupported(name) => return Err(Rejection::Unsupported(name.to_string())),
        Sniffed::Unknown => return Err(Rejection::NotAnImage),
    };
    let fname = format.name();
    if format == Format::Jpeg && !jpeg_has_end(bytes) {
        return Err(Rejection::Truncated {
            format: fname,
            detail: "no end-of-image marker after the last scan".into(),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // Decoded buffers are at most 16 bytes a pixel (RGBA f32); allow that, plus slack.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(16).saturating_add(64 << 20));
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, fname, limits))?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, limits)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, fname, limits))?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Ok(Decoded { image, format, width, height })
}

pub(crate) fn check_size(w: u32, h: u32, limits: &Limits) -> Result<(), Rejection> {
    if w == 0 || h == 0 {
        return Err(Rejection::Corrupt { format: "image", detail: format!("zero dimension {w}×{h}") });
    }
    if w > limits.max_side || h > limits.max_side || (w as u64) * (h as u64) > limits.max_pixels {
        return Err(Rejection::TooLarge {
            width: w,
            height: h,
            limit: format!("max_pixels {}, max_side {}", limits.max_pixels, limits.max_side),
        });
    }
    Ok(())
}

/// A JPEG is complete when an EOI marker (FF D9) follows its last start-of-scan (FF DA); an embedded
/// EXIF thumbnail's markers come before the main scan, so they do not count.
pub(crate) fn jpeg_has_end(b: &[u8]) -> bool {
    // "The last start-of-scan is followed by an end-of-image", checked from both ends so that only
    // the header and the tail are scanned: the last EOI (normally in the last bytes) must have a
    // SOS before it (found in the header) and none after it.
    let Some(eoi) = b.windows(2).rposition(|w| w == [0xFF, 0xD9]) else { return false };
    b[..eoi].windows(2).any(|w| w == [0xFF, 0xDA]) && !b[eoi..].windows(2).any(|w| w == [0xFF, 0xDA])
}

fn classify(e: image::ImageError, format: &'static str, limits: &Limits) -> Rejection {
    use image::error::{ImageError as E, LimitErrorKind};
    match e {
        E::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError | LimitErrorKind::InsufficientMemory => Rejection::TooLarge {
                width: 0,
                height: 0,
                limit: format!("max_pixels {}, max_side {} ({l})", limits.max_pixels, limits.max_side),
            },
            _ => Rejection::Corrupt { format, detail: l.to_string() },
        },
        E::Unsupported(u) => Rejection::Unsupported(format!("{format} variant: {u}")),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Rejection::Truncated { format, detail: io.to_string() }
        }
        E::IoError(io) => Rejection::Unreadable(io.to_string()),
        other => {
            let text = other.to_string();
            let lower = text.to_lowercase();
            if lower.contains("eof")
                || lower.contains("end of file")
                || lower.contains("unexpected end")
                || lower.contains("not enough")
                || lower.contains("no more bytes")
                || lower.contains("truncat")
            {
                Rejection::Truncated { format, detail: text }
            } else {
                Rejection::Corrupt { format, detail: text }
            }
        }
    }
}

/// To 8-bit RGB: alpha composited over `background`, gray and palette expanded, 16-bit and float
/// reduced (rounding).
pub fn to_rgb8(image: DynamicImage, background: [u8; 3]) -> RgbImage {
    if !image.color().has_alpha() {
        return match image {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.to_rgb8(),
        };
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = px[3] as u32;
        for k in 0..3 {
            out.push(((px[k] as u32 * a + background[k] as u32 * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// How a picture becomes a `size`×`size` square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretch to the square, ignoring aspect (fastai's `ResizeMethod.SQUISH`).
    Squish,
    /// Shorter side to `size`, then the centre square (fastai's default for an int size).
    #[default]
    Crop,
    /// Longer side to `size`, then pad the rest with the background colour, centred.
    Pad,
}

impl ResizeMode {
    /// The smallest source size (same aspect) that still holds every pixel a `size`×`size` output
    /// of this mode samples at full resolution: the limiting side scaled to `size`.
    pub fn needed_source(self, size: u32, w: u32, h: u32) -> (u32, u32) {
        let limiting = match self {
            ResizeMode::Squish | ResizeMode::Crop => w.min(h),
            ResizeMode::Pad => w.max(h),
        }
        .max(1) as u64;
        let scale = |x: u32| ((x as u64 * size as u64).div_ceil(limiting)) as u32;
        (scale(w), scale(h))
    }
}

/// Resampling filter (fast_image_resize convolution; results match Pillow's filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Pillow's `BILINEAR` with antialiasing (what fastai/torchvision get from PIL).
    #[default]
    Bilinear,
    Bicubic,
    Lanczos3,
    Box,
    Nearest,
}

fn resize_alg(f: Filter) -> fr::ResizeAlg {
    match f {
        Filter::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
        Filter::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
        Filter::Lanczos3 => fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3),
        Filter::Box => fr::ResizeAlg::Convolution(fr::FilterType::Box),
        Filter::Nearest => fr::ResizeAlg::Nearest,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("resize failed: {0}")]
pub struct ResizeError(String);

/// Reusable resizer (keeps its scratch buffers between calls; one per thread).
pub struct Resizer {
    inner: fr::Resizer,
}

impl Default for Resizer {
    fn default() -> Self {
        Self { inner: fr::Resizer::new() }
    }
}

impl Resizer {
    /// Resizes an RGB image to `size`×`size` according to `mode`. `pad` is the fill for `Pad`.
    pub fn square(
        &mut self,
        src: &RgbImage,
        size: u32,
        mode: ResizeMode,
        filter: Filter,
        pad: [u8; 3],
    ) -> Result<RgbImage, ResizeError> {
        let (w, h) = src.dimensions();
        let opts = fr::ResizeOptions::new().resize_alg(resize_alg(filter));
        match mode {
            ResizeMode::Squish | ResizeMode::Crop => {
                let opts = if mode == ResizeMode::Crop {
                    let side = w.min(h) as f64;
                    opts.crop((w as f64 - side) / 2.0, (h as f64 - side) / 2.0, side, side)
                } else {
                    opts
                };
                let out = self.resize_rgb(src, size, size, &opts)?;
                RgbImage::from_raw(size, size, out).ok_or_else(|| ResizeError("buffer size".into()))
            }
            ResizeMode::Pad => {
                let (nw, nh) = if w >= h {
                    (size, ((h as f64 * size as f64 / w as f64).round() as u32).clamp(1, size))
                } else {
                    (((w as f64 * size as f64 / h as f64).round() as u32).clamp(1, size), size)
                };
                let inner = self.resize_rgb(src, nw, nh, &opts)?;
                let mut out = RgbImage::from_pixel(size, size, image::Rgb(pad));
                let (ox, oy) = ((size - nw) / 2, (size - nh) / 2);
                let row = (nw * 3) as usize;
                let out_raw: &mut [u8] = &mut out;
                for y in 0..nh as usize {
                    let o = ((oy as usize + y) * size as usize + ox as usize) * 3;
                    out_raw[o..o + row].copy_from_slice(&inner[y * row..(y + 1) * row]);
                }
                Ok(out)
            }
        }
    }

    /// RGB to `nw`×`nh`, as packed RGB bytes. Typed (one pixel type), so only the RGB kernels are
    /// compiled: the untyped API instantiates every pixel type fast_image_resize has, which made
    /// this crate the largest unit of a clean build.
    fn resize_rgb(&mut self, src: &RgbImage, nw: u32, nh: u32, opts: &fr::ResizeOptions) -> Result<Vec<u8>, ResizeError> {
        resize_typed::<fr::pixels::U8x3>(&mut self.inner, src.dimensions(), src.as_raw(), (nw, nh), opts)
    }
}

/// Resizes packed pixels of type `P` (`w`×`h`) to `nw`×`nh`.
fn resize_typed<P: fr::PixelTrait>(
    resizer: &mut fr::Resizer,
    (w, h): (u32, u32),
    src: &[u8],
    (nw, nh): (u32, u32),
    opts: &fr::ResizeOptions,
) -> Result<Vec<u8>, ResizeError> {
    let err = |e: &dyn std::fmt::Display| ResizeError(e.to_string());
    let src_view = fr::images::TypedImageRef::<P>::from_buffer(w, h, src).map_err(|e| err(&e))?;
    let mut out = vec![0u8; nw as usize * nh as usize * P::size()];
    let mut dst = fr::images::TypedImage::<P>::from_buffer(nw, nh, &mut out).map_err(|e| err(&e))?;
    resizer.resize_typed(&src_view, &mut dst, opts).map_err(|e| err(&e))?;
    Ok(out)
}

/// 64-bit difference hash: the picture in gray at 9×8 (antialiased), one bit per horizontally
/// adjacent pair (left brighter than right). Robust to re-encoding and resizing.
pub fn dhash(rgb: &RgbImage, resizer: &mut Resizer) -> Result<u64, ResizeError> {
    let gray = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    // A triangle (bilinear) filter scaled to the reduction smooths more than a box, which keeps the
    // hash stable when small pictures are rescaled.
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    let px = resize_typed::<fr::pixels::U8>(&mut resizer.inner, gray.dimensions(), gray.as_raw(), (9, 8), &opts)?;
    let mut bits = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            bits <<= 1;
            if px[y * 9 + x] > px[y * 9 + x + 1] {
                bits |= 1;
            }
        }
    }
    Ok(bits)
}


/// How an image file becomes the model's input: decode, EXIF-orient, RGB, resize to `size`×`size`.
/// The prep stage applies it to the dataset, `predict` to new files; a bundle records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Output side in pixels.
    pub size: u32,
    pub resize: ResizeMode,
    pub filter: Filter,
    /// Colour that transparent pixels are composited onto, and the `pad` fill.
    pub background: [u8; 3],
    /// JPEGs decoded at a reduced DCT scale when the output still covers `size` (PIL's draft mode).
    pub jpeg_draft: bool,
}

/// Decode + orient + RGB + resize as `p` says, refusing images whose header declares more than
/// `limits`.
pub fn prepare_pixels(bytes: &[u8], p: &Preprocess, resizer: &mut Resizer, limits: &Limits) -> Result<RgbImage, Rejection> {
    let d = decode_reduced(bytes, limits, |w, h| if p.jpeg_draft { p.resize.needed_source(p.size, w, h) } else { (w, h) })?;
    let rgb = to_rgb8(d.image, p.background);
    resizer
        .square(&rgb, p.size, p.resize, p.filter, p.background)
        .map_err(|e| Rejection::Corrupt { format: d.format.name(), detail: e.to_string() })
}

#[cfg(test)]
mod tests;

/// The region a face classifier sees around a detected face box `[x1, y1, x2, y2]`: the square on
/// the box's centre whose side is the box's longer side × (1 + 2 × `margin`), clipped to the image.
/// `None` when nothing of it is inside the image.
pub fn face_region(width: u32, height: u32, bbox: [f32; 4], margin: f32) -> Option<[u32; 4]> {
    let [x1, y1, x2, y2] = bbox;
    if !bbox.iter().all(|v| v.is_finite()) || x2 <= x1 || y2 <= y1 {
        return None;
    }
    let side = ((x2 - x1).max(y2 - y1) * (1.0 + 2.0 * margin.max(0.0))).round();
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    // A square of `side` whole pixels (until clipped), so crops inside the photo are square.
    let (l0, t0) = ((cx - side / 2.0).round(), (cy - side / 2.0).round());
    let clip = |v: f32, hi: u32| v.clamp(0.0, hi as f32) as u32;
    let (l, t) = (clip(l0, width), clip(t0, height));
    let (r, b) = (clip(l0 + side, width), clip(t0 + side, height));
    (r > l && b > t).then_some([l, t, r, b])
}

/// Why a photo file could not be read: a code (`unreadable`, or the decoder's rejection code) and a
/// message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for PhotoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PhotoError {}

/// A whole photo file as RGB — decoded within the default [`Limits`], EXIF-oriented, transparency
/// on white: how `detect`, the faces and the detection stages read photos.
pub fn read_photo(path: &std::path::Path) -> Result<RgbImage, PhotoError> {
    let bytes = std::fs::read(path).map_err(|e| PhotoError { code: "unreadable", message: format!("cannot read: {e}") })?;
    let d = decode(&bytes, &Limits::default()).map_err(|e| PhotoError { code: e.code(), message: e.to_string() })?;
    Ok(to_rgb8(d.image, [255, 255, 255]))
}

/// The pixels of [`face_region`].
pub fn crop_face(img: &RgbImage, bbox: [f32; 4], margin: f32) -> Option<RgbImage> {
    let [l, t, r, b] = face_region(img.width(), img.height(), bbox, margin)?;
    Some(image::imageops::crop_imm(img, l, t, r - l, b - t).to_image())
}
