//! Data-parallel training from the command line: `maskflow run … --world-size N` (this process is
//! rank 0 and starts ranks 1…N-1 on this machine, meeting through a file store on loopback), or
//! `torchrun --nproc-per-node N --no-python maskflow run …` (torchrun's RANK, WORLD_SIZE,
//! MASTER_ADDR and MASTER_PORT; its agent serves the TCP store). Rank 0 runs the pipeline; the
//! other ranks wait for train stages to run with it (`maskflow_train::ranks`) and end with it.
//! The world size is written into every train instance's `world_size` before keys are computed.

use crate::session::Compute;
use anyhow::{bail, Context, Result};
use maskflow_torchext::dist::{GroupConfig, ProcessGroup, Rendezvous};
use maskflow_train::ranks::{self, RankMessage, SharedGroup};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a collective waits for the other ranks (a rank that dies is noticed at once, by its
/// closed connection; this bounds a rank that hangs). `MASKFLOW_DIST_TIMEOUT_S`, default 2 h: rank 0
/// may run other stages for a long time before a train stage needs the others.
fn timeout() -> Result<Duration> {
    match std::env::var("MASKFLOW_DIST_TIMEOUT_S") {
        Ok(v) => Ok(Duration::from_secs(v.parse().with_context(|| format!("MASKFLOW_DIST_TIMEOUT_S={v:?}: seconds"))?)),
        Err(_) => Ok(Duration::from_secs(7200)),
    }
}

/// This process's place in a run.
pub enum Role {
    /// One process (no group).
    Alone,
    /// Rank 0: runs the pipeline with the group; `children` are the ranks it started.
    Root { group: SharedGroup, world: usize, children: Vec<Child>, rendezvous_dir: Option<PathBuf> },
    /// Ranks 1…: wait for work from rank 0.
    Worker { group: SharedGroup },
}

/// The role from torchrun's environment, else from `--world-size` (starting the other ranks).
pub fn role(world_flag: Option<usize>, artifacts: &Path, compute: &Compute) -> Result<Role> {
    let timeout = timeout()?;
    if let Some(cfg) = GroupConfig::from_env(|k| std::env::var(k).ok(), timeout)? {
        if let Some(w) = world_flag.filter(|&w| w != cfg.world) {
            bail!("--world-size {w} disagrees with WORLD_SIZE={} from the launcher", cfg.world);
        }
        let world = cfg.world;
        let group = Arc::new(Mutex::new(ProcessGroup::new(&cfg).with_context(|| format!("joining {world} ranks as rank {}", cfg.rank))?));
        return Ok(if cfg.rank == 0 { Role::Root { group, world, children: vec![], rendezvous_dir: None } } else { Role::Worker { group } });
    }
    let world = world_flag.unwrap_or(1);
    if world == 0 {
        bail!("--world-size must be at least 1");
    }
    if world == 1 {
        return Ok(Role::Alone);
    }
    // A fresh rendezvous file for this run, in the store's scratch space.
    let dir = artifacts.join("tmp").join(format!("ranks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = dir.join("store");
    let exe = std::env::current_exe().context("finding this executable to start the other ranks")?;
    let mut children = Vec::new();
    for rank in 1..world {
        let child = Command::new(&exe)
            .arg("rank-worker")
            .arg("--rendezvous-file")
            .arg(&store)
            .args(["--rank", &rank.to_string(), "--world-size", &world.to_string()])
            .args(["--threads", &compute.threads.to_string(), "--device", &device_name(compute.device)])
            .spawn()
            .with_context(|| format!("starting rank {rank}: {}", exe.display()))?;
        children.push(child);
    }
    let cfg = GroupConfig { rendezvous: Rendezvous::File(store), rank: 0, world, interface: Some("lo".into()), timeout };
    match ProcessGroup::new(&cfg) {
        Ok(g) => Ok(Role::Root { group: Arc::new(Mutex::new(g)), world, children, rendezvous_dir: Some(dir) }),
        Err(e) => {
            stop(&mut children);
            Err(anyhow::Error::new(e).context(format!("joining {world} ranks as rank 0")))
        }
    }
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

fn stop(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Rank 0 after the pipeline: tells the others it is over (when the run went well) and waits for
/// them; when it failed, stops the ranks it started. A rank that failed fails the run.
pub fn finish(role: Role, outcome: Result<()>) -> Result<()> {
    let Role::Root { group, mut children, rendezvous_dir, .. } = role else { return outcome };
    if outcome.is_err() {
        stop(&mut children);
    } else {
        ranks::send(&group, &RankMessage::Done)?;
        for (i, c) in children.iter_mut().enumerate() {
            let status = c.wait().with_context(|| format!("waiting for rank {}", i + 1))?;
            if !status.success() {
                bail!("rank {} ended with {status}", i + 1);
            }
        }
    }
    if let Some(dir) = rendezvous_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    outcome
}

/// Ranks 1…: train stages from rank 0 until it says it is done.
pub fn work(group: SharedGroup, compute: &Compute) -> Result<()> {
    let rank = group.lock().map(|g| g.rank()).unwrap_or(0);
    let scratch = tempfile::tempdir().context("a scratch folder for this rank")?;
    loop {
        match ranks::receive(&group)? {
            RankMessage::Done => return Ok(()),
            RankMessage::Train(job) => {
                let device = match compute.device {
                    tch::Device::Cuda(_) => tch::Device::Cuda(local_rank().unwrap_or(rank)),
                    d => d,
                };
                let mut rt = maskflow_train::Runtime::new(device, compute.threads, job.checkpoint_dir.clone(), false);
                rt.group = Some(group.clone());
                maskflow_train::run(&job.inputs, &job.params, &rt, scratch.path()).with_context(|| format!("rank {rank}: training"))?;
            }
        }
    }
}

fn local_rank() -> Option<usize> {
    std::env::var("LOCAL_RANK").ok()?.parse().ok()
}

/// `maskflow rank-worker` (started by `run --world-size`): joins the group through the file.
pub fn rank_worker(rendezvous_file: &Path, rank: usize, world: usize, compute: &Compute) -> Result<()> {
    let cfg = GroupConfig {
        rendezvous: Rendezvous::File(rendezvous_file.to_path_buf()),
        rank,
        world,
        interface: Some("lo".into()),
        timeout: timeout()?,
    };
    let group = Arc::new(Mutex::new(ProcessGroup::new(&cfg).with_context(|| format!("joining {world} ranks as rank {rank}"))?));
    work(group, compute)
}
