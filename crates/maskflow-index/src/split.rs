//! The index stage as plan → tasks → commit (`maskflow_stage::fanout`): each task examines a
//! chunk of the sorted file list (read, hash, decode, dHash: the stage's whole cost); the commit
//! walks the folder once more (stat only), checks it is the planned one, and does the rest exactly
//! as [`crate::run`] does (groups, split, overrides, outputs).
//!
//! Chunks are content-defined: a chunk ends after a file whose path hashes to 0 modulo the target
//! size (or at 4 × the target), so adding or removing a file moves the boundaries of its own chunk
//! only, not of every chunk after it.

use crate::{examine, finish, Examined, IndexParams, IndexStage, IndexSummary};
use anyhow::{bail, Context, Result};
use maskflow_core::dataset::{self, path_from_bytes};
use maskflow_imaging::Resizer;
use maskflow_stage::{Split, SplitHint};
use maskflow_stage::{DATASET, OVERRIDES};
use maskflow_stage::RunCtx;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Files per task unless told otherwise.
pub const DEFAULT_CHUNK_FILES: usize = 2000;

/// One task: a run of consecutive files of the sorted listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The position of its first file in the listing.
    pub first: usize,
    pub files: Vec<ChunkFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkFile {
    /// The path under the root, exact bytes.
    pub rel: RelPath,
    pub size: u64,
    /// Its blake3 when planned (the dataset fingerprint's): a task that reads other bytes (another
    /// folder mounted at the path, a file changed since) fails instead of indexing them.
    pub blake3: Option<String>,
}

/// A relative path: UTF-8 as a string, any other bytes as a list of bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RelPath {
    Utf8(String),
    Bytes(Vec<u8>),
}

impl RelPath {
    fn from_bytes(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => RelPath::Utf8(s.to_string()),
            Err(_) => RelPath::Bytes(b.to_vec()),
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            RelPath::Utf8(s) => s.as_bytes(),
            RelPath::Bytes(b) => b,
        }
    }
}

/// What a task found: one record per file of its chunk, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkDone {
    pub examined: Vec<Examined>,
}

/// Content-defined chunks of `paths` (sorted) of about `target` files each.
pub fn chunk_bounds(paths: &[&[u8]], target: usize) -> Vec<Range<usize>> {
    let target = target.max(1) as u64;
    let mut out = Vec::new();
    let mut start = 0;
    for (i, p) in paths.iter().enumerate() {
        let h = blake3::hash(p);
        let mut first8 = [0u8; 8];
        first8.copy_from_slice(&h.as_bytes()[..8]);
        let cut = u64::from_le_bytes(first8) % target == 0 || (i + 1 - start) as u64 >= 4 * target;
        if cut {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < paths.len() {
        out.push(start..paths.len());
    }
    out
}

fn listing_of(ctx: &RunCtx) -> Result<dataset::Listing> {
    let ds = ctx.external(DATASET)?;
    Ok(dataset::walk(&ds.path)?)
}

impl Split for IndexStage {
    type Task = Chunk;
    type Done = ChunkDone;

    fn plan(p: &IndexParams, ctx: &RunCtx, hint: &SplitHint) -> Result<Vec<Chunk>> {
        p.validate()?;
        anyhow::ensure!(
            !ctx.inputs.contains_key(maskflow_contracts::faces::IMAGES_SLOT),
            "an index of a stage-made folder (`images` = a faces stage) is not fanned out: run it without --executor"
        );
        let listing = listing_of(ctx)?;
        let paths: Vec<&[u8]> = listing.files.iter().map(|f| f.rel_bytes()).collect();
        let bounds = chunk_bounds(&paths, hint.items_per_task.unwrap_or(DEFAULT_CHUNK_FILES));
        let known = ctx.external(DATASET)?.files.as_ref();
        let file = |f: &dataset::DatasetFile| ChunkFile {
            rel: RelPath::from_bytes(f.rel_bytes()),
            size: f.size,
            blake3: known.and_then(|k| k.get(&f.display()).cloned()),
        };
        Ok(bounds.into_iter().map(|r| Chunk { first: r.start, files: listing.files[r].iter().map(file).collect() }).collect())
    }

    fn task(p: &IndexParams, ctx: &RunCtx, chunk: &Chunk) -> Result<ChunkDone> {
        let root = &ctx.external(DATASET)?.path;
        let limits = p.limits();
        let examined: Vec<Examined> = chunk
            .files
            .par_iter()
            .map_init(Resizer::default, |resizer, f| examine(root, &path_from_bytes(f.rel.bytes()), f.size, &limits, resizer))
            .collect();
        for (f, e) in chunk.files.iter().zip(&examined) {
            if let Some(planned) = f.blake3.as_ref().filter(|h| **h != e.content_hash) {
                let path = root.join(path_from_bytes(f.rel.bytes()));
                let why = match &e.outcome {
                    Err(r) if r.code == "unreadable" => format!("cannot be read here ({})", r.detail),
                    _ => format!("has other bytes here (blake3 {}, planned {planned})", e.content_hash),
                };
                bail!("{}: {why}: is the dataset folder at the same path on this machine (else --dataset-root), and unchanged since the plan?", path.display());
            }
        }
        Ok(ChunkDone { examined })
    }

    fn commit(p: &IndexParams, ctx: &RunCtx, chunks: Vec<Chunk>, done: Vec<ChunkDone>, _files: &[maskflow_core::store::FileEntry]) -> Result<IndexSummary> {
        let ds = ctx.external(DATASET)?;
        let listing = listing_of(ctx)?;
        let planned: Vec<(&[u8], u64)> = chunks.iter().flat_map(|c| c.files.iter().map(|f| (f.rel.bytes(), f.size))).collect();
        let now: Vec<(&[u8], u64)> = listing.files.iter().map(|f| (f.rel_bytes(), f.size)).collect();
        if planned != now {
            let first = planned.iter().zip(&now).position(|(a, b)| a != b).unwrap_or(planned.len().min(now.len()));
            let at = now.get(first).or(planned.get(first)).map(|(p, _)| dataset::display_bytes(p)).unwrap_or_default();
            bail!(
                "{}: the folder changed since the plan ({} files planned, {} now; first difference at {at:?}): plan again",
                ds.path.display(),
                planned.len(),
                now.len()
            );
        }
        let mut examined = Vec::with_capacity(now.len());
        for (c, d) in chunks.iter().zip(done) {
            if d.examined.len() != c.files.len() || examined.len() != c.first {
                bail!("the result of the chunk at file {} does not match its plan", c.first);
            }
            examined.extend(d.examined);
        }
        let overrides = match ctx.externals.get(OVERRIDES) {
            Some(o) => {
                let bytes = std::fs::read(&o.path).with_context(|| format!("reading the label-overrides file {}", o.path.display()))?;
                if maskflow_core::hash::blake3_hex(&bytes) != o.key {
                    bail!("{}: the label-overrides file changed since the plan: plan again", o.path.display());
                }
                Some(o.path.as_path())
            }
            None => None,
        };
        finish(&listing, &examined, &ds.key, p, overrides, ctx.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, salt: &str) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("class{}/img-{salt}{i:05}.jpg", i % 3)).collect();
        v.sort();
        v
    }

    #[test]
    fn chunks_cover_every_file_once_in_order() {
        let paths = names(1000, "");
        let refs: Vec<&[u8]> = paths.iter().map(|s| s.as_bytes()).collect();
        let b = chunk_bounds(&refs, 50);
        assert_eq!(b.first().map(|r| r.start), Some(0));
        assert_eq!(b.last().map(|r| r.end), Some(1000));
        assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        assert!(b.iter().all(|r| !r.is_empty() && r.len() <= 200));
        // About 1000 / 50 chunks (a geometric draw: generous bounds).
        assert!((8..=45).contains(&b.len()), "{} chunks", b.len());
        assert!(chunk_bounds(&[], 50).is_empty());
    }

    /// Adding files changes only the chunks they land in (and a neighbour where a forced cut
    /// moves): the other chunks, and so their tasks' results, stay as they were.
    #[test]
    fn adding_files_moves_few_boundaries() {
        let before = names(2000, "");
        let mut after = before.clone();
        let added = names(10, "new-");
        after.extend(added.iter().cloned());
        after.sort();
        let chunks = |v: &[String]| -> Vec<Vec<String>> {
            let refs: Vec<&[u8]> = v.iter().map(|s| s.as_bytes()).collect();
            chunk_bounds(&refs, 100).into_iter().map(|r| v[r].to_vec()).collect()
        };
        let (a, b) = (chunks(&before), chunks(&after));
        let kept = b.iter().filter(|c| a.contains(c)).count();
        assert!(b.len() - kept <= 2 * added.len(), "{} of {} chunks changed for {} added files", b.len() - kept, b.len(), added.len());
        assert!(kept * 10 >= a.len() * 5, "only {kept} of {} chunks kept", a.len());
    }
}
