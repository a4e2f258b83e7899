//! Experiments through the binary: `-S` overrides keyed as in the file and recorded, a sweep with
//! one index and one prep, `runs` (table, CSV, JSON, filter, sort), `diff`, and runs.html checked
//! in headless Chromium (bench/report_check.sh: broken images and script errors fail it).

use crate::common::*;
use std::fs;
use std::path::Path;

const SWEEP: &str = "\n[sweep.lr]\ntrain.frozen_lr = [1e-3, 3e-3, 1e-2]\n";

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("artifacts/runs/p/latest.json")).unwrap()).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_override_is_keyed_as_if_written_in_the_file_and_recorded_with_the_commit() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), "");
    git(d.path(), &["init", "-q"]);
    git(d.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]);
    git(d.path(), &["add", "pipelines/p.toml"]);
    git(d.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "p"]);
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--until", "train", "-S", "train.frozen_lr=2e-3", "-S", "train.augment.flip=false"]);
    assert!(out.contains("train   built"), "{out}");
    let r = record(d.path());
    assert_eq!(r["overrides"], serde_json::json!(["train.frozen_lr=2e-3", "train.augment.flip=false"]));
    assert_eq!(r["git"]["dirty"], false, "data and artifacts are not tracked files");
    assert_eq!(r["git"]["commit"].as_str().unwrap().len(), 40);
    // The same values written in the file: the same key (cached), and the checkout is now dirty.
    let p = d.path().join("pipelines/p.toml");
    let text = fs::read_to_string(&p).unwrap().replace("[train]\n", "[train]\nfrozen_lr = 0.002\n").replace("[eval]\n", "[train.augment]\nflip = false\n\n[eval]\n");
    fs::write(&p, text).unwrap();
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--until", "train"]);
    assert!(out.contains("train   cached"), "{out}");
    let r = record(d.path());
    assert_eq!(r["git"]["dirty"], true);
    assert_eq!(r["overrides"], serde_json::json!([]));
}

#[test]
fn bad_overrides_sweeps_and_run_ids_are_clear_errors_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), SWEEP);
    let cases: [(&[&str], &str); 6] = [
        (&["run", "pipelines/p.toml", "-S", "train.frozen_lrr=1e-3"], "-S train.frozen_lrr=1e-3: unknown field `frozen_lrr`"),
        (&["run", "pipelines/p.toml", "-S", "train.frozen_epochs=many"], "-S train.frozen_epochs=many: invalid type: string \"many\", expected usize"),
        (&["run", "pipelines/p.toml", "-S", "trian.frozen_lr=1"], "-S trian.frozen_lr=1: `trian` is not a stage kind"),
        (&["run", "pipelines/p.toml", "-S", "train.big.frozen_lr=1"], "nor an instance the file declares ([train.big])"),
        (&["run", "pipelines/p.toml", "--sweep", "batch"], "--sweep batch: the file has no [sweep.batch] (its sweeps: lr)"),
        (&["status", "pipelines/p.toml", "-S", "eval.top_losses=-1"], "-S eval.top_losses=-1: invalid value: integer `-1`"),
    ];
    for (args, want) in cases {
        let err = fails(d.path(), args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!d.path().join("artifacts").exists() && !d.path().join("data").exists(), "nothing ran, nothing was generated");
    // A sweep over a param that does not exist: the file's line and column.
    let p = d.path().join("pipelines/p.toml");
    fs::write(&p, fs::read_to_string(&p).unwrap().replace("train.frozen_lr = [", "train.frozn_lr = [")).unwrap();
    let err = fails(d.path(), &["run", "pipelines/p.toml"]);
    let line = fs::read_to_string(&p).unwrap().lines().position(|l| l.starts_with("train.frozn_lr")).unwrap() + 1;
    assert!(err.contains(&format!("pipelines/p.toml:{line}:7")) && err.contains("unknown field `frozn_lr`"), "{err}");
    let err = fails(d.path(), &["diff", "20990101", "latest"]);
    assert!(err.contains("no run \"20990101\" (there are no runs yet)"), "{err}");
}

#[test]
fn a_sweep_shares_index_and_prep_and_runs_diff_and_the_page_explain_it() {
    let d = tempfile::tempdir().unwrap();
    small_pipeline(d.path(), SWEEP);
    let a = d.path().join("artifacts");
    let out = ok(d.path(), &["run", "pipelines/p.toml", "--sweep", "lr", "--jobs", "2"]);
    assert_eq!((keys(&a, "index").len(), keys(&a, "prep").len()), (1, 1), "one index and one prep for every point");
    assert_eq!((keys(&a, "train").len(), keys(&a, "eval").len(), keys(&a, "export").len()), (3, 3, 3));
    // The comparison table at the end: a row per point with the swept value.
    let table: Vec<&str> = out.lines().skip_while(|l| !l.contains("when (UTC)")).collect();
    assert!(table[0].contains("train.frozen_lr") && table[0].contains("eval.accuracy") && table[0].contains("eval.log_loss"), "{out}");
    for (row, lr) in table[1..4].iter().zip(["0.001", "0.003", "0.01"]) {
        assert!(row.contains(lr) && row.contains("train,eval,export"), "{row}");
    }
    let id = table[1].split_whitespace().next().unwrap().trim_end_matches("/lr-1").to_string();

    // runs: the listing, filtered and sorted; CSV; JSON with every metric.
    let runs = ok(d.path(), &["runs", "p"]);
    assert_eq!(runs.lines().count(), 4, "{runs}");
    assert!(!runs.lines().next().unwrap().contains("batch_size"), "only the params that differ: {runs}");
    let json: Vec<serde_json::Value> = ok(d.path(), &["runs", "pipelines/p.toml", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), 3);
    let loss = |j: &serde_json::Value| j["metrics"]["eval.log_loss"].as_f64().unwrap();
    let mut by_loss = json.clone();
    by_loss.sort_by(|x, y| loss(x).total_cmp(&loss(y)));
    let sorted = ok(d.path(), &["runs", "p", "--sort", "eval.log_loss", "--csv"]);
    let ids: Vec<&str> = sorted.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(ids, by_loss.iter().map(|j| j["id"].as_str().unwrap()).collect::<Vec<_>>());
    let filtered = ok(d.path(), &["runs", "p", "--filter", "train.frozen_lr>0.002", "--csv"]);
    assert_eq!(filtered.lines().count(), 1 + 2, "{filtered}");
    for j in &json {
        for m in ["eval.accuracy", "eval.log_loss", "eval.corruption_accuracy", "train.seconds"] {
            assert!(j["metrics"][m].is_number(), "{m} in {j}");
        }
    }

    // diff: the param, metric deltas, which stages differ and why.
    let diff = ok(d.path(), &["diff", &format!("{id}/lr-1"), &format!("{id}/lr-2")]);
    assert!(diff.contains("train.frozen_lr  0.001 → 0.003"), "{diff}");
    assert!(diff.contains("index   same artifact") && diff.contains("prep    same artifact"), "{diff}");
    assert!(diff.contains("train   differs: param train.frozen_lr 0.001 → 0.003"), "{diff}");
    assert!(diff.contains("eval    differs: input model (from train) differs"), "{diff}");
    let delta = |j: &serde_json::Value| j["metrics"]["eval.accuracy"].as_f64().unwrap();
    assert!(diff.contains(&format!("({:+.4})", delta(&json[1]) - delta(&json[0]))), "{diff}");

    // runs.html in headless Chromium: every chart loads; a broken image or a script error fails.
    ok(d.path(), &["runs", "p", "--html"]);
    let page = a.join("runs/p/runs.html");
    let html = fs::read_to_string(&page).unwrap();
    assert!(html.contains("train · valid_loss") && html.contains("lr-2 frozen_lr=0.003") && html.matches("confusion-").count() == 3, "{html}");
    assert!(html.contains("href=\"../../eval/"), "links to each report, relative to the page");
    let check = |p: &Path| std::process::Command::new("bench/report_check.sh").arg(p).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let good = check(&page);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let broken = a.join("runs/p/broken.html");
    fs::write(&broken, html.replacen("curve-0.png", "curve-missing.png", 1)).unwrap();
    let out = check(&broken);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("1 of 6 images did not load"), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(&broken, html.replacen("window.addEventListener", "window.addEventListenr", 1)).unwrap();
    let out = check(&broken);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("script did not run"), "{}", String::from_utf8_lossy(&out.stderr));
}
