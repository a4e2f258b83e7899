//! Run records: which keys, artifacts and timings made a pipeline's outputs.
//! Written to `<artifacts>/runs/<pipeline>/<timestamp>.json` and `latest.json`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRun {
    /// The instance's name in the pipeline (`train`, `eval.street`).
    pub stage: String,
    /// Its stage kind (`train`). Empty in records written before kinds were recorded (read as
    /// such: gc then keeps every manifest, since it cannot tell which ones such a record names).
    #[serde(default)]
    pub kind: String,
    pub key: String,
    pub dir: PathBuf,
    pub cached: bool,
    /// Downloaded from the shared store rather than built here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pulled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilt_because: Option<String>,
    pub duration_s: f64,
    /// What its key covers, recorded since `maskflow runs` / `diff` compare runs (`None` in
    /// records written before: then the manifest of `kind`/`key`, if still in the store, says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Input slot or outside input → its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<std::collections::BTreeMap<String, String>>,
}

/// The commit of the checkout a run was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitState {
    pub commit: String,
    /// Tracked files had uncommitted changes.
    pub dirty: bool,
}

/// A sweep as run (`maskflow run --sweep NAME`): its points in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub name: String,
    pub points: Vec<SweepPoint>,
}

/// One point of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// `lr-1`, `lr-2`, …: the suffix of its instances.
    pub label: String,
    /// Swept path → the point's value (TOML text), in the sweep table's order.
    pub values: Vec<(String, String)>,
    /// The pipeline's instance → this point's clone of it (`train` → `train.lr-1`).
    pub instances: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub pipeline: String,
    pub pipeline_file: PathBuf,
    pub tool_version: String,
    pub started_unix: u64,
    pub duration_s: f64,
    /// The dataset fingerprint the index stage was keyed on.
    pub dataset_fingerprint: String,
    pub stages: Vec<StageRun>,
    /// The checkout's commit; `None` when not recorded (older records, or no git checkout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitState>,
    /// `-S` overrides as given (`train.frozen_lr=1e-3`); `None` in records written before they
    /// were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
}

/// Run records: format 1 adds the `format` field to what format 0 (no field) held; both read.
pub const RUN_FORMAT: crate::record::Format = crate::record::Format::new("run record", 1).reading_back_to(0);

/// A record as written: its `format` first, then its own fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    format: u32,
    #[serde(flatten)]
    record: &'a T,
}

impl RunRecord {
    /// The record's bytes as stored (with its format).
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and paths always encodes.
        serde_json::to_vec_pretty(&Versioned { format: RUN_FORMAT.current(), record: self }).unwrap_or_default()
    }

    /// Decodes a stored record (corrupt, compatible or newer: [`crate::record`]).
    pub fn decode(bytes: &[u8]) -> Result<RunRecord, crate::record::RecordError> {
        RUN_FORMAT.decode(bytes)
    }

    /// Writes `<timestamp>.json` and then `latest.json`, each atomically. Returns the first path.
    pub fn write(&self, artifacts: &Path) -> std::io::Result<PathBuf> {
        let dir = artifacts.join("runs").join(&self.pipeline);
        let stamp = format_utc(self.started_unix);
        let mut path = dir.join(format!("{stamp}.json"));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{stamp}-{n}.json"));
            n += 1;
        }
        let bytes = self.to_bytes();
        crate::fsutil::write_atomic(&path, &bytes)?;
        crate::fsutil::write_atomic(&dir.join("latest.json"), &bytes)?;
        Ok(path)
    }

    pub fn read_latest(artifacts: &Path, pipeline: &str) -> Option<RunRecord> {
        let p = artifacts.join("runs").join(pipeline).join("latest.json");
        RunRecord::decode(&std::fs::read(p).ok()?).ok()
    }
}

/// `YYYYMMDDTHHMMSSZ` for a unix time (UTC), without a date-time dependency.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        assert_eq!(super::format_utc(0), "19700101T000000Z");
        assert_eq!(super::format_utc(1_796_000_000), "20261130T005320Z");
        assert_eq!(super::format_utc(951_782_400), "20000229T000000Z");
    }
}
