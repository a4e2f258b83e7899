//! The shared store against a real S3 server on loopback (moto, started by `just test` or, when
//! run alone, by this file through scripts/s3-server.py; it stops by itself). Two "machines" are
//! two local artifact folders sharing one bucket prefix.


use crate::common::s3::*;
use crate::common::*;
use std::fs;
use std::path::Path;

const KINDS: [&str; 5] = ["index", "prep", "train", "eval", "export"];

#[test]
fn a_second_machine_that_changes_only_train_pulls_index_and_prep_and_every_artifact_is_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("two-machines");
    // Machine A builds everything and publishes it.
    let a = machine(d.path(), "a", "");
    let out = mf_ok(&a, &["run", "pipelines/p.toml", "--device", "cpu", "--store", &url]);
    assert_eq!(out.matches("published (").count(), 5, "{out}");
    let ra = record(&a);

    // The same pipeline on the same machine with no shared store: the same keys, and the same bytes
    // in every file but the few that record wall-clock time.
    mf_ok(&a, &["run", "pipelines/p.toml", "--device", "cpu", "--artifacts", "local-only"]);
    let rl = record_in(&a.join("local-only"));
    let timed = ["train/metrics.jsonl", "eval/summary.json", "eval/report.html", "eval/train_metrics.jsonl"];
    for kind in KINDS {
        assert_eq!(ra[kind].0, rl[kind].0, "{kind}: same key");
        let k = &ra[kind].0;
        let (with_s3, local_only) = (files(&a.join("artifacts").join(kind).join(k)), files(&a.join("local-only").join(kind).join(k)));
        assert_eq!(with_s3.keys().collect::<Vec<_>>(), local_only.keys().collect::<Vec<_>>(), "{kind}");
        for (path, bytes) in &with_s3 {
            if !timed.contains(&format!("{kind}/{path}").as_str()) {
                assert!(*bytes == local_only[path], "{kind}/{path}: built with an S3 store differs from the local-folder build");
            }
        }
    }
    // A shared filesystem store (file://) carries the same artifacts byte for byte, manifests too.
    let shared_fs = format!("file://{}", d.path().join("shared-fs").display());
    mf_ok(&a, &["push", "pipelines/p.toml", "--store", &shared_fs]);
    mf_ok(&a, &["pull", "pipelines/p.toml", "--artifacts", "via-fs", "--store", &shared_fs]);
    for kind in KINDS {
        let k = &ra[kind].0;
        let (pa, pf) = (a.join("artifacts").join(kind).join(k), a.join("via-fs").join(kind).join(k));
        assert!(files(&pa) == files(&pf), "{kind}: through file:// differs");
        assert_eq!(fs::read(pa.join("manifest.json")).unwrap(), fs::read(pf.join("manifest.json")).unwrap(), "{kind}");
    }

    // Machine C pulls everything: every file and every manifest as A has them.
    let c = machine(d.path(), "c", "");
    let pulled = mf_ok(&c, &["pull", "pipelines/p.toml", "--store", &url]);
    assert_eq!(pulled.matches("pulled:").count(), 5, "{pulled}");
    for kind in KINDS {
        let k = &ra[kind].0;
        let (pa, pc) = (a.join("artifacts").join(kind).join(k), c.join("artifacts").join(kind).join(k));
        assert!(files(&pa) == files(&pc), "{kind}: pulled files differ");
        assert_eq!(fs::read(pa.join("manifest.json")).unwrap(), fs::read(pc.join("manifest.json")).unwrap(), "{kind}");
    }
    let st = mf_ok(&c, &["status", "pipelines/p.toml", "--store", &url]);
    assert_eq!(st.matches("cached ").count(), 5, "{st}");
    assert_eq!(st.matches("[shared]").count(), 5, "{st}");

    // Machine B changes [train] only: index and prep are pulled, train / eval / export built.
    let b = machine(d.path(), "b", "seed = 1234");
    let out = mf_ok(&b, &["run", "pipelines/p.toml", "--device", "cpu", "--store", &url]);
    let rb = record(&b);
    for kind in ["index", "prep"] {
        assert_eq!(rb[kind].0, ra[kind].0);
        assert!(rb[kind].1, "{kind} must be pulled, not rebuilt:\n{out}");
        let k = &ra[kind].0;
        let (pa, pb) = (a.join("artifacts").join(kind).join(k), b.join("artifacts").join(kind).join(k));
        assert_eq!(fs::read(pa.join("manifest.json")).unwrap(), fs::read(pb.join("manifest.json")).unwrap());
    }
    for kind in ["train", "eval", "export"] {
        assert_ne!(rb[kind].0, ra[kind].0, "{kind}: a new key");
        assert!(!rb[kind].1 && !rb[kind].2, "{kind} must be built:\n{out}");
    }
    assert_eq!(out.matches("published (").count(), 3, "{out}");
    // Export's weights are train's: one blob in the store, not two.
    let r = remote(&url);
    let train = r.manifest("train", &rb["train"].0).unwrap().unwrap().manifest;
    let export = r.manifest("export", &rb["export"].0).unwrap().unwrap().manifest;
    let w = |m: &maskflow_core::store::Manifest| m.files.iter().find(|f| f.path == "model.safetensors").map(|f| f.blake3.clone());
    assert!(w(&train).is_some() && w(&train) == w(&export), "train and export share model.safetensors");
}

#[test]
fn two_processes_publishing_one_key_at_once_both_succeed_with_one_manifest() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("concurrent-push");
    let (m1, m2) = (machine(d.path(), "m1", ""), machine(d.path(), "m2", ""));
    for m in [&m1, &m2] {
        mf_ok(m, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep"]);
    }
    let spawn = |dir: &Path| {
        s3_env(command().current_dir(dir).args(["push", "pipelines/p.toml", "--until", "prep", "--store", &url]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(&m1), spawn(&m2));
    let outs: Vec<String> = [p1, p2]
        .into_iter()
        .map(|p| {
            let o = p.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{text}");
            text
        })
        .collect();
    let r = remote(&url);
    let rec = record(&m1);
    for kind in ["index", "prep"] {
        let key = &rec[kind].0;
        let stored = r.manifest(kind, key).unwrap().expect("one manifest").bytes;
        let mine = |m: &Path| fs::read(m.join("artifacts").join(kind).join(key).join("manifest.json")).unwrap();
        assert!(stored == mine(&m1) || stored == mine(&m2), "{kind}: the manifest is one of the two");
        // Each key was published by exactly one of them (the other found it there).
        let published = outs.iter().filter(|o| o.lines().any(|l| l.starts_with(kind) && l.contains("published:"))).count();
        let found = outs.iter().filter(|o| o.lines().any(|l| l.starts_with(kind) && l.contains("already in the shared store"))).count();
        assert_eq!((published, published + found), (1, 2), "{kind}: {outs:?}");
    }
}

#[test]
fn two_machines_running_at_once_build_each_stage_once_and_agree() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("concurrent-run");
    let (m1, m2) = (machine(d.path(), "m1", ""), machine(d.path(), "m2", ""));
    let spawn = |dir: &Path| {
        s3_env(command().current_dir(dir).args(["run", "pipelines/p.toml", "--device", "cpu", "--lease-ttl", "10", "--store", &url]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(&m1), spawn(&m2));
    for p in [p1, p2] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let (r1, r2) = (record(&m1), record(&m2));
    for kind in KINDS {
        assert_eq!(r1[kind].0, r2[kind].0);
        let built = [&r1, &r2].iter().filter(|r| !r[kind].1 && !r[kind].2).count();
        assert_eq!(built, 1, "{kind} is built by one machine and pulled by the other: {r1:?} {r2:?}");
        let k = &r1[kind].0;
        assert!(files(&m1.join("artifacts").join(kind).join(k)) == files(&m2.join("artifacts").join(kind).join(k)));
    }
}

#[test]
fn killed_between_blobs_and_manifest_leaves_nothing_trusted_and_the_lease_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("killed");
    let a = machine(d.path(), "a", "");
    let out = s3_env(command().current_dir(&a).args([
        "run", "pipelines/p.toml", "--until", "index", "--lease-ttl", "3", "--store", &url,
    ]))
    .env("MASKFLOW_FAILPOINT", "publish-before-manifest")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failpoint publish-before-manifest"), "{err}");
    assert!(!out.status.success());

    let r = remote(&url);
    let listed = r.list_objects().unwrap();
    assert!(listed.iter().any(|p| p.starts_with("cas/")), "the blobs were uploaded: {listed:?}");
    assert!(!listed.iter().any(|p| p.ends_with("manifest.json")), "no manifest: {listed:?}");
    assert!(listed.iter().any(|p| p.starts_with("leases/index/")), "the dead builder's lease is left: {listed:?}");

    // Nothing is trusted: the status of a fresh cache shows nothing shared.
    let st = mf_ok(&a, &["status", "pipelines/p.toml", "--artifacts", "fresh", "--store", &url]);
    assert!(st.lines().any(|l| l.starts_with("index") && (l.contains("being built by") || l.contains("not shared"))), "{st}");
    // Another machine waits out the dead lease, takes it over, builds.
    let b = machine(d.path(), "b", "");
    let out = mf_ok(&b, &["run", "pipelines/p.toml", "--until", "index", "--lease-ttl", "3", "--store", &url]);
    assert!(out.contains("took over the expired lease of"), "{out}");
    assert!(out.contains("published ("), "{out}");
    let key = record(&b)["index"].0.clone();
    assert!(r.manifest("index", &key).unwrap().is_some());
    assert!(!r.lease_info("index", &key).unwrap().expect("B's lease generation").live(), "released after publishing");
    // What A uploaded was the same content: B's publish found those blobs there.
    assert!(out.contains("already there"), "{out}");
}

#[test]
fn flipped_byte_and_deleted_blob_in_the_store_are_rebuilt_reported_and_repaired() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("corrupt");
    let a = machine(d.path(), "a", "");
    mf_ok(&a, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--store", &url]);
    let ra = record(&a);
    let r = remote(&url);
    let prep = r.manifest("prep", &ra["prep"].0).unwrap().unwrap().manifest;
    let shard = prep.files.iter().find(|f| f.path.ends_with(".parquet")).unwrap();
    let mut bytes = fs::read(a.join("artifacts/prep").join(&ra["prep"].0).join(&shard.path)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    r.damage(&format!("cas/{}", shard.blake3), Some(bytes)).unwrap();
    let index = r.manifest("index", &ra["index"].0).unwrap().unwrap().manifest;
    let table = index.files.iter().find(|f| f.path.ends_with(".parquet")).unwrap();
    r.damage(&format!("cas/{}", table.blake3), None).unwrap();

    // A fresh local cache (another machine with the dataset at the same place).
    let pull = mf(&a, &["pull", "pipelines/p.toml", "--until", "prep", "--artifacts", "b", "--store", &url]);
    assert!(!pull.status.success(), "a pull of a corrupt artifact fails");
    let perr = String::from_utf8_lossy(&pull.stderr);
    assert!(perr.contains("is missing from the store") && perr.contains("is corrupt in the store"), "{perr}");

    let out = mf_ok(&a, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--artifacts", "b", "--store", &url]);
    assert_eq!(out.matches("rebuilt here and republished").count(), 2, "{out}");
    let rb = record_in(&a.join("b"));
    for kind in ["index", "prep"] {
        assert!(!rb[kind].1, "{kind}: not served from the corrupt copy");
        let k = &ra[kind].0;
        let before = files(&a.join("artifacts").join(kind).join(k));
        let after = files(&a.join("b").join(kind).join(k));
        assert!(before == after, "{kind}: rebuilt byte for byte");
    }
    // Repaired: a third machine pulls both cleanly.
    let c = machine(d.path(), "c", "");
    let pulled = mf_ok(&c, &["pull", "pipelines/p.toml", "--until", "prep", "--store", &url]);
    assert_eq!(pulled.matches("pulled:").count(), 2, "{pulled}");
}

#[test]
fn a_training_run_killed_on_one_machine_resumes_on_another_from_the_shared_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("preempted");
    let extra = "frozen_epochs = 2\nunfrozen_epochs = 2";
    let a = machine(d.path(), "a", "");
    let p = a.join("pipelines/p.toml");
    let text = fs::read_to_string(&p).unwrap().replace("frozen_epochs = 1\nunfrozen_epochs = 1\n", &format!("{extra}\n"));
    fs::write(&p, &text).unwrap();
    mf_ok(&a, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--store", &url]);
    // A dies (SIGKILL) right after its first checkpoint reached the shared store.
    let out = s3_env(command().current_dir(&a).args(["run", "pipelines/p.toml", "--device", "cpu", "--lease-ttl", "3", "--store", &url]))
        .env("MASKFLOW_FAILPOINT", "checkpoint-pushed")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("failpoint checkpoint-pushed"), "{}", String::from_utf8_lossy(&out.stderr));

    let b = d.path().join("b");
    fs::create_dir_all(b.join("pipelines")).unwrap();
    fs::write(b.join("pipelines/p.toml"), &text).unwrap();
    let out = mf_ok(&b, &["run", "pipelines/p.toml", "--device", "cpu", "--lease-ttl", "3", "--store", &url]);
    assert!(out.contains("resuming from the checkpoint another machine left"), "{out}");
    assert!(out.contains("(resumed from"), "train resumed from the epoch A finished:\n{out}");

    // The same weights as an uninterrupted run.
    let clean = d.path().join("clean");
    fs::create_dir_all(clean.join("pipelines")).unwrap();
    fs::write(clean.join("pipelines/p.toml"), &text).unwrap();
    mf_ok(&clean, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "train"]);
    let k = &record(&b)["train"].0;
    assert_eq!(
        fs::read(b.join("artifacts/train").join(k).join("model.safetensors")).unwrap(),
        fs::read(clean.join("artifacts/train").join(k).join("model.safetensors")).unwrap()
    );
    assert!(remote(&url).pull_checkpoint("train", k, &d.path().join("none")).unwrap().is_none(), "the checkpoint is dropped once published");
}

#[test]
fn bad_store_urls_and_missing_stores_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let m = machine(d.path(), "m", "");
    let e = String::from_utf8_lossy(&mf(&m, &["status", "pipelines/p.toml", "--store", "ftp://x/y"]).stderr).into_owned();
    assert!(e.contains("unknown scheme ftp://"), "{e}");
    let e = String::from_utf8_lossy(&mf(&m, &["pull", "pipelines/p.toml"]).stderr).into_owned();
    assert!(e.contains("pull needs a shared store"), "{e}");
    let e = String::from_utf8_lossy(&mf(&m, &["run", "pipelines/p.toml", "--store", "s3://no-such-bucket/x"]).stderr).into_owned();
    assert!(e.contains("no-such-bucket"), "{e}");
    // No credentials: a clear error, and no request to the instance metadata service.
    let out = command()
        .current_dir(&m)
        .args(["run", "pipelines/p.toml", "--store", "s3://maskflow-test/x"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env("AWS_ENDPOINT_URL", endpoint())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("no AWS credentials"), "{e}");
}

#[test]
fn gc_through_the_binary_is_a_dry_run_unless_applied() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("gc");
    let m = machine(d.path(), "m", "");
    mf_ok(&m, &["run", "pipelines/p.toml", "--until", "index", "--store", &url]);
    let r = remote(&url);
    r.damage("cas/0000orphan", Some(b"left by a dead build".to_vec())).unwrap();
    let dry = mf_ok(&m, &["gc", "--store", &url, "--grace", "0s"]);
    assert!(dry.contains("1 would sweep") && dry.contains("dry run"), "{dry}");
    assert!(r.exists("cas/0000orphan").unwrap(), "a dry run deletes nothing");
    let done = mf_ok(&m, &["gc", "--store", &url, "--grace", "0s", "--apply"]);
    assert!(done.contains("1 swept"), "{done}");
    assert!(!r.exists("cas/0000orphan").unwrap());
    // The index artifact is intact.
    let c = machine(d.path(), "c", "");
    mf_ok(&c, &["pull", "pipelines/p.toml", "--until", "index", "--store", &url]);
}

/// `index/<key>/manifest.json` of the store at `url` (file://), edited by `edit`.
fn edit_stored_manifest(store_dir: &Path, key: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let path = store_dir.join("index").join(key).join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    fs::write(&path, &bytes).unwrap();
    bytes
}

#[test]
fn a_newer_maskflows_manifest_is_used_when_compatible_and_never_replaced_when_not() {
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let url = format!("file://{}", store_dir.display());
    let a = machine(d.path(), "a", "");
    mf_ok(&a, &["run", "pipelines/p.toml", "--until", "index", "--store", &url]);
    let key = record(&a)["index"].0.clone();

    // The same major format with a field this maskflow does not know: pulled and used as it is.
    let compatible = edit_stored_manifest(&store_dir, &key, |v| v["provenance"] = serde_json::json!({"host": "newer"}));
    let out = mf_ok(&a, &["run", "pipelines/p.toml", "--until", "index", "--artifacts", "fresh1", "--store", &url]);
    assert!(record_in(&a.join("fresh1"))["index"].1, "pulled, not rebuilt:\n{out}");
    assert!(!out.contains("unusable") && !out.contains("republished"), "{out}");
    assert_eq!(fs::read(store_dir.join("index").join(&key).join("manifest.json")).unwrap(), compatible, "kept byte for byte");
    assert_eq!(fs::read(a.join("fresh1/index").join(&key).join("manifest.json")).unwrap(), compatible);

    // A newer major format: built here, not published over it, and the message names both versions.
    let newer = edit_stored_manifest(&store_dir, &key, |v| {
        v["format"] = serde_json::json!(2);
        v["tool_version"] = serde_json::json!("maskflow 9.9.9");
    });
    let out = mf_ok(&a, &["run", "pipelines/p.toml", "--until", "index", "--artifacts", "fresh2", "--store", &url]);
    let r2 = record_in(&a.join("fresh2"));
    assert!(!r2["index"].1 && !r2["index"].2, "built here:\n{out}");
    assert!(out.contains("maskflow 9.9.9") && out.contains(maskflow_core::TOOL_VERSION) && out.contains("not published over it"), "{out}");
    assert_eq!(fs::read(store_dir.join("index").join(&key).join("manifest.json")).unwrap(), newer, "never replaced");
    // push leaves it alone too, and says why.
    let pushed = mf_ok(&a, &["push", "pipelines/p.toml", "--until", "index", "--artifacts", "fresh2", "--store", &url]);
    assert!(pushed.contains("not pushed") && pushed.contains("maskflow 9.9.9"), "{pushed}");
    // --strict-versions makes it an error.
    let o = mf(&a, &["run", "pipelines/p.toml", "--until", "index", "--artifacts", "fresh3", "--store", &url, "--strict-versions"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("maskflow 9.9.9") && err.contains("--strict-versions"), "{err}");
    // gc keeps it and every blob.
    let gc = mf_ok(&a, &["gc", "--store", &url, "--grace", "0s", "--keep-runs", "0", "--apply"]);
    assert!(gc.contains("kept, unreadable here"), "{gc}");
    assert_eq!(fs::read(store_dir.join("index").join(&key).join("manifest.json")).unwrap(), newer);
}

#[test]
fn a_panic_inside_a_stage_ends_the_process_at_once_and_frees_its_lease() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url("panic");
    let a = machine(d.path(), "a", "");
    let started = std::time::Instant::now();
    let mut child = s3_env(command().current_dir(&a).args(["run", "pipelines/p.toml", "--until", "index", "--lease-ttl", "600", "--store", &url]))
        .env("MASKFLOW_FAILPOINT", "stage-run")
        .env("MASKFLOW_FAILPOINT_ACTION", "panic")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("a panicking stage left the process running for 60 s (its lease heartbeat holds it)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success() && err.contains("injected panic"), "{status:?} {err}");
    // Its lease (ttl 600 s) is released: another machine builds at once instead of waiting.
    let b = machine(d.path(), "b", "");
    let took = std::time::Instant::now();
    let out = mf_ok(&b, &["run", "pipelines/p.toml", "--until", "index", "--store", &url]);
    assert!(!out.contains("waiting"), "{out}");
    assert!(took.elapsed() < std::time::Duration::from_secs(120), "{out}");
}
