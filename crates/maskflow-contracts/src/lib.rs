//! maskflow-contracts: what flows between stages. Each artifact kind has one module here with its
//! file names, its typed files (a schema version in each JSON file), one reader and one writer, and
//! fixture builders for tests — so a stage crate reads its inputs only through these types, and the
//! person who owns `eval` tests it with a fixture instead of training a model first.
//!
//! | kind ([`kinds`]) | written by | files |
//! |---|---|---|
//! | `index_table` | index | `index.parquet`, `classes.json`, `dataset.json`, `summary.json`, `duplicates.json` |
//! | `shard_set` | prep | `shards.json`, `<split>-NNNNN.parquet`, `shard_set.json` |
//! | `trained_model` | train | `model.safetensors`, `train_config.json`, `metrics.jsonl`, `curves.png`, `show_batch.png` |
//! | `eval_result` | eval | `metrics.json`, `predictions.parquet`, `report.html`, … |
//! | `bundle` | export | `model.pt`, `model.safetensors`, `model_card.json`, `README.md` |
//! | `image_folder` | faces | `images/<class>/…`, `faces.json` |
//! | `detector` | dettrain | `detector.safetensors`, `detector.json`, `metrics.jsonl`, `curves.png` |
//! | `detection_result` | deteval | `detection.json`, `detections.json`, `pr_curve.png`, `report.html`, `worst/` |
//!
//! No torch, no images decoded here; the Parquet codecs sit behind the default `tables` feature.

pub mod bundle;
pub mod detection;
pub mod detector;
pub mod eval;
pub mod faces;
#[cfg(feature = "tables")]
pub mod fixtures;
pub mod index;
pub mod model;
pub mod shards;
#[cfg(feature = "tables")]
mod shard;
#[cfg(feature = "tables")]
mod table;


pub use maskflow_imaging::{Filter, Preprocess, ResizeMode};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The artifact kinds, as input slots name them.
pub mod kinds {
    pub const INDEX_TABLE: &str = "index_table";
    pub const SHARD_SET: &str = "shard_set";
    pub const TRAINED_MODEL: &str = "trained_model";
    pub const EVAL_RESULT: &str = "eval_result";
    pub const BUNDLE: &str = "bundle";
    pub const LABEL_REVIEW: &str = "label_review";
    /// A labelled folder made by a stage (`images/<class>/…`, see [`crate::faces`]).
    pub const IMAGE_FOLDER: &str = "image_folder";
    /// A detector scored on annotated photos (see [`crate::detection`]).
    pub const DETECTION_RESULT: &str = "detection_result";
    /// A fine-tuned face detector (see [`crate::detector`]).
    pub const DETECTOR: &str = "detector";
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid {what}: {source}")]
    Parse { path: PathBuf, what: &'static str, source: serde_json::Error },
    #[error("{path}: {what} schema version {found}, this maskflow reads {expected} (rebuild the artifact)")]
    Schema { path: PathBuf, what: &'static str, found: u32, expected: u32 },
}

/// A JSON file of a contract: its name, what it is, and its schema version.
pub trait JsonFile: Serialize + DeserializeOwned {
    const FILE: &'static str;
    const WHAT: &'static str;
    const SCHEMA: u32;
    fn schema(&self) -> u32;

    /// Reads `<dir>/FILE`, refusing another schema version.
    fn read(dir: &Path) -> Result<Self, ContractError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(|source| ContractError::Read { path: path.clone(), source })?;
        let v: Self = serde_json::from_slice(&bytes).map_err(|source| {
            // A file of another schema may not parse at all: say which version it claims.
            let found = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("schema").and_then(serde_json::Value::as_u64));
            match found {
                Some(f) if f as u32 != Self::SCHEMA => {
                    return ContractError::Schema { path: path.clone(), what: Self::WHAT, found: f as u32, expected: Self::SCHEMA }
                }
                _ => ContractError::Parse { path: path.clone(), what: Self::WHAT, source },
            }
        })?;
        if v.schema() != Self::SCHEMA {
            return Err(ContractError::Schema { path, what: Self::WHAT, found: v.schema(), expected: Self::SCHEMA });
        }
        Ok(v)
    }

    /// Writes `<dir>/FILE` atomically.
    fn write(&self, dir: &Path) -> Result<(), ContractError> {
        let path = dir.join(Self::FILE);
        maskflow_core::fsutil::write_json_atomic(&path, self).map_err(|source| ContractError::Write { path, source })
    }
}

/// `impl JsonFile for T` with its file name, description and schema version (`T` has a `schema` field).
macro_rules! json_file {
    ($t:ty, $file:literal, $what:literal, $schema:literal) => {
        impl $crate::JsonFile for $t {
            const FILE: &'static str = $file;
            const WHAT: &'static str = $what;
            const SCHEMA: u32 = $schema;
            fn schema(&self) -> u32 {
                self.schema
            }
        }
    };
}
pub(crate) use json_file;

/// Reads a plain JSON file (no schema field) with the contract's error type.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ContractError> {
    let bytes = std::fs::read(path).map_err(|source| ContractError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ContractError::Parse { path: path.to_path_buf(), what, source })
}

pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), ContractError> {
    maskflow_core::fsutil::write_json_atomic(path, value)
        .map_err(|source| ContractError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    /// A metric written and read back is the same f64. serde_json's default float parser may land
    /// one ULP off (0.48055555555555557 read back as 0.4805555555555556, seen in CI); the workspace
    /// enables `float_roundtrip`.
    #[test]
    fn f64_written_reads_back_bit_identical() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("values.json");
        let mut values = vec![0.48055555555555557_f64, 0.1 + 0.2, 1.0 / 3.0, f64::MIN_POSITIVE, 1e308, 2.0_f64.sqrt()];
        // A spread of values across magnitudes, deterministic.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x >> 2); // positive, finite
            if v.is_finite() {
                values.push(v);
            }
            values.push((x % 1_000_000) as f64 / 720.0);
        }
        super::write_json(&path, &values).unwrap();
        let back: Vec<f64> = super::read_json(&path, "values").unwrap();
        assert_eq!(back.len(), values.len());
        for (a, b) in values.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a:?} read back as {b:?}");
        }
    }
}
