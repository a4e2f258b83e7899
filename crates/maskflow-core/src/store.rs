//! The content-addressed artifact store.
//!
//! A stage's output lives in `<root>/<stage>/<key>/` where
//! `key = blake3(canonical JSON of {stage, version, params, upstream})`. It is built in
//! `<root>/<stage>/.tmp-<key>-<unique>/` and renamed into place only when complete, with a
//! `manifest.json` that lists every file with its size and blake3. An artifact is trusted only when
//! its manifest parses, names the expected key and every file verifies; anything else is rebuilt.
//! An advisory lock per key (`<root>/<stage>/.locks/<key>.lock`) serialises concurrent builders, so two
//! processes running the same pipeline both succeed and leave one valid artifact.

use crate::fsutil::{list_files_recursive, rel_string, unique_suffix, write_json_atomic};
use crate::hash::{blake3_file, hash_canonical};
use crate::record::{Format, Newer, RecordError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const MANIFEST: &str = "manifest.json";
/// Manifests: format 1 (every field below). A reader ignores fields it does not know (a newer
/// maskflow of the same major format added them) and never trusts, replaces or deletes a manifest
/// of a newer major format ([`crate::record`]).
pub const MANIFEST_FORMAT: Format = Format::new("manifest", 1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the parameters of stage {stage}: {source}")]
    Encode { stage: String, source: serde_json::Error },
    /// Displays as "stage S failed"; the reason is its `source` (shown by `{:#}` and error chains).
    #[error("stage {stage} failed")]
    Build { stage: String, source: anyhow::Error },
    /// The artifact in this store was made by a newer maskflow: it is left as it is.
    #[error("{dir}: {newer}. It is left as it is: use that maskflow, or another --artifacts folder")]
    Newer { dir: PathBuf, newer: Newer },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// What identifies one stage's output: everything its key is computed from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    pub stage: String,
    pub version: u32,
    /// The stage's parameters with every default filled in, so that writing a default explicitly
    /// or leaving it out gives the same key.
    pub params: Value,
    /// Named upstream keys (`{"index": "<key>"}`), or for the first stage the dataset fingerprint.
    pub upstream: BTreeMap<String, String>,
}

impl StageSpec {
    pub fn new<P: Serialize>(
        stage: &str,
        version: u32,
        params: &P,
        upstream: BTreeMap<String, String>,
    ) -> Result<Self, StoreError> {
        let params = serde_json::to_value(params)
            .map_err(|source| StoreError::Encode { stage: stage.into(), source })?;
        Ok(Self { stage: stage.into(), version, params, upstream })
    }

    pub fn key(&self) -> String {
        // A Value always encodes.
        hash_canonical(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// An artifact's manifest (format [`MANIFEST_FORMAT`]). Decode it with [`Manifest::decode`], never
/// with a plain `serde_json` call: that tells a newer manifest from a corrupt one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stage: String,
    pub stage_version: u32,
    pub key: String,
    pub params: Value,
    pub upstream: BTreeMap<String, String>,
    pub tool_version: String,
    pub created_unix: u64,
    pub duration_s: f64,
    pub files: Vec<FileEntry>,
    pub report: Value,
}

/// Why an artifact directory cannot be trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalid {
    Missing,
    NoManifest,
    BadManifest(String),
    WrongKey { found: String },
    MissingFile(String),
    SizeMismatch { file: String, expected: u64, found: u64 },
    HashMismatch(String),
    /// Made by a newer maskflow (a major manifest format this one does not know): never replaced.
    Newer(Newer),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Missing => write!(f, "not built"),
            Invalid::NoManifest => write!(f, "no manifest.json (incomplete artifact)"),
            Invalid::BadManifest(e) => write!(f, "manifest.json unreadable: {e}"),
            Invalid::WrongKey { found } => write!(f, "manifest names key {found}"),
            Invalid::MissingFile(p) => write!(f, "file {p} is missing"),
            Invalid::SizeMismatch { file, expected, found } => {
                write!(f, "file {file} has {found} bytes, manifest says {expected}")
            }
            Invalid::HashMismatch(p) => write!(f, "file {p} does not match its blake3"),
            Invalid::Newer(n) => write!(f, "{n}"),
        }
    }
}

/// Result of [`Store::ensure`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stage: String,
    pub key: String,
    pub dir: PathBuf,
    pub cached: bool,
    /// Why a previous artifact with this key was rebuilt (corrupt, forced), if one existed.
    pub rebuilt_because: Option<String>,
    pub duration_s: f64,
    pub manifest: Manifest,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn artifact_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    /// Reads and checks an artifact: manifest, key, and every file's size and blake3.
    pub fn verify(&self, stage: &str, key: &str) -> Result<Manifest, Invalid> {
        verify_dir(&self.artifact_dir(stage, key), Some(key))
    }

    /// Returns the verified artifact for `spec`, building it with `build` when it is missing,
    /// invalid, or `force` is set. `build` gets an empty directory to write into and returns the
    /// stage's report (counts, figures), which is stored in the manifest.
    pub fn ensure<F>(&self, spec: &StageSpec, force: bool, build: F) -> Result<Outcome, StoreError>
    where
        F: FnOnce(&Path) -> anyhow::Result<Value>,
    {
        let key = spec.key();
        let slot = self.lock(&spec.stage, &key)?;
        let rebuilt_because = match slot.check(force) {
            Ok(outcome) => return Ok(outcome),
            Err(Unusable::Rebuild(why)) => why,
            Err(Unusable::Newer(newer)) => return Err(StoreError::Newer { dir: slot.final_dir, newer }),
        };
        let tmp = slot.temp_dir()?;
        let started = Instant::now();
        let created_unix = now_unix();
        let report = match build(&tmp) {
            Ok(r) => r,
            Err(source) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(StoreError::Build { stage: spec.stage.clone(), source });
            }
        };
        let duration_s = started.elapsed().as_secs_f64();
        let manifest = (|| -> Result<Manifest, StoreError> {
            let manifest = Manifest::assemble(spec, hash_files(&tmp)?, report, created_unix, duration_s);
            let mpath = tmp.join(MANIFEST);
            write_json_atomic(&mpath, &manifest).map_err(io_err(&mpath))?;
            Ok(manifest)
        })();
        let manifest = manifest.and_then(|m| slot.commit(&tmp).map(|()| m)).inspect_err(|_| {
            let _ = fs::remove_dir_all(&tmp);
        })?;
        Ok(Outcome { stage: spec.stage.clone(), key, dir: slot.final_dir, cached: false, rebuilt_because, duration_s, manifest })
    }

    /// The valid artifact of `stage`/`key`, if there is one (verified once, under its lock); an
    /// invalid one is moved aside, one made by a newer maskflow is an error. Nothing is built.
    pub fn lookup(&self, stage: &str, key: &str) -> Result<Option<Outcome>, StoreError> {
        let slot = self.lock(stage, key)?;
        match slot.check(false) {
            Ok(o) => Ok(Some(o)),
            Err(Unusable::Rebuild(_)) => Ok(None),
            Err(Unusable::Newer(newer)) => Err(StoreError::Newer { dir: slot.final_dir, newer }),
        }
    }

    /// Installs an artifact made elsewhere (pulled from a shared store): `fill` writes its files
    /// into an empty directory, `manifest_bytes` become its `manifest.json` unchanged, and the
    /// whole is verified against them before it is renamed into place. A valid artifact already
    /// there is kept (another process installed or built it meanwhile).
    pub fn install<E>(
        &self,
        stage: &str,
        key: &str,
        manifest_bytes: &[u8],
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Result<Outcome, E>, StoreError> {
        let slot = self.lock(stage, key)?;
        match slot.check(false) {
            Ok(outcome) => return Ok(Ok(outcome)),
            Err(Unusable::Rebuild(_)) => {}
            Err(Unusable::Newer(newer)) => return Err(StoreError::Newer { dir: slot.final_dir, newer }),
        }
        let tmp = slot.temp_dir()?;
        let started = Instant::now();
        if let Err(e) = fill(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(Err(e));
        }
        let installed = (|| -> Result<Manifest, StoreError> {
            let mpath = tmp.join(MANIFEST);
            crate::fsutil::write_atomic(&mpath, manifest_bytes).map_err(io_err(&mpath))?;
            let manifest = verify_dir(&tmp, Some(key)).map_err(|why| StoreError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(format!("installed artifact does not verify: {why}")),
            })?;
            slot.commit(&tmp)?;
            Ok(manifest)
        })()
        .inspect_err(|_| {
            let _ = fs::remove_dir_all(&tmp);
        })?;
        Ok(Ok(Outcome {
            stage: stage.to_string(),
            key: key.to_string(),
            dir: slot.final_dir,
            cached: false,
            rebuilt_because: None,
            duration_s: started.elapsed().as_secs_f64(),
            manifest: installed,
        }))
    }

    /// Takes the key's lock (held until the returned slot drops) and cleans leftovers of
    /// interrupted runs: holding the lock, no other process is writing this key.
    fn lock(&self, stage: &str, key: &str) -> Result<Slot, StoreError> {
        let stage_dir = self.root.join(stage);
        let lock_dir = stage_dir.join(".locks");
        fs::create_dir_all(&lock_dir).map_err(io_err(&lock_dir))?;
        let lock_path = lock_dir.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        clean_leftovers(&stage_dir, key);
        let final_dir = stage_dir.join(key);
        Ok(Slot { _lock: lock, stage: stage.to_string(), key: key.to_string(), stage_dir, final_dir })
    }

    /// Reads an artifact's manifest without verifying its files (for `status` explanations).
    pub fn read_manifest(&self, stage: &str, key: &str) -> Option<Manifest> {
        let p = self.artifact_dir(stage, key).join(MANIFEST);
        let bytes = fs::read(p).ok()?;
        Manifest::decode(&bytes).ok()
    }
}

/// One key's place in the store, locked.
struct Slot {
    _lock: File,
    stage: String,
    key: String,
    stage_dir: PathBuf,
    final_dir: PathBuf,
}

/// Why a slot's artifact is not used.
enum Unusable {
    /// It must be (re)built: `None` when there was none, else the reason the one there is not
    /// used; it has been moved aside.
    Rebuild(Option<String>),
    /// Made by a newer maskflow: left in place, untouched.
    Newer(Newer),
}

impl Slot {
    /// `Ok`: the valid artifact (unless `force`); otherwise why not (see [`Unusable`]).
    fn check(&self, force: bool) -> Result<Outcome, Unusable> {
        if !self.final_dir.exists() {
            return Err(Unusable::Rebuild(None));
        }
        let why = match verify_dir(&self.final_dir, Some(&self.key)) {
            Err(Invalid::Newer(n)) => return Err(Unusable::Newer(n)),
            Ok(manifest) if !force => {
                return Ok(Outcome {
                    stage: self.stage.clone(),
                    key: self.key.clone(),
                    dir: self.final_dir.clone(),
                    cached: true,
                    rebuilt_because: None,
                    duration_s: 0.0,
                    manifest,
                })
            }
            Ok(_) => "forced".to_string(),
            Err(why) => why.to_string(),
        };
        let trash = self.stage_dir.join(format!(".trash-{}-{}", self.key, unique_suffix()));
        if fs::rename(&self.final_dir, &trash).is_ok() {
            let _ = fs::remove_dir_all(&trash);
        }
        Err(Unusable::Rebuild(Some(why)))
    }

    fn temp_dir(&self) -> Result<PathBuf, StoreError> {
        let tmp = self.stage_dir.join(format!(".tmp-{}-{}", self.key, unique_suffix()));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(tmp)
    }

    /// Renames a complete temp dir (manifest written) into place.
    fn commit(&self, tmp: &Path) -> Result<(), StoreError> {
        sync_dir(tmp);
        fs::rename(tmp, &self.final_dir).map_err(io_err(&self.final_dir))?;
        sync_dir(&self.stage_dir);
        Ok(())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}


impl Manifest {
    /// Decodes a stored manifest: corrupt, compatible (unknown fields ignored) or newer.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, RecordError> {
        MANIFEST_FORMAT.decode(bytes)
    }

    /// The manifest of an artifact of `spec` made of `files` (in any order; sorted here as a local
    /// build lists them): for artifacts assembled from parts made on several machines.
    pub fn assemble(spec: &StageSpec, mut files: Vec<FileEntry>, report: Value, created_unix: u64, duration_s: f64) -> Manifest {
        files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Manifest {
            format: MANIFEST_FORMAT.current(),
            stage: spec.stage.clone(),
            stage_version: spec.version,
            key: spec.key(),
            params: spec.params.clone(),
            upstream: spec.upstream.clone(),
            tool_version: crate::record::writer(),
            created_unix,
            duration_s,
            files,
            report,
        }
    }
}

/// Every file under `dir` (but a manifest) with its size and blake3, hashed in parallel, in
/// manifest order (by path bytes).
pub fn hash_files(dir: &Path) -> Result<Vec<FileEntry>, StoreError> {
    use rayon::prelude::*;
    let files = list_files_recursive(dir).map_err(io_err(dir))?;
    files
        .par_iter()
        .filter(|rel| rel.as_os_str() != MANIFEST)
        .map(|rel| {
            let p = dir.join(rel);
            let (blake3, bytes) = blake3_file(&p).map_err(io_err(&p))?;
            Ok(FileEntry { path: rel_string(rel), bytes, blake3 })
        })
        .collect()
}

/// Checks a directory against its manifest. `key`: the key it must carry, if known.
pub fn verify_dir(dir: &Path, key: Option<&str>) -> Result<Manifest, Invalid> {
    use rayon::prelude::*;
    if !dir.is_dir() {
        return Err(Invalid::Missing);
    }
    let mpath = dir.join(MANIFEST);
    let bytes = match fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Invalid::NoManifest),
        Err(e) => return Err(Invalid::BadManifest(e.to_string())),
    };
    let manifest = Manifest::decode(&bytes).map_err(|e| match e {
        RecordError::Newer(n) => Invalid::Newer(n),
        RecordError::Corrupt { why, .. } => Invalid::BadManifest(why),
    })?;
    if let Some(key) = key {
        if manifest.key != key {
            return Err(Invalid::WrongKey { found: manifest.key.clone() });
        }
    }
    // Cheap checks first (existence, sizes), then hashes in parallel.
    for f in &manifest.files {
        let p = dir.join(&f.path);
        match fs::metadata(&p) {
            Ok(m) if m.len() == f.bytes => {}
            Ok(m) => {
                return Err(Invalid::SizeMismatch {
                    file: f.path.clone(),
                    expected: f.bytes,
                    found: m.len(),
                })
            }
            Err(_) => return Err(Invalid::MissingFile(f.path.clone())),
        }
    }
    let bad = manifest.files.par_iter().find_any(|f| match blake3_file(&dir.join(&f.path)) {
        Ok((h, _)) => h != f.blake3,
        Err(_) => true,
    });
    if let Some(f) = bad {
        return Err(Invalid::HashMismatch(f.path.clone()));
    }
    Ok(manifest)
}

fn clean_leftovers(stage_dir: &Path, key: &str) {
    let Ok(entries) = fs::read_dir(stage_dir) else { return };
    let tmp_prefix = format!(".tmp-{key}-");
    let trash_prefix = format!(".trash-{key}-");
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&tmp_prefix) || name.starts_with(&trash_prefix) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(p: i64) -> StageSpec {
        StageSpec::new("demo", 1, &json!({"p": p, "q": "x"}), BTreeMap::from([("up".into(), "k0".into())]))
            .unwrap()
    }

    fn build_ok(dir: &Path) -> anyhow::Result<Value> {
        fs::create_dir_all(dir.join("sub"))?;
        fs::write(dir.join("a.bin"), b"hello")?;
        fs::write(dir.join("sub/b.txt"), b"world")?;
        Ok(json!({"rows": 2}))
    }

    #[test]
    fn build_then_hit_then_miss_on_param_change() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let a = store.ensure(&spec(1), false, build_ok).unwrap();
        assert!(!a.cached);
        assert_eq!(a.manifest.files.len(), 2);
        let b = store.ensure(&spec(1), false, |_| panic!("must not rebuild")).unwrap();
        assert!(b.cached);
        assert_eq!(a.key, b.key);
        let c = store.ensure(&spec(2), false, build_ok).unwrap();
        assert!(!c.cached);
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn flipped_byte_missing_file_and_torn_manifest_are_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let a = store.ensure(&spec(1), false, build_ok).unwrap();

        // Flip one byte, same size.
        fs::write(a.dir.join("a.bin"), b"hellp").unwrap();
        assert_eq!(store.verify("demo", &a.key).unwrap_err(), Invalid::HashMismatch("a.bin".into()));
        let b = store.ensure(&spec(1), false, build_ok).unwrap();
        assert!(!b.cached);
        assert_eq!(b.rebuilt_because.as_deref(), Some("file a.bin does not match its blake3"));
        assert_eq!(fs::read(b.dir.join("a.bin")).unwrap(), b"hello");

        fs::remove_file(b.dir.join("sub/b.txt")).unwrap();
        assert!(!store.ensure(&spec(1), false, build_ok).unwrap().cached);

        let m = a.dir.join(MANIFEST);
        let text = fs::read(&m).unwrap();
        fs::write(&m, &text[..text.len() / 2]).unwrap();
        assert!(matches!(store.verify("demo", &a.key), Err(Invalid::BadManifest(_))));
        let c = store.ensure(&spec(1), false, build_ok).unwrap();
        assert!(!c.cached);
        assert!(store.verify("demo", &c.key).is_ok());
    }

    #[test]
    fn failed_build_leaves_nothing_and_leftover_temp_is_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let s = spec(1);
        let err = store.ensure(&s, false, |dir| {
            fs::write(dir.join("half"), b"x")?;
            anyhow::bail!("boom")
        });
        assert!(matches!(err, Err(StoreError::Build { .. })));
        assert!(!store.artifact_dir("demo", &s.key()).exists());

        // A temp dir left by a killed process is ignored, then cleaned.
        let leftover = d.path().join("demo").join(format!(".tmp-{}-999-0-0", s.key()));
        fs::create_dir_all(&leftover).unwrap();
        fs::write(leftover.join("a.bin"), b"partial").unwrap();
        let a = store.ensure(&s, false, build_ok).unwrap();
        assert!(!a.cached);
        assert!(!leftover.exists());
        let names: Vec<String> = fs::read_dir(d.path().join("demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    }

    #[test]
    fn install_keeps_the_given_manifest_and_refuses_files_that_do_not_match_it() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::new(d.path().join("a")).ensure(&spec(1), false, build_ok).unwrap();
        let bytes = fs::read(a.dir.join(MANIFEST)).unwrap();
        let copy = |to: &Path, b: &[u8]| -> std::io::Result<()> {
            fs::create_dir_all(to.join("sub"))?;
            fs::write(to.join("a.bin"), b)?;
            fs::copy(a.dir.join("sub/b.txt"), to.join("sub/b.txt")).map(|_| ())
        };

        let b = Store::new(d.path().join("b"));
        let o = b.install("demo", &a.key, &bytes, |to| copy(to, b"hello")).unwrap().unwrap();
        assert!(!o.cached);
        assert_eq!(fs::read(o.dir.join(MANIFEST)).unwrap(), bytes, "the manifest is kept byte for byte");
        assert!(b.verify("demo", &a.key).is_ok());
        // Installed once: a second install finds it valid and does not call `fill`.
        let again = b.install("demo", &a.key, &bytes, |_| -> std::io::Result<()> { panic!("must not refill") }).unwrap();
        assert!(again.unwrap().cached);

        let c = Store::new(d.path().join("c"));
        let err = c.install("demo", &a.key, &bytes, |to| copy(to, b"hellp")).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert!(!c.artifact_dir("demo", &a.key).exists());
        let failed = c.install("demo", &a.key, &bytes, |_| Err(std::io::Error::other("network down"))).unwrap();
        assert_eq!(failed.unwrap_err().to_string(), "network down");
        assert!(!c.artifact_dir("demo", &a.key).exists());
    }

    #[test]
    fn force_rebuilds_a_valid_artifact() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        store.ensure(&spec(1), false, build_ok).unwrap();
        let b = store.ensure(&spec(1), true, build_ok).unwrap();
        assert!(!b.cached);
        assert_eq!(b.rebuilt_because.as_deref(), Some("forced"));
    }

    #[test]
    fn concurrent_builders_in_threads_leave_one_valid_artifact() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let built = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let o = store
                        .ensure(&spec(1), false, |dir| {
                            built.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            build_ok(dir)
                        })
                        .unwrap();
                    assert!(store.verify("demo", &o.key).is_ok());
                });
            }
        });
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
