//! Two rows compared, as `dvc params diff` and `dvc metrics diff` do, plus which instances made
//! different artifacts and why (which part of the key: version, a param, an input).

use crate::rows::{Row, RowStage};
use maskflow_pipeline::runner::{key_changes, KeyChange, KeyParts};
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    /// `(param, value in a, value in b)`, JSON text; `None`: absent there.
    pub params: Vec<(String, Option<String>, Option<String>)>,
    /// `(metric, a, b, b − a)`.
    pub metrics: Vec<(String, Option<f64>, Option<f64>, Option<f64>)>,
    pub stages: Vec<StageDiff>,
}

/// One instance (by its name in the file) in the two rows.
#[derive(Debug, Clone, Serialize)]
pub struct StageDiff {
    pub name: String,
    /// `same` (one artifact), `differs`, `only in a`, `only in b`.
    pub state: &'static str,
    /// Why the keys differ, e.g. `param train.frozen_lr 0.001 → 0.003`, `input model (from
    /// train) differs`, `dataset differs`.
    pub because: Vec<String>,
}

pub fn diff(a: &Row, b: &Row) -> Diff {
    let names: BTreeSet<&String> = a.params.keys().chain(b.params.keys()).collect();
    let params = names
        .into_iter()
        .filter_map(|k| {
            let (x, y) = (a.params.get(k), b.params.get(k));
            (x != y).then(|| (k.clone(), x.cloned(), y.cloned()))
        })
        .collect();
    let mut metric_names: Vec<&String> = a.metrics.keys().chain(b.metrics.keys()).collect();
    metric_names.sort();
    metric_names.dedup();
    let metrics = metric_names
        .into_iter()
        .map(|m| {
            let (x, y) = (a.metrics.get(m).copied(), b.metrics.get(m).copied());
            let d = x.zip(y).map(|(x, y)| y - x);
            (m.clone(), x, y, d)
        })
        .collect();
    let mut stages = Vec::new();
    let mut seen = BTreeSet::new();
    for s in a.stages.iter().chain(&b.stages) {
        if !seen.insert(s.name.clone()) {
            continue;
        }
        stages.push(match (a.stage(&s.name), b.stage(&s.name)) {
            (Some(x), Some(y)) if x.key == y.key => StageDiff { name: s.name.clone(), state: "same", because: Vec::new() },
            (Some(x), Some(y)) => StageDiff { name: s.name.clone(), state: "differs", because: why(x, y, a, b) },
            (Some(_), None) => StageDiff { name: s.name.clone(), state: "only in a", because: Vec::new() },
            (None, _) => StageDiff { name: s.name.clone(), state: "only in b", because: Vec::new() },
        });
    }
    Diff { a: a.id.clone(), b: b.id.clone(), params, metrics, stages }
}

/// The parts of two keys of one instance that differ.
fn why(x: &RowStage, y: &RowStage, a: &Row, b: &Row) -> Vec<String> {
    let (Some(xv), Some(yv), Some(xp), Some(yp), Some(xu), Some(yu)) = (x.version, y.version, &x.params, &y.params, &x.upstream, &y.upstream) else {
        return vec!["not recorded (an older run record whose artifact is gone)".into()];
    };
    let changes = key_changes(&x.name, KeyParts { version: xv, params: xp, upstream: xu }, KeyParts { version: yv, params: yp, upstream: yu });
    let mut out: Vec<String> = changes
        .into_iter()
        .map(|c| match c {
            KeyChange::Version { old, new } => format!("stage version {old} → {new}"),
            KeyChange::Param { name, old, new } => format!("param {name} {} → {}", show(old.as_deref()), show(new.as_deref())),
            KeyChange::Input { name, old, new } => {
                // An upstream instance's artifact: name it (by its name in the file).
                let from = |row: &Row, key: &Option<String>| row.stages.iter().find(|s| Some(&s.key) == key.as_ref()).map(|s| s.name.clone());
                match from(a, &old).or_else(|| from(b, &new)) {
                    Some(src) => format!("input {name} (from {src}) differs"),
                    None => format!("input {name} differs"),
                }
            }
        })
        .collect();
    if out.is_empty() {
        out.push(if x.kind != y.kind { format!("kind {} → {}", x.kind, y.kind) } else { "same parts, other key (a key format change)".into() });
    }
    out
}

fn show(v: Option<&str>) -> String {
    v.map(|s| s.trim_matches('"').to_string()).unwrap_or_else(|| "(absent)".into())
}

/// The diff as text.
pub fn text(d: &Diff) -> String {
    let mut s = format!("a  {}\nb  {}\n", d.a, d.b);
    s.push_str("\nparams\n");
    if d.params.is_empty() {
        s.push_str("  (the same)\n");
    }
    let w = d.params.iter().map(|p| p.0.len()).max().unwrap_or(0);
    for (k, x, y) in &d.params {
        s.push_str(&format!("  {k:<w$}  {} → {}\n", show(x.as_deref()), show(y.as_deref())));
    }
    s.push_str("\nmetrics\n");
    if d.metrics.is_empty() {
        s.push_str("  (none recorded)\n");
    }
    let w = d.metrics.iter().map(|m| m.0.len()).max().unwrap_or(0);
    let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into());
    for (k, x, y, delta) in &d.metrics {
        let delta = delta.map(|d| format!("  ({d:+.4})")).unwrap_or_default();
        s.push_str(&format!("  {k:<w$}  {} → {}{delta}\n", num(*x), num(*y)));
    }
    s.push_str("\nstages\n");
    let w = d.stages.iter().map(|st| st.name.len()).max().unwrap_or(0);
    for st in &d.stages {
        let state = if st.state == "same" { "same artifact".to_string() } else { st.state.to_string() };
        let because = if st.because.is_empty() { String::new() } else { format!(": {}", st.because.join("; ")) };
        s.push_str(&format!("  {:<w$}  {state}{because}\n", st.name));
    }
    s
}
