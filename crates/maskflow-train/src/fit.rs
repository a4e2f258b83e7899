//! The training loops: one epoch loop for both ways of training the frozen phase (batches of
//! images through the whole model, or batches of a fixed body's pooled features through the head)
//! and for the unfrozen phase; and fastai's lr finder.

use crate::checkpoint::{self, Progress};
use crate::data::{self, EpochPlan, SplitData};
use crate::lr_find::{self, LrFindResult, Smoother, StopRule};
use crate::optim::{Adam, AdamConfig};
use crate::phase::Phase;
use crate::ranks;
use crate::seeds;
use crate::{Balance, BodyBatchNorm, Runtime, TrainParams, TrainPrecision};
use anyhow::{bail, Context, Result};
use maskflow_contracts::model::EpochMetrics;
use maskflow_data::infer::{self, InferOptions};
use maskflow_models::classifier::GROUPS;
use maskflow_models::Classifier;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What a run's loops share.
pub(crate) struct Ctx<'a> {
    pub params: &'a TrainParams,
    pub rt: &'a Runtime,
    pub train: SplitData,
    pub valid: SplitData,
    pub out_size: i64,
    pub classes: usize,
    pub class_weights: Option<Tensor>,
    /// Epochs run by this process (for the crate's resume tests).
    pub epochs_run: usize,
}

/// The interruption that the crate's resume tests ask for (a checkpoint was written).
#[derive(Debug)]
pub(crate) struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("training stopped after the requested number of epochs (checkpoint written)")
    }
}
impl std::error::Error for Interrupted {}

fn loss_fn(ctx: &Ctx, logits: &Tensor, y: &Tensor) -> Tensor {
    match &ctx.class_weights {
        Some(w) => logits.log_softmax(-1, Kind::Float).g_nll_loss(y, Some(w), tch::Reduction::Mean, -100),
        None => logits.cross_entropy_for_logits(y),
    }
}

/// One optimizer step on a batch: the forward pass (in a bf16 autocast region with
/// `precision = "bf16-mixed"`), the loss in fp32, the backward pass, the gradients' mean over the
/// data-parallel ranks, the step. `scale` turns this rank's mean loss into its share of the global
/// batch's (`ranks::loss_scale`; 1 when every rank takes the whole batch); returns the batch's mean
/// loss over all ranks.
#[allow(clippy::too_many_arguments)]
fn train_step(
    ctx: &Ctx,
    model: &Classifier,
    opt: &mut Adam,
    forward: impl FnOnce() -> Tensor,
    y: &Tensor,
    scale: f64,
    lrs: &[f64],
    mom: f64,
) -> Result<f64> {
    let kind = match ctx.params.precision {
        TrainPrecision::Fp32 => None,
        TrainPrecision::Bf16Mixed => Some(Kind::BFloat16),
    };
    let logits = maskflow_torchext::autocast::with(ctx.rt.device, kind, forward)?;
    let loss = loss_fn(ctx, &logits.to_kind(Kind::Float), y) * scale;
    opt.zero_grad();
    loss.backward();
    let lv = ranks::reduce_gradients(ctx.rt, model, &loss)?;
    opt.step(lrs, mom);
    if let (Some(dir), true) = (&ctx.rt.step_log, ctx.rt.is_root()) {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        crate::checkpoint::save_safetensors(&crate::checkpoint::sorted_variables(model), &dir.join(format!("step-{n:05}.safetensors")))?;
    }
    Ok(lv)
}

pub(crate) fn new_optimizer(ctx: &Ctx, model: &Classifier, state: Option<Vec<(String, Tensor)>>) -> Result<Adam> {
    let p = ctx.params;
    let config = AdamConfig { beta2: p.beta2, eps: p.eps, weight_decay: p.weight_decay };
    let mut opt = Adam::new(config, model.params().iter().map(|p| (p.name.as_str(), &p.tensor, p.group)));
    if let Some(s) = state {
        opt.load_state(&s).context("restoring the optimizer from the checkpoint")?;
    }
    Ok(opt)
}

/// An epoch over the training images: its order and augmentation from the named streams.
fn image_plan(ctx: &Ctx, order: seeds::Order, augment: seeds::Augment) -> EpochPlan {
    let p = ctx.params;
    let (stream, epoch) = order.coords();
    let order = match &ctx.train.pixels {
        data::Pixels::Stream(src) => data::stream_order(src, p.shuffle_buffer, p.seed, stream, epoch),
        data::Pixels::Memory(_) => {
            data::epoch_order(&ctx.train.label_idx, ctx.classes, p.seed, stream, epoch, p.balance == Balance::Oversample)
        }
    };
    EpochPlan {
        order,
        batch_size: p.batch_size,
        drop_last: p.drop_last,
        augment: Some((p.augment.clone(), p.seed, augment.stream())),
        view: Default::default(),
        out_size: ctx.out_size,
        device: ctx.rt.device,
        channels_last: p.channels_last,
        part: ctx.rt.part(),
    }
}

/// The training-mode forward pass: the head always in train mode (dropout, BatchNorm1d); the body's
/// BatchNorm per `body_batchnorm`.
fn train_forward(ctx: &Ctx, model: &Classifier, x: &Tensor) -> Tensor {
    let body_train = ctx.params.body_batchnorm == BodyBatchNorm::Update;
    model.head_t(&model.features_t(x, body_train), !ctx.rt.head_eval)
}

pub(crate) fn bar(ctx: &Ctx, len: usize, what: &str) -> indicatif::ProgressBar {
    if ctx.rt.progress {
        maskflow_core::progress::bar(len as u64, what, "batches")
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Validation loss and accuracy, and the probabilities, of the whole model on `split`.
pub(crate) fn evaluate(ctx: &Ctx, model: &Classifier, split: &SplitData) -> Result<(f64, f64, Tensor)> {
    infer::evaluate_split(
        model,
        split,
        &InferOptions {
            out_size: ctx.out_size,
            batch_size: ctx.params.valid_batch_size,
            device: ctx.rt.device,
            channels_last: ctx.params.channels_last,
            precision: ctx.params.inference_precision,
            view: Default::default(),
        },
    )
}

/// Where an epoch's batches come from.
pub(crate) enum Batches {
    /// Augmented images through the producer, forward through body and head.
    Images,
    /// Pooled features of a fixed body: one tensor per view of the training set (view 0 centred,
    /// then augmented copies), the validation set's, and what computing them cost.
    Features { views: Vec<Tensor>, valid: Tensor, labels: Tensor, seconds: f64 },
}

impl Batches {
    /// A fixed body's features of the training set (`fixed_body_copies` augmented views besides the
    /// centred one) and of the validation set, with the body in eval mode.
    pub fn fixed_body(ctx: &Ctx, model: &Classifier) -> Result<Batches> {
        let t = Instant::now();
        let views: Vec<Tensor> =
            (0..=ctx.params.fixed_body_copies).map(|v| pooled_features(ctx, model, &ctx.train, v)).collect::<Result<_>>()?;
        let valid = pooled_features(ctx, model, &ctx.valid, 0)?;
        let labels = ctx.train.labels.to_device(ctx.rt.device);
        Ok(Batches::Features { views, valid, labels, seconds: t.elapsed().as_secs_f64() })
    }

    /// Batches per epoch (every order, oversampled too, has one entry per training image).
    fn per_epoch(&self, ctx: &Ctx) -> usize {
        let (n, bs) = (ctx.train.len(), ctx.params.batch_size);
        if ctx.params.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// The epoch's (input, label) batches.
    fn epoch<'s>(&'s self, ctx: &Ctx, phase: Phase, epoch: usize) -> Box<dyn Iterator<Item = Result<(Tensor, Tensor)>> + 's> {
        match self {
            Batches::Images => {
                let plan = image_plan(ctx, seeds::Order::Epoch { phase, epoch }, seeds::Augment::Epoch { phase, epoch });
                let rx = data::spawn_producer(&ctx.train, plan, ctx.params.shuffle_buffer);
                Box::new(rx.into_iter().map(|b| b.map(|b| (b.x, b.y))))
            }
            Batches::Features { views, labels, .. } => {
                let p = ctx.params;
                let (stream, e) = seeds::Order::Epoch { phase, epoch }.coords();
                let order = data::epoch_order(&ctx.train.label_idx, ctx.classes, p.seed, stream, e, p.balance == Balance::Oversample);
                let feats = &views[epoch % views.len()];
                let (bs, nb, device) = (p.batch_size, self.per_epoch(ctx), ctx.rt.device);
                Box::new((0..nb).map(move |b| {
                    let idx: Vec<i64> = order[b * bs..((b + 1) * bs).min(order.len())].iter().map(|&i| i as i64).collect();
                    let idx = Tensor::from_slice(&idx).to_device(device);
                    Ok((feats.index_select(0, &idx), labels.index_select(0, &idx)))
                }))
            }
        }
    }

    fn forward(&self, ctx: &Ctx, model: &Classifier, x: &Tensor) -> Tensor {
        match self {
            Batches::Images => train_forward(ctx, model, x),
            Batches::Features { .. } => model.head_from_pooled_t(x, !ctx.rt.head_eval),
        }
    }

    /// Validation loss and accuracy after an epoch.
    fn validate(&self, ctx: &Ctx, model: &Classifier) -> Result<(f64, f64)> {
        match self {
            // Only rank 0 reports metrics; the others go on to the next epoch's first all-reduce.
            Batches::Images if !ctx.rt.is_root() => Ok((f64::NAN, f64::NAN)),
            Batches::Images => evaluate(ctx, model, &ctx.valid).map(|(l, a, _)| (l, a)),
            Batches::Features { valid, .. } => {
                let _g = tch::no_grad_guard();
                let logits = model.head_from_pooled_t(valid, false);
                let y = ctx.valid.labels.to_device(ctx.rt.device);
                let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0).double_value(&[]);
                let acc = logits.argmax(-1, false).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                Ok((loss, acc))
            }
        }
    }

    /// Time spent before the first epoch that the first epoch run reports (the features).
    fn setup_seconds(&self) -> f64 {
        match self {
            Batches::Images => 0.0,
            Batches::Features { seconds, .. } => *seconds,
        }
    }
}

/// Pooled body features (N, F) of `split` with the body in eval mode: view 0 is the centred view,
/// views 1.. augmented draws.
fn pooled_features(ctx: &Ctx, model: &Classifier, split: &SplitData, view: usize) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: ctx.params.valid_batch_size,
        drop_last: false,
        augment: (view > 0).then(|| (ctx.params.augment.clone(), ctx.params.seed, seeds::Augment::FeatureView { view }.stream())),
        view: Default::default(),
        out_size: ctx.out_size,
        device: ctx.rt.device,
        channels_last: ctx.params.channels_last,
        part: ctx.rt.part(),
    };
    // With data-parallel ranks, each computes its part of every batch (the rows it would train on)
    // and the parts are summed into the whole.
    let (bs, n, part) = (plan.batch_size, split.len(), plan.part);
    let rows: Vec<i64> =
        (0..plan.batches()).flat_map(|b| part.positions(bs.min(n - b * bs)).map(move |p| (b * bs + p) as i64)).collect();
    let pb = bar(ctx, plan.batches(), &format!("features {view}"));
    let m16 = infer::inference_model(model, ctx.params.inference_precision, ctx.params.channels_last)?;
    let mut out = Vec::new();
    for batch in data::spawn_producer(split, plan, 0) {
        let m = m16.as_ref().unwrap_or(model);
        out.push(m.pool(&m.features_t(&infer::as_precision(&batch?.x, &m16), false)).to_kind(Kind::Float));
        pb.inc(1);
    }
    pb.finish_and_clear();
    ranks::assemble_rows(ctx.rt, &Tensor::cat(&out, 0), &rows, n as i64)
}

/// What the epoch loop learns about one epoch's batches.
#[derive(Default)]
struct Tally {
    sum: f64,
    batches: usize,
    images: usize,
}

/// `fit_one_cycle(epochs, max_lrs)` for `phase`, from where `progress` stands, over `batches`;
/// every epoch ends with validation, its metrics and a checkpoint.
pub(crate) fn fit(
    ctx: &mut Ctx,
    model: &mut Classifier,
    phase: Phase,
    epochs: usize,
    max_lrs: &[f64],
    batches: &Batches,
    progress: &mut Progress,
    opt_state: Option<Vec<(String, Tensor)>>,
) -> Result<()> {
    let mut opt = new_optimizer(ctx, model, opt_state)?;
    let nb = batches.per_epoch(ctx);
    let total = nb * epochs;
    let first = progress.epochs_done;
    ranks::sync_start(ctx.rt, model, phase as i64, first)?;
    let (n, bs) = (ctx.train.len(), ctx.params.batch_size);
    for epoch in first..epochs {
        let t0 = Instant::now();
        tch::manual_seed(seeds::Torch::Epoch { phase, epoch }.seed(ctx.params.seed));
        let pb = bar(ctx, nb, &format!("{phase} {}/{epochs}", epoch + 1));
        let mut t = Tally::default();
        for (b, batch) in batches.epoch(ctx, phase, epoch).enumerate() {
            let (x, y) = batch?;
            let (mult, mom) = ctx.params.one_cycle.at(epoch * nb + b, total);
            let lrs: Vec<f64> = max_lrs.iter().map(|l| l * mult).collect();
            // Image batches are split over the ranks; a fixed body's features are not (each rank
            // takes the whole batch through the small head: same numbers, no all-reduce needed).
            let (global_rows, scale) = match batches {
                Batches::Images => {
                    let rows = bs.min(n - b * bs);
                    (rows, ranks::loss_scale(ctx.rt.part(), y.size()[0] as usize, rows))
                }
                Batches::Features { .. } => (y.size()[0] as usize, 1.0),
            };
            let lv = train_step(ctx, model, &mut opt, || batches.forward(ctx, model, &x), &y, scale, &lrs, mom)?;
            if !lv.is_finite() {
                bail!("train: the loss became {lv} at {phase} epoch {} batch {b}; lower the learning rate", epoch + 1);
            }
            let ema = progress.ema.add(lv);
            t.sum += lv;
            t.batches += 1;
            t.images += global_rows;
            pb.inc(1);
            pb.set_message(format!("loss {ema:.4}  {:.1} img/s", t.images as f64 / t0.elapsed().as_secs_f64()));
        }
        pb.finish_and_clear();
        // The fixed body's features are counted in the first epoch this process runs.
        let setup = if epoch == first { batches.setup_seconds() } else { 0.0 };
        let train_seconds = t0.elapsed().as_secs_f64() + setup;
        let (valid_loss, accuracy) = batches.validate(ctx, model)?;
        let m = EpochMetrics {
            phase: phase.name().into(),
            epoch: epoch + 1,
            train_loss_ema: progress.ema.value(),
            train_loss_mean: t.sum / t.batches.max(1) as f64,
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            lrs: max_lrs.to_vec(),
            seconds: t0.elapsed().as_secs_f64() + setup,
            images_per_second: t.images as f64 / train_seconds.max(1e-9),
        };
        end_epoch(ctx, model, &opt, progress, phase, epoch, m)?;
    }
    Ok(())
}

/// Records an epoch's metrics and writes the checkpoint (and, in this crate's resume tests, stops
/// as if killed).
fn end_epoch(ctx: &mut Ctx, model: &Classifier, opt: &Adam, progress: &mut Progress, phase: Phase, epoch: usize, m: EpochMetrics) -> Result<()> {
    if ctx.rt.progress {
        ctx.rt.note(format!(
            "train   {:<8} epoch {:>2}  train_loss {:.4} (mean {:.4})  valid_loss {:.4}  accuracy {:.4}  error_rate {:.4}  {:.0}s  {:.1} img/s",
            m.phase, m.epoch, m.train_loss_ema, m.train_loss_mean, m.valid_loss, m.accuracy, m.error_rate, m.seconds, m.images_per_second
        ));
    }
    progress.metrics.push(m);
    progress.phase = phase;
    progress.epochs_done = epoch + 1;
    if ctx.rt.is_root() {
        checkpoint::write(&ctx.rt.checkpoint_dir, model, opt.state(), progress)?;
    }
    ctx.epochs_run += 1;
    if ctx.rt.stop_after_epochs.is_some_and(|n| ctx.epochs_run >= n) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// fastai's `lr_find()` with the current freezing; the weights (and BatchNorm statistics) are restored.
pub(crate) fn lr_finder(ctx: &mut Ctx, model: &mut Classifier) -> Result<LrFindResult> {
    let lf = ctx.params.lr_find.clone();
    let saved: Vec<(String, Tensor)> = model.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let mut opt = new_optimizer(ctx, model, None)?;
    let mut smoother = Smoother::new(0.98);
    let mut stop = StopRule::new(lf.stop_factor);
    let mut result = LrFindResult { lrs: vec![], raw_losses: vec![], smoothed_losses: vec![], stopped_early: false, suggestions: None };
    let pb = bar(ctx, lf.iterations, "lr_find");
    let mut it = 0;
    'outer: for pass in 0.. {
        tch::manual_seed(seeds::Torch::LrFind { pass }.seed(ctx.params.seed));
        let plan = image_plan(ctx, seeds::Order::LrFind { pass }, seeds::Augment::LrFind { pass });
        for batch in data::spawn_producer(&ctx.train, plan, ctx.params.shuffle_buffer) {
            let batch = batch?;
            if it >= lf.iterations {
                break 'outer;
            }
            let lr = lr_find::sweep_lr(lf.start, lf.end, it, lf.iterations);
            let rows = ctx.params.batch_size.min(ctx.train.len() - batch.index * ctx.params.batch_size);
            let scale = ranks::loss_scale(ctx.rt.part(), batch.y.size()[0] as usize, rows);
            let lv = train_step(ctx, model, &mut opt, || train_forward(ctx, model, &batch.x), &batch.y, scale, &[lr; GROUPS], 0.9)?;
            let s = smoother.add(lv);
            result.lrs.push(lr);
            result.raw_losses.push(lv);
            result.smoothed_losses.push(s);
            it += 1;
            pb.inc(1);
            if stop.should_stop(s) {
                result.stopped_early = true;
                break 'outer;
            }
        }
    }
    pb.finish_and_clear();
    let map: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
    tch::no_grad(|| {
        for (n, mut t) in model.vs.variables() {
            if let Some(s) = map.get(&n) {
                t.copy_(s);
            }
        }
    });
    result.suggestions = lr_find::suggest(&result.lrs, &result.smoothed_losses);
    if let Some(s) = &result.suggestions {
        ctx.rt.note(format!(
            "lr_find {} iterations{}: valley {:.2e}, steep {:.2e}, minimum/10 {:.2e}",
            result.lrs.len(),
            if result.stopped_early { " (stopped: loss diverged)" } else { "" },
            s.valley,
            s.steep,
            s.minimum_div_10
        ));
    }
    Ok(result)
}
