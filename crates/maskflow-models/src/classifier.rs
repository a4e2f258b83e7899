//! The transfer-learning model: a backbone's body + fastai's head, with freezing and layer groups.

use crate::arch::{bn_config, to_channels_last, Arch, ArchNet};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

pub use maskflow_contracts::model::{HeadConfig, Pool};

/// One trainable parameter with what freezing and per-group learning rates need to know.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    /// 0 and 1: the body's halves; 2: the head.
    pub group: usize,
    pub in_body: bool,
    /// A BatchNorm affine parameter (stays trainable when the body is frozen).
    pub batch_norm: bool,
}

/// Number of layer groups (fastai's split for a cnn_learner).
pub const GROUPS: usize = 3;

/// Why weights could not be loaded: every offending tensor, by name.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}", describe_load_error(.missing, .unexpected, .mismatched))]
pub struct LoadError {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<String>,
}

fn list(names: &[String]) -> String {
    const SHOW: usize = 12;
    let mut s = names.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOW {
        s.push_str(&format!(", … ({} more)", names.len() - SHOW));
    }
    s
}

fn describe_load_error(missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), list(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected: {}", unexpected.len(), list(unexpected)));
    }
    if !mismatched.is_empty() {
        parts.push(format!("{} with another shape: {}", mismatched.len(), list(mismatched)));
    }
    format!("the weights do not fit the model — {}", parts.join("; "))
}

/// What a successful load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    /// Entries deliberately not used (the ImageNet classifier, BatchNorm step counters).
    pub ignored: Vec<String>,
}

/// Copies `tensors` into the variables of `vs` whose names do not start with one of `skip_model`,
/// ignoring checkpoint entries that start with one of `ignore_ckpt` and BatchNorm `num_batches_tracked`
/// counters. Any missing, unexpected or shape-mismatched tensor fails the whole load (nothing is copied).
pub fn load_named(
    vs: &nn::VarStore,
    tensors: &[(String, Tensor)],
    skip_model: &[&str],
    ignore_ckpt: &[&str],
) -> Result<LoadReport, LoadError> {
    let vars = vs.variables();
    let expected: HashMap<&String, &Tensor> =
        vars.iter().filter(|(n, _)| !skip_model.iter().any(|p| n.starts_with(p))).collect();
    let given: HashMap<&String, &Tensor> = tensors.iter().map(|(n, t)| (n, t)).collect();
    let mut err = LoadError { missing: vec![], unexpected: vec![], mismatched: vec![] };
    let mut report = LoadReport::default();
    for (name, var) in &expected {
        match given.get(name) {
            None => err.missing.push((*name).clone()),
            Some(t) if t.size() != var.size() => {
                err.mismatched.push(format!("{name} (checkpoint {:?}, model {:?})", t.size(), var.size()))
            }
            Some(_) => {}
        }
    }
    for (name, _) in tensors {
        if expected.contains_key(name) {
            continue;
        }
        if name.ends_with("num_batches_tracked") || ignore_ckpt.iter().any(|p| name.starts_with(p)) {
            report.ignored.push(name.clone());
        } else {
            err.unexpected.push(name.clone());
        }
    }
    err.missing.sort();
    err.unexpected.sort();
    err.mismatched.sort();
    if !(err.missing.is_empty() && err.unexpected.is_empty() && err.mismatched.is_empty()) {
        return Err(err);
    }
    tch::no_grad(|| {
        for (name, mut var) in expected.into_iter().map(|(n, v)| (n, v.shallow_clone())) {
            var.copy_(given[name]);
        }
    });
    report.loaded = given.len() - report.ignored.len();
    Ok(report)
}

/// A backbone body + the fastai head, in one VarStore: body parameters keep torchvision's names,
/// head parameters are `head.2` (BatchNorm1d), `head.4` (Linear), `head.6`, `head.8` as in fastai's
/// `nn.Sequential`.
pub struct Classifier {
    pub vs: nn::VarStore,
    pub arch: Arch,
    pub classes: i64,
    pub head_config: HeadConfig,
    body: nn::SequentialT,
    pool: Pool,
    head: nn::SequentialT,
    params: Vec<Param>,
    frozen: bool,
}

impl Classifier {
    /// Builds the model with freshly initialised weights (seed them with `tch::manual_seed` first).
    pub fn new(arch: Arch, classes: i64, head_config: &HeadConfig, device: Device) -> Classifier {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let body = arch.body(&root);
        let head = build_head(&(&root / "head"), arch.feature_width(), classes, head_config);
        let vars = vs.variables();
        let bn_prefixes: BTreeSet<String> =
            vars.keys().filter_map(|n| n.strip_suffix(".running_mean").map(str::to_owned)).collect();
        let mut params: Vec<Param> = vars
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, tensor)| {
                let in_body = !name.starts_with("head.");
                let prefix = name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
                Param {
                    group: if in_body { arch.body_group(&name) } else { GROUPS - 1 },
                    batch_norm: bn_prefixes.contains(prefix),
                    in_body,
                    name,
                    tensor,
                }
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Classifier {
            vs,
            arch,
            classes,
            head_config: head_config.clone(),
            body,
            pool: head_config.pool,
            head,
            params,
            frozen: false,
        }
    }

    /// A copy with bf16 weights, for inference on bf16 inputs (about 1.8× faster than fp32 on CPUs
    /// with AVX-512-BF16; see docs/BENCHMARKS.md). `channels_last` as the original was converted.
    pub fn bf16_copy(&self, channels_last: bool) -> Result<Classifier, tch::TchError> {
        let mut copy = Classifier::new(self.arch, self.classes, &self.head_config, self.vs.device());
        copy.vs.copy(&self.vs)?;
        if channels_last {
            copy.to_channels_last();
        }
        copy.vs.bfloat16();
        Ok(copy)
    }

    /// Body features (N, C, h, w) of normalised images (N, 3, H, W).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply_t(&self.body, train)
    }

    /// Logits from body features.
    pub fn head_t(&self, features: &Tensor, train: bool) -> Tensor {
        self.head_from_pooled_t(&self.pool(features), train)
    }

    /// The head's pooling (max ‖ avg for `concat`), flattened: (N, C, h, w) → (N, 2C).
    pub fn pool(&self, features: &Tensor) -> Tensor {
        let pooled = match self.pool {
            Pool::Concat => {
                Tensor::cat(&[features.adaptive_max_pool2d([1, 1]).0, features.adaptive_avg_pool2d([1, 1])], 1)
            }
            Pool::Avg => features.adaptive_avg_pool2d([1, 1]),
            Pool::Max => features.adaptive_max_pool2d([1, 1]).0,
        };
        pooled.flatten(1, -1)
    }

    /// The head after its pooling: pooled features → logits.
    pub fn head_from_pooled_t(&self, pooled: &Tensor, train: bool) -> Tensor {
        pooled.apply_t(&self.head, train)
    }

    /// Logits of normalised images.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head_t(&self.features_t(x, train), train)
    }

    /// Every trainable parameter (frozen or not), sorted by name.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// fastai `freeze()`: the body stops training except its BatchNorm layers.
    pub fn freeze(&mut self) {
        for p in &self.params {
            let _ = p.tensor.set_requires_grad(!p.in_body || p.batch_norm);
        }
        self.frozen = true;
    }

    /// fastai `unfreeze()`: everything trains.
    pub fn unfreeze(&mut self) {
        for p in &self.params {
            let _ = p.tensor.set_requires_grad(true);
        }
        self.frozen = false;
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Loads a torchvision state dict into the body (the ImageNet classifier in it is ignored; the head
    /// keeps its initialisation).
    pub fn load_body(&self, tensors: &[(String, Tensor)]) -> Result<LoadReport, LoadError> {
        load_named(&self.vs, tensors, &["head."], self.arch.classifier_prefixes())
    }

    /// Re-lays every 4-D weight in channels-last strides (values unchanged).
    pub fn to_channels_last(&mut self) {
        tch::no_grad(|| {
            for (_, mut t) in self.vs.variables() {
                if t.dim() == 4 {
                    let cl = to_channels_last(&t);
                    t.set_data(&cl);
                }
            }
        });
    }
}

fn build_head(p: &nn::Path, features: i64, classes: i64, cfg: &HeadConfig) -> nn::SequentialT {
    let pooled = match cfg.pool {
        Pool::Concat => 2 * features,
        Pool::Avg | Pool::Max => features,
    };
    let kaiming = |fan_in: i64| nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: (2.0 / fan_in as f64).sqrt() },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    let (p1, p2) = (cfg.dropout / 2.0, cfg.dropout);
    let bn1 = nn::batch_norm1d(p / 2, pooled, bn_config());
    let lin1 = nn::linear(p / 4, pooled, cfg.width, kaiming(pooled));
    let bn2 = nn::batch_norm1d(p / 6, cfg.width, bn_config());
    let lin2 = nn::linear(p / 8, cfg.width, classes, kaiming(cfg.width));
    // Indices as fastai's head: 0 pool, 1 flatten (both in `Classifier::pool`), 2 BatchNorm1d,
    // 3 Dropout, 4 Linear, 5 ReLU, 6 BatchNorm1d, 7 Dropout, 8 Linear.
    nn::seq_t()
        .add(bn1)
        .add_fn_t(move |x, train| x.dropout(p1, train))
        .add(lin1)
        .add_fn(|x| x.relu())
        .add(bn2)
        .add_fn_t(move |x, train| x.dropout(p2, train))
        .add(lin2)
}

/// The torchvision ImageNet model of `arch` in its own VarStore (for checking imported weights).
pub fn imagenet_model(arch: Arch, device: Device) -> (nn::VarStore, impl ModuleT) {
    let vs = nn::VarStore::new(device);
    let m = arch.imagenet_model(&vs.root());
    (vs, m)
}
