//! The prep stage: every accepted row of the index → a `size`×`size` RGB uint8 image in Parquet
//! shards, ready to stream into tensors.
//!
//! Per image (on the rayon pool's threads, a bounded window ahead of the shard writer): read, check the bytes still hash to the index's content
//! hash, decode, apply EXIF orientation, convert to RGB (alpha composited on `background`, gray and
//! palette expanded, 16-bit reduced), resize (`squish` | `crop` | `pad`) with a SIMD convolution.
//!
//! Shards: `<split>-<nnnnn>.parquet` (split = train / valid), at most `shard_rows` rows each, row
//! groups of `row_group_rows`. Columns: `content_hash` utf8, `label_idx` int32, `label` utf8, `split`
//! utf8, `height` / `width` / `channels` uint32, `pixels` fixed_size_binary(height·width·channels) in
//! HWC order (row-major, RGB interleaved, as PIL's `tobytes()` and numpy's `(H, W, 3)`), `path` utf8.
//! Rows keep the index's order (sorted by path bytes), so the same inputs and params give
//! byte-identical shards whatever the thread count.

pub use maskflow_contracts::shards::{read_shard, ShardCompression, ShardInfo, ShardRow, SHARDS_FILE};

use maskflow_contracts::faces::IMAGES_SLOT;
use anyhow::Context;
use maskflow_core::dataset::path_from_bytes;
use maskflow_core::hash::blake3_hex;
use maskflow_contracts::index::{read_index, IndexDataset, IndexRow, INDEX_FILE};
use maskflow_contracts::shards::{self, ShardLayout, ShardSetMeta, ShardSetWriter};
use maskflow_contracts::{kinds, JsonFile};
use maskflow_imaging::{Filter, Limits, Preprocess, Rejection, ResizeMode, Resizer};
use maskflow_stage::{RunCtx, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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
    /// as PIL's draft mode does. On by default: on the face-mask data it is 1.17× faster than
    /// decoding at full size, at 49.5 dB PSNR against it after the resize (docs/BENCHMARKS.md).
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
            compression: ShardCompression::None,
            jpeg_draft: true,
        }
    }
}

impl PrepParams {
    /// How a file becomes pixels (what a bundle records for `predict`).
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            size: self.size,
            resize: self.resize,
            filter: self.filter,
            background: self.background,
            jpeg_draft: self.jpeg_draft,
        }
    }

    pub fn layout(&self) -> ShardLayout {
        ShardLayout {
            size: self.size,
            shard_rows: self.shard_rows,
            row_group_rows: self.row_group_rows,
            compression: self.compression,
        }
    }

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

/// The prep stage kind.
pub struct PrepStage;

impl Stage for PrepStage {
    const KIND: &'static str = "prep";
    const VERSION: u32 = 2;
    const OUTPUT: &'static str = kinds::SHARD_SET;
    type Params = PrepParams;
    type Report = PrepReport;

    fn validate(p: &PrepParams) -> Result<(), String> {
        p.validate().map_err(|e| e.to_string())
    }
    /// `images`: the stage-made labelled folder the index was made from (the `faces` stage's
    /// crops), read in place of the dataset; bound when the pipeline declares such a stage.
    fn inputs(_: &PrepParams) -> Vec<Slot> {
        vec![Slot::new("index", kinds::INDEX_TABLE), Slot::new(IMAGES_SLOT, kinds::IMAGE_FOLDER).optional()]
    }
    fn run(p: &PrepParams, ctx: &RunCtx) -> anyhow::Result<PrepReport> {
        let index_dir = ctx.input("index")?;
        // The folder on this machine (the index may have been made on another one).
        let made = made_root(ctx);
        run_on_index(index_dir, made.as_deref().or(ctx.dataset_root), p, ctx.out, true)
    }
    fn summary(r: &PrepReport) -> String {
        format!(
            "{} images into {} shards ({:.1} MB), {:.0} images/s on {} threads",
            r.images,
            r.shards.len(),
            r.bytes_written as f64 / 1e6,
            r.images_per_second,
            r.threads
        )
    }
}

/// Prep on an `index_table` artifact: its rows, read from its dataset folder (or `root`), into a
/// `shard_set` in `out`.
pub fn run_on_index(index_dir: &Path, root: Option<&Path>, p: &PrepParams, out: &Path, progress: bool) -> anyhow::Result<PrepReport> {
    let dataset = IndexDataset::read(index_dir)?;
    let rows = read_index(&index_dir.join(INDEX_FILE)).with_context(|| format!("reading the index artifact {}", index_dir.display()))?;
    let root = root.unwrap_or(&dataset.root);
    let n = rows.iter().filter(|r| r.status == "ok").count();
    let pb = if progress { maskflow_core::progress::bar(n as u64, "prep", "images") } else { indicatif::ProgressBar::hidden() };
    let report = run(root, &rows, p, out, &|k| pb.inc(k));
    pb.finish_and_clear();
    let report = report?;
    write_meta(index_dir, p, out)?;
    Ok(report)
}

/// `shard_set.json`: how the pixels were made, the classes, the dataset's fingerprint.
fn write_meta(index_dir: &Path, p: &PrepParams, out: &Path) -> anyhow::Result<()> {
    let dataset = IndexDataset::read(index_dir)?;
    let classes = maskflow_contracts::index::read_classes(index_dir)?;
    ShardSetMeta { schema: ShardSetMeta::SCHEMA, preprocess: p.preprocess(), classes, dataset_fingerprint: dataset.fingerprint }
        .write(out)?;
    Ok(())
}

/// One prep task of a fanned-out run: shard `shard` of `split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardTask {
    pub split: String,
    pub shard: usize,
}

/// What a prep task made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardDone {
    pub shards: Vec<ShardInfo>,
    pub images: usize,
    pub seconds: f64,
    pub threads: usize,
}

/// The accepted rows of `split`, in index order (the order of the shards' rows).
fn split_rows<'a>(rows: &'a [IndexRow], split: &str) -> Vec<&'a IndexRow> {
    rows.iter().filter(|r| r.status == "ok" && r.split.as_deref() == Some(split)).collect()
}

/// The labelled folder inside a stage-made `images` input, when bound.
fn made_root(ctx: &RunCtx) -> Option<std::path::PathBuf> {
    ctx.optional_input(IMAGES_SLOT).map(|d| d.join(maskflow_contracts::faces::IMAGES_DIR))
}

fn index_rows(ctx: &RunCtx) -> anyhow::Result<Vec<IndexRow>> {
    let index_dir = ctx.input("index")?;
    read_index(&index_dir.join(INDEX_FILE)).with_context(|| format!("reading the index artifact {}", index_dir.display()))
}

/// Prep as plan → tasks → commit: one task per output shard (its rows are known from the index
/// alone), written by a shard writer started at that shard — byte for byte the shard of a
/// single-machine run.
impl maskflow_stage::Split for PrepStage {
    type Task = ShardTask;
    type Done = ShardDone;

    fn plan(p: &PrepParams, ctx: &RunCtx, _hint: &maskflow_stage::SplitHint) -> anyhow::Result<Vec<ShardTask>> {
        p.validate()?;
        let rows = index_rows(ctx)?;
        Ok(SPLITS
            .iter()
            .flat_map(|split| {
                let n = split_rows(&rows, split).len();
                (0..n.div_ceil(p.shard_rows)).map(move |shard| ShardTask { split: split.to_string(), shard })
            })
            .collect())
    }

    fn task(p: &PrepParams, ctx: &RunCtx, t: &ShardTask) -> anyhow::Result<ShardDone> {
        p.validate()?;
        let started = std::time::Instant::now();
        let index_dir = ctx.input("index")?;
        let dataset = IndexDataset::read(index_dir)?;
        let made = made_root(ctx);
        let root = made.as_deref().or(ctx.dataset_root).unwrap_or(&dataset.root);
        let rows = index_rows(ctx)?;
        let Some(s) = SPLITS.iter().position(|x| *x == t.split) else { anyhow::bail!("prep task: unknown split {:?}", t.split) };
        let mine = split_rows(&rows, &t.split);
        let start = t.shard * p.shard_rows;
        anyhow::ensure!(start < mine.len(), "prep task: shard {} of {} is past its {} rows", t.shard, t.split, mine.len());
        let jobs: Vec<(usize, &IndexRow)> = mine[start..(start + p.shard_rows).min(mine.len())].iter().map(|r| (s, *r)).collect();
        let mut first = [0usize; SPLITS.len()];
        first[s] = t.shard;
        let shards = prepare_rows(root, &jobs, p, ctx.out, &first, &|_| {})?;
        Ok(ShardDone { shards, images: jobs.len(), seconds: started.elapsed().as_secs_f64(), threads: rayon::current_num_threads() })
    }

    fn commit(
        p: &PrepParams,
        ctx: &RunCtx,
        tasks: Vec<ShardTask>,
        done: Vec<ShardDone>,
        _files: &[maskflow_core::store::FileEntry],
    ) -> anyhow::Result<PrepReport> {
        let mut report = PrepReport::default();
        let rows = index_rows(ctx)?;
        for split in SPLITS {
            let n = split_rows(&rows, split).len();
            report.per_split.insert(split.to_string(), n);
            report.images += n;
        }
        let made: usize = done.iter().map(|d| d.images).sum();
        anyhow::ensure!(made == report.images, "prep tasks made {made} images, the index has {} accepted", report.images);
        for (t, d) in tasks.iter().zip(&done) {
            anyhow::ensure!(d.shards.len() == 1, "prep task {} {} made {} shards, not one", t.split, t.shard, d.shards.len());
        }
        report.shards = done.iter().flat_map(|d| d.shards.iter().cloned()).collect();
        report.bytes_written = report.shards.iter().map(|s| s.bytes).sum();
        report.seconds = done.iter().map(|d| d.seconds).sum();
        report.images_per_second = report.images as f64 / report.seconds.max(1e-9);
        report.threads = done.iter().map(|d| d.threads).max().unwrap_or(0);
        shards::write_shard_list(ctx.out, &report.shards)?;
        write_meta(ctx.input("index")?, p, ctx.out)?;
        Ok(report)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrepReport {
    pub images: usize,
    pub per_split: BTreeMap<String, usize>,
    pub shards: Vec<ShardInfo>,
    pub bytes_written: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    pub threads: usize,
}

/// Decode + orient + RGB + resize, exactly as training saw it (the index stage has already refused
/// oversized files, so no size limit here).
pub fn prepare_pixels(bytes: &[u8], params: &PrepParams, resizer: &mut Resizer) -> Result<image::RgbImage, Rejection> {
    maskflow_imaging::prepare_pixels(bytes, &params.preprocess(), resizer, &Limits { max_pixels: u64::MAX, max_side: u32::MAX })
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
    let mut jobs: Vec<(usize, &IndexRow)> = Vec::new();
    for (i, split) in SPLITS.iter().enumerate() {
        let rows: Vec<&IndexRow> =
            index_rows.iter().filter(|r| r.status == "ok" && r.split.as_deref() == Some(*split)).collect();
        report.per_split.insert(split.to_string(), rows.len());
        report.images += rows.len();
        jobs.extend(rows.into_iter().map(|r| (i, r)));
    }
    report.shards = prepare_rows(root, &jobs, params, out_dir, &[0; SPLITS.len()], progress)?;
    report.bytes_written = report.shards.iter().map(|s| s.bytes).sum();
    shards::write_shard_list(out_dir, &report.shards)?;
    report.seconds = started.elapsed().as_secs_f64();
    report.images_per_second = report.images as f64 / report.seconds.max(1e-9);
    Ok(report)
}

use shards::SPLITS;

/// Prepares `jobs` (split number, row) into shards (of each split, numbered from `first_shard`) on the rayon pool's threads while a writer thread encodes
/// finished rows into each split's shards, in job order. Workers take the next job as soon as they
/// are free (no barrier at chunk or split boundaries, so a large image never leaves a core idle),
/// but never more than `window` jobs ahead of the writer: memory stays bounded by the window.
fn prepare_rows(
    root: &Path,
    jobs: &[(usize, &IndexRow)],
    params: &PrepParams,
    out_dir: &Path,
    first_shard: &[usize; SPLITS.len()],
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<ShardInfo>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    let window = (params.row_group_rows * 4).max(64);
    let next_job = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // How many jobs the writer has consumed, for back-pressure.
    let consumed = (Mutex::new(0usize), Condvar::new());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, anyhow::Result<ShardRow>)>();

    std::thread::scope(|scope| {
        let (stop_w, consumed_w) = (&stop, &consumed);
        let writer = scope.spawn(move || -> anyhow::Result<Vec<ShardInfo>> {
            let result = (|| {
                let layout = params.layout();
                let mut writers: Vec<_> =
                    SPLITS.iter().zip(first_shard).map(|(s, first)| ShardSetWriter::starting_at(out_dir, s, &layout, *first)).collect();
                let mut waiting: BTreeMap<usize, ShardRow> = BTreeMap::new();
                let mut next = 0usize;
                while next < jobs.len() {
                    let Ok((i, row)) = rx.recv() else {
                        anyhow::bail!("prep workers stopped early");
                    };
                    waiting.insert(i, row?);
                    while let Some(row) = waiting.remove(&next) {
                        writers[jobs[next].0].push(row)?;
                        next += 1;
                    }
                    *consumed_w.0.lock().unwrap_or_else(|e| e.into_inner()) = next;
                    consumed_w.1.notify_all();
                }
                let mut infos = Vec::new();
                for w in writers {
                    infos.extend(w.finish()?);
                }
                Ok(infos)
            })();
            if result.is_err() {
                stop_w.store(true, Ordering::SeqCst);
                consumed_w.1.notify_all();
            }
            result
        });
        rayon::scope(|s| {
            for _ in 0..rayon::current_num_threads() {
                let tx = tx.clone();
                let (next_job, stop, consumed) = (&next_job, &stop, &consumed);
                s.spawn(move |_| {
                    let mut resizer = Resizer::default();
                    loop {
                        let i = next_job.fetch_add(1, Ordering::SeqCst);
                        if i >= jobs.len() || stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let mut done = consumed.0.lock().unwrap_or_else(|e| e.into_inner());
                        while i >= *done + window && !stop.load(Ordering::SeqCst) {
                            done = consumed.1.wait(done).unwrap_or_else(|e| e.into_inner());
                        }
                        drop(done);
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let row = prepare_row(root, jobs[i].1, params, &mut resizer);
                        progress(1);
                        if row.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        if tx.send((i, row)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        drop(tx);
        writer.join().map_err(|_| anyhow::anyhow!("shard writer thread panicked"))?
    })
}

#[cfg(test)]
mod tests;
