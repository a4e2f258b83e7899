//! maskflow-export: the export stage and `predict`.
//!
//! The bundle is a directory a deployment can use without maskflow's training code:
//! - `model.pt`: a TorchScript module traced from the Rust model, normalisation and softmax inside.
//!   Input: uint8 RGB images (N, H, W, 3) at the training size, as `predict` and the prep stage make
//!   them; output: float32 per-class probabilities (N, classes).
//! - `model.safetensors`: the weights, torchvision + fastai-head names.
//! - `model_card.json`: classes, input, preprocessing, normalisation, architecture, training recipe,
//!   final metrics, dataset fingerprint, every upstream stage key, maskflow version, creation time.
//! - `README.md`: how to load it from Python and from Rust.

pub mod predict;

use anyhow::{Context, Result};
use maskflow_core::fsutil::{write_atomic, write_json_atomic};
use maskflow_prep::PrepParams;
use maskflow_train::augment::{MEAN, STD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const STAGE: &str = "export";
pub const VERSION: u32 = 1;
pub const MODULE_FILE: &str = "model.pt";
pub const CARD_FILE: &str = "model_card.json";

/// `[export]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportParams {
    /// The model's name in its card.
    pub name: String,
}

impl Default for ExportParams {
    fn default() -> Self {
        ExportParams { name: "maskflow-classifier".into() }
    }
}

/// `model_card.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// The prep stage's parameters: how files become the input (decode, EXIF, RGB, resize).
    pub preprocessing: PrepParams,
    pub normalization: Value,
    pub architecture: String,
    pub training: Value,
    pub metrics: Value,
    pub dataset_fingerprint: String,
    pub upstream: BTreeMap<String, String>,
    pub maskflow_version: String,
    pub created_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSpec {
    pub layout: String,
    pub dtype: String,
    pub height: i64,
    pub width: i64,
    pub channels: i64,
    pub output: String,
}

/// What the export stage reads.
pub struct Inputs<'a> {
    pub train_dir: &'a Path,
    pub eval_dir: Option<&'a Path>,
    pub prep: &'a PrepParams,
    pub dataset_fingerprint: String,
    pub upstream: BTreeMap<String, String>,
}

/// Traces the trained model with its preprocessing tail (uint8 NHWC → normalised NCHW) and softmax.
pub fn trace(train_dir: &Path) -> Result<(tch::CModule, maskflow_eval::TrainConfig)> {
    let (mut model, cfg) = maskflow_eval::load_model(train_dir, Device::Cpu)?;
    // Parameters become constants of the traced graph: they must not require gradients.
    model.vs.freeze();
    let s = cfg.image_size;
    let example = Tensor::zeros([2, s, s, 3], (Kind::Uint8, Device::Cpu));
    let mean = Tensor::from_slice(&MEAN.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD.map(|v| v as f32)).view([1, 3, 1, 1]);
    let module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("MaskflowClassifier", "forward", &[example], &mut |inputs| {
            let x = inputs[0].permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
            let x = (x - &mean) / &std;
            vec![model.forward_t(&x, false).softmax(-1, Kind::Float)]
        })
    })
    .context("tracing the model into TorchScript")?;
    Ok((module, cfg))
}

/// Writes the bundle into `out_dir`.
pub fn run(inputs: &Inputs, params: &ExportParams, out_dir: &Path) -> Result<Value> {
    let (module, cfg) = trace(inputs.train_dir)?;
    let pt = out_dir.join(MODULE_FILE);
    module.save(&pt).with_context(|| format!("saving {}", pt.display()))?;
    let st = std::fs::read(inputs.train_dir.join(maskflow_train::MODEL_FILE))?;
    write_atomic(&out_dir.join(maskflow_train::MODEL_FILE), &st)?;
    let metrics = match inputs.eval_dir {
        Some(d) => serde_json::from_slice(&std::fs::read(d.join(maskflow_eval::METRICS_FILE))?)?,
        None => Value::Null,
    };
    let card = ModelCard {
        name: params.name.clone(),
        classes: cfg.classes.clone(),
        input: InputSpec {
            layout: "NHWC (batch, height, width, RGB)".into(),
            dtype: "uint8, 0..255".into(),
            height: cfg.image_size,
            width: cfg.image_size,
            channels: 3,
            output: "float32 (batch, classes): softmax probabilities in the order of `classes`".into(),
        },
        preprocessing: inputs.prep.clone(),
        normalization: serde_json::json!({"inside_module": true, "scale": "1/255", "mean": MEAN, "std": STD}),
        architecture: format!("{} body + fastai head ({:?})", cfg.params.arch, cfg.params.head),
        training: serde_json::to_value(&cfg.params)?,
        metrics,
        dataset_fingerprint: inputs.dataset_fingerprint.clone(),
        upstream: inputs.upstream.clone(),
        maskflow_version: maskflow_core::TOOL_VERSION.into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    write_json_atomic(&out_dir.join(CARD_FILE), &card)?;
    write_atomic(&out_dir.join("README.md"), readme(&card).as_bytes())?;
    Ok(serde_json::json!({
        "classes": card.classes,
        "input": card.input,
        "architecture": card.architecture,
        "files": [MODULE_FILE, maskflow_train::MODEL_FILE, CARD_FILE, "README.md"],
    }))
}

fn readme(card: &ModelCard) -> String {
    let s = card.input.height;
    format!(
        "# {name}\n\nA {arch} image classifier exported by {ver}. Classes, in output order: {classes:?}.\n\n\
## Input and output\n\n`model.pt` is TorchScript. Input: a uint8 tensor (N, {s}, {s}, 3), RGB, 0..255 — images \
prepared as in training: decoded, EXIF-oriented, converted to RGB (alpha on white), resized with `{resize:?}` to \
{s}×{s} with the `{filter:?}` filter (see `model_card.json`, `preprocessing`). Normalisation (1/255, ImageNet \
mean/std) happens inside. Output: float32 (N, {k}) softmax probabilities.\n\n\
`maskflow predict --bundle DIR IMAGES...` does all of this for files, folders and globs.\n\n\
## Python\n\n```python\nimport numpy as np, torch\nfrom PIL import Image, ImageOps\n\nmodule = torch.jit.load(\"model.pt\")\n\
img = ImageOps.exif_transpose(Image.open(\"face.jpg\")).convert(\"RGB\")\n\
w, h = img.size; r = {s} / min(w, h)\nimg = img.resize((round(w * r), round(h * r)), Image.BILINEAR)\n\
l, t = (img.width - {s}) // 2, (img.height - {s}) // 2\nimg = img.crop((l, t, l + {s}, t + {s}))\n\
x = torch.from_numpy(np.asarray(img)).unsqueeze(0)          # (1, {s}, {s}, 3) uint8\n\
probs = module(x)[0]\nprint(dict(zip({classes:?}, probs.tolist())))\n```\n\n\
The weights alone: `safetensors.torch.load_file(\"model.safetensors\")` (torchvision names for the body, \
`head.N.*` for fastai's head).\n\n\
## Rust (tch)\n\n```rust\nlet module = tch::CModule::load(\"model.pt\")?;\n\
let x = tch::Tensor::from_data_size(&rgb_bytes, &[1, {s}, {s}, 3], tch::Kind::Uint8);\n\
let probs = module.forward_ts(&[x])?;            // (1, {k})\n```\n",
        name = card.name,
        arch = card.architecture,
        ver = card.maskflow_version,
        classes = card.classes,
        resize = card.preprocessing.resize,
        filter = card.preprocessing.filter,
        k = card.classes.len(),
    )
}
