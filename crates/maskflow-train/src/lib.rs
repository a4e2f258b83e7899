//! maskflow-train: the train stage. Prep shards → a fine-tuned classifier, the notebook's way:
//! stage 1 with the body frozen (BatchNorm still training), stage 2 unfrozen with discriminative
//! learning rates, both `fit_one_cycle` with Adam and decoupled weight decay.
//!
//! Outputs (in the stage's artifact directory): `model.safetensors`, `metrics.jsonl` (one line per
//! epoch), `train_config.json` (the resolved configuration), `curves.png`, and with `lr = "find"`
//! `lr_find.csv` + `lr_find.png`. After every epoch a checkpoint (weights, optimizer moments, schedule
//! position) is written atomically to the checkpoint directory; running again resumes from it.

pub use maskflow_data::{augment, data};
pub mod lr_find;
pub mod optim;
pub mod params;
pub mod schedule;

use anyhow::{bail, Context, Result};
use data::{EpochPlan, SplitData};
use lr_find::{LrFindResult, Smoother, StopRule};
use maskflow_core::fsutil::{write_atomic, write_json_atomic};
use maskflow_core::rng::SplitMix64;
use maskflow_models::classifier::{load_named, Classifier, GROUPS};
use optim::{Adam, AdamConfig};
pub use params::{Balance, BodyBatchNorm, DataMode, FrozenMode, Precision, TrainParams};
use schedule::Lr;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub use maskflow_contracts::model::{
    EpochMetrics, TrainConfig, CURVES_FILE, LR_FIND_CSV, LR_FIND_PNG, METRICS_FILE, MODEL_FILE, SHOW_BATCH_FILE,
};
use maskflow_contracts::shards::ShardSetMeta;
use maskflow_contracts::{kinds, JsonFile};
use maskflow_data::infer::{self, InferOptions};
use maskflow_pipeline::{External, RunCtx, Slot, Stage};

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
    fn externals(p: &TrainParams, rt: &maskflow_pipeline::Runtime) -> Result<std::collections::BTreeMap<String, External>> {
        let mut out = std::collections::BTreeMap::new();
        if p.pretrained != "none" {
            let w = maskflow_models::weights::ensure(&p.pretrained, None, &rt.artifacts, &maskflow_models::weights::SearchPaths::from_env())
                .with_context(|| format!("pretrained = {:?}", p.pretrained))?;
            out.insert("weights".to_string(), External { path: w.safetensors(), key: format!("sha256:{}", w.sha256), files: None });
        }
        Ok(out)
    }
    fn run(p: &TrainParams, ctx: &RunCtx) -> Result<TrainReport> {
        let shards = ctx.input("shards")?;
        let meta = ShardSetMeta::read(shards)?;
        let inputs = Inputs {
            prep_dir: shards.to_path_buf(),
            classes: meta.classes,
            pretrained: ctx.externals.get("weights").map(|w| w.path.clone()),
        };
        let rt = Runtime {
            device: maskflow_models::parse_device(&ctx.runtime.device)?,
            threads: ctx.runtime.threads,
            checkpoint_dir: ctx.scratch.to_path_buf(),
            stop_after_epochs: None,
            progress: ctx.runtime.progress,
        };
        run(&inputs, p, &rt, ctx.out)
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
}

const STAGE_NAMES: [&str; 2] = ["frozen", "unfrozen"];

/// Where and how the stage runs (not part of the stage key).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    /// libtorch intra-op threads.
    pub threads: usize,
    /// Checkpoints of this exact configuration (the runner keys it by the stage key).
    pub checkpoint_dir: PathBuf,
    /// Stop (as if killed) after this many epochs in total have been checkpointed — for tests of resume.
    pub stop_after_epochs: Option<usize>,
    pub progress: bool,
}

/// The stage's inputs.
#[derive(Debug, Clone)]
pub struct Inputs {
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

/// The interruption `stop_after_epochs` simulates.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("training stopped after the requested number of epochs (checkpoint written)")
    }
}
impl std::error::Error for Interrupted {}

/// Checkpoint bookkeeping (`progress.json` in the checkpoint directory; the commit point).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    config_hash: String,
    /// 0 = frozen, 1 = unfrozen.
    stage: usize,
    epochs_done: usize,
    tensors_file: String,
    ema: Smoother,
    metrics: Vec<EpochMetrics>,
    lr_found: Option<f64>,
    lr_find: Option<LrFindResult>,
}

struct Ctx<'a> {
    params: &'a TrainParams,
    rt: &'a Runtime,
    train: SplitData,
    valid: SplitData,
    out_size: i64,
    classes: usize,
    class_weights: Option<Tensor>,
    config_hash: String,
    epochs_run: usize,
}

/// Opens the training and validation splits as `[train] data` says (in memory or streamed).
fn open_data(inputs: &Inputs, params: &TrainParams, classes: usize) -> Result<(SplitData, SplitData)> {
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

/// Runs the stage; writes its files into `out_dir`.
pub fn run(inputs: &Inputs, params: &TrainParams, rt: &Runtime, out_dir: &Path) -> Result<TrainReport> {
    params.validate().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    tch::set_num_threads(rt.threads.max(1) as i32);
    let classes = inputs.classes.len();
    if classes < 2 {
        bail!("train: need at least 2 classes, the index has {}", classes);
    }
    let (train, valid) = open_data(inputs, params, classes)?;
    if train.len() < params.batch_size && params.drop_last {
        bail!(
            "train: {} training images is fewer than one batch of {} (drop_last); lower batch_size",
            train.len(),
            params.batch_size
        );
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
            let w: Vec<f32> =
                counts.iter().map(|&c| if c == 0 { 0.0 } else { (n / (classes as f64 * c as f64)) as f32 }).collect();
            Some(Tensor::from_slice(&w).to_device(rt.device))
        }
        _ => None,
    };
    let config_hash = maskflow_core::hash::hash_canonical(&(params, &inputs.classes, train.len(), valid.len()))?;
    let mut ctx = Ctx { params, rt, train, valid, out_size, classes, class_weights, config_hash, epochs_run: 0 };

    let mut model = build_model(inputs, params, rt)?;

    // Resume.
    std::fs::create_dir_all(&rt.checkpoint_dir).with_context(|| format!("creating {}", rt.checkpoint_dir.display()))?;
    let mut resumed_from = None;
    let mut opt_state: Option<Vec<(String, Tensor)>> = None;
    let mut progress = match read_progress(&rt.checkpoint_dir, &ctx.config_hash) {
        Some((p, tensors)) => {
            let (model_t, opt_t): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n.starts_with("model."));
            let model_t: Vec<(String, Tensor)> =
                model_t.into_iter().map(|(n, t)| (n["model.".len()..].to_owned(), t)).collect();
            load_named(&model.vs, &model_t, &[], &[]).context("restoring the checkpoint's weights")?;
            opt_state = Some(
                opt_t.into_iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|s| (s.to_owned(), t))).collect(),
            );
            resumed_from =
                Some(format!("{} epoch {} ({})", STAGE_NAMES[p.stage], p.epochs_done, rt.checkpoint_dir.display()));
            p
        }
        None => Progress {
            config_hash: ctx.config_hash.clone(),
            stage: 0,
            epochs_done: 0,
            tensors_file: String::new(),
            ema: Smoother::new(0.98),
            metrics: Vec::new(),
            lr_found: None,
            lr_find: None,
        },
    };
    if let Some(r) = &resumed_from {
        eprintln!("train: resuming from {r}");
    }

    // Stage 1: body frozen.
    model.freeze();
    if progress.stage == 0 && matches!(params.frozen_lr, Lr::Find(_)) && progress.lr_found.is_none() {
        let result = run_lr_find(&mut ctx, &mut model)?;
        progress.lr_found = result.suggestions.as_ref().map(|s| s.valley);
        if progress.lr_found.is_none() {
            bail!("lr finder: too few points before the loss diverged to suggest a rate; set train.frozen_lr");
        }
        progress.lr_find = Some(result);
    }
    if let Some(r) = &progress.lr_find {
        write_lr_find(out_dir, r)?;
    }
    if progress.stage == 0 && progress.epochs_done < params.frozen_epochs {
        let lrs = params.frozen_lr.per_group(GROUPS, progress.lr_found);
        match params.frozen_mode {
            FrozenMode::Faithful => {
                fit_one_cycle(&mut ctx, &mut model, 0, params.frozen_epochs, &lrs, &mut progress, opt_state.take())?
            }
            FrozenMode::FixedBody => {
                fit_fixed_body(&mut ctx, &mut model, params.frozen_epochs, &lrs, &mut progress, opt_state.take())?
            }
        }
    }
    // Stage 2: everything trains, fresh optimizer.
    if progress.stage == 0 {
        progress.stage = 1;
        progress.epochs_done = 0;
        progress.ema = Smoother::new(0.98);
        opt_state = None;
    }
    model.unfreeze();
    if progress.epochs_done < params.unfrozen_epochs {
        let lrs = params.unfrozen_lr.per_group(GROUPS, None);
        fit_one_cycle(&mut ctx, &mut model, 1, params.unfrozen_epochs, &lrs, &mut progress, opt_state.take())?;
    }

    // Outputs.
    let (valid_loss, accuracy, _) = evaluate(&ctx, &model, &ctx.valid)?;
    let named: Vec<(String, Tensor)> = sorted_variables(&model);
    let st = out_dir.join(MODEL_FILE);
    save_safetensors(&named, &st)?;
    let mut lines = String::new();
    for m in &progress.metrics {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    write_atomic(&out_dir.join(METRICS_FILE), lines.as_bytes())?;
    let meta = ShardSetMeta::read(&inputs.prep_dir)?;
    TrainConfig {
        schema: TrainConfig::SCHEMA,
        arch: params.arch,
        head: params.head.clone(),
        classes: inputs.classes.clone(),
        image_size: out_size,
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
    if ctx.train.len() > 0 {
        show_batch(&out_dir.join(SHOW_BATCH_FILE), &inputs.prep_dir, &inputs.classes, params, out_size)?;
    }
    plot_curves(&out_dir.join(CURVES_FILE), &progress.metrics)?;
    let report = TrainReport {
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
    };
    Ok(report)
}

/// Only the lr finder (fastai's `lr_find()` before stage 1: body frozen, pretrained weights): writes
/// `lr_find.csv` and `lr_find.png` into `out_dir` and returns the sweep.
pub fn lr_find_only(inputs: &Inputs, params: &TrainParams, rt: &Runtime, out_dir: &Path) -> Result<LrFindResult> {
    params.validate().map_err(anyhow::Error::msg)?;
    tch::set_num_threads(rt.threads.max(1) as i32);
    let classes = inputs.classes.len();
    let (train, valid) = open_data(inputs, params, classes)?;
    let out_size = params.size.map(i64::from).unwrap_or(train.size);
    let mut ctx = Ctx {
        params,
        rt,
        train,
        valid,
        out_size,
        classes,
        class_weights: None,
        config_hash: String::new(),
        epochs_run: 0,
    };
    let mut model = build_model(inputs, params, rt)?;
    model.freeze();
    let r = run_lr_find(&mut ctx, &mut model)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_lr_find(out_dir, &r)?;
    Ok(r)
}

/// The model to train: the head initialised from the seed, the body from the pretrained weights.
fn build_model(inputs: &Inputs, params: &TrainParams, rt: &Runtime) -> Result<Classifier> {
    tch::manual_seed(derive_seed(params.seed, &[0x6d6f64656c]));
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

/// Removes a finished run's checkpoints.
pub fn clear_checkpoints(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

fn derive_seed(seed: u64, parts: &[u64]) -> i64 {
    (SplitMix64::derive(seed, parts).next_u64() >> 1) as i64
}

fn sorted_variables(model: &Classifier) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        model.vs.variables().into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn save_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        maskflow_core::fsutil::unique_suffix()
    ));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

fn read_progress(dir: &Path, config_hash: &str) -> Option<(Progress, Vec<(String, Tensor)>)> {
    let p: Progress = serde_json::from_slice(&std::fs::read(dir.join("progress.json")).ok()?).ok()?;
    if p.config_hash != config_hash {
        eprintln!("train: ignoring checkpoint in {} (made with another configuration)", dir.display());
        return None;
    }
    match Tensor::read_safetensors(dir.join(&p.tensors_file)) {
        Ok(t) => Some((p, t)),
        Err(e) => {
            eprintln!("train: ignoring unreadable checkpoint {}: {e}", dir.join(&p.tensors_file).display());
            None
        }
    }
}

fn write_checkpoint(ctx: &Ctx, model: &Classifier, opt: &Adam, progress: &mut Progress) -> Result<()> {
    let dir = &ctx.rt.checkpoint_dir;
    let name = format!("state-{}-{:03}.safetensors", progress.stage, progress.epochs_done);
    let mut named: Vec<(String, Tensor)> =
        sorted_variables(model).into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    named.extend(opt.state().into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
    save_safetensors(&named, &dir.join(&name))?;
    let old = std::mem::replace(&mut progress.tensors_file, name);
    write_json_atomic(&dir.join("progress.json"), progress)?;
    if !old.is_empty() && old != progress.tensors_file {
        let _ = std::fs::remove_file(dir.join(old));
    }
    let mut lines = String::new();
    for m in &progress.metrics {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    write_atomic(&dir.join(METRICS_FILE), lines.as_bytes())?;
    Ok(())
}

fn loss_fn(ctx: &Ctx, logits: &Tensor, y: &Tensor) -> Tensor {
    match &ctx.class_weights {
        Some(w) => logits.log_softmax(-1, Kind::Float).g_nll_loss(y, Some(w), tch::Reduction::Mean, -100),
        None => logits.cross_entropy_for_logits(y),
    }
}

fn adam_config(p: &TrainParams) -> AdamConfig {
    AdamConfig { beta2: p.beta2, eps: p.eps, weight_decay: p.weight_decay }
}

fn new_optimizer(ctx: &Ctx, model: &Classifier, state: Option<Vec<(String, Tensor)>>) -> Result<Adam> {
    let mut opt =
        Adam::new(adam_config(ctx.params), model.params().iter().map(|p| (p.name.as_str(), &p.tensor, p.group)));
    if let Some(s) = state {
        opt.load_state(&s).context("restoring the optimizer from the checkpoint")?;
    }
    Ok(opt)
}

fn train_plan(ctx: &Ctx, stage: usize, epoch: usize) -> EpochPlan {
    let p = ctx.params;
    let order = match &ctx.train.pixels {
        data::Pixels::Stream(src) => data::stream_order(src, p.shuffle_buffer, p.seed, stage as u64, epoch as u64),
        data::Pixels::Memory(_) => data::epoch_order(
            &ctx.train.label_idx,
            ctx.classes,
            p.seed,
            stage as u64,
            epoch as u64,
            p.balance == Balance::Oversample,
        ),
    };
    EpochPlan {
        order,
        batch_size: p.batch_size,
        drop_last: p.drop_last,
        augment: Some((p.augment.clone(), p.seed, (stage * 100_000 + epoch) as u64)),
        out_size: ctx.out_size,
        device: ctx.rt.device,
        channels_last: p.channels_last,
    }
}

/// `fit_one_cycle(epochs, lrs)` from the progress's position.
fn fit_one_cycle(
    ctx: &mut Ctx,
    model: &mut Classifier,
    stage: usize,
    epochs: usize,
    max_lrs: &[f64],
    progress: &mut Progress,
    opt_state: Option<Vec<(String, Tensor)>>,
) -> Result<()> {
    let mut opt = new_optimizer(ctx, model, opt_state)?;
    let nb = train_plan(ctx, stage, 0).batches();
    let total = nb * epochs;
    for epoch in progress.epochs_done..epochs {
        let t0 = Instant::now();
        tch::manual_seed(derive_seed(ctx.params.seed, &[0xd50, stage as u64, epoch as u64]));
        let plan = train_plan(ctx, stage, epoch);
        let rx = data::spawn_producer(&ctx.train, plan, ctx.params.shuffle_buffer);
        let pb = bar(ctx, nb, &format!("{} {}/{}", STAGE_NAMES[stage], epoch + 1, epochs));
        let (mut sum, mut seen, mut images) = (0.0, 0usize, 0usize);
        for batch in rx {
            let batch = batch?;
            let it = epoch * nb + batch.index;
            let (mult, mom) = ctx.params.one_cycle.at(it, total);
            let lrs: Vec<f64> = max_lrs.iter().map(|l| l * mult).collect();
            let logits = train_forward(ctx, model, &batch.x);
            let loss = loss_fn(ctx, &logits, &batch.y);
            opt.zero_grad();
            loss.backward();
            opt.step(&lrs, mom);
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                bail!(
                    "train: the loss became {lv} at {} epoch {} batch {}; lower the learning rate",
                    STAGE_NAMES[stage],
                    epoch + 1,
                    batch.index
                );
            }
            let ema = progress.ema.add(lv);
            sum += lv;
            seen += 1;
            images += batch.y.size()[0] as usize;
            pb.inc(1);
            pb.set_message(format!("loss {ema:.4}  {:.1} img/s", images as f64 / t0.elapsed().as_secs_f64()));
        }
        pb.finish_and_clear();
        let train_seconds = t0.elapsed().as_secs_f64();
        let (valid_loss, accuracy, _) = evaluate(ctx, model, &ctx.valid)?;
        let m = EpochMetrics {
            phase: STAGE_NAMES[stage].into(),
            epoch: epoch + 1,
            train_loss_ema: progress.ema.value(),
            train_loss_mean: sum / seen.max(1) as f64,
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            lrs: max_lrs.to_vec(),
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: images as f64 / train_seconds.max(1e-9),
        };
        end_epoch(ctx, model, &opt, progress, stage, epoch, m)?;
    }
    Ok(())
}

/// Records an epoch's metrics, writes the checkpoint, and stops here when asked to (tests of resume).
fn end_epoch(
    ctx: &mut Ctx,
    model: &Classifier,
    opt: &Adam,
    progress: &mut Progress,
    stage: usize,
    epoch: usize,
    m: EpochMetrics,
) -> Result<()> {
    print_epoch(ctx, &m);
    progress.metrics.push(m);
    progress.stage = stage;
    progress.epochs_done = epoch + 1;
    write_checkpoint(ctx, model, opt, progress)?;
    ctx.epochs_run += 1;
    if ctx.rt.stop_after_epochs.is_some_and(|n| ctx.epochs_run >= n) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// The training-mode forward pass: the head always in train mode (dropout, BatchNorm1d); the body's
/// BatchNorm per `body_batchnorm`.
fn train_forward(ctx: &Ctx, model: &Classifier, x: &Tensor) -> Tensor {
    let body_train = ctx.params.body_batchnorm == BodyBatchNorm::Update;
    model.head_t(&model.features_t(x, body_train), true)
}

fn bar(ctx: &Ctx, len: usize, what: &str) -> indicatif::ProgressBar {
    if ctx.rt.progress {
        maskflow_core::progress::bar(len as u64, what, "batches")
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn print_epoch(ctx: &Ctx, m: &EpochMetrics) {
    if ctx.rt.progress {
        eprintln!(
            "train   {:<8} epoch {:>2}  train_loss {:.4} (mean {:.4})  valid_loss {:.4}  accuracy {:.4}  error_rate {:.4}  {:.0}s  {:.1} img/s",
            m.phase, m.epoch, m.train_loss_ema, m.train_loss_mean, m.valid_loss, m.accuracy, m.error_rate, m.seconds, m.images_per_second
        );
    }
}

fn evaluate(ctx: &Ctx, model: &Classifier, split: &SplitData) -> Result<(f64, f64, Tensor)> {
    infer::evaluate_split(
        model,
        split,
        &InferOptions {
            out_size: ctx.out_size,
            batch_size: ctx.params.valid_batch_size,
            device: ctx.rt.device,
            channels_last: ctx.params.channels_last,
            precision: ctx.params.inference_precision,
        },
    )
}

/// Pooled body features (N, F) of `split` with the body in eval mode, for `copies` views: view 0 is
/// the centre view, views 1.. are augmented draws.
fn pooled_features(ctx: &Ctx, model: &Classifier, split: &SplitData, view: usize) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let plan = EpochPlan {
        order: (0..split.len()).collect(),
        batch_size: ctx.params.valid_batch_size,
        drop_last: false,
        augment: (view > 0).then(|| (ctx.params.augment.clone(), ctx.params.seed, (900_000 + view) as u64)),
        out_size: ctx.out_size,
        device: ctx.rt.device,
        channels_last: ctx.params.channels_last,
    };
    let pb = bar(ctx, plan.batches(), &format!("features {view}"));
    let m16 = infer::inference_model(model, ctx.params.inference_precision, ctx.params.channels_last)?;
    let mut out = Vec::new();
    for batch in data::spawn_producer(split, plan, 0) {
        let m = m16.as_ref().unwrap_or(model);
        out.push(m.pool(&m.features_t(&infer::as_precision(&batch?.x, &m16), false)).to_kind(Kind::Float));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Tensor::cat(&out, 0))
}

/// Stage 1 on a fixed body: features once, then the head alone.
fn fit_fixed_body(
    ctx: &mut Ctx,
    model: &mut Classifier,
    epochs: usize,
    max_lrs: &[f64],
    progress: &mut Progress,
    opt_state: Option<Vec<(String, Tensor)>>,
) -> Result<()> {
    let t_feat = Instant::now();
    let views: Vec<Tensor> = (0..=ctx.params.fixed_body_copies)
        .map(|v| pooled_features(ctx, model, &ctx.train, v))
        .collect::<Result<_>>()?;
    let valid_feats = pooled_features(ctx, model, &ctx.valid, 0)?;
    let feature_seconds = t_feat.elapsed().as_secs_f64();
    // Only the head trains: body parameters (BatchNorm included) are left out of the optimizer.
    for p in model.params() {
        let _ = p.tensor.set_requires_grad(!p.in_body);
    }
    let mut opt = new_optimizer(ctx, model, opt_state)?;
    let p = ctx.params;
    let nb = if p.drop_last { ctx.train.len() / p.batch_size } else { ctx.train.len().div_ceil(p.batch_size) };
    let total = nb * epochs;
    let labels = ctx.train.labels.to_device(ctx.rt.device);
    let first_epoch = progress.epochs_done;
    for epoch in first_epoch..epochs {
        let t0 = Instant::now();
        tch::manual_seed(derive_seed(p.seed, &[0xd50, 0, epoch as u64]));
        let feats = &views[epoch % views.len()];
        let order = data::epoch_order(
            &ctx.train.label_idx,
            ctx.classes,
            p.seed,
            0,
            epoch as u64,
            p.balance == Balance::Oversample,
        );
        let (mut sum, mut seen) = (0.0, 0usize);
        for b in 0..nb {
            let idx: Vec<i64> =
                order[b * p.batch_size..((b + 1) * p.batch_size).min(order.len())].iter().map(|&i| i as i64).collect();
            let idx = Tensor::from_slice(&idx).to_device(ctx.rt.device);
            let (x, y) = (feats.index_select(0, &idx), labels.index_select(0, &idx));
            let (mult, mom) = p.one_cycle.at(epoch * nb + b, total);
            let lrs: Vec<f64> = max_lrs.iter().map(|l| l * mult).collect();
            let loss = loss_fn(ctx, &model.head_from_pooled_t(&x, true), &y);
            opt.zero_grad();
            loss.backward();
            opt.step(&lrs, mom);
            let lv = loss.double_value(&[]);
            progress.ema.add(lv);
            sum += lv;
            seen += 1;
        }
        let (valid_loss, accuracy) = {
            let _g = tch::no_grad_guard();
            let logits = model.head_from_pooled_t(&valid_feats, false);
            let y = ctx.valid.labels.to_device(ctx.rt.device);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0).double_value(&[]);
            let acc = logits.argmax(-1, false).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            (loss, acc)
        };
        // The features' cost is counted in the first epoch run.
        let seconds = t0.elapsed().as_secs_f64() + if epoch == first_epoch { feature_seconds } else { 0.0 };
        let m = EpochMetrics {
            phase: STAGE_NAMES[0].into(),
            epoch: epoch + 1,
            train_loss_ema: progress.ema.value(),
            train_loss_mean: sum / seen.max(1) as f64,
            valid_loss,
            accuracy,
            error_rate: 1.0 - accuracy,
            lrs: max_lrs.to_vec(),
            seconds,
            images_per_second: (nb * p.batch_size) as f64 / seconds.max(1e-9),
        };
        end_epoch(ctx, model, &opt, progress, 0, epoch, m)?;
    }
    model.freeze();
    Ok(())
}

/// fastai's `lr_find()` with the current freezing; the weights (and BatchNorm statistics) are restored.
fn run_lr_find(ctx: &mut Ctx, model: &mut Classifier) -> Result<LrFindResult> {
    let lf = ctx.params.lr_find.clone();
    let saved: Vec<(String, Tensor)> = model.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let mut opt = new_optimizer(ctx, model, None)?;
    let mut smoother = Smoother::new(0.98);
    let mut stop = StopRule::new(lf.stop_factor);
    let mut result = LrFindResult {
        lrs: vec![],
        raw_losses: vec![],
        smoothed_losses: vec![],
        stopped_early: false,
        suggestions: None,
    };
    let pb = bar(ctx, lf.iterations, "lr_find");
    let mut it = 0;
    'outer: for pass in 0.. {
        tch::manual_seed(derive_seed(ctx.params.seed, &[0x1f, pass as u64]));
        let mut plan = train_plan(ctx, 7, pass);
        plan.augment = Some((ctx.params.augment.clone(), ctx.params.seed, (800_000 + pass) as u64));
        for batch in data::spawn_producer(&ctx.train, plan, ctx.params.shuffle_buffer) {
            let batch = batch?;
            if it >= lf.iterations {
                break 'outer;
            }
            let lr = lr_find::sweep_lr(lf.start, lf.end, it, lf.iterations);
            let loss = loss_fn(ctx, &train_forward(ctx, model, &batch.x), &batch.y);
            opt.zero_grad();
            loss.backward();
            opt.step(&[lr; GROUPS], 0.9);
            let lv = loss.double_value(&[]);
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
        eprintln!(
            "lr_find {} iterations{}: valley {:.2e}, steep {:.2e}, minimum/10 {:.2e}",
            result.lrs.len(),
            if result.stopped_early { " (stopped: loss diverged)" } else { "" },
            s.valley,
            s.steep,
            s.minimum_div_10
        );
    }
    Ok(result)
}

fn write_lr_find(out_dir: &Path, r: &LrFindResult) -> Result<()> {
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

fn plot_curves(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics.iter().enumerate().map(|(i, m)| ((i + 1) as f64, f(m))).collect()
    };
    let chart = maskflow_plot::LineChart {
        title: "training curves (epochs across both stages)",
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

/// fastai's `show_batch`: augmented training images with their class (streamed: only the row groups
/// of the images shown are read).
fn show_batch(path: &Path, prep_dir: &Path, classes: &[String], p: &TrainParams, out_size: i64) -> Result<()> {
    let n = 9;
    let train = data::open_splits(prep_dir, &["train"], classes.len(), data::DataMode::Stream, 0)?;
    let order = data::epoch_order(&train.label_idx, classes.len(), p.seed, 0, 0, false);
    let plan = EpochPlan {
        order: order.into_iter().take(n).collect(),
        batch_size: n,
        drop_last: false,
        augment: Some((p.augment.clone(), p.seed, 0)),
        out_size,
        device: Device::Cpu,
        channels_last: false,
    };
    let batch = data::spawn_producer(&train, plan, n)
        .recv()
        .map_err(|_| anyhow::anyhow!("show_batch: no batch was produced"))??;
    let mean = Tensor::from_slice(&augment::MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&augment::STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let pixels =
        ((batch.x * std + mean).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([0, 2, 3, 1]);
    let labels: Vec<i64> = Vec::<i64>::try_from(&batch.y)?;
    let tiles: Vec<maskflow_plot::Tile> = (0..labels.len())
        .map(|i| maskflow_plot::Tile {
            image: data::to_rgb(&pixels.get(i as i64)),
            title: vec![classes[labels[i] as usize].clone()],
        })
        .collect();
    let cols = (tiles.len() as f64).sqrt().ceil().max(1.0) as usize;
    maskflow_plot::image_grid(path, &tiles, cols, 180, "show_batch — augmented training images")?;
    Ok(())
}
