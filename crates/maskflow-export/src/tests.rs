//! The export stage on a fixture model alone (no training run): the traced module computes what the
//! Rust model computes, the card says what the bundle is, and its README follows the preprocessing.

use maskflow_contracts::bundle::ModelCard;
use maskflow_contracts::fixtures;
use maskflow_contracts::model::Arch;
use maskflow_contracts::JsonFile;
use crate::{ExportParams, ExportStage, Inputs};
use tch::{Device, Kind, Tensor};

#[test]
fn the_bundle_matches_the_model_and_its_card_matches_the_inputs() {
    let d = tempfile::tempdir().unwrap();
    let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let model_dir = d.path().join("model");
    maskflow_models::trained::fixture(&model_dir, &fixtures::train_config(Arch::MobilenetV2, &classes, 48), 9).unwrap();
    let out = d.path().join("bundle");
    std::fs::create_dir_all(&out).unwrap();
    let upstream = [("model".to_string(), "KEY".to_string())].into();
    let r = crate::run(&Inputs { model_dir: &model_dir, eval_dir: None, detector_dir: None, upstream }, &ExportParams::default(), &out).unwrap();
    assert_eq!(r.classes, classes);
    let card = ModelCard::read(&out).unwrap();
    assert_eq!((card.input.height, card.preprocessing.size, card.arch), (48, 48, Arch::MobilenetV2));
    assert_eq!(card.upstream["model"], "KEY");
    assert!(card.metrics.is_none());
    assert_eq!(card.training["arch"], "\"mobilenet_v2\"");

    // model.pt (uint8 NHWC → probabilities) vs the Rust model on the same normalised pixels.
    let (model, _) = maskflow_models::load_trained(&model_dir, Device::Cpu).unwrap();
    tch::manual_seed(1);
    let x = Tensor::randint(256, [4, 48, 48, 3], (Kind::Uint8, Device::Cpu));
    let module = tch::CModule::load(out.join("model.pt")).unwrap();
    let theirs = module.forward_ts(&[x.shallow_clone()]).unwrap();
    let mean = Tensor::from_slice(&maskflow_models::normalize::MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&maskflow_models::normalize::STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let xn = (x.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0 - mean) / std;
    let ours = tch::no_grad(|| model.forward_t(&xn, false).softmax(-1, Kind::Float));
    let diff = (theirs - ours).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "max difference {diff}");
}

#[test]
fn the_key_covers_every_export_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<ExportStage>();
}

// The bundle README's Python snippet.

use super::*;
use maskflow_contracts::Preprocess;

fn card(resize: ResizeMode, filter: Filter) -> ModelCard {
    ModelCard {
        detector: None,
        schema: ModelCard::SCHEMA,
        name: "m".into(),
        classes: vec!["a".into(), "b".into()],
        input: InputSpec { layout: String::new(), dtype: String::new(), height: 64, width: 64, channels: 3, output: String::new() },
        preprocessing: Preprocess { size: 64, resize, filter, background: [1, 2, 3], jpeg_draft: true },
        normalization: Normalization { inside_module: true, scale: "1/255".into(), mean: MEAN, std: STD },
        arch: maskflow_models::Arch::Resnet18,
        architecture: String::new(),
        training: BTreeMap::new(),
        metrics: None,
        dataset_fingerprint: String::new(),
        upstream: BTreeMap::new(),
        maskflow_version: String::new(),
    }
}

#[test]
fn the_readme_snippet_follows_the_bundles_resize_and_filter() {
    let crop = readme(&card(ResizeMode::Crop, Filter::Bilinear));
    assert!(crop.contains("min(w, h)") && crop.contains("Image.BILINEAR") && crop.contains("img.crop"), "{crop}");
    let squish = readme(&card(ResizeMode::Squish, Filter::Lanczos3));
    assert!(squish.contains("img.resize((64, 64), Image.LANCZOS)") && !squish.contains("min(w, h)"), "{squish}");
    assert!(squish.contains("`lanczos3` filter"), "{squish}");
    let pad = readme(&card(ResizeMode::Pad, Filter::Nearest));
    assert!(pad.contains("max(w, h)") && pad.contains("(1, 2, 3)") && pad.contains("Image.NEAREST"), "{pad}");
}
