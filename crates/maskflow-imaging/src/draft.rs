//! JPEG decoding at a reduced DCT scale ("draft mode", as PIL's `Image.draft`): when the target is
//! much smaller than the source, the decoder's inverse DCT produces 1/2, 1/4 or 1/8 of the pixels
//! directly, skipping most of the IDCT, upsampling and colour conversion work. The result is then
//! resized to the exact size as usual.

use crate::{decode, Decoded, Format, Limits, Rejection};
use image::{DynamicImage, GrayImage, RgbImage};

/// Decodes `bytes`, letting JPEGs decode at the smallest DCT scale whose output still covers
/// `needed(width, height)` (the size, in stored orientation, below which quality would suffer).
/// Anything else — other formats, CMYK or 16-bit JPEGs, or a file the scaled decoder refuses — takes
/// the full [`decode`] path, so the result never depends on which decoder could read the file.
pub fn decode_reduced(
    bytes: &[u8],
    limits: &Limits,
    needed: impl Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded, Rejection> {
    if crate::sniff(bytes) == crate::Sniffed::Supported(Format::Jpeg) {
        if let Some(d) = jpeg_scaled(bytes, limits, &needed) {
            return Ok(d);
        }
    }
    decode(bytes, limits)
}

fn jpeg_scaled(bytes: &[u8], limits: &Limits, needed: &dyn Fn(u32, u32) -> (u32, u32)) -> Option<Decoded> {
    if !crate::jpeg_has_end(bytes) {
        return None;
    }
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    dec.read_info().ok()?;
    let info = dec.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    crate::check_size(w, h, limits).ok()?;
    let (nw, nh) = needed(w, h);
    if nw >= w || nh >= h {
        return None; // no reduction possible: the ordinary decoder is as good
    }
    let (sw, sh) = dec.scale(nw.min(u16::MAX as u32) as u16, nh.min(u16::MAX as u32) as u16).ok()?;
    let (sw, sh) = (sw as u32, sh as u32);
    if sw < nw || sh < nh {
        return None;
    }
    let pixels = dec.decode().ok()?;
    let info = dec.info()?;
    let image = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(sw, sh, pixels)?),
        jpeg_decoder::PixelFormat::L8 => DynamicImage::ImageLuma8(GrayImage::from_raw(sw, sh, pixels)?),
        _ => return None,
    };
    let orientation = dec
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = image;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Some(Decoded { image, format: Format::Jpeg, width, height })
}
