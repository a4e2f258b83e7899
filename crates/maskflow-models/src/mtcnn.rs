//! MTCNN face detection (Zhang et al. 2016) as facenet-pytorch 2.6.0 runs it: the P-, R- and O-Net
//! with that package's pretrained weights (same parameter names), the image pyramid, non-maximum
//! suppression, box regression and the five landmarks. Every step follows
//! `facenet_pytorch/models/utils/detect_face.py` operation for operation (same libtorch kernels for
//! the resampling and the nets), so boxes and scores match it to float rounding; the golden tests
//! (`tests/mtcnn_golden.rs`) hold it to that.
//!
//! Photos of one size are detected as a batch: every pyramid level runs the P-Net once for all of
//! them, and the R-/O-Net candidates of all of them go through their nets together.

use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The three networks of the cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtcnnNet {
    #[serde(rename = "mtcnn_pnet")]
    Pnet,
    #[serde(rename = "mtcnn_rnet")]
    Rnet,
    #[serde(rename = "mtcnn_onet")]
    Onet,
}

impl MtcnnNet {
    pub const ALL: [MtcnnNet; 3] = [MtcnnNet::Pnet, MtcnnNet::Rnet, MtcnnNet::Onet];
    pub fn name(self) -> &'static str {
        match self {
            MtcnnNet::Pnet => "mtcnn_pnet",
            MtcnnNet::Rnet => "mtcnn_rnet",
            MtcnnNet::Onet => "mtcnn_onet",
        }
    }
    /// Builds the network's variables under `p` (facenet-pytorch's names: `conv1.weight`, `prelu1.weight`, …).
    pub fn build(self, p: &nn::Path) -> Box<dyn Module> {
        match self {
            MtcnnNet::Pnet => Box::new(PNet::new(p)),
            MtcnnNet::Rnet => Box::new(RNet::new(p)),
            MtcnnNet::Onet => Box::new(ONet::new(p)),
        }
    }
}

impl std::fmt::Display for MtcnnNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The detector's knobs, with facenet-pytorch's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtcnnParams {
    /// Smallest face side searched for, in pixels (the pyramid's first scale is 12 / this).
    pub min_face_size: f64,
    /// Score thresholds of the P-, R- and O-Net.
    pub thresholds: [f64; 3],
    /// Scale step between pyramid levels.
    pub factor: f64,
}

impl Default for MtcnnParams {
    fn default() -> Self {
        MtcnnParams { min_face_size: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

impl MtcnnParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min_face_size >= 12.0 && self.min_face_size.is_finite()) {
            return Err(format!("min_face_size must be at least 12 (the P-Net's window), got {}", self.min_face_size));
        }
        if !(self.factor > 0.1 && self.factor < 1.0) {
            return Err(format!("factor must be in (0.1, 1), got {}", self.factor));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(format!("thresholds must be in [0, 1], got {t}"));
        }
        Ok(())
    }

    /// The pyramid's scales for an `h`×`w` photo (facenet-pytorch's loop, in f64 as Python does it).
    pub fn scales(&self, h: i64, w: i64) -> Vec<f64> {
        let m = 12.0 / self.min_face_size;
        let mut minl = h.min(w) as f64 * m;
        let mut scale = m;
        let mut out = Vec::new();
        while minl >= 12.0 {
            out.push(scale);
            scale *= self.factor;
            minl *= self.factor;
        }
        out
    }
}

/// One detected face, in the photo's pixel coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// The O-Net's face probability.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corner: `[x, y]` each.
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

fn prelu(p: &nn::Path, name: &str, c: i64) -> Tensor {
    (p / name).var("weight", &[c], nn::Init::Const(0.25))
}

fn conv(p: &nn::Path, name: &str, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p / name, cin, cout, k, Default::default())
}

fn pool(x: Tensor, k: i64, s: i64) -> Tensor {
    x.max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

/// P-Net: fully convolutional; per 12×12 window (stride 2), box regression (4) and face probability (2).
#[derive(Debug)]
struct PNet {
    conv1: nn::Conv2D,
    prelu1: Tensor,
    conv2: nn::Conv2D,
    prelu2: Tensor,
    conv3: nn::Conv2D,
    prelu3: Tensor,
    conv4_1: nn::Conv2D,
    conv4_2: nn::Conv2D,
}

impl PNet {
    fn new(p: &nn::Path) -> PNet {
        PNet {
            conv1: conv(p, "conv1", 3, 10, 3),
            prelu1: prelu(p, "prelu1", 10),
            conv2: conv(p, "conv2", 10, 16, 3),
            prelu2: prelu(p, "prelu2", 16),
            conv3: conv(p, "conv3", 16, 32, 3),
            prelu3: prelu(p, "prelu3", 32),
            conv4_1: conv(p, "conv4_1", 32, 2, 1),
            conv4_2: conv(p, "conv4_2", 32, 4, 1),
        }
    }
}

impl Module for PNet {
    /// `(N, 3, H, W)` → `(N, 6, h, w)`: regression in channels 0–3, probabilities in 4–5.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = pool(x.apply(&self.conv1).prelu(&self.prelu1), 2, 2);
        let x = x.apply(&self.conv2).prelu(&self.prelu2).apply(&self.conv3).prelu(&self.prelu3);
        let a = x.apply(&self.conv4_1).softmax(1, Kind::Float);
        let b = x.apply(&self.conv4_2);
        Tensor::cat(&[b, a], 1)
    }
}

/// R-Net: 24×24 candidates → regression (4) and probability (2).
#[derive(Debug)]
struct RNet {
    conv1: nn::Conv2D,
    prelu1: Tensor,
    conv2: nn::Conv2D,
    prelu2: Tensor,
    conv3: nn::Conv2D,
    prelu3: Tensor,
    dense4: nn::Linear,
    prelu4: Tensor,
    dense5_1: nn::Linear,
    dense5_2: nn::Linear,
}

impl RNet {
    fn new(p: &nn::Path) -> RNet {
        RNet {
            conv1: conv(p, "conv1", 3, 28, 3),
            prelu1: prelu(p, "prelu1", 28),
            conv2: conv(p, "conv2", 28, 48, 3),
            prelu2: prelu(p, "prelu2", 48),
            conv3: conv(p, "conv3", 48, 64, 2),
            prelu3: prelu(p, "prelu3", 64),
            dense4: nn::linear(p / "dense4", 576, 128, Default::default()),
            prelu4: prelu(p, "prelu4", 128),
            dense5_1: nn::linear(p / "dense5_1", 128, 2, Default::default()),
            dense5_2: nn::linear(p / "dense5_2", 128, 4, Default::default()),
        }
    }
}

impl Module for RNet {
    /// `(N, 3, 24, 24)` → `(N, 6)`: regression 0–3, probabilities 4–5.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = pool(x.apply(&self.conv1).prelu(&self.prelu1), 3, 2);
        let x = pool(x.apply(&self.conv2).prelu(&self.prelu2), 3, 2);
        let x = x.apply(&self.conv3).prelu(&self.prelu3);
        // The weights come from a TensorFlow model: flatten in (W, H, C) order as facenet-pytorch does.
        let n = x.size()[0];
        let x = x.permute([0, 3, 2, 1]).contiguous().view([n, -1]);
        let x = x.apply(&self.dense4).prelu(&self.prelu4);
        let a = x.apply(&self.dense5_1).softmax(1, Kind::Float);
        let b = x.apply(&self.dense5_2);
        Tensor::cat(&[b, a], 1)
    }
}

/// O-Net: 48×48 candidates → regression (4), landmarks (10: five x then five y) and probability (2).
#[derive(Debug)]
struct ONet {
    conv1: nn::Conv2D,
    prelu1: Tensor,
    conv2: nn::Conv2D,
    prelu2: Tensor,
    conv3: nn::Conv2D,
    prelu3: Tensor,
    conv4: nn::Conv2D,
    prelu4: Tensor,
    dense5: nn::Linear,
    prelu5: Tensor,
    dense6_1: nn::Linear,
    dense6_2: nn::Linear,
    dense6_3: nn::Linear,
}

impl ONet {
    fn new(p: &nn::Path) -> ONet {
        ONet {
            conv1: conv(p, "conv1", 3, 32, 3),
            prelu1: prelu(p, "prelu1", 32),
            conv2: conv(p, "conv2", 32, 64, 3),
            prelu2: prelu(p, "prelu2", 64),
            conv3: conv(p, "conv3", 64, 64, 3),
            prelu3: prelu(p, "prelu3", 64),
            conv4: conv(p, "conv4", 64, 128, 2),
            prelu4: prelu(p, "prelu4", 128),
            dense5: nn::linear(p / "dense5", 1152, 256, Default::default()),
            prelu5: prelu(p, "prelu5", 256),
            dense6_1: nn::linear(p / "dense6_1", 256, 2, Default::default()),
            dense6_2: nn::linear(p / "dense6_2", 256, 4, Default::default()),
            dense6_3: nn::linear(p / "dense6_3", 256, 10, Default::default()),
        }
    }
}

impl Module for ONet {
    /// `(N, 3, 48, 48)` → `(N, 16)`: regression 0–3, landmarks 4–13, probabilities 14–15.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = pool(x.apply(&self.conv1).prelu(&self.prelu1), 3, 2);
        let x = pool(x.apply(&self.conv2).prelu(&self.prelu2), 3, 2);
        let x = pool(x.apply(&self.conv3).prelu(&self.prelu3), 2, 2);
        let x = x.apply(&self.conv4).prelu(&self.prelu4);
        let n = x.size()[0];
        let x = x.permute([0, 3, 2, 1]).contiguous().view([n, -1]);
        let x = x.apply(&self.dense5).prelu(&self.prelu5);
        let a = x.apply(&self.dense6_1).softmax(1, Kind::Float);
        let b = x.apply(&self.dense6_2);
        let c = x.apply(&self.dense6_3);
        Tensor::cat(&[b, c, a], 1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MtcnnError {
    #[error("{path}: {why}")]
    Weights { path: String, why: String },
    #[error("expected uint8 photos (N, H, W, 3), got {0:?} {1:?}")]
    BadInput(Kind, Vec<i64>),
    #[error("{0}")]
    Params(String),
}

/// The loaded cascade.
pub struct Mtcnn {
    vs: nn::VarStore,
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    pub params: MtcnnParams,
    pub device: Device,
}

// A detector moves to a worker thread (tensors are not `Sync`: each worker holds its own, see
// [`Mtcnn::duplicate`]).
const _: fn() = || {
    fn movable<T: Send>() {}
    movable::<Mtcnn>();
};

impl std::fmt::Debug for Mtcnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtcnn").field("params", &self.params).field("device", &self.device).finish()
    }
}

/// Candidate boxes on the host: `[x1, y1, x2, y2, score]` rows with their photo.
#[derive(Debug, Clone, Default)]
struct Candidates {
    boxes: Vec<[f32; 5]>,
    photo: Vec<i64>,
}

impl Candidates {
    fn len(&self) -> usize {
        self.boxes.len()
    }
    fn pick(&self, keep: &[usize]) -> Candidates {
        Candidates { boxes: keep.iter().map(|&i| self.boxes[i]).collect(), photo: keep.iter().map(|&i| self.photo[i]).collect() }
    }
    fn tensor(&self, device: Device) -> Tensor {
        let flat: Vec<f32> = self.boxes.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([self.len() as i64, 5]).to_device(device)
    }
    fn from_tensor(t: &Tensor, photo: Vec<i64>) -> Candidates {
        let boxes = host_f32(t).chunks_exact(5).map(|c| [c[0], c[1], c[2], c[3], c[4]]).collect();
        Candidates { boxes, photo }
    }
}

impl Mtcnn {
    /// Loads the three nets from their safetensors files (as `maskflow weights import` writes them).
    /// The three nets with fresh variables, each under its registry name (`mtcnn_pnet.conv1.weight`, …).
    fn untrained(params: MtcnnParams, device: Device) -> Mtcnn {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let pnet = PNet::new(&(&root / MtcnnNet::Pnet.name()));
        let rnet = RNet::new(&(&root / MtcnnNet::Rnet.name()));
        let onet = ONet::new(&(&root / MtcnnNet::Onet.name()));
        Mtcnn { vs, pnet, rnet, onet, params, device }
    }

    /// Loads the three nets from their safetensors files (as `maskflow weights import` writes them).
    pub fn load(files: [&Path; 3], params: MtcnnParams, device: Device) -> Result<Mtcnn, MtcnnError> {
        params.validate().map_err(MtcnnError::Params)?;
        let mut m = Mtcnn::untrained(params, device);
        for (net, file) in MtcnnNet::ALL.iter().zip(files) {
            let err = |why: String| MtcnnError::Weights { path: file.display().to_string(), why };
            let tensors = Tensor::read_safetensors(file).map_err(|e| err(e.to_string()))?;
            let prefixed: Vec<(String, Tensor)> =
                tensors.into_iter().map(|(n, t)| (format!("{}.{n}", net.name()), t)).collect();
            // Each file must fill exactly its own net's variables (the others' are skipped).
            let others: Vec<&str> = MtcnnNet::ALL.iter().filter(|o| *o != net).map(|o| o.name()).collect();
            crate::classifier::load_named(&m.vs, &prefixed, &others, &[])
                .map_err(|e| err(format!("does not fit {net}: {e}")))?;
        }
        m.vs.freeze();
        Ok(m)
    }

    /// A copy with its own tensors (one per worker thread; the weights are ≈ 2 MB).
    pub fn duplicate(&self) -> Mtcnn {
        let mut m = Mtcnn::untrained(self.params.clone(), self.device);
        // Same variables, same names: copying cannot fail.
        m.vs.copy(&self.vs).expect("same variable set");
        m.vs.freeze();
        m
    }

    /// Faces in one photo given as packed RGB bytes (`width × height × 3`), largest first.
    pub fn detect_rgb(&self, width: u32, height: u32, rgb: &[u8]) -> Result<Vec<Face>, MtcnnError> {
        let size = vec![height as i64, width as i64, 3];
        if rgb.len() as i64 != size.iter().product::<i64>() {
            return Err(MtcnnError::BadInput(Kind::Uint8, size));
        }
        self.detect(&Tensor::from_data_size(rgb, &size, Kind::Uint8))
    }

    /// Faces in one photo (`(H, W, 3)` uint8), largest first.
    pub fn detect(&self, photo: &Tensor) -> Result<Vec<Face>, MtcnnError> {
        Ok(self.detect_batch(&photo.unsqueeze(0))?.pop().unwrap_or_default())
    }

    /// Faces in each photo of a batch (`(N, H, W, 3)` uint8, one size), each list largest first.
    pub fn detect_batch(&self, photos: &Tensor) -> Result<Vec<Vec<Face>>, MtcnnError> {
        let size = photos.size();
        if photos.kind() != Kind::Uint8 || size.len() != 4 || size[3] != 3 {
            return Err(MtcnnError::BadInput(photos.kind(), size));
        }
        let n = size[0] as usize;
        let imgs = photos.to_device(self.device).permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let (h, w) = (size[1], size[2]);
        let [t1, t2, t3] = self.params.thresholds;
        let found = tch::no_grad(|| {
            let c = self.stage1(&imgs, h, w, t1);
            let c = self.stage2(&imgs, c, h, w, t2);
            self.stage3(&imgs, c, h, w, t3)
        });
        let mut out: Vec<Vec<Face>> = vec![Vec::new(); n];
        for (face, photo) in found {
            out[photo as usize].push(face);
        }
        for faces in &mut out {
            // facenet-pytorch's `select_largest` order: by box area, largest first.
            faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        }
        Ok(out)
    }

    /// The P-Net over the pyramid: candidates after NMS per level and across levels, regressed, squared.
    fn stage1(&self, imgs: &Tensor, h: i64, w: i64, threshold: f64) -> Candidates {
        let mut all = Candidates::default();
        let mut regs: Vec<[f32; 4]> = Vec::new();
        for scale in self.params.scales(h, w) {
            let (hs, ws) = ((h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64);
            let x = normalize(&imgs.adaptive_avg_pool2d([hs, ws]));
            let out = self.pnet.forward(&x);
            let (level, reg) = generate_boxes(&out, scale, threshold);
            let keep = nms(&level, 0.5, Overlap::Union);
            all.boxes.extend(keep.iter().map(|&i| level.boxes[i]));
            all.photo.extend(keep.iter().map(|&i| level.photo[i]));
            regs.extend(keep.iter().map(|&i| reg[i]));
        }
        let keep = nms(&all, 0.7, Overlap::Union);
        let picked = all.pick(&keep);
        if picked.len() == 0 {
            return picked;
        }
        let reg: Vec<f32> = keep.iter().flat_map(|&i| regs[i]).collect();
        let reg = Tensor::from_slice(&reg).view([keep.len() as i64, 4]).to_device(self.device);
        let b = picked.tensor(self.device);
        let col = |t: &Tensor, i: i64| t.select(1, i);
        let regw = col(&b, 2) - col(&b, 0);
        let regh = col(&b, 3) - col(&b, 1);
        let q1 = col(&b, 0) + col(&reg, 0) * &regw;
        let q2 = col(&b, 1) + col(&reg, 1) * &regh;
        let q3 = col(&b, 2) + col(&reg, 2) * &regw;
        let q4 = col(&b, 3) + col(&reg, 3) * &regh;
        let b = rerec(&Tensor::stack(&[q1, q2, q3, q4, col(&b, 4)], 1));
        Candidates::from_tensor(&b, picked.photo)
    }

    /// The R-Net on 24×24 crops: threshold, NMS, regression, squared.
    fn stage2(&self, imgs: &Tensor, c: Candidates, h: i64, w: i64, threshold: f64) -> Candidates {
        let Some((c, crops)) = self.crops(imgs, c, h, w, 24) else {
            return Candidates::default();
        };
        let out = batched(&self.rnet, &crops);
        let Passed { boxes: b, regression: mv, photo, .. } = self.passing(&c, &out, 5, threshold);
        let passed_c = Candidates::from_tensor(&b, photo);
        let keep = nms(&passed_c, 0.7, Overlap::Union);
        if keep.is_empty() {
            return Candidates::default();
        }
        let idx = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
        let b = bbreg(&b.index_select(0, &idx), &mv.index_select(0, &idx));
        Candidates::from_tensor(&rerec(&b), passed_c.pick(&keep).photo)
    }

    /// The O-Net on 48×48 crops: threshold, landmarks, regression, NMS by the smaller box.
    fn stage3(&self, imgs: &Tensor, c: Candidates, h: i64, w: i64, threshold: f64) -> Vec<(Face, i64)> {
        let Some((c, crops)) = self.crops(imgs, c, h, w, 48) else {
            return Vec::new();
        };
        let out = batched(&self.onet, &crops);
        let Passed { boxes: b, regression: mv, photo, mask } = self.passing(&c, &out, 15, threshold);
        let points = out.narrow(1, 4, 10).index(&[Some(&mask)]);
        if photo.is_empty() {
            return Vec::new();
        }
        let col = |t: &Tensor, i: i64| t.select(1, i).unsqueeze(1);
        let w_i = col(&b, 2) - col(&b, 0) + 1.0;
        let h_i = col(&b, 3) - col(&b, 1) + 1.0;
        let px = w_i * points.narrow(1, 0, 5) + col(&b, 0) - 1.0;
        let py = h_i * points.narrow(1, 5, 5) + col(&b, 1) - 1.0;
        let b = bbreg(&b, &mv);
        let regressed = Candidates::from_tensor(&b, photo);
        let (px, py) = (host_f32(&px), host_f32(&py));
        let keep = nms(&regressed, 0.7, Overlap::Min);
        keep.into_iter()
            .map(|i| {
                let r = regressed.boxes[i];
                let mut landmarks = [[0f32; 2]; 5];
                for (j, l) in landmarks.iter_mut().enumerate() {
                    *l = [px[i * 5 + j], py[i * 5 + j]];
                }
                (Face { bbox: [r[0], r[1], r[2], r[3]], score: r[4], landmarks }, regressed.photo[i])
            })
            .collect()
    }

    /// The candidates a net's output (regression in columns 0–3, face probability in `score_col`)
    /// scores above `threshold`, with that score as their new score column.
    fn passing(&self, c: &Candidates, out: &Tensor, score_col: i64, threshold: f64) -> Passed {
        let score = out.select(1, score_col);
        let mask = score.gt(threshold);
        let b = c.tensor(self.device).narrow(1, 0, 4).index(&[Some(&mask)]);
        let boxes = Tensor::cat(&[b, score.index(&[Some(&mask)]).unsqueeze(1)], 1);
        let regression = out.narrow(1, 0, 4).index(&[Some(&mask)]);
        let on_host = Vec::<bool>::try_from(mask.to_device(Device::Cpu)).unwrap_or_default();
        let photo = c.photo.iter().zip(on_host).filter(|(_, m)| *m).map(|(p, _)| *p).collect();
        Passed { boxes, regression, photo, mask }
    }

    /// Each candidate's pixels (clipped to the photo as facenet-pytorch's `pad` does) resampled to
    /// `side`×`side` by area, normalised; candidates with nothing inside the photo are dropped.
    fn crops(&self, imgs: &Tensor, c: Candidates, h: i64, w: i64, side: i64) -> Option<(Candidates, Tensor)> {
        let mut keep = Vec::new();
        let mut crops = Vec::new();
        for (i, (b, &photo)) in c.boxes.iter().zip(&c.photo).enumerate() {
            // `boxes.trunc().int()`, then x, y ≥ 1 and ex ≤ w, ey ≤ h; the crop is [y-1, ey) × [x-1, ex).
            let x = (b[0].trunc() as i64).max(1);
            let y = (b[1].trunc() as i64).max(1);
            let ex = (b[2].trunc() as i64).min(w);
            let ey = (b[3].trunc() as i64).min(h);
            if ey > y - 1 && ex > x - 1 {
                let crop = imgs.get(photo).narrow(1, y - 1, ey - y + 1).narrow(2, x - 1, ex - x + 1);
                crops.push(crop.unsqueeze(0).adaptive_avg_pool2d([side, side]));
                keep.push(i);
            }
        }
        if crops.is_empty() {
            return None;
        }
        Some((c.pick(&keep), normalize(&Tensor::cat(&crops, 0))))
    }
}

fn normalize(x: &Tensor) -> Tensor {
    (x - 127.5) * 0.0078125
}

/// The net over `x` in chunks of 512 (facenet-pytorch's `fixed_batch_process`).
fn batched(net: &dyn Module, x: &Tensor) -> Tensor {
    let chunks: Vec<Tensor> = x.split(512, 0).iter().map(|c| net.forward(c)).collect();
    Tensor::cat(&chunks, 0)
}

/// What passed a net's threshold: `(K, 5)` boxes with the net's score, `(K, 4)` regressions, photos, mask.
struct Passed {
    boxes: Tensor,
    regression: Tensor,
    photo: Vec<i64>,
    mask: Tensor,
}

/// A tensor's values as f32 on the host, flattened (the detectors' outputs, for decoding and NMS).
pub(crate) fn host_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1])).unwrap_or_default()
}

/// P-Net output → candidate boxes of one level (`generateBoundingBox`) and their regressions.
fn generate_boxes(out: &Tensor, scale: f64, threshold: f64) -> (Candidates, Vec<[f32; 4]>) {
    let probs = out.select(1, 5);
    let mask = probs.ge(threshold);
    let inds = mask.nonzero();
    let photo = Vec::<i64>::try_from(inds.select(1, 0).to_device(Device::Cpu)).unwrap_or_default();
    let score = probs.masked_select(&mask);
    let reg = out.narrow(1, 0, 4).permute([0, 2, 3, 1]).index(&[Some(&mask)]);
    let bb = inds.narrow(1, 1, 2).to_kind(Kind::Float).flip([1]);
    let q1 = ((&bb * 2.0 + 1.0) / scale).floor();
    let q2 = ((&bb * 2.0 + 12.0) / scale).floor();
    let boxes = Tensor::cat(&[q1, q2, score.unsqueeze(1)], 1);
    let c = Candidates::from_tensor(&boxes, photo);
    (c, host_f32(&reg).chunks_exact(4).map(|r| [r[0], r[1], r[2], r[3]]).collect())
}

/// Squares each box about its centre on its longer side (`rerec`).
fn rerec(b: &Tensor) -> Tensor {
    let col = |i: i64| b.select(1, i);
    let h = col(3) - col(1);
    let w = col(2) - col(0);
    let l = w.maximum(&h);
    let x1 = col(0) + &w * 0.5 - &l * 0.5;
    let y1 = col(1) + &h * 0.5 - &l * 0.5;
    let x2 = &x1 + &l;
    let y2 = &y1 + &l;
    Tensor::stack(&[x1, y1, x2, y2, col(4)], 1)
}

/// Applies the nets' box regression (`bbreg`); the score column is kept.
fn bbreg(b: &Tensor, reg: &Tensor) -> Tensor {
    let col = |t: &Tensor, i: i64| t.select(1, i);
    let w = col(b, 2) - col(b, 0) + 1.0;
    let h = col(b, 3) - col(b, 1) + 1.0;
    let b1 = col(b, 0) + col(reg, 0) * &w;
    let b2 = col(b, 1) + col(reg, 1) * &h;
    let b3 = col(b, 2) + col(reg, 2) * &w;
    let b4 = col(b, 3) + col(reg, 3) * &h;
    Tensor::stack(&[b1, b2, b3, b4, col(b, 4)], 1)
}

/// How [`nms`] measures overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Intersection over union with areas `(x2 − x1)(y2 − y1)` (torchvision's `nms`).
    Union,
    /// Intersection over the smaller area, areas `(x2 − x1 + 1)(y2 − y1 + 1)` (facenet-pytorch's
    /// `nms_numpy(..., 'Min')`, used after the O-Net).
    Min,
}

/// Greedy non-maximum suppression within each photo: indices kept, highest score first (ties in
/// input order). A box is dropped when its overlap with a kept one is above `threshold`.
pub fn nms_boxes(boxes: &[[f32; 5]], photo: &[i64], threshold: f32, how: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| boxes[b][4].total_cmp(&boxes[a][4]));
    let plus = if how == Overlap::Min { 1.0 } else { 0.0 };
    let area = |b: &[f32; 5]| (b[2] - b[0] + plus) * (b[3] - b[1] + plus);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &boxes[i];
        let area_a = area(a);
        for &j in &order[k + 1..] {
            if suppressed[j] || photo[j] != photo[i] {
                continue;
            }
            let b = &boxes[j];
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + plus).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + plus).max(0.0);
            let inter = iw * ih;
            let o = match how {
                Overlap::Union => inter / (area_a + area(b) - inter),
                Overlap::Min => inter / area_a.min(area(b)),
            };
            if o > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

fn nms(c: &Candidates, threshold: f32, how: Overlap) -> Vec<usize> {
    nms_boxes(&c.boxes, &c.photo, threshold, how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_matches_facenet_pytorch() {
        // facenet-pytorch on a 512×512 photo with the defaults: 0.6 · 0.709^k while 512 · 0.6 · 0.709^k ≥ 12.
        let s = MtcnnParams::default().scales(512, 512);
        assert_eq!(s.len(), 10);
        assert!((s[0] - 0.6).abs() < 1e-12 && (s[1] - 0.4254).abs() < 1e-12);
        assert!(512.0 * s[9] >= 12.0 && 512.0 * s[9] * 0.709 < 12.0);
        assert!(MtcnnParams { min_face_size: 8.0, ..Default::default() }.validate().is_err());
        assert!(MtcnnParams { factor: 1.0, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_per_photo() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0, 0.9],
            [1.0, 1.0, 11.0, 11.0, 0.95], // IoU 81/119 = 0.68 with the first
            [0.0, 0.0, 10.0, 10.0, 0.8],  // same box, another photo: kept
            [20.0, 20.0, 30.0, 30.0, 0.5],
        ];
        let photo = [0, 0, 1, 0];
        assert_eq!(nms_boxes(&boxes, &photo, 0.5, Overlap::Union), vec![1, 2, 3]);
        assert_eq!(nms_boxes(&boxes, &photo, 0.7, Overlap::Union), vec![1, 0, 2, 3]);
        // A small box inside a big one: IoU is small, overlap by the smaller area is 1.
        let nested = [[0.0, 0.0, 40.0, 40.0, 0.9], [10.0, 10.0, 20.0, 20.0, 0.8]];
        assert_eq!(nms_boxes(&nested, &[0, 0], 0.7, Overlap::Union), vec![0, 1]);
        assert_eq!(nms_boxes(&nested, &[0, 0], 0.7, Overlap::Min), vec![0]);
    }

    #[test]
    fn nets_have_facenet_pytorch_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = MtcnnNet::Pnet.build(&(vs.root() / "p")).forward(&Tensor::zeros([2, 3, 30, 40], (Kind::Float, Device::Cpu)));
        // conv3 → pool(ceil) → conv3 → conv3: (30 − 2) / 2 − 4 = 10, (40 − 2) / 2 − 4 = 15.
        assert_eq!(p.size(), vec![2, 6, 10, 15]);
        let r = MtcnnNet::Rnet.build(&(vs.root() / "r")).forward(&Tensor::zeros([3, 3, 24, 24], (Kind::Float, Device::Cpu)));
        assert_eq!(r.size(), vec![3, 6]);
        let o = MtcnnNet::Onet.build(&(vs.root() / "o")).forward(&Tensor::zeros([1, 3, 48, 48], (Kind::Float, Device::Cpu)));
        assert_eq!(o.size(), vec![1, 16]);
        // Probabilities sum to one.
        let s = o.narrow(1, 14, 2).sum(Kind::Float).double_value(&[]);
        assert!((s - 1.0).abs() < 1e-6);
    }
}
