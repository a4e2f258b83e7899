//! Unit tests on object_store's in-memory backend (and the local filesystem one), with real
//! artifacts made by the local store. The same paths run against a real S3 server in the
//! binary's tests (tests/servers/shared_store.rs).

use super::*;
use maskflow_core::store::{StageSpec, Store};
use object_store::memory::InMemory;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

fn memory() -> Remote {
    Remote::with_store(Arc::new(InMemory::new()), "team/cache", "memory://team/cache")
}

/// A real local artifact: `a.bin` and `copy.bin` share their content (one blob), `sub/c.txt`.
fn artifact(root: &Path, p: i64) -> (PathBuf, Vec<u8>, Manifest) {
    let store = Store::new(root);
    let spec = StageSpec::new("demo", 1, &json!({ "p": p }), BTreeMap::new()).unwrap();
    let o = store
        .ensure(&spec, false, |dir| {
            fs::create_dir_all(dir.join("sub"))?;
            fs::write(dir.join("a.bin"), vec![7u8; 100_000])?;
            fs::write(dir.join("copy.bin"), vec![7u8; 100_000])?;
            fs::write(dir.join("sub/c.txt"), format!("p = {p}"))?;
            Ok(json!({ "p": p }))
        })
        .unwrap();
    let bytes = fs::read(o.dir.join(maskflow_core::store::MANIFEST)).unwrap();
    (o.dir, bytes, o.manifest)
}

fn same_tree(a: &Path, b: &Path) {
    for f in ["a.bin", "copy.bin", "sub/c.txt"] {
        assert_eq!(fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn publish_then_fetch_is_byte_identical_and_stores_shared_content_once() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 1);
    assert!(r.manifest("demo", &m.key).unwrap().is_none(), "nothing published yet");

    let p = r.publish(&dir, &bytes, false).unwrap();
    assert!(p.created);
    assert_eq!(p.transfer.blobs, 2, "a.bin and copy.bin are one blob");
    assert_eq!(p.transfer.bytes_moved, 100_000 + 5);

    let got = r.manifest("demo", &m.key).unwrap().unwrap();
    assert_eq!(got.bytes, bytes, "the stored manifest is the local one, byte for byte");
    let out = tempfile::tempdir().unwrap();
    let t = r.fetch(&got.manifest, out.path()).unwrap();
    assert_eq!(t.moved, 3);
    same_tree(&dir, out.path());

    // Republishing skips every blob; the manifest is already there.
    let again = r.publish(&dir, &bytes, false).unwrap();
    assert!(!again.created);
    assert_eq!((again.transfer.moved, again.transfer.bytes_skipped), (0, 100_005));
}

#[test]
fn concurrent_publishers_of_one_key_both_succeed_and_exactly_one_manifest_is_created() {
    let r = memory();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (dir1, bytes1, m) = artifact(d1.path(), 3);
    let (dir2, bytes2, _) = artifact(d2.path(), 3);
    let created: Vec<bool> = std::thread::scope(|s| {
        let a = s.spawn(|| r.publish(&dir1, &bytes1, false).unwrap().created);
        let b = s.spawn(|| r.publish(&dir2, &bytes2, false).unwrap().created);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    let stored = r.manifest("demo", &m.key).unwrap().unwrap().bytes;
    assert!(stored == bytes1 || stored == bytes2);
}

#[test]
fn a_corrupt_or_missing_blob_is_an_error_never_served_and_repair_fixes_it() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 4);
    r.publish(&dir, &bytes, false).unwrap();
    let a = m.files.iter().find(|f| f.path == "a.bin").unwrap();
    let c = m.files.iter().find(|f| f.path == "sub/c.txt").unwrap();

    // One flipped byte, same size.
    let mut flipped = vec![7u8; 100_000];
    flipped[500] ^= 1;
    r.damage(&format!("cas/{}", a.blake3), Some(flipped)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = r.fetch(&m, out.path()).unwrap_err();
    assert!(matches!(&err, RemoteError::BlobCorrupt { blake3, .. } if *blake3 == a.blake3), "{err}");
    assert!(err.is_corrupt_artifact());

    // A plain republish would skip the same-size blob; a repair rewrites it.
    r.publish(&dir, &bytes, true).unwrap();
    let out = tempfile::tempdir().unwrap();
    r.fetch(&m, out.path()).unwrap();
    same_tree(&dir, out.path());

    r.damage(&format!("cas/{}", c.blake3), None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = r.fetch(&m, out.path()).unwrap_err();
    assert!(matches!(&err, RemoteError::BlobMissing { file, .. } if file == "sub/c.txt"), "{err}");
    // Publishing again uploads the missing blob (its HEAD finds nothing).
    let p = r.publish(&dir, &bytes, false).unwrap();
    assert_eq!(p.transfer.moved, 1);
    r.fetch(&m, tempfile::tempdir().unwrap().path()).unwrap();
}

#[test]
fn unusable_manifests_are_errors_naming_the_object() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 5);
    r.damage(&format!("demo/{}/manifest.json", m.key), Some(b"{ torn".to_vec())).unwrap();
    let err = r.manifest("demo", &m.key).unwrap_err();
    assert!(err.to_string().contains(&format!("memory://team/cache/demo/{}/manifest.json", m.key)), "{err}");
    assert!(err.is_corrupt_artifact());

    // Someone else's manifest under this key.
    let (_, other, _) = artifact(tempfile::tempdir().unwrap().path(), 6);
    r.damage(&format!("demo/{}/manifest.json", m.key), Some(other)).unwrap();
    assert!(matches!(r.manifest("demo", &m.key), Err(RemoteError::BadManifest { .. })));

    // A repairing publish replaces it.
    r.publish(&dir, &bytes, true).unwrap();
    assert_eq!(r.manifest("demo", &m.key).unwrap().unwrap().bytes, bytes);

    // A file path that climbs out of the artifact is refused before anything is written.
    let mut evil = m.clone();
    evil.files[0].path = "../escape".into();
    let out = tempfile::tempdir().unwrap();
    let err = r.fetch(&evil, &out.path().join("a")).unwrap_err();
    assert!(err.to_string().contains("leaves the artifact"), "{err}");
    assert!(!out.path().join("escape").exists());
}

#[test]
fn a_lease_is_exclusive_until_it_expires_then_taken_over() {
    let r = memory();
    let ttl = Duration::from_secs(1);
    let LeaseAttempt::Acquired(a) = r.try_lease("train", "k1", ttl).unwrap() else { panic!("first lease") };
    assert!(a.took_over.is_none());
    let LeaseAttempt::Held(info) = r.try_lease("train", "k1", ttl).unwrap() else { panic!("must be held") };
    assert_eq!(info.holder(), a.info().holder);
    assert!(info.live() && info.left() <= ttl);
    assert!(a.renew().unwrap(), "the holder renews");
    // Other keys are independent.
    assert!(matches!(r.try_lease("train", "k2", ttl).unwrap(), LeaseAttempt::Acquired(_)));

    std::thread::sleep(Duration::from_millis(2100));
    let LeaseAttempt::Acquired(b) = r.try_lease("train", "k1", ttl).unwrap() else { panic!("expired: taken over") };
    assert_eq!(b.took_over.as_ref().map(|i| i.holder()), Some(a.info().holder));
    assert!(!a.renew().unwrap(), "the old holder learns it lost the lease");
    // Releasing a lost lease leaves the new holder's alone.
    a.release().unwrap();
    assert_eq!(r.lease_info("train", "k1").unwrap().map(|i| i.holder()), Some(b.info().holder));
    b.release().unwrap();
    assert!(!r.lease_info("train", "k1").unwrap().unwrap().live(), "released");
    // A released lease is free at once.
    let LeaseAttempt::Acquired(c) = r.try_lease("train", "k1", Duration::from_secs(60)).unwrap() else { panic!("released: free") };
    drop(c);
    assert!(!r.lease_info("train", "k1").unwrap().unwrap().live(), "dropping a lease releases it (a panicking build frees its key)");
}

#[test]
fn leases_work_on_a_shared_filesystem_without_conditional_replace() {
    let d = tempfile::tempdir().unwrap();
    let r = Remote::open(&format!("file://{}", d.path().join("shared").display())).unwrap();
    r.check_conditional_writes().unwrap();
    let ttl = Duration::from_secs(1);
    let LeaseAttempt::Acquired(a) = r.try_lease("prep", "k", ttl).unwrap() else { panic!() };
    assert!(matches!(r.try_lease("prep", "k", ttl).unwrap(), LeaseAttempt::Held(_)));
    assert!(a.renew().unwrap());
    std::thread::sleep(Duration::from_millis(2100));
    let LeaseAttempt::Acquired(b) = r.try_lease("prep", "k", ttl).unwrap() else { panic!() };
    assert!(b.took_over.is_some());
    assert!(!a.renew().unwrap());
}

#[test]
fn a_store_that_ignores_create_only_writes_is_refused() {
    assert!(memory().check_conditional_writes().is_ok());
    let lax = Remote::with_store(Arc::new(IgnoresConditions(InMemory::new())), "", "s3://lax");
    let err = lax.check_conditional_writes().unwrap_err();
    assert!(matches!(err, RemoteError::NoConditionalWrites { .. }));
    let msg = err.to_string();
    assert!(msg.contains("s3://lax") && msg.contains("If-None-Match") && msg.contains("--read-only"), "{msg}");
}

#[test]
fn checkpoints_round_trip_and_are_dropped() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("scratch");
    fs::create_dir_all(src.join("deep")).unwrap();
    fs::write(src.join("progress.json"), b"{\"epochs_done\": 2}").unwrap();
    fs::write(src.join("deep/tensors.bin"), vec![1u8; 4096]).unwrap();
    r.push_checkpoint("train", "k", &src).unwrap();
    let dst = d.path().join("elsewhere");
    let t = r.pull_checkpoint("train", "k", &dst).unwrap().unwrap();
    assert_eq!(t.moved, 2);
    assert_eq!(fs::read(dst.join("deep/tensors.bin")).unwrap(), vec![1u8; 4096]);
    assert_eq!(fs::read(dst.join("progress.json")).unwrap(), fs::read(src.join("progress.json")).unwrap());
    r.drop_checkpoint("train", "k").unwrap();
    assert!(r.pull_checkpoint("train", "k", &d.path().join("x")).unwrap().is_none());
}

#[test]
fn gc_sweeps_only_old_unreferenced_blobs_and_only_when_told() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 7);
    r.publish(&dir, &bytes, false).unwrap();
    // An orphan: blobs of a build that died before its manifest.
    let (dir2, bytes2, m2) = artifact(d.path(), 8);
    let m2: Manifest = serde_json::from_slice(&bytes2).unwrap_or(m2);
    crate::blobs::upload(&r, &dir2, &m2.files, false, false).unwrap();
    let orphan = m2.files.iter().find(|f| f.path == "sub/c.txt").unwrap().blake3.clone();

    let young = r.gc(&GcOptions { grace: Duration::from_secs(3600), keep_runs: None, plan_ttl: Duration::from_secs(3600), apply: true }).unwrap();
    assert_eq!((young.blobs, young.blobs_live, young.blobs_young, young.blobs_swept), (3, 2, 1, 0), "{young}");

    let dry = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: None, plan_ttl: Duration::from_secs(3600), apply: false }).unwrap();
    assert_eq!(dry.blobs_swept, 1, "{dry}");
    assert!(dry.to_string().contains("dry run"));
    assert!(r.get_optional(&format!("cas/{orphan}")).unwrap().is_some(), "a dry run deletes nothing");

    let done = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: None, plan_ttl: Duration::from_secs(3600), apply: true }).unwrap();
    assert_eq!((done.blobs_swept, done.bytes_swept), (1, 5));
    assert!(r.get_optional(&format!("cas/{orphan}")).unwrap().is_none());
    r.fetch(&m, tempfile::tempdir().unwrap().path()).unwrap();

    // keep_runs: a manifest no run record names goes, and its blobs with it.
    let after = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: Some(1), plan_ttl: Duration::from_secs(3600), apply: true }).unwrap();
    assert_eq!(after.manifests_swept, vec![format!("demo/{}", m.key)]);
    assert_eq!(after.blobs_swept, 2);
    assert!(r.manifest("demo", &m.key).unwrap().is_none());
}

#[test]
fn gc_keeps_what_recent_run_records_name() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 9);
    r.publish(&dir, &bytes, false).unwrap();
    let (dir2, bytes2, m2) = artifact(d.path(), 10);
    r.publish(&dir2, &bytes2, false).unwrap();
    let record = maskflow_core::runs::RunRecord {
        pipeline: "demo".into(),
        pipeline_file: "pipelines/demo.toml".into(),
        tool_version: "test".into(),
        started_unix: 0,
        duration_s: 0.0,
        dataset_fingerprint: String::new(),
        stages: vec![maskflow_core::runs::StageRun {
            stage: "demo".into(),
            kind: "demo".into(),
            key: m.key.clone(),
            dir: dir.clone(),
            cached: false,
            rebuilt_because: None,
            duration_s: 0.0,
            pulled: false,
            version: None,
            params: None,
            upstream: None,
        }],
        git: None,
        overrides: None,
        sweep: None,
    };
    r.put_run_record("demo", "r1", record.to_bytes()).unwrap();
    let g = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: Some(5), plan_ttl: Duration::from_secs(3600), apply: true }).unwrap();
    assert_eq!(g.manifests_swept, vec![format!("demo/{}", m2.key)], "{g}");
    assert!(r.manifest("demo", &m.key).unwrap().is_some());
    assert!(r.manifest("demo", &m2.key).unwrap().is_none());
}

/// A backend that treats every conditional write as a plain overwrite, like an S3 clone that
/// ignores `If-None-Match`.
#[derive(Debug)]
struct IgnoresConditions(InMemory);

impl std::fmt::Display for IgnoresConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresConditions")
    }
}

#[async_trait::async_trait]
impl ObjectStore for IgnoresConditions {
    async fn put_opts(&self, location: &OPath, payload: PutPayload, _opts: PutOptions) -> object_store::Result<object_store::PutResult> {
        self.0.put_opts(location, payload, PutOptions::default()).await
    }
    async fn put_multipart_opts(
        &self,
        location: &OPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &OPath, options: object_store::GetOptions) -> object_store::Result<object_store::GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<OPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<OPath>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&OPath>) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&OPath>) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &OPath, to: &OPath, options: object_store::CopyOptions) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

// ---- the versioned store protocol, leases, gc against publishers (issue 23) ----

fn with_field(bytes: &[u8], field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v[field] = value;
    serde_json::to_vec_pretty(&v).unwrap()
}

#[test]
fn a_manifest_with_a_field_this_maskflow_does_not_know_is_used_as_it_is() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 11);
    r.publish(&dir, &bytes, false).unwrap();
    let newer = with_field(&bytes, "provenance", json!({"gpu": "H100"}));
    r.damage(&format!("demo/{}/manifest.json", m.key), Some(newer.clone())).unwrap();
    let got = r.manifest("demo", &m.key).unwrap().expect("compatible: read");
    assert_eq!(got.bytes, newer, "kept byte for byte");
    // It installs into a local store (which verifies it) unchanged.
    let local = Store::new(d.path().join("elsewhere"));
    let o = local.install("demo", &m.key, &got.bytes, |tmp| r.fetch(&got.manifest, tmp).map(|_| ())).unwrap().unwrap();
    assert_eq!(fs::read(o.dir.join("manifest.json")).unwrap(), newer);
    assert!(local.verify("demo", &m.key).is_ok());
}

#[test]
fn a_manifest_of_a_newer_major_format_is_newer_never_corrupt() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 12);
    let newer = with_field(&with_field(&bytes, "format", json!(2)), "tool_version", json!("maskflow 9.0.0"));
    r.damage(&format!("demo/{}/manifest.json", m.key), Some(newer.clone())).unwrap();
    let err = r.manifest("demo", &m.key).unwrap_err();
    assert!(matches!(&err, RemoteError::Newer { newer, .. } if newer.format == 2 && newer.writer == "maskflow 9.0.0"), "{err}");
    assert!(!err.is_corrupt_artifact(), "a newer manifest is not to be repaired");
    assert!(err.to_string().contains("maskflow 9.0.0") && err.to_string().contains(&maskflow_core::record::writer()), "{err}");
    // gc keeps it, and sweeps no blob while it is there (it may name any).
    crate::blobs::upload(&r, &dir, &m.files, false, false).unwrap();
    let g = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: Some(0), plan_ttl: Duration::ZERO, apply: true }).unwrap();
    assert!(g.manifests_swept.is_empty() && g.blobs_swept == 0 && g.blobs_held == 2, "{g}");
    assert_eq!(r.read(&format!("demo/{}/manifest.json", m.key)).unwrap().unwrap(), newer);
}

#[test]
fn racing_processes_never_both_hold_a_lease_on_a_shared_filesystem() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("file://{}", d.path().join("shared").display());
    let ttl = Duration::from_secs(1);
    for round in 0..2 {
        // Round 0: a free key; round 1: an expired lease every racer tries to take over.
        if round == 1 {
            let r = Remote::open(&url).unwrap();
            let LeaseAttempt::Acquired(old) = r.try_lease("prep", "race", Duration::from_secs(60)).unwrap() else { panic!() };
            std::mem::forget(old); // a holder that died: never released
            std::thread::sleep(Duration::from_millis(100));
        }
        let key = if round == 0 { "fresh" } else { "race" };
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let r = Remote::open(&url).unwrap();
                    if let LeaseAttempt::Acquired(l) = r.try_lease("prep", key, if round == 1 { Duration::from_millis(50) } else { ttl }).unwrap() {
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        std::mem::forget(l);
                    };
                });
            }
        });
        // In round 1 the dead lease's ttl is 60 s: nobody may take it.
        let expect = if round == 0 { 1 } else { 0 };
        assert_eq!(won.load(std::sync::atomic::Ordering::SeqCst), expect, "round {round}");
    }
}

#[test]
fn an_expired_lease_goes_to_exactly_one_of_the_machines_taking_it_over() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("file://{}", d.path().join("shared").display());
    let r = Remote::open(&url).unwrap();
    let LeaseAttempt::Acquired(old) = r.try_lease("prep", "k", Duration::from_secs(1)).unwrap() else { panic!() };
    std::mem::forget(old);
    std::thread::sleep(Duration::from_millis(2100));
    let won = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let r = Remote::open(&url).unwrap();
                if let LeaseAttempt::Acquired(l) = r.try_lease("prep", "k", Duration::from_secs(30)).unwrap() {
                    won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::mem::forget(l);
                };
            });
        }
    });
    assert_eq!(won.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn gc_spares_the_blobs_a_publisher_intends_to_reuse_and_a_publisher_waits_for_gc() {
    let r = memory();
    let d = tempfile::tempdir().unwrap();
    let (dir, bytes, m) = artifact(d.path(), 13);
    // An old orphan: the blobs of a build that died, which a new build of the same content reuses.
    crate::blobs::upload(&r, &dir, &m.files, false, false).unwrap();
    let intent = r.intend("a build", &m.files).unwrap();
    let g = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: None, plan_ttl: Duration::from_secs(3600), apply: true }).unwrap();
    assert_eq!((g.blobs_live, g.blobs_swept), (2, 0), "{g}");
    r.check_blobs(&m.files).unwrap();
    drop(intent);
    assert!(r.list_objects().unwrap().iter().all(|o| !o.starts_with("intents/")), "the intent goes with its guard");

    // While a gc holds the store, a publisher waits before it looks at any blob.
    let lock = r.lock_for_gc().unwrap();
    assert!(matches!(r.lock_for_gc(), Err(RemoteError::Busy { .. })), "one gc at a time");
    let published = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            r.publish(&dir, &bytes, false).unwrap();
            published.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!published.load(std::sync::atomic::Ordering::SeqCst), "published while a gc held the store");
        // What this gc deletes now is gone before the publisher looks: it uploads it again.
        for f in &m.files {
            r.delete(&crate::blobs::blob_rel(&f.blake3)).unwrap();
        }
        drop(lock);
    });
    r.fetch(&m, tempfile::tempdir().unwrap().path()).unwrap();
}

#[test]
fn gc_sweeps_abandoned_plans_and_old_run_records_and_says_why() {
    let r = memory();
    r.create_once("plans/index/k1/plan.json", b"{}".to_vec()).unwrap();
    r.create_once("plans/index/k1/tasks-1/task-0.json", b"{}".to_vec()).unwrap();
    r.create_once("plans/index/k1/done-0.json", br#"{"format":2,"files":[]}"#.to_vec()).unwrap();
    r.create_once("plans/index/k2/done-0.json", br#"{"format":2,"files":[]}"#.to_vec()).unwrap();
    for i in 0..3 {
        r.put_run_record("demo", &format!("r{i}"), br#"{"format":1,"stages":[]}"#.to_vec()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // A live plan (ttl not reached) keeps everything.
    let live = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: None, plan_ttl: Duration::from_secs(3600), apply: false }).unwrap();
    let whys: Vec<&str> = live.other_swept.iter().map(|s| s.rel.as_str()).collect();
    assert!(whys.is_empty(), "a planner writes task files before plan.json: nothing goes within the plan ttl: {whys:?}");
    let g = r.gc(&GcOptions { grace: Duration::ZERO, keep_runs: Some(1), plan_ttl: Duration::ZERO, apply: true }).unwrap();
    let mut swept: Vec<&str> = g.other_swept.iter().map(|s| s.rel.as_str()).collect();
    swept.sort();
    assert_eq!(
        swept,
        vec!["plans/index/k1/done-0.json", "plans/index/k1/plan.json", "plans/index/k1/tasks-1/task-0.json", "plans/index/k2/done-0.json", "runs/demo/r0.json", "runs/demo/r1.json"],
        "{g}"
    );
    assert!(g.to_string().contains("abandoned plan"), "{g}");
    assert_eq!(r.list_objects().unwrap(), vec!["runs/demo/r2.json".to_string()]);
}

/// A build without the `s3` feature (the default release build) refuses an `s3://` store with the
/// way to build the client in, and still opens a shared filesystem; a build with it parses the URL
/// (here: finds no bucket name). `just test` runs this crate's tests alone too, so both builds are tested.
#[test]
fn s3_urls_open_only_in_a_build_with_the_s3_client() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Remote::open(&format!("file://{}", tmp.path().display())).is_ok());
    let e = Remote::open("s3:///cache").err().expect("an s3 URL without a bucket").to_string();
    assert!(e.contains("s3:///cache"), "{e}");
    if S3_BUILT {
        assert!(e.contains("no bucket name"), "{e}");
    } else {
        assert!(e.contains("built without the S3 client") && e.contains("--features s3"), "{e}");
    }
}
