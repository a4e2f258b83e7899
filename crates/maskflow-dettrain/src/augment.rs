//! Box-preserving augmentations of whole photos: a random crop (the faces whose centre it keeps,
//! clipped to it), a horizontal flip, lighting, and the damage augmentations the classifier trains
//! with (downscale, blur, noise, JPEG: `maskflow_data::corrupt`), each drawn from its own named
//! stream so that a sample's draw depends on the seed, the epoch and the photo alone.

use crate::data::Sample;
use maskflow_core::rng::SplitMix64;
use maskflow_data::corrupt::{self, Degrade};
use maskflow_models::ssd_train::Target;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxAugment {
    /// Mirror left–right with probability 0.5.
    pub flip: bool,
    /// Probability of a random crop, and the smallest crop side as a fraction of the photo's
    /// (each side drawn apart, from `min_crop` to 1).
    pub p_crop: f64,
    pub min_crop: f64,
    /// Probability of each of brightness and contrast, by a factor within 1 ± `max_lighting`.
    pub p_lighting: f64,
    pub max_lighting: f64,
    /// Downscale to a side from `min_downscale` × the input's and back up (a low-resolution photo).
    pub p_downscale: f64,
    pub min_downscale: f64,
    /// Gaussian blur, σ from 0.5 to `max_blur` px (at 224 px, scaled).
    pub p_blur: f64,
    pub max_blur: f64,
    /// Additive Gaussian noise, σ up to `max_noise`.
    pub p_noise: f64,
    pub max_noise: f64,
    /// A JPEG round trip, quality from `min_jpeg_quality` to 90.
    pub p_jpeg: f64,
    pub min_jpeg_quality: u8,
}

impl Default for BoxAugment {
    fn default() -> Self {
        BoxAugment {
            flip: true,
            p_crop: 0.5,
            min_crop: 0.6,
            p_lighting: 0.75,
            max_lighting: 0.2,
            p_downscale: 0.1,
            min_downscale: 0.5,
            p_blur: 0.1,
            max_blur: 1.5,
            p_noise: 0.1,
            max_noise: 0.05,
            p_jpeg: 0.1,
            min_jpeg_quality: 30,
        }
    }
}

/// One sample's draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// `[x0, y0, w, h]` as fractions of the photo.
    pub crop: Option<[f64; 4]>,
    pub flip: bool,
    pub degrade: Degrade,
}

impl BoxAugment {
    pub fn validate(&self) -> Result<(), String> {
        let p = [self.p_crop, self.p_lighting, self.p_downscale, self.p_blur, self.p_noise, self.p_jpeg];
        if p.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err("augment: probabilities must be in [0, 1]".into());
        }
        if !(self.min_crop > 0.0 && self.min_crop <= 1.0) || !(self.min_downscale > 0.0 && self.min_downscale <= 1.0) {
            return Err("augment: min_crop and min_downscale must be in (0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.max_lighting) || self.max_blur < 0.5 || self.max_noise < 0.0 || !(1..=90).contains(&self.min_jpeg_quality) {
            return Err("augment: max_lighting in [0, 1), max_blur ≥ 0.5, max_noise ≥ 0, min_jpeg_quality in 1..=90".into());
        }
        Ok(())
    }

    /// The draw of photo `index` in the pass `stream` (an epoch's), from `seed`.
    pub fn draw(&self, seed: u64, stream: u64, index: u64) -> Draw {
        let mut r = SplitMix64::derive(seed, &[0xb0c5, stream, index]);
        let (do_crop, cw, ch, cx, cy) = (r.f64() < self.p_crop, r.range(self.min_crop, 1.0), r.range(self.min_crop, 1.0), r.f64(), r.f64());
        let flip = self.flip && r.f64() < 0.5;
        let (do_bright, bright) = (r.f64() < self.p_lighting, r.range(1.0 - self.max_lighting, 1.0 + self.max_lighting));
        let (do_contrast, contrast) = (r.f64() < self.p_lighting, r.range(1.0 - self.max_lighting, 1.0 + self.max_lighting));
        let (do_down, down) = (r.f64() < self.p_downscale, r.range(self.min_downscale, 1.0));
        let (do_blur, sigma) = (r.f64() < self.p_blur, r.range(0.5, self.max_blur));
        let (do_noise, std, noise_seed) = (r.f64() < self.p_noise, r.range(0.0, self.max_noise), r.next_u64());
        let (do_jpeg, q) = (r.f64() < self.p_jpeg, r.int(i64::from(self.min_jpeg_quality), 90));
        Draw {
            crop: do_crop.then_some([cx * (1.0 - cw), cy * (1.0 - ch), cw, ch]),
            flip,
            degrade: Degrade {
                // `Degrade` measures sides at 224 px, whatever the input's size.
                downscale: do_down.then_some(down * 224.0),
                blur: do_blur.then_some(sigma),
                brightness: do_bright.then_some(bright),
                contrast: do_contrast.then_some(contrast),
                noise: do_noise.then_some((std, noise_seed)),
                jpeg: do_jpeg.then_some(q as u8),
            },
        }
    }
}

/// The photo as the network takes it — `(3, side, side)` floats in [0, 1], squished as inference
/// squishes it — and its faces in fractions of it, after `draw` (`None`: the photo as it is).
pub fn apply(s: &Sample, draw: Option<&Draw>, side: i64) -> anyhow::Result<(Tensor, Vec<Target>)> {
    let (h, w) = (s.image.size()[1], s.image.size()[2]);
    let (mut x0, mut y0, mut cw, mut ch) = (0i64, 0i64, w, h);
    if let Some([fx, fy, fw, fh]) = draw.and_then(|d| d.crop) {
        cw = ((fw * w as f64).round() as i64).clamp(1, w);
        ch = ((fh * h as f64).round() as i64).clamp(1, h);
        x0 = ((fx * w as f64).floor() as i64).clamp(0, w - cw);
        y0 = ((fy * h as f64).floor() as i64).clamp(0, h - ch);
    }
    let flip = draw.is_some_and(|d| d.flip);
    let mut img = s.image.narrow(1, y0, ch).narrow(2, x0, cw);
    if flip {
        img = img.flip([2]);
    }
    let x = img.unsqueeze(0).to_kind(Kind::Float).upsample_bilinear2d([side, side], false, None, None) / 255.0;
    let mut x = x.squeeze_dim(0);
    if let Some(d) = draw.filter(|d| !d.degrade.is_none()) {
        x = corrupt::apply_one(&x, &d.degrade)?;
    }
    let (cwf, chf) = (cw as f64, ch as f64);
    let targets = s
        .faces
        .iter()
        .filter_map(|f| {
            let b = [f.bbox[0] - x0 as f64, f.bbox[1] - y0 as f64, f.bbox[2] - x0 as f64, f.bbox[3] - y0 as f64];
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            if !(0.0..cwf).contains(&cx) || !(0.0..chf).contains(&cy) {
                return None;
            }
            let c = [b[0].clamp(0.0, cwf), b[1].clamp(0.0, chf), b[2].clamp(0.0, cwf), b[3].clamp(0.0, chf)];
            if c[2] - c[0] < 1.0 || c[3] - c[1] < 1.0 {
                return None;
            }
            let c = if flip { [cwf - c[2], c[1], cwf - c[0], c[3]] } else { c };
            Some(Target { bbox: [c[0] / cwf, c[1] / chf, c[2] / cwf, c[3] / chf], class: f.class })
        })
        .collect();
    Ok((x, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        // A 100 × 200 photo (h × w), one face at x 20..60, y 10..50, class 1.
        let image = Tensor::zeros([3, 100, 200], (Kind::Uint8, tch::Device::Cpu));
        Sample { image, faces: vec![Target { bbox: [20.0, 10.0, 60.0, 50.0], class: 1 }] }
    }

    #[test]
    fn flip_and_crop_move_the_boxes_with_the_pixels() {
        let s = sample();
        let (x, t) = apply(&s, None, 64).unwrap();
        assert_eq!(x.size(), [3, 64, 64]);
        assert_eq!(t, vec![Target { bbox: [0.1, 0.1, 0.3, 0.5], class: 1 }]);
        let flip = Draw { crop: None, flip: true, degrade: Degrade::default() };
        let (_, t) = apply(&s, Some(&flip), 64).unwrap();
        assert!((t[0].bbox[0] - 0.7).abs() < 1e-12 && (t[0].bbox[2] - 0.9).abs() < 1e-12, "{t:?}");
        // A crop of the right half drops the face (its centre is outside); of the left half keeps it.
        let right = Draw { crop: Some([0.5, 0.0, 0.5, 1.0]), flip: false, degrade: Degrade::default() };
        assert!(apply(&s, Some(&right), 64).unwrap().1.is_empty());
        let left = Draw { crop: Some([0.0, 0.2, 0.25, 0.5]), flip: false, degrade: Degrade::default() };
        let (_, t) = apply(&s, Some(&left), 64).unwrap();
        // Crop x 0..50, y 20..70: the face clipped to x 20..50, y 20..50.
        assert_eq!(t, vec![Target { bbox: [0.4, 0.0, 1.0, 0.6], class: 1 }]);
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_photo_only() {
        let a = BoxAugment::default();
        assert_eq!(a.draw(1, 2, 3), a.draw(1, 2, 3));
        assert_ne!(a.draw(1, 2, 3), a.draw(1, 2, 4));
        assert_ne!(a.draw(1, 2, 3), a.draw(1, 3, 3));
        assert!(BoxAugment { p_crop: 1.5, ..Default::default() }.validate().is_err());
    }
}
