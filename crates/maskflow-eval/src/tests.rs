//! The eval stage on fixtures alone: a randomly initialised model and fixture shards — no index,
//! prep or training run.

use maskflow_contracts::fixtures;
use maskflow_contracts::model::Arch;
use crate::{EvalParams, EvalStage, Inputs, Provenance, Splits};
use std::path::Path;

fn classes() -> Vec<String> {
    vec!["with_mask".into(), "without_mask".into()]
}

/// (model, shards, index) fixture folders under `dir`.
fn artifacts(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let imgs = fixtures::images(2, 10, 32, 5);
    let (model, shards, index) = (dir.join("model"), dir.join("shards"), dir.join("index"));
    fixtures::shard_set(&shards, &classes(), 32, &imgs, 8, 4).unwrap();
    fixtures::index_table(&index, Path::new("/data/faces"), &classes(), &imgs).unwrap();
    maskflow_models::trained::fixture(&model, &fixtures::train_config(Arch::Resnet18, &classes(), 32), 3).unwrap();
    (model, shards, index)
}

fn run(dir: &Path, splits: Splits, out: &str) -> anyhow::Result<crate::EvalReport> {
    let (model, shards, index) = artifacts(dir);
    let params = EvalParams { splits: Some(splits), top_losses: 4, ..Default::default() };
    let inputs = Inputs {
        model_dir: &model,
        data_dir: &shards,
        index_dir: Some(&index),
        provenance: Provenance { key: "k".into(), params: params.clone(), inputs: [("model".to_string(), "m".to_string())].into() },
    };
    let out = dir.join(out);
    std::fs::create_dir_all(&out)?;
    crate::run(&inputs, &params, &crate::EvalRuntime { device: tch::Device::Cpu, threads: 1, progress: false }, &out)
}

#[test]
fn every_image_of_the_asked_splits_is_evaluated_and_the_outputs_agree() {
    let d = tempfile::tempdir().unwrap();
    let all = run(d.path(), Splits::All, "all").unwrap();
    assert_eq!(all.images, 20);
    assert_eq!(all.splits, ["train", "valid"]);
    assert!(all.data.contains("/data/faces"), "{}", all.data);
    let valid = run(d.path(), Splits::Valid, "valid").unwrap();
    assert_eq!(valid.images, 4);
    assert_eq!(valid.data, "the validation split");
    // The matrix, the predictions table and the metrics describe the same images.
    let out = d.path().join("all");
    let total: u64 = all.confusion_matrix.iter().flatten().sum();
    assert_eq!(total, 20);
    let correct: u64 = (0..2).map(|i| all.confusion_matrix[i][i]).sum();
    assert!((all.accuracy - correct as f64 / 20.0).abs() < 1e-12);
    let (cls, rows) = maskflow_contracts::eval::read_predictions(&out.join("predictions.parquet")).unwrap();
    assert_eq!(cls, classes());
    assert_eq!(rows.len(), 20);
    for r in &rows {
        assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let p_actual = r.probabilities[cls.iter().position(|c| c == &r.label).unwrap()] as f64;
        assert!((r.loss + p_actual.max(1e-15).ln()).abs() < 1e-4, "{r:?}");
    }
    let log_loss = rows.iter().map(|r| r.loss).sum::<f64>() / 20.0;
    assert!((log_loss - all.log_loss).abs() < 1e-6);
    // The report: the recipe as written, provenance limited to what the key covers.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("&quot;resnet18&quot;"), "recipe missing");
    assert!(html.contains("&quot;key&quot;: &quot;k&quot;") && html.contains("&quot;model&quot;: &quot;m&quot;"), "provenance missing");
    assert!(!html.contains(".toml"), "the report names a pipeline file, which its key does not cover");
    for f in ["metrics.json", "confusion_matrix.png", "top_losses.png", "summary.json", "most_confused.csv", "robustness.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The robustness section: every family at the default severities, its means, in the report.
    let m = maskflow_contracts::eval::read_metrics(&out).unwrap();
    let r = m.robustness.expect("robustness in metrics.json");
    assert_eq!(r.clean_accuracy, m.accuracy);
    assert_eq!(r.scores.len(), 6 * 3);
    assert_eq!(r.per_family.len(), 6);
    let mean = r.scores.iter().map(|s| s.accuracy).sum::<f64>() / 18.0;
    assert!((r.mean_corruption_accuracy - mean).abs() < 1e-12);
    assert_eq!(all.mean_corruption_accuracy, Some(r.mean_corruption_accuracy));
    for s in &r.scores {
        assert!((0.0..=1.0).contains(&s.accuracy) && s.recall.len() == 2 && [1, 3, 5].contains(&s.severity), "{s:?}");
    }
    assert!(html.contains("<h2>Robustness</h2>") && html.contains("robustness.png"));
}

#[test]
fn robustness_can_be_turned_off_and_tta_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let (model, shards, index) = artifacts(d.path());
    let params = EvalParams {
        splits: Some(Splits::All),
        robustness: vec![],
        tta: crate::Tta::Flip,
        ..Default::default()
    };
    let inputs = Inputs {
        model_dir: &model,
        data_dir: &shards,
        index_dir: Some(&index),
        provenance: Provenance { key: "k".into(), params: params.clone(), inputs: Default::default() },
    };
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let rt = crate::EvalRuntime { device: tch::Device::Cpu, threads: 1, progress: false };
    let report = crate::run(&inputs, &params, &rt, &out).unwrap();
    assert_eq!(report.mean_corruption_accuracy, None);
    assert!(!out.join("robustness.png").exists());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("<h2>Robustness</h2>") && html.contains("tta = \"flip\""));
}

#[test]
fn severities_outside_one_to_five_are_refused() {
    use maskflow_stage::Stage;
    let bad = EvalParams { severities: vec![0, 3], ..Default::default() };
    assert!(EvalStage::validate(&bad).unwrap_err().contains("not a severity"));
    let none = EvalParams { severities: vec![], ..Default::default() };
    assert!(EvalStage::validate(&none).is_err());
    assert!(EvalStage::validate(&EvalParams { severities: vec![], robustness: vec![], ..Default::default() }).is_ok());
}

#[test]
fn data_with_a_class_the_model_does_not_know_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (model, _, _) = artifacts(d.path());
    let other = d.path().join("cats");
    let names = vec!["cats".to_string(), "with_mask".to_string()];
    fixtures::shard_set(&other, &names, 32, &fixtures::images(2, 5, 32, 1), 8, 4).unwrap();
    let params = EvalParams { splits: Some(Splits::All), ..Default::default() };
    let inputs = Inputs {
        model_dir: &model,
        data_dir: &other,
        index_dir: None,
        provenance: Provenance { key: "k".into(), params: params.clone(), inputs: Default::default() },
    };
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let err = crate::run(&inputs, &params, &crate::EvalRuntime { device: tch::Device::Cpu, threads: 1, progress: false }, &out).unwrap_err().to_string();
    assert!(err.contains("does not know") && err.contains("cats"), "{err}");
}

#[test]
fn the_key_covers_every_eval_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<EvalStage>();
}

#[test]
fn byte_identical_copies_collapse_to_one_top_loss_tile_and_count_once_in_most_confused() {
    let hashes: Vec<String> = ["a", "b", "a", "c", "a", "b"].map(String::from).to_vec();
    let groups = crate::duplicate_groups(&hashes);
    assert_eq!(groups, [0, 1, 0, 3, 0, 1]);
    // Three copies of one photo with the highest loss: one tile marked ×3, then the next photos.
    let losses = [2.0, 1.0, 2.0, 0.5, 2.0, 1.0];
    assert_eq!(crate::top_loss_rows(&losses, &groups, 9), [(0, 3), (1, 2), (3, 1)]);
    assert_eq!(crate::top_loss_rows(&losses, &groups, 2), [(0, 3), (1, 2)]);
    // With an index, near-duplicates (one dHash group, different bytes) are copies too.
    let row = |hash: &str, group: &str| maskflow_contracts::index::IndexRow {
        path: format!("x/{hash}.png"),
        path_raw: format!("x/{hash}.png").into_bytes(),
        label: "x".into(),
        label_idx: 0,
        content_hash: hash.into(),
        group_hash: group.into(),
        bytes: 1,
        format: None,
        width: None,
        height: None,
        dhash: None,
        split: Some("valid".into()),
        status: "ok".into(),
        reason: None,
        detail: None,
        given_label: None,
    };
    let rows = [row("a", "a"), row("b", "b"), row("c", "b")];
    let keys = crate::group_keys(&["a".into(), "b".into(), "c".into(), "d".into()], Some(&rows));
    assert_eq!(keys, ["a", "b", "b", "d"]);
    assert_eq!(crate::group_keys(&["c".into()], None), ["c"]);
    // Five images called class 0 while labelled 1, of two distinct photos.
    let cells = crate::distinct_per_cell(&[1, 1, 1, 0, 1, 1], &[0; 6], &groups);
    assert_eq!((cells[&(1, 0)], cells[&(0, 0)]), (2, 1));
}

#[test]
fn most_confused_csv_counts_images_and_distinct_images() {
    let d = tempfile::tempdir().unwrap();
    let all = run(d.path(), Splits::All, "all").unwrap();
    let csv = std::fs::read_to_string(d.path().join("all/most_confused.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("actual,predicted,count,distinct_images"));
    let off_diagonal: u64 = (0..2).flat_map(|a| (0..2).filter(move |&p| p != a).map(move |p| (a, p))).map(|(a, p)| all.confusion_matrix[a][p]).sum();
    let mut listed = 0;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        // The fixture's images are all distinct.
        assert_eq!(f[2], f[3], "{l}");
        listed += f[2].parse::<u64>().unwrap();
    }
    assert_eq!(listed, off_diagonal);
}
