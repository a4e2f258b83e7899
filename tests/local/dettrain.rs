//! The `dettrain` stage: the face-mask SSD fine-tuned on annotated photos
//! (`tests/py/annotated_scenes.py`), scored by `deteval`, shipped in the bundle by `export` and
//! used by `maskflow detect --bundle`; and a run killed after an epoch's checkpoint resumes to the
//! bytes of an uninterrupted one.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const ANNOTATIONS: &str = "annotations = { classes = { astronaut_face = \"with_mask\", camera_face = \"without_mask\" } }";

fn dettrain(epochs: (usize, usize)) -> String {
    format!(
        "[dettrain]\ndata = \"../data/scenes\"\nvalid_pct = 0.25\nstart = \"ssd260\"\nhead_epochs = {}\nfull_epochs = {}\nbatch_size = 4\n{ANNOTATIONS}\n",
        epochs.0, epochs.1
    )
}

#[test]
fn a_fine_tuned_detector_is_scored_bundled_and_used_by_detect() {
    let d = tempfile::tempdir().unwrap();
    python("face_photos.py", &[&d.path().join("data/photos")]);
    // The classifier's classes are the detector's: with_mask (the astronaut), without_mask.
    fs::rename(d.path().join("data/photos/astronaut"), d.path().join("data/photos/with_mask")).unwrap();
    fs::rename(d.path().join("data/photos/camera"), d.path().join("data/photos/without_mask")).unwrap();
    python("annotated_scenes.py", &[&d.path().join("data/scenes")]);
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(
        d.path().join("pipelines/p.toml"),
        format!(
            "name = \"p\"\n[dataset]\nroot = \"../data/photos\"\n[faces]\n[index]\nvalid_pct = 0.25\n[prep]\nsize = 32\nshard_rows = 8\nrow_group_rows = 4\n\
             [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 4\nfrozen_epochs = 1\nunfrozen_epochs = 1\n\n{}\n\
             [deteval]\ndata = \"../data/scenes\"\nvalid_pct = 0.25\ntrained = true\n{ANNOTATIONS}\n\n\
             [deteval.imported]\ndata = \"../data/scenes\"\nvalid_pct = 0.25\ndetector = {{ kind = \"ssd260\" }}\n{ANNOTATIONS}\n\n[export]\n",
            dettrain((1, 1))
        ),
    )
    .unwrap();
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--device", "cpu"]);
    eprintln!("{out}");
    assert!(out.contains("dettrain built") && out.contains("ssd260 fine-tuned 2 epoch(s)"), "{out}");
    assert!(out.contains("ssd260 (fine-tuned) + classifier labels"), "{out}");
    let art = d.path().join("artifacts");
    let det = art.join("dettrain").join(&keys(&art, "dettrain")[0]);
    let card: serde_json::Value = serde_json::from_slice(&fs::read(det.join("detector.json")).unwrap()).unwrap();
    assert_eq!((card["kind"].as_str(), card["head_epochs"].as_u64(), card["full_epochs"].as_u64()), (Some("ssd260"), Some(1), Some(1)));
    // The four bad annotation files are counted, and the photos split as deteval splits them.
    assert_eq!(card["rejected"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 4, "{card}");
    let ev_keys = keys(&art, "deteval");
    assert_eq!(ev_keys.len(), 2);
    let scored: Vec<u64> = ev_keys
        .iter()
        .map(|k| {
            let r: serde_json::Value = serde_json::from_slice(&fs::read(art.join("deteval").join(k).join("detection.json")).unwrap()).unwrap();
            r["photos"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(scored[0], scored[1]);
    assert_eq!(scored[0] + card["train_photos"].as_u64().unwrap(), 12, "held {scored:?}, trained on {}", card["train_photos"]);
    assert_eq!(card["valid_photos"].as_u64(), Some(scored[0]));
    let metrics = fs::read_to_string(det.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(image::open(det.join("curves.png")).is_ok());

    // The bundle carries the detector; detect uses it unless --detector says otherwise.
    let bundle = art.join("export").join(&keys(&art, "export")[0]);
    assert_eq!(fs::read(bundle.join("detector.safetensors")).unwrap(), fs::read(det.join("detector.safetensors")).unwrap());
    let b = bundle.display().to_string();
    let res = maskflow(d.path(), &["detect", "--bundle", &b, "--out", "det", "--device", "cpu", "data/scenes/images/pair.jpg"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success() && stderr.contains("detect (ssd260 fine-tuned, from the bundle, the classifier's labels)"), "{stderr}");
    let res = maskflow(d.path(), &["detect", "--bundle", &b, "--out", "det2", "--device", "cpu", "--detector", "ssd", "data/scenes/images/pair.jpg"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success() && stderr.contains("detect (ssd, the classifier's labels)"), "{stderr}");
    // The SSD's own labels: no classifier runs; the faces carry the detector's classes.
    let res = maskflow(d.path(), &["detect", "--bundle", &b, "--out", "det3", "--device", "cpu", "--labels", "detector", "data/scenes/images/pair.jpg"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success() && stderr.contains("detect (ssd260 fine-tuned, from the bundle, its own labels)"), "{stderr}");
    let pair: serde_json::Value = serde_json::from_slice(&fs::read(d.path().join("det3/pair.json")).unwrap()).unwrap();
    for f in pair["faces"].as_array().unwrap() {
        let m = f["detector_mask_scores"].as_array().unwrap();
        let own = if m[0].as_f64() >= m[1].as_f64() { "with_mask" } else { "without_mask" };
        assert_eq!(f["label"], own, "{f}");
    }
}

fn detector_bytes(art: &Path) -> Vec<u8> {
    let k = &keys(art, "dettrain")[0];
    fs::read(art.join("dettrain").join(k).join("detector.safetensors")).unwrap()
}

#[test]
fn kill_9_during_dettrain_then_resume_gives_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    python("annotated_scenes.py", &[&d.path().join("data/scenes")]);
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(d.path().join("pipelines/r.toml"), format!("name = \"r\"\n[dataset]\nroot = \"../data/scenes\"\n{}", dettrain((2, 2)))).unwrap();
    let mut child = command()
        .current_dir(d.path())
        .args(["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "killed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpts = d.path().join("killed/dettrain/.checkpoints");
    let started = Instant::now();
    let killed = loop {
        let progressed = fs::read_dir(&ckpts).ok().into_iter().flatten().flatten().any(|e| {
            fs::read_to_string(e.path().join("progress.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["epochs"].as_array().is_some_and(|a| !a.is_empty()))
        });
        if progressed {
            child.kill().unwrap();
            child.wait().unwrap();
            break true;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(300) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(killed, "the run ended before a checkpoint could be killed");
    assert!(keys(&d.path().join("killed"), "dettrain").is_empty(), "a killed run leaves no artifact");
    let out = ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "killed"]);
    assert!(out.contains("resumed after"), "{out}");
    ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "clean"]);
    assert!(detector_bytes(&d.path().join("killed")) == detector_bytes(&d.path().join("clean")), "resumed weights differ\n{out}");
    let left = fs::read_dir(d.path().join("killed/dettrain/.checkpoints")).map(|it| it.count()).unwrap_or(0);
    assert_eq!(left, 0);
}
