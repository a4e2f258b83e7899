//! Pipeline files as graphs.
//!
//! ```toml
//! name = "demo"                 # run records go to artifacts/runs/<name>/ (default: the file stem)
//! [dataset]
//! root = "../data/synth-demo"   # relative to this file
//! [index]                       # one table per instance: [KIND] is the default instance,
//! [prep]                        # [KIND.NAME] a named one
//! size = 96
//! [train]
//! [train.resnet]                # a second model
//! arch = "resnet18"
//! [eval]
//! [eval.resnet]                 # inputs default to the same-named instance of the producer kind
//! [eval.street]                 # (train.resnet here), else the default one
//! data = "../data/street"       # a labelled folder: indexed and prepped like the pipeline's data
//! inputs = { model = "train.resnet" }
//! [deteval]                     # a kind that reads a folder itself reads `data` instead of the
//! data = "../data/scenes"       # pipeline's (here: annotated photos)
//! [export]
//! ```
//!
//! The tables present, and what they need, are the graph: an input's source is, unless `inputs`
//! names one, the producer kind's instance of the same name if declared, else its default instance
//! (implied with default params when its table is absent). A sub-table whose name is a field of the
//! kind's params (`[train.augment]`) is a parameter table, any other (`[train.resnet]`) an instance.
//! Errors — unknown kinds, unknown or missing inputs, slot-kind mismatches, cycles, bad params —
//! come before anything runs, with `file:line:col`.

use crate::variation::{self, Sweep, Variation};
use crate::{DynStage, Placement, Registry};
use maskflow_core::config::ConfigError;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

use toml::Spanned;

/// Keys an instance table may hold besides params.
const INPUTS_KEY: &str = "inputs";
const DATA_KEY: &str = "data";

#[derive(Debug, Clone)]
pub struct Node {
    /// `train`, `train.resnet`, or for a clone made by `data = …`, `prep.street`.
    pub name: String,
    pub kind: &'static str,
    /// Resolved params (every default filled in).
    pub params: Value,
    /// Slot → source node name.
    pub inputs: BTreeMap<String, String>,
    /// The labelled folder, for kinds that read one.
    pub dataset: Option<PathBuf>,
    /// Declared in the file (else implied by another's need).
    pub declared: bool,
    /// `data = "FOLDER"` of the instance: its data slots read that folder.
    pub data: Option<PathBuf>,
    /// 1-based line and column of its table (implied nodes: of the node that needed them).
    pub at: (usize, usize),
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub path: PathBuf,
    pub name: String,
    /// The pipeline's labelled folder (`[dataset] root`).
    pub root: PathBuf,
    /// `[dataset] overrides`: a label-overrides file (`path,label` or `path,exclude` per line) that
    /// the stages reading labels from the folder apply; its content is part of their key.
    pub overrides: Option<PathBuf>,
    /// Topological order (upstream first; otherwise declaration order).
    pub nodes: Vec<Node>,
    /// The `-S` overrides and sweep it was loaded with.
    pub variation: Variation,
    /// The sweep expanded into it (`--sweep NAME`): its points and their instances.
    pub sweep: Option<Sweep>,
    text: String,
}

pub(crate) use maskflow_core::config::{error_at as err_at, line_col, toml_error as config_error};

/// `a/b/../c` → `a/c`, `./a` → `a` (lexically: a path relative to a pipeline file's folder reads as
/// the folder it names, `data/synth`, not `pipelines/../data/synth`).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// Whether the text has a `[kind]` header line (TOML keeps no trace of an empty table written
/// before its sub-tables: `[train]` then `[train.resnet]` parses as `train = { resnet = … }`).
fn has_header(text: &str, kind: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        l.strip_prefix('[').and_then(|r| r.strip_suffix(']')).is_some_and(|inner| inner.trim() == kind)
    })
}

/// Field names of a kind's params whose values are tables (`augment`, `head`, …).
fn table_fields(stage: &dyn DynStage) -> BTreeSet<String> {
    match stage.default_params() {
        Value::Object(m) => m.into_iter().filter(|(_, v)| v.is_object()).map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

struct Declared<'a, 'i> {
    name: String,
    stage: &'a dyn DynStage,
    table: Spanned<DeTable<'i>>,
    header: usize,
}

impl Graph {
    pub fn load(path: &Path, registry: &Registry) -> Result<Graph, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text, registry)
    }

    pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Graph, ConfigError> {
        Self::parse_with(path, text, registry, &Variation::default())
    }

    /// Loads a pipeline file with `-S` overrides and, if named, one of its sweeps expanded.
    pub fn load_with(path: &Path, registry: &Registry, v: &Variation) -> Result<Graph, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse_with(path, &text, registry, v)
    }

    /// [`Graph::parse`] with a [`Variation`]: the overrides merged into the file's tables, and every
    /// `[sweep.NAME]` expanded and checked (the one `v.sweep` names is the graph returned).
    pub fn parse_with(path: &Path, text: &str, registry: &Registry, v: &Variation) -> Result<Graph, ConfigError> {
        let src = variation::Sources::new(text, &v.overrides);
        let built = (|| {
            let mut table = DeTable::parse(text).map_err(|e| config_error(path, text, &e))?.into_inner();
            let sweeps = variation::take_sweeps(path, text, &mut table)?;
            variation::apply_overrides(path, &src, &v.overrides, &mut table, registry)?;
            let full = src.full.as_str();
            let base = Self::build(path, full, table.clone(), registry)?;
            let mut chosen = None;
            for s in &sweeps {
                let mut t = table.clone();
                let sweep = variation::expand(path, full, s, &mut t, &base.nodes, registry)?;
                let g = Self::build(path, full, t, registry)?;
                if v.sweep.as_deref() == Some(s.name.as_str()) {
                    chosen = Some(Graph { sweep: Some(sweep), ..g });
                }
            }
            match (&v.sweep, chosen) {
                (None, _) => Ok(base),
                (Some(_), Some(g)) => Ok(g),
                (Some(name), None) => {
                    let names: Vec<&str> = sweeps.iter().map(|s| s.name.as_str()).collect();
                    Err(err_at(path, text, 0, format!(
                        "--sweep {name}: the file has no [sweep.{name}]{}",
                        if names.is_empty() { String::new() } else { format!(" (its sweeps: {})", names.join(", ")) }
                    )))
                }
            }
        })();
        let mut g = built.map_err(|e| src.relocate(e, &v.overrides))?;
        g.text = text.to_string();
        g.variation = v.clone();
        Ok(g)
    }

    /// The graph of a file's tables (`text`: the file with any overrides' lines, for positions).
    fn build(path: &Path, text: &str, root_table: DeTable, registry: &Registry) -> Result<Graph, ConfigError> {
        // Absolute: the folder an index records, and what fanned-out tasks read from elsewhere.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base_abs = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let base = base_abs.as_path();
        let mut name = None;
        let mut root = None;
        let mut overrides = None;
        let mut declared: Vec<Declared> = Vec::new();
        for (k, v) in root_table.iter() {
            let key: &str = k.get_ref();
            let at = k.span().start;
            match key {
                "name" => match v.get_ref().as_str() {
                    Some(s) => name = Some(s.to_string()),
                    None => return Err(err_at(path, text, v.span().start, "key `name`: expected a string".into())),
                },
                "dataset" => {
                    let Some(t) = v.get_ref().as_table() else {
                        return Err(err_at(path, text, at, "`dataset` must be a table".into()));
                    };
                    for (dk, dv) in t.iter() {
                        match dk.get_ref().as_ref() {
                            "root" => match dv.get_ref().as_str() {
                                Some(s) => root = Some(PathBuf::from(s)),
                                None => return Err(err_at(path, text, dv.span().start, "key `root`: expected a path string".into())),
                            },
                            "overrides" => match dv.get_ref().as_str() {
                                Some(s) => overrides = Some(PathBuf::from(s)),
                                None => return Err(err_at(path, text, dv.span().start, "key `overrides`: expected a path string".into())),
                            },
                            "synth" => {}
                            other => {
                                return Err(err_at(
                                    path,
                                    text,
                                    dk.span().start,
                                    format!("unknown field `{other}` in [dataset], expected `root`, `overrides` or `synth`"),
                                ))
                            }
                        }
                    }
                }
                kind => {
                    let Some(stage) = registry.get(kind) else {
                        return Err(err_at(
                            path,
                            text,
                            at,
                            format!("unknown stage kind `{kind}` (kinds: {})", registry.names().join(", ")),
                        ));
                    };
                    let Some(t) = v.get_ref().as_table() else {
                        return Err(err_at(path, text, at, format!("`{kind}` must be a table")));
                    };
                    let params_tables = table_fields(stage);
                    let mut default = DeTable::new();
                    let mut instances = Vec::new();
                    for (ik, iv) in t.iter() {
                        let ikey: &str = ik.get_ref();
                        match iv.get_ref().as_table() {
                            Some(it) if !params_tables.contains(ikey) && ikey != INPUTS_KEY => {
                                instances.push(Declared {
                                    name: format!("{kind}.{ikey}"),
                                    stage,
                                    table: Spanned::new(iv.span(), it.clone()),
                                    header: ik.span().start,
                                });
                            }
                            _ => {
                                default.insert(ik.clone(), iv.clone());
                            }
                        }
                    }
                    if !default.is_empty() || instances.is_empty() || has_header(text, kind) {
                        declared.push(Declared { name: kind.to_string(), stage, table: Spanned::new(v.span(), default), header: at });
                    }
                    declared.extend(instances);
                }
            }
        }
        let Some(root) = root else {
            return Err(err_at(path, text, 0, "missing [dataset] root".into()));
        };
        let root = normalize(&if root.is_absolute() { root } else { base.join(root) });
        let overrides = overrides.map(|o| normalize(&if o.is_absolute() { o } else { base.join(o) }));
        let name = name.unwrap_or_else(|| {
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into())
        });
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err_at(path, text, 0, format!("pipeline name {name:?} must be letters, digits, '-', '_' or '.'")));
        }
        if declared.is_empty() {
            return Err(err_at(path, text, 0, format!("declares no stages (kinds: {})", registry.names().join(", "))));
        }
        let mut b = Builder { path, text, registry, root: root.clone(), base: base.to_path_buf(), nodes: Vec::new(), explicit_at: BTreeMap::new(), resolved: BTreeSet::new() };
        for d in &declared {
            b.declare(d)?;
        }
        b.resolve_inputs()?;
        let nodes = b.sorted()?;
        Ok(Graph { path: path.to_path_buf(), name, root, overrides, nodes, text: text.to_string(), variation: Variation::default(), sweep: None })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A sub-table of `[dataset]` (e.g. `synth`) as `T`, errors with `file:line:col`.
    pub fn dataset_table<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let table = DeTable::parse(&self.text).map_err(|e| config_error(&self.path, &self.text, &e))?;
        let Some(ds) = table.get_ref().iter().find(|(k, _)| k.get_ref() == "dataset").map(|(_, v)| v) else {
            return Ok(None);
        };
        let Some(sub) = ds.get_ref().as_table().and_then(|t| t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v.clone()))
        else {
            return Ok(None);
        };
        T::deserialize(toml::de::ValueDeserializer::from(sub)).map(Some).map_err(|e| config_error(&self.path, &self.text, &e))
    }

    /// Adds `[KIND.NAME] data = FOLDER` (what `maskflow eval --data` does), then re-resolves.
    pub fn add_folder_instance(&mut self, registry: &Registry, kind: &str, suffix: &str, folder: &Path) -> Result<String, ConfigError> {
        let toml_text = format!("{}\n[{kind}.{suffix}]\ndata = {:?}\n", self.text, folder.display().to_string());
        // (An absolute `folder` stays as it is; a relative one is taken from the file's folder.)
        let mut g = Graph::parse_with(&self.path, &toml_text, registry, &self.variation)?;
        g.text = self.text.clone();
        *self = g;
        Ok(format!("{kind}.{suffix}"))
    }

    /// Upstream closure of `name` (itself included), in graph order.
    pub fn ancestors(&self, name: &str) -> BTreeSet<String> {
        let mut want = BTreeSet::from([name.to_string()]);
        for n in self.nodes.iter().rev() {
            if want.contains(&n.name) {
                want.extend(n.inputs.values().cloned());
            }
        }
        want
    }
}


struct Builder<'a> {
    path: &'a Path,
    text: &'a str,
    registry: &'a Registry,
    root: PathBuf,
    base: PathBuf,
    nodes: Vec<Node>,
    /// (node, slot) → offset of an explicit `inputs` entry.
    explicit_at: BTreeMap<(String, String), usize>,
    resolved: BTreeSet<String>,
}

fn without<'i>(t: &DeTable<'i>, key: &str) -> (DeTable<'i>, Option<Spanned<DeValue<'i>>>) {
    let mut out = DeTable::new();
    let mut found = None;
    for (k, v) in t.iter() {
        if k.get_ref() == key {
            found = Some(v.clone());
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    (out, found)
}

impl Builder<'_> {
    fn err(&self, offset: usize, message: String) -> ConfigError {
        err_at(self.path, self.text, offset, message)
    }

    fn stage(&self, kind: &str) -> &dyn DynStage {
        // Every node's kind came from the registry.
        self.registry.get(kind).unwrap_or_else(|| unreachable!("kind {kind} was registered"))
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn offset_of(&self, at: (usize, usize)) -> usize {
        self.text.split_inclusive('\n').take(at.0 - 1).map(str::len).sum::<usize>() + at.1 - 1
    }

    fn declare(&mut self, d: &Declared) -> Result<(), ConfigError> {
        if self.index(&d.name).is_some() {
            return Err(self.err(d.header, format!("[{}] is declared twice", d.name)));
        }
        let default_slots = d.stage.inputs(&d.stage.default_params()).map_err(|m| self.err(d.header, format!("[{}]: {m}", d.name)))?;
        let (table, inputs_entry) = without(d.table.get_ref(), INPUTS_KEY);
        let mut inputs = BTreeMap::new();
        if let Some(v) = inputs_entry {
            let Some(t) = v.get_ref().as_table() else {
                return Err(self.err(v.span().start, format!("[{}] inputs: expected a table of slot = \"instance\"", d.name)));
            };
            for (sk, sv) in t.iter() {
                let slot: &str = sk.get_ref();
                if !default_slots.iter().any(|s| s.name == slot) {
                    let names: Vec<&str> = default_slots.iter().map(|s| s.name).collect();
                    return Err(self.err(
                        sk.span().start,
                        format!("[{}] has no input slot `{slot}` (its slots: {})", d.name, names.join(", ")),
                    ));
                }
                let Some(src) = sv.get_ref().as_str() else {
                    return Err(self.err(sv.span().start, format!("[{}] inputs.{slot}: expected an instance name", d.name)));
                };
                inputs.insert(slot.to_string(), src.to_string());
                self.explicit_at.insert((d.name.clone(), slot.to_string()), sv.span().start);
            }
        }
        let mut table = table;
        let mut data = None;
        // A kind that reads a folder itself (deteval on annotated photos), or through data slots.
        if d.stage.reads_dataset() || default_slots.iter().any(|s| s.data) {
            let (rest, entry) = without(&table, DATA_KEY);
            if let Some(v) = entry {
                let Some(s) = v.get_ref().as_str() else {
                    return Err(self.err(v.span().start, format!("[{}] data: expected a folder path", d.name)));
                };
                let p = PathBuf::from(s);
                data = Some(normalize(&if p.is_absolute() { p } else { self.base.join(p) }));
            }
            table = rest;
        }
        let de = toml::de::ValueDeserializer::from(Spanned::new(d.table.span(), DeValue::Table(table)));
        let params = d.stage.parse(de).map_err(|e| config_error(self.path, self.text, &e))?;
        d.stage.validate(&params).map_err(|m| self.err(d.header, format!("[{}]: {m}", d.name)))?;
        let at = line_col(self.text, d.header);
        self.nodes.push(Node {
            name: d.name.clone(),
            kind: d.stage.kind(),
            params,
            inputs,
            dataset: d.stage.reads_dataset().then(|| data.clone().unwrap_or_else(|| self.root.clone())),
            declared: true,
            data,
            at,
        });
        Ok(())
    }

    /// A default instance nobody declared, with default params.
    fn imply(&mut self, kind: &'static str, at: (usize, usize)) -> usize {
        let stage = self.stage(kind);
        self.nodes.push(Node {
            name: kind.to_string(),
            kind,
            params: stage.default_params(),
            inputs: BTreeMap::new(),
            dataset: stage.reads_dataset().then(|| self.root.clone()),
            declared: false,
            data: None,
            at,
        });
        self.nodes.len() - 1
    }

    fn resolve_inputs(&mut self) -> Result<(), ConfigError> {
        let mut i = 0;
        while i < self.nodes.len() {
            self.resolve(i)?;
            i += 1;
        }
        Ok(())
    }

    fn resolve(&mut self, i: usize) -> Result<(), ConfigError> {
        if !self.resolved.insert(self.nodes[i].name.clone()) {
            return Ok(());
        }
        let (name, kind, at) = (self.nodes[i].name.clone(), self.nodes[i].kind, self.nodes[i].at);
        let slots = self.stage(kind).inputs(&self.nodes[i].params).map_err(|m| self.err(self.offset_of(at), format!("[{name}]: {m}")))?;
        let suffix = name.split_once('.').map(|(_, s)| s.to_string());
        for slot in slots {
            let explicit = self.nodes[i].inputs.get(slot.name).cloned();
            let pos = self.explicit_at.get(&(name.clone(), slot.name.to_string())).copied().unwrap_or_else(|| self.offset_of(at));
            let src = match explicit {
                Some(src) => {
                    let idx = match self.index(&src) {
                        Some(idx) => idx,
                        None => match self.registry.get(&src) {
                            Some(s) => self.imply(s.kind(), at),
                            None => {
                                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                                return Err(self.err(
                                    pos,
                                    format!("[{name}] input `{}` names `{src}`, which is not an instance here ({})", slot.name, names.join(", ")),
                                ));
                            }
                        },
                    };
                    let made = self.stage(self.nodes[idx].kind).output();
                    if made != slot.kind {
                        return Err(self.err(
                            pos,
                            format!(
                                "[{name}] input `{}` takes a {}, but `{src}` ({}) makes a {made}",
                                slot.name, slot.kind, self.nodes[idx].kind
                            ),
                        ));
                    }
                    src
                }
                None => {
                    let Some(producer) = self.registry.producer(slot.kind) else {
                        if slot.required {
                            return Err(self.err(pos, format!("[{name}] input `{}`: no stage kind makes a {}", slot.name, slot.kind)));
                        }
                        continue;
                    };
                    let pk = producer.kind();
                    let same = suffix.as_ref().map(|s| format!("{pk}.{s}")).filter(|c| *c != name && self.index(c).is_some());
                    match same {
                        Some(c) => c,
                        None => {
                            let default = match self.index(pk) {
                                Some(_) => pk.to_string(),
                                None if slot.required => {
                                    self.imply(pk, at);
                                    pk.to_string()
                                }
                                None => continue,
                            };
                            match (&self.nodes[i].data, &suffix) {
                                (Some(folder), Some(sfx)) if slot.data => {
                                    let (folder, sfx) = (folder.clone(), sfx.clone());
                                    self.rebind(&default, &sfx, &folder)?
                                }
                                (Some(_), None) if slot.data => {
                                    return Err(self.err(pos, format!("[{name}] data = …: only a named instance ([{kind}.NAME]) can read another folder")));
                                }
                                _ => default,
                            }
                        }
                    }
                }
            };
            if src == name {
                return Err(self.err(pos, format!("[{name}] input `{}` is the instance itself", slot.name)));
            }
            self.nodes[i].inputs.insert(slot.name.to_string(), src);
        }
        Ok(())
    }

    fn depends_on_dataset(&self, name: &str) -> bool {
        let Some(i) = self.index(name) else { return false };
        let n = &self.nodes[i];
        n.dataset.is_some() || n.inputs.values().any(|u| self.depends_on_dataset(u))
    }

    /// A copy of `src` (and of what it needs from the dataset) reading `folder`: `prep` → `prep.SUFFIX`.
    fn rebind(&mut self, src: &str, suffix: &str, folder: &Path) -> Result<String, ConfigError> {
        let clone_name = format!("{src}.{suffix}");
        if self.index(&clone_name).is_some() {
            return Ok(clone_name);
        }
        let idx = self.index(src).unwrap_or_else(|| unreachable!("{src} exists"));
        self.resolve(idx)?;
        let mut clone = self.nodes[idx].clone();
        clone.name = clone_name.clone();
        clone.declared = false;
        if clone.dataset.is_some() {
            clone.dataset = Some(folder.to_path_buf());
        }
        for up in clone.inputs.values_mut() {
            if self.depends_on_dataset(up) {
                *up = self.rebind(&up.clone(), suffix, folder)?;
            }
        }
        self.resolved.insert(clone_name.clone());
        self.nodes.push(clone);
        Ok(clone_name)
    }

    /// Topological order, ties in declaration order; a cycle is an error naming it.
    fn sorted(mut self) -> Result<Vec<Node>, ConfigError> {
        let mut failed = None;
        for n in &mut self.nodes {
            let stage = self.registry.get(n.kind).unwrap_or_else(|| unreachable!());
            if let Err(m) = stage.place(&mut n.params, Placement { own_data: n.data.is_some() }) {
                failed = Some((n.at, format!("[{}]: {m}", n.name)));
                break;
            }
        }
        if let Some((at, m)) = failed {
            return Err(self.err(self.offset_of(at), m));
        }
        let mut done: Vec<Node> = Vec::new();
        let mut left: Vec<Node> = self.nodes.clone();
        while !left.is_empty() {
            let ready = left.iter().position(|n| n.inputs.values().all(|u| done.iter().any(|d| &d.name == u)));
            match ready {
                Some(k) => done.push(left.remove(k)),
                None => {
                    let first = &left[0];
                    let mut cycle = vec![first.name.clone()];
                    let mut cur = first;
                    while let Some(next) = cur.inputs.values().find_map(|u| left.iter().find(|n| &n.name == u)) {
                        if cycle.contains(&next.name) {
                            cycle.push(next.name.clone());
                            break;
                        }
                        cycle.push(next.name.clone());
                        cur = next;
                    }
                    return Err(self.err(self.offset_of(first.at), format!("the inputs form a cycle: {}", cycle.join(" ← "))));
                }
            }
        }
        Ok(done)
    }
}
