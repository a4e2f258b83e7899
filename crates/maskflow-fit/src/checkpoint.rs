//! What every training stage's epoch checkpoints share: variables sorted by name on the CPU, a
//! tensors file written atomically, and a read that trusts a tensors file only when it matches the
//! blake3 its progress file (the commit point, written after it) records.

use anyhow::{Context, Result};
use std::path::Path;
use tch::{nn::VarStore, Device, Tensor};

/// A var store's variables, sorted by name, detached, on the CPU.
pub fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes named tensors as safetensors, atomically.
pub fn save_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
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

/// The tensors of `file` if its blake3 is `blake3`; else why not (damaged, missing, unreadable).
pub fn verified_tensors(file: &Path, blake3: &str) -> Result<Vec<(String, Tensor)>, String> {
    let (hash, _) = maskflow_core::hash::blake3_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if hash != blake3 {
        return Err(format!("{}: it does not match its blake3 (damaged)", file.display()));
    }
    Tensor::read_safetensors(file).map_err(|e| format!("{}: unreadable: {e}", file.display()))
}

/// A file of one JSON line per row (`metrics.jsonl`), written atomically.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut lines = String::new();
    for r in rows {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    maskflow_core::fsutil::write_atomic(path, lines.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
