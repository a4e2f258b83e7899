//! A declared graph through the binary: two models (mobilenet_v2 with its offline ImageNet weights,
//! resnet18 from scratch) and three evals — the default one, the resnet's, and one over the whole
//! training folder — run, cache, and show in `maskflow graph`.


use crate::common::*;
use std::fs;

const GRAPH: &str = "name = \"two\"\n\n[dataset]\nroot = \"../data/synth\"\n\n[dataset.synth]\nseed = 3\nper_class = 12\n\n\
[index]\nvalid_pct = 0.25\n\n[prep]\nsize = 32\n\n\
[train]\narch = \"mobilenet_v2\"\npretrained = \"mobilenet_v2\"\nbatch_size = 8\nfrozen_epochs = 1\nunfrozen_epochs = 0\n\n\
[train.resnet]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 8\nfrozen_epochs = 1\nunfrozen_epochs = 1\n\n\
[eval]\n\n[eval.resnet]\n\n[eval.whole]\ndata = \"../data/synth\"\ninputs = { model = \"train.resnet\" }\n\n[export]\n";

#[test]
fn two_models_three_evals_run_cache_and_show_in_graph() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(d.path().join("pipelines/two.toml"), GRAPH).unwrap();
    let out = ok(d.path(), &["run", "pipelines/two.toml", "--device", "cpu"]);
    for (name, what) in [
        ("train  ", "mobilenet_v2 1 epochs"),
        ("train.resnet", "resnet18 2 epochs"),
        ("eval.resnet", "images of the validation split"),
        ("eval.whole", "28 images of"),
        ("export ", "bundle: model.pt"),
    ] {
        let at = out.find(name).unwrap_or_else(|| panic!("{name} did not run:\n{out}"));
        let summary = out[at..].lines().nth(1).unwrap_or_default();
        assert!(summary.contains(what), "{name}: {summary}\n{out}");
    }
    // The two evals of the resnet on different questions, the default eval on the mobilenet.
    let art = d.path().join("artifacts");
    assert_eq!(keys(&art, "train").len(), 2);
    assert_eq!(keys(&art, "eval").len(), 3);
    // index.whole / prep.whole are the pipeline's own index and prep (same folder, same params).
    assert_eq!(keys(&art, "index").len(), 1);
    assert_eq!(keys(&art, "prep").len(), 1);
    let again = ok(d.path(), &["run", "pipelines/two.toml", "--device", "cpu"]);
    assert!(again.contains("10 stage(s), 10 cached"), "{again}");

    let g = ok(d.path(), &["graph", "pipelines/two.toml"]);
    assert!(g.contains("pipeline two") && g.contains("10 stages"), "{g}");
    for line in ["eval.whole     eval", "train.resnet   train", "index.whole    index", "prep.whole     prep"] {
        let l = g.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no {line:?} in\n{g}"));
        assert!(l.contains("cached") && l.contains("key "), "{l}");
    }
    assert!(g.contains("from data ← prep.whole, index ← index.whole, model ← train.resnet"), "{g}");
    assert!(g.contains("from metrics ← eval, model ← train"), "{g}");
    let dot = ok(d.path(), &["graph", "pipelines/two.toml", "--dot"]);
    assert!(dot.starts_with("digraph \"two\"") && dot.contains("\"train.resnet\" -> \"eval.whole\" [label=\"model\"]"), "{dot}");

    // A change to the resnet's params: only it and what reads it are stale.
    fs::write(d.path().join("pipelines/two.toml"), GRAPH.replace("unfrozen_epochs = 1", "unfrozen_epochs = 2")).unwrap();
    let st = ok(d.path(), &["status", "pipelines/two.toml"]);
    for name in ["index", "prep", "train", "eval", "export"] {
        let l = st.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap();
        assert!(l.contains("cached"), "{l}\n{st}");
    }
    for name in ["train.resnet", "eval.resnet", "eval.whole"] {
        let l = st.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap();
        assert!(l.contains("stale"), "{l}\n{st}");
    }
    assert!(st.contains("train.resnet.unfrozen_epochs 1 → 2"), "{st}");
}

#[test]
fn graph_errors_name_file_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    let p = d.path().join("pipelines/bad.toml");
    let base = "[dataset]\nroot = \"../data\"\n[train]\n";
    for (extra, want) in [
        ("[eval]\ninputs = { model = \"train.nope\" }\n", "bad.toml:5:20"),
        ("[eval]\ninputs = { model = \"prep\" }\n", "takes a trained_model, but `prep` (prep) makes a shard_set"),
        ("[eval]\ninputs = { modle = \"train\" }\n", "no input slot `modle`"),
        ("[evaluate]\n", "bad.toml:4:2: unknown stage kind `evaluate`"),
        ("[export.x]\ninputs = { metrics = \"train\" }\n", "takes a eval_result"),
    ] {
        fs::write(&p, format!("{base}{extra}")).unwrap();
        let err = fails(d.path(), &["graph", "pipelines/bad.toml"]);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}
