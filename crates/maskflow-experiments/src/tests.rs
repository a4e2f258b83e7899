use crate::diff::{self, Diff};
use crate::rows::{find, Row, RowStage};
use crate::table::{self, Filter, Op, Query};
use crate::Error;
use std::collections::BTreeMap;

fn stage(name: &str, kind: &str, key: &str, params: serde_json::Value, upstream: &[(&str, &str)], cached: bool) -> RowStage {
    RowStage {
        name: name.into(),
        instance: name.into(),
        kind: kind.into(),
        key: key.into(),
        dir: format!("/store/{kind}/{key}").into(),
        cached,
        pulled: false,
        version: Some(1),
        params: Some(params),
        upstream: Some(upstream.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()),
        report: None,
    }
}

/// A sweep point's row: shared prep, its own train and eval.
fn row(id: &str, lr: f64, acc: f64, t: u64) -> Row {
    let train_key = format!("t{lr}");
    let stages = vec![
        stage("prep", "prep", "p1", serde_json::json!({"size": 96}), &[("dataset", "d1")], true),
        stage("train", "train", &train_key, serde_json::json!({"frozen_lr": lr, "batch_size": 32}), &[("shards", "p1")], false),
        stage("eval", "eval", &format!("e{lr}"), serde_json::json!({"tta": "none"}), &[("model", &train_key), ("shards", "p1")], false),
    ];
    let mut params = BTreeMap::new();
    for s in &stages {
        maskflow_pipeline::runner::flatten(&s.name, s.params.as_ref().unwrap(), &mut params);
    }
    Row {
        id: id.into(),
        pipeline: "demo".into(),
        started_unix: t,
        git: Some(maskflow_core::runs::GitState { commit: "0123456789abcdef".into(), dirty: true }),
        overrides: Some(Vec::new()),
        point: Some(vec![("train.frozen_lr".into(), lr.to_string())]),
        stages,
        params,
        metrics: BTreeMap::from([("eval.accuracy".to_string(), acc), ("train.seconds".to_string(), 10.0)]),
        headline: vec!["train.seconds".into(), "eval.accuracy".into()],
        curves: Vec::new(),
        confusions: Vec::new(),
        missing: Vec::new(),
    }
}

fn sweep() -> Vec<Row> {
    vec![row("demo/20261207T150000Z/lr-1", 0.001, 0.91, 1), row("demo/20261207T150000Z/lr-2", 0.003, 0.97, 1), row("demo/20261207T150000Z/lr-3", 0.01, 0.88, 1)]
}

#[test]
fn the_table_shows_only_the_params_that_differ_and_the_headline_metrics() {
    let lines = table::lines(&sweep());
    assert_eq!(lines[0].params, vec![("train.frozen_lr".to_string(), "0.001".to_string())]);
    assert_eq!(lines[1].metrics, vec![("train.seconds".to_string(), Some(10.0)), ("eval.accuracy".to_string(), Some(0.97))]);
    assert_eq!(lines[0].built, vec!["train", "eval"]);
    assert_eq!(lines[0].cached, vec!["prep"]);
    assert_eq!(lines[0].commit, "0123456789ab+dirty");
    let text = table::text(&lines);
    let header = text.lines().next().unwrap();
    assert!(header.contains("train.frozen_lr") && header.contains("eval.accuracy") && !header.contains("batch_size"), "{text}");
    assert!(text.contains("lr-2") && text.contains("0.9700") && text.contains("train,eval +1 cached"), "{text}");
    let csv = table::csv(&lines);
    assert_eq!(csv.lines().next().unwrap(), "run,when,commit,built,cached,train.frozen_lr,train.seconds,eval.accuracy");
    assert_eq!(csv.lines().nth(2).unwrap(), "demo/20261207T150000Z/lr-2,1970-01-01 00:00:01,0123456789ab+dirty,train eval,prep,0.003,10,0.97");
}

#[test]
fn rows_are_filtered_and_sorted_by_a_metric_or_a_param() {
    let by = |q: Query| table::select(sweep(), &q).unwrap().iter().map(|r| r.id.rsplit('/').next().unwrap().to_string()).collect::<Vec<_>>();
    let f = |s: &str| Filter::parse(s).unwrap();
    assert_eq!(by(Query { sort: Some("eval.accuracy".into()), descending: true, ..Default::default() }), ["lr-2", "lr-1", "lr-3"]);
    assert_eq!(by(Query { filters: vec![f("eval.accuracy>=0.9")], ..Default::default() }), ["lr-1", "lr-2"]);
    assert_eq!(by(Query { filters: vec![f("train.frozen_lr<0.005"), f("eval.accuracy<0.95")], ..Default::default() }), ["lr-1"]);
    assert_eq!(by(Query { filters: vec![f("eval.tta=none")], last: Some(2), ..Default::default() }), ["lr-2", "lr-3"]);
    assert_eq!(f("a != 3"), Filter { name: "a".into(), op: Op::Ne, value: "3".into() });
    assert!(matches!(Filter::parse("eval.accuracy"), Err(Error::Usage(_))));
    let err = table::select(sweep(), &Query { sort: Some("eval.acuracy".into()), ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("eval.acuracy") && err.contains("eval.accuracy"), "{err}");
}

#[test]
fn a_diff_names_the_param_the_metric_deltas_and_why_each_stage_differs() {
    let rows = sweep();
    let d: Diff = diff::diff(&rows[0], &rows[1]);
    assert_eq!(d.params, vec![("train.frozen_lr".to_string(), Some("0.001".to_string()), Some("0.003".to_string()))]);
    let acc = d.metrics.iter().find(|m| m.0 == "eval.accuracy").unwrap();
    assert!((acc.3.unwrap() - 0.06).abs() < 1e-12, "{acc:?}");
    let states: Vec<(&str, &str)> = d.stages.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(states, [("prep", "same"), ("train", "differs"), ("eval", "differs")]);
    assert_eq!(d.stages[1].because, ["param train.frozen_lr 0.001 → 0.003"]);
    assert_eq!(d.stages[2].because, ["input model (from train) differs"]);
    let text = diff::text(&d);
    assert!(text.contains("(+0.0600)") && text.contains("prep   same artifact"), "{text}");
}

#[test]
fn a_run_is_found_by_its_id_or_a_unique_part_of_it() {
    let rows = sweep();
    assert_eq!(find(&rows, "150000Z/lr-2").unwrap().id, "demo/20261207T150000Z/lr-2");
    assert_eq!(find(&rows, "latest").unwrap().id, "demo/20261207T150000Z/lr-3");
    assert!(matches!(find(&rows, "150000Z"), Err(Error::Ambiguous { .. })));
    let err = find(&rows, "20250101").unwrap_err().to_string();
    assert!(err.contains("no run \"20250101\"") && err.contains("lr-3"), "{err}");
}

#[test]
fn runs_html_draws_overlaid_curves_and_each_confusion_matrix() {
    let d = tempfile::tempdir().unwrap();
    let mut rows = sweep();
    for (i, r) in rows.iter_mut().enumerate() {
        let pts = (1..=3).map(|e| (e as f64, 1.0 / (e as f64 + i as f64))).collect();
        r.curves.push(("train".into(), maskflow_pipeline::Curve { name: "valid_loss", x_label: "epoch", points: pts }));
        r.confusions.push(("eval".into(), maskflow_pipeline::Confusion { classes: vec!["a".into(), "b".into()], counts: vec![vec![5, 1], vec![0, 6]] }));
    }
    let page = d.path().join("runs.html");
    let charts = crate::html::write(&page, "demo runs", &rows).unwrap();
    assert_eq!(charts, 1 + 3, "one overlaid curve chart, three confusion matrices");
    let html = std::fs::read_to_string(&page).unwrap();
    let srcs: Vec<&str> = html.split("src=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(srcs.len(), 4);
    for s in srcs {
        let bytes = std::fs::read(d.path().join(s)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{s}");
    }
    assert!(html.contains("lr-2 frozen_lr=0.003") && html.contains("data-broken-images"));
    // A second page replaces the charts whole.
    rows.truncate(1);
    assert_eq!(crate::html::write(&page, "demo runs", &rows).unwrap(), 2);
    assert_eq!(std::fs::read_dir(crate::html::files_dir(&page)).unwrap().count(), 2);
}
