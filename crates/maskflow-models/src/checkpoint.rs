//! Reading PyTorch checkpoints (`torch.save` of a state dict) into named tensors, without Python.
//!
//! Two on-disk formats exist:
//! - **legacy** (PyTorch < 1.6, and `_use_new_zipfile_serialization=False`): five pickles back to back
//!   (magic number, protocol version, system info, the object, the sorted storage keys), then every
//!   storage as an 8-byte little-endian element count followed by its raw bytes.
//! - **zip** (PyTorch ≥ 1.6): a zip archive with `<name>/data.pkl` and one `<name>/data/<key>` entry per
//!   storage.
//!
//! In both, tensors are pickled as `_rebuild_tensor_v2(storage, offset, size, stride, …)`; the pickle is
//! read by [`crate::pickle`], which refuses anything that is not state-dict data.

use crate::pickle::{self, PickleError, StorageDtype, StorageRef, TensorRef, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The legacy format's first pickle: the magic number 0x1950a86a20f9469cfc6c as a protocol-2 LONG1, STOP.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointFormat {
    Legacy,
    Zip,
}

/// The tensors of a checkpoint, in the order the state dict lists them.
#[derive(Debug)]
pub struct Checkpoint {
    pub format: CheckpointFormat,
    pub tensors: Vec<(String, Tensor)>,
    /// Entries of the state dict that are not tensors (kept out, but listed so nothing vanishes silently).
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: not a PyTorch checkpoint (starts with {head}); expected a zip archive (torch.save since 1.6) \
         or the legacy pickle format"
    )]
    UnknownFormat { path: PathBuf, head: String },
    #[error("{path}: truncated: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Pickle { path: PathBuf, source: PickleError },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// Reads a checkpoint file into named tensors (on the CPU, contiguous).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_owned(), source })?;
    read_any(&bytes, path, &[])
}

/// As [`read_checkpoint`], from bytes already in memory; `path` is only used in messages. With
/// `classes` non-empty, a whole pickled module naming only those classes is read too (see
/// [`read_module_checkpoint`]).
pub fn read_checkpoint_bytes(bytes: &[u8], path: &Path, classes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    read_any(bytes, path, classes)
}

/// Reads a *whole pickled module* (`torch.save(model)`) into its state dict's names and tensors
/// (`conv.weight`, `bn.running_mean`, …, as `model.state_dict()` would name them). `classes` lists
/// every module class the pickle may name (`torch.nn.modules.conv.Conv2d`, the model's own class,
/// …); any other global is refused, and no class is ever looked up or run.
pub fn read_module_checkpoint(path: &Path, classes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_owned(), source })?;
    read_any(&bytes, path, classes)
}

fn read_any(bytes: &[u8], path: &Path, classes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, path, classes)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_legacy(bytes, path, classes)
    } else if LEGACY_MAGIC.starts_with(&bytes[..bytes.len().min(LEGACY_MAGIC.len())]) {
        Err(CheckpointError::Truncated { path: path.to_owned(), what: format!("only {} bytes", bytes.len()) })
    } else {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        Err(CheckpointError::UnknownFormat { path: path.to_owned(), head: format!("bytes {head}") })
    }
}

fn pickle_err(path: &Path, source: PickleError) -> CheckpointError {
    match source {
        PickleError::Truncated => {
            CheckpointError::Truncated { path: path.to_owned(), what: "a pickle ends early".into() }
        }
        source => CheckpointError::Pickle { path: path.to_owned(), source },
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid { path: path.to_owned(), why: why.into() }
}

fn read_legacy(bytes: &[u8], path: &Path, classes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    let no_pid = |_: &Value| -> Result<Value, String> { Err("unexpected persistent id".into()) };
    let mut pos = LEGACY_MAGIC.len();
    let (version, n) = pickle::load(&bytes[pos..], &no_pid).map_err(|e| pickle_err(path, e))?;
    pos += n;
    if version != Value::Int(1001) {
        return Err(invalid(path, format!("legacy protocol version {version:?}, expected 1001")));
    }
    let (sys_info, n) = pickle::load(&bytes[pos..], &no_pid).map_err(|e| pickle_err(path, e))?;
    pos += n;
    if let Value::Dict(items) = &sys_info {
        let little = items.iter().any(|(k, v)| *k == Value::Str("little_endian".into()) && *v == Value::Bool(true));
        if !little {
            return Err(invalid(path, "written on a big-endian machine; not supported"));
        }
    }
    let (object, n) = pickle::load_with(&bytes[pos..], &pickle::storage_from_persistent_id, classes)
        .map_err(|e| pickle_err(path, e))?;
    pos += n;
    let (keys, n) = pickle::load(&bytes[pos..], &no_pid).map_err(|e| pickle_err(path, e))?;
    pos += n;
    let Value::List(keys) = keys else {
        return Err(invalid(path, "storage key list is not a list"));
    };

    // Storage sizes come from the object's references; the data section repeats the element count.
    let refs = storage_refs(&object);
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(invalid(path, "a storage key is not a string"));
        };
        let header = bytes.get(pos..pos + 8).ok_or_else(|| CheckpointError::Truncated {
            path: path.to_owned(),
            what: format!("storage {key}: header missing at byte {pos}"),
        })?;
        let mut a = [0u8; 8];
        a.copy_from_slice(header);
        let numel = u64::from_le_bytes(a);
        pos += 8;
        let dtype = refs
            .get(key.as_str())
            .map(|r| r.dtype)
            .ok_or_else(|| invalid(path, format!("storage {key} is listed but no tensor uses it")))?;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| invalid(path, format!("storage {key}: absurd size {numel}")))?;
        let data = bytes.get(pos..pos + len).ok_or_else(|| CheckpointError::Truncated {
            path: path.to_owned(),
            what: format!("storage {key} needs {len} bytes at byte {pos}, the file has {}", bytes.len()),
        })?;
        pos += len;
        storages.insert(key, data);
    }
    finish(object, &storages, CheckpointFormat::Legacy, path)
}

fn read_zip(bytes: &[u8], path: &Path, classes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| CheckpointError::Truncated {
        path: path.to_owned(),
        what: format!("the zip archive cannot be opened ({e})"),
    })?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || n.as_str() == "data.pkl")
        .ok_or_else(|| invalid(path, "zip archive without data.pkl: not a torch.save file"))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    if let Some(order) = names.iter().find(|n| **n == format!("{prefix}byteorder")) {
        let text = read_entry(&mut archive, order, path)?;
        if text != b"little" {
            return Err(invalid(path, "byteorder is not little-endian; not supported"));
        }
    }
    let pickled = read_entry(&mut archive, &pkl, path)?;
    let (object, _) =
        pickle::load_with(&pickled, &pickle::storage_from_persistent_id, classes).map_err(|e| pickle_err(path, e))?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in storage_refs(&object).keys() {
        let entry = format!("{prefix}data/{key}");
        if !names.contains(&entry) {
            return Err(CheckpointError::Truncated {
                path: path.to_owned(),
                what: format!("entry {entry} is missing"),
            });
        }
        data.insert((*key).to_owned(), read_entry(&mut archive, &entry, path)?);
    }
    let storages: HashMap<String, &[u8]> = data.iter().map(|(k, v)| (k.clone(), v.as_slice())).collect();
    finish(object, &storages, CheckpointFormat::Zip, path)
}

fn read_entry(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let mut f = archive.by_name(name).map_err(|e| invalid(path, format!("zip entry {name}: {e}")))?;
    let mut out = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut out).map_err(|e| CheckpointError::Truncated {
        path: path.to_owned(),
        what: format!("zip entry {name} cannot be read ({e})"),
    })?;
    Ok(out)
}

/// Every storage that a tensor in `v` references, by key.
fn storage_refs(v: &Value) -> HashMap<&str, &StorageRef> {
    fn walk<'a>(v: &'a Value, out: &mut HashMap<&'a str, &'a StorageRef>) {
        match v {
            Value::Tensor(t) => {
                out.insert(t.storage.key.as_str(), &t.storage);
            }
            Value::Storage(s) => {
                out.insert(s.key.as_str(), s);
            }
            Value::Dict(items) => items.iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out)
            }),
            Value::List(items) | Value::Tuple(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object { state, .. } => walk(state, out),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(v, &mut out);
    out
}

/// Picks the state dict (the top-level dict, or the `state_dict` / `model` / `model_state_dict` entry of a
/// training checkpoint) and materialises its tensors.
fn finish(
    object: Value,
    storages: &HashMap<String, &[u8]>,
    format: CheckpointFormat,
    path: &Path,
) -> Result<Checkpoint, CheckpointError> {
    let top = match object {
        Value::Dict(top) => top,
        module @ Value::Object { .. } => {
            let mut flat = Vec::new();
            flatten_module(module, "", &mut flat).map_err(|why| invalid(path, why))?;
            flat
        }
        _ => return Err(invalid(path, "the saved object is neither a state dict nor a module")),
    };
    let all_tensors = top.iter().all(|(_, v)| matches!(v, Value::Tensor(_)));
    let items = if all_tensors {
        top
    } else {
        let nested = top.into_iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(d)) if ["state_dict", "model", "model_state_dict"].contains(&k.as_str()) => {
                Some(d)
            }
            _ => None,
        });
        nested.ok_or_else(|| {
            invalid(path, "the dict holds non-tensor values and no `state_dict` / `model` entry to read instead")
        })?
    };
    let mut tensors = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    for (k, v) in items {
        let Value::Str(name) = k else {
            return Err(invalid(path, "a state dict key is not a string"));
        };
        match v {
            Value::Tensor(t) => {
                let data = storages
                    .get(&t.storage.key)
                    .ok_or_else(|| invalid(path, format!("tensor {name}: storage {} is missing", t.storage.key)))?;
                let tensor = materialise(&t, data).map_err(|why| invalid(path, format!("tensor {name}: {why}")))?;
                tensors.push((name, tensor));
            }
            _ => skipped.push(name),
        }
    }
    Ok(Checkpoint { format, tensors, skipped })
}

/// A module object's parameters and buffers under `prefix`, then its submodules', as
/// `Module.state_dict()` orders them (a `None` parameter, e.g. a conv without bias, is left out).
fn flatten_module(module: Value, prefix: &str, out: &mut Vec<(Value, Value)>) -> Result<(), String> {
    let Value::Object { class, state } = module else {
        return Err(format!("`{prefix}` is not a module object"));
    };
    let Value::Dict(attrs) = *state else {
        return Err(format!("module `{prefix}` ({class}) has no attribute dict"));
    };
    let attr = |name: &str| {
        attrs.iter().find(|(k, _)| *k == Value::Str(name.into())).map(|(_, v)| v.clone()).unwrap_or(Value::None)
    };
    for group in ["_parameters", "_buffers"] {
        match attr(group) {
            Value::Dict(items) => {
                for (k, v) in items {
                    let Value::Str(k) = k else { return Err(format!("module `{prefix}`: a {group} key is not a string")) };
                    if v != Value::None {
                        out.push((Value::Str(format!("{prefix}{k}")), v));
                    }
                }
            }
            Value::None => {}
            _ => return Err(format!("module `{prefix}` ({class}): {group} is not a dict")),
        }
    }
    match attr("_modules") {
        Value::Dict(children) => {
            for (k, child) in children {
                let Value::Str(k) = k else { return Err(format!("module `{prefix}`: a submodule name is not a string")) };
                if child != Value::None {
                    flatten_module(child, &format!("{prefix}{k}."), out)?;
                }
            }
            Ok(())
        }
        Value::None => Ok(()),
        _ => Err(format!("module `{prefix}` ({class}): _modules is not a dict")),
    }
}

fn kind_of(d: StorageDtype) -> Kind {
    match d {
        StorageDtype::F64 => Kind::Double,
        StorageDtype::F32 => Kind::Float,
        StorageDtype::F16 => Kind::Half,
        StorageDtype::BF16 => Kind::BFloat16,
        StorageDtype::I64 => Kind::Int64,
        StorageDtype::I32 => Kind::Int,
        StorageDtype::I16 => Kind::Int16,
        StorageDtype::I8 => Kind::Int8,
        StorageDtype::U8 => Kind::Uint8,
        StorageDtype::Bool => Kind::Bool,
    }
}

/// Copies a strided view of a storage into a fresh contiguous tensor, after checking that every element
/// it addresses lies inside the storage (as_strided itself does not check).
fn materialise(t: &TensorRef, data: &[u8]) -> Result<Tensor, String> {
    let el = t.storage.dtype.size();
    let numel = (data.len() / el) as i64;
    if data.len() % el != 0 {
        return Err(format!("storage of {} bytes is not a whole number of {el}-byte elements", data.len()));
    }
    if (numel as u64) < t.storage.numel {
        return Err(format!("storage holds {numel} elements, its reference says {}", t.storage.numel));
    }
    if t.offset < 0 || t.size.iter().any(|&s| s < 0) || t.stride.iter().any(|&s| s < 0) {
        return Err("negative offset, size or stride".into());
    }
    let count: i64 = t.size.iter().product();
    if count > 0 {
        let last: i64 = t.offset + t.size.iter().zip(&t.stride).map(|(s, st)| (s - 1) * st).sum::<i64>();
        if last >= numel {
            return Err(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {numel}",
                t.offset, t.size, t.stride
            ));
        }
    }
    let flat = Tensor::from_data_size(data, &[numel], kind_of(t.storage.dtype));
    Ok(flat.as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset)).contiguous())
}
