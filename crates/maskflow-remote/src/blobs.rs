//! Content-addressed blobs: upload (each distinct content once, skipping what the store has) and
//! download (streamed to disk, checked against its blake3 as it arrives).

use crate::{Remote, RemoteError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use maskflow_core::store::FileEntry;
use object_store::{ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

/// Files at or above this size go up as multipart uploads, in parts of this size.
const PART: usize = 16 << 20;
/// Blobs in flight at once.
const CONCURRENCY: usize = 8;

pub(crate) fn blob_rel(blake3: &str) -> String {
    format!("cas/{blake3}")
}

/// What a transfer moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transfer {
    /// Distinct blobs the artifact has.
    pub blobs: usize,
    /// Blobs sent or received.
    pub moved: usize,
    pub bytes_moved: u64,
    /// Bytes not sent because the store already had the blob.
    pub bytes_skipped: u64,
    pub seconds: f64,
}

impl Transfer {
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_moved as f64 / 1e6 / self.seconds
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} blobs, {:.1} MB in {:.2}s ({:.1} MB/s)",
            self.moved,
            self.blobs,
            self.bytes_moved as f64 / 1e6,
            self.seconds,
            self.mb_per_s()
        )?;
        if self.bytes_skipped > 0 {
            write!(f, ", {:.1} MB already there", self.bytes_skipped as f64 / 1e6)?;
        }
        Ok(())
    }
}

fn bar(show: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    if show {
        maskflow_core::progress::bytes_bar(total, what)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Uploads the distinct blobs of `files` (paths relative to `dir`). A blob already in the store
/// with the right size is skipped unless `overwrite` (a repair after a corrupt read).
pub(crate) fn upload(
    remote: &Remote,
    dir: &Path,
    files: &[FileEntry],
    overwrite: bool,
    show: bool,
) -> Result<Transfer, RemoteError> {
    let started = Instant::now();
    let distinct: BTreeMap<&str, &FileEntry> = files.iter().map(|f| (f.blake3.as_str(), f)).collect();
    let total: u64 = distinct.values().map(|f| f.bytes).sum();
    let pb = bar(show, total, "upload");
    let results: Vec<(bool, u64)> = remote.block_on(
        futures::stream::iter(distinct.values().copied())
            .map(|f| upload_one(remote, dir, f, overwrite, &pb))
            .buffer_unordered(CONCURRENCY)
            .try_collect(),
    )?;
    pb.finish_and_clear();
    let moved: Vec<u64> = results.iter().filter(|r| r.0).map(|r| r.1).collect();
    Ok(Transfer {
        blobs: distinct.len(),
        moved: moved.len(),
        bytes_moved: moved.iter().sum(),
        bytes_skipped: results.iter().filter(|r| !r.0).map(|r| r.1).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `(uploaded, bytes)`.
async fn upload_one(
    remote: &Remote,
    dir: &Path,
    f: &FileEntry,
    overwrite: bool,
    pb: &indicatif::ProgressBar,
) -> Result<(bool, u64), RemoteError> {
    let rel = blob_rel(&f.blake3);
    let path = remote.path(&rel);
    if !overwrite {
        match remote.store.head(&path).await {
            Ok(meta) if meta.size == f.bytes => {
                pb.inc(f.bytes);
                return Ok((false, f.bytes));
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote.backend(&rel)(e)),
        }
    }
    let local = dir.join(&f.path);
    let io = |source| RemoteError::Io { path: local.clone(), source };
    let mut file = std::fs::File::open(&local).map_err(io)?;
    if (f.bytes as usize) < PART {
        let mut buf = Vec::with_capacity(f.bytes as usize);
        file.read_to_end(&mut buf).map_err(io)?;
        remote.store.put(&path, PutPayload::from(buf)).await.map_err(remote.backend(&rel))?;
        pb.inc(f.bytes);
        return Ok((true, f.bytes));
    }
    let mut w = object_store::buffered::BufWriter::with_capacity(remote.store.clone(), path, PART);
    let result = async {
        loop {
            let mut buf = vec![0u8; PART];
            let n = read_full(&mut file, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            w.put(Bytes::from(buf)).await.map_err(remote.backend(&rel))?;
            pb.inc(n as u64);
        }
        tokio::io::AsyncWriteExt::shutdown(&mut w)
            .await
            .map_err(|e| RemoteError::Io { path: local.clone(), source: e })
    }
    .await;
    if result.is_err() {
        let _ = w.abort().await;
    }
    result.map(|()| (true, f.bytes))
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Downloads every file of `files` into `dest`, each checked against its blake3 as it arrives.
pub(crate) fn download(remote: &Remote, files: &[FileEntry], dest: &Path, show: bool) -> Result<Transfer, RemoteError> {
    let started = Instant::now();
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let pb = bar(show, total, "download");
    let sizes: Vec<u64> = remote.block_on(
        futures::stream::iter(files)
            .map(|f| download_one(remote, f, dest, &pb))
            .buffer_unordered(CONCURRENCY)
            .try_collect(),
    )?;
    pb.finish_and_clear();
    let distinct: std::collections::BTreeSet<&str> = files.iter().map(|f| f.blake3.as_str()).collect();
    Ok(Transfer {
        blobs: distinct.len(),
        moved: sizes.len(),
        bytes_moved: sizes.iter().sum(),
        bytes_skipped: 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn download_one(remote: &Remote, f: &FileEntry, dest: &Path, pb: &indicatif::ProgressBar) -> Result<u64, RemoteError> {
    let rel = blob_rel(&f.blake3);
    let missing = || RemoteError::BlobMissing { file: f.path.clone(), blake3: f.blake3.clone() };
    let got = match remote.store.get(&remote.path(&rel)).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(remote.backend(&rel)(e)),
    };
    let rel_path = Path::new(&f.path);
    if f.path.is_empty() || !rel_path.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
        return Err(RemoteError::BadManifest { at: remote.at(&rel), why: format!("file path {:?} leaves the artifact", f.path) });
    }
    let target = dest.join(rel_path);
    let io = |source| RemoteError::Io { path: target.clone(), source };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&target).map_err(io)?);
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(remote.backend(&rel))?;
        hasher.update(&chunk);
        out.write_all(&chunk).map_err(io)?;
        n += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    out.flush().map_err(io)?;
    let found = hasher.finalize().to_hex().to_string();
    if found != f.blake3 || n != f.bytes {
        let _ = std::fs::remove_file(&target);
        return Err(RemoteError::BlobCorrupt { file: f.path.clone(), blake3: f.blake3.clone(), found });
    }
    Ok(n)
}
