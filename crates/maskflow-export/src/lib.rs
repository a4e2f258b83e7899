//! maskflow-export: the export stage. A `trained_model` (and optionally the `eval_result` whose
//! metrics go into the card) → a `bundle` a deployment can use without maskflow's training code:
//! - `model.pt`: a TorchScript module traced from the Rust model, normalisation and softmax inside.
//!   Input: uint8 RGB images (N, H, W, 3) at the training size, as `predict` and the prep stage make
//!   them; output: float32 per-class probabilities (N, classes).
//! - `model.safetensors`: the weights, torchvision + fastai-head names.
//! - `model_card.json`: classes, input, preprocessing, normalisation, architecture, training recipe,
//!   metrics, dataset fingerprint, the input artifacts' keys, maskflow version.
//! - `README.md`: how to load it from Python (preprocessing as the card says) and from Rust.
//! - With a `detector` input (a `dettrain` artifact): `detector.safetensors`, and its card in
//!   `model_card.json`'s `detector`: `maskflow detect --bundle` then finds faces with it.
//!
//! `maskflow predict` (crate `maskflow-predict`) runs a bundle.

use anyhow::{Context, Result};
use maskflow_contracts::bundle::{InputSpec, ModelCard, Normalization, MODULE_FILE, README_FILE, WEIGHTS_FILE};
use maskflow_contracts::detector::{DetectorCard, WEIGHTS_FILE as DETECTOR_WEIGHTS};
use maskflow_contracts::eval::{read_metrics, Metrics};
use maskflow_contracts::model::{TrainConfig, MODEL_FILE};
use maskflow_contracts::{kinds, Filter, JsonFile, ResizeMode};
use maskflow_core::fsutil::write_atomic;
use maskflow_models::normalize::{MEAN, STD};
use maskflow_stage::{RunCtx, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

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

/// What the stage reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportReport {
    pub classes: Vec<String>,
    pub input: InputSpec,
    pub architecture: String,
    pub files: Vec<String>,
}

/// The export stage kind.
pub struct ExportStage;

impl Stage for ExportStage {
    const KIND: &'static str = "export";
    /// 3: the card names the bundled face detector (`detector`, null without one).
    const VERSION: u32 = 3;
    const OUTPUT: &'static str = kinds::BUNDLE;
    type Params = ExportParams;
    type Report = ExportReport;

    fn inputs(_: &ExportParams) -> Vec<Slot> {
        vec![
            Slot::new("model", kinds::TRAINED_MODEL),
            Slot::new("metrics", kinds::EVAL_RESULT).optional(),
            Slot::new("detector", kinds::DETECTOR).optional(),
        ]
    }
    fn run(p: &ExportParams, ctx: &RunCtx) -> Result<ExportReport> {
        let inputs = Inputs {
            model_dir: ctx.input("model")?,
            eval_dir: ctx.optional_input("metrics"),
            detector_dir: ctx.optional_input("detector"),
            upstream: ctx.input_keys(),
        };
        run(&inputs, p, ctx.out)
    }
    fn summary(r: &ExportReport) -> String {
        format!(
            "bundle: {} (TorchScript, uint8 NHWC {}² → probabilities of {:?}), {}",
            MODULE_FILE,
            r.input.height,
            r.classes,
            r.files[1..].join(", ")
        )
    }
}

/// What the export stage reads.
pub struct Inputs<'a> {
    /// A `trained_model` artifact.
    pub model_dir: &'a Path,
    /// An `eval_result` artifact whose metrics go into the card.
    pub eval_dir: Option<&'a Path>,
    /// A `detector` artifact (dettrain's) shipped in the bundle.
    pub detector_dir: Option<&'a Path>,
    /// Slot → key of the inputs (recorded in the card).
    pub upstream: BTreeMap<String, String>,
}

/// Traces the trained model with its preprocessing tail (uint8 NHWC → normalised NCHW) and softmax.
pub fn trace(model_dir: &Path) -> Result<(tch::CModule, TrainConfig)> {
    let (mut model, cfg) = maskflow_models::load_trained(model_dir, Device::Cpu)?;
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
pub fn run(inputs: &Inputs, params: &ExportParams, out_dir: &Path) -> Result<ExportReport> {
    let (module, cfg) = trace(inputs.model_dir)?;
    let pt = out_dir.join(MODULE_FILE);
    module.save(&pt).with_context(|| format!("saving {}", pt.display()))?;
    let src = inputs.model_dir.join(MODEL_FILE);
    let st = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    write_atomic(&out_dir.join(WEIGHTS_FILE), &st)?;
    let metrics: Option<Metrics> = inputs.eval_dir.map(read_metrics).transpose()?;
    let mut files = vec![MODULE_FILE, WEIGHTS_FILE, ModelCard::FILE, README_FILE];
    let detector = match inputs.detector_dir {
        Some(dir) => {
            let card = DetectorCard::read(dir)?;
            let src = dir.join(DETECTOR_WEIGHTS);
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            write_atomic(&out_dir.join(DETECTOR_WEIGHTS), &bytes)?;
            files.push(DETECTOR_WEIGHTS);
            Some(card)
        }
        None => None,
    };
    let card = ModelCard {
        schema: ModelCard::SCHEMA,
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
        preprocessing: cfg.preprocess.clone(),
        normalization: Normalization { inside_module: true, scale: "1/255".into(), mean: MEAN, std: STD },
        arch: cfg.arch,
        architecture: format!(
            "{} body + fastai head (hidden {}, dropout {}, {} pooling)",
            cfg.arch,
            cfg.head.width,
            cfg.head.dropout,
            match cfg.head.pool {
                maskflow_models::Pool::Concat => "concat",
                maskflow_models::Pool::Avg => "average",
                maskflow_models::Pool::Max => "max",
            }
        ),
        training: cfg.recipe.clone(),
        metrics,
        dataset_fingerprint: cfg.dataset_fingerprint.clone(),
        upstream: inputs.upstream.clone(),
        maskflow_version: maskflow_core::TOOL_VERSION.into(),
        detector,
    };
    card.write(out_dir)?;
    write_atomic(&out_dir.join(README_FILE), readme(&card).as_bytes())?;
    Ok(ExportReport {
        classes: card.classes.clone(),
        input: card.input.clone(),
        architecture: card.architecture.clone(),
        files: files.into_iter().map(String::from).collect(),
    })
}

/// The Python lines that turn `img` (a PIL image, RGB) into the model's input, as the card says.
fn python_preprocessing(card: &ModelCard) -> String {
    let p = &card.preprocessing;
    let s = p.size;
    let filter = match p.filter {
        Filter::Bilinear => "Image.BILINEAR",
        Filter::Bicubic => "Image.BICUBIC",
        Filter::Lanczos3 => "Image.LANCZOS",
        Filter::Box => "Image.BOX",
        Filter::Nearest => "Image.NEAREST",
    };
    let [r, g, b] = p.background;
    let resize = match p.resize {
        ResizeMode::Crop => format!(
            "w, h = img.size; r = {s} / min(w, h)\nimg = img.resize((round(w * r), round(h * r)), {filter})\n\
             l, t = (img.width - {s}) // 2, (img.height - {s}) // 2\nimg = img.crop((l, t, l + {s}, t + {s}))\n"
        ),
        ResizeMode::Squish => format!("img = img.resize(({s}, {s}), {filter})\n"),
        ResizeMode::Pad => format!(
            "w, h = img.size; r = {s} / max(w, h)\nimg = img.resize((round(w * r), round(h * r)), {filter})\n\
             canvas = Image.new(\"RGB\", ({s}, {s}), ({r}, {g}, {b}))\n\
             canvas.paste(img, (({s} - img.width) // 2, ({s} - img.height) // 2)); img = canvas\n"
        ),
    };
    let crop = if card.input.height as u32 == s {
        String::new()
    } else {
        let c = card.input.height;
        format!("o = ({s} - {c}) // 2; img = img.crop((o, o, o + {c}, o + {c}))   # the model's input size\n")
    };
    let alpha = format!(
        "img = ImageOps.exif_transpose(Image.open(\"face.jpg\"))\n\
         if img.mode in (\"RGBA\", \"LA\", \"P\"):                      # transparency onto the background\n    \
         img = img.convert(\"RGBA\"); bg = Image.new(\"RGBA\", img.size, ({r}, {g}, {b}, 255)); img = Image.alpha_composite(bg, img)\n\
         img = img.convert(\"RGB\")\n"
    );
    format!("{alpha}{resize}{crop}")
}

fn readme(card: &ModelCard) -> String {
    let s = card.input.height;
    let p = &card.preprocessing;
    let resize = match p.resize {
        ResizeMode::Crop => "shorter side to the size, centre crop",
        ResizeMode::Squish => "stretched to the square",
        ResizeMode::Pad => "longer side to the size, padded with the background colour",
    };
    format!(
        "# {name}\n\nA {arch} image classifier exported by {ver}. Classes, in output order: {classes:?}.\n\n\
## Input and output\n\n`model.pt` is TorchScript. Input: a uint8 tensor (N, {s}, {s}, 3), RGB, 0..255 — images \
prepared as in training: decoded, EXIF-oriented, converted to RGB (transparency composited on {bg:?}), resized to \
{size}×{size} ({resize}) with the `{filter}` filter (`model_card.json`, `preprocessing`). Normalisation (1/255, \
ImageNet mean/std) happens inside. Output: float32 (N, {k}) softmax probabilities.\n\n\
`maskflow predict --bundle DIR IMAGES...` does all of this for files, folders and globs, with maskflow's own \
decoder and resizer (the snippet below uses Pillow's, which agree to rounding).\n\n\
## Python\n\n```python\nimport numpy as np, torch\nfrom PIL import Image, ImageOps\n\nmodule = torch.jit.load(\"model.pt\")\n\
{pre}x = torch.from_numpy(np.asarray(img)).unsqueeze(0)          # (1, {s}, {s}, 3) uint8\n\
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
        bg = p.background,
        size = p.size,
        filter = serde_json::to_value(p.filter).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        pre = python_preprocessing(card),
        k = card.classes.len(),
    )
}

#[cfg(test)]
mod tests;
