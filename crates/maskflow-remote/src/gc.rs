//! Garbage collection of a shared store. Dry-run by default.
//!
//! **Roots** (what keeps a blob): every manifest; every intent of a publisher at work
//! ([`crate::guard`]); every checkpoint younger than the grace period; every task record of a plan
//! that is not abandoned. `--apply` takes the gc lock before it lists anything, so a publisher
//! either is seen (its intent) or waits for this gc to end: a blob it reuses is never swept under
//! it.
//!
//! **Policy for the rest** (ages by the store's clock, never this machine's):
//! - a blob no root names goes once it is older than the grace period;
//! - a plan is *abandoned* when its `plan.json` is older than `plan_ttl` and it was never
//!   committed (a commit removes its plan): its plan, task files and task records go; so do task
//!   files or records whose plan.json is missing once they are older than `plan_ttl` (a planner
//!   writes its task files before its plan.json);
//! - an intent older than `plan_ttl` was left by a publisher that died: it goes (a publish must
//!   finish within `plan_ttl`, default 7 days); leases and probes older than the grace period
//!   were left by processes that died: they go;
//! - with `keep_runs = Some(n)`: run records beyond each pipeline's newest `n` and older than the
//!   grace period go, and so do manifests that none of the kept run records names and that are
//!   older than the grace period.
//!
//! **Never**: a record this maskflow cannot read (a newer format, or corrupt) is never deleted, and
//! while there is one that could name blobs (a manifest, an intent, a task record) no blob is swept
//! at all, since it may name any of them. The report says so.

use crate::guard::{Intent, INTENT_FORMAT};
use crate::{Remote, RemoteError};
use maskflow_core::record::{Format, RecordError};
use maskflow_core::runs::RunRecord;
use maskflow_core::store::{FileEntry, Manifest};
use object_store::ObjectMeta;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing unreferenced younger than this is swept.
    pub grace: Duration,
    /// Keep only the artifacts named by each pipeline's newest N run records (plus young ones);
    /// `None` keeps every manifest and run record.
    pub keep_runs: Option<usize>,
    /// A plan never committed for this long is abandoned; an intent this old, too.
    pub plan_ttl: Duration,
    /// Delete; otherwise only report what would go.
    pub apply: bool,
}

/// One object swept (or that would be), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Swept {
    pub rel: String,
    pub why: &'static str,
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
    /// Objects other than blobs and manifests swept: plans, task files and records, run records,
    /// intents, leases, probes, checkpoints — each with its reason.
    pub other_swept: Vec<Swept>,
    /// Records this maskflow cannot read (newer or corrupt): kept, and no blob swept while they
    /// are there.
    pub unreadable: Vec<String>,
    /// Unreferenced old blobs not swept because of `unreadable`.
    pub blobs_held: usize,
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
        let mut by_why: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.other_swept {
            *by_why.entry(s.why).or_default() += 1;
        }
        for (why, n) in by_why {
            writeln!(f, "{n} object(s) {verb}: {why}")?;
        }
        for m in &self.unreadable {
            writeln!(f, "kept, unreadable here: {m}")?;
        }
        if self.blobs_held > 0 {
            writeln!(f, "{} old unreferenced blob(s) kept: a record above may name them", self.blobs_held)?;
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
    Run { pipeline: String },
    Lease,
    Intent,
    Plan { plan: String },
    PlanPart { plan: String, done: bool },
    Probe,
    Other,
}

fn classify(rel: &str) -> Object {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["cas", h] => Object::Blob(h.to_string()),
        ["checkpoints", _, _] => Object::Checkpoint,
        ["plans", k, key, "plan.json"] => Object::Plan { plan: format!("plans/{k}/{key}") },
        ["plans", k, key, f] => Object::PlanPart { plan: format!("plans/{k}/{key}"), done: f.starts_with("done-") },
        ["plans", k, key, _, _] => Object::PlanPart { plan: format!("plans/{k}/{key}"), done: false },
        ["runs", p, _] => Object::Run { pipeline: p.to_string() },
        ["leases", ..] => Object::Lease,
        ["intents", _] => Object::Intent,
        ["probes", _] => Object::Probe,
        [kind, key, m] if *m == maskflow_core::store::MANIFEST => Object::Manifest { kind: kind.to_string(), key: key.to_string() },
        _ => Object::Other,
    }
}

/// A task record or checkpoint index: any record that names blobs by a `files` list.
#[derive(Deserialize)]
struct FileList {
    files: Vec<FileEntry>,
}

/// Records that name blobs (task records, checkpoint indexes): format 2 (with `format` and
/// `tool_version`); format 0 had neither and is still read.
const FILE_LIST_FORMAT: Format = Format::new("record naming blobs", 2).reading_back_to(0);

impl Remote {
    /// Marks and sweeps (or reports) what no root references: see the module doc.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, RemoteError> {
        // The lock comes before the listing (that order is what protects a publisher).
        let _lock = if opts.apply { Some(self.lock_for_gc()?) } else { None };
        let now = self.store_now()?;
        let listed = self.list_all()?;
        let age = |m: &ObjectMeta| now.since(&crate::guard::chrono_like::Stamp::of(m));
        let old = |m: &ObjectMeta| age(m) >= opts.grace;

        let mut blobs: Vec<(String, ObjectMeta)> = Vec::new();
        let mut manifests: Vec<(String, String, ObjectMeta)> = Vec::new();
        let mut runs: BTreeMap<String, Vec<(String, ObjectMeta)>> = BTreeMap::new();
        let mut plans: BTreeMap<String, ObjectMeta> = BTreeMap::new();
        let mut plan_parts: Vec<(String, String, bool, ObjectMeta)> = Vec::new();
        // Records that name blobs while they are live.
        let mut naming: Vec<String> = Vec::new();
        let mut report = GcReport { applied: opts.apply, ..Default::default() };
        let sweep = |report: &mut GcReport, rel: &str, why: &'static str| report.other_swept.push(Swept { rel: rel.to_string(), why });
        for (rel, m) in listed {
            match classify(&rel) {
                Object::Blob(h) => blobs.push((h, m)),
                Object::Manifest { kind, key } => manifests.push((kind, key, m)),
                Object::Run { pipeline } => runs.entry(pipeline).or_default().push((rel, m)),
                Object::Plan { plan } => {
                    plans.insert(plan, m);
                }
                Object::PlanPart { plan, done } => plan_parts.push((rel, plan, done, m)),
                Object::Checkpoint if old(&m) => sweep(&mut report, &rel, "checkpoint not updated within the grace period"),
                Object::Checkpoint => naming.push(rel),
                Object::Intent if age(&m) >= opts.plan_ttl => sweep(&mut report, &rel, "intent of a publisher that did not finish within the plan ttl"),
                Object::Intent => naming.push(rel),
                Object::Lease if old(&m) => sweep(&mut report, &rel, "lease not renewed within the grace period"),
                Object::Probe if old(&m) => sweep(&mut report, &rel, "probe left by a process that died"),
                _ => {}
            }
        }
        for (rel, plan, done, m) in &plan_parts {
            match plans.get(plan) {
                Some(pm) if age(pm) >= opts.plan_ttl => sweep(&mut report, rel, "part of an abandoned plan (never committed within the plan ttl)"),
                // A planner writes its task files before its plan.json: only a plan ttl makes them orphans.
                None if age(m) >= opts.plan_ttl => sweep(&mut report, rel, "part of a plan that never got its plan.json within the plan ttl"),
                _ if *done => naming.push(rel.clone()),
                _ => {}
            }
        }
        for (plan, pm) in &plans {
            if age(pm) >= opts.plan_ttl {
                sweep(&mut report, &format!("{plan}/plan.json"), "abandoned plan (never committed within the plan ttl)");
            }
        }

        // Manifests kept by run records.
        let mut manifest_sweeping = opts.keep_runs.is_some();
        let mut kept_keys: BTreeSet<(String, String)> = BTreeSet::new();
        if let Some(n) = opts.keep_runs {
            for recs in runs.values_mut() {
                recs.sort_by(|a, b| b.1.last_modified.cmp(&a.1.last_modified).then_with(|| b.0.cmp(&a.0)));
                for (i, (rel, meta)) in recs.iter().enumerate() {
                    if i >= n {
                        if old(meta) {
                            sweep(&mut report, rel, "run record beyond the newest --keep-runs");
                        }
                        continue;
                    }
                    let Some(bytes) = self.get_optional(rel)? else { continue };
                    match RunRecord::decode(&bytes) {
                        // Records of before stage kinds were recorded name instances only: which
                        // manifests they keep cannot be told, so none is swept.
                        Ok(rec) if rec.stages.iter().any(|s| s.kind.is_empty()) => {
                            report.unreadable.push(format!("{rel} (an old run record without stage kinds)"));
                            manifest_sweeping = false;
                        }
                        Ok(rec) => kept_keys.extend(rec.stages.into_iter().map(|s| (s.kind, s.key))),
                        Err(e) => {
                            // It may name any manifest: none is swept.
                            report.unreadable.push(format!("{rel} ({e})"));
                            manifest_sweeping = false;
                        }
                    }
                }
            }
        }

        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut blobs_frozen = false;
        report.manifests = manifests.len();
        let mut swept_manifests = Vec::new();
        for (kind, key, meta) in &manifests {
            let rel = format!("{kind}/{key}/{}", maskflow_core::store::MANIFEST);
            let decoded = self.get_optional(&rel)?.map(|b| Manifest::decode(&b));
            let readable = matches!(decoded, Some(Ok(_)));
            if manifest_sweeping && readable && old(meta) && !kept_keys.contains(&(kind.clone(), key.clone())) {
                report.manifests_swept.push(format!("{kind}/{key}"));
                swept_manifests.push(rel);
                continue;
            }
            match decoded {
                Some(Ok(m)) => live.extend(m.files.into_iter().map(|f| f.blake3)),
                Some(Err(e)) => {
                    report.unreadable.push(format!("{kind}/{key} ({e})"));
                    blobs_frozen = true;
                }
                None => {}
            }
        }
        for rel in &naming {
            let Some(b) = self.get_optional(rel)? else { continue };
            let files = if rel.starts_with("intents/") {
                INTENT_FORMAT.decode::<Intent>(&b).map(|i| i.files)
            } else {
                FILE_LIST_FORMAT.decode::<FileList>(&b).map(|l| l.files)
            };
            match files {
                Ok(files) => live.extend(files.into_iter().map(|f| f.blake3)),
                Err(e @ (RecordError::Newer(_) | RecordError::Corrupt { .. })) => {
                    report.unreadable.push(format!("{rel} ({e})"));
                    blobs_frozen = true;
                }
            }
        }
        report.blobs = blobs.len();
        let mut swept_blobs = Vec::new();
        for (h, meta) in &blobs {
            if live.contains(h) {
                report.blobs_live += 1;
            } else if !old(meta) {
                report.blobs_young += 1;
            } else if blobs_frozen {
                report.blobs_held += 1;
            } else {
                report.blobs_swept += 1;
                report.bytes_swept += meta.size;
                swept_blobs.push(crate::blobs::blob_rel(h));
            }
        }
        if opts.apply {
            for rel in swept_manifests.iter().chain(&swept_blobs).chain(report.other_swept.iter().map(|s| &s.rel)) {
                self.delete(rel)?;
            }
        }
        Ok(report)
    }
}
