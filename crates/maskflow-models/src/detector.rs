//! One face detector, whichever it is: MTCNN ([`crate::mtcnn`]) or the face-mask SSD
//! ([`crate::ssd`]), with what each finds in one shape.

use crate::mtcnn::Mtcnn;
use crate::ssd::FaceMaskSsd;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which detector (`detect --detector`, and the name a result records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// AIZOOTech's face-mask SSD-lite at 360 × 360 (trained on faces with and without masks).
    Ssd,
    /// The same SSD at 260 × 260 (faster, finds fewer small faces).
    Ssd260,
    /// MTCNN (facenet-pytorch's nets; trained on faces without masks; gives landmarks).
    Mtcnn,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 3] = [DetectorKind::Ssd, DetectorKind::Ssd260, DetectorKind::Mtcnn];

    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Ssd => "ssd",
            DetectorKind::Ssd260 => "ssd260",
            DetectorKind::Mtcnn => "mtcnn",
        }
    }

    /// The SSD's input size, for the SSD kinds.
    pub fn ssd_input(self) -> Option<crate::ssd::SsdInput> {
        match self {
            DetectorKind::Ssd => Some(crate::ssd::SsdInput::S360),
            DetectorKind::Ssd260 => Some(crate::ssd::SsdInput::S260),
            DetectorKind::Mtcnn => None,
        }
    }
}

impl std::str::FromStr for DetectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DetectorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown detector `{s}` (ssd, ssd260 or mtcnn)"))
    }
}

impl std::fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One face a detector found, in the photo's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundFace {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// The detector's confidence that this is a face.
    pub score: f32,
    /// MTCNN's five landmarks (eyes, nose, mouth corners); the SSD has none.
    pub landmarks: Option<[[f32; 2]; 5]>,
    /// The SSD's own scores `[with a mask, without]`; MTCNN has none.
    pub mask_scores: Option<[f32; 2]>,
}

/// A loaded detector.
#[derive(Debug)]
pub enum Detector {
    Mtcnn(Box<Mtcnn>),
    Ssd(Box<FaceMaskSsd>),
}

impl Detector {
    pub fn kind(&self) -> DetectorKind {
        match self {
            Detector::Mtcnn(_) => DetectorKind::Mtcnn,
            Detector::Ssd(s) => match s.input {
                crate::ssd::SsdInput::S360 => DetectorKind::Ssd,
                crate::ssd::SsdInput::S260 => DetectorKind::Ssd260,
            },
        }
    }

    /// A copy with its own tensors, for another worker thread.
    pub fn duplicate(&self) -> Detector {
        match self {
            Detector::Mtcnn(m) => Detector::Mtcnn(Box::new(m.duplicate())),
            Detector::Ssd(s) => Detector::Ssd(Box::new(s.duplicate())),
        }
    }

    /// The faces in each photo of a batch (`(N, H, W, 3)` uint8, one size): MTCNN's largest first,
    /// the SSD's highest score first.
    pub fn detect_batch(&self, photos: &Tensor) -> Result<Vec<Vec<FoundFace>>, String> {
        fn each<F>(batch: Vec<Vec<F>>, to: impl Fn(F) -> FoundFace) -> Vec<Vec<FoundFace>> {
            batch.into_iter().map(|faces| faces.into_iter().map(&to).collect()).collect()
        }
        Ok(match self {
            Detector::Mtcnn(m) => each(m.detect_batch(photos).map_err(|e| e.to_string())?, |f| FoundFace {
                bbox: f.bbox,
                score: f.score,
                landmarks: Some(f.landmarks),
                mask_scores: None,
            }),
            Detector::Ssd(s) => each(s.detect_batch(photos).map_err(|e| e.to_string())?, |f| FoundFace {
                bbox: f.bbox,
                score: f.score,
                landmarks: None,
                mask_scores: Some(f.mask_scores),
            }),
        })
    }
}

/// A detector and its knobs as a pipeline holds them (`[faces.detector]`): which one, MTCNN's
/// knobs and the SSD's, each with its published defaults (only the chosen detector's are used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorParams {
    /// `mtcnn`, `ssd` or `ssd260`.
    pub kind: DetectorKind,
    /// MTCNN: smallest face side searched for, in pixels.
    pub min_face_size: f64,
    /// MTCNN: score thresholds of the P-, R- and O-Net.
    pub thresholds: [f64; 3],
    /// MTCNN: scale step between pyramid levels.
    pub factor: f64,
    /// SSD: boxes whose larger class score is at most this are dropped.
    pub conf_threshold: f32,
    /// SSD: the NMS IoU threshold.
    pub iou_threshold: f32,
}

impl DetectorParams {
    /// The defaults with `kind` as the detector.
    pub fn of(kind: DetectorKind) -> DetectorParams {
        let m = crate::mtcnn::MtcnnParams::default();
        let s = crate::ssd::SsdParams::default();
        DetectorParams {
            kind,
            min_face_size: m.min_face_size,
            thresholds: m.thresholds,
            factor: m.factor,
            conf_threshold: s.conf_threshold,
            iou_threshold: s.iou_threshold,
        }
    }

    pub fn mtcnn(&self) -> crate::mtcnn::MtcnnParams {
        crate::mtcnn::MtcnnParams { min_face_size: self.min_face_size, thresholds: self.thresholds, factor: self.factor }
    }

    pub fn ssd(&self) -> crate::ssd::SsdParams {
        crate::ssd::SsdParams { conf_threshold: self.conf_threshold, iou_threshold: self.iou_threshold }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.mtcnn().validate()?;
        self.ssd().validate()
    }

    /// The registry names of the chosen detector's weights, in the order [`Detector::load`] takes
    /// their files.
    pub fn weights(&self) -> &'static [&'static str] {
        match self.kind {
            DetectorKind::Mtcnn => &["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"],
            DetectorKind::Ssd => &["ssd360"],
            DetectorKind::Ssd260 => &["ssd260"],
        }
    }
}

impl Detector {
    /// The detector `p` names, from its imported safetensors files (in [`DetectorParams::weights`]'s
    /// order).
    pub fn load(p: &DetectorParams, files: &[&std::path::Path], device: tch::Device) -> Result<Detector, String> {
        p.validate()?;
        let want = p.weights().len();
        if files.len() != want {
            return Err(format!("the {} detector takes {want} weight file(s), got {}", p.kind, files.len()));
        }
        Ok(match p.kind.ssd_input() {
            Some(input) => Detector::Ssd(Box::new(crate::ssd::FaceMaskSsd::load(files[0], input, p.ssd(), device).map_err(|e| e.to_string())?)),
            None => Detector::Mtcnn(Box::new(Mtcnn::load([files[0], files[1], files[2]], p.mtcnn(), device).map_err(|e| e.to_string())?)),
        })
    }

    /// A fine-tuned SSD (a `dettrain` artifact's, or a bundle's): its architecture `kind` as its
    /// card names it (`ssd`, `ssd260`), its weights file, and the thresholds of `p`.
    pub fn load_trained(kind: &str, weights: &std::path::Path, p: &DetectorParams, device: tch::Device) -> Result<Detector, String> {
        let kind: DetectorKind = kind.parse()?;
        if kind == DetectorKind::Mtcnn {
            return Err("a fine-tuned detector is an SSD (ssd or ssd260), not mtcnn".into());
        }
        Detector::load(&DetectorParams { kind, ..p.clone() }, &[weights], device)
    }
}

/// The faces stage's default detector — the SSD: on 150 + 150 pictures of the face-mask dataset it
/// finds a face in 148 with_mask and 150 without_mask pictures, MTCNN in 96 and 149
/// (`bench/faces_found.sh`) — and every knob at its published default.
impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams::of(DetectorKind::Ssd)
    }
}
