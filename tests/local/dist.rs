//! Data-parallel training through the binary: `maskflow run --world-size 2` trains with a second
//! rank it starts itself; a rank killed mid-run fails the run (non-zero, no artifact), and the
//! rerun resumes from the last checkpoint and finishes.

use crate::common::{command, keys, ok};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn pipeline(dir: &Path) {
    fs::create_dir_all(dir.join("pipelines")).unwrap();
    fs::write(
        dir.join("pipelines/d.toml"),
        "name = \"d\"\n[dataset]\nroot = \"../data/synth\"\n[dataset.synth]\nseed = 5\nper_class = 24\n\
         [index]\nvalid_pct = 0.25\n[prep]\nsize = 32\n\
         [train]\narch = \"resnet18\"\npretrained = \"none\"\nbatch_size = 8\nfrozen_epochs = 2\nunfrozen_epochs = 3\n",
    )
    .unwrap();
}

/// The pid of the rank-worker process whose command line names `dir`.
fn rank_worker_in(dir: &Path) -> Option<i32> {
    let needle = dir.to_string_lossy().into_owned();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("rank-worker") && cmd.contains(&needle)).then_some(pid)
    })
}

fn epochs_checkpointed(artifacts: &Path) -> usize {
    let dir = artifacts.join("train/.checkpoints");
    fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("progress.json")).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["metrics"].as_array().map_or(0, |a| a.len()))
        .max()
        .unwrap_or(0)
}

#[test]
fn two_ranks_train_and_a_killed_rank_fails_the_run_which_then_resumes() {
    let d = tempfile::tempdir().unwrap();
    pipeline(d.path());
    let args = ["run", "pipelines/d.toml", "--device", "cpu", "--threads", "1", "--world-size", "2", "--until", "train", "--artifacts"];
    let mut child = command()
        .current_dir(d.path())
        .args(args)
        .arg(d.path().join("art"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let killed = loop {
        if epochs_checkpointed(&d.path().join("art")) >= 1 {
            if let Some(pid) = rank_worker_in(d.path()) {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                break true;
            }
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(300) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(killed, "the run ended before rank 1 could be killed after a checkpoint");
    // Rank 0 notices at its next collective and fails, leaving no train artifact.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a run whose rank died succeeded:\n{err}");
    assert!(err.contains("all-reducing the gradients") || err.contains("broadcast"), "the error names the collective:\n{err}");
    assert!(keys(&d.path().join("art"), "train").is_empty(), "a failed run left a train artifact");

    let art = d.path().join("art");
    let mut a: Vec<&str> = args.to_vec();
    a.push(art.to_str().unwrap());
    let out = ok(d.path(), &a);
    assert!(out.contains("resumed from frozen epoch 1"), "the rerun resumes from the checkpoint:\n{out}");
    assert_eq!(keys(&art, "train").len(), 1, "{out}");
    assert!(rank_worker_in(d.path()).is_none(), "rank 1 is still running after the run ended");
}

#[test]
fn a_world_size_that_does_not_divide_the_batch_is_refused_before_training() {
    let d = tempfile::tempdir().unwrap();
    pipeline(d.path());
    let out = crate::common::fails(d.path(), &["run", "pipelines/d.toml", "--device", "cpu", "--threads", "1", "--world-size", "3", "--until", "train"]);
    assert!(out.contains("batch_size 8 must be a multiple of world_size 3"), "{out}");
}
