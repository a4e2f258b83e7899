//! The `faces` stage in a pipeline and `maskflow detect`, on whole photos with real faces (made by
//! `tests/py/face_photos.py` from the public-domain photos scikit-image ships).


use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};

fn photos(dir: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/py/face_photos.py"))
        .arg(dir.join("data/photos"))
        .output()
        .expect("the project venv's python (scripts/bootstrap.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pipeline(dir: &Path, keep: &str) {
    pipeline_with(dir, keep, "kind = \"mtcnn\"\nmin_face_size = 24")
}

fn pipeline_with(dir: &Path, keep: &str, detector: &str) {
    fs::create_dir_all(dir.join("pipelines")).unwrap();
    fs::write(
        dir.join("pipelines/p.toml"),
        format!(
            "name = \"p\"\n[dataset]\nroot = \"../data/photos\"\n\n[faces]\nkeep = \"{keep}\"\n\n[faces.detector]\n{detector}\n\n\
             [index]\nvalid_pct = 0.25\n\n[prep]\nsize = 32\nshard_rows = 8\nrow_group_rows = 4\n\n\
             [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 4\nfrozen_epochs = 1\nunfrozen_epochs = 1\n\n\
             [eval]\nrobustness = []\n\n[export]\n"
        ),
    )
    .unwrap();
}

fn only_key(art: &Path, stage: &str) -> PathBuf {
    let k = keys(art, stage);
    assert_eq!(k.len(), 1, "{stage}: {k:?}");
    art.join(stage).join(&k[0])
}

#[test]
fn a_pipeline_trains_on_the_faces_of_whole_photos_and_detect_labels_them() {
    let d = tempfile::tempdir().unwrap();
    photos(d.path());
    pipeline(d.path(), "largest");
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    // 15 files: 12 one-face photos, one with two faces, one without a face, one truncated.
    assert!(out.contains("15 photos → 13 face crops (1 with no face, 1 unreadable)"), "{out}");
    assert!(out.contains("13 files, 13 ok, 0 rejected; classes astronaut, camera"), "{out}");
    let art = d.path().join("artifacts");
    let faces = only_key(&art, "faces");
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(faces.join("faces.json")).unwrap()).unwrap();
    let without: Vec<(String, String)> = manifest["without"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["source"].as_str().unwrap().to_string(), w["code"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(without, vec![("astronaut/coffee.jpg".into(), "no_face".into()), ("astronaut/truncated.jpg".into(), "truncated".into())]);
    // The largest face of the two-face photo is the astronaut's, pasted at (20, 60), 210 × 230.
    let two = manifest["crops"].as_array().unwrap().iter().find(|c| c["source"] == "astronaut/two-faces.jpg").unwrap();
    let b: Vec<f64> = two["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    assert!((20.0..230.0).contains(&cx) && (60.0..290.0).contains(&cy), "{b:?}");
    let crop = image::open(faces.join("images/astronaut/two-faces.jpg.face0.png")).unwrap();
    assert!(crop.width() > 50 && crop.width() == crop.height(), "{}×{}", crop.width(), crop.height());
    // The index read the crops, not the photos.
    let index = only_key(&art, "index");
    let dataset: serde_json::Value = serde_json::from_slice(&fs::read(index.join("dataset.json")).unwrap()).unwrap();
    assert!(dataset["root"].as_str().unwrap().ends_with("/images"), "{dataset}");

    // Everything cached on a second run; keeping every face re-keys faces and what follows.
    let again = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    assert!(again.contains("6 stage(s), 6 cached") && !again.contains("built in"), "{again}");
    pipeline(d.path(), "all");
    let all = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu", "--until", "index"]);
    assert!(all.contains("15 photos → 14 face crops (1 with no face, 1 unreadable)"), "{all}");
    assert_eq!(keys(&art, "faces").len(), 2);
    // The default detector, the SSD (no `kind`): another faces key; every face photo gives a crop.
    pipeline_with(d.path(), "largest", "");
    let ssd = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu", "--until", "faces"]);
    eprintln!("{ssd}");
    assert!(ssd.contains("15 photos → 13 face crops (1 with no face, 1 unreadable)"), "{ssd}");
    assert_eq!(keys(&art, "faces").len(), 3);

    // detect with the bundle the pipeline exported (classes astronaut / camera).
    let bundle = only_key(&art, "export");
    let b = bundle.display().to_string();
    let res = maskflow(
        d.path(),
        &["detect", "--bundle", &b, "--out", "det", "--device", "cpu", "--detector", "mtcnn", "--min-face-size", "24",
          "data/photos/astronaut/two-faces.jpg", "data/photos/astronaut/coffee.jpg", "data/photos/astronaut/truncated.jpg", "missing.jpg"],
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert_eq!(res.status.code(), Some(2), "{stdout}\n{}", String::from_utf8_lossy(&res.stderr));
    assert!(stdout.contains("two-faces.jpg  2 face(s): "), "{stdout}");
    assert!(stdout.contains("coffee.jpg  no face found"), "{stdout}");
    assert!(stdout.contains("truncated.jpg  ERROR  truncated jpeg"), "{stdout}");
    assert!(stdout.contains("missing.jpg  ERROR  no such file or folder"), "{stdout}");
    let det = d.path().join("det");
    let two: serde_json::Value = serde_json::from_slice(&fs::read(det.join("two-faces.json")).unwrap()).unwrap();
    let faces = two["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2);
    // Largest first: the astronaut (left), then the cameraman pasted at (420, 120), 110 × 130.
    let centre = |f: &serde_json::Value| {
        let b: Vec<f64> = f["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
    };
    let (x0, _) = centre(&faces[0]);
    let (x1, y1) = centre(&faces[1]);
    assert!(x0 < 230.0 && (420.0..530.0).contains(&x1) && (120.0..250.0).contains(&y1), "{two}");
    for f in faces {
        assert_eq!(f["landmarks"].as_array().unwrap().len(), 5);
        assert!(f["score"].as_f64().unwrap() > 0.7);
        let p = f["probabilities"].as_object().unwrap();
        let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4 && p.contains_key(f["label"].as_str().unwrap()), "{f}");
    }
    assert_eq!(two["width"], 640);
    let coffee: serde_json::Value = serde_json::from_slice(&fs::read(det.join("coffee.json")).unwrap()).unwrap();
    assert_eq!(coffee["faces"], serde_json::json!([]));
    // The annotated copy has the photo's size and differs from it (boxes and tags drawn).
    let annotated = image::open(det.join("two-faces.annotated.jpg")).unwrap().to_rgb8();
    let original = image::open(d.path().join("data/photos/astronaut/two-faces.jpg")).unwrap().to_rgb8();
    assert_eq!(annotated.dimensions(), original.dimensions());
    let changed = annotated.pixels().zip(original.pixels()).filter(|(a, b)| a.0.iter().zip(b.0).any(|(x, y)| x.abs_diff(y) > 60)).count();
    assert!(changed > 1000, "{changed} pixels changed");
    let lines = fs::read_to_string(det.join("detections.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(lines.lines().any(|l| l.contains("\"error\":\"no such file or folder\"")));

    // The default detector, the face-mask SSD: no landmarks, its own mask scores beside the bundle's
    // label, faces highest score first; the photos' folder walked (symlinked here).
    std::os::unix::fs::symlink(d.path().join("data/photos/astronaut/two-faces.jpg"), d.path().join("two.jpg")).unwrap();
    let res = maskflow(d.path(), &["detect", "--bundle", &b, "--out", "ssd", "--device", "cpu", "two.jpg"]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&res.stderr));
    let two: serde_json::Value = serde_json::from_slice(&fs::read(d.path().join("ssd/two.json")).unwrap()).unwrap();
    let faces = two["faces"].as_array().unwrap();
    assert!(!faces.is_empty(), "{two}");
    let scores: Vec<f64> = faces.iter().map(|f| f["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] > 0.5, "{scores:?}");
    for f in faces {
        assert!(f.get("landmarks").is_none(), "{f}");
        let m = f["detector_mask_scores"].as_array().unwrap();
        assert!(m.len() == 2 && m.iter().all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())), "{f}");
        let p = f["probabilities"].as_object().unwrap();
        assert!((p.values().map(|v| v.as_f64().unwrap()).sum::<f64>() - 1.0).abs() < 1e-4, "{f}");
    }
    // The astronaut's face (left) is found.
    assert!(faces.iter().any(|f| centre(f).0 < 230.0), "{two}");
}
