//! Index and prep fanned out as plan → task → commit through a shared store: the artifacts are
//! byte-identical to one machine's, whatever runs the tasks, in whatever order, however often, and
//! after a task is killed midway. The S3 store is a real server on loopback (moto); the Ray test
//! is in tests/servers/ray_cluster.rs.


use crate::common::s3::*;
use crate::common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// One machine's index and prep of the small pipeline (no shared store): instance → key.
fn one_machine(dir: &Path) -> BTreeMap<String, (String, bool, bool)> {
    mf_ok(dir, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--artifacts", "one-machine"]);
    record_in(&dir.join("one-machine"))
}

/// Every file, and the manifest's file list, of `kind`/`key` in two stores are the same.
fn assert_identical(a: &Path, b: &Path, kind: &str, key: &str) {
    let (da, db) = (a.join(kind).join(key), b.join(kind).join(key));
    let (fa, fb) = (files(&da), files(&db));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>(), "{kind}: the same files");
    for (path, bytes) in &fa {
        assert!(*bytes == fb[path], "{kind}/{path}: differs from the one-machine build");
    }
    let manifest = |d: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(d.join("manifest.json")).unwrap()).unwrap() };
    let (ma, mb) = (manifest(&da), manifest(&db));
    assert_eq!(ma["files"], mb["files"], "{kind}: the manifests list the same files with the same blake3");
    assert_eq!(ma["key"], mb["key"]);
    assert_eq!((ma["params"].clone(), ma["upstream"].clone()), (mb["params"].clone(), mb["upstream"].clone()));
}

fn plan(dir: &Path, url: &str, stage: &str, items: &str) -> (String, usize) {
    let out = mf_ok(dir, &["plan", "pipelines/p.toml", "--stage", stage, "--store", url, "--task-items", items, "--json", "--device", "cpu"]);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (v["plan"].as_str().unwrap_or_else(|| panic!("{v}")).to_string(), v["tasks"].as_u64().unwrap() as usize)
}

fn task(dir: &Path, plan: &str, i: usize) -> String {
    mf_ok(dir, &["task", "--plan", plan, "--index", &i.to_string(), "--quiet", "--device", "cpu", "--artifacts", "worker"])
}

/// Runs the tasks out of order, some twice, and one killed between its blobs and its record, then
/// retried; checks that commit refuses while one is missing.
fn tasks_shuffled_duplicated_and_killed(dir: &Path, plan: &str, n: usize) {
    assert!(n >= 3, "the test needs several tasks, got {n}");
    // Killed after uploading its files, before its record: leaves nothing a commit trusts.
    let killed = s3_env(command().current_dir(dir).args(["task", "--plan", plan, "--index", "1", "--quiet", "--device", "cpu", "--artifacts", "worker"]))
        .env("MASKFLOW_FAILPOINT", "task-before-record")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the failpoint kills the task");
    let mut order: Vec<usize> = (0..n).rev().collect();
    order.retain(|&i| i != 1);
    order.insert(1, 0); // task 0 twice
    let last = order.pop().unwrap();
    for i in &order {
        task(dir, plan, *i);
    }
    let early = mf(dir, &["commit", "--plan", plan, "--device", "cpu"]);
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && err.contains("not done") && err.contains("task 1"), "commit with tasks missing:\n{err}");
    task(dir, plan, 1); // the retry of the killed one
    task(dir, plan, last);
    assert!(task(dir, plan, 0).contains("already done"), "a duplicate does nothing");
    let bad = mf(dir, &["task", "--plan", plan, "--index", &n.to_string(), "--device", "cpu"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains(&format!("the plan has {n} tasks")));
}

#[test]
fn index_and_prep_through_plan_task_commit_by_hand_are_byte_identical_to_one_machine() {
    let d = tempfile::tempdir().unwrap();
    let dir = machine(d.path(), "m", "");
    let url = store_url("fanout-by-hand");
    let one = one_machine(&dir);

    // Prep cannot be planned before its input (the index) is in the store.
    let early = mf(&dir, &["plan", "pipelines/p.toml", "--stage", "prep", "--store", &url, "--device", "cpu"]);
    assert!(!early.status.success() && String::from_utf8_lossy(&early.stderr).contains("needs [index]"));

    let (index_plan, n) = plan(&dir, &url, "index", "4");
    assert!(index_plan.ends_with(&format!("/plans/index/{}", one["index"].0)), "the plan is keyed like the one-machine run: {index_plan}");
    // Planning again finds the same plan (the chunk size asked for is not part of anything).
    let (again, n2) = plan(&dir, &url, "index", "100");
    assert_eq!((again.as_str(), n2), (index_plan.as_str(), n));
    tasks_shuffled_duplicated_and_killed(&dir, &index_plan, n);
    let out = mf_ok(&dir, &["commit", "--plan", &index_plan, "--device", "cpu"]);
    assert!(out.contains("committed key"), "{out}");
    assert!(mf_ok(&dir, &["commit", "--plan", &index_plan, "--device", "cpu"]).contains("committed already"));
    assert!(task(&dir, &index_plan, 0).contains("committed"), "a late task does nothing");

    let (prep_plan, shards) = plan(&dir, &url, "prep", "1");
    assert!(prep_plan.ends_with(&one["prep"].0));
    let expected_shards = fs::read_dir(dir.join("one-machine/prep").join(&one["prep"].0))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(shards, expected_shards, "one prep task per output shard");
    tasks_shuffled_duplicated_and_killed(&dir, &prep_plan, shards);
    mf_ok(&dir, &["commit", "--plan", &prep_plan, "--device", "cpu"]);

    // The committed artifacts, pulled, are the one-machine ones; the plans are gone.
    let pulled = mf_ok(&dir, &["pull", "pipelines/p.toml", "--until", "prep", "--artifacts", "pulled", "--store", &url]);
    assert_eq!(pulled.matches("pulled:").count(), 2, "{pulled}");
    for kind in ["index", "prep"] {
        assert_identical(&dir.join("one-machine"), &dir.join("pulled"), kind, &one[kind].0);
    }
    let left: Vec<String> = remote(&url).list_objects().unwrap().into_iter().filter(|o| o.starts_with("plans/")).collect();
    assert!(left.is_empty(), "committed plans are removed: {left:?}");
    // And `plan` now says there is nothing to do.
    let out = mf_ok(&dir, &["plan", "pipelines/p.toml", "--stage", "index", "--store", &url, "--json", "--device", "cpu"]);
    assert!(out.contains("\"committed\":true"), "{out}");
}

#[test]
fn run_with_the_local_executor_equals_run_without_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = machine(d.path(), "m", "");
    let one = one_machine(&dir);
    let shared = format!("file://{}", d.path().join("shared").display());
    let out = mf_ok(&dir, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--store", &shared, "--executor", "local", "--task-items", "5"]);
    assert!(out.contains("task(s) on local"), "{out}");
    let rec = record(&dir);
    for kind in ["index", "prep"] {
        assert_eq!(rec[kind].0, one[kind].0, "{kind}: same key");
        assert!(rec[kind].1, "{kind}: committed by the tasks, then pulled:\n{out}");
        assert_identical(&dir.join("one-machine"), &dir.join("artifacts"), kind, &one[kind].0);
    }
    // The rest of the pipeline runs on as usual from the fanned-out artifacts.
    let out = mf_ok(&dir, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "train", "--store", &shared, "--executor", "local"]);
    assert!(!out.contains("task(s) on local"), "index and prep are cached: nothing to fan out\n{out}");
    assert!(out.contains("train   built"), "{out}");
    // `maskflow stages` says which kinds split.
    let kinds = ok(&dir, &["stages", "--json"]);
    let splits: BTreeMap<String, bool> = kinds
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["kind"].as_str().unwrap().to_string(), v["splits"].as_bool().unwrap()))
        .collect();
    assert_eq!((splits["index"], splits["prep"], splits["train"], splits["eval"]), (true, true, false, false), "{kinds}");
    // An executor without a store is a clear error.
    let err = fails(&dir, &["run", "pipelines/p.toml", "--device", "cpu", "--executor", "local"]);
    assert!(err.contains("--store"), "{err}");
}

/// A plan made by another maskflow (or damaged) is refused by every task and by commit, with the
/// reason, instead of running with default params under the planner's key.
#[test]
fn a_plan_whose_params_version_or_key_do_not_check_out_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = machine(d.path(), "m", "");
    let store_dir = d.path().join("store");
    let url = format!("file://{}", store_dir.display());
    let (plan_url, _) = plan(&dir, &url, "index", "4");
    let key = plan_url.rsplit('/').next().unwrap().to_string();
    let plan_json = store_dir.join("plans/index").join(&key).join("plan.json");
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&plan_json).unwrap()).unwrap();
    assert!(original["tool_version"].as_str().is_some_and(|v| v.starts_with("maskflow ")), "{original}");
    let cases: [(&str, Box<dyn Fn(&mut serde_json::Value)>, &str); 4] = [
        ("a param this maskflow does not have", Box::new(|v| v["spec"]["params"]["from_the_future"] = 1.into()), "do not read"),
        ("another stage version", Box::new(|v| v["spec"]["version"] = 999.into()), "version 999"),
        ("a param changed under the same key", Box::new(|v| v["spec"]["params"]["valid_pct"] = 0.5.into()), "is not the key"),
        ("an input other than the one keyed", Box::new(|v| v["externals"]["dataset"]["key"] = "0".repeat(64).into()), "not the ones its key"),
    ];
    for (what, edit, says) in cases {
        let mut v = original.clone();
        edit(&mut v);
        fs::write(&plan_json, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        for args in [vec!["task", "--plan", plan_url.as_str(), "--index", "0", "--device", "cpu", "--artifacts", "worker"], vec!["commit", "--plan", plan_url.as_str(), "--device", "cpu"]] {
            let o = mf(&dir, &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(says), "{what}: {} must refuse, saying {says:?}:\n{err}", args[0]);
        }
        let left: Vec<String> = fs::read_dir(store_dir.join("plans/index").join(&key)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!left.iter().any(|f| f.starts_with("done-")), "{what}: no task ran: {left:?}");
    }
    // A plan of a newer format says so, naming its writer.
    let mut v = original.clone();
    v["format"] = 3.into();
    v["tool_version"] = "maskflow 9.9.9".into();
    fs::write(&plan_json, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let o = mf(&dir, &["task", "--plan", &plan_url, "--index", "0", "--device", "cpu", "--artifacts", "worker"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("maskflow 9.9.9"), "{err}");
    // The original runs.
    fs::write(&plan_json, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    task(&dir, &plan_url, 0);
}
