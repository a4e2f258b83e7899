//! Runs as rows: one per run record, or one per sweep point of a sweep's record; each with its
//! instances (named as in the pipeline file: a sweep point's `train.lr-2` is its `train`), their
//! params, keys and report figures.

use crate::Error;
use maskflow_core::runs::{GitState, RunRecord, StageRun};
use maskflow_core::store::Store;
use maskflow_pipeline::{Confusion, Curve, Registry};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One instance of a row.
#[derive(Debug, Clone, Serialize)]
pub struct RowStage {
    /// The pipeline file's name for it (`train`, `eval.street`).
    pub name: String,
    /// The name it ran under (`train.lr-2` in a sweep).
    pub instance: String,
    pub kind: String,
    pub key: String,
    pub dir: PathBuf,
    pub cached: bool,
    pub pulled: bool,
    /// Version, params and input keys: from the record, else from the artifact's manifest; `None`
    /// when neither has them (an old record whose artifact is gone).
    #[serde(skip)]
    pub version: Option<u32>,
    #[serde(skip)]
    pub params: Option<serde_json::Value>,
    #[serde(skip)]
    pub upstream: Option<BTreeMap<String, String>>,
    /// The artifact's report page, if it has one (`report.html`).
    pub report: Option<PathBuf>,
}

/// A run, or one point of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `demo/20261207T150102Z`, or `demo/20261207T150102Z/lr-2` for a sweep point.
    pub id: String,
    pub pipeline: String,
    pub started_unix: u64,
    pub git: Option<GitState>,
    /// `-S` overrides of the run (`None`: the record predates them).
    pub overrides: Option<Vec<String>>,
    /// The sweep point's swept values (path → TOML text).
    pub point: Option<Vec<(String, String)>>,
    pub stages: Vec<RowStage>,
    /// Param leaves by `instance.param` (`train.frozen_lr` → `0.003`, JSON text).
    pub params: BTreeMap<String, String>,
    /// Report figures by `instance.metric` (`eval.accuracy`).
    pub metrics: BTreeMap<String, f64>,
    /// The metrics the stages mark as headline, in display order.
    pub headline: Vec<String>,
    #[serde(skip)]
    pub curves: Vec<(String, Curve)>,
    #[serde(skip)]
    pub confusions: Vec<(String, Confusion)>,
    /// Artifacts the record names that are no longer in the store (their figures are missing).
    pub missing: Vec<String>,
}

impl Row {
    pub fn stage(&self, name: &str) -> Option<&RowStage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// The run records of `pipeline` (every pipeline if `None`) in `artifacts`, oldest first, with
/// their ids (`pipeline/stem`). A record that does not decode is an error naming its file.
pub fn records(artifacts: &Path, pipeline: Option<&str>) -> Result<Vec<(String, RunRecord)>, Error> {
    let runs = artifacts.join("runs");
    let pipelines: Vec<String> = match pipeline {
        Some(p) => vec![p.to_string()],
        None => match std::fs::read_dir(&runs) {
            Ok(it) => it.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::Io(runs, e)),
        },
    };
    let mut out = Vec::new();
    for p in pipelines {
        let dir = runs.join(&p);
        let entries = match std::fs::read_dir(&dir) {
            Ok(it) => it,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Io(dir, e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else { continue };
            if stem == "latest" || stem.starts_with('.') {
                continue;
            }
            let bytes = std::fs::read(e.path()).map_err(|err| Error::Io(e.path(), err))?;
            let record = RunRecord::decode(&bytes).map_err(|err| Error::Record(e.path(), err.to_string()))?;
            out.push((format!("{p}/{stem}"), record));
        }
    }
    out.sort_by(|a, b| a.1.started_unix.cmp(&b.1.started_unix).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// The rows of `records` (a sweep's record gives one row per point), figures read from the store.
pub fn rows(artifacts: &Path, reg: &Registry, records: &[(String, RunRecord)]) -> Vec<Row> {
    let store = Store::new(artifacts);
    let mut out = Vec::new();
    for (id, r) in records {
        match &r.sweep {
            None => {
                let stages = r.stages.iter().map(|s| (s.stage.clone(), s)).collect();
                out.push(row(&store, reg, id.clone(), r, None, stages));
            }
            Some(sweep) => {
                let clones: BTreeSet<&str> = sweep.points.iter().flat_map(|p| p.instances.values()).map(String::as_str).collect();
                for p in &sweep.points {
                    let by_clone: BTreeMap<&str, &str> = p.instances.iter().map(|(base, c)| (c.as_str(), base.as_str())).collect();
                    let stages = r
                        .stages
                        .iter()
                        .filter_map(|s| match by_clone.get(s.stage.as_str()) {
                            Some(base) => Some((base.to_string(), s)),
                            None if clones.contains(s.stage.as_str()) => None,
                            None => Some((s.stage.clone(), s)),
                        })
                        .collect();
                    out.push(row(&store, reg, format!("{id}/{}", p.label), r, Some(p.values.clone()), stages));
                }
            }
        }
    }
    out
}

fn row(store: &Store, reg: &Registry, id: String, r: &RunRecord, point: Option<Vec<(String, String)>>, stages: Vec<(String, &StageRun)>) -> Row {
    let mut row = Row {
        id,
        pipeline: r.pipeline.clone(),
        started_unix: r.started_unix,
        git: r.git.clone(),
        overrides: r.overrides.clone(),
        point,
        stages: Vec::new(),
        params: BTreeMap::new(),
        metrics: BTreeMap::new(),
        headline: Vec::new(),
        curves: Vec::new(),
        confusions: Vec::new(),
        missing: Vec::new(),
    };
    for (name, s) in stages {
        let manifest = store.read_manifest(&s.kind, &s.key);
        if manifest.is_none() {
            row.missing.push(name.clone());
        }
        let params = s.params.clone().or_else(|| manifest.as_ref().map(|m| m.params.clone()));
        if let Some(p) = &params {
            maskflow_pipeline::runner::flatten(&name, p, &mut row.params);
        }
        let report_page = s.dir.join("report.html");
        let stage = RowStage {
            name: name.clone(),
            instance: s.stage.clone(),
            kind: s.kind.clone(),
            key: s.key.clone(),
            dir: s.dir.clone(),
            cached: s.cached,
            pulled: s.pulled,
            version: s.version.or(manifest.as_ref().map(|m| m.stage_version)),
            params,
            upstream: s.upstream.clone().or_else(|| manifest.as_ref().map(|m| m.upstream.clone())),
            report: report_page.is_file().then_some(report_page),
        };
        if let Some(m) = manifest.as_ref().and_then(|m| reg.get(&s.kind).and_then(|st| st.metrics(&m.report))) {
            for sc in m.scalars {
                let metric = format!("{name}.{}", sc.name);
                if sc.headline {
                    row.headline.push(metric.clone());
                }
                row.metrics.insert(metric, sc.value);
            }
            row.curves.extend(m.curves.into_iter().map(|c| (name.clone(), c)));
            row.confusions.extend(m.confusion.map(|c| (name.clone(), c)));
        }
        row.stages.push(stage);
    }
    row
}

/// The row `query` names: an id, or a part of exactly one id (`150102Z/lr-2`); `latest` is the
/// newest row.
pub fn find<'r>(rows: &'r [Row], query: &str) -> Result<&'r Row, Error> {
    if query == "latest" {
        return rows.last().ok_or_else(|| Error::NoRun { query: query.into(), known: Vec::new() });
    }
    if let Some(r) = rows.iter().find(|r| r.id == query) {
        return Ok(r);
    }
    let hits: Vec<&Row> = rows.iter().filter(|r| r.id.contains(query)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NoRun { query: query.into(), known: rows.iter().rev().take(8).map(|r| r.id.clone()).collect() }),
        many => Err(Error::Ambiguous { query: query.into(), hits: many.iter().map(|r| r.id.clone()).collect() }),
    }
}
