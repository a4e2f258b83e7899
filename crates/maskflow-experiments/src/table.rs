//! The runs table: rows filtered and sorted by a metric or param, with the params that differ
//! between them and the headline metrics; as text, CSV or JSON.

use crate::rows::Row;
use crate::Error;
use serde::Serialize;
use std::collections::BTreeSet;

/// `--filter 'eval.accuracy>=0.9'`: a metric (or param) compared with a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub name: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, Error> {
        // Two-character operators first.
        for (text, op) in [(">=", Op::Ge), ("<=", Op::Le), ("!=", Op::Ne), ("==", Op::Eq), (">", Op::Gt), ("<", Op::Lt), ("=", Op::Eq)] {
            if let Some((name, value)) = s.split_once(text) {
                let (name, value) = (name.trim(), value.trim());
                if name.is_empty() || value.is_empty() {
                    break;
                }
                return Ok(Filter { name: name.into(), op, value: value.into() });
            }
        }
        Err(Error::Usage(format!("--filter {s:?}: expected NAME OP VALUE with OP one of < <= > >= = != (e.g. eval.accuracy>=0.9)")))
    }

    /// Whether `row` passes; a row without the metric or param does not.
    fn keeps(&self, row: &Row) -> bool {
        let (num, text) = match row.metrics.get(&self.name) {
            Some(v) => (Some(*v), v.to_string()),
            None => match row.params.get(&self.name) {
                Some(t) => (t.parse::<f64>().ok(), t.trim_matches('"').to_string()),
                None => return false,
            },
        };
        let ord = match (num, self.value.parse::<f64>()) {
            (Some(a), Ok(b)) => a.partial_cmp(&b),
            _ => Some(text.as_str().cmp(self.value.trim_matches('"'))),
        };
        let Some(ord) = ord else { return false };
        match self.op {
            Op::Lt => ord.is_lt(),
            Op::Le => ord.is_le(),
            Op::Gt => ord.is_gt(),
            Op::Ge => ord.is_ge(),
            Op::Eq => ord.is_eq(),
            Op::Ne => ord.is_ne(),
        }
    }
}

/// How to choose and order the rows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filters: Vec<Filter>,
    /// A metric or param to sort by (rows without it last); else by time.
    pub sort: Option<String>,
    pub descending: bool,
    /// Keep the last `n` rows (after filtering and sorting).
    pub last: Option<usize>,
}

/// The rows `q` keeps, in its order. A filter or sort naming a column no row has is an error
/// listing the columns there are.
pub fn select(rows: Vec<Row>, q: &Query) -> Result<Vec<Row>, Error> {
    let known: BTreeSet<&str> = rows.iter().flat_map(|r| r.metrics.keys().chain(r.params.keys())).map(String::as_str).collect();
    let names = q.filters.iter().map(|f| f.name.as_str()).chain(q.sort.as_deref());
    for name in names {
        if !rows.is_empty() && !known.contains(name) {
            let metrics: BTreeSet<&str> = rows.iter().flat_map(|r| r.metrics.keys()).map(String::as_str).collect();
            return Err(Error::Usage(format!(
                "{name:?} is neither a metric nor a param of these runs (metrics: {}; params look like train.frozen_lr)",
                metrics.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut rows: Vec<Row> = rows.into_iter().filter(|r| q.filters.iter().all(|f| f.keeps(r))).collect();
    if let Some(key) = &q.sort {
        let value = |r: &Row| r.metrics.get(key).copied().or_else(|| r.params.get(key).and_then(|t| t.parse().ok()));
        rows.sort_by(|a, b| match (value(a), value(b)) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                if q.descending { o.reverse() } else { o }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    } else if q.descending {
        rows.reverse();
    }
    if let Some(n) = q.last {
        let skip = rows.len().saturating_sub(n);
        rows.drain(..skip);
    }
    Ok(rows)
}

/// The param leaves whose values are not all the same across `rows` (absent counts as a value).
pub fn differing_params(rows: &[Row]) -> Vec<String> {
    let all: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    all.into_iter()
        .filter(|k| {
            let mut vals = rows.iter().map(|r| r.params.get(*k));
            let first = vals.next().flatten();
            vals.any(|v| v != first)
        })
        .cloned()
        .collect()
}

/// The headline metrics of `rows`, in the order they first appear.
pub fn headline_metrics(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        for m in &r.headline {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    out
}

/// One row as the table shows it (also the JSON and CSV line).
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub id: String,
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    pub when: String,
    /// The commit (12 hex digits), `+dirty` when the checkout had changes; `?` when not recorded.
    pub commit: String,
    pub built: Vec<String>,
    pub cached: Vec<String>,
    /// The differing params' values (JSON text; empty when absent).
    pub params: Vec<(String, String)>,
    pub metrics: Vec<(String, Option<f64>)>,
    pub missing: Vec<String>,
}

impl Line {
    /// `train,eval,export +2 cached`, or `all cached`.
    pub fn built_text(&self) -> String {
        match (self.built.is_empty(), self.cached.len()) {
            (true, _) => "all cached".to_string(),
            (false, 0) => self.built.join(","),
            (false, n) => format!("{} +{n} cached", self.built.join(",")),
        }
    }
}

/// The table's lines: the differing params and headline metrics of `rows`.
pub fn lines(rows: &[Row]) -> Vec<Line> {
    let params = differing_params(rows);
    let metrics = headline_metrics(rows);
    rows.iter()
        .map(|r| Line {
            id: r.id.clone(),
            when: when(r.started_unix),
            commit: commit(r),
            built: r.stages.iter().filter(|s| !s.cached).map(|s| s.name.clone()).collect(),
            cached: r.stages.iter().filter(|s| s.cached).map(|s| s.name.clone()).collect(),
            params: params.iter().map(|p| (p.clone(), r.params.get(p).cloned().unwrap_or_default())).collect(),
            metrics: metrics.iter().map(|m| (m.clone(), r.metrics.get(m).copied())).collect(),
            missing: r.missing.clone(),
        })
        .collect()
}

fn commit(r: &Row) -> String {
    match &r.git {
        Some(g) => format!("{}{}", &g.commit[..g.commit.len().min(12)], if g.dirty { "+dirty" } else { "" }),
        None => "?".into(),
    }
}

/// `2026-12-07 15:01:02` (UTC).
pub fn when(unix: u64) -> String {
    let s = maskflow_core::runs::format_utc(unix);
    // YYYYMMDDTHHMMSSZ
    format!("{}-{}-{} {}:{}:{}", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15])
}

/// A metric as the table shows it: seconds to 0.1, others to 4 decimals; `—` when absent.
pub fn metric_text(name: &str, v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() >= 100.0 || name.ends_with("seconds") => format!("{v:.1}"),
        Some(v) => format!("{v:.4}"),
        None => "—".into(),
    }
}

fn param_text(v: &str) -> String {
    if v.is_empty() {
        "—".into()
    } else {
        v.trim_matches('"').to_string()
    }
}

/// The table as aligned text.
pub fn text(lines: &[Line]) -> String {
    let Some(first) = lines.first() else { return "no runs\n".into() };
    let mut header: Vec<String> = vec!["run".into(), "when (UTC)".into(), "commit".into(), "built".into()];
    header.extend(first.params.iter().map(|(p, _)| p.clone()));
    header.extend(first.metrics.iter().map(|(m, _)| m.clone()));
    let body: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let mut cells = vec![l.id.clone(), l.when.clone(), l.commit.clone(), l.built_text()];
            cells.extend(l.params.iter().map(|(_, v)| param_text(v)));
            cells.extend(l.metrics.iter().map(|(m, v)| metric_text(m, *v)));
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..header.len()).map(|c| std::iter::once(&header[c]).chain(body.iter().map(|r| &r[c])).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let fmt = |cells: &[String]| -> String {
        let mut s = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = fmt(&header);
    for r in &body {
        out.push_str(&fmt(r));
    }
    let missing: Vec<String> = lines.iter().filter(|l| !l.missing.is_empty()).map(|l| format!("{} ({})", l.id, l.missing.join(", "))).collect();
    if !missing.is_empty() {
        out.push_str(&format!("artifacts no longer in the store (figures missing): {}\n", missing.join("; ")));
    }
    out
}

/// The table as CSV (RFC 4180 quoting).
pub fn csv(lines: &[Line]) -> String {
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let Some(first) = lines.first() else { return "run,when,commit,built,cached\n".into() };
    let mut header: Vec<String> = ["run", "when", "commit", "built", "cached"].map(String::from).to_vec();
    header.extend(first.params.iter().map(|(p, _)| p.clone()));
    header.extend(first.metrics.iter().map(|(m, _)| m.clone()));
    let mut out = header.iter().map(|h| quote(h)).collect::<Vec<_>>().join(",") + "\n";
    for l in lines {
        let mut cells = vec![l.id.clone(), l.when.clone(), l.commit.clone(), l.built.join(" "), l.cached.join(" ")];
        cells.extend(l.params.iter().map(|(_, v)| v.trim_matches('"').to_string()));
        cells.extend(l.metrics.iter().map(|(_, v)| v.map(|v| v.to_string()).unwrap_or_default()));
        out.push_str(&(cells.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n"));
    }
    out
}
