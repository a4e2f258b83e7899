//! `maskflow eval`: the pipeline's evaluation outputs, and `--data` on folders the model never saw.


use crate::common::*;
use std::fs;

fn eval_dir(d: &std::path::Path) -> std::path::PathBuf {
    let art = d.join("artifacts");
    art.join("eval").join(&keys(&art, "eval")[0])
}

#[test]
fn pipeline_eval_writes_every_output_and_the_matrix_counts_the_validation_rows() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), "");
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(out.contains("train   built") && out.contains("eval    built"), "{out}");
    let dir = eval_dir(d.path());
    for f in [
        "metrics.json",
        "confusion_matrix.csv",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "most_confused.csv",
        "top_losses.png",
        "predictions.parquet",
        "train_show_batch.png",
        "summary.json",
        "report.html",
        "train_curves.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    // The confusion matrix counts sum to the index's validation rows.
    let art = d.path().join("artifacts");
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(art.join("index").join(&keys(&art, "index")[0]).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let valid = index["report"]["valid"].as_u64().unwrap();
    let cm: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("confusion_matrix.json")).unwrap()).unwrap();
    let total: u64 =
        cm["matrix"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, valid);
    assert_eq!(cm["orientation"], "[actual][predicted]");
    // The report links only files that exist.
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    for src in html.split("src=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]) {
        assert!(dir.join(src).is_file(), "report links a missing {src}");
    }
    assert!(html.contains("Provenance") && html.contains("train_show_batch.png"));
    // Recipe values as the pipeline file writes them, never Rust's Debug forms.
    assert!(html.contains("frozen_mode") && html.contains("&quot;faithful&quot;"), "recipe table missing");
    for debug in ["FixedBody", "Faithful", "One(", "Slice("] {
        assert!(!html.contains(debug), "report shows a Debug form {debug}");
    }
    // Top-losses grid: 4 tiles in 2 columns of 180 px.
    let img = image::open(dir.join("top_losses.png")).unwrap();
    assert_eq!(img.width(), 2 * (180 + 8) + 8);
}

#[test]
fn eval_on_unseen_folders_missing_class_unknown_class_and_empty() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), "");
    // An unseen folder: another synthetic draw.
    ok(d.path(), &["synth", "--out", "unseen", "--seed", "99", "--per-class", "6", "--no-bad-files"]);
    let out = ok(d.path(), &["eval", "pipelines/p.toml", "--data", "unseen", "--device", "cpu"]);
    assert!(out.contains("eval.unseen built") && out.contains("report"), "{out}");
    assert!(out.contains("14 images of") && out.contains("(train + valid)"), "every good image of the folder: {out}");
    let again = ok(d.path(), &["eval", "pipelines/p.toml", "--data", "unseen", "--device", "cpu"]);
    assert!(again.contains("eval.unseen cached"), "{again}");

    // Only one class present: metrics still computed, the other reported with support 0.
    fs::create_dir_all(d.path().join("one")).unwrap();
    fs::rename(d.path().join("unseen/with_mask"), d.path().join("one/with_mask")).unwrap();
    let out = ok(d.path(), &["eval", "pipelines/p.toml", "--data", "one", "--device", "cpu"]);
    assert!(out.contains("eval.one built"), "{out}");
    let art = d.path().join("artifacts");
    let found = keys(&art, "eval").into_iter().any(|k| {
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(art.join("eval").join(&k).join("metrics.json")).unwrap()).unwrap();
        m["classes_without_support"] == serde_json::json!(["without_mask"]) && m["per_class"][1]["support"] == 0
    });
    assert!(found, "no eval reported without_mask with support 0");

    // A class the model does not know: refused, naming both lists.
    fs::create_dir_all(d.path().join("other/cats")).unwrap();
    fs::copy(
        fs::read_dir(d.path().join("one/with_mask")).unwrap().next().unwrap().unwrap().path(),
        d.path().join("other/cats/a.png"),
    )
    .ok();
    let err = fails(d.path(), &["eval", "pipelines/p.toml", "--data", "other", "--device", "cpu"]);
    assert!(err.contains("does not know") && err.contains("cats") && err.contains("with_mask"), "{err}");

    // An empty folder.
    fs::create_dir_all(d.path().join("empty")).unwrap();
    let err = fails(d.path(), &["eval", "pipelines/p.toml", "--data", "empty", "--device", "cpu"]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn eval_on_the_pipelines_own_training_folder_reports_every_good_image_not_the_cached_validation_result() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), "\n[eval.everything]\ndata = \"../data/synth\"\n");
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    // 33 files, 28 good: the validation split has fewer; [eval.everything] sees all 28.
    let line = |name: &str, out: &str| out.lines().skip_while(|l| !l.starts_with(name)).nth(1).unwrap_or_default().to_string();
    let valid = line("eval    ", &out);
    let all = line("eval.everything", &out);
    assert!(all.starts_with("        28 images of") && all.contains("(train + valid)"), "{all}\n{out}");
    assert!(!valid.contains("28 images") && valid.contains("the validation split"), "{valid}");
    // The same question through `maskflow eval --data` on the training folder: every good image too,
    // sharing the index and prep artifacts of the pipeline's own data (same content, same keys).
    let out = ok(d.path(), &["eval", "pipelines/p.toml", "--data", "data/synth", "--device", "cpu"]);
    assert!(out.contains("index.synth cached") && out.contains("prep.synth cached"), "{out}");
    assert!(out.contains("eval.synth cached") || out.contains("eval.synth built"), "{out}");
    assert!(out.contains("28 images of"), "{out}");
}
