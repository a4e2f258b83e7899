//! The inference loop over a split: mean cross-entropy, accuracy and per-class probabilities.

use crate::data::{self, EpochPlan, SplitData};
use anyhow::Result;
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
#[derive(Debug, Clone, Copy)]
pub struct InferOptions {
    pub out_size: i64,
    pub batch_size: usize,
    pub device: Device,
    pub channels_last: bool,
    pub precision: Precision,
}

/// Mean cross-entropy, accuracy and the per-class probabilities (N, C) on `split` (centre view).
pub fn evaluate_split(model: &Classifier, split: &SplitData, o: &InferOptions) -> Result<(f64, f64, Tensor)> {
    let _g = tch::no_grad_guard();
    let m16 = inference_model(model, o.precision, o.channels_last)?;
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: o.batch_size,
        drop_last: false,
        augment: None,
        out_size: o.out_size,
        device: o.device,
        channels_last: o.channels_last,
    };
    let mut probs = Vec::new();
    let (mut loss_sum, mut correct) = (0.0, 0i64);
    for batch in data::spawn_producer(split, plan, 0) {
        let batch = batch?;
        let logits = m16.as_ref().unwrap_or(model).forward_t(&as_precision(&batch.x, &m16), false).to_kind(Kind::Float);
        loss_sum +=
            logits.cross_entropy_loss::<Tensor>(&batch.y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
        correct += logits.argmax(-1, false).eq_tensor(&batch.y).sum(Kind::Int64).int64_value(&[]);
        probs.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
    }
    let n = split.len().max(1) as f64;
    let probs = if probs.is_empty() { Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&probs, 0) };
    Ok((loss_sum / n, correct as f64 / n, probs))
}
