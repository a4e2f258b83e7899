//! A mask-aware face detector: AIZOOTech's FaceMaskDetection SSD-lite (MIT; 1.01 M parameters,
//! trained on WIDER Face + MAFA), in tch with the original layer names.
//!
//! Eight 3×3 conv + BatchNorm + ReLU layers with 2×2 max pooling make feature maps at strides 8, 16,
//! 32, 64 and one more 3×3 conv without padding; on each of the five, a classification and a box
//! branch (a 3×3 conv + BN + ReLU, then a 3×3 conv) predict, per location, 4 anchors × 2 class
//! probabilities (sigmoid: *with a mask*, *without*) and 4 box offsets. The anchors, the box
//! decoding (SSD's variances 0.1/0.2) and the single-class NMS (on the larger of the two class
//! scores, IoU with areas + 1e-3, highest first) are those of the repository's `utils/`.
//!
//! Input: the photo squished to `size × size` (bilinear), RGB, scaled to [0, 1]; no mean or std.
//! The published weights: `models/model360.pth` (360²) and `models/face_mask_detection.pth` (260²),
//! whole pickled modules read by [`crate::checkpoint::read_module_checkpoint`].

use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module, ModuleT};
use crate::mtcnn::host_f32;
use tch::{Device, Kind, Tensor};

/// The module classes the published `.pth` files name (MMdnn's generated `KitModel` and torch's).
pub const PICKLED_CLASSES: [&str; 3] =
    ["MainModel.KitModel", "torch.nn.modules.conv.Conv2d", "torch.nn.modules.batchnorm.BatchNorm2d"];

/// The SSD's two classes, in the order of its scores.
pub const CLASSES: [&str; 2] = ["with_mask", "without_mask"];

/// The two published input sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SsdInput {
    /// `models/model360.pth`: 360 × 360, feature maps 45, 23, 12, 6, 4.
    #[serde(rename = "ssd360")]
    S360,
    /// `models/face_mask_detection.pth`: 260 × 260, feature maps 33, 17, 9, 5, 3.
    #[serde(rename = "ssd260")]
    S260,
}

impl SsdInput {
    pub const ALL: [SsdInput; 2] = [SsdInput::S360, SsdInput::S260];

    pub fn name(self) -> &'static str {
        match self {
            SsdInput::S360 => "ssd360",
            SsdInput::S260 => "ssd260",
        }
    }

    pub fn side(self) -> i64 {
        match self {
            SsdInput::S360 => 360,
            SsdInput::S260 => 260,
        }
    }

    /// The five feature maps' sides, as the network makes them from [`SsdInput::side`].
    pub fn feature_maps(self) -> [i64; 5] {
        // Two 2×2 pools, then three more each after padding right and bottom by one.
        let mut s = self.side() / 4;
        let mut out = [0; 5];
        for o in out.iter_mut().take(4) {
            s = (s + 1) / 2;
            *o = s;
        }
        out[4] = out[3] - 2; // a 3×3 conv without padding
        out
    }
}

impl std::fmt::Display for SsdInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The detector's knobs (the repository's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdParams {
    /// Boxes whose larger class score is at most this are dropped before NMS.
    pub conf_threshold: f32,
    /// NMS drops a box that overlaps a kept, higher-scoring one by more than this IoU.
    pub iou_threshold: f32,
}

impl Default for SsdParams {
    fn default() -> Self {
        SsdParams { conf_threshold: 0.5, iou_threshold: 0.4 }
    }
}

impl SsdParams {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f32| v.is_finite() && (0.0..1.0).contains(&v);
        if !unit(self.conf_threshold) {
            return Err(format!("ssd conf_threshold {} must be in [0, 1)", self.conf_threshold));
        }
        if !unit(self.iou_threshold) || self.iou_threshold == 0.0 {
            return Err(format!("ssd iou_threshold {} must be in (0, 1)", self.iou_threshold));
        }
        Ok(())
    }
}

/// One detected face, in the photo's pixel coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsdFace {
    /// `[x1, y1, x2, y2]`, clipped to the photo.
    pub bbox: [f32; 4],
    /// The larger of the two class scores: the detector's confidence that this is a face.
    pub score: f32,
    /// The detector's own sigmoid scores: `[with a mask, without]`.
    pub mask_scores: [f32; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum SsdError {
    #[error("{path}: {why}")]
    Weights { path: String, why: String },
    #[error("expected uint8 photos (N, H, W, 3), got {0:?} {1:?}")]
    BadInput(Kind, Vec<i64>),
    #[error("{0}")]
    Params(String),
}

/// conv (no padding of its own: the original pads explicitly) + BatchNorm (eps 1e-3) + ReLU.
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    pad: bool,
}

impl ConvBn {
    fn new(p: &nn::Path, name: &str, cin: i64, cout: i64, pad: bool) -> ConvBn {
        let cfg = nn::ConvConfig { bias: false, ..Default::default() };
        let conv = nn::conv2d(p / name, cin, cout, 3, cfg);
        let bn_cfg = nn::BatchNormConfig { eps: 0.0010000000474974513, ..Default::default() };
        let bn = nn::batch_norm2d(p / format!("{name}_bn"), cout, bn_cfg);
        ConvBn { conv, bn, pad }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.pad { x.constant_pad_nd([1, 1, 1, 1]) } else { x.shallow_clone() };
        self.bn.forward_t(&self.conv.forward(&x), false).relu()
    }
}

/// One level's two branches: `cls_i_insert_conv2d` → `cls_i_conv` (4 anchors × 2 classes) and
/// `loc_i_insert_conv2d` → `loc_i_conv` (4 anchors × 4 offsets).
struct Head {
    cls_insert: ConvBn,
    cls: nn::Conv2D,
    loc_insert: ConvBn,
    loc: nn::Conv2D,
}

impl Head {
    fn new(p: &nn::Path, level: usize, cin: i64) -> Head {
        let out = |name: String, c: i64| nn::conv2d(p / name, 64, c, 3, Default::default());
        Head {
            cls_insert: ConvBn::new(p, &format!("cls_{level}_insert_conv2d"), cin, 64, true),
            cls: out(format!("cls_{level}_conv"), 8),
            loc_insert: ConvBn::new(p, &format!("loc_{level}_insert_conv2d"), cin, 64, true),
            loc: out(format!("loc_{level}_conv"), 16),
        }
    }

    /// `(N, A, 2)` class logits and `(N, A, 4)` offsets for this level's anchors.
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = x.size()[0];
        let branch = |insert: &ConvBn, conv: &nn::Conv2D, k: i64| {
            conv.forward(&insert.forward(x).constant_pad_nd([1, 1, 1, 1])).permute([0, 2, 3, 1]).reshape([n, -1, k])
        };
        (branch(&self.cls_insert, &self.cls, 2), branch(&self.loc_insert, &self.loc, 4))
    }
}

struct Net {
    body: [ConvBn; 8],
    heads: [Head; 5],
}

fn pool(x: &Tensor, pad: bool) -> Tensor {
    let x = if pad { x.pad([0, 1, 0, 1], "constant", f64::NEG_INFINITY) } else { x.shallow_clone() };
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

impl Net {
    fn new(p: &nn::Path) -> Net {
        let c = |name: &str, cin, cout, pad| ConvBn::new(p, name, cin, cout, pad);
        Net {
            body: [
                c("conv2d_0", 3, 32, true),
                c("conv2d_1", 32, 64, true),
                c("conv2d_2", 64, 64, true),
                c("conv2d_3", 64, 64, true),
                c("conv2d_4", 64, 128, true),
                c("conv2d_5", 128, 128, true),
                c("conv2d_6", 128, 64, true),
                c("conv2d_7", 64, 64, false),
            ],
            heads: [Head::new(p, 0, 64), Head::new(p, 1, 128), Head::new(p, 2, 128), Head::new(p, 3, 64), Head::new(p, 4, 64)],
        }
    }

    /// `(N, 3, S, S)` in [0, 1] → `(N, A, 4)` raw offsets and `(N, A, 2)` class logits (the
    /// published model applies a sigmoid: [`FaceMaskSsd::forward`]).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let b = &self.body;
        let x = pool(&b[0].forward(x), false);
        let x = pool(&b[1].forward(&x), false);
        let x = pool(&b[2].forward(&x), true);
        let f0 = b[3].forward(&x);
        let f1 = b[4].forward(&pool(&f0, true));
        let f2 = b[5].forward(&pool(&f1, true));
        let f3 = b[6].forward(&pool(&f2, true));
        let f4 = b[7].forward(&f3);
        let (cls, loc): (Vec<Tensor>, Vec<Tensor>) =
            self.heads.iter().zip([f0, f1, f2, f3, f4].iter()).map(|(h, f)| h.forward(f)).unzip();
        (Tensor::cat(&loc, 1), Tensor::cat(&cls, 1))
    }
}

/// The anchors `[x1, y1, x2, y2]` (fractions of the input side), in the network's output order:
/// level by level, row by row, and per location sizes s0, s1 at ratio 1, then s0 at ratios 0.62 and
/// 0.42 (the repository's `generate_anchors`, in f64 as numpy computes it).
pub fn anchors(input: SsdInput) -> Vec<[f64; 4]> {
    const SIZES: [[f64; 2]; 5] = [[0.04, 0.056], [0.08, 0.11], [0.16, 0.22], [0.32, 0.45], [0.64, 0.72]];
    const RATIOS: [f64; 3] = [1.0, 0.62, 0.42];
    let mut out = Vec::new();
    for (level, side) in input.feature_maps().into_iter().enumerate() {
        let [s0, s1] = SIZES[level];
        let shapes: Vec<(f64, f64)> = [(s0, RATIOS[0]), (s1, RATIOS[0]), (s0, RATIOS[1]), (s0, RATIOS[2])]
            .iter()
            .map(|&(s, r)| (s * r.sqrt() / 2.0, s / r.sqrt() / 2.0))
            .collect();
        let centre = |i: i64| (i as f64 + 0.5) / side as f64;
        for y in 0..side {
            for x in 0..side {
                for &(hw, hh) in &shapes {
                    out.push([centre(x) - hw, centre(y) - hh, centre(x) + hw, centre(y) + hh]);
                }
            }
        }
    }
    out
}

/// SSD's variances of the centre offsets and of the log sizes.
pub const VARIANCES: [f64; 4] = [0.1, 0.1, 0.2, 0.2];

/// An anchor and the network's raw offsets → a box in fractions of the input (`decode_bbox`).
pub fn decode(anchor: &[f64; 4], raw: [f32; 4]) -> [f64; 4] {
    let (aw, ah) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (ax, ay) = ((anchor[0] + anchor[2]) / 2.0, (anchor[1] + anchor[3]) / 2.0);
    let d: Vec<f64> = raw.iter().zip(VARIANCES).map(|(&r, v)| r as f64 * v).collect();
    let (cx, cy) = (d[0] * aw + ax, d[1] * ah + ay);
    let (w, h) = (d[2].exp() * aw, d[3].exp() * ah);
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// The repository's `single_class_non_max_suppression`: candidates above `conf` (strictly), highest
/// score first, each dropping the rest that overlap it by more than `iou` (areas + 1e-3). Returns
/// indices into `boxes`.
pub fn nms(boxes: &[[f64; 4]], scores: &[f32], conf: f32, iou: f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..boxes.len()).filter(|&i| scores[i] > conf).collect();
    // Highest first; ties by index, so the order is defined (numpy's quicksort leaves it open).
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let area = |b: &[f64; 4]| (b[2] - b[0] + 1e-3) * (b[3] - b[1] + 1e-3);
    let mut keep = Vec::new();
    while let Some((&i, rest)) = idx.split_first() {
        keep.push(i);
        let a = &boxes[i];
        idx = rest
            .iter()
            .copied()
            .filter(|&j| {
                let b = &boxes[j];
                let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
                let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
                let inter = w * h;
                inter / (area(b) + area(a) - inter) <= iou as f64
            })
            .collect();
    }
    keep
}

/// The loaded detector.
pub struct FaceMaskSsd {
    vs: nn::VarStore,
    net: Net,
    anchors: Vec<[f64; 4]>,
    pub input: SsdInput,
    pub params: SsdParams,
    pub device: Device,
}

// A detector moves to a worker thread (each worker holds its own: see [`FaceMaskSsd::duplicate`]).
const _: fn() = || {
    fn movable<T: Send>() {}
    movable::<FaceMaskSsd>();
};

impl std::fmt::Debug for FaceMaskSsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceMaskSsd").field("input", &self.input).field("params", &self.params).finish()
    }
}

impl FaceMaskSsd {
    /// The network with fresh variables, under the original names (`conv2d_0.weight`, …).
    pub fn untrained(input: SsdInput, params: SsdParams, device: Device) -> FaceMaskSsd {
        let vs = nn::VarStore::new(device);
        let net = Net::new(&vs.root());
        FaceMaskSsd { vs, net, anchors: anchors(input), input, params, device }
    }

    /// The variables, for checking that imported tensors fit.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Loads the weights from a safetensors file (as `maskflow weights import` writes them).
    pub fn load(file: &Path, input: SsdInput, params: SsdParams, device: Device) -> Result<FaceMaskSsd, SsdError> {
        params.validate().map_err(SsdError::Params)?;
        let err = |why: String| SsdError::Weights { path: file.display().to_string(), why };
        let tensors = Tensor::read_safetensors(file).map_err(|e| err(e.to_string()))?;
        let mut m = FaceMaskSsd::untrained(input, params, device);
        crate::classifier::load_named(&m.vs, &tensors, &[], &[]).map_err(|e| err(format!("does not fit {input}: {e}")))?;
        m.vs.freeze();
        Ok(m)
    }

    /// A copy with its own tensors (one per worker thread; the weights are ≈ 4 MB).
    pub fn duplicate(&self) -> FaceMaskSsd {
        let mut m = FaceMaskSsd::untrained(self.input, self.params.clone(), self.device);
        // Same variables, same names: copying cannot fail.
        m.vs.copy(&self.vs).expect("same variable set");
        m.vs.freeze();
        m
    }

    /// The network on inputs already at its size: `(N, 3, S, S)` floats in [0, 1] → raw offsets
    /// `(N, A, 4)` and class probabilities `(N, A, 2)`.
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let (loc, logits) = self.net.forward(&x.to_device(self.device));
            (loc, logits.sigmoid())
        })
    }

    /// The network with gradients (BatchNorm keeps its statistics: fine-tuning runs it frozen):
    /// raw offsets `(N, A, 4)` and class logits `(N, A, 2)`.
    pub fn forward_logits(&self, x: &Tensor) -> (Tensor, Tensor) {
        self.net.forward(&x.to_device(self.device))
    }

    /// The variables, for training (trainable again after [`FaceMaskSsd::load`] froze them).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Whether a variable belongs to the prediction heads (`cls_*`, `loc_*`) rather than the body.
    pub fn is_head(name: &str) -> bool {
        name.starts_with("cls_") || name.starts_with("loc_")
    }

    /// The anchors of this input size, in output order.
    pub fn anchors(&self) -> &[[f64; 4]] {
        &self.anchors
    }

    /// Faces in each photo of a batch (`(N, H, W, 3)` uint8, one size), each list highest score first.
    pub fn detect_batch(&self, photos: &Tensor) -> Result<Vec<Vec<SsdFace>>, SsdError> {
        let size = photos.size();
        if photos.kind() != Kind::Uint8 || size.len() != 4 || size[3] != 3 {
            return Err(SsdError::BadInput(photos.kind(), size));
        }
        let (h, w) = (size[1], size[2]);
        let s = self.input.side();
        let x = photos.to_device(self.device).permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let x = if (h, w) == (s, s) { x } else { x.upsample_bilinear2d([s, s], false, None, None) };
        let (loc, cls) = self.forward(&(x / 255.0));
        let loc = host_f32(&loc);
        let cls = host_f32(&cls);
        let a = self.anchors.len();
        Ok((0..size[0] as usize).map(|i| self.faces(&loc[i * a * 4..(i + 1) * a * 4], &cls[i * a * 2..(i + 1) * a * 2], w, h)).collect())
    }

    /// Faces in one photo (`(H, W, 3)` uint8), highest score first.
    pub fn detect(&self, photo: &Tensor) -> Result<Vec<SsdFace>, SsdError> {
        Ok(self.detect_batch(&photo.unsqueeze(0))?.pop().unwrap_or_default())
    }

    /// One photo's outputs → decoded, NMS-filtered faces in pixels.
    fn faces(&self, loc: &[f32], cls: &[f32], w: i64, h: i64) -> Vec<SsdFace> {
        let boxes: Vec<[f64; 4]> = self
            .anchors
            .iter()
            .zip(loc.chunks_exact(4))
            .map(|(a, r)| decode(a, [r[0], r[1], r[2], r[3]]))
            .collect();
        let scores: Vec<f32> = cls.chunks_exact(2).map(|c| c[0].max(c[1])).collect();
        let (w, h) = (w as f64, h as f64);
        nms(&boxes, &scores, self.params.conf_threshold, self.params.iou_threshold)
            .into_iter()
            .map(|i| {
                let b = boxes[i];
                SsdFace {
                    bbox: [
                        (b[0] * w).clamp(0.0, w) as f32,
                        (b[1] * h).clamp(0.0, h) as f32,
                        (b[2] * w).clamp(0.0, w) as f32,
                        (b[3] * h).clamp(0.0, h) as f32,
                    ],
                    score: scores[i],
                    mask_scores: [cls[2 * i], cls[2 * i + 1]],
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_maps_and_anchor_counts_match_the_repository() {
        assert_eq!(SsdInput::S360.feature_maps(), [45, 23, 12, 6, 4]);
        assert_eq!(SsdInput::S260.feature_maps(), [33, 17, 9, 5, 3]);
        assert_eq!(anchors(SsdInput::S360).len(), (45 * 45 + 23 * 23 + 12 * 12 + 36 + 16) * 4);
        // The network makes exactly one output row per anchor, at both sizes.
        for input in SsdInput::ALL {
            let m = FaceMaskSsd::untrained(input, SsdParams::default(), Device::Cpu);
            let (loc, cls) = m.forward(&Tensor::zeros([2, 3, input.side(), input.side()], (Kind::Float, Device::Cpu)));
            assert_eq!(loc.size(), [2, anchors(input).len() as i64, 4]);
            assert_eq!(cls.size(), [2, anchors(input).len() as i64, 2]);
        }
    }

    #[test]
    fn first_anchors_are_the_top_left_cell_in_the_repository_order() {
        let a = anchors(SsdInput::S360);
        let c = 0.5 / 45.0;
        // size 0.04 at ratio 1, then 0.056 at ratio 1
        assert!((a[0][0] - (c - 0.02)).abs() < 1e-12 && (a[0][3] - (c + 0.02)).abs() < 1e-12);
        assert!((a[1][2] - (c + 0.028)).abs() < 1e-12);
        // 0.04 at ratio 0.62: wider than high? no — width = s·√r < height = s/√r
        assert!(a[2][2] - a[2][0] < a[2][3] - a[2][1]);
        // the next location is one cell to the right
        assert!((a[4][0] - (1.5 / 45.0 - 0.02)).abs() < 1e-12);
    }

    #[test]
    fn decoding_zero_offsets_gives_the_anchor_and_nms_keeps_the_best_of_overlaps() {
        let anchor = [0.1, 0.2, 0.3, 0.5];
        let b = decode(&anchor, [0.0; 4]);
        assert!(b.iter().zip(anchor).all(|(x, y)| (x - y).abs() < 1e-12));
        let boxes = [[0.0, 0.0, 1.0, 1.0], [0.05, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.5, 0.5]];
        let scores = [0.8, 0.9, 0.7, 0.4];
        // 0 overlaps 1 (IoU 0.95): dropped; 2 is apart; 3 is under the threshold.
        assert_eq!(nms(&boxes, &scores, 0.5, 0.4), vec![1, 2]);
    }
}
