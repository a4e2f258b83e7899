//! A real S3 server on loopback for the tests (moto, started by `just test` or, when a test binary
//! runs alone, by the first test that needs it through scripts/s3-server.py; it stops by itself),
//! and helpers to run maskflow against it.
#![allow(dead_code)]

use super::*;
use maskflow_remote::Remote;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BUCKET: &str = "maskflow-test";

/// The S3 endpoint: `MASKFLOW_TEST_S3_ENDPOINT` (its bucket made by whoever started it), or a
/// server started here for this test binary.
pub fn endpoint() -> &'static str {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        if let Ok(ep) = std::env::var("MASKFLOW_TEST_S3_ENDPOINT") {
            return ep;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        let mut child = Command::new(&python)
            .arg(root.join("scripts/s3-server.py"))
            .args(["--max-seconds", "1800", BUCKET])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}: the S3 test server needs `scripts/bootstrap.sh --s3`", python.display()));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "S3 server did not start (moto installed? scripts/bootstrap.sh --s3): {line:?}");
        // The server watches its parent and exits with this test process.
        std::mem::forget(child);
        line.trim().to_string()
    })
}

pub fn s3_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("MASKFLOW_STORE")
}

/// A fresh prefix in the test bucket.
pub fn store_url(test: &str) -> String {
    format!("s3://{BUCKET}/{test}-{}", maskflow_core::fsutil::unique_suffix())
}

pub fn remote(url: &str) -> Remote {
    Remote::open_with(
        url,
        &[
            ("aws_endpoint", endpoint()),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ],
    )
    .unwrap()
}

pub fn mf(dir: &Path, args: &[&str]) -> Output {
    s3_env(command().current_dir(dir).args(args)).output().expect("maskflow runs")
}

pub fn mf_ok(dir: &Path, args: &[&str]) -> String {
    let out = mf(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "maskflow {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout + &stderr
}

/// A small pipeline in its own "machine" folder (the synthetic data is generated there).
pub fn machine(root: &Path, name: &str, train_extra: &str) -> PathBuf {
    let dir = root.join(name);
    small_pipeline(&dir, "");
    if !train_extra.is_empty() {
        let p = dir.join("pipelines/p.toml");
        let text = fs::read_to_string(&p).unwrap().replace("[train]\n", &format!("[train]\n{train_extra}\n"));
        fs::write(p, text).unwrap();
    }
    dir
}

/// stage instance → (key, pulled, cached) from the latest run record of `dir`.
pub fn record(dir: &Path) -> BTreeMap<String, (String, bool, bool)> {
    record_in(&dir.join("artifacts"))
}

pub fn record_in(artifacts: &Path) -> BTreeMap<String, (String, bool, bool)> {
    let text = fs::read_to_string(artifacts.join("runs/p/latest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                (s["key"].as_str().unwrap().to_string(), s["pulled"].as_bool().unwrap_or(false), s["cached"].as_bool().unwrap()),
            )
        })
        .collect()
}

/// Every file of an artifact (manifest excluded), path → bytes.
pub fn files(art: &Path) -> BTreeMap<String, Vec<u8>> {
    maskflow_core::fsutil::list_files_recursive(art)
        .unwrap()
        .into_iter()
        .map(|rel| (maskflow_core::fsutil::rel_string(&rel), fs::read(art.join(&rel)).unwrap()))
        .filter(|(p, _)| p != "manifest.json")
        .collect()
}

