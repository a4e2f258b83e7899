//! The exported bundle: Python's torch.jit.load gives the same probabilities as `maskflow predict`;
//! predict's formats, bad files and exit code.


use crate::common::*;
use std::fs;
use std::path::PathBuf;

fn bundle_dir(d: &std::path::Path) -> PathBuf {
    let art = d.join("artifacts");
    art.join("export").join(&keys(&art, "export")[0])
}

#[test]
fn python_torchscript_matches_maskflow_predict_and_bad_files_are_reported() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), "");
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(out.contains("export  built"), "{out}");
    let bundle = bundle_dir(d.path());
    for f in ["model.pt", "model.safetensors", "model_card.json", "README.md"] {
        assert!(bundle.join(f).is_file(), "{f}");
    }
    let card: serde_json::Value = serde_json::from_slice(&fs::read(bundle.join("model_card.json")).unwrap()).unwrap();
    assert_eq!(card["classes"], serde_json::json!(["with_mask", "without_mask"]));
    assert_eq!(card["input"]["height"], 32);
    for k in ["model", "metrics"] {
        assert!(card["upstream"][k].is_string(), "upstream {k} missing: {}", card["upstream"]);
    }

    // maskflow predict on the dataset folder (it holds planted bad files too).
    let b = bundle.display().to_string();
    let res = maskflow(d.path(), &["predict", "--bundle", &b, "data/synth", "--format", "jsonl", "--device", "cpu"]);
    assert_eq!(res.status.code(), Some(2), "bad files make the exit code 2");
    let lines = String::from_utf8(res.stdout).unwrap();
    let mut ours = std::collections::HashMap::new();
    let mut errors = 0;
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v.get("error").is_some() {
            errors += 1;
            continue;
        }
        let p = v["probabilities"].as_object().unwrap();
        let probs: Vec<f64> = ["with_mask", "without_mask"].iter().map(|c| p[*c].as_f64().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let rel = v["path"].as_str().unwrap().trim_start_matches("data/synth/").to_string();
        ours.insert(rel, probs);
    }
    assert_eq!(errors, 5, "the five planted bad files each get a line with a reason:\n{lines}");

    // The bundle gives what eval measured: predict's probabilities on the validation images equal
    // the ones in eval's predictions.parquet.
    let eval_dir = d.path().join("artifacts/eval").join(&keys(&d.path().join("artifacts"), "eval")[0]);
    let (classes, rows) = maskflow_contracts::eval::read_predictions(&eval_dir.join("predictions.parquet")).unwrap();
    assert_eq!(classes, ["with_mask", "without_mask"]);
    assert!(rows.len() > 5);
    let mut max_eval_diff = 0.0f64;
    for r in &rows {
        let mine = ours.get(&r.path).unwrap_or_else(|| panic!("predict did not classify {}", r.path));
        for (a, b) in mine.iter().zip(&r.probabilities) {
            max_eval_diff = max_eval_diff.max((a - *b as f64).abs());
        }
    }
    println!("maskflow predict vs eval's predictions.parquet: {} images, max abs difference {max_eval_diff:.2e}", rows.len());
    assert!(max_eval_diff <= 1e-5, "max diff {max_eval_diff}");

    // Python, on the prep shards' pixels.
    let art = d.path().join("artifacts");
    let prep = art.join("prep").join(&keys(&art, "prep")[0]);
    let json = d.path().join("py.json");
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let o = std::process::Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/bundle_interop.py"))
        .args([&bundle, &prep, &json])
        .output()
        .unwrap();
    assert!(o.status.success(), "python failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let py: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let mut max_diff = 0.0f64;
    let mut compared = 0;
    for (path, probs) in py["probs"].as_object().unwrap() {
        let mine = ours.get(path).unwrap_or_else(|| panic!("predict did not classify {path}"));
        for (a, b) in mine.iter().zip(probs.as_array().unwrap()) {
            max_diff = max_diff.max((a - b.as_f64().unwrap()).abs());
        }
        compared += 1;
    }
    println!("torch.jit.load vs maskflow predict: {compared} images, max abs difference {max_diff:.2e}");
    assert!(compared > 20 && max_diff <= 1e-5, "{compared} images, max diff {max_diff}");

    // Table and CSV formats, a glob, a missing path, the threshold.
    let res = maskflow(
        d.path(),
        &["predict", "--bundle", &b, "data/synth/with_mask/*.png", "nope.jpg", "--format", "csv", "--threshold", "0.0"],
    );
    assert_eq!(res.status.code(), Some(2));
    let csv = String::from_utf8(res.stdout).unwrap();
    assert!(csv.starts_with("path,label,with_mask,without_mask,error\n"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("nope.jpg,,") && l.ends_with("no such file or folder")), "{csv}");
    assert!(
        csv.lines().skip(1).filter(|l| !l.starts_with("nope")).all(|l| l.split(',').nth(1) == Some("without_mask")),
        "threshold 0 → positive class everywhere:\n{csv}"
    );
    let good = ok(d.path(), &["predict", "--bundle", &b, "data/synth/with_mask/*.png"]);
    assert!(good.lines().next().unwrap().starts_with("path") && good.lines().count() >= 3, "{good}");

    // Test-time augmentation: predict --tta flip gives what an eval with tta = "flip" measured.
    let pipeline = d.path().join("pipelines/p.toml");
    let text = fs::read_to_string(&pipeline).unwrap();
    fs::write(&pipeline, format!("{text}\n[eval.flip]\ntta = \"flip\"\nrobustness = []\n")).unwrap();
    ok(d.path(), &["run", "pipelines/p.toml", "--until", "eval.flip", "--device", "cpu"]);
    let flip_key = keys(&art, "eval").into_iter().find(|k| eval_dir.file_name().unwrap() != k.as_str()).unwrap();
    let (_, flip_rows) = maskflow_contracts::eval::read_predictions(&art.join("eval").join(flip_key).join("predictions.parquet")).unwrap();
    let res = maskflow(d.path(), &["predict", "--bundle", &b, "data/synth", "--format", "jsonl", "--tta", "flip", "--device", "cpu"]);
    let mut flipped = std::collections::HashMap::new();
    for l in String::from_utf8(res.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(p) = v.get("probabilities").and_then(|p| p.as_object()) {
            let rel = v["path"].as_str().unwrap().trim_start_matches("data/synth/").to_string();
            flipped.insert(rel, ["with_mask", "without_mask"].map(|c| p[c].as_f64().unwrap()));
        }
    }
    let (mut max_tta, mut moved) = (0.0f64, 0.0f64);
    for r in &flip_rows {
        let mine = flipped[&r.path];
        for (i, (a, e)) in mine.iter().zip(&r.probabilities).enumerate() {
            max_tta = max_tta.max((a - *e as f64).abs());
            moved = moved.max((a - ours[&r.path][i]).abs());
        }
    }
    println!("predict --tta flip vs eval tta = flip: max abs difference {max_tta:.2e} (vs plain: {moved:.2e})");
    assert!(max_tta <= 1e-5, "max diff {max_tta}");
    assert!(moved > 1e-4, "the mirror view changed nothing: is TTA applied?");
}
