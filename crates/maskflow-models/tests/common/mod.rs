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

/// Runs `tests/py/<script> OUT_DIR ARGS…` with the venv's python; returns OUT_DIR.
pub fn run_reference(script: &str, args: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let python = workspace().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(workspace().join("tests/py").join(script))
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/bootstrap.sh first", python.display()));
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    dir
}
