//! `maskflow weights list | import NAME [--from PATH] | verify`.

use anyhow::{bail, Result};
use maskflow_models::weights::{self, SearchPaths, REGISTRY};
use std::path::Path;

pub fn list(store: &Path) -> Result<()> {
    let search = SearchPaths::from_env();
    let imported: Vec<_> = weights::list_imported(store).into_iter().flatten().collect();
    println!("{:<14} {:<13} {:<28} status", "name", "arch", "file");
    for spec in &REGISTRY {
        let status = match imported.iter().find(|w| w.name == spec.name) {
            Some(w) => format!("imported: {}", w.safetensors().display()),
            None => match weights::locate(spec, None, &search) {
                Ok(p) => format!("not imported; source found at {}", p.display()),
                Err(_) => "not imported; no source found offline (see `maskflow weights import NAME`)".into(),
            },
        };
        println!("{:<14} {:<13} {:<28} {status}", spec.name, spec.network.name(), spec.file_name);
    }
    Ok(())
}

pub fn import(name: &str, from: Option<&Path>, store: &Path) -> Result<()> {
    let t = std::time::Instant::now();
    let w = weights::ensure(name, from, store, &SearchPaths::from_env())?;
    println!(
        "weights {}: {} {} tensors from {} ({:?} format, sha256 {}) → {} [{:.1} s]",
        w.name,
        if w.cached { "cached," } else { "imported" },
        w.tensors,
        w.source.display(),
        w.format,
        w.sha256,
        w.safetensors().display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn verify(store: &Path) -> Result<()> {
    let all = weights::list_imported(store);
    if all.is_empty() {
        println!("no imported weights under {}", store.join("weights").display());
        return Ok(());
    }
    let mut bad = 0;
    for w in all {
        match w.and_then(|w| weights::verify_imported(&w).map(|_| w)) {
            Ok(w) => {
                // The source, when still present, must still have the registry's sha256.
                let source = match weights::spec(&w.name) {
                    Some(spec) if w.source.is_file() => match weights::sha256_file(&w.source) {
                        Ok(sha) if spec.sha256.matches(&sha) => "source sha256 ok".to_owned(),
                        Ok(sha) => {
                            bad += 1;
                            format!("SOURCE CHANGED: {} now has sha256 {sha}", w.source.display())
                        }
                        Err(e) => format!("source unreadable: {e}"),
                    },
                    _ => "source no longer present".to_owned(),
                };
                println!("ok    {} ({}) {} — {source}", w.name, w.network, w.safetensors().display());
            }
            Err(e) => {
                bad += 1;
                println!("BAD   {e}");
            }
        }
    }
    if bad > 0 {
        bail!("{bad} imported weight set(s) failed verification; `maskflow weights import NAME` rebuilds them");
    }
    Ok(())
}
