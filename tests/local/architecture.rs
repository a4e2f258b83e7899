//! The crate graph's rules, from `cargo metadata`: no stage crate depends on another stage crate
//! (normal, dev or build dependencies), and `maskflow-predict` pulls in no Arrow, Parquet or
//! plotting. And `stages.lock`: a stage kind whose sources changed must either bump its version or
//! be re-locked as output-neutral in the same commit.


use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn metadata() -> Value {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kind → version, from the binary's registry.
fn kinds() -> BTreeMap<String, u64> {
    let out = crate::common::ok(&root(), &["stages", "--json"]);
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["kind"].as_str().unwrap().to_string(), v["version"].as_u64().unwrap())
        })
        .collect()
}

/// Workspace package name → (manifest dir, its workspace dependencies by kind: normal / dev / build).
fn workspace(meta: &Value) -> BTreeMap<String, (PathBuf, Vec<(String, String)>)> {
    let members: BTreeSet<&str> = meta["workspace_members"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let pkgs: Vec<&Value> = meta["packages"].as_array().unwrap().iter().filter(|p| members.contains(p["id"].as_str().unwrap())).collect();
    let names: BTreeSet<String> = pkgs.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    pkgs.iter()
        .map(|p| {
            let dir = Path::new(p["manifest_path"].as_str().unwrap()).parent().unwrap().to_path_buf();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| names.contains(d["name"].as_str().unwrap()))
                .map(|d| (d["name"].as_str().unwrap().to_string(), d["kind"].as_str().unwrap_or("normal").to_string()))
                .collect();
            (p["name"].as_str().unwrap().to_string(), (dir, deps))
        })
        .collect()
}

#[test]
fn no_stage_crate_depends_on_another_and_predict_stays_small() {
    let meta = metadata();
    let ws = workspace(&meta);
    let stage_crates: BTreeSet<String> = kinds().keys().map(|k| format!("maskflow-{k}")).collect();
    assert_eq!(stage_crates.len(), 9, "{stage_crates:?}");
    for c in &stage_crates {
        assert!(ws.contains_key(c), "stage crate {c} not in the workspace");
    }
    let mut bad = Vec::new();
    for (name, (_, deps)) in &ws {
        if !stage_crates.contains(name) {
            continue;
        }
        for (dep, kind) in deps {
            if stage_crates.contains(dep) {
                bad.push(format!("{name} → {dep} ({kind})"));
            }
        }
    }
    assert!(bad.is_empty(), "stage crates must not depend on stage crates: {bad:?}");

    // Stage crates are written against maskflow-stage; the runner and the store are out of their
    // reach (normal and build dependencies, transitively), so a change there changes no stage's
    // lock hash.
    for c in &stage_crates {
        let reach = reachable(&ws, c);
        assert!(reach.contains("maskflow-stage"), "{c} does not depend on maskflow-stage");
        for banned in ["maskflow-pipeline", "maskflow-remote"] {
            assert!(!reach.contains(banned), "{c} reaches {banned} (its sources would be in {c}'s lock hash): {reach:?}");
        }
    }
    let stage_api = reachable(&ws, "maskflow-stage");
    assert_eq!(stage_api, BTreeSet::from(["maskflow-stage".to_string(), "maskflow-core".to_string()]), "maskflow-stage stays small");

    // predict: imaging, the bundle contract, the model loader and tch — nothing columnar or plotting.
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "maskflow-predict", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for banned in ["arrow", "parquet", "plotters", "maskflow-plot", "maskflow-data", "maskflow-pipeline"] {
        assert!(!names.contains(banned), "maskflow-predict depends on {banned}");
    }
    assert!(names.contains("tch") && names.contains("maskflow-imaging") && names.contains("maskflow-contracts"));
}

/// Blake3 of a crate's sources: `Cargo.toml`, `build.rs`, and every file under `src/` and `csrc/`
/// except unit-test modules (`tests.rs`), which shape no output.
fn crate_hash(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = Vec::new();
    for f in ["Cargo.toml", "build.rs"] {
        if dir.join(f).is_file() {
            files.push(PathBuf::from(f));
        }
    }
    for sub in ["src", "csrc"] {
        if dir.join(sub).is_dir() {
            let mut list = maskflow_core_list(&dir.join(sub));
            list.iter_mut().for_each(|p| *p = Path::new(sub).join(&*p));
            files.extend(list);
        }
    }
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in files {
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        h.update(f.to_string_lossy().as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().to_hex().to_string()
}

fn maskflow_core_list(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_name() != "tests.rs" {
                out.push(p);
            }
        }
    }
    out
}

/// The workspace crates `krate` reaches through normal and build dependencies (itself included).
fn reachable(ws: &BTreeMap<String, (PathBuf, Vec<(String, String)>)>, krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_string()];
    while let Some(c) = todo.pop() {
        if !seen.insert(c.clone()) {
            continue;
        }
        for (dep, kind) in &ws[&c].1 {
            if kind != "dev" {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// A kind's source hash: its crate and every workspace crate it depends on (normal and build).
fn source_hash(ws: &BTreeMap<String, (PathBuf, Vec<(String, String)>)>, krate: &str) -> String {
    let seen = reachable(ws, krate);
    let mut h = blake3::Hasher::new();
    for c in &seen {
        h.update(c.as_bytes());
        h.update(crate_hash(&ws[c].0).as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[test]
fn stages_lock_matches_each_kinds_version_and_sources() {
    let ws = workspace(&metadata());
    let kinds = kinds();
    let mut current = String::from(
        "# stages.lock: each stage kind's code version and a blake3 of the sources its outputs come from\n\
         # (its crate and every workspace crate it depends on). A change to those sources must either bump\n\
         # the kind's VERSION (outputs change: old artifacts are rebuilt) or, when outputs stay the same,\n\
         # be recorded here as output-neutral in the same commit: `just lock-stages`.\n",
    );
    for (kind, version) in &kinds {
        current.push_str(&format!("\n[{kind}]\nversion = {version}\nsource = \"{}\"\n", source_hash(&ws, &format!("maskflow-{kind}"))));
    }
    let path = root().join("stages.lock");
    if std::env::var_os("MASKFLOW_WRITE_STAGES_LOCK").is_some() {
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let locked = std::fs::read_to_string(&path).unwrap_or_default();
    let table: toml::Table = toml::from_str(&locked).unwrap_or_default();
    let now: toml::Table = toml::from_str(&current).unwrap();
    let mut problems = Vec::new();
    for (kind, entry) in &now {
        let Some(old) = table.get(kind) else {
            problems.push(format!("{kind}: not in stages.lock"));
            continue;
        };
        let (v_old, v_new) = (old.get("version"), entry.get("version"));
        let (s_old, s_new) = (old.get("source"), entry.get("source"));
        if v_old != v_new {
            problems.push(format!("{kind}: VERSION is {} but stages.lock says {}", v_new.unwrap(), v_old.map(|v| v.to_string()).unwrap_or_default()));
        } else if s_old != s_new {
            problems.push(format!(
                "{kind}: its sources changed since stages.lock recorded version {}: bump the kind's VERSION if its \
                 outputs change, or record the change as output-neutral",
                v_new.unwrap()
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n(then run `just lock-stages` and commit stages.lock)", problems.join("\n"));
}
