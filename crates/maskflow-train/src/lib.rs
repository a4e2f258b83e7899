//! maskflow-train: the train stage. A shard set → a fine-tuned classifier, the notebook's way: the
//! frozen phase (body frozen, BatchNorm still training — or a fixed body's features), then the
//! unfrozen phase with discriminative learning rates, both `fit_one_cycle` with Adam and decoupled
//! weight decay.
//!
//! Read it in this order:
//! - [`params`]: every knob (`[train]` of a pipeline file), with fastai's defaults.
//! - [`run`] (below): opening the data, resuming, the two phases, the outputs.
//! - `fit`: the one epoch loop (images through the model, or a fixed body's features through the
//!   head) and the lr finder; `checkpoint`: what is written after every epoch; [`seeds`]: every
//!   random stream by name; `outputs`: plots and `show_batch`.
//! - [`schedule`], [`optim`], [`lr_find`]: one-cycle, Adam, the finder's maths.
//!
//! Outputs: the `trained_model` contract (`maskflow_contracts::model`): `model.safetensors`,
//! `train_config.json`, `metrics.jsonl`, `curves.png`, `show_batch.png`, and with `lr = "find"`
//! `lr_find.csv` + `lr_find.png`. Killed, a run resumes from its last epoch's checkpoint and ends
//! with the same weights as an uninterrupted one.

mod checkpoint;
mod fit;
pub mod lr_find;
mod outputs;
pub mod params;
pub mod ranks;
pub mod seeds;
/// One-cycle, Adam and the phases live below the stages (`maskflow-fit`), shared with `dettrain`.
pub use maskflow_fit::{optim, phase, schedule};
#[cfg(test)]
mod tests;

pub use maskflow_contracts::model::{
    EpochMetrics, TrainConfig, CURVES_FILE, LR_FIND_CSV, LR_FIND_PNG, METRICS_FILE, MODEL_FILE, SHOW_BATCH_FILE,
};
pub use maskflow_data::{augment, data};
pub use params::{Balance, BodyBatchNorm, DataMode, FrozenMode, Precision, TrainParams, TrainPrecision};
pub use phase::Phase;

use anyhow::{bail, Context, Result};
use checkpoint::Progress;
use data::SplitData;
use fit::{Batches, Ctx};
use lr_find::{LrFindResult, Smoother};
use maskflow_contracts::shards::ShardSetMeta;
use maskflow_contracts::{kinds, JsonFile};
use maskflow_models::classifier::{load_named, Classifier, GROUPS};
use maskflow_stage::{External, RunCtx, Slot, Stage};
use schedule::Lr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// The train stage kind.
pub struct TrainStage;

impl Stage for TrainStage {
    const KIND: &'static str = "train";
    const VERSION: u32 = 2;
    const OUTPUT: &'static str = kinds::TRAINED_MODEL;
    type Params = TrainParams;
    type Report = TrainReport;

    fn validate(p: &TrainParams) -> Result<(), String> {
        p.validate()
    }
    fn inputs(_: &TrainParams) -> Vec<Slot> {
        vec![Slot::new("shards", kinds::SHARD_SET)]
    }
    /// The pretrained weights, imported into the store, keyed by their sha256.
    fn externals(p: &TrainParams, rt: &maskflow_stage::Runtime) -> Result<BTreeMap<String, External>> {
        let mut out = BTreeMap::new();
        if p.pretrained != "none" {
            let search = maskflow_models::weights::SearchPaths::from_env();
            let w = maskflow_models::weights::ensure(&p.pretrained, None, &rt.artifacts, &search)
                .with_context(|| format!("pretrained = {:?}", p.pretrained))?;
            out.insert("weights".to_string(), External { path: w.safetensors(), key: format!("sha256:{}", w.sha256), files: None });
        }
        Ok(out)
    }
    fn run(p: &TrainParams, ctx: &RunCtx) -> Result<TrainReport> {
        let shards = ctx.input("shards")?;
        let meta = ShardSetMeta::read(shards)?;
        let inputs =
            Inputs { prep_dir: shards.to_path_buf(), classes: meta.classes, pretrained: ctx.externals.get("weights").map(|w| w.path.clone()) };
        let device = maskflow_models::torch_device(ctx.runtime.device);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let group = match (&ctx.runtime.ranks, p.world_size > 1) {
            (Some(any), true) => Some(
                any.clone()
                    .downcast::<std::sync::Mutex<maskflow_torchext::dist::ProcessGroup>>()
                    .map_err(|_| anyhow::anyhow!("internal: the run's ranks are not a process group"))?,
            ),
            _ => None,
        };
        let rt = Runtime { notes: Some(tx), group, ..Runtime::new(device, ctx.runtime.threads, ctx.scratch.to_path_buf(), ctx.runtime.progress) };
        // The other ranks wait for their work: this stage, with its inputs and checkpoint folder.
        if let Some(g) = &rt.group {
            let job = ranks::RankJob { inputs: inputs.clone(), params: p.clone(), checkpoint_dir: rt.checkpoint_dir.clone() };
            ranks::send(g, &ranks::RankMessage::Train(Box::new(job)))?;
        }
        // The notes reach the runner from this thread while training runs; dropping `rt` (on
        // every way out, a panic included) ends it.
        std::thread::scope(move |s| {
            s.spawn(move || {
                for line in rx {
                    ctx.notes.note(&line);
                }
            });
            let rt = rt;
            run(&inputs, p, &rt, ctx.out)
        })
    }
    fn summary(r: &TrainReport) -> String {
        format!(
            "{} {} epochs on {} images: accuracy {:.4}, valid loss {:.4} on {} images; {:.0}s on {}{}",
            r.arch,
            r.epochs.len(),
            r.train_images,
            r.accuracy,
            r.valid_loss,
            r.valid_images,
            r.seconds,
            r.device,
            r.resumed_from.as_ref().map(|s| format!(" (resumed from {s})")).unwrap_or_default(),
        )
    }
    /// Train seconds and the last epoch's figures; per-epoch curves over both phases (epoch 1 is
    /// the first frozen one).
    fn metrics(r: &TrainReport) -> maskflow_stage::Metrics {
        let curve = |name, y: fn(&maskflow_contracts::model::EpochMetrics) -> f64| maskflow_stage::Curve {
            name,
            x_label: "epoch",
            points: r.epochs.iter().enumerate().map(|(i, e)| ((i + 1) as f64, y(e))).collect(),
        };
        maskflow_stage::Metrics {
            scalars: vec![
                maskflow_stage::Scalar::headline("seconds", r.seconds),
                maskflow_stage::Scalar::other("valid_loss", r.valid_loss),
                maskflow_stage::Scalar::other("accuracy", r.accuracy),
            ],
            curves: vec![
                curve("train_loss", |e| e.train_loss_mean),
                curve("valid_loss", |e| e.valid_loss),
                curve("accuracy", |e| e.accuracy),
            ],
            confusion: None,
        }
    }
}

/// Where and how the stage runs (not part of the stage key).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Checkpoints of this exact configuration (the runner keys it by the stage key).
    pub checkpoint_dir: PathBuf,
    pub progress: bool,
    /// Stop as if killed after this many epochs (set only by this crate's resume tests).
    pub(crate) stop_after_epochs: Option<usize>,
    /// The head in eval mode while training too (BatchNorm1d on running statistics, no dropout),
    /// and every step's weights written here: only the data-parallel equality test sets these.
    pub(crate) head_eval: bool,
    pub(crate) step_log: Option<PathBuf>,
    /// Where its messages go (epoch figures, resuming, a checkpoint ignored); none are kept
    /// without it. The stage forwards them to the runner; this crate never prints.
    pub notes: Option<std::sync::mpsc::Sender<String>>,
    /// Data-parallel training with the ranks of this group (see `ranks`); None: one process.
    pub group: Option<ranks::SharedGroup>,
}

impl Runtime {
    pub fn new(device: Device, threads: usize, checkpoint_dir: PathBuf, progress: bool) -> Self {
        Runtime { device, threads, checkpoint_dir, progress, stop_after_epochs: None, head_eval: false, step_log: None, notes: None, group: None }
    }

    pub(crate) fn note(&self, line: String) {
        if let Some(tx) = &self.notes {
            let _ = tx.send(line);
        }
    }
}

/// The stage's inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// A `shard_set` artifact.
    pub prep_dir: PathBuf,
    pub classes: Vec<String>,
    /// The imported pretrained weights (safetensors), when `pretrained` is not "none".
    pub pretrained: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub classes: Vec<String>,
    pub train_images: usize,
    pub valid_images: usize,
    pub arch: String,
    pub pretrained: String,
    pub epochs: Vec<EpochMetrics>,
    pub accuracy: f64,
    pub valid_loss: f64,
    pub lr_found: Option<f64>,
    pub lr_find: Option<lr_find::Suggestions>,
    pub resumed_from: Option<String>,
    pub seconds: f64,
    pub device: String,
    pub threads: usize,
}

/// Opens the training and validation splits as `[train] data` says (in memory or streamed).
fn open_data(inputs: &Inputs, params: &TrainParams) -> Result<(SplitData, SplitData)> {
    let classes = inputs.classes.len();
    let limit = params.memory_limit_mb.saturating_mul(1 << 20);
    let train = data::open_splits(&inputs.prep_dir, &["train"], classes, params.data, limit)?;
    let valid = data::open_splits(&inputs.prep_dir, &["valid"], classes, params.data, limit)?;
    if train.is_streamed() && params.balance == Balance::Oversample {
        bail!(
            "train: balance = \"oversample\" draws rows at random, which a streamed training split cannot \
             serve; use balance = \"loss_weights\", or data = \"memory\" (or raise memory_limit_mb)"
        );
    }
    Ok((train, valid))
}

/// The loops' shared state for `inputs`, after checking the data fits the params.
fn context<'a>(inputs: &Inputs, params: &'a TrainParams, rt: &'a Runtime) -> Result<Ctx<'a>> {
    let classes = inputs.classes.len();
    if classes < 2 {
        bail!("train: need at least 2 classes, the data has {classes}");
    }
    let (train, valid) = open_data(inputs, params)?;
    if train.len() < params.batch_size && params.drop_last {
        bail!("train: {} training images is fewer than one batch of {} (drop_last); lower batch_size", train.len(), params.batch_size);
    }
    if valid.is_empty() {
        bail!("train: the validation split is empty (index.valid_pct = 0?); metrics need validation images");
    }
    let out_size = params.size.map(i64::from).unwrap_or(train.size);
    if out_size > train.size {
        bail!("train.size {out_size} is larger than the prepared images ({}); raise prep.size", train.size);
    }
    let class_weights = match params.balance {
        Balance::LossWeights => {
            let counts = train.counts(classes);
            let n = train.len() as f64;
            let w: Vec<f32> = counts.iter().map(|&c| if c == 0 { 0.0 } else { (n / (classes as f64 * c as f64)) as f32 }).collect();
            Some(Tensor::from_slice(&w).to_device(rt.device))
        }
        _ => None,
    };
    Ok(Ctx { params, rt, train, valid, out_size, classes, class_weights, epochs_run: 0 })
}

/// The model to train: the head initialised from the seed, the body from the pretrained weights.
fn build_model(inputs: &Inputs, params: &TrainParams, rt: &Runtime) -> Result<Classifier> {
    tch::manual_seed(seeds::Torch::HeadInit.seed(params.seed));
    let mut model = Classifier::new(params.arch, inputs.classes.len() as i64, &params.head, rt.device);
    if let Some(w) = &inputs.pretrained {
        let tensors = Tensor::read_safetensors(w).with_context(|| format!("reading {}", w.display()))?;
        model.load_body(&tensors).with_context(|| format!("loading {} into {}", w.display(), params.arch))?;
    }
    if params.channels_last {
        model.to_channels_last();
    }
    Ok(model)
}

/// Runs the stage; writes its files into `out_dir`.
pub fn run(inputs: &Inputs, params: &TrainParams, rt: &Runtime, out_dir: &Path) -> Result<TrainReport> {
    params.validate().map_err(anyhow::Error::msg)?;
    let world = rt.part().world;
    if params.world_size != world {
        bail!(
            "train.world_size is {} but this run has {world} rank(s): start it with `maskflow run --world-size {}` \
             (or torchrun --nproc-per-node {} --no-python maskflow run …)",
            params.world_size,
            params.world_size,
            params.world_size
        );
    }
    let started = Instant::now();
    tch::set_num_threads(rt.threads.max(1) as i32);
    let mut ctx = context(inputs, params, rt)?;
    let config_hash = maskflow_core::hash::hash_canonical(&(params, &inputs.classes, ctx.train.len(), ctx.valid.len()))?;
    let mut model = build_model(inputs, params, rt)?;

    // Resume from a checkpoint of this configuration that verifies.
    std::fs::create_dir_all(&rt.checkpoint_dir).with_context(|| format!("creating {}", rt.checkpoint_dir.display()))?;
    let (mut progress, mut opt_state, resumed_from) = match checkpoint::read(&rt.checkpoint_dir, &config_hash, &|l| rt.note(l)) {
        Some((p, model_t, opt_t)) => {
            load_named(&model.vs, &model_t, &[], &[]).context("restoring the checkpoint's weights")?;
            let from = format!("{} epoch {} ({})", p.phase, p.epochs_done, rt.checkpoint_dir.display());
            rt.note(format!("train: resuming from {from}"));
            (p, Some(opt_t), Some(from))
        }
        None => (Progress::fresh(&config_hash), None, None),
    };

    // The frozen phase (with the lr finder first when asked).
    model.freeze();
    if progress.phase == Phase::Frozen {
        if matches!(params.frozen_lr, Lr::Find(_)) && progress.lr_found.is_none() {
            let result = fit::lr_finder(&mut ctx, &mut model)?;
            progress.lr_found = result.suggestions.as_ref().map(|s| s.valley);
            if progress.lr_found.is_none() {
                bail!("lr finder: too few points before the loss diverged to suggest a rate; set train.frozen_lr");
            }
            progress.lr_find = Some(result);
        }
        if progress.epochs_done < params.frozen_epochs {
            let lrs = params.frozen_lr.per_group(GROUPS, progress.lr_found);
            let batches = match params.frozen_mode {
                FrozenMode::Faithful => Batches::Images,
                FrozenMode::FixedBody => {
                    let b = Batches::fixed_body(&ctx, &model)?;
                    // Only the head trains: body parameters (BatchNorm included) stay out of the optimizer.
                    for p in model.params() {
                        let _ = p.tensor.set_requires_grad(!p.in_body);
                    }
                    b
                }
            };
            fit::fit(&mut ctx, &mut model, Phase::Frozen, params.frozen_epochs, &lrs, &batches, &mut progress, opt_state.take())?;
            model.freeze();
        }
        // The unfrozen phase starts with a fresh optimizer and loss smoother.
        progress.phase = Phase::Unfrozen;
        progress.epochs_done = 0;
        progress.ema = Smoother::new(0.98);
        opt_state = None;
    }
    if let (Some(r), true) = (&progress.lr_find, rt.is_root()) {
        outputs::write_lr_find(out_dir, r)?;
    }
    model.unfreeze();
    if progress.epochs_done < params.unfrozen_epochs {
        let lrs = params.unfrozen_lr.per_group(GROUPS, None);
        fit::fit(&mut ctx, &mut model, Phase::Unfrozen, params.unfrozen_epochs, &lrs, &Batches::Images, &mut progress, opt_state.take())?;
    }
    // The other ranks are done: rank 0 scores and writes.
    let (valid_loss, accuracy) = if rt.is_root() {
        let (l, a, _) = fit::evaluate(&ctx, &model, &ctx.valid)?;
        write_outputs(inputs, params, &ctx, &model, &progress, out_dir)?;
        (l, a)
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(TrainReport {
        classes: inputs.classes.clone(),
        train_images: ctx.train.len(),
        valid_images: ctx.valid.len(),
        arch: params.arch.to_string(),
        pretrained: params.pretrained.clone(),
        epochs: progress.metrics.clone(),
        accuracy,
        valid_loss,
        lr_found: progress.lr_found,
        lr_find: progress.lr_find.as_ref().and_then(|r| r.suggestions.clone()),
        resumed_from,
        seconds: started.elapsed().as_secs_f64(),
        device: match rt.device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        },
        threads: rt.threads,
    })
}

/// The `trained_model` artifact's files.
fn write_outputs(inputs: &Inputs, params: &TrainParams, ctx: &Ctx, model: &Classifier, progress: &Progress, out_dir: &Path) -> Result<()> {
    checkpoint::save_safetensors(&checkpoint::sorted_variables(model), &out_dir.join(MODEL_FILE))?;
    checkpoint::write_metrics(&out_dir.join(METRICS_FILE), &progress.metrics)?;
    let meta = ShardSetMeta::read(&inputs.prep_dir)?;
    TrainConfig {
        schema: TrainConfig::SCHEMA,
        arch: params.arch,
        head: params.head.clone(),
        classes: inputs.classes.clone(),
        image_size: ctx.out_size,
        channels_last: params.channels_last,
        inference_precision: params.inference_precision,
        inference_batch_size: params.valid_batch_size,
        data: params.data,
        memory_limit_mb: params.memory_limit_mb,
        preprocess: meta.preprocess,
        pretrained: params.pretrained.clone(),
        dataset_fingerprint: meta.dataset_fingerprint,
        recipe: maskflow_contracts::model::flatten_recipe(params),
    }
    .write(out_dir)?;
    outputs::plot_curves(&out_dir.join(CURVES_FILE), &progress.metrics)?;
    outputs::show_batch(&out_dir.join(SHOW_BATCH_FILE), &inputs.prep_dir, &inputs.classes, params, ctx.out_size)
}

/// Only the lr finder (fastai's `lr_find()` before the frozen phase: body frozen, pretrained
/// weights): writes `lr_find.csv` and `lr_find.png` into `out_dir` and returns the sweep.
pub fn lr_find_only(inputs: &Inputs, params: &TrainParams, rt: &Runtime, out_dir: &Path) -> Result<LrFindResult> {
    params.validate().map_err(anyhow::Error::msg)?;
    tch::set_num_threads(rt.threads.max(1) as i32);
    let mut ctx = context(inputs, params, rt)?;
    let mut model = build_model(inputs, params, rt)?;
    model.freeze();
    let r = fit::lr_finder(&mut ctx, &mut model)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    outputs::write_lr_find(out_dir, &r)?;
    Ok(r)
}
