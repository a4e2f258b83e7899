//! Scores a TorchScript classifier (normalised float N×3×H×W in, logits out — e.g. the PyTorch
//! replica's, `REPLICA_SAVE=…`) on exactly the images eval's robustness section scores: a prep
//! artifact's validation split, clean and under each corruption × severity, through the same batch
//! producer and views. Prints the `Robustness` JSON (as in eval's metrics.json).
//!
//! usage: robustness_torchscript MODEL.pt PREP_DIR [SEVERITIES, default 1,3,5]

use anyhow::{Context, Result};
use maskflow_contracts::eval::CorruptionScore;
use maskflow_contracts::shards::ShardSetMeta;
use maskflow_contracts::JsonFile;
use maskflow_data::corrupt::{image_seed, Family};
use maskflow_data::data::{self, EpochPlan, SplitData, View};
use std::sync::Arc;
use tch::{CModule, Device, Kind, Tensor};

/// Accuracy, log loss and per-class recall of `module` on `split` in `view`.
fn score(module: &CModule, split: &SplitData, view: View, k: usize) -> Result<(f64, f64, Vec<f64>)> {
    let _g = tch::no_grad_guard();
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: 64,
        drop_last: false,
        augment: None,
        view,
        out_size: split.size,
        device: Device::Cpu,
        channels_last: true,
        part: maskflow_data::data::Part::WHOLE,
    };
    let (mut loss, mut hit, mut n) = (0.0, vec![0u64; k], vec![0u64; k]);
    for batch in data::spawn_producer(split, plan, 0) {
        let b = batch?;
        let logits = module.forward_ts(&[b.x]).context("forward")?.to_kind(Kind::Float);
        loss += logits.cross_entropy_loss::<Tensor>(&b.y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
        let pred = Vec::<i64>::try_from(logits.argmax(-1, false))?;
        let y = Vec::<i64>::try_from(&b.y)?;
        for (p, y) in pred.iter().zip(&y) {
            n[*y as usize] += 1;
            hit[*y as usize] += u64::from(p == y);
        }
    }
    let total: u64 = n.iter().sum();
    let recall = hit.iter().zip(&n).map(|(&h, &n)| if n == 0 { 0.0 } else { h as f64 / n as f64 }).collect();
    Ok((hit.iter().sum::<u64>() as f64 / total as f64, loss / total as f64, recall))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: robustness_torchscript MODEL.pt PREP_DIR [SEVERITIES]");
    let severities: Vec<u8> =
        args.get(3).map_or("1,3,5", String::as_str).split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
    let module = CModule::load(&args[1]).with_context(|| args[1].clone())?;
    let prep = std::path::Path::new(&args[2]);
    let meta = ShardSetMeta::read(prep)?;
    let k = meta.classes.len();
    let split = maskflow_data::open_splits(prep, &["valid"], k, maskflow_data::DataMode::Memory, 0)?;
    let (clean, clean_loss, clean_recall) = score(&module, &split, View::default(), k)?;
    eprintln!("clean: accuracy {clean:.4}, log loss {clean_loss:.4}, recall {clean_recall:?}");
    let mut scores = Vec::new();
    for family in Family::ALL {
        for &severity in &severities {
            let seeds: Vec<u64> = split.hashes.iter().map(|h| image_seed(h, family, severity)).collect();
            let view = View { transform: None, corruption: Some((family, severity, Arc::new(seeds))) };
            let (accuracy, log_loss, recall) = score(&module, &split, view, k)?;
            eprintln!("{} {severity}: {accuracy:.4}", family.name());
            scores.push(CorruptionScore {
                family: family.name().into(),
                severity,
                level: family.level(severity),
                unit: family.unit().into(),
                accuracy,
                log_loss,
                recall,
            });
        }
    }
    println!("{}", serde_json::to_string_pretty(&maskflow_eval::robustness::summarise(clean, scores))?);
    Ok(())
}
