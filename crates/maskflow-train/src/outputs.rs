//! What a run leaves for people besides the weights: the lr finder's CSV and plot, the training
//! curves, and fastai's `show_batch`.

use crate::data::{self, EpochPlan};
use crate::lr_find::LrFindResult;
use crate::{augment, seeds, TrainParams};
use anyhow::Result;
use maskflow_contracts::model::{EpochMetrics, LR_FIND_CSV, LR_FIND_PNG};
use maskflow_core::fsutil::write_atomic;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub(crate) fn write_lr_find(out_dir: &Path, r: &LrFindResult) -> Result<()> {
    let mut csv = String::from("iteration,lr,loss,smoothed_loss\n");
    for (i, ((lr, raw), s)) in r.lrs.iter().zip(&r.raw_losses).zip(&r.smoothed_losses).enumerate() {
        csv.push_str(&format!("{i},{lr:e},{raw},{s}\n"));
    }
    write_atomic(&out_dir.join(LR_FIND_CSV), csv.as_bytes())?;
    let at = |lr: f64| {
        r.lrs
            .iter()
            .zip(&r.smoothed_losses)
            .min_by(|a, b| (a.0 - lr).abs().total_cmp(&(b.0 - lr).abs()))
            .map(|(_, &l)| l)
            .unwrap_or(0.0)
    };
    let mut markers = Vec::new();
    if let Some(s) = &r.suggestions {
        markers.push(maskflow_plot::Marker { label: "valley", x: s.valley, y: at(s.valley) });
        markers.push(maskflow_plot::Marker { label: "steep", x: s.steep, y: at(s.steep) });
        markers.push(maskflow_plot::Marker { label: "min/10", x: s.minimum_div_10, y: at(s.minimum_div_10) });
    }
    // Like fastai's plot: skip the first 10 points and the last 5, where the loss is noise or explodes.
    let n = r.lrs.len();
    let lo = 10.min(n);
    let hi = n.saturating_sub(5).max(lo);
    let chart = maskflow_plot::LineChart {
        title: "lr finder (smoothed loss)",
        x_label: "learning rate (log)",
        y_label: "loss",
        series: vec![maskflow_plot::Series {
            name: "smoothed loss",
            points: r.lrs[lo..hi].iter().copied().zip(r.smoothed_losses[lo..hi].iter().copied()).collect(),
        }],
        markers,
        log_x: true,
    };
    maskflow_plot::line_chart(&out_dir.join(LR_FIND_PNG), &chart, 800, 500)
}

pub(crate) fn plot_curves(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics.iter().enumerate().map(|(i, m)| ((i + 1) as f64, f(m))).collect()
    };
    let chart = maskflow_plot::LineChart {
        title: "training curves (epochs across both phases)",
        x_label: "epoch",
        y_label: "loss / accuracy",
        series: vec![
            maskflow_plot::Series { name: "train loss (smoothed)", points: pts(&|m| m.train_loss_ema) },
            maskflow_plot::Series { name: "train loss (mean)", points: pts(&|m| m.train_loss_mean) },
            maskflow_plot::Series { name: "valid loss", points: pts(&|m| m.valid_loss) },
            maskflow_plot::Series { name: "accuracy", points: pts(&|m| m.accuracy) },
        ],
        markers: vec![],
        log_x: false,
    };
    maskflow_plot::line_chart(path, &chart, 800, 500)
}

/// fastai's `show_batch`: nine augmented training images with their class (streamed: only the row
/// groups of the images shown are read).
pub(crate) fn show_batch(path: &Path, prep_dir: &Path, classes: &[String], p: &TrainParams, out_size: i64) -> Result<()> {
    let n = 9;
    let train = data::open_splits(prep_dir, &["train"], classes.len(), data::DataMode::Stream, 0)?;
    if train.is_empty() {
        return Ok(());
    }
    let first = seeds::Order::Epoch { phase: crate::Phase::Frozen, epoch: 0 };
    let (stream, epoch) = first.coords();
    let order = data::epoch_order(&train.label_idx, classes.len(), p.seed, stream, epoch, false);
    let augment = seeds::Augment::Epoch { phase: crate::Phase::Frozen, epoch: 0 }.stream();
    let plan = EpochPlan {
        order: order.into_iter().take(n).collect(),
        batch_size: n,
        drop_last: false,
        augment: Some((p.augment.clone(), p.seed, augment)),
        view: Default::default(),
        out_size,
        device: Device::Cpu,
        channels_last: false,
        part: data::Part::WHOLE,
    };
    let batch = data::spawn_producer(&train, plan, n)
        .recv()
        .map_err(|_| anyhow::anyhow!("show_batch: no batch was produced"))??;
    let mean = Tensor::from_slice(&augment::MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&augment::STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let pixels = ((batch.x * std + mean).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([0, 2, 3, 1]);
    let labels: Vec<i64> = Vec::<i64>::try_from(&batch.y)?;
    let tiles: Vec<maskflow_plot::Tile> = (0..labels.len())
        .map(|i| maskflow_plot::Tile {
            image: data::to_rgb(&pixels.get(i as i64)),
            title: vec![classes.get(labels[i] as usize).cloned().unwrap_or_default()],
        })
        .collect();
    let cols = (tiles.len() as f64).sqrt().ceil().max(1.0) as usize;
    maskflow_plot::image_grid(path, &tiles, cols, 180, "show_batch — augmented training images")?;
    Ok(())
}
