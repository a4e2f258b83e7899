//! The inference loop over a split: mean cross-entropy, accuracy and per-class probabilities.

use crate::data::{self, EpochPlan, SplitData, View};
use anyhow::Result;
use maskflow_contracts::eval::Tta;
use maskflow_contracts::model::Precision;
use maskflow_models::Classifier;
use tch::{Device, Kind, Tensor};

/// The model an inference pass runs: the model itself (`None`), or its bf16 copy.
pub fn inference_model(model: &Classifier, precision: Precision, channels_last: bool) -> Result<Option<Classifier>> {
    Ok(match precision {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(model.bf16_copy(channels_last)?),
    })
}

/// `x` in the number format of the inference model.
pub fn as_precision(x: &Tensor, m16: &Option<Classifier>) -> Tensor {
    if m16.is_some() {
        x.to_kind(Kind::BFloat16)
    } else {
        x.shallow_clone()
    }
}

/// How to run inference over a split.
#[derive(Clone)]
pub struct InferOptions {
    pub out_size: i64,
    pub batch_size: usize,
    pub device: Device,
    pub channels_last: bool,
    pub precision: Precision,
    /// The view of every image (plain centre crop by default; a corruption for robustness).
    pub view: View,
}

/// Mean cross-entropy, accuracy and the per-class probabilities (N, C) on `split` (centre view).
pub fn evaluate_split(model: &Classifier, split: &SplitData, o: &InferOptions) -> Result<(f64, f64, Tensor)> {
    let m16 = inference_model(model, o.precision, o.channels_last)?;
    evaluate_view(model, &m16, split, o)
}

/// As [`evaluate_split`], averaging the probabilities of `tta`'s views (weighted); the loss is then
/// the mean −ln p(actual) of the averaged probabilities. `Tta::None` is exactly `evaluate_split`.
pub fn evaluate_tta(model: &Classifier, split: &SplitData, o: &InferOptions, tta: Tta) -> Result<(f64, f64, Tensor)> {
    let m16 = inference_model(model, o.precision, o.channels_last)?;
    if tta == Tta::None {
        return evaluate_view(model, &m16, split, o);
    }
    let mut sum: Option<Tensor> = None;
    for (transform, weight) in tta.views() {
        let mut view = o.clone();
        view.view.transform = Some(transform);
        let (_, _, p) = evaluate_view(model, &m16, split, &view)?;
        let p = p * weight;
        sum = Some(match sum {
            Some(s) => s + p,
            None => p,
        });
    }
    let probs = sum.unwrap_or_else(|| Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)));
    let n = split.len().max(1) as f64;
    let y = split.labels.to_device(Device::Cpu);
    let picked = probs.gather(1, &y.unsqueeze(1), false).clamp(1e-15, 1.0);
    let loss = -picked.log().sum(Kind::Double).double_value(&[]) / n;
    let correct = probs.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
    Ok((loss, correct as f64 / n, probs))
}

/// One pass over `split` in `o.view`, with `m16` the bf16 copy when inferring in bf16.
fn evaluate_view(model: &Classifier, m16: &Option<Classifier>, split: &SplitData, o: &InferOptions) -> Result<(f64, f64, Tensor)> {
    let _g = tch::no_grad_guard();
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: o.batch_size,
        drop_last: false,
        augment: None,
        view: o.view.clone(),
        out_size: o.out_size,
        device: o.device,
        channels_last: o.channels_last,
        part: data::Part::WHOLE,
    };
    let mut probs = Vec::new();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    for batch in data::spawn_producer(split, plan, 0) {
        let batch = batch?;
        let logits = m16.as_ref().unwrap_or(model).forward_t(&as_precision(&batch.x, m16), false).to_kind(Kind::Float);
        loss_sum +=
            logits.cross_entropy_loss::<Tensor>(&batch.y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
        correct += logits.argmax(-1, false).eq_tensor(&batch.y).sum(Kind::Int64).int64_value(&[]);
        probs.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
    }
    let n = split.len().max(1) as f64;
    let probs = if probs.is_empty() { Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&probs, 0) };
    Ok((loss_sum / n, correct as f64 / n, probs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{open_splits, DataMode, Pixels};
    use maskflow_contracts::fixtures;

    fn options() -> InferOptions {
        InferOptions {
            out_size: 32,
            batch_size: 8,
            device: Device::Cpu,
            channels_last: false,
            precision: Precision::Fp32,
            view: View::default(),
        }
    }

    #[test]
    fn flip_tta_is_the_mean_of_the_image_and_its_mirror() {
        let d = tempfile::tempdir().unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        fixtures::shard_set(&d.path().join("p"), &classes, 32, &fixtures::images(2, 6, 32, 2), 8, 4).unwrap();
        let split = open_splits(&d.path().join("p"), &["train", "valid"], 2, DataMode::Memory, 0).unwrap();
        let cfg = fixtures::train_config(maskflow_contracts::model::Arch::Resnet18, &classes, 32);
        let dir = d.path().join("m");
        maskflow_models::trained::fixture(&dir, &cfg, 3).unwrap();
        let (model, _) = maskflow_models::load_trained(&dir, Device::Cpu).unwrap();
        let (_, _, plain) = evaluate_split(&model, &split, &options()).unwrap();
        let (_, _, none) = evaluate_tta(&model, &split, &options(), Tta::None).unwrap();
        assert!(plain.equal(&none), "Tta::None is the plain pass");
        // The same images mirrored in memory, evaluated plainly.
        let Pixels::Memory(images) = &split.pixels else { unreachable!() };
        let mirrored = SplitData {
            pixels: Pixels::Memory(images.flip([2])),
            labels: split.labels.shallow_clone(),
            label_idx: split.label_idx.clone(),
            hashes: split.hashes.clone(),
            paths: split.paths.clone(),
            size: split.size,
        };
        let (_, _, mirror) = evaluate_split(&model, &mirrored, &options()).unwrap();
        let (loss, acc, flip) = evaluate_tta(&model, &split, &options(), Tta::Flip).unwrap();
        let expect = (&plain + &mirror) * 0.5;
        assert!(flip.allclose(&expect, 1e-4, 1e-5, false), "{}", (&flip - &expect).abs().max());
        assert!((0.0..=1.0).contains(&acc) && loss.is_finite());
        let views = Tta::Fastai.views();
        assert_eq!(views.len(), 9);
        assert!((views.iter().map(|v| v.1).sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
