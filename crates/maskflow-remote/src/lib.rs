//! The shared store: artifacts on object storage, for a team.
//!
//! Layout under the store's URL (`s3://bucket/prefix`, `file:///shared/path`):
//!
//! ```text
//! cas/<blake3>                      every file of every artifact, once (content-addressed, written once)
//! <kind>/<key>/manifest.json        the commit point: the artifact's manifest, byte for byte the local one,
//!                                   written last and create-only (If-None-Match: *)
//! leases/<kind>/<key>.json          who is building a key, until when (create-only, renewed, taken over)
//! checkpoints/<kind>/<key>.json     a running build's resumable state (its files are blobs too)
//! runs/<pipeline>/<stamp>.json      run records, the roots `gc` can keep by
//! ```
//!
//! "Is it cached?" is one GET of a manifest. A manifest exists only after all its blobs were
//! uploaded, so a build killed in between leaves blobs nobody trusts (swept by `gc` after a grace
//! period) and no manifest. Every blob is checked against its blake3 as it is read; a missing or
//! corrupt one is an error the caller treats as a miss. The files of an artifact are its shards,
//! weights and reports — never one object per image.

mod blobs;
mod gc;
pub mod guard;
mod lease;

pub use blobs::Transfer;
pub use gc::{GcOptions, GcReport, Swept};
pub use guard::IntentGuard;
pub use lease::{Lease, LeaseAttempt, LeaseInfo, LeaseSeen};

use bytes::Bytes;
use maskflow_core::store::{FileEntry, Manifest};
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("store URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("{at}: {source}")]
    Backend { at: String, source: object_store::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("blob {blake3} (file {file}) is missing from the store")]
    BlobMissing { file: String, blake3: String },
    #[error("blob {blake3} (file {file}) is corrupt in the store: its content hashes to {found}")]
    BlobCorrupt { file: String, blake3: String, found: String },
    #[error("{at}: unusable manifest: {why}")]
    BadManifest { at: String, why: String },
    /// A record of a newer major format: used by nobody here, never replaced or deleted.
    #[error("{at}: {newer}")]
    Newer { at: String, newer: maskflow_core::record::Newer },
    #[error(
        "{url} does not honour create-only writes (If-None-Match: *): {why}. Two machines publishing the \
         same artifact could overwrite each other's manifest, so maskflow will not write to this store. \
         Use it with --read-only, or use a store with conditional writes (AWS S3, MinIO, Ceph, moto, \
         or a shared filesystem as file:///path)"
    )]
    NoConditionalWrites { url: String, why: String },
    /// Another process holds what this one needs (the gc lock, a contended lease).
    #[error("{at}: busy: {why}")]
    Busy { at: String, why: String },
}

impl RemoteError {
    /// A blob that failed its check: the artifact is unusable as stored and must be rebuilt.
    pub fn is_corrupt_artifact(&self) -> bool {
        matches!(self, RemoteError::BlobMissing { .. } | RemoteError::BlobCorrupt { .. } | RemoteError::BadManifest { .. })
    }
}

/// A shared store: an object store, a prefix in it, and the runtime that drives its client.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: tokio::runtime::Runtime,
    progress: bool,
    /// The store's clock, read once: (this process's instant then, the store's time then).
    clock: std::sync::OnceLock<(std::time::Instant, guard::chrono_like::Stamp)>,
}

/// A manifest as stored: its exact bytes (kept so that a pulled artifact's manifest is the
/// published one, byte for byte) and what they say.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// What publishing an artifact did.
#[derive(Debug, Clone)]
pub struct Published {
    /// False when another machine's manifest for the key was there first (both are valid builds).
    pub created: bool,
    pub transfer: Transfer,
}

impl Remote {
    /// Opens `s3://bucket[/prefix]` (endpoint, region and credentials from the usual `AWS_*`
    /// variables: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`) or `file:///absolute/path` (a shared filesystem; created if missing).
    pub fn open(url: &str) -> Result<Self, RemoteError> {
        Self::open_with(url, &[])
    }

    /// [`Remote::open`] with S3 settings given here rather than in the environment (taking
    /// precedence over it): `("aws_endpoint", "http://127.0.0.1:9000")`, `("aws_access_key_id", …)`.
    pub fn open_with(url: &str, s3_settings: &[(&str, &str)]) -> Result<Self, RemoteError> {
        let bad = |why: &str| RemoteError::Url { url: url.to_string(), why: why.to_string() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected s3://bucket/prefix or file:///path"))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "s3" => open_s3(rest, s3_settings).map_err(|why| bad(&why))?,
            "file" => {
                let path = Path::new(rest);
                if !path.is_absolute() {
                    return Err(bad("a file:// store needs an absolute path (file:///shared/cache)"));
                }
                std::fs::create_dir_all(path).map_err(|source| RemoteError::Io { path: path.into(), source })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(|e| bad(&e.to_string()))?;
                (Arc::new(fs), String::new())
            }
            other => return Err(bad(&format!("unknown scheme {other}:// (s3:// or file://)"))),
        };
        Ok(Self::with_store(store, &prefix, url.trim_end_matches('/')))
    }

    /// A store from any `object_store` backend (tests use the in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("maskflow-remote")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the I/O runtime: {e}"));
        Self { store, prefix: prefix.trim_matches('/').to_string(), url: url.to_string(), rt, progress: false, clock: Default::default() }
    }

    /// Draw progress bars (bytes, throughput) for transfers.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn path(&self, rel: &str) -> OPath {
        if self.prefix.is_empty() {
            OPath::from(rel)
        } else {
            OPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The object's URL, for messages.
    pub(crate) fn at(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    pub(crate) fn backend(&self, rel: &str) -> impl FnOnce(object_store::Error) -> RemoteError + '_ {
        let at = self.at(rel);
        move |source| RemoteError::Backend { at, source }
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Checks that create-only writes work: a second create of one object must be refused. A store
    /// that accepts it (or cannot do it) would let two machines overwrite each other's manifests.
    pub fn check_conditional_writes(&self) -> Result<(), RemoteError> {
        let rel = format!("probes/{}", maskflow_core::fsutil::unique_suffix());
        let path = self.path(&rel);
        let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
        let result = self.block_on(async {
            self.store.put_opts(&path, PutPayload::from_static(b"1"), create()).await.map_err(self.backend(&rel))?;
            let second = self.store.put_opts(&path, PutPayload::from_static(b"2"), create()).await;
            let _ = self.store.delete(&path).await;
            Ok::<_, RemoteError>(second)
        });
        let no = |why: String| RemoteError::NoConditionalWrites { url: self.url.clone(), why };
        match result {
            Ok(Ok(_)) => Err(no("a second create-only write of one object succeeded".into())),
            Ok(Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })) => Ok(()),
            Ok(Err(e @ (object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }))) => {
                Err(no(e.to_string()))
            }
            Ok(Err(source)) => Err(RemoteError::Backend { at: self.at(&rel), source }),
            Err(RemoteError::Backend { source: e @ object_store::Error::NotImplemented { .. }, .. }) => Err(no(e.to_string())),
            Err(e) => Err(e),
        }
    }

    fn manifest_rel(kind: &str, key: &str) -> String {
        format!("{kind}/{key}/{}", maskflow_core::store::MANIFEST)
    }

    /// The published manifest of `kind`/`key`, if any: one GET. A manifest that does not parse or
    /// names another key is `BadManifest` (the caller rebuilds and republishes); one of a newer
    /// major format is `Newer` (the caller builds locally and leaves it alone). Fields this
    /// maskflow does not know are ignored.
    pub fn manifest(&self, kind: &str, key: &str) -> Result<Option<RemoteManifest>, RemoteError> {
        let rel = Self::manifest_rel(kind, key);
        let Some(bytes) = self.get_optional(&rel)? else { return Ok(None) };
        let bad = |why: String| RemoteError::BadManifest { at: self.at(&rel), why };
        let manifest = Manifest::decode(&bytes).map_err(|e| self.record_error(&rel, e))?;
        if manifest.key != key || manifest.stage != kind {
            return Err(bad(format!("it names {}/{}", manifest.stage, manifest.key)));
        }
        Ok(Some(RemoteManifest { bytes: bytes.to_vec(), manifest }))
    }

    /// A record that did not decode: `Newer` or `BadManifest` at `rel`.
    pub(crate) fn record_error(&self, rel: &str, e: maskflow_core::record::RecordError) -> RemoteError {
        match e {
            maskflow_core::record::RecordError::Newer(newer) => RemoteError::Newer { at: self.at(rel), newer },
            corrupt => RemoteError::BadManifest { at: self.at(rel), why: corrupt.to_string() },
        }
    }

    /// Downloads an artifact's files into `dest` (an empty directory), checking every blob.
    pub fn fetch(&self, manifest: &Manifest, dest: &Path) -> Result<Transfer, RemoteError> {
        blobs::download(self, &manifest.files, dest, self.progress)
    }

    /// Publishes a verified local artifact: its blobs, then its manifest, create-only. `repair`:
    /// the stored copy was found corrupt, so every blob is rewritten and the old manifest replaced.
    pub fn publish(&self, dir: &Path, manifest_bytes: &[u8], repair: bool) -> Result<Published, RemoteError> {
        let manifest = Manifest::decode(manifest_bytes)
            .map_err(|e| RemoteError::BadManifest { at: dir.display().to_string(), why: e.to_string() })?;
        let _intent = self.intend(&format!("{}/{}", manifest.stage, manifest.key), &manifest.files)?;
        let transfer = blobs::upload(self, dir, &manifest.files, repair, self.progress)?;
        failpoint("publish-before-manifest");
        let rel = Self::manifest_rel(&manifest.stage, &manifest.key);
        if repair {
            self.delete(&rel)?;
        }
        let created = self.create(&rel, Bytes::copy_from_slice(manifest_bytes))?.is_some();
        Ok(Published { created, transfer })
    }

    /// Creates `rel` unless it exists: `Some(put result)` when this call created it.
    pub(crate) fn create(&self, rel: &str, bytes: Bytes) -> Result<Option<object_store::PutResult>, RemoteError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.block_on(self.store.put_opts(&self.path(rel), PutPayload::from_bytes(bytes), opts)) {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
            Err(source) => Err(RemoteError::Backend { at: self.at(rel), source }),
        }
    }

    pub(crate) fn get_optional(&self, rel: &str) -> Result<Option<Bytes>, RemoteError> {
        let path = self.path(rel);
        self.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some).map_err(self.backend(rel)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.backend(rel)(e)),
            }
        })
    }

    pub(crate) fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.block_on(self.store.put(&self.path(rel), PutPayload::from(bytes))).map(|_| ()).map_err(self.backend(rel))
    }

    /// Deletes `rel`; a missing object is not an error.
    pub(crate) fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        match self.block_on(self.store.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend(rel)(e)),
        }
    }

    // ---- objects for the plan → task → commit protocol (`maskflow_pipeline::fanout`) ----

    /// Reads an object by its path relative to the store; `None` when it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        Ok(self.get_optional(rel)?.map(|b| b.to_vec()))
    }

    /// Creates an object unless it exists (If-None-Match: *): true when this call created it.
    pub fn create_once(&self, rel: &str, bytes: Vec<u8>) -> Result<bool, RemoteError> {
        Ok(self.create(rel, Bytes::from(bytes))?.is_some())
    }

    /// Deletes an object (a missing one is not an error).
    pub fn remove(&self, rel: &str) -> Result<(), RemoteError> {
        self.delete(rel)
    }

    /// The paths (relative to the store) of the objects under `prefix` (a folder, no trailing '/').
    pub fn list_under(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        Ok(self.list_metas(Some(prefix))?.into_iter().map(|(rel, _)| rel).collect())
    }

    /// The objects under `prefix` with their sizes, from one listing.
    pub fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        Ok(self.list_metas(Some(prefix))?.into_iter().map(|(rel, m)| (rel, m.size)).collect())
    }

    /// Uploads the files `files` of `dir` as blobs (those already stored are skipped).
    pub fn upload_blobs(&self, dir: &Path, files: &[FileEntry]) -> Result<Transfer, RemoteError> {
        blobs::upload(self, dir, files, false, false)
    }

    /// Checks that every file's blob is stored with its size (one HEAD each): `BlobMissing` for
    /// the first that is not.
    pub fn check_blobs(&self, files: &[FileEntry]) -> Result<(), RemoteError> {
        use futures::{StreamExt, TryStreamExt};
        self.block_on(
            futures::stream::iter(files)
                .map(|f| async move {
                    let rel = blobs::blob_rel(&f.blake3);
                    match self.store.head(&self.path(&rel)).await {
                        Ok(meta) if meta.size == f.bytes => Ok(()),
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                            Err(RemoteError::BlobMissing { file: f.path.clone(), blake3: f.blake3.clone() })
                        }
                        Err(e) => Err(self.backend(&rel)(e)),
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>(),
        )
        .map(|_| ())
    }

    /// Commits a manifest whose blobs are already stored (made by tasks on other machines):
    /// create-only, like [`Remote::publish`]. True when this call created it.
    pub fn commit_manifest(&self, manifest_bytes: &[u8]) -> Result<bool, RemoteError> {
        let manifest = Manifest::decode(manifest_bytes)
            .map_err(|e| RemoteError::BadManifest { at: "(manifest to commit)".into(), why: e.to_string() })?;
        let _intent = self.intend(&format!("{}/{}", manifest.stage, manifest.key), &manifest.files)?;
        self.check_blobs(&manifest.files)?;
        let rel = Self::manifest_rel(&manifest.stage, &manifest.key);
        Ok(self.create(&rel, Bytes::copy_from_slice(manifest_bytes))?.is_some())
    }

    /// Stores a run record (`runs/<pipeline>/<name>.json`): `gc --keep-runs` keeps what they name.
    pub fn put_run_record(&self, pipeline: &str, name: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.put(&format!("runs/{pipeline}/{name}.json"), bytes)
    }

    // ---- checkpoints: a running build's resumable state, so another machine can resume it ----

    fn checkpoint_rel(kind: &str, key: &str) -> String {
        format!("checkpoints/{kind}/{key}.json")
    }

    /// Uploads the files of `dir` (a stage's scratch directory) as the checkpoint of `kind`/`key`:
    /// blobs first, then the index that names them (overwritten each time).
    pub fn push_checkpoint(&self, kind: &str, key: &str, dir: &Path) -> Result<Transfer, RemoteError> {
        let io = |source| RemoteError::Io { path: dir.to_path_buf(), source };
        let files: Vec<FileEntry> = maskflow_core::fsutil::list_files_recursive(dir)
            .map_err(io)?
            .into_iter()
            .filter(|rel| !is_hidden(rel))
            .filter_map(|rel| {
                // A file replaced while we look is skipped: the next push has it.
                let (blake3, bytes) = maskflow_core::hash::blake3_file(&dir.join(&rel)).ok()?;
                Some(FileEntry { path: maskflow_core::fsutil::rel_string(&rel), bytes, blake3 })
            })
            .collect();
        let _intent = self.intend(&format!("checkpoint {kind}/{key}"), &files)?;
        let transfer = blobs::upload(self, dir, &files, false, false)?;
        let index = CheckpointIndex { format: Some(CHECKPOINT_FORMAT.current()), tool_version: Some(maskflow_core::record::writer()), kind: kind.into(), key: key.into(), files };
        let bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
        self.put(&Self::checkpoint_rel(kind, key), bytes)?;
        Ok(transfer)
    }

    /// Downloads the checkpoint of `kind`/`key` into `dir`, if the store has one. Each file is
    /// checked; the stage itself decides whether what it finds is a usable checkpoint.
    pub fn pull_checkpoint(&self, kind: &str, key: &str, dir: &Path) -> Result<Option<Transfer>, RemoteError> {
        let rel = Self::checkpoint_rel(kind, key);
        let Some(bytes) = self.get_optional(&rel)? else { return Ok(None) };
        let index: CheckpointIndex = CHECKPOINT_FORMAT.decode(&bytes).map_err(|e| self.record_error(&rel, e))?;
        std::fs::create_dir_all(dir).map_err(|source| RemoteError::Io { path: dir.into(), source })?;
        blobs::download(self, &index.files, dir, false).map(Some)
    }

    pub fn drop_checkpoint(&self, kind: &str, key: &str) -> Result<(), RemoteError> {
        self.delete(&Self::checkpoint_rel(kind, key))
    }

    /// Every object's path relative to the store (a listing: for inspection and tests, never on
    /// the way of a run).
    pub fn list_objects(&self) -> Result<Vec<String>, RemoteError> {
        Ok(self.list_all()?.into_iter().map(|(rel, _)| rel).collect())
    }

    /// One listing of the store: each object's path relative to it, with its metadata.
    pub(crate) fn list_all(&self) -> Result<Vec<(String, object_store::ObjectMeta)>, RemoteError> {
        self.list_metas(None)
    }

    /// The objects under `folder` (relative to the store; `None`: all), with their metadata.
    fn list_metas(&self, folder: Option<&str>) -> Result<Vec<(String, object_store::ObjectMeta)>, RemoteError> {
        use futures::TryStreamExt;
        let rel = folder.unwrap_or("");
        let at = self.path(rel);
        let scope = if folder.is_none() && self.prefix.is_empty() { None } else { Some(&at) };
        let metas: Vec<object_store::ObjectMeta> =
            self.block_on(self.store.list(scope).try_collect()).map_err(self.backend(rel))?;
        let strip = format!("{}/", self.prefix);
        Ok(metas
            .into_iter()
            .map(|m| {
                let full = m.location.to_string();
                (full.strip_prefix(&strip).map(str::to_string).unwrap_or(full), m)
            })
            .collect())
    }

    /// Whether `rel` exists (one HEAD).
    pub fn exists(&self, rel: &str) -> Result<bool, RemoteError> {
        match self.block_on(self.store.head(&self.path(rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend(rel)(e)),
        }
    }

    /// Overwrites or deletes a stored object by its path relative to the store (fault tests only:
    /// built with the `failpoints` feature).
    #[cfg(any(test, feature = "failpoints"))]
    pub fn damage(&self, rel: &str, replacement: Option<Vec<u8>>) -> Result<(), RemoteError> {
        match replacement {
            Some(b) => self.put(rel, b),
            None => self.delete(rel),
        }
    }
}

/// Checkpoint indexes: format 2 like every record that names blobs (gc reads them as one type);
/// format 0 (no format field) is still read.
const CHECKPOINT_FORMAT: maskflow_core::record::Format = maskflow_core::record::Format::new("checkpoint index", 2).reading_back_to(0);

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointIndex {
    format: Option<u32>,
    tool_version: Option<String>,
    kind: String,
    key: String,
    files: Vec<FileEntry>,
}

/// A dot-named file or folder anywhere in `rel`: temp files of atomic writes, never state.
pub fn is_hidden(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

/// The `s3://` arm of [`Remote::open_with`]: the store and its key prefix, or why not.
#[cfg(feature = "s3")]
fn open_s3(rest: &str, s3_settings: &[(&str, &str)]) -> Result<(Arc<dyn ObjectStore>, String), String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("no bucket name".into());
    }
    install_tls_provider();
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    for (k, v) in s3_settings {
        let key: object_store::aws::AmazonS3ConfigKey = k.parse().map_err(|e: object_store::Error| e.to_string())?;
        b = b.with_config(key, *v);
    }
    let has = |k: &str, env: &str| s3_settings.iter().any(|(n, _)| *n == k) || std::env::var_os(env).is_some();
    let credentials = has("aws_access_key_id", "AWS_ACCESS_KEY_ID")
        || has("aws_skip_signature", "AWS_SKIP_SIGNATURE")
        || ["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
    // Without credentials the client would ask the EC2 instance metadata service
    // (169.254.169.254): only where the user says that is where they come from.
    if !credentials && std::env::var("MASKFLOW_S3_INSTANCE_CREDENTIALS").map_or(true, |v| v != "1") {
        return Err(String::from(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE), \
             or MASKFLOW_S3_INSTANCE_CREDENTIALS=1 to take them from the EC2 instance metadata service",
        ));
    }
    let endpoint = b
        .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
        .unwrap_or_default();
    if endpoint.starts_with("http://") {
        b = b.with_allow_http(true);
    }
    let s3 = b.build().map_err(|e| e.to_string())?;
    Ok((Arc::new(s3), prefix.trim_matches('/').to_string()))
}

#[cfg(not(feature = "s3"))]
fn open_s3(_rest: &str, _s3_settings: &[(&str, &str)]) -> Result<(Arc<dyn ObjectStore>, String), String> {
    Err(S3_NOT_BUILT.to_string())
}

/// Whether this build has the S3 client (the `s3` feature).
pub const S3_BUILT: bool = cfg!(feature = "s3");

/// What a binary built without the `s3` feature says when given an `s3://` store.
pub const S3_NOT_BUILT: &str = "this maskflow was built without the S3 client (cargo feature `s3`, off by default); \
     build it in with `MASKFLOW_FEATURES=s3 just build` or `cargo build --release --features s3`, \
     or use a shared filesystem (file:///path)";

#[cfg(feature = "s3")]
fn install_tls_provider() {
    // Idempotent: a second install reports the first one, which is the same provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fault injection for the tests: with `MASKFLOW_FAILPOINT=<name>`, the process announces the
/// point on stderr and kills itself there with SIGKILL, as a machine that dies at that moment
/// would: no destructor, no cleanup, no lease released. With `MASKFLOW_FAILPOINT_ACTION=panic` it
/// panics there instead (as tch does on an error inside libtorch, e.g. out of memory).
///
/// With `MASKFLOW_FAILPOINT_ONCE=<file>` as well, only the first process to reach the point (the one
/// that creates the file) fails: a retried task then passes it.
///
/// Only in builds with the `failpoints` feature (the test suite's); elsewhere it does nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

/// See above: the test build's failpoint.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    if std::env::var("MASKFLOW_FAILPOINT").is_ok_and(|v| v == name) {
        if let Some(marker) = std::env::var_os("MASKFLOW_FAILPOINT_ONCE") {
            if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_err() {
                return;
            }
        }
        if std::env::var("MASKFLOW_FAILPOINT_ACTION").is_ok_and(|a| a == "panic") {
            panic!("failpoint {name}: injected panic");
        }
        eprintln!("failpoint {name}: SIGKILL");
        // SAFETY: plain libc calls on our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

pub use maskflow_core::store::now_unix;

/// This machine's name, for lease holders and task records.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests;
