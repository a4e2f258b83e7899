//! Batch augmentation with tensor ops, fastai v1 `get_transforms()` ranges.
//!
//! Every sample's draw — flip, rotation, zoom and its focus, the four corner offsets of the symmetric
//! perspective warp, the random crop offset, brightness and contrast — is folded into one 3×3 homography
//! per sample and applied by a single `grid_sample` (bilinear, reflection padding), followed by lighting
//! in logit space. The draws come from a SplitMix64 seeded with (seed, epoch, batch index), so a batch's
//! augmentation is reproducible on its own (what resuming needs) and identical on CPU and CUDA.

use crate::corrupt::{self, Degrade};
use anyhow::Result;
use maskflow_core::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use maskflow_models::normalize::{MEAN, STD};

/// fastai v1 `get_transforms()` defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentParams {
    /// Horizontal flip with probability 0.5 (`do_flip=True`).
    pub flip: bool,
    /// Rotation U(−max, max) degrees (`max_rotate=10`).
    pub max_rotate: f64,
    /// Zoom U(1, max_zoom) with a random focus (`max_zoom=1.1`).
    pub max_zoom: f64,
    /// Symmetric perspective warp, each corner U(−max, max) (`max_warp=0.2`).
    pub max_warp: f64,
    /// Probability of each of rotate, zoom, warp (`p_affine=0.75`).
    pub p_affine: f64,
    /// Brightness c ~ U(0.5(1−m), 0.5(1+m)) added as logit(c), contrast s ~ log-U(1−m, 1/(1−m)) multiplying
    /// the logit (`max_lighting=0.2`).
    pub max_lighting: f64,
    /// Probability of each of brightness and contrast (`p_lighting=0.75`).
    pub p_lighting: f64,
    /// Real-world damage (not in fastai; off by default): probability of a small-face downscale to a
    /// side log-uniform in [`min_face`, 224] px (at 224), then bilinear back up.
    ///
    /// [`min_face`]: AugmentParams::min_face
    pub p_downscale: f64,
    /// Smallest face side of the downscale, in pixels at 224.
    pub min_face: f64,
    /// Probability of a Gaussian blur with σ uniform in [0.5, `max_blur`] px (at 224).
    pub p_blur: f64,
    pub max_blur: f64,
    /// Probability of additive Gaussian noise with σ uniform in [0, `max_noise`] (of the [0, 1] range).
    pub p_noise: f64,
    pub max_noise: f64,
    /// Probability of a JPEG round trip at a quality uniform in [`min_jpeg_quality`, 90] (on the CPU,
    /// per image).
    pub p_jpeg: f64,
    pub min_jpeg_quality: u8,
}

impl Default for AugmentParams {
    fn default() -> Self {
        AugmentParams {
            flip: true,
            max_rotate: 10.0,
            max_zoom: 1.1,
            max_warp: 0.2,
            p_affine: 0.75,
            max_lighting: 0.2,
            p_lighting: 0.75,
            p_downscale: 0.0,
            min_face: 24.0,
            p_blur: 0.0,
            max_blur: 3.0,
            p_noise: 0.0,
            max_noise: 0.15,
            p_jpeg: 0.0,
            min_jpeg_quality: 15,
        }
    }
}

impl AugmentParams {
    /// No augmentation at all (a fixed-body feature pass, tests).
    pub fn none() -> Self {
        AugmentParams {
            flip: false,
            max_rotate: 0.0,
            max_zoom: 1.0,
            max_warp: 0.0,
            p_affine: 0.0,
            max_lighting: 0.0,
            p_lighting: 0.0,
            p_downscale: 0.0,
            p_blur: 0.0,
            p_noise: 0.0,
            p_jpeg: 0.0,
            ..AugmentParams::default()
        }
    }

    /// Whether any real-world damage is drawn.
    pub fn degrades(&self) -> bool {
        self.p_downscale > 0.0 || self.p_blur > 0.0 || self.p_noise > 0.0 || self.p_jpeg > 0.0
    }

    pub fn validate(&self) -> Result<(), String> {
        let p = |v: f64, n: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("augment.{n} = {v} must be a probability in [0, 1]"))
            }
        };
        p(self.p_affine, "p_affine")?;
        p(self.p_lighting, "p_lighting")?;
        p(self.p_downscale, "p_downscale")?;
        p(self.p_blur, "p_blur")?;
        p(self.p_noise, "p_noise")?;
        p(self.p_jpeg, "p_jpeg")?;
        if !(self.min_face >= 2.0 && self.min_face <= 224.0) {
            return Err(format!("augment.min_face = {} must be in [2, 224] (pixels at 224)", self.min_face));
        }
        if !(self.max_blur >= 0.5) || !(0.0..=1.0).contains(&self.max_noise) {
            return Err("augment: max_blur must be ≥ 0.5, max_noise in [0, 1]".into());
        }
        if !(1..=90).contains(&self.min_jpeg_quality) {
            return Err(format!("augment.min_jpeg_quality = {} must be in [1, 90]", self.min_jpeg_quality));
        }
        if !(self.max_zoom >= 1.0) || !(0.0..1.0).contains(&self.max_lighting) || self.max_warp < 0.0 {
            return Err("augment: max_zoom must be ≥ 1, max_lighting in [0, 1), max_warp ≥ 0".into());
        }
        Ok(())
    }
}

/// One sample's draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Output coords (normalised, [−1, 1]) → source coords, row-major 3×3.
    pub homography: [f64; 9],
    /// Added to the logit of every pixel.
    pub brightness: f64,
    /// Multiplies the logit.
    pub contrast: f64,
    /// Real-world damage after the lighting (none unless drawn, or a corruption view).
    pub degrade: Degrade,
}

type M3 = [f64; 9];

fn mul(a: &M3, b: &M3) -> M3 {
    let mut c = [0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            c[i * 3 + j] = (0..3).map(|k| a[i * 3 + k] * b[k * 3 + j]).sum();
        }
    }
    c
}

/// The identity view.
pub const IDENTITY: M3 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

/// fastai's `_find_coeffs`: the perspective map taking each `from` point to its `to` point.
fn perspective(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> M3 {
    let mut a = [[0.0f64; 9]; 8];
    for (i, (p, q)) in from.iter().zip(to).enumerate() {
        a[2 * i] = [p[0], p[1], 1.0, 0.0, 0.0, 0.0, -q[0] * p[0], -q[0] * p[1], q[0]];
        a[2 * i + 1] = [0.0, 0.0, 0.0, p[0], p[1], 1.0, -q[1] * p[0], -q[1] * p[1], q[1]];
    }
    // Gauss–Jordan with partial pivoting on the 8×8 system (augmented column 8).
    for col in 0..8 {
        let piv = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, piv);
        let d = a[col][col];
        if d.abs() < 1e-12 {
            return IDENTITY;
        }
        for k in col..9 {
            a[col][k] /= d;
        }
        for r in 0..8 {
            if r != col {
                let f = a[r][col];
                for k in col..9 {
                    a[r][k] -= f * a[col][k];
                }
            }
        }
    }
    [a[0][8], a[1][8], a[2][8], a[3][8], a[4][8], a[5][8], a[6][8], a[7][8], 1.0]
}

/// A crop of `out` pixels at pixel offset (oy, ox) of a `src`-pixel image, in normalised coordinates.
fn crop_matrix(src: i64, out: i64, oy: f64, ox: f64) -> M3 {
    let s = out as f64 / src as f64;
    let tx = (2.0 * ox + out as f64) / src as f64 - 1.0;
    let ty = (2.0 * oy + out as f64) / src as f64 - 1.0;
    [s, 0.0, tx, 0.0, s, ty, 0.0, 0.0, 1.0]
}

impl AugmentParams {
    /// The draw for sample `i` of batch `batch` in `epoch` (training), for `src`-pixel images cropped
    /// to `out` pixels.
    pub fn draw(&self, seed: u64, epoch: u64, batch: u64, i: u64, src: i64, out: i64) -> Draw {
        let mut r = SplitMix64::derive(seed, &[0xa06, epoch, batch, i]);
        let mut m = IDENTITY;
        // The order of fastai's list: flip, warp, rotate, zoom (then crop), lighting.
        let flip = self.flip && r.f64() < 0.5;
        let do_warp = r.f64() < self.p_affine;
        let mags = [0; 4].map(|_| r.range(-self.max_warp, self.max_warp));
        let do_rot = r.f64() < self.p_affine;
        let angle = r.range(-self.max_rotate, self.max_rotate).to_radians();
        let do_zoom = r.f64() < self.p_affine;
        let (scale, row_pct, col_pct) = (r.range(1.0, self.max_zoom), r.f64(), r.f64());
        let (oy, ox) = (r.f64(), r.f64());
        let do_bright = r.f64() < self.p_lighting;
        let c = r.range(0.5 * (1.0 - self.max_lighting), 0.5 * (1.0 + self.max_lighting));
        let do_contrast = r.f64() < self.p_lighting;
        let (lo, hi) = ((1.0 - self.max_lighting).ln(), (1.0 / (1.0 - self.max_lighting)).ln());
        let s = r.range(lo, hi).exp();

        if flip {
            m = mul(&m, &[-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        }
        if do_rot && self.max_rotate > 0.0 {
            let (sn, cs) = angle.sin_cos();
            m = mul(&m, &[cs, -sn, 0.0, sn, cs, 0.0, 0.0, 0.0, 1.0]);
        }
        if do_zoom && self.max_zoom > 1.0 {
            let k = 1.0 - 1.0 / scale;
            m = mul(
                &m,
                &[
                    1.0 / scale,
                    0.0,
                    k * (2.0 * col_pct - 1.0),
                    0.0,
                    1.0 / scale,
                    k * (2.0 * row_pct - 1.0),
                    0.0,
                    0.0,
                    1.0,
                ],
            );
        }
        if do_warp && self.max_warp > 0.0 {
            // fastai `_symmetric_warp`: target corners moved by the four magnitudes.
            let orig = [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]];
            let targ = [
                [-1.0 - mags[3], -1.0 - mags[1]],
                [-1.0 - mags[2], 1.0 + mags[1]],
                [1.0 + mags[3], -1.0 - mags[0]],
                [1.0 + mags[2], 1.0 + mags[0]],
            ];
            m = mul(&perspective(&targ, &orig), &m);
        }
        if src > out {
            let span = (src - out) as f64;
            m = mul(
                &crop_matrix(src, out, (oy * (span + 1.0)).floor().min(span), (ox * (span + 1.0)).floor().min(span)),
                &m,
            );
        }
        let logit = |p: f64| (p / (1.0 - p)).ln();
        Draw {
            homography: m,
            brightness: if do_bright && self.max_lighting > 0.0 { logit(c) } else { 0.0 },
            contrast: if do_contrast && self.max_lighting > 0.0 { s } else { 1.0 },
            degrade: self.draw_degrade(seed, epoch, batch, i),
        }
    }

    /// The real-world damage of one sample, from its own stream (so that turning it on leaves every
    /// other draw as it was).
    fn draw_degrade(&self, seed: u64, epoch: u64, batch: u64, i: u64) -> Degrade {
        if !self.degrades() {
            return Degrade::default();
        }
        let mut r = SplitMix64::derive(seed, &[0xde9, epoch, batch, i]);
        let (do_down, face) = (r.f64() < self.p_downscale, r.range(self.min_face.ln(), 224f64.ln()).exp());
        let (do_blur, sigma) = (r.f64() < self.p_blur, r.range(0.5, self.max_blur));
        let (do_noise, std, noise_seed) = (r.f64() < self.p_noise, r.range(0.0, self.max_noise), r.next_u64());
        let (do_jpeg, q) = (r.f64() < self.p_jpeg, r.int(i64::from(self.min_jpeg_quality), 90));
        Degrade {
            downscale: do_down.then_some(face),
            blur: do_blur.then_some(sigma),
            noise: do_noise.then_some((std, noise_seed)),
            jpeg: do_jpeg.then_some(q as u8),
            ..Degrade::default()
        }
    }
}

/// The validation view: centre crop of `out` from `src`, nothing else.
pub fn centre_draw(src: i64, out: i64) -> Draw {
    view_draw(src, out, &IDENTITY)
}

/// An evaluation view: the centre crop of `out` from `src` after `view` (output coordinates → source
/// coordinates, normalised: a flip or a zoom for test-time augmentation).
pub fn view_draw(src: i64, out: i64, view: &[f64; 9]) -> Draw {
    let off = ((src - out) / 2) as f64;
    let m = if *view == IDENTITY { crop_matrix(src, out, off, off) } else { mul(&crop_matrix(src, out, off, off), view) };
    Draw { homography: m, brightness: 0.0, contrast: 1.0, degrade: Degrade::default() }
}

/// Turns a uint8 batch (N, H, W, 3) into normalised float (N, 3, out, out) on `device`, applying
/// `draws` (one per sample). `channels_last` lays the result out in channels-last strides. Fails
/// only if a JPEG round trip of the damage fails.
pub fn apply(batch_u8: &Tensor, draws: &[Draw], out: i64, device: Device, channels_last: bool) -> Result<Tensor> {
    let n = batch_u8.size()[0];
    let src = batch_u8.size()[1];
    let x = batch_u8.to_device(device).permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
    let identity = draws.iter().all(|d| d.homography == IDENTITY) && src == out;
    let mut x = if identity {
        x
    } else {
        let base: Vec<f32> = (0..out)
            .flat_map(|y| {
                (0..out).flat_map(move |xx| {
                    let f = |v: i64| ((2 * v + 1) as f32) / out as f32 - 1.0;
                    [f(xx), f(y), 1.0]
                })
            })
            .collect();
        let base = Tensor::from_slice(&base).view([1, out * out, 3]).to_device(device);
        let hs: Vec<f32> = draws.iter().flat_map(|d| d.homography.map(|v| v as f32)).collect();
        let hs = Tensor::from_slice(&hs).view([n, 3, 3]).to_device(device);
        let coords = base.matmul(&hs.transpose(1, 2)); // (n, out², 3)
        let grid = (coords.narrow(2, 0, 2) / coords.narrow(2, 2, 1)).view([n, out, out, 2]);
        x.contiguous().grid_sampler(&grid, 0, 2, false)
    };
    if draws.iter().any(|d| d.brightness != 0.0 || d.contrast != 1.0) {
        let b: Vec<f32> = draws.iter().map(|d| d.brightness as f32).collect();
        let c: Vec<f32> = draws.iter().map(|d| d.contrast as f32).collect();
        let b = Tensor::from_slice(&b).view([n, 1, 1, 1]).to_device(device);
        let c = Tensor::from_slice(&c).view([n, 1, 1, 1]).to_device(device);
        let l = x.clamp(1e-7, 1.0 - 1e-7).logit(None::<f64>);
        x = ((l + b) * c).sigmoid();
    }
    let degrades: Vec<Degrade> = draws.iter().map(|d| d.degrade).collect();
    let x = corrupt::apply(&x, &degrades)?;
    let mean = Tensor::from_slice(&MEAN.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(device);
    let std = Tensor::from_slice(&STD.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(device);
    let x = (x - mean) / std;
    Ok(if channels_last { maskflow_models::arch::to_channels_last(&x) } else { x.contiguous() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_vary() {
        let a = AugmentParams::default();
        assert_eq!(a.draw(1, 2, 3, 4, 224, 224), a.draw(1, 2, 3, 4, 224, 224));
        assert_ne!(a.draw(1, 2, 3, 4, 224, 224), a.draw(1, 2, 3, 5, 224, 224));
        assert_ne!(a.draw(1, 2, 3, 4, 224, 224), a.draw(1, 3, 3, 4, 224, 224));
        // About half flipped, about 3/4 lit.
        let draws: Vec<Draw> = (0..400).map(|i| a.draw(9, 0, 0, i, 224, 224)).collect();
        let flipped = draws.iter().filter(|d| d.homography[0] < 0.0).count();
        let bright = draws.iter().filter(|d| d.brightness != 0.0).count();
        assert!((160..240).contains(&flipped), "{flipped}");
        assert!((260..340).contains(&bright), "{bright}");
        for d in &draws {
            assert!(d.brightness.abs() <= (0.6f64 / 0.4).ln() + 1e-12);
            assert!(d.contrast >= 0.8 - 1e-12 && d.contrast <= 1.25 + 1e-12);
        }
    }

    #[test]
    fn perspective_maps_corners() {
        let from = [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]];
        let to = [[-1.1, -0.9], [-0.95, 1.2], [1.05, -1.0], [0.9, 0.9]];
        let h = perspective(&from, &to);
        for (p, q) in from.iter().zip(&to) {
            let w = h[6] * p[0] + h[7] * p[1] + h[8];
            let x = (h[0] * p[0] + h[1] * p[1] + h[2]) / w;
            let y = (h[3] * p[0] + h[4] * p[1] + h[5]) / w;
            assert!((x - q[0]).abs() < 1e-9 && (y - q[1]).abs() < 1e-9);
        }
    }

    #[test]
    fn identity_flip_and_centre_crop_are_exact() {
        let img = Tensor::randint(256, [2, 8, 8, 3], (Kind::Uint8, Device::Cpu));
        let none = AugmentParams::none().draw(0, 0, 0, 0, 8, 8);
        let x = apply(&img, &[none, none], 8, Device::Cpu, false).unwrap();
        let expect = apply(&img, &[], 8, Device::Cpu, false).unwrap(); // no draws: identity path
        assert!(x.allclose(&expect, 1e-6, 1e-6, false));
        // A flip through grid_sample equals flipping the pixels.
        let mut flip = none;
        flip.homography[0] = -1.0;
        let x = apply(&img, &[flip, flip], 8, Device::Cpu, false).unwrap();
        let expect = apply(&img.flip([2]), &[none, none], 8, Device::Cpu, false).unwrap();
        assert!(x.allclose(&expect, 1e-5, 1e-5, false), "{}", (&x - &expect).abs().max());
        // Centre crop of 6 from 8 equals slicing.
        let c = centre_draw(8, 6);
        let x = apply(&img, &[c, c], 6, Device::Cpu, false).unwrap();
        let expect = apply(&img.narrow(1, 1, 6).narrow(2, 1, 6), &[none, none], 6, Device::Cpu, false).unwrap();
        assert!(x.allclose(&expect, 1e-5, 1e-5, false));
    }

    #[test]
    fn augmented_batches_are_deterministic() {
        let a = AugmentParams::default();
        let img = Tensor::randint(256, [4, 32, 32, 3], (Kind::Uint8, Device::Cpu));
        let draws: Vec<Draw> = (0..4).map(|i| a.draw(5, 1, 2, i, 32, 28)).collect();
        let x1 = apply(&img, &draws, 28, Device::Cpu, true).unwrap();
        let x2 = apply(&img, &draws, 28, Device::Cpu, true).unwrap();
        assert!(x1.equal(&x2));
        assert_eq!(x1.size(), [4, 3, 28, 28]);
        assert!(x1.isfinite().all().int64_value(&[]) == 1);
    }
}
