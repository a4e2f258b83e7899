//! The dataset folder: `root/<class>/…/<file>`, label = the class folder's name.
//!
//! The walk is the same everywhere: hidden entries (names starting with '.') are skipped, symlinks
//! are followed with loops detected, and files are sorted by their relative path's bytes. Names that
//! are not UTF-8 are kept losslessly as bytes. Files directly under the root and empty class folders
//! are reported, not fatal.

use crate::hash::blake3_file;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset root {0}: not found")]
    NoRoot(PathBuf),
    #[error("dataset root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("dataset root {0}: no class folders (expected root/<class>/<image files>)")]
    NoClasses(PathBuf),
}

/// One file found by the walk.
#[derive(Debug, Clone)]
pub struct DatasetFile {
    /// Path relative to the root, exact bytes (may be non-UTF-8).
    pub rel: PathBuf,
    /// The class folder's name.
    pub label: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: (u64, u64),
}

impl DatasetFile {
    pub fn rel_bytes(&self) -> &[u8] {
        self.rel.as_os_str().as_bytes()
    }
    /// The relative path for people: UTF-8 as is, other bytes as `\xNN`.
    pub fn display(&self) -> String {
        display_bytes(self.rel_bytes())
    }
}

/// Something the walk noticed that is not a file to index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WalkNote {
    pub path: String,
    pub what: String,
}

#[derive(Debug, Clone)]
pub struct Listing {
    pub root: PathBuf,
    /// Sorted class names (folder names; non-UTF-8 shown readably).
    pub classes: Vec<String>,
    /// Sorted by relative path bytes.
    pub files: Vec<DatasetFile>,
    pub notes: Vec<WalkNote>,
}

/// Shows bytes as UTF-8 where they are, `\xNN` where they are not (and `\\` for a backslash, so the
/// form is unambiguous).
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

pub fn walk(root: &Path) -> Result<Listing, DatasetError> {
    let meta = fs::metadata(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DatasetError::NoRoot(root.to_path_buf())
        } else {
            DatasetError::Root { path: root.to_path_buf(), source: e }
        }
    })?;
    if !meta.is_dir() {
        return Err(DatasetError::Root {
            path: root.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let mut notes = Vec::new();
    let mut class_dirs: Vec<OsString> = Vec::new();
    let entries = fs::read_dir(root).map_err(|e| DatasetError::Root { path: root.to_path_buf(), source: e })?;
    for e in entries {
        let e = e.map_err(|e| DatasetError::Root { path: root.to_path_buf(), source: e })?;
        let name = e.file_name();
        if is_hidden(&name) {
            continue;
        }
        match fs::metadata(e.path()) {
            Ok(m) if m.is_dir() => class_dirs.push(name),
            Ok(_) => notes.push(WalkNote {
                path: display_bytes(name.as_bytes()),
                what: "file directly under the dataset root (not in a class folder): ignored".into(),
            }),
            Err(err) => notes.push(WalkNote {
                path: display_bytes(name.as_bytes()),
                what: format!("unreadable entry under the root: {err}"),
            }),
        }
    }
    class_dirs.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    if class_dirs.is_empty() {
        return Err(DatasetError::NoClasses(root.to_path_buf()));
    }
    let mut files = Vec::new();
    let mut classes = Vec::new();
    for class in &class_dirs {
        let label = display_bytes(class.as_bytes());
        let (found, class_notes) = walk_folder(root, Path::new(class), &label);
        if found.is_empty() {
            notes.push(WalkNote { path: label.clone(), what: "empty class folder: no files".into() });
        }
        files.extend(found);
        notes.extend(class_notes);
        classes.push(label);
    }
    files.sort_by(|a, b| a.rel_bytes().cmp(b.rel_bytes()));
    Ok(Listing { root: root.to_path_buf(), classes, files, notes })
}

/// The one folder walk, as the dataset's (index, faces) and `predict` / `detect`'s folders use it:
/// every regular file under `root/rel` (hidden entries skipped, symlinks followed, a folder reached
/// twice — a symlink loop — skipped), sorted by relative path bytes, each labelled `label`; what
/// cannot be used (loops, broken links, unreadable folders, special files) comes back as notes with
/// the reason.
pub fn walk_folder(root: &Path, rel: &Path, label: &str) -> (Vec<DatasetFile>, Vec<WalkNote>) {
    let (mut files, mut notes) = (Vec::new(), Vec::new());
    walk_dir(root, rel, label, &mut HashSet::new(), &mut files, &mut notes);
    files.sort_by(|a, b| a.rel_bytes().cmp(b.rel_bytes()));
    (files, notes)
}

fn walk_dir(
    root: &Path,
    rel: &Path,
    label: &str,
    visited: &mut HashSet<(u64, u64)>,
    files: &mut Vec<DatasetFile>,
    notes: &mut Vec<WalkNote>,
) {
    let abs = root.join(rel);
    let show = || display_bytes(rel.as_os_str().as_bytes());
    match fs::metadata(&abs) {
        Ok(m) => {
            if !visited.insert((m.dev(), m.ino())) {
                notes.push(WalkNote { path: show(), what: "symlink loop: folder already visited, skipped".into() });
                return;
            }
        }
        Err(e) => {
            notes.push(WalkNote { path: show(), what: format!("unreadable folder: {e}") });
            return;
        }
    }
    let entries = match fs::read_dir(&abs) {
        Ok(it) => it,
        Err(e) => {
            notes.push(WalkNote { path: show(), what: format!("unreadable folder: {e}") });
            return;
        }
    };
    let mut children: Vec<OsString> = Vec::new();
    for e in entries {
        match e {
            Ok(e) if !is_hidden(&e.file_name()) => children.push(e.file_name()),
            Ok(_) => {}
            Err(err) => notes.push(WalkNote { path: show(), what: format!("unreadable entry: {err}") }),
        }
    }
    children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in children {
        let child_rel = rel.join(&name);
        let child_abs = root.join(&child_rel);
        match fs::metadata(&child_abs) {
            Ok(m) if m.is_dir() => walk_dir(root, &child_rel, label, visited, files, notes),
            Ok(m) if m.is_file() => files.push(DatasetFile {
                rel: child_rel,
                label: label.to_string(),
                size: m.len(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                inode: (m.dev(), m.ino()),
            }),
            Ok(_) => notes.push(WalkNote {
                path: display_bytes(child_rel.as_os_str().as_bytes()),
                what: "not a regular file: skipped".into(),
            }),
            Err(e) => notes.push(WalkNote {
                path: display_bytes(child_rel.as_os_str().as_bytes()),
                what: format!("unreadable (broken symlink?): {e}"),
            }),
        }
    }
}

/// A stat-keyed cache of content hashes, so re-fingerprinting an unchanged dataset reads no file
/// contents (as DVC's state database does). An entry is used only when size, mtime and inode all
/// match; touching a file rehashes it, and since the hash is then equal, no key changes.
///
/// "Racily clean" files (git's term): a file rewritten with the same size within one mtime tick of
/// being hashed keeps its (size, mtime, inode). So an entry is trusted only for a file whose mtime
/// is more than [`RACY_MARGIN_NS`] older than the moment the entry was made; any other file is
/// hashed again on every fingerprint until it is that old.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: BTreeMap<String, CacheEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    dev: u64,
    ino: u64,
    blake3: String,
    /// When the file was read to hash it (this machine's clock, like the mtimes it is compared with).
    hashed_ns: i128,
}

/// A file's mtime must be older than its entry by this much for the entry to be trusted: one
/// second covers filesystems whose timestamps have a one-second granularity.
pub const RACY_MARGIN_NS: i128 = 1_000_000_000;

fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

impl HashCache {
    /// The cache saved at `path`; empty when there is none or it does not read (a cache that is
    /// not trusted costs a re-hash, never a wrong key).
    pub fn load(path: &Path) -> Self {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::fsutil::write_json_atomic(path, self)
    }
}

/// The dataset's fingerprint: blake3 over (relative path bytes, content hash) of every listed file,
/// in walk order. Also returns the per-file content hashes (in `listing.files` order); a file that
/// cannot be read gets the hash of its error text, so it still counts and a later fix changes the key.
pub fn fingerprint(listing: &Listing, cache: &mut HashCache) -> (String, Vec<String>) {
    use rayon::prelude::*;
    let keyed: Vec<(String, &DatasetFile)> = listing
        .files
        .iter()
        .map(|f| {
            let abs = listing.root.join(&f.rel);
            (hex_bytes(abs.as_os_str().as_bytes()), f)
        })
        .collect();
    let hashes: Vec<(String, Option<i128>)> = keyed
        .par_iter()
        .map(|(k, f)| {
            if let Some(e) = cache.entries.get(k) {
                let same = e.size == f.size && e.mtime_ns == f.mtime_ns && (e.dev, e.ino) == f.inode;
                if same && f.mtime_ns < e.hashed_ns - RACY_MARGIN_NS {
                    return (e.blake3.clone(), None);
                }
            }
            let hashed_ns = now_ns();
            match blake3_file(&listing.root.join(&f.rel)) {
                Ok((h, _)) => (h, Some(hashed_ns)),
                Err(e) => (crate::hash::blake3_hex(format!("unreadable: {e}").as_bytes()), None),
            }
        })
        .collect();
    for ((k, f), (h, fresh)) in keyed.iter().zip(&hashes) {
        if let Some(hashed_ns) = *fresh {
            cache.entries.insert(
                k.clone(),
                CacheEntry { size: f.size, mtime_ns: f.mtime_ns, dev: f.inode.0, ino: f.inode.1, blake3: h.clone(), hashed_ns },
            );
        }
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"maskflow-dataset-v1\0");
    for (f, (h, _)) in listing.files.iter().zip(&hashes) {
        hasher.update(&(f.rel_bytes().len() as u64).to_le_bytes());
        hasher.update(f.rel_bytes());
        hasher.update(h.as_bytes());
    }
    (hasher.finalize().to_hex().to_string(), hashes.into_iter().map(|(h, _)| h).collect())
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Rebuilds a path from its exact bytes.
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, bytes: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    #[test]
    fn walk_sorts_skips_hidden_reports_strays_and_empty_classes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("b/z.jpg"), b"1");
        touch(&r.join("b/sub/a.jpg"), b"2");
        touch(&r.join("a/y.png"), b"3");
        touch(&r.join("a/.hidden.png"), b"4");
        touch(&r.join(".git/x"), b"5");
        touch(&r.join("stray.jpg"), b"6");
        fs::create_dir_all(r.join("empty")).unwrap();
        let nonutf8 = OsString::from_vec(b"caf\xe9.jpg".to_vec());
        touch(&r.join("a").join(&nonutf8), b"7");
        std::os::unix::fs::symlink(r.join("b"), r.join("b/sub/loop")).unwrap();

        let l = walk(r).unwrap();
        assert_eq!(l.classes, vec!["a", "b", "empty"]);
        let rels: Vec<String> = l.files.iter().map(|f| f.display()).collect();
        assert_eq!(rels, vec!["a/caf\\xE9.jpg", "a/y.png", "b/sub/a.jpg", "b/z.jpg"]);
        assert_eq!(l.files[0].rel_bytes(), b"a/caf\xe9.jpg");
        let what: Vec<&str> = l.notes.iter().map(|n| n.what.as_str()).collect();
        assert!(what.iter().any(|w| w.contains("directly under the dataset root")), "{what:?}");
        assert!(what.iter().any(|w| w.contains("empty class folder")), "{what:?}");
        assert!(what.iter().any(|w| w.contains("symlink loop")), "{what:?}");
    }

    #[test]
    fn fingerprint_ignores_mtime_but_sees_one_byte() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("a/1.jpg"), b"hello");
        touch(&r.join("b/2.jpg"), b"world");
        let mut cache = HashCache::default();
        let (f1, _) = fingerprint(&walk(r).unwrap(), &mut cache);
        // Same bytes, new mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        touch(&r.join("a/1.jpg"), b"hello");
        let (f2, _) = fingerprint(&walk(r).unwrap(), &mut cache);
        assert_eq!(f1, f2);
        touch(&r.join("a/1.jpg"), b"hellp");
        let (f3, hashes) = fingerprint(&walk(r).unwrap(), &mut cache);
        assert_ne!(f1, f3);
        assert_eq!(hashes[0], crate::hash::blake3_hex(b"hellp"));
        // A rename changes the fingerprint too.
        fs::rename(r.join("b/2.jpg"), r.join("b/3.jpg")).unwrap();
        let (f4, _) = fingerprint(&walk(r).unwrap(), &mut HashCache::default());
        assert_ne!(f3, f4);
    }

    fn set_mtime(p: &Path, t: std::time::SystemTime) {
        fs::OpenOptions::new().write(true).open(p).unwrap().set_modified(t).unwrap();
    }

    /// Two classes of one file each; returns the first file.
    fn two_files(r: &Path) -> std::path::PathBuf {
        touch(&r.join("a/1.jpg"), b"hello");
        touch(&r.join("b/2.jpg"), b"world");
        r.join("a/1.jpg")
    }

    #[test]
    fn a_file_rewritten_with_the_same_size_and_mtime_right_after_hashing_is_hashed_again() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let f = two_files(r);
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        let ino = fs::metadata(&f).unwrap().ino();
        let mut cache = HashCache::default();
        let (f1, _) = fingerprint(&walk(r).unwrap(), &mut cache);
        // Same size, same inode, and the mtime set back to what it was: stat cannot tell.
        fs::write(&f, b"HELLO").unwrap();
        set_mtime(&f, mtime);
        assert_eq!(fs::metadata(&f).unwrap().ino(), ino);
        let (f2, hashes) = fingerprint(&walk(r).unwrap(), &mut cache);
        assert_ne!(f1, f2, "a racily clean file was trusted");
        assert_eq!(hashes[0], crate::hash::blake3_hex(b"HELLO"));
    }

    #[test]
    fn an_entry_is_trusted_for_a_file_older_than_it() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let f = two_files(r);
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        set_mtime(&f, hour_ago);
        let mut cache = HashCache::default();
        let (f1, _) = fingerprint(&walk(r).unwrap(), &mut cache);
        // The cache is what answers for an old file: its stat is all that is compared (as git and
        // DVC do), so a same-size rewrite with its mtime set back is not seen — only through it.
        fs::write(&f, b"HELLO").unwrap();
        set_mtime(&f, hour_ago);
        assert_eq!(fingerprint(&walk(r).unwrap(), &mut cache).0, f1);
        assert_ne!(fingerprint(&walk(r).unwrap(), &mut HashCache::default()).0, f1);
    }
}
