//! The epoch loop, and its checkpoints: after every epoch the weights and Adam's moments
//! (`state-P-EEE.safetensors`) and then `progress.json`, the commit point naming them with their
//! blake3. A run finding a checkpoint of its own key resumes after that epoch; since every draw is a
//! function of the seed, the phase, the epoch and the photo, it ends with the same bytes.

use crate::augment::{apply, BoxAugment};
use crate::data::{Photos, Sample};
use crate::{DetTrainParams, DetTrainReport};
use anyhow::{Context, Result};
use maskflow_contracts::detector::DetEpoch;
use maskflow_core::fsutil::write_json_atomic;
use maskflow_core::rng::SplitMix64;
use maskflow_fit::checkpoint::{save_safetensors, sorted_variables, verified_tensors};
use maskflow_fit::optim::{Adam, AdamConfig};
use maskflow_fit::phase::Phase;
use maskflow_models::ssd::{FaceMaskSsd, SsdParams};
use maskflow_models::ssd_train::{loss, match_anchors, stack};
use maskflow_stage::Notes;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const PROGRESS_FILE: &str = "progress.json";

pub(crate) struct Run<'a> {
    pub params: &'a DetTrainParams,
    pub photos: &'a Photos,
    pub device: Device,
    /// Where checkpoints go (kept across failed attempts at this key).
    pub scratch: &'a Path,
    /// The stage key: a checkpoint of another key is not this run's.
    pub key: &'a str,
    pub notes: &'a dyn Notes,
}

/// Where a run stands (`progress.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    key: String,
    phase: Phase,
    /// Epochs of `phase` done.
    epochs_done: usize,
    tensors_file: String,
    tensors_blake3: String,
    epochs: Vec<DetEpoch>,
    seconds: f64,
}

/// Fine-tunes the detector whose weights are in `weights`; returns the report and the detector.
pub(crate) fn fit(run: &Run, weights: &Path) -> Result<(DetTrainReport, FaceMaskSsd)> {
    let p = run.params;
    let input = p.start.ssd_input().context("dettrain.start must be an SSD")?;
    let mut model = FaceMaskSsd::load(weights, input, SsdParams::default(), run.device).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let mut resumed_after = None;
    let (mut progress, mut opt_state) = match read_checkpoint(run) {
        Some((progress, vars, opt)) => {
            maskflow_models::classifier::load_named(model.var_store(), &vars, &[], &[]).context("restoring the checkpoint's weights")?;
            let at = format!("{} epoch {}", progress.phase, progress.epochs_done);
            run.notes.note(&format!("dettrain: resuming after {at} (checkpoint in {})", run.scratch.display()));
            resumed_after = Some(at);
            (progress, Some(opt))
        }
        None => (Progress { key: run.key.to_string(), phase: Phase::Frozen, epochs_done: 0, tensors_file: String::new(), tensors_blake3: String::new(), epochs: Vec::new(), seconds: 0.0 }, None),
    };
    let seconds_before = progress.seconds;
    for (phase, epochs, lr) in [(Phase::Frozen, p.head_epochs, p.head_lr), (Phase::Unfrozen, p.full_epochs, p.full_lr)] {
        if phase == Phase::Frozen && progress.phase == Phase::Unfrozen {
            continue;
        }
        if phase != progress.phase {
            progress.phase = phase;
            progress.epochs_done = 0;
            opt_state = None;
        }
        if progress.epochs_done >= epochs {
            continue;
        }
        trainable(&mut model, phase);
        let config = AdamConfig { beta2: p.beta2, eps: p.eps, weight_decay: p.weight_decay };
        let named: std::collections::BTreeMap<String, Tensor> = model.var_store().variables().into_iter().collect();
        let mut opt = Adam::new(config, named.iter().map(|(n, t)| (n.as_str(), t, 0)));
        if let Some(state) = opt_state.take() {
            opt.load_state(&state).context("restoring the optimizer from the checkpoint")?;
        }
        for epoch in progress.epochs_done..epochs {
            let t0 = Instant::now();
            let (train_loss, box_loss, class_loss) = train_epoch(run, &model, &mut opt, phase, epoch, epochs, lr)?;
            let valid_loss = valid_loss(run, &model)?;
            let e = DetEpoch { phase: phase.name().into(), epoch: epoch + 1, train_loss, box_loss, class_loss, valid_loss, seconds: t0.elapsed().as_secs_f64() };
            run.notes.note(&format!(
                "dettrain {:<8} epoch {:>2}  train_loss {:.4} (box {:.4}, class {:.4})  valid_loss {}  {:.0}s",
                e.phase,
                e.epoch,
                e.train_loss,
                e.box_loss,
                e.class_loss,
                e.valid_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                e.seconds
            ));
            progress.epochs.push(e);
            progress.epochs_done = epoch + 1;
            progress.seconds = seconds_before + started.elapsed().as_secs_f64();
            write_checkpoint(run, &model, opt.state(), &mut progress)?;
        }
    }
    let train_faces = run.photos.train.iter().map(|s| s.faces.len()).sum();
    let report = DetTrainReport {
        detector: p.start.name().to_string(),
        train_photos: run.photos.train.len(),
        valid_photos: run.photos.valid.len(),
        train_faces,
        epochs: progress.epochs,
        seconds: seconds_before + started.elapsed().as_secs_f64(),
        resumed_after,
    };
    Ok((report, model))
}

/// The heads alone (the body frozen), or everything; BatchNorm's statistics never train.
fn trainable(model: &mut FaceMaskSsd, phase: Phase) {
    let vs = model.var_store_mut();
    vs.unfreeze();
    if phase == Phase::Frozen {
        for (name, t) in vs.variables() {
            if t.requires_grad() && !FaceMaskSsd::is_head(&name) {
                let _ = t.set_requires_grad(false);
            }
        }
    }
}

/// The epoch's photo order: a permutation drawn from the seed, the phase and the epoch.
fn order(seed: u64, phase: Phase, epoch: usize, n: usize) -> Vec<usize> {
    let mut r = SplitMix64::derive(seed, &[0x0de7, phase.number(), epoch as u64]);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = r.int(0, i as i64) as usize;
        v.swap(i, j);
    }
    v
}

/// The augmentation stream of an epoch.
fn stream(phase: Phase, epoch: usize) -> u64 {
    phase.number() * 100_000 + epoch as u64
}

/// A batch: the photos as the network takes them, and their matched targets.
fn batch(model: &FaceMaskSsd, p: &DetTrainParams, samples: &[(&Sample, Option<crate::augment::Draw>)]) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let side = model.input.side();
    let mut xs = Vec::with_capacity(samples.len());
    let mut matched = Vec::with_capacity(samples.len());
    for (s, d) in samples {
        let (x, targets) = apply(s, d.as_ref(), side)?;
        xs.push(x);
        matched.push(match_anchors(model.anchors(), &targets, p.match_iou));
    }
    let (loc_t, cls_t, pos) = stack(&matched, model.device);
    Ok((Tensor::stack(&xs, 0), loc_t, cls_t, pos))
}

fn train_epoch(run: &Run, model: &FaceMaskSsd, opt: &mut Adam, phase: Phase, epoch: usize, epochs: usize, lr: f64) -> Result<(f64, f64, f64)> {
    let p = run.params;
    let train = &run.photos.train;
    let idx = order(p.train_seed, phase, epoch, train.len());
    let per_epoch = idx.len().div_ceil(p.batch_size);
    let total = per_epoch * epochs;
    let pb = maskflow_core::progress::bar(per_epoch as u64, "dettrain", "batches");
    let aug: &BoxAugment = &p.augment;
    let (mut sum, mut sum_box, mut sum_cls) = (0.0, 0.0, 0.0);
    for (b, chunk) in idx.chunks(p.batch_size).enumerate() {
        let samples: Vec<_> = chunk.iter().map(|&i| (&train[i], Some(aug.draw(p.train_seed, stream(phase, epoch), i as u64)))).collect();
        let (x, loc_t, cls_t, pos) = batch(model, p, &samples)?;
        let (loc, logits) = model.forward_logits(&x);
        let (bl, cl) = loss(&loc, &logits, &loc_t, &cls_t, &pos, p.neg_pos);
        let total_loss = &bl + &cl;
        opt.zero_grad();
        total_loss.backward();
        let (mult, beta1) = p.one_cycle.at(epoch * per_epoch + b, total);
        opt.step(&[lr * mult], beta1);
        let (lb, lc) = (bl.double_value(&[]), cl.double_value(&[]));
        anyhow::ensure!(lb.is_finite() && lc.is_finite(), "dettrain: the loss diverged ({lb}, {lc}) at {phase} epoch {} batch {b}", epoch + 1);
        sum += lb + lc;
        sum_box += lb;
        sum_cls += lc;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let n = per_epoch.max(1) as f64;
    Ok((sum / n, sum_box / n, sum_cls / n))
}

/// The mean loss over batches of the held photos (no augmentation), `None` without held photos.
fn valid_loss(run: &Run, model: &FaceMaskSsd) -> Result<Option<f64>> {
    let valid = &run.photos.valid;
    if valid.is_empty() {
        return Ok(None);
    }
    let p = run.params;
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in valid.chunks(p.batch_size) {
        let samples: Vec<_> = chunk.iter().map(|s| (s, None)).collect();
        let (x, loc_t, cls_t, pos) = batch(model, p, &samples)?;
        let l = tch::no_grad(|| {
            let (loc, logits) = model.forward_logits(&x);
            let (bl, cl) = loss(&loc, &logits, &loc_t, &cls_t, &pos, p.neg_pos);
            (bl + cl).to_kind(Kind::Double).double_value(&[])
        });
        sum += l;
        n += 1;
    }
    Ok(Some(sum / n as f64))
}

type Restored = (Progress, Vec<(String, Tensor)>, Vec<(String, Tensor)>);

/// This key's checkpoint in the scratch folder, if one verifies.
fn read_checkpoint(run: &Run) -> Option<Restored> {
    let bytes = std::fs::read(run.scratch.join(PROGRESS_FILE)).ok()?;
    let p: Progress = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            run.notes.note(&format!("dettrain: ignoring an unreadable {PROGRESS_FILE} in {}: {e}", run.scratch.display()));
            return None;
        }
    };
    if p.key != run.key {
        run.notes.note(&format!("dettrain: ignoring the checkpoint in {} (another key)", run.scratch.display()));
        return None;
    }
    let tensors = match verified_tensors(&run.scratch.join(&p.tensors_file), &p.tensors_blake3) {
        Ok(t) => t,
        Err(why) => {
            run.notes.note(&format!("dettrain: ignoring checkpoint {why}"));
            return None;
        }
    };
    let (model, opt): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n.starts_with("model."));
    let model = model.into_iter().map(|(n, t)| (n["model.".len()..].to_owned(), t)).collect();
    let opt = opt.into_iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|s| (s.to_owned(), t))).collect();
    Some((p, model, opt))
}

fn write_checkpoint(run: &Run, model: &FaceMaskSsd, opt_state: Vec<(String, Tensor)>, progress: &mut Progress) -> Result<()> {
    std::fs::create_dir_all(run.scratch).with_context(|| format!("creating {}", run.scratch.display()))?;
    let name = format!("state-{}-{:03}.safetensors", progress.phase.number(), progress.epochs_done);
    let mut named: Vec<(String, Tensor)> = sorted_variables(model.var_store()).into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    named.extend(opt_state.into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
    let path = run.scratch.join(&name);
    save_safetensors(&named, &path)?;
    let (blake3, _) = maskflow_core::hash::blake3_file(&path).with_context(|| format!("hashing {}", path.display()))?;
    let old = std::mem::replace(&mut progress.tensors_file, name);
    progress.tensors_blake3 = blake3;
    write_json_atomic(&run.scratch.join(PROGRESS_FILE), progress)?;
    if !old.is_empty() && old != progress.tensors_file {
        let _ = std::fs::remove_file(run.scratch.join(old));
    }
    Ok(())
}

