//! The `image_folder` artifact the `faces` stage writes: a labelled folder of face crops,
//! `images/<class>/<source path>.face<N>.png`, that the index and prep stages read in place of the
//! pipeline's dataset (their optional `images` slot), and `faces.json`, where each crop came from.

use serde::{Deserialize, Serialize};

/// The labelled folder inside the artifact.
pub const IMAGES_DIR: &str = "images";

/// The optional input slot of the index and prep stages that takes an `image_folder`.
pub const IMAGES_SLOT: &str = "images";

/// One crop: the photo (relative to the dataset), the face's place in it, and the file written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceCrop {
    /// `images/`-relative path of the crop (`<class>/…/<file>.face<N>.png`).
    pub file: String,
    /// Dataset-relative path of the photo.
    pub source: String,
    /// The detector's box `[x1, y1, x2, y2]` and score, and the region cut (margin included).
    pub bbox: [f32; 4],
    pub score: f32,
    pub region: [u32; 4],
}

/// A photo that gave no crop, and why (`no_face`, or the reader's rejection code and message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoCrop {
    pub source: String,
    pub code: String,
    pub detail: String,
}

/// `faces.json`: every crop and every photo without one, so nothing is dropped silently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FacesManifest {
    pub schema: u32,
    pub crops: Vec<FaceCrop>,
    pub without: Vec<NoCrop>,
}

crate::json_file!(FacesManifest, "faces.json", "faces manifest", 1);
