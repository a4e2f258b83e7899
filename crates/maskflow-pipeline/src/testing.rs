//! Checks every stage crate runs on its own kind: the key covers every parameter.

use crate::{DynStage, Placement, Stage};
use maskflow_core::store::StageSpec;
use serde_json::Value;
use std::collections::BTreeMap;

/// Every leaf of `v` with its path.
fn leaves(prefix: &mut Vec<String>, v: &Value, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(k.clone());
                leaves(prefix, x, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

fn get_mut<'v>(v: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(v, |v, k| &mut v[k.as_str()])
}

/// Values to try instead of `v`: another number, the other boolean, another variant (read from
/// serde's "expected one of" message), another string, an array changed in its first element.
fn candidates(stage: &dyn DynStage, base: &Value, path: &[String]) -> Vec<Value> {
    let cur = path.iter().fold(base, |v, k| &v[k.as_str()]).clone();
    let mut out: Vec<Value> = match &cur {
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let mut c = vec![serde_json::json!(n.as_u64().map(|u| u + 1)), serde_json::json!(f * 0.5), serde_json::json!(f + 0.25)];
            if let Some(u) = n.as_u64() {
                c.push(serde_json::json!(u.saturating_sub(1)));
            }
            c
        }
        Value::String(s) => vec![Value::String(format!("{s}x"))],
        Value::Array(a) if !a.is_empty() => {
            let mut c: Vec<Value> = candidates_for(&a[0])
                .into_iter()
                .map(|x| {
                    let mut b = a.clone();
                    b[0] = x;
                    Value::Array(b)
                })
                .collect();
            // A list of enum names (or anything whose first item has no accepted change): one item fewer.
            c.push(Value::Array(a[..a.len() - 1].to_vec()));
            c
        }
        Value::Null => vec![serde_json::json!(1), serde_json::json!(0.5), serde_json::json!("x"), serde_json::json!(true)],
        _ => vec![],
    };
    // Enum strings: ask serde which variants exist.
    let mut probe = base.clone();
    *get_mut(&mut probe, path) = Value::String("\u{1}not-a-variant".into());
    if let Err(e) = stage.parse_value(probe) {
        // "unknown variant `x`, expected one of `a`, `b`" / "expected `a` or `b`": every quoted name
        // after "expected".
        if let Some(list) = e.split("expected").nth(1) {
            out.extend(list.split('`').skip(1).step_by(2).map(|v| Value::String(v.to_string())));
        }
    }
    out
}

fn candidates_for(v: &Value) -> Vec<Value> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => vec![serde_json::json!(u.saturating_sub(1)), serde_json::json!(u + 1)],
            None => vec![serde_json::json!(n.as_f64().unwrap_or(0.0) * 0.5 + 0.125)],
        },
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::String(s) => vec![Value::String(format!("{s}x"))],
        _ => vec![],
    }
}

/// For every parameter of `S` (each leaf of its default params, placed both ways), a changed value
/// that the params accept changes the key. Panics naming the field otherwise, or when no accepted
/// change could be found for a field.
pub fn assert_key_covers_every_param<S: Stage>() {
    let stage: Box<dyn DynStage> = Box::new(crate::Erased::<S>(std::marker::PhantomData));
    for own_data in [false, true] {
        let mut base = stage.default_params();
        stage.place(&mut base, Placement { own_data }).unwrap_or_else(|e| panic!("{}: {e}", S::KIND));
        let key = |p: &Value| StageSpec::new(S::KIND, S::VERSION, p, BTreeMap::new()).map(|s| s.key()).unwrap_or_default();
        let base_key = key(&base);
        let mut paths = Vec::new();
        leaves(&mut Vec::new(), &base, &mut paths);
        assert!(!paths.is_empty(), "{}: no params", S::KIND);
        for path in paths {
            let mut changed_key = None;
            for c in candidates(stage.as_ref(), &base, &path) {
                let mut p = base.clone();
                *get_mut(&mut p, &path) = c;
                let Ok(parsed) = stage.parse_value(p) else { continue };
                if parsed == base {
                    continue;
                }
                changed_key = Some(key(&parsed));
                break;
            }
            let name = path.join(".");
            let k = changed_key.unwrap_or_else(|| panic!("{}.{name}: found no other value the params accept", S::KIND));
            assert_ne!(k, base_key, "{}.{name}: changing it does not change the key", S::KIND);
        }
    }
}

/// Key coverage through the runner's real planning ([`crate::runner::plan`]), for every instance of
/// `graph` — so an upstream or an outside input missing from a key shows, not only a param:
///
/// - each instance's key is computed over exactly its inputs' keys and its outside inputs' keys
///   (the dataset, weights, an overrides file), each equal to what it names;
/// - changing any param of any instance (to a value its kind accepts) changes its key and the key
///   of every instance downstream of it;
/// - changing one byte of `dataset_file` (a file in the graph's dataset) changes the key of every
///   instance reading the dataset and of everything downstream.
///
/// `alternatives` are values to try first for a param (`("train", "pretrained", "none")`), for
/// params whose generic changes do not plan (a weights name that does not exist). Panics naming the
/// instance and the param otherwise. Returns how many param changes it checked, and the params
/// for which no change could be planned here (`[review] pretrained`: one set of weights is
/// importable offline), whose outside input is then checked only as above.
pub fn assert_planning_covers(
    graph: &crate::graph::Graph,
    reg: &crate::Registry,
    rt: &crate::Runtime,
    dataset_file: &std::path::Path,
    alternatives: &[(&str, &str, Value)],
) -> (usize, Vec<String>) {
    use crate::events::Silent;
    use crate::runner::plan;
    let try_keys = |g: &crate::graph::Graph| -> Option<BTreeMap<String, String>> {
        plan(g, reg, rt, None, &Silent).ok().map(|ps| ps.iter().map(|p| (p.node.name.clone(), p.key())).collect())
    };
    let keys = |g: &crate::graph::Graph| -> BTreeMap<String, String> {
        plan(g, reg, rt, None, &Silent).unwrap_or_else(|e| panic!("planning: {e:#}")).iter().map(|p| (p.node.name.clone(), p.key())).collect()
    };
    // Who is downstream of whom (transitively).
    let downstream = |name: &str| -> Vec<String> {
        let mut out: Vec<String> = vec![name.to_string()];
        loop {
            let more: Vec<String> = graph
                .nodes
                .iter()
                .filter(|n| !out.contains(&n.name) && n.inputs.values().any(|src| out.contains(src)))
                .map(|n| n.name.clone())
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    };
    let planned = plan(graph, reg, rt, None, &Silent).unwrap_or_else(|e| panic!("planning: {e:#}"));
    let base = keys(graph);
    for p in &planned {
        let mut expect: BTreeMap<String, String> = p.externals.iter().map(|(k, e)| (k.clone(), e.key.clone())).collect();
        for (slot, src) in &p.node.inputs {
            assert!(expect.insert(slot.clone(), base[src].clone()).is_none(), "[{}]: {slot} is both an input and an outside input", p.node.name);
        }
        assert_eq!(p.spec.upstream, expect, "[{}]: its key is not computed over exactly its inputs and outside inputs", p.node.name);
        if p.node.dataset.is_some() {
            assert!(p.spec.upstream.contains_key(crate::runner::DATASET), "[{}] reads the dataset but its key does not cover it", p.node.name);
        }
    }
    let mut tried = 0;
    let mut unplannable = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let stage = reg.get(node.kind).unwrap_or_else(|| panic!("kind {} is not registered", node.kind));
        let mut paths = Vec::new();
        leaves(&mut Vec::new(), &node.params, &mut paths);
        for path in paths {
            let name = format!("[{}] {}", node.name, path.join("."));
            let dotted = path.join(".");
            let first: Vec<Value> = alternatives.iter().filter(|(n, p, _)| *n == node.name && *p == dotted).map(|a| a.2.clone()).collect();
            let mut accepted = false;
            let mut changed = None;
            for c in first.into_iter().chain(candidates(stage, &node.params, &path)) {
                let mut p = node.params.clone();
                *get_mut(&mut p, &path) = c;
                let Ok(parsed) = stage.parse_value(p) else { continue };
                if parsed == node.params {
                    continue;
                }
                accepted = true;
                if stage.validate(&parsed).is_err() {
                    continue;
                }
                let mut g = graph.clone();
                g.nodes[i].params = parsed;
                if let Some(now) = try_keys(&g) {
                    changed = Some(now);
                    break;
                }
            }
            assert!(accepted, "{name}: found no other value the params accept");
            let Some(now) = changed else {
                unplannable.push(name);
                continue;
            };
            for d in downstream(&node.name) {
                assert_ne!(now[&d], base[&d], "{name}: changing it does not change the key of [{d}]");
            }
            tried += 1;
        }
    }
    let original = std::fs::read(dataset_file).unwrap_or_else(|e| panic!("{}: {e}", dataset_file.display()));
    let mut changed = original.clone();
    changed.push(0);
    std::fs::write(dataset_file, &changed).unwrap();
    let now = keys(graph);
    std::fs::write(dataset_file, &original).unwrap();
    for n in graph.nodes.iter().filter(|n| n.dataset.is_some()) {
        for d in downstream(&n.name) {
            assert_ne!(now[&d], base[&d], "a changed dataset file does not change the key of [{d}]");
        }
    }
    (tried, unplannable)
}
