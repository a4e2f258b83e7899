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
