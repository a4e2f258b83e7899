//! Image corruptions for robustness scoring and training, in the style of ImageNet-C (Hendrycks &
//! Dietterich 2019): a few families of the damage real-world face crops carry — small faces scaled up,
//! blur, JPEG artefacts, sensor noise, dim light, low contrast — each at five severities.
//!
//! A [`Degrade`] is what one image gets; it is applied to a float image in [0, 1] (before ImageNet
//! normalisation), deterministically: the noise comes from a SplitMix64 seeded per image, the JPEG
//! round trip is the `image` crate's encoder and decoder (pure Rust, the same bytes on every machine).
//! Sizes are given for 224-pixel images and scaled to the image at hand.

use anyhow::{Context, Result};
use maskflow_core::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// A family of corruptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Area-downscale to a small face (64 … 16 px at 224) and bilinear back up.
    Downscale,
    /// Gaussian blur, σ 1 … 4 px at 224.
    Blur,
    /// JPEG re-encoding at quality 30 … 7.
    Jpeg,
    /// Additive Gaussian noise, σ 0.04 … 0.26 of the [0, 1] range.
    Noise,
    /// Dim light: every value × 0.7 … 0.2.
    Brightness,
    /// Contrast towards each channel's mean × 0.5 … 0.1.
    Contrast,
}

/// Severities per family (ImageNet-C's five).
pub const SEVERITIES: u8 = 5;

impl Family {
    pub const ALL: [Family; 6] =
        [Family::Downscale, Family::Blur, Family::Jpeg, Family::Noise, Family::Brightness, Family::Contrast];

    pub fn name(self) -> &'static str {
        match self {
            Family::Downscale => "downscale",
            Family::Blur => "blur",
            Family::Jpeg => "jpeg",
            Family::Noise => "noise",
            Family::Brightness => "brightness",
            Family::Contrast => "contrast",
        }
    }

    /// The strength at severity 1..=5, in the family's unit (see [`Family::unit`]).
    pub fn level(self, severity: u8) -> f64 {
        let levels: [f64; 5] = match self {
            Family::Downscale => [64.0, 48.0, 32.0, 24.0, 16.0],
            Family::Blur => [1.0, 1.5, 2.0, 3.0, 4.0],
            Family::Jpeg => [30.0, 20.0, 15.0, 10.0, 7.0],
            Family::Noise => [0.04, 0.08, 0.12, 0.18, 0.26],
            Family::Brightness => [0.7, 0.55, 0.4, 0.3, 0.2],
            Family::Contrast => [0.5, 0.4, 0.3, 0.2, 0.1],
        };
        levels[(severity.clamp(1, SEVERITIES) - 1) as usize]
    }

    /// What [`Family::level`] measures.
    pub fn unit(self) -> &'static str {
        match self {
            Family::Downscale => "face px at 224",
            Family::Blur => "σ px at 224",
            Family::Jpeg => "quality",
            Family::Noise => "σ",
            Family::Brightness => "× value",
            Family::Contrast => "× contrast",
        }
    }

    /// Severity `severity` of this family for one image (`seed`: that image's noise stream).
    pub fn degrade(self, severity: u8, seed: u64) -> Degrade {
        let v = self.level(severity);
        let mut d = Degrade::default();
        match self {
            Family::Downscale => d.downscale = Some(v),
            Family::Blur => d.blur = Some(v),
            Family::Jpeg => d.jpeg = Some(v as u8),
            Family::Noise => d.noise = Some((v, seed)),
            Family::Brightness => d.brightness = Some(v),
            Family::Contrast => d.contrast = Some(v),
        }
        d
    }
}

/// What one image gets, applied in this order (a camera's): downscale, blur, brightness, contrast,
/// noise, JPEG. `None` = not applied.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Degrade {
    /// Face side in pixels at 224 (scaled to the image): area-downscale to it, bilinear back up.
    pub downscale: Option<f64>,
    /// Gaussian σ in pixels at 224.
    pub blur: Option<f64>,
    /// Multiplies every value.
    pub brightness: Option<f64>,
    /// Multiplies each channel's distance from its mean.
    pub contrast: Option<f64>,
    /// (σ, seed) of additive Gaussian noise.
    pub noise: Option<(f64, u64)>,
    /// JPEG quality of a round trip through the encoder (values rounded to 8 bits first).
    pub jpeg: Option<u8>,
}

impl Degrade {
    pub fn is_none(&self) -> bool {
        *self == Degrade::default()
    }
}

/// Applies `d` to one float image (3, H, W) in [0, 1]; the result is in [0, 1] on the same device.
pub fn apply_one(x: &Tensor, d: &Degrade) -> Result<Tensor> {
    let (h, w) = (x.size()[1], x.size()[2]);
    let at = |px: f64| px * h as f64 / 224.0;
    let mut x = x.shallow_clone();
    if let Some(side) = d.downscale {
        let s = at(side).round().max(1.0) as i64;
        if s < h.min(w) {
            let small = x.unsqueeze(0).adaptive_avg_pool2d([s, s]);
            x = small.upsample_bilinear2d([h, w], false, None, None).squeeze_dim(0);
        }
    }
    if let Some(sigma) = d.blur {
        x = gaussian_blur(&x, at(sigma));
    }
    if let Some(f) = d.brightness {
        x = x * f;
    }
    if let Some(c) = d.contrast {
        let mean = x.mean_dim([1i64, 2].as_slice(), true, Kind::Float);
        x = (&x - &mean) * c + mean;
    }
    if let Some((sigma, seed)) = d.noise {
        let noise = gaussian_noise(&[3, h, w], seed, x.device()) * sigma;
        x = x + noise;
    }
    x = x.clamp(0.0, 1.0);
    if let Some(q) = d.jpeg {
        x = jpeg_round_trip(&x, q)?;
    }
    Ok(x)
}

/// Applies one `Degrade` per sample to a float batch (N, 3, H, W) in [0, 1]; samples with nothing to
/// apply are left as they are.
pub fn apply(x: &Tensor, degrades: &[Degrade]) -> Result<Tensor> {
    if degrades.iter().all(Degrade::is_none) {
        return Ok(x.shallow_clone());
    }
    let rows: Vec<Tensor> = degrades
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let xi = x.get(i as i64);
            if d.is_none() {
                Ok(xi)
            } else {
                apply_one(&xi, d)
            }
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&rows, 0))
}

/// The normalised 1-D Gaussian kernel of σ `sigma` (radius ⌈3σ⌉).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let k: Vec<f64> = (-r..=r).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = k.iter().sum();
    k.iter().map(|v| (v / s) as f32).collect()
}

/// Separable Gaussian blur of (3, H, W), reflection at the borders.
fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 0.0 {
        return x.shallow_clone();
    }
    let k = gaussian_kernel(sigma);
    let n = k.len() as i64;
    let r = (n - 1) / 2;
    let (h, w) = (x.size()[1], x.size()[2]);
    let r = r.min(h - 1).min(w - 1).max(0);
    let kt = Tensor::from_slice(&k).to_device(x.device());
    let kt = if r < (n - 1) / 2 {
        // Images narrower than the kernel: keep its middle, renormalised.
        let mid = kt.narrow(0, (n - 1) / 2 - r, 2 * r + 1);
        &mid / mid.sum(Kind::Float)
    } else {
        kt
    };
    let m = 2 * r + 1;
    let c = x.size()[0];
    let horiz = kt.view([1, 1, 1, m]).expand([c, 1, 1, m], false).contiguous();
    let vert = kt.view([1, 1, m, 1]).expand([c, 1, m, 1], false).contiguous();
    let x4 = x.unsqueeze(0).reflection_pad2d([r, r, 0, 0]);
    let x4 = x4.conv2d(&horiz, None::<&Tensor>, [1, 1], [0, 0], [1, 1], c);
    let x4 = x4.reflection_pad2d([0, 0, r, r]);
    x4.conv2d(&vert, None::<&Tensor>, [1, 1], [0, 0], [1, 1], c).squeeze_dim(0)
}

/// Standard normal values of `shape` from a SplitMix64 seeded with `seed` (Box–Muller), the same on
/// every machine and device.
pub fn gaussian_noise(shape: &[i64], seed: u64, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut r = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(n as usize + 1);
    while (v.len() as i64) < n {
        let u1 = (r.f64()).max(f64::MIN_POSITIVE);
        let u2 = r.f64();
        let m = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        v.push((m * c) as f32);
        v.push((m * s) as f32);
    }
    v.truncate(n as usize);
    Tensor::from_slice(&v).view(shape).to_device(device)
}

/// (3, H, W) in [0, 1] → 8-bit → JPEG at `quality` → decoded → float, on the input's device.
fn jpeg_round_trip(x: &Tensor, quality: u8) -> Result<Tensor> {
    let (h, w) = (x.size()[1], x.size()[2]);
    let u8s = (x * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous().to_device(Device::Cpu);
    let len = (h * w * 3) as usize;
    let mut raw = vec![0u8; len];
    u8s.copy_data_u8(&mut raw, len);
    let mut encoded = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, quality.clamp(1, 100))
        .encode(&raw, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .context("JPEG-encoding a corrupted image")?;
    let decoded = image::load_from_memory_with_format(&encoded, image::ImageFormat::Jpeg)
        .context("decoding a JPEG-corrupted image")?
        .to_rgb8();
    let t = Tensor::from_data_size(decoded.as_raw(), &[h, w, 3], Kind::Uint8);
    Ok((t.permute([2, 0, 1]).to_kind(Kind::Float) / 255.0).to_device(x.device()))
}

/// A per-image seed for corruption `family` at `severity` from the image's content hash (its first
/// 64 bits; any other string is hashed first), so that an image is corrupted the same way whatever
/// batch or order it comes in.
pub fn image_seed(content_hash: &str, family: Family, severity: u8) -> u64 {
    let first_64_bits = |hex: &str| hex.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok());
    let head = first_64_bits(content_hash)
        .or_else(|| first_64_bits(&maskflow_core::hash::blake3_hex(content_hash.as_bytes())))
        .unwrap_or(0);
    SplitMix64::derive(head, &[0xc0, family as u64, u64::from(severity)]).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::rand([3, 64, 64], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn every_family_is_deterministic_stays_in_range_and_grows_with_severity() {
        let x = image(1);
        for f in Family::ALL {
            let mut last = 0.0;
            for s in 1..=SEVERITIES {
                let a = apply_one(&x, &f.degrade(s, 7)).unwrap();
                let b = apply_one(&x, &f.degrade(s, 7)).unwrap();
                assert!(a.equal(&b), "{f:?} {s} not deterministic");
                assert_eq!(a.size(), x.size());
                assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
                let dist = (&a - &x).abs().mean(Kind::Float).double_value(&[]);
                assert!(dist > 0.0, "{f:?} {s} changed nothing");
                // JPEG's error is not strictly monotonic in quality on random pixels; the rest are.
                if f != Family::Jpeg {
                    assert!(dist >= last - 1e-6, "{f:?}: severity {s} ({dist}) milder than {} ({last})", s - 1);
                }
                last = dist;
            }
        }
    }

    #[test]
    fn noise_depends_on_the_seed_only() {
        let a = gaussian_noise(&[3, 8, 8], 5, Device::Cpu);
        assert!(a.equal(&gaussian_noise(&[3, 8, 8], 5, Device::Cpu)));
        assert!(!a.equal(&gaussian_noise(&[3, 8, 8], 6, Device::Cpu)));
        let big = gaussian_noise(&[100_000], 1, Device::Cpu);
        assert!(big.mean(Kind::Float).double_value(&[]).abs() < 0.02);
        assert!((big.std(true).double_value(&[]) - 1.0).abs() < 0.02);
        let h = "a3f1".repeat(16);
        assert_eq!(image_seed(&h, Family::Noise, 2), image_seed(&h, Family::Noise, 2));
        assert_ne!(image_seed(&h, Family::Noise, 2), image_seed(&h, Family::Noise, 3));
    }

    #[test]
    fn blur_preserves_a_constant_image_and_brightness_scales() {
        let x = Tensor::full([3, 32, 32], 0.4, (Kind::Float, Device::Cpu));
        let b = apply_one(&x, &Family::Blur.degrade(5, 0)).unwrap();
        assert!(b.allclose(&x, 1e-5, 1e-6, false));
        let d = apply_one(&x, &Family::Brightness.degrade(1, 0)).unwrap();
        assert!(d.allclose(&(&x * 0.7), 1e-6, 1e-6, false));
        // Contrast keeps each channel's mean.
        let y = image(3);
        let c = apply_one(&y, &Family::Contrast.degrade(3, 0)).unwrap();
        let m = |t: &Tensor| t.mean_dim([1i64, 2].as_slice(), false, Kind::Float);
        assert!(m(&c).allclose(&m(&y), 1e-5, 1e-5, false));
    }

    #[test]
    fn a_batch_applies_one_degrade_per_sample() {
        let x = Tensor::stack(&[image(1), image(2)], 0);
        let d = [Degrade::default(), Family::Downscale.degrade(5, 0)];
        let y = apply(&x, &d).unwrap();
        assert!(y.get(0).equal(&x.get(0)));
        assert!(y.get(1).allclose(&apply_one(&x.get(1), &d[1]).unwrap(), 0.0, 0.0, false));
        assert!(apply(&x, &[Degrade::default(); 2]).unwrap().equal(&x));
    }
}
