//! The evidence of unlikely labels: the pretrained body's pooled features of every image (one
//! pass, eval mode, centre view), then per fold a linear softmax probe trained on the other folds.

use crate::ReviewParams;
use anyhow::{Context, Result};
use maskflow_core::hash::unit_interval;
use maskflow_data::data::{self, EpochPlan, SplitData};
use maskflow_data::infer;
use maskflow_models::{Classifier, HeadConfig};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Pooled body features (N, F), standardised per feature, on the CPU.
pub fn features(
    split: &SplitData,
    weights: &std::path::Path,
    p: &ReviewParams,
    classes: i64,
    device: Device,
    progress: bool,
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let mut model = Classifier::new(p.arch, classes, &HeadConfig::default(), device);
    let tensors = Tensor::read_safetensors(weights).with_context(|| format!("reading {}", weights.display()))?;
    model.load_body(&tensors).with_context(|| format!("loading {} into {}", weights.display(), p.arch))?;
    model.to_channels_last();
    let m16 = infer::inference_model(&model, p.precision, true)?;
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: p.batch_size,
        drop_last: false,
        augment: None,
        view: Default::default(),
        out_size: split.size,
        device,
        channels_last: true,
        part: maskflow_data::data::Part::WHOLE,
    };
    let bar = if progress { maskflow_core::progress::bar(plan.batches() as u64, "review features", "batches") } else { indicatif::ProgressBar::hidden() };
    let mut out = Vec::new();
    for batch in data::spawn_producer(split, plan, 0) {
        let m = m16.as_ref().unwrap_or(&model);
        out.push(m.pool(&m.features_t(&infer::as_precision(&batch?.x, &m16), false)).to_kind(Kind::Float).to_device(Device::Cpu));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let f = Tensor::cat(&out, 0);
    let mean = f.mean_dim(0, true, Kind::Float);
    let std = f.std_dim(0, false, true) + 1e-6;
    Ok((f - mean) / std)
}

/// The fold of each image: a seeded draw from its duplicate group, so copies share a fold.
pub fn folds(groups: &[String], k: usize, seed: u64) -> Vec<usize> {
    groups.iter().map(|g| ((unit_interval(seed, g) * k as f64) as usize).min(k - 1)).collect()
}

/// Out-of-fold class probabilities of every image.
pub fn out_of_fold(features: &Tensor, labels: &[i64], groups: &[String], classes: i64, p: &ReviewParams) -> Result<Vec<Vec<f64>>> {
    let fold = folds(groups, p.folds, p.seed);
    let y = Tensor::from_slice(labels);
    let mut probs = vec![vec![0.0; classes as usize]; labels.len()];
    for f in 0..p.folds {
        let (train, held): (Vec<i64>, Vec<i64>) = (0..labels.len() as i64).partition(|&i| fold[i as usize] != f);
        if held.is_empty() || train.is_empty() {
            continue;
        }
        let (train_t, held_t) = (Tensor::from_slice(&train), Tensor::from_slice(&held));
        let probe = fit(&features.index_select(0, &train_t), &y.index_select(0, &train_t), classes, p, f as u64)?;
        let held_p = tch::no_grad(|| probe.forward(&features.index_select(0, &held_t)).softmax(-1, Kind::Double));
        let flat = Vec::<f64>::try_from(held_p.flatten(0, -1)).context("reading probe probabilities")?;
        for (j, &i) in held.iter().enumerate() {
            probs[i as usize] = flat[j * classes as usize..(j + 1) * classes as usize].to_vec();
        }
    }
    Ok(probs)
}

/// A linear softmax probe, full-batch AdamW.
fn fit(x: &Tensor, y: &Tensor, classes: i64, p: &ReviewParams, fold: u64) -> Result<nn::Linear> {
    tch::manual_seed((p.seed ^ (fold.wrapping_mul(0x9e37_79b9))) as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let probe = nn::linear(vs.root(), x.size()[1], classes, Default::default());
    let mut opt = nn::AdamW { wd: p.weight_decay, ..Default::default() }.build(&vs, p.lr)?;
    for _ in 0..p.steps {
        let loss = probe.forward(x).cross_entropy_for_logits(y);
        opt.backward_step(&loss);
    }
    Ok(probe)
}
