//! Helpers shared by the integration tests: run the maskflow binary, write pipeline files.
#![allow(dead_code)]

pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_maskflow"))
}

/// Threads of every maskflow process a test starts (`MASKFLOW_THREADS`, what `--threads` reads):
/// the test runner already runs one test per core, so a process that took every core would
/// oversubscribe the machine. A test that asks for `--threads` itself gets what it asks.
pub const THREADS: &str = "1";

/// The maskflow binary as a test starts it: with [`THREADS`].
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("MASKFLOW_THREADS", THREADS);
    cmd
}

pub fn maskflow(dir: &Path, args: &[&str]) -> Output {
    command().current_dir(dir).args(args).output().expect("maskflow runs")
}

/// Runs maskflow and returns stdout, panicking with both streams when it fails.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = maskflow(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "maskflow {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = maskflow(dir, args);
    assert!(!out.status.success(), "maskflow {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `tests/py/SCRIPT ARGS…` with the project venv's Python; its stdout, panicking with its
/// stderr when it fails.
pub fn python(script: &str, args: &[&Path]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/py").join(script))
        .args(args)
        .output()
        .expect("the project venv's python (scripts/bootstrap.sh)");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small synthetic pipeline: `pipelines/p.toml` with data under `data/synth`.
pub fn small_pipeline(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let p = dir.join("pipelines/p.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"p\"\n\n[dataset]\nroot = \"../data/synth\"\n\n[dataset.synth]\nseed = 3\nper_class = 12\n\n\
             [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 8\nfrozen_epochs = 1\n\
             unfrozen_epochs = 1\n\n[eval]\ntop_losses = 4\n\n[export]\n\n\
             [index]\nvalid_pct = 0.25\n\n[prep]\nsize = 32\nshard_rows = 8\nrow_group_rows = 4\n{extra}"
        ),
    )
    .unwrap();
    p
}

/// The key directories of a stage in a store (no dot-entries).
pub fn keys(artifacts: &Path, stage: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(artifacts.join(stage))
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn dot_entries(artifacts: &Path, stage: &str) -> Vec<String> {
    std::fs::read_dir(artifacts.join(stage))
        .map(|it| {
            it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp") || n.starts_with(".trash"))
                .collect()
        })
        .unwrap_or_default()
}
