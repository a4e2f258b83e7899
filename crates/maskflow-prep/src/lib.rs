//! The prep stage: every accepted row of the index → a `size`×`size` RGB uint8 image in Parquet
//! shards, ready to stream into tensors.
//!
//! Per image (rayon, in bounded chunks): read, check the bytes still hash to the index's content
//! hash, decode, apply EXIF orientation, convert to RGB (alpha composited on `background`, gray and
//! palette expanded, 16-bit reduced), resize (`squish` | `crop` | `pad`) with a SIMD convolution.
//!
//! Shards: `<split>-<nnnnn>.parquet` (split = train / valid), at most `shard_rows` rows each, row
//! groups of `row_group_rows`. Columns: `content_hash` utf8, `label_idx` int32, `label` utf8, `split`
//! utf8, `height` / `width` / `channels` uint32, `pixels` fixed_size_binary(height·width·channels) in
//! HWC order (row-major, RGB interleaved, as PIL's `tobytes()` and numpy's `(H, W, 3)`), `path` utf8.
//! Rows keep the index's order (sorted by path bytes), so the same inputs and params give
//! byte-identical shards whatever the thread count.

pub mod shard;

pub use shard::{read_shard, ShardRow};

use anyhow::Context;
use maskflow_core::dataset::path_from_bytes;
use maskflow_core::hash::blake3_hex;
use maskflow_imaging::{decode, decode_reduced, to_rgb8, Filter, Limits, Rejection, ResizeMode, Resizer};
use maskflow_index::IndexRow;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const STAGE: &str = "prep";
pub const VERSION: u32 = 1;
pub const SHARDS_FILE: &str = "shards.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardCompression {
    None,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepParams {
    /// Output side in pixels. fastai: `from_folder(..., size=224)`.
    pub size: u32,
    /// `crop` (shorter side to `size`, centre crop: fastai's default for an int size), `squish`
    /// (fastai `ResizeMethod.SQUISH`), or `pad` (longer side to `size`, padded with `background`).
    pub resize: ResizeMode,
    /// Resampling filter; `bilinear` is Pillow's antialiased bilinear, what fastai gets from PIL.
    pub filter: Filter,
    /// Colour that transparent pixels are composited onto, and the `pad` fill. PIL's
    /// `convert("RGB")` drops alpha instead, which shows whatever colour hides under it.
    pub background: [u8; 3],
    /// Rows per shard file.
    pub shard_rows: usize,
    /// Rows per Parquet row group (the streaming unit); 64 = fastai's batch size.
    pub row_group_rows: usize,
    /// Compression of the shards (measured: see docs/BENCHMARKS.md).
    pub compression: ShardCompression,
    /// Decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when the output still covers `size`,
    /// as PIL's draft mode does. Off by default: measured on the face-mask data, the scaled decoder
    /// (jpeg-decoder) is slower than the full decode (zune-jpeg) it replaces (docs/BENCHMARKS.md).
    pub jpeg_draft: bool,
}

impl Default for PrepParams {
    fn default() -> Self {
        Self {
            size: 224,
            resize: ResizeMode::Crop,
            filter: Filter::Bilinear,
            background: [255, 255, 255],
            shard_rows: 1024,
            row_group_rows: 64,
            compression: ShardCompression::Snappy,
            jpeg_draft: false,
        }
    }
}

impl PrepParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((8..=2048).contains(&self.size), "prep.size must be 8..=2048, got {}", self.size);
        anyhow::ensure!(self.shard_rows >= 1, "prep.shard_rows must be at least 1");
        anyhow::ensure!(
            (1..=self.shard_rows).contains(&self.row_group_rows),
            "prep.row_group_rows must be 1..=shard_rows, got {}",
            self.row_group_rows
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrepReport {
    pub images: usize,
    pub per_split: BTreeMap<String, usize>,
    pub shards: Vec<shard::ShardInfo>,
    pub bytes_written: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    pub threads: usize,
}

/// Decode + orient + RGB + resize, exactly as training saw it (the index stage has already refused
/// oversized files, so no size limit here).
pub fn prepare_pixels(bytes: &[u8], params: &PrepParams, resizer: &mut Resizer) -> Result<image::RgbImage, Rejection> {
    prepare_pixels_limited(bytes, params, resizer, &Limits { max_pixels: u64::MAX, max_side: u32::MAX })
}

/// As [`prepare_pixels`], refusing images whose header declares more than `limits` (for `predict`,
/// whose inputs were never indexed).
pub fn prepare_pixels_limited(
    bytes: &[u8],
    params: &PrepParams,
    resizer: &mut Resizer,
    limits: &Limits,
) -> Result<image::RgbImage, Rejection> {
    let limits = *limits;
    let d = if params.jpeg_draft {
        decode_reduced(bytes, &limits, |w, h| params.resize.needed_source(params.size, w, h))?
    } else {
        decode(bytes, &limits)?
    };
    let rgb = to_rgb8(d.image, params.background);
    resizer
        .square(&rgb, params.size, params.resize, params.filter, params.background)
        .map_err(|e| Rejection::Corrupt { format: d.format.name(), detail: e.to_string() })
}

fn prepare_row(root: &Path, row: &IndexRow, params: &PrepParams, resizer: &mut Resizer) -> anyhow::Result<ShardRow> {
    let path = root.join(path_from_bytes(&row.path_raw));
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let hash = blake3_hex(&bytes);
    anyhow::ensure!(
        hash == row.content_hash,
        "{}: file changed since it was indexed (blake3 {hash}, index says {}); rerun the pipeline",
        path.display(),
        row.content_hash
    );
    let img = prepare_pixels(&bytes, params, resizer).with_context(|| format!("{}", path.display()))?;
    Ok(ShardRow {
        content_hash: row.content_hash.clone(),
        label_idx: row.label_idx,
        label: row.label.clone(),
        split: row.split.clone().unwrap_or_default(),
        height: params.size,
        width: params.size,
        channels: 3,
        pixels: img.into_raw(),
        path: row.path.clone(),
    })
}

/// Runs the stage over the accepted rows of `index_rows` (files under `root`), writing shards into
/// `out_dir`. `progress` is told about each image done.
pub fn run(
    root: &Path,
    index_rows: &[IndexRow],
    params: &PrepParams,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<PrepReport> {
    params.validate()?;
    let started = std::time::Instant::now();
    let mut report = PrepReport { threads: rayon::current_num_threads(), ..Default::default() };
    for split in ["train", "valid"] {
        let rows: Vec<&IndexRow> =
            index_rows.iter().filter(|r| r.status == "ok" && r.split.as_deref() == Some(split)).collect();
        let infos = prepare_split(root, &rows, split, params, out_dir, progress)?;
        report.per_split.insert(split.to_string(), rows.len());
        report.images += rows.len();
        report.shards.extend(infos);
    }
    report.bytes_written = report.shards.iter().map(|s| s.bytes).sum();
    maskflow_core::fsutil::write_json_atomic(&out_dir.join(SHARDS_FILE), &report.shards)?;
    report.seconds = started.elapsed().as_secs_f64();
    report.images_per_second = report.images as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Prepares one split's rows in bounded chunks on the rayon pool while a writer thread encodes the
/// previous chunk into shards, so neither waits for the other. Memory: at most the chunk being
/// prepared plus two queued chunks.
fn prepare_split(
    root: &Path,
    rows: &[&IndexRow],
    split: &str,
    params: &PrepParams,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<shard::ShardInfo>> {
    let chunk = (params.row_group_rows * 4).max(64);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ShardRow>>(2);
        let writer = scope.spawn(move || -> anyhow::Result<Vec<shard::ShardInfo>> {
            let mut w = shard::ShardSetWriter::new(out_dir, split, params);
            for part in rx {
                for row in part {
                    w.push(row)?;
                }
            }
            w.finish()
        });
        let mut failure = None;
        for part in rows.chunks(chunk) {
            let prepared: anyhow::Result<Vec<ShardRow>> = part
                .par_iter()
                .map_init(Resizer::default, |resizer, row| {
                    let p = prepare_row(root, row, params, resizer);
                    progress(1);
                    p
                })
                .collect();
            match prepared {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break; // the writer failed; its error is returned below
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer.join().map_err(|_| anyhow::anyhow!("shard writer thread panicked"))?;
        match failure {
            Some(e) => Err(e),
            None => written,
        }
    })
}

#[cfg(test)]
mod tests;
