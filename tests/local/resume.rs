//! kill -9 through the binary: a training run killed after an epoch's checkpoint resumes when the
//! pipeline runs again, and ends with the weights of an uninterrupted run — with the pixels in
//! memory and streamed from the shards. Plus the production configuration at a small size.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn pipeline(dir: &Path, data_mode: &str) {
    fs::create_dir_all(dir.join("pipelines")).unwrap();
    fs::write(
        dir.join("pipelines/r.toml"),
        format!(
            "name = \"r\"\n[dataset]\nroot = \"../data/synth\"\n[dataset.synth]\nseed = 4\nper_class = 40\n\
             [index]\nvalid_pct = 0.25\n[prep]\nsize = 32\nrow_group_rows = 8\n\
             [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 8\nfrozen_epochs = 2\nunfrozen_epochs = 2\n\
             data = \"{data_mode}\"\nshuffle_buffer = 16\n"
        ),
    )
    .unwrap();
}

fn model_bytes(art: &Path) -> Vec<u8> {
    let k = &keys(art, "train")[0];
    fs::read(art.join("train").join(k).join("model.safetensors")).unwrap()
}

/// Starts `maskflow run`, kills it (SIGKILL) once a checkpoint with at least one epoch exists.
fn run_and_kill(dir: &Path) -> bool {
    let mut child = command()
        .current_dir(dir)
        .args(["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "killed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpts = dir.join("killed/train/.checkpoints");
    let started = Instant::now();
    loop {
        let progressed = fs::read_dir(&ckpts).ok().into_iter().flatten().flatten().any(|e| {
            fs::read_to_string(e.path().join("progress.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["epochs_done"].as_u64().unwrap_or(0) >= 1 || v["phase"] == "unfrozen")
        });
        if progressed {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(300) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn killed_run_resumes_to_the_uninterrupted_weights(mode: &str) {
    let d = tempfile::tempdir().unwrap();
    pipeline(d.path(), mode);
    ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--until", "prep"]);
    assert!(run_and_kill(d.path()), "the run ended before a checkpoint could be killed");
    assert!(keys(&d.path().join("killed"), "train").is_empty(), "a killed run must leave no train artifact");
    let out = ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "killed"]);
    assert!(out.contains("(resumed from"), "{out}");
    ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "clean"]);
    if model_bytes(&d.path().join("killed")) != model_bytes(&d.path().join("clean")) {
        // Where the two runs parted: the resume point and each epoch's figures side by side.
        let resumed = out.lines().find(|l| l.contains("resum")).unwrap_or("?");
        let metrics = |a: &str| {
            let art = d.path().join(a);
            fs::read_to_string(art.join("train").join(&keys(&art, "train")[0]).join("metrics.jsonl")).unwrap_or_default()
        };
        // Tell a resume bug from a machine where training is not repeatable across processes:
        // the same run again, split like the resumed one (prep in one process, train in another).
        ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "again", "--until", "prep"]);
        ok(d.path(), &["run", "pipelines/r.toml", "--device", "cpu", "--artifacts", "again"]);
        let again = model_bytes(&d.path().join("again")) == model_bytes(&d.path().join("clean"));
        panic!(
            "{mode}: resumed weights differ\n{resumed}\nkilled+resumed:\n{}\nclean:\n{}\nanother uninterrupted run (train in its own process) {} the clean one:\n{}",
            metrics("killed"),
            metrics("clean"),
            if again { "equals" } else { "ALSO differs from" },
            metrics("again")
        );
    }
    // Finished: the checkpoints are gone.
    let left = fs::read_dir(d.path().join("killed/train/.checkpoints")).map(|it| it.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn kill_9_then_resume_in_memory() {
    killed_run_resumes_to_the_uninterrupted_weights("memory");
}

#[test]
fn kill_9_then_resume_streamed() {
    killed_run_resumes_to_the_uninterrupted_weights("stream");
}

#[test]
fn the_production_configuration_runs_at_a_small_size() {
    // pipelines/facemask.toml's [train] (mobilenet_v2 with its ImageNet weights, fixed-body frozen
    // phase with fixed BatchNorm, bf16 inference) with lr = "find", on 64-px synthetic faces.
    let d = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/facemask.toml")).unwrap();
    let train = text.split("[train]").nth(1).unwrap().split("\n[").next().unwrap();
    assert!(train.contains("frozen_mode = \"fixed_body\"") && train.contains("inference_precision = \"bf16\""), "{train}");
    let train = train
        .replace("frozen_epochs = 3", "frozen_epochs = 1")
        .replace("unfrozen_epochs = 2", "unfrozen_epochs = 1")
        .replace("frozen_lr = 3e-3", "frozen_lr = \"find\"");
    fs::create_dir_all(d.path().join("pipelines")).unwrap();
    fs::write(
        d.path().join("pipelines/prod.toml"),
        format!(
            "[dataset]\nroot = \"../data/synth\"\n[dataset.synth]\nseed = 5\nper_class = 20\n[prep]\nsize = 64\n\
             [train]{train}\nbatch_size = 16\n[train.lr_find]\niterations = 12\n[eval]\n[export]\n"
        ),
    )
    .unwrap();
    let out = ok(d.path(), &["run", "pipelines/prod.toml", "--device", "cpu"]);
    assert!(out.contains("mobilenet_v2 2 epochs"), "{out}");
    assert!(out.contains("export  built"), "{out}");
    let art = d.path().join("artifacts");
    let report: serde_json::Value = serde_json::from_slice(
        &fs::read(art.join("train").join(&keys(&art, "train")[0]).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let lr = report["report"]["lr_found"].as_f64().expect("lr = \"find\" found a rate");
    assert!(lr > 1e-7 && lr < 10.0, "{lr}");
    assert!(art.join("train").join(&keys(&art, "train")[0]).join("lr_find.png").is_file());
}
