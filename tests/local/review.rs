//! `maskflow review` and a label-overrides file through the binary, on the synthetic dataset: the
//! review lists its evidence as CSV, HTML and an overrides draft; a decision file changes the index
//! key and its counts, never the folder; a decision naming no file is an error with file and line.


use crate::common::*;
use std::fs;

fn pipeline(overrides: Option<&str>) -> String {
    format!(
        "name = \"r\"\n\n[dataset]\nroot = \"../data/synth\"\n{}\n[dataset.synth]\nseed = 5\nper_class = 14\n\n\
         [index]\nvalid_pct = 0.25\n\n[prep]\nsize = 32\n\n[review]\nfolds = 3\nsteps = 60\nprecision = \"fp32\"\nbatch_size = 16\n",
        overrides.map(|o| format!("overrides = \"{o}\"\n")).unwrap_or_default()
    )
}

#[test]
fn review_lists_evidence_and_overrides_change_the_index_key_and_counts() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(d.path().join("pipelines/r.toml"), pipeline(None)).unwrap();
    let out = ok(d.path(), &["review", "pipelines/r.toml", "--device", "cpu"]);
    assert!(out.contains("out-of-fold accuracy") && out.contains("look: ") && out.contains("review.html"), "{out}");
    let art = d.path().join("artifacts");
    let review = art.join("review").join(&keys(&art, "review")[0]);
    let csv = fs::read_to_string(review.join("review.csv")).unwrap();
    assert!(csv.starts_with("path,given_label,suspected_label,p_given,copies,split,evidence,content_hash\n"), "{csv}");
    let summary: serde_json::Value = serde_json::from_str(&fs::read_to_string(review.join("summary.json")).unwrap()).unwrap();
    let index_dir = art.join("index").join(&keys(&art, "index")[0]);
    let rows = maskflow_contracts::index::read_index(&index_dir.join("index.parquet")).unwrap();
    let accepted: Vec<_> = rows.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(summary["images"], accepted.len());
    assert_eq!(summary["suspected_files"].as_u64().unwrap() as usize, csv.lines().count() - 1);
    // Every CSV row has a thumbnail on the page and a commented-out line in the draft.
    let html = fs::read_to_string(review.join("review.html")).unwrap();
    let draft = fs::read_to_string(review.join("overrides-draft.csv")).unwrap();
    for line in csv.lines().skip(1) {
        let path = line.split(',').next().unwrap();
        assert!(html.contains(&format!("<code>{path}</code>")), "{path} missing from the page");
        assert!(draft.contains(&format!("# {path},")), "{path} missing from the draft");
    }
    // One thumbnail per group of copies, each shown on the page.
    let thumbs: Vec<String> = fs::read_dir(review.join("thumbs"))
        .map(|it| it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert_eq!(thumbs.len() as u64, summary["suspected_groups"].as_u64().unwrap());
    for t in &thumbs {
        assert!(html.contains(&format!("thumbs/{t}")), "{t} not on the page");
    }
    // A second review is cached.
    let again = ok(d.path(), &["review", "pipelines/r.toml", "--device", "cpu"]);
    assert!(again.contains("cached"), "{again}");

    // A human decides: relabel one file, exclude another.
    let listing_before = dir_listing(&d.path().join("data/synth"));
    let (relabel, exclude) = (accepted.iter().find(|r| r.label == "without_mask").unwrap(), accepted[0]);
    fs::write(
        d.path().join("pipelines/labels.csv"),
        format!("path,label\n{},with_mask\n{},exclude\n", relabel.path, exclude.path),
    )
    .unwrap();
    fs::write(d.path().join("pipelines/r.toml"), pipeline(Some("labels.csv"))).unwrap();
    let st = ok(d.path(), &["status", "pipelines/r.toml"]);
    let index_line = st.lines().find(|l| l.starts_with("index")).unwrap();
    assert!(!index_line.contains("cached"), "{st}");
    let run = ok(d.path(), &["run", "pipelines/r.toml", "--until", "index", "--device", "cpu"]);
    assert!(run.contains("1 relabelled, 1 excluded"), "{run}");
    assert_eq!(keys(&art, "index").len(), 2, "the overrides make another index key");
    let new_dir = art.join("index").join(keys(&art, "index").into_iter().find(|k| index_dir.file_name().unwrap() != k.as_str()).unwrap());
    let new_rows = maskflow_contracts::index::read_index(&new_dir.join("index.parquet")).unwrap();
    let r = new_rows.iter().find(|r| r.path == relabel.path).unwrap();
    assert_eq!((r.label.as_str(), r.given_label.as_deref()), ("with_mask", Some("without_mask")));
    assert_eq!(new_rows.iter().find(|r| r.path == exclude.path).unwrap().status, "excluded");
    let s: serde_json::Value = serde_json::from_str(&fs::read_to_string(new_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((s["overridden"].as_u64(), s["excluded"].as_u64(), s["accepted"].as_u64()), (Some(1), Some(1), Some(accepted.len() as u64 - 1)));
    assert_eq!(dir_listing(&d.path().join("data/synth")), listing_before, "the folder is never modified");
    // Editing the file's content (not its name) changes the key again.
    fs::write(d.path().join("pipelines/labels.csv"), format!("{},exclude\n", relabel.path)).unwrap();
    ok(d.path(), &["run", "pipelines/r.toml", "--until", "index", "--device", "cpu"]);
    assert_eq!(keys(&art, "index").len(), 3);
    // A decision about a file that is not there: an error naming the file and the line.
    fs::write(d.path().join("pipelines/labels.csv"), "path,label\nwith_mask/not-here.jpg,exclude\n").unwrap();
    let err = fails(d.path(), &["run", "pipelines/r.toml", "--until", "index", "--device", "cpu"]);
    assert!(err.contains("labels.csv:2") && err.contains("with_mask/not-here.jpg"), "{err}");
    fs::remove_file(d.path().join("pipelines/labels.csv")).unwrap();
    let err = fails(d.path(), &["status", "pipelines/r.toml"]);
    assert!(err.contains("labels.csv"), "{err}");
}

/// Every file under `dir` with its size and modification time.
fn dir_listing(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().display().to_string(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}
