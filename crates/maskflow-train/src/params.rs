//! `[train]` of a pipeline file. Every default is the notebook's (fastai v1) value.

use crate::augment::AugmentParams;
pub use crate::data::DataMode;
use crate::schedule::{Lr, OneCycle};
use maskflow_models::{Arch, HeadConfig};
use serde::{Deserialize, Serialize};

/// How stage 1 (body frozen) is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenMode {
    /// As fastai: the whole model in train mode, BatchNorm layers of the body still training, the
    /// backward pass through the whole body (default).
    Faithful,
    /// Compute the frozen body's features once (unaugmented, plus `fixed_body_copies` augmented copies
    /// of the training set) and train only the head on them — several times faster; the body's
    /// BatchNorm statistics stay at their pretrained values.
    FixedBody,
}

/// What the body's BatchNorm layers do while the body trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyBatchNorm {
    /// Batch statistics in the forward pass, running statistics updated (fastai: the model in train mode).
    Update,
    /// Running statistics used and kept (the layers' affine parameters still train). Pairs with
    /// `frozen_mode = "fixed_body"`, whose head learned on features computed that way: updating the
    /// statistics in stage 2 would shift every feature under the trained head.
    Fixed,
}

/// Class-imbalance handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Plain shuffling and mean cross-entropy (fastai default).
    None,
    /// Cross-entropy weighted by n / (classes · count(class)).
    LossWeights,
    /// Each epoch draws N training images with replacement, weighted by 1 / count(class).
    Oversample,
}

pub use maskflow_contracts::model::Precision;

/// Number format of the training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainPrecision {
    /// Everything in fp32.
    #[serde(rename = "fp32")]
    Fp32,
    /// The forward pass in a bf16 autocast region (convolutions and matmuls in bf16, reductions,
    /// losses and BatchNorm statistics in fp32, as torch.autocast); weights, gradients and the
    /// optimizer state in fp32. On this project's AVX-512-BF16 CPU the real pipeline's train stage
    /// ran 1.18× faster in 42 % less memory with the same clean predictions (docs/BENCHMARKS.md);
    /// `pipelines/facemask.toml` uses it. The default stays fp32, the notebook's.
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
}

/// fastai's `lr_find()` sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrFindParams {
    /// `start_lr=1e-7`
    pub start: f64,
    /// `end_lr=10`
    pub end: f64,
    /// `num_it=100`
    pub iterations: usize,
    /// Stop when the smoothed loss exceeds this many times its best (fastai: 4).
    pub stop_factor: f64,
}

impl Default for LrFindParams {
    fn default() -> Self {
        LrFindParams { start: 1e-7, end: 10.0, iterations: 100, stop_factor: 4.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Backbone (fastai notebook: `models.resnet50`; maskflow default mobilenet_v2, whose ImageNet
    /// weights are available offline).
    pub arch: Arch,
    /// Registry name of the pretrained weights (`maskflow weights list`), or "none" for random init.
    pub pretrained: String,
    /// The head (fastai `create_head` defaults).
    pub head: HeadConfig,
    /// Training image side; default: the prep size (then the random crop is a no-op, as in fastai when
    /// the resize already produced the final size).
    pub size: Option<u32>,
    /// `bs=64`
    pub batch_size: usize,
    /// Validation batch size (no gradients, so larger is fine).
    pub valid_batch_size: usize,
    /// The training loader drops the last partial batch (fastai: True).
    pub drop_last: bool,
    /// Stage 1 epochs, body frozen (the notebook: `fit_one_cycle(4)`).
    pub frozen_epochs: usize,
    /// Stage 1 max learning rate (fastai default `max_lr=3e-3`), or "find".
    pub frozen_lr: Lr,
    /// Stage 2 epochs, everything unfrozen (the notebook: 10).
    pub unfrozen_epochs: usize,
    /// Stage 2 learning rate(s): `[lo, hi]` is fastai's `slice(lo, hi)` (the notebook: slice(1e-5, 1e-4)).
    pub unfrozen_lr: Lr,
    pub one_cycle: OneCycle,
    /// Adam β2 (fastai `moms`/`betas`: 0.99); β1 follows the one-cycle momentum.
    pub beta2: f64,
    /// Adam ε (1e-8 as in the notebook's Adam).
    pub eps: f64,
    /// Decoupled weight decay (fastai `wd=1e-2`, applied to every parameter as v1 does).
    pub weight_decay: f64,
    pub augment: AugmentParams,
    pub frozen_mode: FrozenMode,
    /// The body's BatchNorm while training (fastai: update).
    pub body_batchnorm: BodyBatchNorm,
    /// Augmented copies of the training set whose features the fixed-body stage 1 also uses.
    pub fixed_body_copies: usize,
    pub balance: Balance,
    pub lr_find: LrFindParams,
    /// Seeds the head initialisation, epoch orders, augmentation draws and dropout.
    pub seed: u64,
    /// Channels-last memory format (faster on CPU for these convnets; results equal up to rounding).
    pub channels_last: bool,
    /// How a split's pixels are held: `auto` (in memory when they fit in `memory_limit_mb`, else
    /// streamed), `memory` (one uint8 tensor), `stream` (read from the shards row group by row
    /// group; training order from a shuffle buffer).
    pub data: DataMode,
    /// The most pixel bytes (MiB) per split that `data = "auto"` holds in memory.
    pub memory_limit_mb: u64,
    /// Rows in the shuffle buffer of a streamed training split (memory: this many images plus two
    /// row groups; more rows, better mixing).
    pub shuffle_buffer: usize,
    /// Inference passes in `fp32` or `bf16` (validation, the fixed body's features).
    pub inference_precision: Precision,
    /// Training steps in `fp32` or `bf16-mixed` (autocast; fp32 master weights).
    pub precision: TrainPrecision,
    /// Data-parallel ranks (`maskflow run --world-size N`, or torchrun's WORLD_SIZE). Part of the
    /// key: each rank normalises its BatchNorm layers (in train mode) with its own part of the batch
    /// and draws its own dropout masks, as DDP does, so N ranks do not compute what one process
    /// does; `batch_size` stays the global batch and must divide by it.
    pub world_size: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            arch: Arch::MobilenetV2,
            pretrained: "mobilenet_v2".into(),
            head: HeadConfig::default(),
            size: None,
            batch_size: 64,
            valid_batch_size: 128,
            drop_last: true,
            frozen_epochs: 4,
            frozen_lr: Lr::One(3e-3),
            unfrozen_epochs: 10,
            unfrozen_lr: Lr::Slice([1e-5, 1e-4]),
            one_cycle: OneCycle::default(),
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 1e-2,
            augment: AugmentParams::default(),
            frozen_mode: FrozenMode::Faithful,
            body_batchnorm: BodyBatchNorm::Update,
            fixed_body_copies: 0,
            balance: Balance::None,
            lr_find: LrFindParams::default(),
            seed: 42,
            channels_last: true,
            data: DataMode::Auto,
            memory_limit_mb: 8192,
            shuffle_buffer: 2048,
            inference_precision: Precision::Fp32,
            precision: TrainPrecision::Fp32,
            world_size: 1,
        }
    }
}

impl TrainParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.valid_batch_size == 0 {
            return Err("train: batch sizes must be at least 1".into());
        }
        if self.world_size == 0 || self.batch_size % self.world_size != 0 {
            return Err(format!(
                "train: batch_size {} must be a multiple of world_size {} (each rank takes an equal part of every batch)",
                self.batch_size, self.world_size
            ));
        }
        if self.shuffle_buffer == 0 {
            return Err("train.shuffle_buffer must be at least 1".into());
        }
        self.frozen_lr.validate("train.frozen_lr")?;
        self.unfrozen_lr.validate("train.unfrozen_lr")?;
        if matches!(self.unfrozen_lr, Lr::Find(_)) {
            return Err("train.unfrozen_lr: \"find\" is only supported for the frozen stage (as the notebook runs lr_find before it)".into());
        }
        if self.pretrained != "none" {
            match maskflow_models::weights::spec(&self.pretrained) {
                None => {
                    return Err(format!(
                        "train.pretrained: unknown weights {:?} (see `maskflow weights list`, or \"none\")",
                        self.pretrained
                    ))
                }
                Some(s) if s.network != maskflow_models::weights::Network::Backbone(self.arch) => {
                    return Err(format!(
                        "train.pretrained: weights {:?} are for {}, not {}",
                        self.pretrained, s.network, self.arch
                    ))
                }
                _ => {}
            }
        }
        let oc = &self.one_cycle;
        if !(0.0..1.0).contains(&oc.pct_start) || oc.div <= 0.0 || oc.final_div <= 0.0 {
            return Err("train.one_cycle: pct_start in [0, 1), div and final_div > 0".into());
        }
        if !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0 || self.weight_decay < 0.0 {
            return Err("train: beta2 in [0, 1), eps > 0, weight_decay ≥ 0".into());
        }
        if self.head.width < 1 || !(0.0..1.0).contains(&self.head.dropout) {
            return Err("train.head: width ≥ 1 and dropout in [0, 1)".into());
        }
        let lf = &self.lr_find;
        if !(lf.start > 0.0 && lf.end > lf.start && lf.iterations >= 2 && lf.stop_factor > 1.0) {
            return Err("train.lr_find: 0 < start < end, iterations ≥ 2, stop_factor > 1".into());
        }
        self.augment.validate()
    }
}
