//! The chaos suite: several maskflow processes share one S3 store (moto on loopback) and run a
//! synthetic pipeline (index and prep fanned out or not, train with checkpoints) while faults are
//! injected — SIGKILLs at failpoints and at random times, an injected panic inside a stage, a
//! concurrent `gc --grace 0s --apply`, and a process that plays a newer maskflow (every record
//! format one major higher: `MASKFLOW_TEST_FUTURE_FORMATS=1`, test builds only). After every round
//! the store's invariants are checked:
//!
//! 1. every manifest in the store verifies: every blob present, of its size, hashing to its name;
//! 2. no manifest was deleted or replaced (no process replaces one it cannot read, and nothing here
//!    is corrupt, so none may change at all);
//! 3. every artifact's key equals the key recomputed from its manifest;
//! 4. no process outlived its deadline, and every run no fault touched succeeded;
//!
//! and at the end, after one clean run, a fresh machine's run is all pulled (or, for keys whose
//! shared manifest is of the newer format, built here as the protocol says) and byte-identical to
//! a one-process reference built without any store; as the newer maskflow, it is all pulled.
//!
//! Seeded: `CHAOS_SEED` (default: the round count), `CHAOS_ROUNDS` (default 3; `just chaos N`).
//! A failure prints the seed and the event log. The counts of kills, panics, gc passes and
//! version-skewed runs are printed at the end.


use crate::common::s3::*;
use crate::common::*;
use maskflow_core::rng::SplitMix64;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(240);
const FAILPOINTS: [&str; 4] = ["publish-before-manifest", "task-before-record", "checkpoint-pushed", "stage-run"];

#[derive(Debug, Clone)]
enum Fault {
    None,
    KillAt(&'static str),
    PanicInStage,
    KillAfter(Duration),
    NewerMaskflow,
    /// A `KillAfter` that was carried out.
    Killed,
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    valid_pct: f64,
    size: u32,
    seed: u64,
}

/// The configuration the final check runs.
const FINAL: Variant = Variant { valid_pct: 0.25, size: 32, seed: 40 };

#[derive(Default, Debug)]
struct Counts {
    runs: usize,
    kills_at_failpoints: usize,
    random_kills: usize,
    panics: usize,
    gc_passes: usize,
    version_skewed: usize,
    failed_runs: usize,
}

struct Chaos {
    seed: u64,
    url: String,
    root: PathBuf,
    log: Vec<String>,
    counts: Counts,
}

impl Chaos {
    fn fail(&self, what: String) -> ! {
        panic!("chaos invariant violated: {what}\nseed {} (rerun: CHAOS_SEED={} CHAOS_ROUNDS=… just chaos, or cargo test --test servers chaos)\nevent log:\n{}", self.seed, self.seed, self.log.join("\n"));
    }

    /// The pipeline of a round. Index and prep take a few configurations (so their keys repeat
    /// across rounds: reuse, waits on leases, fan-out now and then) and train a new seed nearly
    /// every round (so something is built, published and checkpointed in every round).
    fn machine(&self, name: &str, v: Variant) -> PathBuf {
        let dir = self.root.join(name);
        small_pipeline(&dir, "");
        let p = dir.join("pipelines/p.toml");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("size = 32", &format!("size = {}", v.size))
            .replace("valid_pct = 0.25", &format!("valid_pct = {}", v.valid_pct))
            .replace("[train]\n", &format!("[train]\nseed = {}\n", v.seed));
        fs::write(p, text).unwrap();
        dir
    }

    fn spawn(&self, dir: &Path, artifacts: &str, fault: &Fault, fan_out: bool) -> Child {
        let mut args = vec!["run", "pipelines/p.toml", "--device", "cpu", "--threads", "1", "--until", "train", "--lease-ttl", "6", "--store", &self.url, "--artifacts", artifacts];
        if fan_out {
            args.extend(["--executor", "local"]);
        }
        let mut cmd = command();
        s3_env(cmd.current_dir(dir).args(&args)).stdout(Stdio::null()).stderr(Stdio::piped());
        match fault {
            Fault::KillAt(point) => {
                cmd.env("MASKFLOW_FAILPOINT", point);
            }
            Fault::PanicInStage => {
                cmd.env("MASKFLOW_FAILPOINT", "stage-run").env("MASKFLOW_FAILPOINT_ACTION", "panic");
            }
            Fault::NewerMaskflow => {
                cmd.env("MASKFLOW_TEST_FUTURE_FORMATS", "1");
            }
            Fault::None | Fault::KillAfter(_) | Fault::Killed => {}
        }
        cmd.spawn().expect("maskflow starts")
    }

    /// Every manifest object in the store: path → bytes.
    fn manifests(&self) -> BTreeMap<String, Vec<u8>> {
        let r = remote(&self.url);
        r.list_objects()
            .unwrap()
            .into_iter()
            .filter(|o| o.ends_with("/manifest.json") && o.split('/').count() == 3)
            .map(|o| {
                let b = r.read(&o).unwrap().unwrap_or_default();
                (o, b)
            })
            .collect()
    }

    fn check(&self, before: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
        let r = remote(&self.url);
        let now = self.manifests();
        for (rel, bytes) in before {
            match now.get(rel) {
                None => self.fail(format!("{rel} was deleted")),
                Some(b) if b != bytes => self.fail(format!("{rel} was replaced")),
                Some(_) => {}
            }
        }
        // One listing gives every blob's presence and size; the blobs of manifests new since the
        // last check are also read and hashed (blobs are content-addressed and never rewritten
        // with other bytes, so a blob hashed once stays right while it is there).
        let listed: BTreeMap<String, u64> =
            r.list_sizes("cas").unwrap().into_iter().filter_map(|(o, n)| o.strip_prefix("cas/").map(|h| (h.to_string(), n))).collect();
        for (rel, bytes) in &now {
            // Read as JSON, whatever its format: the newer maskflow's have the same fields.
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_else(|e| self.fail(format!("{rel}: not JSON: {e}")));
            let spec = maskflow_core::store::StageSpec {
                stage: v["stage"].as_str().unwrap_or_default().to_string(),
                version: v["stage_version"].as_u64().unwrap_or(u64::MAX) as u32,
                params: v["params"].clone(),
                upstream: serde_json::from_value(v["upstream"].clone()).unwrap_or_else(|e| self.fail(format!("{rel}: upstream: {e}"))),
            };
            let key = rel.split('/').nth(1).unwrap();
            if spec.key() != key || v["key"].as_str() != Some(key) {
                self.fail(format!("{rel}: the key recomputed from the manifest is {}", spec.key()));
            }
            let new = !before.contains_key(rel);
            for f in v["files"].as_array().unwrap_or_else(|| self.fail(format!("{rel}: no files"))) {
                let (h, n) = (f["blake3"].as_str().unwrap(), f["bytes"].as_u64().unwrap());
                match listed.get(h) {
                    None => self.fail(format!("{rel}: blob {h} ({}) is missing", f["path"])),
                    Some(size) if *size != n => self.fail(format!("{rel}: blob {h} ({}) has {size} bytes, not {n}", f["path"])),
                    Some(_) if new => {
                        let blob = r.read(&format!("cas/{h}")).unwrap().unwrap_or_else(|| self.fail(format!("{rel}: blob {h} vanished")));
                        if blake3::hash(&blob).to_hex().as_str() != h {
                            self.fail(format!("{rel}: blob {h} ({}) does not hash to its name", f["path"]));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        now
    }

    fn round(&mut self, i: u64, rng: &mut SplitMix64, before: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
        let variant = Variant { valid_pct: *rng.pick(&[0.25, 0.3]), size: *rng.pick(&[32, 24, 28]), seed: rng.int(0, 999) as u64 };
        let mut procs: Vec<(String, Child, Fault, Instant)> = Vec::new();
        for p in 0..3 {
            let fault = match rng.int(0, 7) {
                0 | 1 => Fault::None,
                2 => Fault::KillAt(*rng.pick(&FAILPOINTS)),
                3 => Fault::PanicInStage,
                4 | 5 => Fault::KillAfter(Duration::from_millis(rng.int(500, 8000) as u64)),
                _ => Fault::NewerMaskflow,
            };
            let fan_out = rng.chance(0.5);
            let dir = self.machine(&format!("m{p}"), variant);
            let name = format!("round {i} proc {p} ({variant:?}, fan-out {fan_out}, {fault:?})");
            let child = self.spawn(&dir, &format!("art-r{i}"), &fault, fan_out);
            procs.push((name, child, fault, Instant::now()));
        }
        // A gc pass while they run.
        let gc_after = Duration::from_millis(rng.int(0, 4000) as u64);
        let gc_dir = self.root.join("m0");
        let mut gc: Option<Child> = None;
        let started = Instant::now();
        loop {
            if gc.is_none() && started.elapsed() >= gc_after {
                gc = Some(
                    s3_env(command().current_dir(&gc_dir).args(["gc", "--store", &self.url, "--grace", "0s", "--apply"]))
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
                self.counts.gc_passes += 1;
                self.log.push(format!("round {i}: gc --grace 0s --apply started at {:.1}s", gc_after.as_secs_f64()));
            }
            let mut running = 0;
            for (name, child, fault, t0) in procs.iter_mut() {
                if child.try_wait().unwrap().is_some() {
                    continue;
                }
                running += 1;
                if let Fault::KillAfter(d) = fault {
                    if t0.elapsed() >= *d {
                        let _ = child.kill();
                        self.log.push(format!("{name}: SIGKILL after {:.1}s", d.as_secs_f64()));
                        *fault = Fault::Killed;
                        self.counts.random_kills += 1;
                        continue;
                    }
                }
                if t0.elapsed() > DEADLINE {
                    let _ = child.kill();
                    self.fail(format!("{name} outlived its deadline of {}s", DEADLINE.as_secs()));
                }
            }
            let gc_running = gc.as_mut().is_some_and(|g| g.try_wait().unwrap().is_none());
            if running == 0 && gc.is_some() && !gc_running {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(g) = gc {
            let o = g.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            self.log.push(format!("round {i}: gc exited {:?}: {}", o.status.code(), text.lines().next().unwrap_or("")));
            if !o.status.success() && !text.contains("busy") {
                self.fail(format!("gc failed: {text}"));
            }
        }
        for (name, child, fault, t0) in procs {
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            self.log.push(format!("{name}: exit {:?} after {:.1}s; {last}", o.status.code(), t0.elapsed().as_secs_f64()));
            self.counts.runs += 1;
            match fault {
                Fault::KillAt(_) if err.contains("failpoint") => self.counts.kills_at_failpoints += 1,
                Fault::PanicInStage if err.contains("injected panic") => self.counts.panics += 1,
                Fault::NewerMaskflow => self.counts.version_skewed += 1,
                _ => {}
            }
            if !o.status.success() {
                self.counts.failed_runs += 1;
                // A run that no fault touched (a newer maskflow included, or a kill that came
                // after it finished) must succeed: waiting out dead leases, refusing newer
                // records and building around them are all part of the protocol.
                if matches!(fault, Fault::None | Fault::NewerMaskflow | Fault::KillAfter(_)) {
                    self.fail(format!("{name} failed with no fault injected: {err}"));
                }
            }
        }
        self.check(before)
    }
}

#[test]
fn many_processes_with_kills_panics_gc_and_a_newer_maskflow_keep_the_store_sound() {
    let rounds: u64 = std::env::var("CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(rounds);
    let d = tempfile::tempdir().unwrap();
    let mut chaos = Chaos { seed, url: store_url("chaos"), root: d.path().to_path_buf(), log: Vec::new(), counts: Counts::default() };
    let mut rng = SplitMix64::new(seed);
    // Generate the synthetic data once per machine folder before the clock starts.
    for p in 0..3 {
        let dir = chaos.machine(&format!("m{p}"), FINAL);
        ok(&dir, &["graph", "pipelines/p.toml"]);
    }
    let mut seen = BTreeMap::new();
    for i in 0..rounds {
        seen = chaos.round(i, &mut rng, &seen);
        eprintln!("chaos round {}/{rounds}: invariants hold ({} manifests in the store)", i + 1, seen.len());
    }

    // The reference: one process, no store (on the same machine: the index records its folder).
    let m0 = chaos.machine("m0", FINAL);
    let reference = m0.clone();
    ok(&reference, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "train", "--artifacts", "ref"]);
    let rref = record_in(&reference.join("ref"));
    // A clean run completes the store; a fresh machine then pulls (or, where the shared copy is a
    // newer maskflow's, builds here) and has the reference's bytes.
    let out = mf(&m0, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "train", "--store", &chaos.url, "--artifacts", "clean"]);
    if !out.status.success() {
        chaos.fail(format!("the clean run failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let timed = ["train/metrics.jsonl"];
    for (label, future) in [("current", false), ("newer", true)] {
        let artifacts = format!("fresh-{label}");
        let mut cmd = command();
        s3_env(cmd.current_dir(&m0).args(["run", "pipelines/p.toml", "--device", "cpu", "--until", "train", "--store", &chaos.url, "--artifacts", &artifacts]));
        if future {
            cmd.env("MASKFLOW_TEST_FUTURE_FORMATS", "1");
        }
        let o = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            chaos.fail(format!("the fresh {label} run failed: {text}"));
        }
        let rec = record_in(&m0.join(&artifacts));
        for kind in ["index", "prep", "train"] {
            let (key, pulled, _) = &rec[kind];
            if key != &rref[kind].0 {
                chaos.fail(format!("{label}: {kind} key {key} differs from the reference's"));
            }
            let newer_there = remote(&chaos.url)
                .read(&format!("{kind}/{key}/manifest.json"))
                .unwrap()
                .is_some_and(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()["format"] != 1);
            if !pulled && (future || !newer_there) {
                chaos.fail(format!("{label}: {kind} was not pulled:\n{text}"));
            }
            let (a, b) = (files(&m0.join(&artifacts).join(kind).join(key)), files(&reference.join("ref").join(kind).join(key)));
            if a.keys().collect::<Vec<_>>() != b.keys().collect::<Vec<_>>() {
                chaos.fail(format!("{label}: {kind} has other files than the reference"));
            }
            for (p, bytes) in &a {
                let same = match format!("{kind}/{p}").as_str() {
                    f if timed.contains(&f) => true,
                    // They record the folder the index was made from: another machine's, when pulled.
                    "index/dataset.json" | "index/summary.json" => {
                        let without_root = |b: &[u8]| {
                            let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
                            v.as_object_mut().unwrap().remove("root");
                            v
                        };
                        without_root(bytes) == without_root(&b[p])
                    }
                    _ => *bytes == b[p],
                };
                if !same {
                    chaos.fail(format!("{label}: {kind}/{p} differs from the reference"));
                }
            }
        }
    }
    chaos.check(&seen);
    let c = &chaos.counts;
    println!(
        "chaos: seed {seed}, {rounds} round(s): {} runs ({} failed, as faults make them), {} kills at failpoints, {} random kills, {} panics, {} gc passes, {} version-skewed runs; 0 invariant violations",
        c.runs, c.failed_runs, c.kills_at_failpoints, c.random_kills, c.panics, c.gc_passes, c.version_skewed
    );
    for l in &chaos.log {
        println!("  {l}");
    }
}
