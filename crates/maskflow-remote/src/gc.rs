//! Garbage collection of a shared store: mark the blobs that manifests (and live checkpoints and
//! task records of plans)
//! name, sweep the others — only once they are older than a grace period, so a build that is
//! uploading blobs for a manifest it has not written yet never loses them. Dry-run by default.
//!
//! With `keep_runs = Some(n)`, manifests themselves are collected too: those named by the newest
//! `n` run records of each pipeline, or younger than the grace period, are kept; the rest go.

use crate::{Remote, RemoteError};
use maskflow_core::runs::RunRecord;
use maskflow_core::store::Manifest;
use object_store::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing younger than this is swept.
    pub grace: Duration,
    /// Keep only the artifacts named by each pipeline's newest N run records (plus young ones);
    /// `None` keeps every manifest and sweeps unreferenced blobs only.
    pub keep_runs: Option<usize>,
    /// Delete; otherwise only report what would go.
    pub apply: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub manifests: usize,
    /// `kind/key` of manifests swept (or that would be).
    pub manifests_swept: Vec<String>,
    pub blobs: usize,
    pub blobs_live: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_young: usize,
    pub blobs_swept: usize,
    pub bytes_swept: u64,
    pub other_swept: usize,
    /// Manifests that do not parse: kept, reported.
    pub unreadable: Vec<String>,
    pub applied: bool,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.applied { "swept" } else { "would sweep" };
        writeln!(
            f,
            "{} manifests ({} {verb}); {} blobs: {} referenced, {} unreferenced but within the grace period, {} {verb} ({:.1} MB)",
            self.manifests,
            self.manifests_swept.len(),
            self.blobs,
            self.blobs_live,
            self.blobs_young,
            self.blobs_swept,
            self.bytes_swept as f64 / 1e6
        )?;
        if self.other_swept > 0 {
            writeln!(f, "{} stale probe/lease/checkpoint/task objects {verb}", self.other_swept)?;
        }
        for m in &self.unreadable {
            writeln!(f, "unreadable manifest kept: {m}")?;
        }
        if !self.applied {
            write!(f, "dry run: nothing deleted (--apply deletes)")?;
        }
        Ok(())
    }
}

enum Object {
    Blob(String),
    Manifest { kind: String, key: String },
    Checkpoint,
    Run,
    Lease,
    /// A finished task's record in a plan (`plans/<kind>/<key>/done-<i>.json`): names its blobs.
    TaskDone,
    Probe,
    Other,
}

fn classify(rel: &str) -> Object {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["cas", h] => Object::Blob(h.to_string()),
        ["checkpoints", _, _] => Object::Checkpoint,
        ["plans", _, _, f] if f.starts_with("done-") => Object::TaskDone,
        ["runs", ..] => Object::Run,
        ["leases", ..] => Object::Lease,
        ["probes", _] => Object::Probe,
        [kind, key, m] if *m == maskflow_core::store::MANIFEST => Object::Manifest { kind: kind.to_string(), key: key.to_string() },
        _ => Object::Other,
    }
}

impl Remote {
    /// Lists the store once, marks, and sweeps (or reports) what no root references.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, RemoteError> {
        let listed = self.list_all()?;
        let now = crate::now_unix() as i64;
        let old = |m: &ObjectMeta| now - m.last_modified.timestamp() >= opts.grace.as_secs() as i64;

        let mut blobs: Vec<(String, ObjectMeta)> = Vec::new();
        let mut manifests: Vec<(String, String, ObjectMeta)> = Vec::new();
        // Records that name blobs by a `files` list: checkpoints and finished tasks of plans.
        let mut file_lists: Vec<(String, ObjectMeta)> = Vec::new();
        let mut runs: Vec<(String, ObjectMeta)> = Vec::new();
        let mut stale_other: Vec<String> = Vec::new();
        for (rel, m) in listed {
            match classify(&rel) {
                Object::Blob(h) => blobs.push((h, m)),
                Object::Manifest { kind, key } => manifests.push((kind, key, m)),
                Object::Checkpoint | Object::TaskDone => file_lists.push((rel, m)),
                Object::Run => runs.push((rel, m)),
                Object::Probe if old(&m) => stale_other.push(rel),
                Object::Lease if old(&m) => {
                    // A lease not renewed for the whole grace period is long expired.
                    stale_other.push(rel)
                }
                _ => {}
            }
        }

        // Roots among the manifests.
        let kept_by_runs: Option<BTreeSet<(String, String)>> = match opts.keep_runs {
            None => None,
            Some(n) => Some(self.keys_in_recent_runs(&runs, n)?),
        };
        let mut report = GcReport { manifests: manifests.len(), blobs: blobs.len(), applied: opts.apply, ..Default::default() };
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut sweep: Vec<String> = Vec::new();
        for (kind, key, meta) in &manifests {
            let rel = format!("{kind}/{key}/{}", maskflow_core::store::MANIFEST);
            let keep = kept_by_runs.as_ref().is_none_or(|k| k.contains(&(kind.clone(), key.clone()))) || !old(meta);
            if !keep {
                report.manifests_swept.push(format!("{kind}/{key}"));
                sweep.push(rel);
                continue;
            }
            match self.get_optional(&rel)?.map(|b| serde_json::from_slice::<Manifest>(&b)) {
                Some(Ok(m)) => live.extend(m.files.into_iter().map(|f| f.blake3)),
                Some(Err(_)) => report.unreadable.push(format!("{kind}/{key}")),
                None => {}
            }
        }
        for (rel, meta) in &file_lists {
            if !old(meta) {
                if let Some(b) = self.get_optional(rel)? {
                    if let Ok(idx) = serde_json::from_slice::<crate::FileList>(&b) {
                        live.extend(idx.files.into_iter().map(|f| f.blake3));
                    }
                }
            } else {
                stale_other.push(rel.clone());
            }
        }
        for (h, meta) in &blobs {
            if live.contains(h) {
                report.blobs_live += 1;
            } else if !old(meta) {
                report.blobs_young += 1;
            } else {
                report.blobs_swept += 1;
                report.bytes_swept += meta.size;
                sweep.push(crate::blobs::blob_rel(h));
            }
        }
        report.other_swept = stale_other.len();
        sweep.extend(stale_other);
        if opts.apply {
            for rel in &sweep {
                self.delete(rel)?;
            }
        }
        Ok(report)
    }

    /// `(kind, key)` of every stage in the newest `n` run records of each pipeline.
    fn keys_in_recent_runs(&self, runs: &[(String, ObjectMeta)], n: usize) -> Result<BTreeSet<(String, String)>, RemoteError> {
        let mut by_pipeline: BTreeMap<String, Vec<&(String, ObjectMeta)>> = BTreeMap::new();
        for r in runs {
            let pipeline = r.0.split('/').nth(1).unwrap_or_default().to_string();
            by_pipeline.entry(pipeline).or_default().push(r);
        }
        let mut keys = BTreeSet::new();
        for (_, mut recs) in by_pipeline {
            recs.sort_by(|a, b| b.1.last_modified.cmp(&a.1.last_modified));
            for (rel, _) in recs.into_iter().take(n) {
                let Some(bytes) = self.get_optional(rel)? else { continue };
                let Ok(rec) = serde_json::from_slice::<RunRecord>(&bytes) else { continue };
                keys.extend(rec.stages.into_iter().map(|s| (s.kind, s.key)));
            }
        }
        Ok(keys)
    }
}
