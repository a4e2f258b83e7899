//! The graph and the runner on toy stage kinds (no images, no torch): declared instances, implied
//! ones, `data =` rebinding, errors with positions, keys, caching, `--until` / `--force`, status.

use crate::graph::Graph;
use crate::runner::{self, RunOptions, State};
use crate::{Placement, Registry, RunCtx, Runtime, Slot, Stage};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ListParams {
    suffix: String,
}

/// Reads the dataset: writes the sorted file names.
struct List;
impl Stage for List {
    const KIND: &'static str = "list";
    const VERSION: u32 = 1;
    const OUTPUT: &'static str = "names";
    const READS_DATASET: bool = true;
    type Params = ListParams;
    type Report = usize;
    fn inputs(_: &ListParams) -> Vec<Slot> {
        vec![]
    }
    fn run(p: &ListParams, ctx: &RunCtx) -> anyhow::Result<usize> {
        let ds = ctx.external(runner::DATASET)?;
        let names: Vec<String> = ds.files.as_ref().map(|f| f.keys().map(|k| format!("{k}{}", p.suffix)).collect()).unwrap_or_default();
        std::fs::write(ctx.out.join("names.txt"), names.join("\n"))?;
        Ok(names.len())
    }
    fn summary(r: &usize) -> String {
        format!("{r} names")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CountParams {
    scale: u32,
    nested: Nested,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Nested {
    depth: u32,
}

/// A "model": counts names (times scale).
struct Count;
impl Stage for Count {
    const KIND: &'static str = "count";
    const VERSION: u32 = 1;
    const OUTPUT: &'static str = "total";
    type Params = CountParams;
    type Report = usize;
    fn inputs(_: &CountParams) -> Vec<Slot> {
        vec![Slot::new("names", "names")]
    }
    fn run(p: &CountParams, ctx: &RunCtx) -> anyhow::Result<usize> {
        anyhow::ensure!(p.scale != 13, "scale 13 is unlucky");
        let n = std::fs::read_to_string(ctx.input("names")?.join("names.txt"))?.lines().count() * p.scale.max(1) as usize;
        std::fs::write(ctx.out.join("total.txt"), n.to_string())?;
        Ok(n)
    }
    fn summary(r: &usize) -> String {
        format!("total {r}")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct JudgeParams {
    all: Option<bool>,
}

/// An "eval": reads a total and names (its data slot).
struct Judge;
impl Stage for Judge {
    const KIND: &'static str = "judge";
    const VERSION: u32 = 1;
    const OUTPUT: &'static str = "verdict";
    type Params = JudgeParams;
    type Report = String;
    fn inputs(_: &JudgeParams) -> Vec<Slot> {
        vec![Slot::new("model", "total"), Slot::new("data", "names").data()]
    }
    fn place(p: &mut JudgeParams, at: Placement) {
        p.all.get_or_insert(at.own_data);
    }
    fn run(p: &JudgeParams, ctx: &RunCtx) -> anyhow::Result<String> {
        let names = std::fs::read_to_string(ctx.input("data")?.join("names.txt"))?;
        let v = format!("{} names, all={:?}", names.lines().count(), p.all);
        std::fs::write(ctx.out.join("verdict.txt"), &v)?;
        Ok(v)
    }
    fn summary(r: &String) -> String {
        r.clone()
    }
}

fn registry() -> Registry {
    Registry::new().register::<List>().register::<Count>().register::<Judge>()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (folder, n) in [("data", 3), ("other", 5)] {
            for i in 0..n {
                let p = dir.path().join(folder).join("cls");
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join(format!("f{i}.txt")), format!("{folder}{i}")).unwrap();
            }
        }
        Fixture { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn graph(&self, text: &str) -> Result<Graph, String> {
        let p = self.path().join("p.toml");
        std::fs::write(&p, format!("[dataset]\nroot = \"data\"\n{text}")).unwrap();
        Graph::load(&p, &registry()).map_err(|e| e.to_string())
    }
    fn rt(&self) -> Runtime {
        Runtime { device: crate::Device::Cpu, threads: 1, progress: false, artifacts: self.path().join("artifacts"), ranks: None }
    }
    fn run(&self, g: &Graph, force: Option<&str>, until: Option<&str>) -> Vec<(String, bool)> {
        let rec = runner::run(g, &registry(), &self.rt(), &RunOptions { force, until, ..RunOptions::new(&crate::events::Silent) }).unwrap().record;
        rec.stages.into_iter().map(|s| (s.stage, s.cached)).collect()
    }
}

fn names(g: &Graph) -> Vec<&str> {
    g.nodes.iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn tables_present_and_what_they_need_make_the_graph() {
    let f = Fixture::new();
    // [judge] alone implies count and list (default params), upstream first.
    let g = f.graph("[judge]\n").unwrap();
    assert_eq!(names(&g), ["list", "count", "judge"]);
    assert!(g.node("judge").unwrap().declared && !g.node("list").unwrap().declared);
    // Named instances: same-named sources first, then the default instance; a sub-table named
    // after a params field is a params table, not an instance.
    let g = f
        .graph("[count]\n[count.nested]\ndepth = 2\n[count.big]\nscale = 3\n[judge]\n[judge.big]\n[judge.other]\ndata = \"other\"\ninputs = { model = \"count.big\" }\n")
        .unwrap();
    assert_eq!(g.node("count").unwrap().params["nested"]["depth"], 2);
    assert_eq!(g.node("judge.big").unwrap().inputs["model"], "count.big");
    assert_eq!(g.node("judge").unwrap().inputs["model"], "count");
    // data = … rebinds the data slot (a copy of list on the other folder), not the model.
    let other = g.node("judge.other").unwrap();
    assert_eq!(other.inputs["data"], "list.other");
    assert_eq!(other.inputs["model"], "count.big");
    assert!(g.node("list.other").unwrap().dataset.as_ref().unwrap().ends_with("other"));
    assert_eq!(g.node("judge.other").unwrap().params["all"], true);
    assert_eq!(g.node("judge").unwrap().params["all"], false);
}

#[test]
fn declared_graphs_run_cache_and_answer_each_question_separately() {
    let f = Fixture::new();
    let g = f.graph("[judge]\n[judge.other]\ndata = \"other\"\n[judge.same]\ndata = \"data\"\n").unwrap();
    let first = f.run(&g, None, None);
    // list.same reads the same folder with the same params as list: same key, built once.
    assert!(first.iter().all(|(n, cached)| *cached == (n == "list.same")), "{first:?}");
    let again = f.run(&g, None, None);
    assert!(again.iter().all(|(_, cached)| *cached), "{again:?}");
    // The same folder under another instance: list's artifact is shared (same key), but the judge
    // asked about the whole folder is its own result.
    let st = runner::states(&g, &registry(), &f.rt(), &crate::events::Silent).unwrap();
    let key = |n: &str| st.iter().find(|(p, _)| p.node.name == n).unwrap().0.key();
    assert_eq!(key("list"), key("list.same"));
    assert_ne!(key("judge"), key("judge.same"));
    assert_ne!(key("list"), key("list.other"));
    let verdict = |n: &str| {
        let dir = f.rt().artifacts.join("judge").join(key(n));
        std::fs::read_to_string(dir.join("verdict.txt")).unwrap()
    };
    assert_eq!(verdict("judge.other"), "5 names, all=Some(true)");
    assert_eq!(verdict("judge"), "3 names, all=Some(false)");
    // --until runs only what an instance needs; --force a kind rebuilds each of its instances.
    let until = f.run(&g, Some("count"), Some("count"));
    assert_eq!(until, [("list".to_string(), true), ("count".to_string(), false)]);
    // A param change: status names it, and only that instance and what follows it are stale.
    let g2 = f.graph("[count]\nscale = 2\n[judge]\n[judge.other]\ndata = \"other\"\n[judge.same]\ndata = \"data\"\n").unwrap();
    let st = runner::states(&g2, &registry(), &f.rt(), &crate::events::Silent).unwrap();
    let state = |n: &str| st.iter().find(|(p, _)| p.node.name == n).unwrap().1.clone();
    assert_eq!(state("list"), State::Cached);
    match state("count") {
        State::Stale { reasons, .. } => assert_eq!(reasons, ["count.scale 0 → 2"]),
        s => panic!("{s:?}"),
    }
    match state("judge") {
        State::Stale { reasons, .. } => assert_eq!(reasons, ["upstream model changed"]),
        s => panic!("{s:?}"),
    }
    // A dataset edit: status counts files.
    std::fs::write(f.path().join("data/cls/new.txt"), "n").unwrap();
    let st = runner::states(&g, &registry(), &f.rt(), &crate::events::Silent).unwrap();
    match &st[0].1 {
        State::Stale { reasons, .. } => assert_eq!(reasons, &["dataset changed: 1 added, 0 removed, 0 modified"]),
        s => panic!("{s:?}"),
    }
    let text = runner::describe(&g, &registry(), &f.rt(), false, &crate::events::Silent).unwrap();
    assert!(text.contains("judge.other") && text.contains("from data ← list.other, model ← count"), "{text}");
    let dot = runner::describe(&g, &registry(), &f.rt(), true, &crate::events::Silent).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("\"list.other\" -> \"judge.other\" [label=\"data\"]"), "{dot}");
}

#[test]
fn errors_come_before_anything_runs_with_positions() {
    let f = Fixture::new();
    let e = f.graph("[jduge]\n").unwrap_err();
    assert!(e.ends_with("p.toml:3:2: unknown stage kind `jduge` (kinds: list, count, judge)"), "{e}");
    let e = f.graph("[judge]\ninputs = { modle = \"count\" }\n").unwrap_err();
    assert!(e.contains("p.toml:4:12") && e.contains("no input slot `modle` (its slots: model, data)"), "{e}");
    let e = f.graph("[judge]\ninputs = { model = \"count.nope\" }\n").unwrap_err();
    assert!(e.contains("p.toml:4:20") && e.contains("names `count.nope`, which is not an instance"), "{e}");
    let e = f.graph("[judge]\ninputs = { model = \"list\" }\n").unwrap_err();
    assert!(e.contains("takes a total, but `list` (list) makes a names"), "{e}");
    let e = f.graph("[count]\nscale = \"big\"\n").unwrap_err();
    assert!(e.contains("p.toml:4:9") && e.contains("key `scale`"), "{e}");
    let e = f.graph("[count]\nscael = 1\n").unwrap_err();
    assert!(e.contains("p.toml:4:1") && e.contains("scael"), "{e}");
    let e = f.graph("[judge]\ndata = \"other\"\n").unwrap_err();
    assert!(e.contains("only a named instance"), "{e}");
    let e = f.graph("").unwrap_err();
    assert!(e.contains("declares no stages"), "{e}");
}

#[test]
fn a_cycle_is_named() {
    // Two kinds that can feed each other.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct P {}
    struct Loop;
    impl Stage for Loop {
        const KIND: &'static str = "loop";
        const VERSION: u32 = 1;
        const OUTPUT: &'static str = "thing";
        type Params = P;
        type Report = ();
        fn inputs(_: &P) -> Vec<Slot> {
            vec![Slot::new("prev", "thing").optional()]
        }
        fn run(_: &P, _: &RunCtx) -> anyhow::Result<()> {
            Ok(())
        }
        fn summary(_: &()) -> String {
            String::new()
        }
    }
    let reg = Registry::new().register::<Loop>();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.toml");
    std::fs::write(&p, "[dataset]\nroot = \".\"\n[loop.a]\ninputs = { prev = \"loop.b\" }\n[loop.b]\ninputs = { prev = \"loop.a\" }\n").unwrap();
    let e = Graph::load(&p, &reg).unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("loop.a") && e.contains("loop.b"), "{e}");
    // Without the loop it is fine, and an optional input with no producer instance stays empty.
    std::fs::write(&p, "[dataset]\nroot = \".\"\n[loop.a]\n[loop.b]\ninputs = { prev = \"loop.a\" }\n").unwrap();
    let g = Graph::load(&p, &reg).unwrap();
    assert!(g.node("loop.a").unwrap().inputs.is_empty());
}

#[test]
fn toy_kinds_keys_cover_every_param() {
    crate::testing::assert_key_covers_every_param::<Count>();
    crate::testing::assert_key_covers_every_param::<Judge>();
    crate::testing::assert_key_covers_every_param::<List>();
}

impl Fixture {
    fn varied(&self, text: &str, sets: &[&str], sweep: Option<&str>) -> Result<Graph, String> {
        let p = self.path().join("p.toml");
        std::fs::write(&p, format!("[dataset]\nroot = \"data\"\n{text}")).unwrap();
        let overrides = sets.iter().map(|s| crate::variation::Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let v = crate::variation::Variation { overrides, sweep: sweep.map(String::from) };
        Graph::load_with(&p, &registry(), &v).map_err(|e| e.to_string())
    }
    fn keys(&self, g: &Graph) -> std::collections::BTreeMap<String, String> {
        runner::plan(g, &registry(), &self.rt(), None, &crate::events::Silent).unwrap().into_iter().map(|p| (p.node.name.clone(), p.key())).collect()
    }
}

#[test]
fn an_override_is_keyed_exactly_as_if_written_in_the_file() {
    let f = Fixture::new();
    let pairs = [
        (&["count.scale=2"][..], "[count]\nscale = 2\n[judge]\n"),
        (&["count.nested.depth=4"][..], "[count]\n[count.nested]\ndepth = 4\n[judge]\n"),
        // An implied instance becomes declared; a later override wins.
        (&["judge.all=true", "judge.all=false"][..], "[judge]\nall = false\n"),
        (&["count.big.scale=5"][..], "[count.big]\nscale = 5\n[judge]\n[judge.big]\n"),
    ];
    for (sets, written) in pairs {
        let base = if written.contains("count.big") { "[count.big]\nscale = 1\n[judge]\n[judge.big]\n" } else { "[judge]\n" };
        let varied = f.varied(base, sets, None).unwrap();
        let file = f.graph(written).unwrap();
        assert_eq!(f.keys(&varied), f.keys(&file), "{sets:?}");
        assert_eq!(varied.variation.overrides.len(), sets.len());
    }
    // A string value without quotes; a TOML array.
    assert_eq!(crate::variation::Override::parse("train.arch=resnet18").unwrap().value, "\"resnet18\"");
    assert_eq!(crate::variation::Override::parse("train.unfrozen_lr=[1e-5, 1e-4]").unwrap().value, "[1e-5, 1e-4]");
}

#[test]
fn a_bad_override_names_the_argument_and_why_before_anything_runs() {
    let f = Fixture::new();
    let err = |sets: &[&str]| f.varied("[judge]\n", sets, None).unwrap_err();
    let e = err(&["count.scael=2"]);
    assert!(e.starts_with("-S count.scael=2: ") && e.contains("unknown field `scael`") && e.contains("scale"), "{e}");
    let e = err(&["count.scale=big"]);
    assert!(e.starts_with("-S count.scale=big: ") && e.contains("invalid type: string \"big\""), "{e}");
    let e = err(&["cuont.scale=2"]);
    assert!(e.starts_with("-S cuont.scale=2: `cuont` is not a stage kind (kinds: list, count, judge)"), "{e}");
    let e = err(&["count.nope.scale=2"]);
    assert!(e.contains("`nope` is neither a param of count nor an instance the file declares ([count.nope])"), "{e}");
    let e = err(&["count.scale"]);
    assert!(e.contains("expected stage.param=value"), "{e}");
    let e = err(&["dataset.root=elsewhere"]);
    assert!(e.contains("[dataset] is not a stage"), "{e}");
    // Errors in the file keep their file positions.
    let e = f.varied("[count]\nscale = \"x\"\n", &["judge.all=true"], None).unwrap_err();
    assert!(e.contains("p.toml:4:9"), "{e}");
}

/// Builds an instance by a run of the same graph up to it, without a record (as the binary's
/// child process does), in a thread.
struct InThread<'a> {
    graph: &'a Graph,
    rt: Runtime,
}

impl runner::Launcher for InThread<'_> {
    fn build(&self, instance: &str, force: bool) -> anyhow::Result<()> {
        let force = force.then_some(instance);
        let opts = RunOptions { until: Some(instance), force, record: false, ..RunOptions::new(&crate::events::Silent) };
        runner::run(self.graph, &registry(), &self.rt, &opts).map(|_| ())
    }
}

#[test]
fn a_sweep_expands_into_named_instances_that_share_what_is_upstream() {
    let f = Fixture::new();
    let text = "[count]\nscale = 1\n[judge]\n[sweep.s]\ncount.scale = [2, 3]\ncount.nested.depth = [0, 1]\n[sweep.pair]\nmode = \"list\"\ncount.scale = [2, 3]\ncount.nested.depth = [7, 8]\n";
    // Without --sweep: the file's graph, the sweeps checked but not added.
    let plain = f.varied(text, &[], None).unwrap();
    assert_eq!(names(&plain), ["list", "count", "judge"]);
    let g = f.varied(text, &[], Some("s")).unwrap();
    let sweep = g.sweep.clone().unwrap();
    assert_eq!(sweep.points.len(), 4, "a grid of 2 × 2");
    assert_eq!(sweep.points[1].label, "s-2");
    assert_eq!(sweep.points[1].values, [("count.scale".to_string(), "2".to_string()), ("count.nested.depth".to_string(), "1".to_string())]);
    assert_eq!(sweep.points[1].instances, [("count".to_string(), "count.s-2".to_string()), ("judge".to_string(), "judge.s-2".to_string())].into());
    assert_eq!(g.node("judge.s-2").unwrap().inputs["model"], "count.s-2");
    assert_eq!(g.node("judge.s-2").unwrap().inputs["data"], "list", "the data is shared");
    // Each point is keyed as the file with its values written in.
    let keys = f.keys(&g);
    let written = f.keys(&f.graph("[count]\nscale = 2\n[count.nested]\ndepth = 1\n[judge]\n").unwrap());
    assert_eq!(keys["count.s-2"], written["count"]);
    assert_eq!(keys["judge.s-2"], written["judge"]);
    let list = f.varied(text, &[], Some("pair")).unwrap();
    assert_eq!(list.sweep.as_ref().unwrap().points.len(), 2, "a list pairs the i-th values");
    assert_eq!(list.node("count.pair-2").unwrap().params["nested"]["depth"], 8);
    // Running it: one list for every point, the others built once each.
    let launcher = InThread { graph: &g, rt: f.rt() };
    let ran = runner::run(&g, &registry(), &f.rt(), &RunOptions { jobs: 3, launcher: Some(&launcher), ..RunOptions::new(&crate::events::Silent) }).unwrap().record;
    assert!(ran.stages.iter().all(|s| !s.cached), "built by the launcher, recorded as built in this run");
    assert_eq!(fs_count(&f.rt().artifacts.join("runs/p")), 2, "one record (and latest.json): none from the launched builds");
    let stages: Vec<&str> = ran.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages.iter().filter(|s| s.starts_with("list")).count(), 1, "{stages:?}");
    assert_eq!(stages.len(), 1 + 4 * 2, "{stages:?}: the base count and judge do not run");
    assert_eq!(ran.sweep, g.sweep);
    assert!(ran.stages.iter().all(|s| s.params.is_some() && s.upstream.is_some() && s.version == Some(1)));
    let sequential = tempfile::tempdir().unwrap();
    let rt = Runtime { artifacts: sequential.path().to_path_buf(), ..f.rt() };
    let one = runner::run(&g, &registry(), &rt, &RunOptions::new(&crate::events::Silent)).unwrap().record;
    let keys = |r: &maskflow_core::runs::RunRecord| r.stages.iter().map(|s| (s.stage.clone(), s.key.clone())).collect::<Vec<_>>();
    assert_eq!(keys(&one), keys(&ran), "--jobs changes no key, and the record keeps graph order");
    // No memory to spare for a second instance: one at a time, the same run.
    let tight = tempfile::tempdir().unwrap();
    let rt = Runtime { artifacts: tight.path().to_path_buf(), ..f.rt() };
    let launcher = InThread { graph: &g, rt: rt.clone() };
    let opts = RunOptions { jobs: 3, job_memory: Some(u64::MAX), launcher: Some(&launcher), ..RunOptions::new(&crate::events::Silent) };
    assert_eq!(keys(&runner::run(&g, &registry(), &rt, &opts).unwrap().record), keys(&ran));
    // Run again: everything cached, nothing launched.
    let again = runner::run(&g, &registry(), &rt, &opts).unwrap().record;
    assert!(again.stages.iter().all(|s| s.cached));
    assert!(runner::run(&g, &registry(), &rt, &RunOptions { jobs: 2, ..RunOptions::new(&crate::events::Silent) }).is_err(), "no launcher, no parallel builds");
}

#[test]
fn a_bad_sweep_is_an_error_at_its_place_in_the_file() {
    let f = Fixture::new();
    let err = |sweep: &str, pick: Option<&str>| f.varied(&format!("[judge]\n{sweep}"), &[], pick).unwrap_err();
    let e = err("[sweep.s]\ncount.scael = [1, 2]\n", None);
    assert!(e.contains("p.toml:5:7") && e.contains("unknown field `scael`"), "{e}");
    let e = err("[sweep.s]\ncount.scale = [1, \"x\"]\n", None);
    assert!(e.contains("p.toml:5:19") && e.contains("invalid type"), "{e}");
    let e = err("[sweep.s]\ncount.scale = 2\n", None);
    assert!(e.contains("p.toml:5:15") && e.contains("expected a list of values"), "{e}");
    let e = err("[sweep.s]\nmode = \"list\"\ncount.scale = [1, 2]\ncount.nested.depth = [1]\n", None);
    assert!(e.contains("every list must have 2 values"), "{e}");
    let e = err("[sweep.s]\ncount.scale = [1]\n", Some("t"));
    assert!(e.contains("--sweep t: the file has no [sweep.t] (its sweeps: s)"), "{e}");
    let e = err("[sweep.s]\ncuont.scale = [1]\n", None);
    assert!(e.contains("p.toml:5:1") && e.contains("`cuont` is not a stage kind"), "{e}");
}

#[test]
fn parallel_jobs_stop_at_the_first_failure_and_keep_what_finished() {
    let f = Fixture::new();
    let g = f.varied("[judge]\n[sweep.s]\ncount.scale = [1, 13, 2]\n", &[], Some("s")).unwrap();
    let launcher = InThread { graph: &g, rt: f.rt() };
    let e = runner::run(&g, &registry(), &f.rt(), &RunOptions { jobs: 2, launcher: Some(&launcher), ..RunOptions::new(&crate::events::Silent) }).unwrap_err();
    assert_eq!(format!("{e:#}"), "[count.s-2]: [count.s-2]: stage count failed: scale 13 is unlucky");
    assert!(!f.rt().artifacts.join("runs").exists(), "no run record for a failed run");
    // What was built is kept: a run of the good points finds their counts cached.
    let good = f.varied("[judge]\n[sweep.s]\ncount.scale = [1, 2]\n", &[], Some("s")).unwrap();
    let launcher = InThread { graph: &good, rt: f.rt() };
    let ran = runner::run(&good, &registry(), &f.rt(), &RunOptions { jobs: 2, launcher: Some(&launcher), ..RunOptions::new(&crate::events::Silent) }).unwrap().record;
    let cached: Vec<&str> = ran.stages.iter().filter(|s| s.cached).map(|s| s.stage.as_str()).collect();
    assert!(cached.contains(&"list") && cached.contains(&"count.s-1"), "{cached:?}");
}

fn fs_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|it| it.count()).unwrap_or(0)
}
