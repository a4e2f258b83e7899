//! `index_table`: what the index stage found in a `root/<class>/…` folder.
//!
//! - `index.parquet`: one row per file, rejected ones too ([`IndexRow`]; Parquet codec with `tables`).
//! - `classes.json`: the class names in label order (a JSON array of strings).
//! - `dataset.json`: [`IndexDataset`], where the folder was and its content fingerprint.
//! - `summary.json`: [`IndexSummary`], counts, rejections by reason, duplicate groups.
//! - `duplicates.json`: the duplicate groups, for people to read.

use crate::{read_json, write_json, ContractError};
use maskflow_core::dataset::WalkNote;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[cfg(feature = "tables")]
pub use crate::table::{read_index, write_index, IndexRow};

pub const INDEX_FILE: &str = "index.parquet";
pub const CLASSES_FILE: &str = "classes.json";
pub const DUPLICATES_FILE: &str = "duplicates.json";

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDataset {
    pub schema: u32,
    /// The folder the index was made from (where prep reads the files; not part of any key).
    pub root: PathBuf,
    /// Content fingerprint of the folder (file paths, sizes and blake3).
    pub fingerprint: String,
}

crate::json_file!(IndexDataset, "dataset.json", "index dataset record", 1);

/// `summary.json`: what the index stage reports (also its one-line summary).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSummary {
    pub schema: u32,
    /// The dataset root (informational: the key depends on the content, not on where it lives).
    pub root: String,
    pub files: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    pub classes: Vec<String>,
    pub per_class: BTreeMap<String, ClassCounts>,
    pub train: usize,
    pub valid: usize,
    pub exact_duplicate_groups: usize,
    pub exact_duplicate_files: usize,
    pub near_duplicate_groups: usize,
    pub near_duplicate_files: usize,
    /// Groups whose members landed on both sides: 0 by construction; reported as a check.
    pub groups_across_sides: usize,
    /// Groups (exact or near) whose members carry different labels: worth a look.
    pub groups_across_classes: usize,
    /// Files whose label a label-overrides file changed (counted under their new class).
    #[serde(default)]
    pub overridden: usize,
    /// Files a label-overrides file excluded (neither accepted nor rejected).
    #[serde(default)]
    pub excluded: usize,
    /// The label-overrides file applied (its path when indexed), if any.
    #[serde(default)]
    pub overrides_file: Option<String>,
    pub walk_notes: Vec<WalkNote>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    pub files: usize,
    pub accepted: usize,
    pub train: usize,
    pub valid: usize,
    pub valid_fraction: f64,
}

crate::json_file!(IndexSummary, "summary.json", "index summary", 1);

impl IndexSummary {
    /// One line for people.
    pub fn summary_line(&self) -> String {
        let reasons: Vec<String> = self.rejected_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let across_classes = match self.groups_across_classes {
            0 => String::new(),
            k => format!("; {k} group(s) span classes (see {DUPLICATES_FILE})"),
        };
        let overrides = match &self.overrides_file {
            Some(f) => format!("; overrides {f}: {} relabelled, {} excluded", self.overridden, self.excluded),
            None => String::new(),
        };
        format!(
            "{} files, {} ok, {} rejected{}; classes {}; train {} / valid {}; {} exact-duplicate groups, \
             {} near-duplicate groups, {} across sides{across_classes}{overrides}",
            self.files,
            self.accepted,
            self.rejected,
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
            self.classes.join(", "),
            self.train,
            self.valid,
            self.exact_duplicate_groups,
            self.near_duplicate_groups,
            self.groups_across_sides,
        )
    }
}

pub fn read_classes(dir: &Path) -> Result<Vec<String>, ContractError> {
    read_json(&dir.join(CLASSES_FILE), "class list")
}

pub fn write_classes(dir: &Path, classes: &[String]) -> Result<(), ContractError> {
    write_json(&dir.join(CLASSES_FILE), classes)
}
