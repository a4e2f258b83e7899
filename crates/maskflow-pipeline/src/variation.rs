//! Variations of a pipeline file without editing it: `-S stage.param=value` overrides, and the
//! file's `[sweep.NAME]` tables expanded into named instances.
//!
//! Both act on the file's TOML tree before the graph is built, so an override or a sweep point is
//! keyed exactly as if it were written in the file, and is checked by the same code: an unknown
//! param, a value of the wrong type or an instance that does not exist is an error before anything
//! runs — for `-S`, naming the argument; for a sweep, the file's line and column.
//!
//! ```toml
//! [sweep.lr]                         # `maskflow run PIPE --sweep lr`
//! train.frozen_lr = [1e-3, 3e-3, 1e-2]
//! # mode = "grid" (default: every combination of the lists) or "list" (the i-th of each list)
//! ```
//!
//! A sweep point `lr-2` clones the swept instance and everything downstream of it (`train.lr-2`,
//! `eval.lr-2`, `export.lr-2`); what is upstream (index, prep) is shared by every point.

use crate::graph::{err_at, Node};
use crate::Registry;
use maskflow_core::config::ConfigError;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What varies a pipeline file: `-S` overrides (in order; a later one wins) and the sweep to expand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Variation {
    pub overrides: Vec<Override>,
    /// A `[sweep.NAME]` of the file.
    pub sweep: Option<String>,
}

/// One `-S path=value`: a dotted path as in the file (`train.frozen_lr`, `train.augment.flip`,
/// `eval.street.tta`) and a TOML value (`1e-3`, `[1e-5, 1e-4]`, `true`; a bare word is a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The argument as given.
    pub arg: String,
    pub path: Vec<String>,
    /// The value as TOML text.
    pub value: String,
}

impl Override {
    pub fn parse(arg: &str) -> Result<Override, String> {
        let Some((path, value)) = arg.split_once('=') else {
            return Err(format!("-S {arg}: expected stage.param=value (e.g. train.frozen_lr=1e-3)"));
        };
        let path: Vec<String> = path.trim().split('.').map(|s| s.trim().to_string()).collect();
        if path.len() < 2 || path.iter().any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
            return Err(format!("-S {arg}: the path must be dotted names, stage then param (e.g. train.frozen_lr)"));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("-S {arg}: no value after `=`"));
        }
        let value = if DeValue::parse(value).is_ok() { value.to_string() } else { toml::Value::String(value.to_string()).to_string() };
        Ok(Override { arg: arg.to_string(), path, value })
    }
}

pub use maskflow_core::runs::{Sweep, SweepPoint};

/// The file's text with each override on a line after it: errors in an override point there, and
/// [`relocate`] turns them into errors naming the `-S` argument.
pub(crate) struct Sources {
    pub full: String,
    /// Override i starts at `starts[i]` in `full`.
    starts: Vec<usize>,
    /// The padded texts the overrides are parsed from (their offsets are `full`'s).
    padded: Vec<String>,
    file_len: usize,
}

impl Sources {
    pub fn new(text: &str, overrides: &[Override]) -> Sources {
        let mut full = text.to_string();
        let mut starts = Vec::new();
        let mut padded = Vec::new();
        for o in overrides {
            full.push('\n');
            let start = full.len();
            let line = format!("{} = {}", o.path.join("."), o.value);
            // Everything before the line blanked (newlines kept): the line's offsets are full's.
            let pad: String = full.bytes().map(|b| if b == b'\n' { '\n' } else { ' ' }).collect();
            padded.push(format!("{pad}{line}\n"));
            full.push_str(&line);
            starts.push(start);
        }
        full.push('\n');
        Sources { full, starts, padded, file_len: text.len() }
    }

    /// An error located in the overrides' lines as an error of the `-S` argument.
    pub fn relocate(&self, e: ConfigError, overrides: &[Override]) -> ConfigError {
        let ConfigError::Invalid { line, message, .. } = &e else { return e };
        let line_start: usize = self.full.split_inclusive('\n').take(line - 1).map(str::len).sum();
        if line_start <= self.file_len {
            return e;
        }
        match self.starts.iter().rposition(|&s| s <= line_start) {
            Some(i) => {
                // The key is the argument's own: not repeated.
                let message = message.strip_prefix(&format!("key `{}`: ", overrides[i].path.join("."))).unwrap_or(message);
                ConfigError::Override { arg: overrides[i].arg.clone(), message: message.to_string() }
            }
            None => e,
        }
    }
}

/// The file's table with `-S` overrides merged in (each checked to name a kind and, past the
/// default instance's params, an instance the file declares).
pub(crate) fn apply_overrides<'a>(
    path: &Path,
    src: &'a Sources,
    overrides: &[Override],
    table: &mut DeTable<'a>,
    registry: &Registry,
) -> Result<(), ConfigError> {
    for (i, o) in overrides.iter().enumerate() {
        let fail = |message: String| ConfigError::Override { arg: o.arg.clone(), message };
        target(&o.path, table, registry).map_err(fail)?;
        let parsed = DeTable::parse(&src.padded[i]).map_err(|e| fail(e.message().trim().to_string()))?.into_inner();
        merge(table, parsed).map_err(|m| err_at(path, &src.full, src.starts[i], m))?;
    }
    Ok(())
}

/// Fields of a kind's params (what `path[1]` may be besides an instance name).
fn param_fields(registry: &Registry, kind: &str) -> BTreeSet<String> {
    match registry.get(kind).map(|s| s.default_params()) {
        Some(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

/// The instance a dotted path sets a param of, and the param's path within its table.
fn target<'p>(path: &'p [String], table: &DeTable, registry: &Registry) -> Result<(String, &'p [String]), String> {
    let kind = path[0].as_str();
    if kind == "dataset" {
        return Err("[dataset] is not a stage: give the folder in the file (a new folder is a new pipeline, not a variant)".into());
    }
    if registry.get(kind).is_none() {
        return Err(format!("`{kind}` is not a stage kind (kinds: {})", registry.names().join(", ")));
    }
    let fields = param_fields(registry, kind);
    let second = path[1].as_str();
    if path.len() == 2 || fields.contains(second) || second == "inputs" || second == "data" {
        return Ok((kind.to_string(), &path[1..]));
    }
    let declared = table.get(kind).and_then(|v| v.get_ref().as_table()).is_some_and(|t| t.get(second).is_some_and(|v| v.get_ref().as_table().is_some()));
    if !declared {
        let instances: Vec<String> = table
            .get(kind)
            .and_then(|v| v.get_ref().as_table())
            .map(|t| t.iter().filter(|(k, v)| v.get_ref().as_table().is_some() && !fields.contains(k.get_ref().as_ref())).map(|(k, _)| format!("{kind}.{}", k.get_ref())).collect())
            .unwrap_or_default();
        return Err(format!(
            "`{second}` is neither a param of {kind} nor an instance the file declares ([{kind}.{second}]){}",
            if instances.is_empty() { String::new() } else { format!("; its named instances: {}", instances.join(", ")) }
        ));
    }
    Ok((format!("{kind}.{second}"), &path[2..]))
}

/// Merges `from` into `into`: tables recursively, any other value replaced.
fn merge<'a>(into: &mut DeTable<'a>, from: DeTable<'a>) -> Result<(), String> {
    for (k, v) in from {
        let name = k.get_ref().to_string();
        let existing = into.get_mut(name.as_str());
        match (existing, v.get_ref()) {
            (Some(old), DeValue::Table(_)) if old.get_ref().as_table().is_some() => {
                let DeValue::Table(sub) = v.into_inner() else { unreachable!("matched a table") };
                let DeValue::Table(old_t) = old.get_mut() else { unreachable!("checked a table") };
                merge(old_t, sub)?;
            }
            (Some(old), DeValue::Table(_)) => return Err(format!("`{name}` is a {} in the file, not a table", kind_of(old.get_ref()))),
            (Some(old), _) => *old = v,
            (None, _) => {
                into.insert(k, v);
            }
        }
    }
    Ok(())
}

fn kind_of(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "float",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "date",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "table",
    }
}

/// A `[sweep.NAME]` table as read: its swept paths (each with its list) and mode.
pub(crate) struct SweepTable<'a> {
    pub name: String,
    pub at: usize,
    pub axes: Vec<(Vec<Spanned<toml::de::DeString<'a>>>, Vec<Spanned<DeValue<'a>>>)>,
    pub grid: bool,
}

/// Reads the file's `sweep` table (removed from `table`).
pub(crate) fn take_sweeps<'a>(path: &Path, text: &str, table: &mut DeTable<'a>) -> Result<Vec<SweepTable<'a>>, ConfigError> {
    let Some(v) = table.remove("sweep") else { return Ok(Vec::new()) };
    let at = v.span().start;
    let DeValue::Table(sweeps) = v.into_inner() else {
        return Err(err_at(path, text, at, "`sweep` must be tables: [sweep.NAME] with stage.param = [values]".into()));
    };
    let mut out = Vec::new();
    for (name, body) in sweeps {
        let at = name.span().start;
        let name_s = name.get_ref().to_string();
        if name_s.is_empty() || !name_s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err_at(path, text, at, format!("sweep name {name_s:?}: letters, digits and '_' only (it names instances: train.{name_s}-1)")));
        }
        let DeValue::Table(body) = body.into_inner() else {
            return Err(err_at(path, text, at, format!("[sweep.{name_s}] must be a table of stage.param = [values]")));
        };
        let mut grid = true;
        let mut axes = Vec::new();
        for (k, v) in body {
            if k.get_ref() == "mode" {
                match v.get_ref().as_str() {
                    Some("grid") => grid = true,
                    Some("list") => grid = false,
                    _ => return Err(err_at(path, text, v.span().start, format!("[sweep.{name_s}] mode: expected \"grid\" or \"list\""))),
                }
                continue;
            }
            leaves(path, text, &name_s, vec![k], v, &mut axes)?;
        }
        if axes.is_empty() {
            return Err(err_at(path, text, at, format!("[sweep.{name_s}] sweeps nothing: add stage.param = [values]")));
        }
        // In the file's order (TOML tables come back sorted by key).
        axes.sort_by_key(|(keys, _)| keys.last().map(|k| k.span().start).unwrap_or_default());
        if !grid {
            let n = axes[0].1.len();
            if let Some((p, _)) = axes.iter().find(|(_, vals)| vals.len() != n) {
                return Err(err_at(path, text, p[0].span().start, format!("[sweep.{name_s}] mode = \"list\": every list must have {n} values, as the first does")));
            }
        }
        out.push(SweepTable { name: name_s, at, axes, grid });
    }
    Ok(out)
}

type Axis<'a> = (Vec<Spanned<toml::de::DeString<'a>>>, Vec<Spanned<DeValue<'a>>>);

fn leaves<'a>(path: &Path, text: &str, sweep: &str, keys: Vec<Spanned<toml::de::DeString<'a>>>, v: Spanned<DeValue<'a>>, out: &mut Vec<Axis<'a>>) -> Result<(), ConfigError> {
    let at = v.span().start;
    let dotted = keys.iter().map(|k| k.get_ref().to_string()).collect::<Vec<_>>().join(".");
    match v.into_inner() {
        DeValue::Table(t) => {
            for (k, v) in t {
                let mut keys = keys.clone();
                keys.push(k);
                leaves(path, text, sweep, keys, v, out)?;
            }
            Ok(())
        }
        DeValue::Array(a) if !a.is_empty() => {
            if keys.len() < 2 {
                return Err(err_at(path, text, at, format!("[sweep.{sweep}] {dotted}: expected stage.param = [values]")));
            }
            out.push((keys, a.into_iter().collect()));
            Ok(())
        }
        DeValue::Array(_) => Err(err_at(path, text, at, format!("[sweep.{sweep}] {dotted}: an empty list sweeps nothing"))),
        other => Err(err_at(path, text, at, format!("[sweep.{sweep}] {dotted}: expected a list of values, found a {}", kind_of(&other)))),
    }
}

/// The points of a sweep: for each, one value per axis (grid: every combination, the last axis
/// varying fastest; list: the i-th of each).
fn points<'a>(s: &SweepTable<'a>) -> Vec<Vec<Spanned<DeValue<'a>>>> {
    if !s.grid {
        return (0..s.axes[0].1.len()).map(|i| s.axes.iter().map(|(_, vals)| vals[i].clone()).collect()).collect();
    }
    let mut out: Vec<Vec<Spanned<DeValue>>> = vec![Vec::new()];
    for (_, vals) in &s.axes {
        out = out.into_iter().flat_map(|p| vals.iter().map(move |v| [p.clone(), vec![v.clone()]].concat())).collect();
    }
    out
}

/// The instance table (or a fresh one) that a clone of `node` starts from.
fn instance_table<'a>(table: &DeTable<'a>, registry: &Registry, node: &Node) -> DeTable<'a> {
    let kind = node.kind;
    let Some(kt) = table.get(kind).and_then(|v| v.get_ref().as_table()) else { return DeTable::new() };
    match node.name.split_once('.') {
        Some((_, suffix)) => kt.get(suffix).and_then(|v| v.get_ref().as_table()).cloned().unwrap_or_default(),
        None => {
            // The default instance: the kind's table without its named instances.
            let fields = param_fields(registry, kind);
            kt.iter()
                .filter(|(k, v)| v.get_ref().as_table().is_none() || fields.contains(k.get_ref().as_ref()) || k.get_ref() == "inputs")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }
}

fn spanned_str<'a>(s: String, at: Range<usize>) -> Spanned<toml::de::DeString<'a>> {
    Spanned::new(at, std::borrow::Cow::Owned(s))
}

/// Sets `value` at `keys` in `t`, creating tables on the way.
fn set_in<'a>(t: &mut DeTable<'a>, keys: &[Spanned<toml::de::DeString<'a>>], value: Spanned<DeValue<'a>>) -> Result<(), String> {
    let (first, rest) = keys.split_first().unwrap_or_else(|| unreachable!("a swept path has a param"));
    if rest.is_empty() {
        match t.get_mut(first.get_ref().as_ref()) {
            Some(old) => *old = value,
            None => {
                t.insert(first.clone(), value);
            }
        }
        return Ok(());
    }
    let name = first.get_ref().to_string();
    if t.get(name.as_str()).is_none() {
        t.insert(first.clone(), Spanned::new(first.span(), DeValue::Table(DeTable::new())));
    }
    match t.get_mut(name.as_str()).map(|v| v.get_mut()) {
        Some(DeValue::Table(sub)) => set_in(sub, rest, value),
        Some(other) => Err(format!("`{name}` is a {}, not a table", kind_of(other))),
        None => unreachable!("inserted above"),
    }
}

/// Adds the sweep's clones to `table` (from the graph `nodes` built without it); returns the sweep
/// as expanded.
pub(crate) fn expand<'a>(
    path: &Path,
    text: &str,
    s: &SweepTable<'a>,
    table: &mut DeTable<'a>,
    nodes: &[Node],
    registry: &Registry,
) -> Result<Sweep, ConfigError> {
    // Which instance each axis sets a param of.
    let mut axes = Vec::new();
    for (keys, _) in &s.axes {
        let names: Vec<String> = keys.iter().map(|k| k.get_ref().to_string()).collect();
        let (instance, rest) = target(&names, table, registry).map_err(|m| err_at(path, text, keys[0].span().start, format!("[sweep.{}] {}: {m}", s.name, names.join("."))))?;
        if !nodes.iter().any(|n| n.name == instance) {
            return Err(err_at(path, text, keys[0].span().start, format!("[sweep.{}] {}: no instance {instance} in this pipeline", s.name, names.join("."))));
        }
        axes.push((instance, keys[keys.len() - rest.len()..].to_vec(), names.join(".")));
    }
    // The swept instances and everything downstream of them, in graph order.
    let mut cloned: BTreeSet<String> = axes.iter().map(|(i, _, _)| i.clone()).collect();
    for n in nodes {
        if n.inputs.values().any(|u| cloned.contains(u)) {
            cloned.insert(n.name.clone());
        }
    }
    let declared: BTreeSet<&str> = nodes.iter().filter(|n| n.declared || !n.name.contains('.')).map(|n| n.name.as_str()).collect();
    let mut out = Vec::new();
    for (i, point) in points(s).into_iter().enumerate() {
        let label = format!("{}-{}", s.name, i + 1);
        let clone_name = |name: &str| match name.split_once('.') {
            Some((kind, suffix)) => format!("{kind}.{suffix}-{label}"),
            None => format!("{name}.{label}"),
        };
        let mut instances = BTreeMap::new();
        for n in nodes.iter().filter(|n| cloned.contains(&n.name)) {
            let mut t = instance_table(table, registry, n);
            t.remove("inputs");
            let inputs: DeTable = n
                .inputs
                .iter()
                .filter(|(_, src)| cloned.contains(*src) || declared.contains(src.as_str()))
                .map(|(slot, src)| {
                    let src = if cloned.contains(src) { clone_name(src) } else { src.clone() };
                    (spanned_str(slot.clone(), 0..0), Spanned::new(0..0, DeValue::String(std::borrow::Cow::Owned(src))))
                })
                .collect();
            if !inputs.is_empty() {
                t.insert(spanned_str("inputs".into(), 0..0), Spanned::new(0..0, DeValue::Table(inputs)));
            }
            for ((instance, keys, dotted), value) in axes.iter().zip(&point) {
                if *instance == n.name {
                    set_in(&mut t, keys, value.clone()).map_err(|m| err_at(path, text, value.span().start, format!("[sweep.{}] {dotted}: {m}", s.name)))?;
                }
            }
            let name = clone_name(&n.name);
            let suffix = name.split_once('.').map(|(_, s)| s.to_string()).unwrap_or_default();
            let kt = match table.get_mut(n.kind) {
                Some(v) => v,
                None => {
                    table.insert(spanned_str(n.kind.to_string(), s.at..s.at), Spanned::new(s.at..s.at, DeValue::Table(DeTable::new())));
                    table.get_mut(n.kind).unwrap_or_else(|| unreachable!("inserted"))
                }
            };
            let DeValue::Table(kt) = kt.get_mut() else { unreachable!("a kind's entry is a table: the graph was built from it") };
            if kt.get(suffix.as_str()).is_some() {
                return Err(err_at(path, text, s.at, format!("[sweep.{}] would add [{name}], which the file declares already", s.name)));
            }
            kt.insert(spanned_str(suffix, s.at..s.at), Spanned::new(s.at..s.at, DeValue::Table(t)));
            instances.insert(n.name.clone(), name);
        }
        let values = axes.iter().zip(&point).map(|((_, _, dotted), v)| (dotted.clone(), value_text(v))).collect();
        out.push(SweepPoint { label, values, instances });
    }
    Ok(Sweep { name: s.name.clone(), points: out })
}

/// A TOML value as text (`0.001`, `[1e-05, 0.0001]`, `"resnet18"`).
fn value_text(v: &Spanned<DeValue>) -> String {
    use serde::Deserialize;
    toml::Value::deserialize(toml::de::ValueDeserializer::from(v.clone())).map(|v| v.to_string()).unwrap_or_else(|_| "?".into())
}
