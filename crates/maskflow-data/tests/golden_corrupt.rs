//! Golden tests of the corruptions against torch / torchvision / PIL: `tests/py/reference_corruptions.py`
//! makes the references live with the project venv (the bootstrap installs it).

use maskflow_data::corrupt::{apply_one, Degrade};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn references() -> (tempfile::TempDir, Vec<(String, Tensor)>) {
    let dir = tempfile::tempdir().unwrap();
    let python = workspace().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(workspace().join("tests/py/reference_corruptions.py"))
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/bootstrap.sh first", python.display()));
    assert!(out.status.success(), "reference script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let t = Tensor::read_safetensors(dir.path().join("corruptions.safetensors")).unwrap();
    (dir, t)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn corruptions_match_torch_torchvision_and_pil() {
    let (_dir, refs) = references();
    let get = |k: &str| refs.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("no {k}")).1.shallow_clone();
    let x = get("input");
    let case = |d: Degrade| apply_one(&x, &d).unwrap();
    for side in [64, 32, 16] {
        let ours = case(Degrade { downscale: Some(side as f64), ..Default::default() });
        let diff = max_diff(&ours, &get(&format!("downscale_{side}")));
        assert!(diff < 1e-5, "downscale to {side}: max |Δ| {diff}");
    }
    for sigma in ["1.0", "2.0", "4.0"] {
        let ours = case(Degrade { blur: Some(sigma.parse().unwrap()), ..Default::default() });
        let diff = max_diff(&ours, &get(&format!("blur_{sigma}")));
        assert!(diff < 1e-5, "blur σ {sigma}: max |Δ| {diff}");
    }
    for f in ["0.7", "0.2"] {
        let ours = case(Degrade { brightness: Some(f.parse().unwrap()), ..Default::default() });
        assert!(max_diff(&ours, &get(&format!("brightness_{f}"))) < 1e-6, "brightness {f}");
    }
    for c in ["0.5", "0.1"] {
        let ours = case(Degrade { contrast: Some(c.parse().unwrap()), ..Default::default() });
        assert!(max_diff(&ours, &get(&format!("contrast_{c}"))) < 1e-5, "contrast {c}");
    }
    // JPEG: another encoder (the `image` crate's, not libjpeg), so the bytes differ; the damage must
    // be of the same size: mean |ours − PIL's| well under the damage itself, which must be real.
    for q in [30u8, 7] {
        let ours = case(Degrade { jpeg: Some(q), ..Default::default() });
        let pil = get(&format!("jpeg_{q}"));
        let between = (&ours - &pil).abs().mean(Kind::Float).double_value(&[]);
        let damage = (&pil - &x).abs().mean(Kind::Float).double_value(&[]);
        let ours_damage = (&ours - &x).abs().mean(Kind::Float).double_value(&[]);
        assert!(damage > 1e-3 && ours_damage > 1e-3, "quality {q}: no damage ({damage}, {ours_damage})");
        assert!((ours_damage / damage) > 0.5 && (ours_damage / damage) < 2.0, "quality {q}: {ours_damage} vs PIL's {damage}");
        assert!(between < 0.02, "quality {q}: mean |ours − PIL| {between}");
    }
}
