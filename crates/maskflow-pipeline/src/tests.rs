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
        let (rec, _) = runner::run(g, &registry(), &self.rt(), &RunOptions { force, until, events: &crate::events::Silent, shared: None, executor: None, split_hint: Default::default() }).unwrap();
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
