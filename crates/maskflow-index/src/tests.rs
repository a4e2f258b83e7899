use super::*;
use maskflow_core::dataset::DatasetFile;
use maskflow_synth::{generate, SynthParams};
use std::collections::HashMap;
use std::path::PathBuf;

fn no_progress(_: u64) {}

fn index_dir(root: &Path, params: &IndexParams) -> (Vec<IndexRow>, IndexSummary) {
    let out = tempfile::tempdir().unwrap();
    let report = run(root, "test", params, None, out.path(), &no_progress).unwrap();
    (read_index(&out.path().join(INDEX_FILE)).unwrap(), report)
}

fn synth(dir: &Path, per_class: usize, seed: u64) {
    generate(&SynthParams { per_class, seed, ..SynthParams::default() }, dir).unwrap();
}

#[test]
fn synthetic_dataset_rows_rejections_and_groups() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), 40, 7);
    let (rows, report) = index_dir(d.path(), &IndexParams::default());
    // 80 drawn + 4 exact copies (i = 3, 28) + 4 near copies (i = 11, 36) + 5 bad files.
    assert_eq!(rows.len(), 93);
    assert_eq!(report.files, 93);
    assert_eq!(report.rejected, 5);
    let reasons: HashMap<&str, &str> = rows
        .iter()
        .filter(|r| r.status == "rejected")
        .map(|r| (r.path.as_str(), r.reason.as_deref().unwrap()))
        .collect();
    assert_eq!(reasons["with_mask/broken_empty.jpg"], "empty");
    assert_eq!(reasons["with_mask/broken_truncated.jpg"], "truncated");
    assert_eq!(reasons["without_mask/broken_notes.jpg"], "not_an_image");
    assert_eq!(reasons["without_mask/broken_bomb.png"], "too_large");
    assert_eq!(reasons["without_mask/broken_photo.heic"], "unsupported_format");
    for r in rows.iter().filter(|r| r.status == "rejected") {
        assert!(r.split.is_none() && r.detail.is_some());
    }
    assert_eq!(report.classes, vec!["with_mask", "without_mask"]);
    assert!(rows.iter().all(|r| r.label_idx == if r.label == "with_mask" { 0 } else { 1 }));
    // Exact copies share a group and a side.
    assert_eq!(report.exact_duplicate_groups, 4);
    assert_eq!(report.groups_across_sides, 0);
    let by_path: HashMap<&str, &IndexRow> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
    for r in rows.iter().filter(|r| r.path.contains("/copy of ")) {
        let orig = by_path[r.path.replace("copy of ", "").as_str()];
        assert_eq!(orig.content_hash, r.content_hash);
        assert_eq!(orig.split, r.split);
    }
    // Near copies (resized + re-encoded) join their original's group.
    let near: Vec<&IndexRow> = rows.iter().filter(|r| r.path.contains("/near ")).collect();
    assert_eq!(near.len(), 4);
    for r in near {
        let stem = r.path.replace("near ", "");
        let stem = stem.trim_end_matches(".jpg");
        let orig = rows
            .iter()
            .find(|o| o.path != r.path && o.path.starts_with(stem) && !o.path.contains("copy of"))
            .unwrap_or_else(|| panic!("no original for {}", r.path));
        assert_ne!(orig.content_hash, r.content_hash);
        assert_eq!(orig.group_hash, r.group_hash, "{} not grouped with {}", r.path, orig.path);
        assert_eq!(orig.split, r.split);
    }
    assert!(report.near_duplicate_groups >= 4);
    // Formats sniffed from content, whatever the extension says.
    for r in rows.iter().filter(|r| r.status == "ok") {
        let f = r.format.as_deref().unwrap();
        assert!(["jpeg", "png", "webp"].contains(&f), "{f}");
        assert!(r.width.unwrap() >= 64 && r.height.unwrap() >= 64);
    }
}

#[test]
fn adding_100_files_moves_no_other_file() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), 40, 7);
    let (before, _) = index_dir(d.path(), &IndexParams::default());
    // 100 more, other pictures, other names.
    let extra = tempfile::tempdir().unwrap();
    synth(extra.path(), 50, 1234);
    for class in maskflow_synth::CLASSES {
        for e in std::fs::read_dir(extra.path().join(class)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("broken_") || name.starts_with("copy of") || name.starts_with("near ") {
                continue;
            }
            std::fs::copy(e.path(), d.path().join(class).join(format!("added {name}"))).unwrap();
        }
    }
    let (after, _) = index_dir(d.path(), &IndexParams::default());
    assert_eq!(after.len(), before.len() + 100);
    let after_by_path: HashMap<&str, &IndexRow> = after.iter().map(|r| (r.path.as_str(), r)).collect();
    for r in &before {
        assert_eq!(after_by_path[r.path.as_str()].split, r.split, "{} moved", r.path);
    }
}

#[test]
fn realised_fraction_on_10k_hashes_and_seed_changes_split() {
    let n = 10_000;
    let listing = Listing {
        root: PathBuf::from("/nonexistent"),
        classes: vec!["a".into(), "b".into()],
        files: (0..n)
            .map(|i| DatasetFile {
                rel: PathBuf::from(format!("{}/{i}.jpg", if i % 2 == 0 { "a" } else { "b" })),
                label: if i % 2 == 0 { "a".into() } else { "b".into() },
                size: 1,
                mtime_ns: 0,
                inode: (0, i as u64),
            })
            .collect(),
        notes: vec![],
    };
    let examined: Vec<Examined> = (0..n)
        .map(|i: usize| Examined {
            content_hash: blake3_hex(&i.to_le_bytes()),
            bytes: 1,
            outcome: Ok(Header { format: "jpeg".into(), width: 1, height: 1, dhash: 0 }),
        })
        .collect();
    let p = IndexParams::default();
    let rows = assemble(&listing, &examined, &p);
    let valid = rows.iter().filter(|r| r.split.as_deref() == Some("valid")).count();
    let frac = valid as f64 / n as f64;
    assert!((frac - 0.2).abs() < 0.012, "realised {frac}");
    for class in ["a", "b"] {
        let (v, t) = rows.iter().filter(|r| r.label == class).fold((0, 0), |(v, t), r| {
            (v + (r.split.as_deref() == Some("valid")) as usize, t + 1)
        });
        assert!((v as f64 / t as f64 - 0.2).abs() < 0.02);
    }
    let rows2 = assemble(&listing, &examined, &IndexParams { seed: 43, ..p.clone() });
    let moved = rows.iter().zip(&rows2).filter(|(a, b)| a.split != b.split).count();
    assert!(moved > 2000, "another seed must draw another split ({moved} moved)");
    // Same inputs → same split.
    assert_eq!(rows, assemble(&listing, &examined, &p));
}

#[test]
fn output_is_identical_across_thread_counts() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), 20, 3);
    let run_with = |threads: usize| {
        let out = tempfile::tempdir().unwrap();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(d.path(), "test", &IndexParams::default(), None, out.path(), &no_progress).unwrap());
        std::fs::read(out.path().join(INDEX_FILE)).unwrap()
    };
    assert_eq!(run_with(1), run_with(2));
}

#[test]
fn the_key_covers_every_index_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<IndexStage>();
}

#[test]
fn a_label_overrides_file_relabels_and_excludes_and_is_counted() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), 20, 3);
    let (plain, plain_report) = index_dir(d.path(), &IndexParams::default());
    let ok: Vec<&IndexRow> = plain.iter().filter(|r| r.status == "ok").collect();
    let (flip, drop) = (ok.iter().find(|r| r.label == "without_mask").unwrap(), ok[0]);
    let file = d.path().join("overrides.csv");
    std::fs::write(&file, format!("path,label\n# decided by a human\n{},with_mask\n{},exclude\n", flip.path, drop.path)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = run(d.path(), "test", &IndexParams::default(), Some(&file), out.path(), &no_progress).unwrap();
    let rows = read_index(&out.path().join(INDEX_FILE)).unwrap();
    let by_path: HashMap<&str, &IndexRow> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
    let f = by_path[flip.path.as_str()];
    assert_eq!((f.label.as_str(), f.label_idx, f.given_label.as_deref()), ("with_mask", 0, Some("without_mask")));
    assert_eq!(f.split, flip.split, "a relabel moves nothing across the split");
    let x = by_path[drop.path.as_str()];
    assert_eq!((x.status.as_str(), x.split.as_deref()), ("excluded", None));
    assert!(x.detail.as_deref().unwrap().contains("line 4"));
    assert_eq!((report.overridden, report.excluded), (1, 1));
    assert_eq!(report.accepted, plain_report.accepted - 1);
    assert_eq!(report.rejected, plain_report.rejected, "an exclusion is not a rejection");
    assert_eq!(report.per_class["with_mask"].accepted, plain_report.per_class["with_mask"].accepted + 1 - usize::from(drop.label == "with_mask"));
    assert!(report.summary_line().contains("1 relabelled, 1 excluded"), "{}", report.summary_line());
    // The rest is untouched.
    for (a, b) in plain.iter().zip(&rows) {
        if a.path != flip.path && a.path != drop.path {
            assert_eq!(a, b);
        }
    }
    // A path that names no file is an error naming the file and line, not a silent no-op.
    std::fs::write(&file, "with_mask/nope.jpg,exclude\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = run(d.path(), "test", &IndexParams::default(), Some(&file), out.path(), &no_progress).unwrap_err().to_string();
    assert!(e.contains("overrides.csv:1") && e.contains("with_mask/nope.jpg"), "{e}");
}
