//! JPEG decoding through libjpeg-turbo (the decoder PIL uses; the system library, reached through
//! the small C shim in `csrc/jpeg_scaled.c`), optionally at a reduced DCT scale ("draft mode", as
//! PIL's `Image.draft`): when the target is much smaller than the source, the inverse DCT produces
//! 1/2, 1/4 or 1/8 of the pixels directly, skipping most of the IDCT, upsampling and colour
//! conversion work. The result is then resized to the exact size as usual. Measured on the
//! face-mask data, libjpeg-turbo also decodes full-size JPEGs a little faster than zune-jpeg (the
//! `image` crate's decoder, which the index stage validates with).

use crate::{decode, Decoded, Format, Limits, Rejection};
use image::{DynamicImage, GrayImage, RgbImage};
use std::ffi::{c_char, c_int, CStr};

/// Decodes `bytes`; JPEGs go through libjpeg-turbo at the smallest DCT scale whose output still
/// covers `needed(width, height)` (the size, in stored orientation, below which quality would
/// suffer; `|w, h| (w, h)` for no reduction). Anything else — other formats, CMYK JPEGs, or a file
/// libjpeg reports as damaged (even if only with a warning) — takes the validating [`decode`] path,
/// so a file's acceptance never depends on which decoder read it.
pub fn decode_reduced(
    bytes: &[u8],
    limits: &Limits,
    needed: impl Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded, Rejection> {
    if crate::sniff(bytes) == crate::Sniffed::Supported(Format::Jpeg) && crate::jpeg_has_end(bytes) {
        if let Some(d) = jpeg_scaled(bytes, limits, &needed) {
            return Ok(d);
        }
    }
    decode(bytes, limits)
}

/// The DCT scale denominator (8, 4, 2 or 1) giving the smallest output of at least `nw`×`nh` from
/// a `w`×`h` JPEG (libjpeg rounds scaled sizes up).
pub fn dct_denominator(w: u32, h: u32, nw: u32, nh: u32) -> u32 {
    [8u32, 4, 2].into_iter().find(|&d| w.div_ceil(d) >= nw && h.div_ceil(d) >= nh).unwrap_or(1)
}

fn jpeg_scaled(bytes: &[u8], limits: &Limits, needed: &dyn Fn(u32, u32) -> (u32, u32)) -> Option<Decoded> {
    let mut jpeg = ffi::Jpeg::open(bytes).ok()?;
    let (w, h, exif) = jpeg.info();
    crate::check_size(w, h, limits).ok()?;
    let (nw, nh) = needed(w, h);
    let denom = dct_denominator(w, h, nw, nh);
    let orientation = exif
        .and_then(|e| image::metadata::Orientation::from_exif_chunk(&e))
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let (sw, sh, channels) = jpeg.scale(denom).ok()?;
    let pixels = jpeg.decode().ok()?;
    let mut image = match channels {
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(sw, sh, pixels)?),
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(sw, sh, pixels)?),
        _ => return None,
    };
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Some(Decoded { image, format: Format::Jpeg, width, height })
}

mod ffi {
    use super::*;

    #[repr(C)]
    struct Handle {
        _private: [u8; 0],
    }

    extern "C" {
        fn mf_jpeg_open(data: *const u8, len: usize, msg: *mut c_char, msg_len: usize) -> *mut Handle;
        fn mf_jpeg_info(
            h: *const Handle,
            width: *mut u32,
            height: *mut u32,
            color_space: *mut c_int,
            exif: *mut *const u8,
            exif_len: *mut usize,
        );
        fn mf_jpeg_scale(
            h: *mut Handle,
            denom: u32,
            out_width: *mut u32,
            out_height: *mut u32,
            out_channels: *mut c_int,
            msg: *mut c_char,
            msg_len: usize,
        ) -> c_int;
        fn mf_jpeg_decode(h: *mut Handle, out: *mut u8, out_len: usize, msg: *mut c_char, msg_len: usize) -> c_int;
        fn mf_jpeg_close(h: *mut Handle);
    }

    const MSG: usize = 200;

    fn message(buf: &[c_char; MSG]) -> String {
        // SAFETY: the shim always NUL-terminates within the buffer (and it starts zeroed).
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// A libjpeg decompressor over borrowed bytes; the header has been read.
    pub(super) struct Jpeg<'a> {
        handle: *mut Handle,
        scaled: Option<(u32, u32, u32)>,
        _bytes: std::marker::PhantomData<&'a [u8]>,
    }

    impl<'a> Jpeg<'a> {
        pub(super) fn open(bytes: &'a [u8]) -> Result<Self, String> {
            let mut msg = [0 as c_char; MSG];
            // SAFETY: libjpeg reads `bytes` (which outlive the handle, tied by the lifetime) only.
            let handle = unsafe { mf_jpeg_open(bytes.as_ptr(), bytes.len(), msg.as_mut_ptr(), MSG) };
            if handle.is_null() {
                return Err(message(&msg));
            }
            Ok(Self { handle, scaled: None, _bytes: std::marker::PhantomData })
        }

        /// Stored width and height, and the EXIF payload if there is one.
        pub(super) fn info(&self) -> (u32, u32, Option<Vec<u8>>) {
            let (mut w, mut h, mut cs, mut exif, mut exif_len) = (0u32, 0u32, 0 as c_int, std::ptr::null(), 0usize);
            // SAFETY: the handle is open; the EXIF pointer is valid while it is, and copied at once.
            unsafe {
                mf_jpeg_info(self.handle, &mut w, &mut h, &mut cs, &mut exif, &mut exif_len);
                let exif = (!exif.is_null()).then(|| std::slice::from_raw_parts(exif, exif_len).to_vec());
                (w, h, exif)
            }
        }

        /// Sets the output scale 1/`denom`; returns the output width, height and channels (1 or 3).
        pub(super) fn scale(&mut self, denom: u32) -> Result<(u32, u32, u32), String> {
            let mut msg = [0 as c_char; MSG];
            let (mut w, mut h, mut c) = (0u32, 0u32, 0 as c_int);
            // SAFETY: the handle is open; out-pointers are valid locals.
            let rc = unsafe { mf_jpeg_scale(self.handle, denom, &mut w, &mut h, &mut c, msg.as_mut_ptr(), MSG) };
            if rc != 0 || !(c == 1 || c == 3) {
                return Err(message(&msg));
            }
            self.scaled = Some((w, h, c as u32));
            Ok((w, h, c as u32))
        }

        /// Decodes the whole image (width × height × channels of [`Jpeg::scale`]). Any libjpeg
        /// warning (damaged data it papered over) is an error.
        pub(super) fn decode(&mut self) -> Result<Vec<u8>, String> {
            let Some((w, h, c)) = self.scaled else { return Err("scale not set".into()) };
            let len = w as usize * h as usize * c as usize;
            // Not zero-filled first: libjpeg writes every byte of every row before returning 0.
            let mut out: Vec<u8> = Vec::with_capacity(len);
            let mut msg = [0 as c_char; MSG];
            // SAFETY: the buffer has capacity for exactly the rows the decoder writes (checked in C
            // against the output size); its length is set only after a successful decode.
            let rc = unsafe { mf_jpeg_decode(self.handle, out.as_mut_ptr(), len, msg.as_mut_ptr(), MSG) };
            if rc != 0 {
                return Err(message(&msg));
            }
            // SAFETY: rc == 0 means all `len` bytes were written.
            unsafe { out.set_len(len) };
            Ok(out)
        }
    }

    impl Drop for Jpeg<'_> {
        fn drop(&mut self) {
            // SAFETY: the handle came from mf_jpeg_open and is closed once.
            unsafe { mf_jpeg_close(self.handle) }
        }
    }
}
