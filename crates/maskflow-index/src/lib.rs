//! The index stage: `root/<class>/…` → `index.parquet` + `classes.json`.
//!
//! Per file, in parallel: blake3 of the bytes; the format sniffed from the content; a full,
//! validating decode (header checked against the size limits first); the dimensions after EXIF
//! orientation; a 64-bit dHash. Every file found gets a row — rejected ones too, with the reason.
//!
//! Split: a file is in validation iff `u(group key, seed) < valid_pct`, `u` uniform in [0, 1) and a
//! pure function of its arguments (see `maskflow_core::hash::unit_interval`). The group key is the
//! content hash, or for near-duplicates (dHash within `near_duplicate_distance`) the smallest content
//! hash in the group. So byte-identical copies and near copies always share a side, adding or
//! removing a file moves no other file (except members of a near-duplicate group it joins), and the
//! split is the same on every machine.

mod groups;
pub mod split;
pub mod overrides;

pub use maskflow_contracts::index::{
    read_index, ClassCounts, IndexDataset, IndexRow, IndexSummary, CLASSES_FILE, DUPLICATES_FILE, INDEX_FILE,
};

use maskflow_core::dataset::{self, Listing};
use maskflow_core::hash::{blake3_hex, unit_interval};
use maskflow_imaging::{decode, dhash, to_rgb8, Limits, Rejection, Resizer};
use rayon::prelude::*;
use maskflow_contracts::faces::IMAGES_SLOT;
use maskflow_contracts::{index, kinds, JsonFile};
use maskflow_stage::{RunCtx, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The index stage kind.
pub struct IndexStage;

impl Stage for IndexStage {
    const KIND: &'static str = "index";
    const VERSION: u32 = 4;
    const OUTPUT: &'static str = kinds::INDEX_TABLE;
    const READS_DATASET: bool = true;
    const READS_OVERRIDES: bool = true;
    type Params = IndexParams;
    type Report = IndexSummary;

    fn validate(p: &IndexParams) -> Result<(), String> {
        p.validate().map_err(|e| e.to_string())
    }
    /// `images`: a labelled folder made by a stage (the `faces` stage's crops), indexed instead of
    /// the pipeline's dataset; bound when the pipeline declares such a stage.
    fn inputs(_: &IndexParams) -> Vec<Slot> {
        vec![Slot::new(IMAGES_SLOT, kinds::IMAGE_FOLDER).optional()]
    }
    fn run(p: &IndexParams, ctx: &RunCtx) -> anyhow::Result<IndexSummary> {
        if let Some(made) = ctx.inputs.get(IMAGES_SLOT) {
            let listing = dataset::walk(&made.dir.join(maskflow_contracts::faces::IMAGES_DIR))?;
            let pb = maskflow_core::progress::bar(listing.files.len() as u64, "index", "files");
            let r = run_listing(&listing, &made.key, p, None, ctx.out, &|n| pb.inc(n));
            pb.finish_and_clear();
            return r;
        }
        let ds = ctx.external(maskflow_stage::DATASET)?;
        let files = ds.files.as_ref().map(|f| f.len()).unwrap_or(0);
        let pb = maskflow_core::progress::bar(files as u64, "index", "files");
        let overrides = ctx.externals.get(maskflow_stage::OVERRIDES).map(|e| e.path.as_path());
        let r = run(&ds.path, &ds.key, p, overrides, ctx.out, &|n| pb.inc(n));
        pb.finish_and_clear();
        r
    }
    fn summary(r: &IndexSummary) -> String {
        r.summary_line()
    }
}


#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexParams {
    /// Fraction of files (by content-hash group) held out for validation.
    /// fastai: `ImageDataBunch.from_folder(..., valid_pct=0.2)`.
    pub valid_pct: f64,
    /// Seed of the content-hash split (fastai seeds a permutation; maskflow seeds the hash draw).
    pub seed: u64,
    /// Largest width × height accepted; larger files are rejected from their header (bombs).
    pub max_pixels: u64,
    /// Largest single side accepted.
    pub max_side: u32,
    /// Group near-duplicates (same picture re-encoded or resized) so they share a side.
    pub near_duplicates: bool,
    /// Largest dHash Hamming distance (0–3) at which two files are near-duplicates.
    pub near_duplicate_distance: u32,
}

impl Default for IndexParams {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            valid_pct: 0.2,
            seed: 42,
            max_pixels: l.max_pixels,
            max_side: l.max_side,
            near_duplicates: true,
            near_duplicate_distance: 2,
        }
    }
}

impl IndexParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..1.0).contains(&self.valid_pct),
            "index.valid_pct must be in [0, 1), got {}",
            self.valid_pct
        );
        anyhow::ensure!(
            self.near_duplicate_distance <= 3,
            "index.near_duplicate_distance must be 0..=3, got {}",
            self.near_duplicate_distance
        );
        Ok(())
    }
}

/// One file examined (before splitting): what a task of the fanned-out index returns per file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Examined {
    pub content_hash: String,
    pub bytes: u64,
    pub outcome: Result<Header, Rejected>,
}

/// What the decoder found in an accepted file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub dhash: u64,
}

/// Why a file was rejected: the reason's code and its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub code: String,
    pub detail: String,
}

impl From<Rejection> for Rejected {
    fn from(r: Rejection) -> Self {
        Rejected { code: r.code().to_string(), detail: r.to_string() }
    }
}

/// Reads, hashes, decodes (within `limits`) and dHashes one file (`rel` under `root`, `size` as
/// listed, reported if it cannot be read).
pub fn examine(root: &Path, rel: &Path, size: u64, limits: &Limits, resizer: &mut Resizer) -> Examined {
    let bytes = match std::fs::read(root.join(rel)) {
        Ok(b) => b,
        Err(e) => {
            return Examined {
                content_hash: blake3_hex(format!("unreadable: {e}").as_bytes()),
                bytes: size,
                outcome: Err(Rejection::Unreadable(e.to_string()).into()),
            }
        }
    };
    let content_hash = blake3_hex(&bytes);
    let outcome = decode(&bytes, limits).and_then(|d| {
        let (width, height, format) = (d.width, d.height, d.format.name());
        let rgb = to_rgb8(d.image, [255, 255, 255]);
        let dh = dhash(&rgb, resizer).map_err(|e| Rejection::Corrupt { format, detail: e.to_string() })?;
        Ok(Header { format: format.to_string(), width, height, dhash: dh })
    });
    Examined { content_hash, bytes: bytes.len() as u64, outcome: outcome.map_err(Rejected::from) }
}

impl IndexParams {
    pub fn limits(&self) -> Limits {
        Limits { max_pixels: self.max_pixels, max_side: self.max_side }
    }
}

/// Runs the stage: walks `root`, examines every file, splits, applies the label-overrides file if
/// any, and writes the outputs into `out_dir`. `progress` is told about each file examined.
pub fn run(
    root: &Path,
    fingerprint: &str,
    params: &IndexParams,
    overrides: Option<&Path>,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<IndexSummary> {
    run_listing(&dataset::walk(root)?, fingerprint, params, overrides, out_dir, progress)
}

/// [`run`] on a folder already walked.
fn run_listing(
    listing: &Listing,
    fingerprint: &str,
    params: &IndexParams,
    overrides: Option<&Path>,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<IndexSummary> {
    params.validate()?;
    let limits = params.limits();
    let examined: Vec<Examined> = listing
        .files
        .par_iter()
        .map_init(Resizer::default, |resizer, f| {
            let e = examine(&listing.root, &f.rel, f.size, &limits, resizer);
            progress(1);
            e
        })
        .collect();
    finish(listing, &examined, fingerprint, params, overrides, out_dir)
}

/// The rest of the stage once every file is examined (`examined[i]` is `listing.files[i]`): rows,
/// groups, split, overrides, and the outputs. The same for one machine and for a fanned-out run.
pub fn finish(
    listing: &Listing,
    examined: &[Examined],
    fingerprint: &str,
    params: &IndexParams,
    overrides: Option<&Path>,
    out_dir: &Path,
) -> anyhow::Result<IndexSummary> {
    anyhow::ensure!(
        examined.len() == listing.files.len(),
        "internal: {} files examined for {} listed",
        examined.len(),
        listing.files.len()
    );
    let mut rows = assemble(listing, examined, params);
    let applied = match overrides {
        Some(file) => {
            let o = overrides::Overrides::read(file, &listing.classes)?;
            let (relabelled, excluded) = o.apply(&mut rows, &listing.classes)?;
            Some((file.display().to_string(), relabelled, excluded))
        }
        None => None,
    };
    let mut report = summarize(listing, &rows);
    if let Some((file, relabelled, excluded)) = applied {
        (report.overrides_file, report.overridden, report.excluded) = (Some(file), relabelled, excluded);
    }

    index::write_index(&out_dir.join(INDEX_FILE), &rows)?;
    index::write_classes(out_dir, &listing.classes)?;
    maskflow_core::fsutil::write_json_atomic(&out_dir.join(DUPLICATES_FILE), &groups::describe(&rows))?;
    IndexDataset { schema: IndexDataset::SCHEMA, root: listing.root.clone(), fingerprint: fingerprint.to_string() }
        .write(out_dir)?;
    report.write(out_dir)?;
    Ok(report)
}

/// Builds the rows: labels, groups and the split.
pub(crate) fn assemble(listing: &Listing, examined: &[Examined], params: &IndexParams) -> Vec<IndexRow> {
    let class_idx: BTreeMap<&str, i32> =
        listing.classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as i32)).collect();
    let dist = params.near_duplicates.then_some(params.near_duplicate_distance);
    let group_keys = groups::group_keys(examined, dist);
    listing
        .files
        .iter()
        .zip(examined)
        .zip(group_keys)
        .map(|((f, e), group_hash)| {
            let (status, split, header, reason, detail) = match &e.outcome {
                Ok(h) => {
                    let valid = unit_interval(params.seed, &group_hash) < params.valid_pct;
                    ("ok", Some(if valid { "valid" } else { "train" }), Some(h.clone()), None, None)
                }
                Err(r) => ("rejected", None, None, Some(r.code.clone()), Some(r.detail.clone())),
            };
            IndexRow {
                path: f.display(),
                path_raw: f.rel_bytes().to_vec(),
                label: f.label.clone(),
                label_idx: class_idx.get(f.label.as_str()).copied().unwrap_or(-1),
                content_hash: e.content_hash.clone(),
                group_hash,
                bytes: e.bytes,
                format: header.as_ref().map(|h| h.format.clone()),
                width: header.as_ref().map(|h| h.width),
                height: header.as_ref().map(|h| h.height),
                dhash: header.as_ref().map(|h| format!("{:016x}", h.dhash)),
                split: split.map(str::to_string),
                status: status.to_string(),
                reason,
                detail,
                given_label: None,
            }
        })
        .collect()
}

fn summarize(listing: &Listing, rows: &[IndexRow]) -> IndexSummary {
    let mut r = IndexSummary {
        schema: IndexSummary::SCHEMA,
        root: listing.root.display().to_string(),
        files: rows.len(),
        classes: listing.classes.clone(),
        ..Default::default()
    };
    for c in &listing.classes {
        r.per_class.insert(c.clone(), ClassCounts::default());
    }
    for row in rows {
        let pc = r.per_class.entry(row.label.clone()).or_default();
        pc.files += 1;
        match row.split.as_deref() {
            Some(s) => {
                r.accepted += 1;
                pc.accepted += 1;
                if s == "valid" {
                    r.valid += 1;
                    pc.valid += 1;
                } else {
                    r.train += 1;
                    pc.train += 1;
                }
            }
            None if row.status == "excluded" => {}
            None => {
                r.rejected += 1;
                *r.rejected_by_reason.entry(row.reason.clone().unwrap_or_default()).or_default() += 1;
            }
        }
    }
    for pc in r.per_class.values_mut() {
        pc.valid_fraction = if pc.accepted > 0 { pc.valid as f64 / pc.accepted as f64 } else { 0.0 };
    }
    let g = groups::describe(rows);
    r.exact_duplicate_groups = g.exact.len();
    r.exact_duplicate_files = g.exact.iter().map(|x| x.paths.len()).sum();
    r.near_duplicate_groups = g.near.len();
    r.near_duplicate_files = g.near.iter().map(|x| x.paths.len()).sum();
    r.groups_across_sides = g.exact.iter().chain(&g.near).filter(|x| x.splits.len() > 1).count();
    r.groups_across_classes = g.exact.iter().chain(&g.near).filter(|x| x.labels.len() > 1).count();
    r.walk_notes = listing.notes.clone();
    r
}

#[cfg(test)]
mod tests;
