//! The `deteval` stage in a pipeline: a classifier trained on the faces of whole photos, exported,
//! then the face detector + that classifier scored on an annotated Pascal VOC folder
//! (`tests/py/annotated_scenes.py`), checked against pycocotools on the same detections.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};

const CLASSES: &str = "classes = { astronaut_face = \"astronaut\", camera_face = \"camera\" }";

fn pipeline(dir: &Path) {
    fs::create_dir_all(dir.join("pipelines")).unwrap();
    fs::write(
        dir.join("pipelines/p.toml"),
        format!(
            "name = \"p\"\n[dataset]\nroot = \"../data/photos\"\n\n[faces]\n\n\
             [index]\nvalid_pct = 0.25\n\n[prep]\nsize = 32\nshard_rows = 8\nrow_group_rows = 4\n\n\
             [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 4\nfrozen_epochs = 1\nunfrozen_epochs = 1\n\n\
             [export]\n\n\
             [deteval]\ndata = \"../data/scenes\"\npart = \"all\"\n[deteval.annotations]\n{CLASSES}\n\n\
             [deteval.mtcnn]\ndata = \"../data/scenes\"\npart = \"all\"\n\
             annotations = {{ classes = {{ astronaut_face = \"astronaut\", camera_face = \"cameraman\" }} }}\n\
             detector = {{ kind = \"mtcnn\", min_face_size = 16 }}\n\n\
             [deteval.own]\ndata = \"../data/scenes\"\npart = \"all\"\nlabels = \"detector\"\n\
             annotations = {{ classes = {{ astronaut_face = \"with_mask\", camera_face = \"without_mask\" }} }}\n"
        ),
    )
    .unwrap();
}

fn result(art: &Path, key: &str) -> (PathBuf, serde_json::Value) {
    let dir = art.join("deteval").join(key);
    let v = serde_json::from_slice(&fs::read(dir.join("detection.json")).unwrap()).unwrap();
    (dir, v)
}

fn close(a: &serde_json::Value, b: f64, what: &str) {
    let a = a.as_f64().unwrap_or(-1.0);
    assert!((a - b).abs() <= 1e-4, "{what}: maskflow {a}, pycocotools {b}");
}

#[test]
fn deteval_scores_a_detector_and_classifier_on_annotated_photos_as_pycocotools_does() {
    let d = tempfile::tempdir().unwrap();
    python("face_photos.py", &[&d.path().join("data/photos")]);
    python("annotated_scenes.py", &[&d.path().join("data/scenes")]);
    pipeline(d.path());
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    eprintln!("{out}");
    let art = d.path().join("artifacts");
    let k = keys(&art, "deteval");
    assert_eq!(k.len(), 3, "{k:?}");
    let mut seen = Vec::new();
    for key in &k {
        let (dir, r) = result(&art, key);
        let setup = format!("{} + {}", r["detector"].as_str().unwrap(), r["labeller"].as_str().unwrap());
        seen.push(setup.clone());
        // 12 photos scored; the four bad annotation files counted by reason, nothing else dropped.
        assert_eq!(r["photos"], 12, "{setup}");
        let rejected = &r["rejected"];
        for reason in ["missing_image", "unknown_class", "bad_box", "malformed"] {
            assert_eq!(rejected[reason], 1, "{setup}: {rejected}");
        }
        // 14 faces, one of them difficult (counted neither way): 13 at the operating point, 12 of
        // them at least 32 px.
        let op = &r["operating"];
        assert_eq!((op["faces"].as_u64(), op["faces_min_side"].as_u64()), (Some(13), Some(12)), "{setup}: {op}");
        assert!(op["recall_min_side"].as_f64().unwrap() >= 0.9, "{setup}: {op}");
        // The labels' confusion covers every face found.
        let m: Vec<Vec<u64>> = serde_json::from_value(r["labels"]["matrix"].clone()).unwrap();
        let labelled: u64 = m.iter().flatten().sum::<u64>();
        assert_eq!(labelled, op["found"].as_u64().unwrap(), "{setup}: {}", r["labels"]);
        // MTCNN's instance keeps the cameraman's faces apart from the classifier's classes: found,
        // shown in their own row, scored neither way.
        let not_scored: Vec<String> = serde_json::from_value(r["labels"]["not_scored"].clone()).unwrap();
        assert_eq!(not_scored, if setup.starts_with("mtcnn") { vec!["cameraman".to_string()] } else { vec![] }, "{setup}");

        // pycocotools on the same faces and detections gives the same figures.
        let coco: serde_json::Value = serde_json::from_str(&python("cocoeval_scored.py", &[&dir.join("detections.json")])).unwrap();
        let names = ["ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"];
        for (i, n) in names.iter().enumerate() {
            close(&r["faces"][n], coco["faces"][i].as_f64().unwrap(), &format!("{setup} faces {n}"));
            close(&r["mean"][n], coco["classes"][i].as_f64().unwrap(), &format!("{setup} classes {n}"));
        }
        close(&r["faces"]["ar"], coco["faces"][8].as_f64().unwrap(), &format!("{setup} faces ar"));
        let classes: Vec<String> = serde_json::from_value(r["classes"].clone()).unwrap();
        for (c, want) in classes.iter().zip(coco["per_class_ap50"].as_array().unwrap()) {
            close(&r["per_class"][c]["ap50"], want.as_f64().unwrap_or(-1.0), &format!("{setup} {c} ap50"));
        }
        assert!(r["faces"]["ap50"].as_f64().unwrap() > 0.8, "{setup}: {}", r["faces"]);

        // The pictures and the page: the PR curve, the worst photos drawn, every image it shows there.
        let png = image::open(dir.join("pr_curve.png")).unwrap();
        assert!(png.width() >= 600);
        let html = fs::read_to_string(dir.join("report.html")).unwrap();
        let shown: Vec<&str> = html.split("<img src=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
        assert!(shown.contains(&"pr_curve.png"), "{setup}");
        for f in &shown {
            assert!(dir.join(f).is_file(), "{setup}: report.html shows {f}, which is not there");
        }
        let worst = r["worst"].as_array().unwrap();
        assert!(!worst.is_empty() && shown.len() == 1 + worst.len().min(12), "{setup}: {} worst, {} shown", worst.len(), shown.len());
        // One face under 32² px of area (COCO's small), 11 medium, one large.
        assert_eq!(op["by_size"]["small"][0], 1, "{setup}: {op}");
    }
    seen.sort();
    assert_eq!(seen, ["mtcnn + classifier", "ssd + classifier", "ssd + detector"]);
    assert!(out.contains("deteval") && out.contains("face AP@.5"), "{out}");

    // Cached on a second run; a changed annotation re-keys the deteval instances and nothing else.
    let again = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(!again.contains("built in"), "{again}");
    let xml = d.path().join("data/scenes/annotations/single-0.xml");
    let text = fs::read_to_string(&xml).unwrap();
    fs::write(&xml, text.replace("<difficult>0</difficult>", "<difficult>1</difficult>")).unwrap();
    let changed = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert_eq!(changed.matches("built in").count(), 3, "{changed}");
    assert_eq!(keys(&art, "deteval").len(), 6);
    assert_eq!(keys(&art, "export").len(), 1);
}

#[test]
fn deteval_without_a_class_map_or_labelled_by_mtcnn_fails_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::create_dir_all(d.path().join("data/photos/a")).unwrap();
    fs::write(d.path().join("pipelines/p.toml"), "[dataset]\nroot = \"../data/photos\"\n[deteval]\ndata = \"../data/scenes\"\n").unwrap();
    let err = fails(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(err.contains("p.toml") && err.contains("deteval.annotations: classes: map the set's class names"), "{err}");
    fs::write(
        d.path().join("pipelines/p.toml"),
        "[dataset]\nroot = \"../data/photos\"\n[deteval]\ndata = \"../data/scenes\"\nlabels = \"detector\"\ndetector = { kind = \"mtcnn\" }\n[deteval.annotations]\nclasses = { a = \"with_mask\" }\n",
    )
    .unwrap();
    let err = fails(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(err.contains("MTCNN has none"), "{err}");
}

#[test]
fn faces_from_annotations_cut_the_annotated_boxes_of_the_photos_deteval_does_not_score() {
    let d = tempfile::tempdir().unwrap();
    python("annotated_scenes.py", &[&d.path().join("data/scenes")]);
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(
        d.path().join("pipelines/p.toml"),
        format!("[dataset]\nroot = \"../data/scenes\"\n[faces]\nsource = \"annotations\"\nvalid_pct = 0.25\n[faces.annotations]\n{CLASSES}\n[index]\nvalid_pct = 0.25\n"),
    )
    .unwrap();
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu", "--until", "index"]);
    let art = d.path().join("artifacts");
    let faces = art.join("faces").join(&keys(&art, "faces")[0]);
    let m: serde_json::Value = serde_json::from_slice(&fs::read(faces.join("faces.json")).unwrap()).unwrap();
    let crops = m["crops"].as_array().unwrap();
    // Every crop is a face of a photo outside the held part, in its class's folder, square-ish.
    let sources: std::collections::BTreeSet<&str> = crops.iter().map(|c| c["source"].as_str().unwrap()).collect();
    let held: Vec<String> = {
        // deteval's held part, from a deteval instance over the same folder and split.
        fs::write(
            d.path().join("pipelines/e.toml"),
            format!("[dataset]\nroot = \"../data/scenes\"\n[deteval]\nvalid_pct = 0.25\nlabels = \"detector\"\n\
                     annotations = {{ classes = {{ astronaut_face = \"with_mask\", camera_face = \"without_mask\" }} }}\n"),
        )
        .unwrap();
        ok(d.path(), &["run", "pipelines/e.toml", "--device", "cpu"]);
        let (dir, _) = result(&art, &keys(&art, "deteval")[0]);
        let s: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("detections.json")).unwrap()).unwrap();
        serde_json::from_value(s["images"].clone()).unwrap()
    };
    assert!(!held.is_empty() && held.iter().all(|h| !sources.contains(h.as_str())), "held {held:?}, cut from {sources:?}");
    assert_eq!(sources.len() + held.len(), 12, "{out}");
    for c in crops {
        let file = c["file"].as_str().unwrap();
        assert!(file.starts_with("astronaut/") || file.starts_with("camera/"), "{file}");
        let img = image::open(faces.join("images").join(file)).unwrap();
        assert!(img.width().abs_diff(img.height()) <= 1 || img.width() < 40, "{file}: {}×{}", img.width(), img.height());
    }
    // The difficult face is not cut; the report counts the rejected annotation files.
    let from_pair = crops.iter().filter(|c| c["source"] == "pair-difficult.jpg").count();
    assert!(from_pair == usize::from(sources.contains("pair-difficult.jpg")), "{from_pair} crops of pair-difficult.jpg");
    assert!(out.contains("annotation(s) rejected") && out.contains("4 annotation(s) rejected"), "{out}");
    assert!(out.contains(&format!("{} face crops", crops.len())), "{out}");
}
