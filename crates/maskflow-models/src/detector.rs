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
