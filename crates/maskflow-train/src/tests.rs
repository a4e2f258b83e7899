//! The trainer end to end on fixture shards with a small network: it learns, determinism, resume
//! equivalence (the crate-private stop stands in for a kill; the binary's tests kill -9 for real),
//! damaged checkpoints, the lr finder's outputs.

use crate::fit::Interrupted;
use crate::{schedule::Lr, Inputs, Runtime, TrainParams};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[allow(unused_imports)]
use crate as maskflow_train;

/// A fixture shard set: 2 classes × 40 images at 32 px; returns (prep dir, classes).
fn prepared(dir: &Path) -> (PathBuf, Vec<String>) {
    use maskflow_contracts::fixtures;
    let prep_dir = dir.join("prep");
    let classes = vec!["with_mask".to_string(), "without_mask".to_string()];
    fixtures::shard_set(&prep_dir, &classes, 32, &fixtures::images(2, 40, 32, 7), 1024, 64).unwrap();
    (prep_dir, classes)
}

/// libtorch's random generator (dropout) and thread count are process-wide: one training at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn small_params() -> TrainParams {
    TrainParams {
        arch: maskflow_models::Arch::Resnet18,
        pretrained: "none".into(),
        batch_size: 16,
        frozen_epochs: 2,
        frozen_lr: Lr::One(1e-2),
        unfrozen_epochs: 2,
        unfrozen_lr: Lr::Slice([1e-4, 1e-3]),
        ..Default::default()
    }
}

fn runtime(ckpt: &Path, stop: Option<usize>) -> Runtime {
    // One libtorch thread: the test runner runs one test per core.
    Runtime { stop_after_epochs: stop, ..Runtime::new(Device::Cpu, 1, ckpt.to_owned(), false) }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join(maskflow_train::MODEL_FILE)).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn assert_identical(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs (max abs diff {})", (ta - tb).abs().max());
    }
}

#[test]
fn same_inputs_same_weights_and_a_killed_run_resumes_to_the_same_result() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = small_params();

    // Uninterrupted, twice: bit-identical weights and metrics.
    let out_a = d.path().join("a");
    std::fs::create_dir_all(&out_a).unwrap();
    let ra = maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck-a"), None), &out_a).unwrap();
    let out_b = d.path().join("b");
    std::fs::create_dir_all(&out_b).unwrap();
    let rb = maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck-b"), None), &out_b).unwrap();
    assert_eq!(ra.epochs.len(), 4);
    assert_identical(&weights(&out_a), &weights(&out_b));
    for (ma, mb) in ra.epochs.iter().zip(&rb.epochs) {
        assert_eq!((ma.train_loss_mean, ma.valid_loss, ma.accuracy), (mb.train_loss_mean, mb.valid_loss, mb.accuracy));
    }

    // Killed after 1 epoch (mid stage 1), then again after 2 more (mid stage 2), then finished.
    let ck = d.path().join("ck-c");
    let out_c = d.path().join("c");
    std::fs::create_dir_all(&out_c).unwrap();
    let err = maskflow_train::run(&inputs, &params, &runtime(&ck, Some(1)), &out_c).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some(), "{err}");
    let err = maskflow_train::run(&inputs, &params, &runtime(&ck, Some(2)), &out_c).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some(), "{err}");
    let rc = maskflow_train::run(&inputs, &params, &runtime(&ck, None), &out_c).unwrap();
    assert_eq!(
        rc.resumed_from.as_deref().map(|s| s.starts_with("unfrozen epoch 1")),
        Some(true),
        "{:?}",
        rc.resumed_from
    );
    assert_identical(&weights(&out_a), &weights(&out_c));
    // The metrics of the resumed run equal the uninterrupted run's, timings aside.
    // (Metrics of epochs before the kill went through the checkpoint's JSON: equal to the last bits.)
    assert_eq!(ra.epochs.len(), rc.epochs.len());
    for (a, c) in ra.epochs.iter().zip(&rc.epochs) {
        assert_eq!((&a.phase, a.epoch), (&c.phase, c.epoch));
        for (x, y) in [
            (a.train_loss_ema, c.train_loss_ema),
            (a.train_loss_mean, c.train_loss_mean),
            (a.valid_loss, c.valid_loss),
            (a.accuracy, c.accuracy),
        ] {
            assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{a:?} vs {c:?}");
        }
    }

    // A different seed gives different weights (the check above can fail).
    let out_d = d.path().join("d");
    std::fs::create_dir_all(&out_d).unwrap();
    let other = TrainParams { seed: 43, frozen_epochs: 1, unfrozen_epochs: 0, ..small_params() };
    maskflow_train::run(&inputs, &other, &runtime(&d.path().join("ck-d"), None), &out_d).unwrap();
    let (wa, wd) = (weights(&out_a), weights(&out_d));
    assert!(wa.iter().zip(&wd).any(|((_, a), (_, b))| !a.equal(b)));

    // Outputs of a finished run.
    for f in [maskflow_train::METRICS_FILE, "train_config.json", maskflow_train::CURVES_FILE] {
        assert!(out_a.join(f).is_file(), "{f}");
    }
    let lines = std::fs::read_to_string(out_a.join(maskflow_train::METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 4);
}

#[test]
fn lr_finder_sweeps_upward_and_writes_its_csv_and_plot() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let mut params = small_params();
    params.lr_find.iterations = 30;
    let out = d.path().join("lr");
    let r = maskflow_train::lr_find_only(&inputs, &params, &runtime(&d.path().join("ck"), None), &out).unwrap();
    assert!(!r.lrs.is_empty() && r.lrs.len() <= 30);
    assert!(r.lrs.windows(2).all(|w| w[0] < w[1]));
    // Every recorded point is finite except possibly the one that stopped the sweep.
    let n = r.smoothed_losses.len();
    assert!(r.smoothed_losses[..n - 1].iter().all(|l| l.is_finite()), "{:?}", r.smoothed_losses);
    assert!((r.lrs[0] - 1e-7).abs() < 1e-20, "the sweep starts at start_lr");
    let csv = std::fs::read_to_string(out.join(maskflow_train::LR_FIND_CSV)).unwrap();
    assert_eq!(csv.lines().count(), r.lrs.len() + 1);
    assert!(out.join(maskflow_train::LR_FIND_PNG).is_file());
}

#[test]
fn fixed_body_stage_one_resumes_to_the_same_weights() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = TrainParams {
        frozen_mode: maskflow_train::FrozenMode::FixedBody,
        fixed_body_copies: 1,
        body_batchnorm: maskflow_train::BodyBatchNorm::Fixed,
        ..small_params()
    };
    let out_a = d.path().join("a");
    std::fs::create_dir_all(&out_a).unwrap();
    let ra = maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck-a"), None), &out_a).unwrap();
    assert_eq!(ra.epochs.iter().filter(|m| m.phase == "frozen").count(), 2);
    let ck = d.path().join("ck-b");
    let out_b = d.path().join("b");
    std::fs::create_dir_all(&out_b).unwrap();
    let err = maskflow_train::run(&inputs, &params, &runtime(&ck, Some(1)), &out_b).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some(), "{err}");
    maskflow_train::run(&inputs, &params, &runtime(&ck, None), &out_b).unwrap();
    assert_identical(&weights(&out_a), &weights(&out_b));
    // The fixed body's BatchNorm statistics are never updated (body in eval mode, stage 2 with
    // body_batchnorm = fixed): a randomly initialised body keeps its zero running means.
    let only_head = TrainParams { unfrozen_epochs: 0, ..params.clone() };
    let out_c = d.path().join("c");
    std::fs::create_dir_all(&out_c).unwrap();
    maskflow_train::run(&inputs, &only_head, &runtime(&d.path().join("ck-c"), None), &out_c).unwrap();
    let wc = weights(&out_c);
    let body_bn_mean = wc.iter().find(|(n, _)| n == "bn1.running_mean").unwrap();
    assert_eq!(body_bn_mean.1.abs().sum(tch::Kind::Float).double_value(&[]), 0.0, "running stats untouched");
}

#[test]
fn a_streamed_training_split_trains_deterministically_and_refuses_oversampling() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = TrainParams {
        data: maskflow_train::DataMode::Stream,
        shuffle_buffer: 24,
        frozen_epochs: 1,
        unfrozen_epochs: 1,
        ..small_params()
    };
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out = d.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let r =
            maskflow_train::run(&inputs, &params, &runtime(&d.path().join(format!("ck-{name}")), None), &out).unwrap();
        assert_eq!(r.epochs.len(), 2);
        assert!(r.epochs.iter().all(|m| m.train_loss_mean.is_finite() && m.valid_loss.is_finite()));
        runs.push(weights(&out));
    }
    assert_identical(&runs[0], &runs[1]);
    // The streamed order is not the in-memory one: the same run in memory trains differently.
    let in_memory = TrainParams { data: maskflow_train::DataMode::Memory, ..params.clone() };
    let out = d.path().join("m");
    std::fs::create_dir_all(&out).unwrap();
    maskflow_train::run(&inputs, &in_memory, &runtime(&d.path().join("ck-m"), None), &out).unwrap();
    let m = weights(&out);
    assert!(m.iter().zip(&runs[0]).any(|((_, a), (_, b))| !a.equal(b)));

    let oversample = TrainParams { balance: maskflow_train::Balance::Oversample, ..params };
    let err = maskflow_train::run(&inputs, &oversample, &runtime(&d.path().join("ck-o"), None), &out).unwrap_err();
    assert!(err.to_string().contains("oversample"), "{err}");
}

#[test]
fn a_small_run_learns_well_above_chance() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = TrainParams { frozen_epochs: 3, unfrozen_epochs: 2, ..small_params() };
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let r = maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck"), None), &out).unwrap();
    // 16 validation images of two classes: chance is 0.5.
    assert_eq!(r.valid_images, 16);
    assert!(r.accuracy >= 0.9, "accuracy {} after {:?}", r.accuracy, r.epochs.iter().map(|m| m.accuracy).collect::<Vec<_>>());
    assert!(r.epochs.last().unwrap().train_loss_mean < r.epochs[0].train_loss_mean, "{:?}", r.epochs);
}

/// bf16 mixed precision: it learns as fp32 does, it is as deterministic, the saved weights stay
/// fp32, and the numbers differ from fp32's (the autocast region is really entered).
#[test]
fn bf16_mixed_learns_deterministically_with_fp32_weights() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let mixed = TrainParams { frozen_epochs: 3, unfrozen_epochs: 2, precision: crate::TrainPrecision::Bf16Mixed, ..small_params() };
    let train = |params: &TrainParams, name: &str| {
        let out = d.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let r = maskflow_train::run(&inputs, params, &runtime(&d.path().join(format!("ck-{name}")), None), &out).unwrap();
        (r, weights(&out))
    };
    let (ra, wa) = train(&mixed, "a");
    let (_, wb) = train(&mixed, "b");
    assert_identical(&wa, &wb);
    assert!(wa.iter().all(|(_, t)| t.kind() == tch::Kind::Float), "the saved weights are fp32");
    assert!(ra.accuracy >= 0.9, "accuracy {} after {:?}", ra.accuracy, ra.epochs.iter().map(|m| m.accuracy).collect::<Vec<_>>());
    let (_, w32) = train(&TrainParams { precision: crate::TrainPrecision::Fp32, ..mixed.clone() }, "fp32");
    assert!(wa.iter().zip(&w32).any(|((_, a), (_, b))| !a.equal(b)), "bf16-mixed trained exactly the fp32 weights");
}

#[test]
fn a_damaged_checkpoint_is_not_trusted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = TrainParams { frozen_epochs: 2, unfrozen_epochs: 0, ..small_params() };
    let out_a = d.path().join("a");
    std::fs::create_dir_all(&out_a).unwrap();
    maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck-a"), None), &out_a).unwrap();

    // Killed after one epoch; then one byte of the checkpoint's tensors flips (same size).
    let ck = d.path().join("ck-b");
    let out_b = d.path().join("b");
    std::fs::create_dir_all(&out_b).unwrap();
    let err = maskflow_train::run(&inputs, &params, &runtime(&ck, Some(1)), &out_b).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some(), "{err}");
    let state = std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "safetensors")).unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    // The rerun starts over instead of resuming from damaged weights, and still ends where an
    // uninterrupted run ends.
    let r = maskflow_train::run(&inputs, &params, &runtime(&ck, None), &out_b).unwrap();
    assert_eq!(r.resumed_from, None);
    assert_identical(&weights(&out_a), &weights(&out_b));
}

#[test]
fn the_key_covers_every_train_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<crate::TrainStage>();
}

#[test]
fn a_run_stopped_after_any_epoch_resumes_to_the_same_weights() {
    // The binary's kill -9 test stops wherever the machine's load lets it: at the end of the
    // frozen phase as well as inside either phase. Every boundary resumes to the same weights.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let inputs = Inputs { prep_dir, classes, pretrained: None };
    let params = small_params();
    let whole = d.path().join("whole");
    std::fs::create_dir_all(&whole).unwrap();
    maskflow_train::run(&inputs, &params, &runtime(&d.path().join("ck-whole"), None), &whole).unwrap();
    // One run stopped after every epoch in turn (a stop counts the epochs of its own process):
    // after epoch 1, then resumed from 1 to 2, from 2 (the frozen phase's end) to 3, and from 3 to
    // the end. A resume that was not exact at any boundary would leave the final weights different.
    let (ck, out) = (d.path().join("ck"), d.path().join("out"));
    std::fs::create_dir_all(&out).unwrap();
    for epoch in 1..=3 {
        let err = maskflow_train::run(&inputs, &params, &runtime(&ck, Some(1)), &out).unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_some(), "stop after epoch {epoch}: {err}");
    }
    let r = maskflow_train::run(&inputs, &params, &runtime(&ck, None), &out).unwrap();
    assert!(r.resumed_from.is_some(), "the last run did not resume");
    assert_identical(&weights(&whole), &weights(&out));
}

/// Data parallelism: 2 ranks (processes of this test binary, gloo on loopback, each taking half of
/// every batch of 16) against 1 process with the whole batch, with the BatchNorm layers fixed and
/// no dropout (per-rank batch statistics and dropout masks are the part that differs by design):
/// after every optimizer step of a short run (frozen phase, then unfrozen), the weights equal within
/// 1e-5 relative (‖a − b‖ / ‖a‖ over all of them) and every element within 1e-4.
#[test]
fn two_ranks_train_the_weights_of_one_process() {
    use maskflow_torchext::dist::{GroupConfig, ProcessGroup, Rendezvous};
    const TEST: &str = "tests::two_ranks_train_the_weights_of_one_process";
    let params = TrainParams {
        arch: maskflow_models::Arch::MobilenetV2,
        head: maskflow_models::HeadConfig { width: 16, ..Default::default() },
        batch_size: 16,
        frozen_epochs: 1,
        unfrozen_epochs: 1,
        body_batchnorm: crate::BodyBatchNorm::Fixed,
        // Adam divides by √v + ε: with the default ε a gradient of ~1e-9 (early layers of a randomly
        // initialised body) becomes a full-size step, and the rounding of its sum a visible one.
        // A larger ε keeps the step linear in such gradients, so the comparison sees the gradients.
        eps: 1e-3,
        ..small_params()
    };
    let rank_runtime = |ckpt: &Path, log: &Path| Runtime { head_eval: true, step_log: Some(log.to_owned()), ..runtime(ckpt, None) };
    if let Ok(rank) = std::env::var("MF_TEST_RANK") {
        let dir = PathBuf::from(std::env::var("MF_TEST_DIR").unwrap());
        let (prep_dir, classes) = (dir.join("prep"), vec!["with_mask".to_string(), "without_mask".to_string()]);
        let cfg = GroupConfig {
            rendezvous: Rendezvous::File(dir.join("store")),
            rank: rank.parse().unwrap(),
            world: 2,
            interface: Some("lo".into()),
            timeout: std::time::Duration::from_secs(120),
        };
        let group = std::sync::Arc::new(std::sync::Mutex::new(ProcessGroup::new(&cfg).unwrap()));
        let log = dir.join("steps-2");
        std::fs::create_dir_all(&log).unwrap();
        let rt = Runtime { group: Some(group), ..rank_runtime(&dir.join(format!("ck-{rank}")), &log) };
        let out = dir.join(format!("out-{rank}"));
        std::fs::create_dir_all(&out).unwrap();
        crate::run(&Inputs { prep_dir, classes, pretrained: None }, &TrainParams { world_size: 2, ..params }, &rt, &out).unwrap();
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let (prep_dir, classes) = prepared(d.path());
    let log1 = d.path().join("steps-1");
    std::fs::create_dir_all(&log1).unwrap();
    let out1 = d.path().join("out-single");
    std::fs::create_dir_all(&out1).unwrap();
    crate::run(&Inputs { prep_dir, classes, pretrained: None }, &params, &rank_runtime(&d.path().join("ck-single"), &log1), &out1).unwrap();

    let exe = std::env::current_exe().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            std::process::Command::new(&exe)
                .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
                .env("MF_TEST_RANK", r.to_string())
                .env("MF_TEST_DIR", d.path())
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, mut c) in ranks.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "rank {r} failed");
    }
    let steps = |dir: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let (one, two) = (steps(&log1), steps(&d.path().join("steps-2")));
    assert_eq!(one.len(), 8, "4 steps per epoch (64 training images, batches of 16), 2 epochs");
    assert_eq!(one.len(), two.len(), "the same number of optimizer steps");
    let (mut worst_rel, mut worst_abs) = (0.0f64, 0.0f64);
    for (k, (a, b)) in one.iter().zip(&two).enumerate() {
        let read = |p: &Path| {
            let mut t = Tensor::read_safetensors(p).unwrap();
            t.sort_by(|x, y| x.0.cmp(&y.0));
            t
        };
        let (ta, tb) = (read(a), read(b));
        assert_eq!(ta.len(), tb.len());
        let (mut diff2, mut norm2) = (0.0f64, 0.0f64);
        for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
            assert_eq!(na, nb);
            let d = (xa - xb).to_kind(tch::Kind::Double);
            diff2 += d.square().sum(tch::Kind::Double).double_value(&[]);
            norm2 += xa.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double).double_value(&[]);
            // Element by element too, a looser bound: Adam's step divides by √v + ε, so where a
            // gradient is near 0 its rounding moves one element more than the whole (measured:
            // the whole within 4e-7, single elements up to 4e-5 after 8 steps).
            let abs = d.abs().max().double_value(&[]);
            assert!(abs <= 1e-4, "step {}: an element of {na} differs by {abs:e}", k + 1);
            worst_abs = worst_abs.max(abs);
        }
        let rel = (diff2 / norm2).sqrt();
        assert!(rel <= 1e-5, "step {}: the weights differ by ‖a − b‖/‖a‖ = {rel:e}", k + 1);
        worst_rel = worst_rel.max(rel);
    }
    // The weights did change over the run (a test of equality between two frozen models would pass
    // trivially).
    let (first, last) = (Tensor::read_safetensors(&one[0]).unwrap(), Tensor::read_safetensors(&one[7]).unwrap());
    let moved = first.iter().zip(&last).filter(|((_, a), (_, b))| !a.equal(b)).count();
    assert!(moved > 10, "only {moved} tensors changed over 8 steps");
    eprintln!("two ranks vs one process over 8 steps: ‖a − b‖/‖a‖ ≤ {worst_rel:e}, every element within {worst_abs:e}");
}
