//! Golden tests of the face-mask SSD against AIZOOTech FaceMaskDetection's own PyTorch model,
//! anchors, decoding and NMS (vendored in `third_party/aizoo-face-mask-detection`, MIT).
//!
//! `tests/py/reference_ssd.py` (project venv) writes the photos as PNG and the repository's
//! detections at both input sizes; here the same pixels go through maskflow's detector with the
//! weights imported by the Rust pickle reader from the same `.pth` files. Tolerances (issue 25):
//! the same faces in the same order, boxes within 1 px, scores within 1e-4.

mod common;
use common::*;
use maskflow_models::checkpoint::{read_checkpoint, read_module_checkpoint, CheckpointError};
use maskflow_models::pickle::PickleError;
use maskflow_models::ssd::{FaceMaskSsd, SsdFace, SsdInput, SsdParams, PICKLED_CLASSES};
use maskflow_models::weights::{self, SearchPaths, WeightsError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn vendored(file: &str) -> PathBuf {
    workspace().join("third_party/aizoo-face-mask-detection/models").join(file)
}

const FILES: [(SsdInput, &str); 2] = [(SsdInput::S360, "model360.pth"), (SsdInput::S260, "face_mask_detection.pth")];

/// The reference script's output folder (run once, then kept: see `run_reference`).
fn references() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_reference("reference_ssd.py", &[&vendored(FILES[0].1), &vendored(FILES[1].1)]))
}

fn detector(input: SsdInput) -> FaceMaskSsd {
    static STORE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let store = STORE.get_or_init(|| tempfile::tempdir().unwrap()).path();
    weights::ssd(store, &SearchPaths::from_env(), input, SsdParams::default(), Device::Cpu).unwrap()
}

fn photo(file: &str) -> Tensor {
    let img = image::open(references().join(file)).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_data_size(img.as_raw(), &[h as i64, w as i64, 3], Kind::Uint8)
}

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(references().join("detections.json")).unwrap()).unwrap()
}

#[derive(serde::Deserialize, Debug)]
struct Want {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    mask_scores: [f32; 2],
}

/// Compares in order (both sides sort by score, highest first); returns the largest deltas.
fn compare(what: &str, got: &[SsdFace], want: &[Want]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: face count; got {got:?}, want {want:?}");
    let (mut dbox, mut dscore) = (0f32, 0f32);
    for (g, w) in got.iter().zip(want) {
        for k in 0..4 {
            dbox = dbox.max((g.bbox[k] - w.bbox[k]).abs());
        }
        dscore = dscore.max((g.score - w.score).abs());
        for k in 0..2 {
            dscore = dscore.max((g.mask_scores[k] - w.mask_scores[k]).abs());
        }
    }
    assert!(dbox <= 1.0, "{what}: box delta {dbox} px > 1 (got {got:?}, want {want:?})");
    assert!(dscore <= 1e-4, "{what}: score delta {dscore} > 1e-4 (got {got:?}, want {want:?})");
    eprintln!("{what}: {} face(s), max box delta {dbox:.2e} px, max score delta {dscore:.2e}", got.len());
    (dbox, dscore)
}

#[test]
fn matches_the_repositorys_pytorch_inference_at_both_sizes() {
    let all = reference();
    for (input, _) in FILES {
        let ssd = detector(input);
        let per = all[input.name()].as_object().unwrap();
        let mut photos = 0;
        for (file, want) in per.iter().filter(|(k, _)| *k != "raw") {
            let want: Vec<Want> = serde_json::from_value(want.clone()).unwrap();
            let got = ssd.detect(&photo(file)).unwrap();
            compare(&format!("{input} {file}"), &got, &want);
            photos += 1;
        }
        assert_eq!(photos, 4, "{input}: the reference's photos");
        // Some photo has several faces, so the order and the NMS are exercised.
        assert!(per.values().any(|v| v.as_array().is_some_and(|a| a.len() >= 5)));
    }
}

#[test]
fn raw_outputs_match_the_network_on_the_same_input() {
    let all = reference();
    for (input, _) in FILES {
        let raw = &all[input.name()]["raw"];
        let p = photo(raw["file"].as_str().unwrap());
        let x = (p.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0).to_kind(Kind::Float);
        let (loc, cls) = detector(input).forward(&x);
        for (name, t, want) in [("loc", loc, &raw["loc"]), ("cls", cls, &raw["cls"])] {
            let got = Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
            let want: Vec<f32> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(got.len(), want.len(), "{input} {name}: anchors × values");
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{input} raw {name}: {} values, max delta {d:.2e}", got.len());
            assert!(d <= 1e-4, "{input} raw {name}: max delta {d}");
        }
    }
}

#[test]
fn a_batch_equals_photo_by_photo() {
    let ssd = detector(SsdInput::S360);
    let a = photo("crowd.png");
    let b = a.flip([1]).contiguous();
    let batch = ssd.detect_batch(&Tensor::stack(&[&a, &b], 0)).unwrap();
    assert!(batch[0].len() >= 5);
    // The same faces in the same order; the numbers equal up to float rounding (a batched
    // convolution may sum in another order).
    for (got, photo) in batch.iter().zip([&a, &b]) {
        let alone = ssd.detect(photo).unwrap();
        assert_eq!(got.len(), alone.len());
        for (g, w) in got.iter().zip(&alone) {
            assert!(g.bbox.iter().zip(w.bbox).all(|(x, y)| (x - y).abs() < 1e-3), "{g:?} vs {w:?}");
            assert!((g.score - w.score).abs() < 1e-5, "{g:?} vs {w:?}");
        }
    }
}

#[test]
fn the_module_pickle_is_read_only_with_its_classes_named() {
    // As a state dict, the whole pickled module is refused, naming the class; nothing runs.
    let e = read_checkpoint(&vendored("model360.pth")).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Pickle { source: PickleError::ForbiddenGlobal { .. }, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("MainModel.KitModel") || e.to_string().contains("torch.nn.modules"), "{e}");
    // With a class missing from the list, still refused.
    let e = read_module_checkpoint(&vendored("model360.pth"), &PICKLED_CLASSES[..2]).unwrap_err();
    assert!(e.to_string().contains("BatchNorm2d"), "{e}");
    // With its classes: the state dict's names, BatchNorm buffers included, and no bias-less `None`s.
    let ck = read_module_checkpoint(&vendored("model360.pth"), &PICKLED_CLASSES).unwrap();
    let names: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"conv2d_0.weight") && names.contains(&"conv2d_0_bn.running_var"), "{names:?}");
    assert!(names.contains(&"cls_4_conv.bias") && !names.contains(&"conv2d_0.bias"), "{names:?}");
    let params: i64 = ck.tensors.iter().filter(|(n, _)| !n.contains("running_") && !n.contains("num_batches")).map(|(_, t)| t.numel() as i64).sum();
    assert!((1_000_000..1_050_000).contains(&params), "{params} parameters (the repository says 1.01 M)");
}

#[test]
fn weights_are_pinned_by_sha256() {
    let store = tempfile::tempdir().unwrap();
    // The 260 file offered as the 360 weights: a different file, refused by its hash.
    let e = weights::ensure("ssd360", Some(&vendored("face_mask_detection.pth")), store.path(), &SearchPaths::from_env())
        .unwrap_err();
    assert!(matches!(e, WeightsError::Sha256Mismatch { .. }), "{e}");
    // Found without being told where: the copy shipped in the repository.
    let w = weights::ensure("ssd260", None, store.path(), &SearchPaths::from_env()).unwrap();
    assert_eq!(w.sha256, "38be682d73e2e138aeb6624aa341a9734c11717898c5c54cc4476da0e0ef501a");
}
