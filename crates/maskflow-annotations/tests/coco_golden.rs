//! The detection metrics against pycocotools' COCOeval (`tests/py/reference_coco.py`, run in the
//! project venv on generated faces and detections): every precision point, the summary and the
//! per-class AP within 1e-4 (issue 25).

use maskflow_annotations::metrics::{accumulate, Detection, Truth};
use std::path::Path;

fn reference() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let python = root.join(".venv/bin/python");
    let run = std::process::Command::new(&python)
        .arg(root.join("tests/py/reference_coco.py"))
        .arg(out.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/bootstrap.sh --py first", python.display()));
    assert!(run.status.success(), "reference_coco.py:\n{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(&std::fs::read(out.path().join("coco.json")).unwrap()).unwrap()
}

#[test]
fn matches_pycocotools_on_every_precision_point() {
    let r = reference();
    let truth: Vec<Truth> = serde_json::from_value(r["truth"].clone()).unwrap();
    let dets: Vec<Detection> = serde_json::from_value(r["detections"].clone()).unwrap();
    let photos = 40;
    let classes = 3;
    let acc = accumulate(&truth, &dets, photos, classes, 100);

    // The whole precision array [T][R][K][A] (-1 in pycocotools where a class has no face).
    let want = r["precision"].as_array().unwrap();
    let mut worst = 0f64;
    let mut points = 0;
    for (t, rs) in want.iter().enumerate() {
        for (ri, ks) in rs.as_array().unwrap().iter().enumerate() {
            for (k, areas) in ks.as_array().unwrap().iter().enumerate() {
                for (a, v) in areas.as_array().unwrap().iter().enumerate() {
                    let v = v.as_f64().unwrap();
                    let got = acc.precision[t][ri][k][a];
                    match got {
                        None => assert_eq!(v, -1.0, "t {t} r {ri} k {k} a {a}: no faces here, pycocotools has {v}"),
                        Some(g) => worst = worst.max((g - v).abs()),
                    }
                    points += 1;
                }
            }
        }
    }
    assert_eq!(points, 10 * 101 * classes * 4);
    eprintln!("{points} precision points, max delta {worst:.2e}");
    assert!(worst <= 1e-4, "precision max delta {worst}");

    let all: Vec<usize> = (0..classes).collect();
    let s = acc.summary(&all);
    let stats: Vec<f64> = serde_json::from_value(r["stats"].clone()).unwrap();
    let ours = [s.ap, s.ap50, s.ap75, s.ap_small, s.ap_medium, s.ap_large, None, None, s.ar, s.ar_small, s.ar_medium, s.ar_large];
    for (i, (o, w)) in ours.iter().zip(&stats).enumerate() {
        if let Some(o) = o {
            assert!((o - w).abs() <= 1e-4, "stat {i}: ours {o}, pycocotools {w}");
        }
    }
    assert!(stats[0] > 0.1 && stats[1] > stats[0], "a set that exercises the metric: {stats:?}");
    let per_class: Vec<Option<f64>> = serde_json::from_value(r["per_class_ap"].clone()).unwrap();
    for (k, want) in per_class.iter().enumerate() {
        let ours = acc.ap(&(0..10).collect::<Vec<_>>(), &[k], 0);
        match (ours, *want) {
            (Some(o), Some(w)) => assert!((o - w).abs() <= 1e-4, "class {k}: {o} vs {w}"),
            (o, w) => assert_eq!(o, w, "class {k}"),
        }
    }
    eprintln!("AP {:.4} AP50 {:.4} AP75 {:.4} (pycocotools {:.4} {:.4} {:.4})", s.ap.unwrap(), s.ap50.unwrap(), s.ap75.unwrap(), stats[0], stats[1], stats[2]);
}

#[test]
fn a_perfect_detector_scores_one_and_no_detections_zero() {
    let truth: Vec<Truth> = (0..5)
        .map(|i| Truth { photo: i, class: 0, bbox: [10.0, 10.0, 60.0, 70.0], crowd: false })
        .collect();
    let perfect: Vec<Detection> =
        truth.iter().map(|t| Detection { photo: t.photo, class: 0, bbox: t.bbox, score: 0.9 }).collect();
    let s = accumulate(&truth, &perfect, 5, 1, 100).summary(&[0]);
    assert_eq!((s.ap, s.ap50, s.ar), (Some(1.0), Some(1.0), Some(1.0)));
    assert_eq!(s.ap_small, None, "no small faces: no AP, not zero");
    let s = accumulate(&truth, &[], 5, 1, 100).summary(&[0]);
    assert_eq!((s.ap, s.ar), (Some(0.0), Some(0.0)));
}
