//! The runner's side of a shared store: the local `artifacts/` folder becomes a read-through
//! cache of it. For each stage instance, in order:
//!
//! 1. valid here → used (and published if the shared store lacks it);
//! 2. published there → downloaded, every blob checked, installed here ("pulled");
//!    a corrupt copy there → rebuilt here and republished over it, and said so;
//! 3. another machine holds a live lease on the key → wait for its manifest (or for the lease to
//!    lapse, then take it over);
//! 4. otherwise take the lease, build (resuming from a checkpoint in the shared store if a
//!    preempted machine left one; the checkpoint is mirrored while the build runs), publish
//!    blobs then the manifest, release the lease.

use crate::events::{Event, Events};
use anyhow::{bail, Context, Result};
use maskflow_core::store::{Outcome, StageSpec, Store, MANIFEST};
use maskflow_remote::{Lease, LeaseAttempt, Published, Remote, RemoteError, Transfer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A shared store as the runner uses it.
pub struct Shared<'a> {
    pub remote: &'a Remote,
    /// Never write (no publish, no leases, no checkpoints): for a store whose conditional writes
    /// do not work, or a machine that should only consume.
    pub read_only: bool,
    /// How long a lease lasts unless renewed (renewed every third of it while building).
    pub lease_ttl: Duration,
    /// What to do when the shared store's record of a key is of a newer format than this
    /// maskflow reads.
    pub on_newer: OnNewer,
    /// Where waits and warnings go.
    pub events: &'a dyn Events,
}

/// What to do about an artifact that a newer maskflow published (a major record format this one
/// does not know). Either way that record is never deleted, replaced or "repaired".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNewer {
    /// Build it here, keep it here, publish nothing over theirs (the default).
    #[default]
    BuildLocally,
    /// Stop with an error naming both versions (`--strict-versions`).
    Fail,
}

/// How an instance's artifact was obtained, beyond the local store's outcome.
#[derive(Debug, Default)]
pub struct Via {
    pub pulled: Option<Transfer>,
    pub published: Option<Published>,
    /// Things worth a line: a corrupt shared copy rebuilt, a wait for another machine, a resume.
    pub notes: Vec<String>,
}

/// Obtains `spec`'s artifact through the local store and the shared one (see the module doc).
pub fn obtain(
    store: &Store,
    sh: &Shared,
    spec: &StageSpec,
    force: bool,
    scratch: &Path,
    build: impl FnOnce(&Path) -> Result<Value>,
) -> Result<(Outcome, Via)> {
    let key = spec.key();
    let kind = spec.stage.as_str();
    let mut via = Via::default();
    let mut repair = false;
    if !force {
        if let Some(outcome) = store.lookup(kind, &key)? {
            if !sh.read_only {
                match publish_if_absent(sh.remote, &outcome.dir, kind, &key) {
                    Ok(p) => via.published = p,
                    Err(RemoteError::Newer { newer, .. }) => via.notes.push(format!("not published: the shared copy is {newer}")),
                    Err(e) => return Err(e).context(format!("publishing {kind} {key} to {}", sh.remote.url())),
                }
            }
            return Ok((outcome, via));
        }
        let mut lease = None;
        let mut local_only = false;
        loop {
            match sh.remote.manifest(kind, &key) {
                Ok(Some(rm)) => match install(store, sh.remote, kind, &key, &rm) {
                    Ok((outcome, t)) => {
                        via.pulled = Some(t);
                        return Ok((outcome, via));
                    }
                    Err(e) if e.is_corrupt_artifact() => {
                        via.notes.push(format!("the shared copy is unusable ({e}): rebuilt here and republished"));
                        repair = true;
                    }
                    Err(e) => return Err(e).context(format!("pulling {kind} {key} from {}", sh.remote.url())),
                },
                Ok(None) => {}
                Err(RemoteError::Newer { at, newer }) => {
                    if sh.on_newer == OnNewer::Fail {
                        bail!("{at}: {newer} (--strict-versions)");
                    }
                    via.notes.push(format!("the shared copy is {newer}: built here and not published over it"));
                    local_only = true;
                }
                Err(e) if e.is_corrupt_artifact() => {
                    via.notes.push(format!("{e}: rebuilt here and republished"));
                    repair = true;
                }
                Err(e) => return Err(e.into()),
            }
            if sh.read_only || repair || local_only {
                break;
            }
            match sh.remote.try_lease(kind, &key, sh.lease_ttl)? {
                LeaseAttempt::Acquired(l) => {
                    // Published between our look and our lease (its builder then released it)?
                    if matches!(sh.remote.manifest(kind, &key), Ok(Some(_))) {
                        let _ = l.release();
                        continue;
                    }
                    if let Some(old) = l.took_over.as_ref().filter(|o| !o.info.as_ref().is_some_and(|i| i.released)) {
                        via.notes.push(format!("took over the expired lease of {}", old.holder()));
                    }
                    lease = Some(l);
                    break;
                }
                LeaseAttempt::Held(seen) => {
                    sh.events.event(&Event::Waiting { kind, key: &key, holder: seen.holder(), left: seen.left() });
                    wait_for_manifest_or_lapse(sh, kind, &key);
                    via.notes.push(format!("waited for {}", seen.holder()));
                }
            }
        }
        let sh_here = Shared { read_only: sh.read_only || local_only, ..*sh };
        return build_and_publish(store, &sh_here, spec, false, scratch, lease, repair, build, via);
    }
    let lease = if sh.read_only {
        None
    } else {
        match sh.remote.try_lease(kind, &key, sh.lease_ttl)? {
            LeaseAttempt::Acquired(l) => Some(l),
            LeaseAttempt::Held(_) => None,
        }
    };
    build_and_publish(store, sh, spec, true, scratch, lease, false, build, via)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Polls until the key's manifest appears or its lease is gone or expired.
fn wait_for_manifest_or_lapse(sh: &Shared, kind: &str, key: &str) {
    let poll = (sh.lease_ttl / 10).clamp(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        std::thread::sleep(poll);
        if !matches!(sh.remote.manifest(kind, key), Ok(None)) {
            return;
        }
        match sh.remote.lease_info(kind, key) {
            Ok(Some(info)) if info.live() => {}
            _ => return,
        }
    }
}

fn install(store: &Store, remote: &Remote, kind: &str, key: &str, rm: &maskflow_remote::RemoteManifest) -> Result<(Outcome, Transfer), RemoteError> {
    let mut transfer = None;
    // A local failure (disk full, …) is an I/O error, never taken for a corrupt shared copy.
    let installed = store
        .install(kind, key, &rm.bytes, |tmp| remote.fetch(&rm.manifest, tmp).map(|t| transfer = Some(t)))
        .map_err(|e| RemoteError::Io { path: store.artifact_dir(kind, key), source: std::io::Error::other(e.to_string()) })?;
    let outcome = installed?;
    Ok((outcome, transfer.unwrap_or_default()))
}

/// Publishes a local artifact unless the shared store has it (a corrupt shared manifest is
/// replaced; one of a newer format is left alone: `Err(RemoteError::Newer)`).
fn publish_if_absent(remote: &Remote, dir: &Path, kind: &str, key: &str) -> Result<Option<Published>, RemoteError> {
    let repair = match remote.manifest(kind, key) {
        Ok(Some(_)) => return Ok(None),
        Ok(None) => false,
        Err(e @ RemoteError::Newer { .. }) => return Err(e),
        Err(e) if e.is_corrupt_artifact() => true,
        Err(e) => return Err(e),
    };
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|source| RemoteError::Io { path, source })?;
    remote.publish(dir, &bytes, repair).map(Some)
}

#[allow(clippy::too_many_arguments)]
fn build_and_publish(
    store: &Store,
    sh: &Shared,
    spec: &StageSpec,
    force: bool,
    scratch: &Path,
    lease: Option<Lease>,
    repair: bool,
    build: impl FnOnce(&Path) -> Result<Value>,
    mut via: Via,
) -> Result<(Outcome, Via)> {
    let kind = spec.stage.as_str();
    let key = spec.key();
    if lease.is_some() && !scratch.exists() {
        match sh.remote.pull_checkpoint(kind, &key, scratch) {
            Ok(Some(t)) => via.notes.push(format!("resuming from the checkpoint another machine left ({t})")),
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(scratch);
                via.notes.push(format!("the shared checkpoint is unusable ({e}); starting afresh"));
            }
        }
    }
    let stop = AtomicBool::new(false);
    let built = std::thread::scope(|s| {
        // Set on every way out, a panic in the build included: the helper threads end, so nothing
        // waits on them and no lease outlives the build (dropping it releases it).
        let _stop = crate::StopOnDrop(&stop);
        if let Some(l) = &lease {
            // Renewal has its own thread: a slow checkpoint upload never lets the lease lapse.
            s.spawn(|| renew_lease(sh, l, kind, &key, &stop));
            s.spawn(|| mirror_checkpoints(sh, kind, &key, scratch, &stop));
        }
        store.ensure(spec, force, build)
    });
    let outcome = match built {
        Ok(o) => o,
        Err(e) => {
            // The checkpoint stays in the shared store: another machine may resume from it.
            if let Some(l) = lease {
                let _ = l.release();
            }
            return Err(e.into());
        }
    };
    if !sh.read_only {
        let bytes = std::fs::read(outcome.dir.join(MANIFEST))?;
        let published = sh.remote.publish(&outcome.dir, &bytes, repair);
        if lease.is_some() {
            let _ = sh.remote.drop_checkpoint(kind, &key);
        }
        if let Some(l) = lease {
            let _ = l.release();
        }
        via.published = Some(published.with_context(|| format!("publishing {kind} {key} to {}", sh.remote.url()))?);
    }
    Ok((outcome, via))
}

/// While a build runs: renew the lease every third of its ttl.
fn renew_lease(sh: &Shared, lease: &Lease, kind: &str, key: &str, stop: &AtomicBool) {
    let renew_every = sh.lease_ttl / 3;
    let mut renewed = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if renewed.elapsed() < renew_every {
            continue;
        }
        match lease.renew() {
            Ok(true) => {}
            Ok(false) => {
                sh.events.event(&Event::Warning(format!("{kind:<7} lost the lease on {} to another machine; building on", short(key))));
                return;
            }
            Err(e) => sh.events.event(&Event::Warning(format!("{kind:<7} cannot renew the lease: {e}"))),
        }
        renewed = Instant::now();
    }
}

/// While a build runs: mirror the stage's scratch directory (its checkpoints) to the shared store
/// whenever it changes.
fn mirror_checkpoints(sh: &Shared, kind: &str, key: &str, scratch: &Path, stop: &AtomicBool) {
    let mut pushed: Vec<(PathBuf, u64, Option<SystemTime>)> = Vec::new();
    let mut last = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        // Mirror a new state once it has held still for a tick (a checkpoint is several files
        // written in a row; its temp files, dot-named, are never sent).
        let now = scratch_signature(scratch);
        if !now.is_empty() && now == last && now != pushed {
            match sh.remote.push_checkpoint(kind, key, scratch) {
                Ok(_) => maskflow_remote::failpoint("checkpoint-pushed"),
                Err(e) => sh.events.event(&Event::Warning(format!("{kind:<7} cannot mirror the checkpoint: {e}"))),
            }
            pushed = now.clone();
        }
        last = now;
    }
}

fn scratch_signature(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    maskflow_core::fsutil::list_files_recursive(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|rel| !maskflow_remote::is_hidden(rel))
        .filter_map(|rel| {
            let m = std::fs::metadata(dir.join(&rel)).ok()?;
            Some((rel, m.len(), m.modified().ok()))
        })
        .collect()
}

/// `maskflow push`: publishes every valid local artifact of `targets` (instance name, its spec)
/// that the shared store lacks.
pub fn push(store: &Store, remote: &Remote, targets: &[(&str, &StageSpec)]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (name, spec) in targets {
        let key = spec.key();
        let kind = spec.stage.as_str();
        let line = match store.verify(kind, &key) {
            Err(why) => format!("not here ({why}): nothing to push"),
            Ok(_) => match publish_if_absent(remote, &store.artifact_dir(kind, &key), kind, &key) {
                Ok(None) => "already in the shared store".to_string(),
                Ok(Some(p)) if p.created => format!("published: {}", p.transfer),
                Ok(Some(p)) => format!("already in the shared store (published meanwhile by another machine; blobs: {})", p.transfer),
                Err(RemoteError::Newer { newer, .. }) => format!("not pushed: the shared copy is {newer}"),
                Err(e) => return Err(e.into()),
            },
        };
        lines.push(format!("{name:<7} key {}  {line}", short(&key)));
    }
    Ok(lines)
}

/// `maskflow pull`: downloads every artifact of `targets` that is published and not here.
pub fn pull(store: &Store, remote: &Remote, targets: &[(&str, &StageSpec)]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut failed = 0;
    for (name, spec) in targets {
        let key = spec.key();
        let kind = spec.stage.as_str();
        let line = if store.verify(kind, &key).is_ok() {
            "here already".to_string()
        } else {
            match remote.manifest(kind, &key) {
                Ok(None) => "not in the shared store".to_string(),
                Ok(Some(rm)) => match install(store, remote, kind, &key, &rm) {
                    Ok((_, t)) => format!("pulled: {t}"),
                    Err(e) => {
                        failed += 1;
                        format!("NOT pulled: {e}")
                    }
                },
                Err(e) => {
                    failed += 1;
                    format!("NOT pulled: {e}")
                }
            }
        };
        lines.push(format!("{name:<7} key {}  {line}", short(&key)));
    }
    if failed > 0 {
        bail!("{}\n{failed} artifact(s) could not be pulled (corrupt or unreadable in {}); `maskflow run` rebuilds them", lines.join("\n"), remote.url());
    }
    Ok(lines)
}

/// The shared store's side of `status`: present, absent, unusable, or being built (by whom).
pub fn remote_state(remote: &Remote, kind: &str, key: &str) -> String {
    match remote.manifest(kind, key) {
        Ok(Some(_)) => "shared".into(),
        Err(e) if e.is_corrupt_artifact() => format!("shared copy unusable ({e})"),
        Err(e) => format!("shared store unreachable ({e})"),
        Ok(None) => match remote.lease_info(kind, key) {
            Ok(Some(i)) if i.live() => format!("being built by {}", i.holder()),
            _ => "not shared".into(),
        },
    }
}
