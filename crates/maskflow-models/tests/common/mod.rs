//! What the golden tests share: the project venv and its reference scripts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The project venv's `site-packages` (the bootstrap's torch, torchvision, weight packages).
pub fn site_packages() -> PathBuf {
    let lib = workspace().join(".venv/lib");
    let py = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/bootstrap.sh first", lib.display()))
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("python"))
        .expect("a python3.x folder in .venv/lib");
    py.path().join("site-packages")
}

/// The output folder of `tests/py/<script> OUT_DIR ARGS…` run with the venv's python.
///
/// Tests run one per process (cargo-nextest), so the folder is kept under the target directory,
/// named by a hash of what decides its contents: the script, its arguments (paths and the bytes of
/// the files they name), and the venv's pinned Python packages (its bootstrap stamps). A run that
/// fails or is interrupted leaves no folder (it is written beside and renamed into place); a
/// concurrent run that finished first is used as it is.
pub fn run_reference(script: &str, args: &[&Path]) -> PathBuf {
    let root = workspace();
    let script_path = root.join("tests/py").join(script);
    let mut h = blake3::Hasher::new();
    h.update(&std::fs::read(&script_path).unwrap_or_else(|e| panic!("{}: {e}", script_path.display())));
    for a in args {
        h.update(a.to_string_lossy().as_bytes());
        h.update(&std::fs::read(a).unwrap_or_else(|e| panic!("{}: {e}", a.display())));
    }
    for stamp in [".maskflow-bootstrap", ".maskflow-py"] {
        h.update(&std::fs::read(root.join(".venv").join(stamp)).unwrap_or_default());
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-references");
    let dir = cache.join(format!("{script}-{}", &h.finalize().to_hex()[..16]));
    if dir.is_dir() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = tempfile::tempdir_in(&cache).unwrap();
    let python = root.join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(&script_path)
        .arg(tmp.path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/bootstrap.sh --py first", python.display()));
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // Another process may have put the same folder in place meanwhile: then this copy goes.
    let _ = std::fs::rename(tmp.keep(), &dir);
    assert!(dir.is_dir(), "{}", dir.display());
    dir
}
