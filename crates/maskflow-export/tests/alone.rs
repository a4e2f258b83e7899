//! The export stage on a fixture model alone (no training run): the traced module computes what the
//! Rust model computes, and the card says what the bundle is.

use maskflow_contracts::bundle::ModelCard;
use maskflow_contracts::fixtures;
use maskflow_contracts::model::Arch;
use maskflow_contracts::JsonFile;
use maskflow_export::{ExportParams, ExportStage, Inputs};
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
    let r = maskflow_export::run(&Inputs { model_dir: &model_dir, eval_dir: None, upstream }, &ExportParams::default(), &out).unwrap();
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
