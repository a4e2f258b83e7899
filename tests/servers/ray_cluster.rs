//! Index and prep on a real Ray cluster: a head and two worker nodes on loopback
//! (scripts/ray-cluster.py; PyPI `ray==2.60.0`, installed by `scripts/bootstrap.sh --ray`, which
//! `just test` runs), tasks submitted shuffled and twice each, one killed midway and retried by Ray,
//! the store a real S3 server (moto). The artifacts must be byte-identical to one machine's.


use crate::common::s3::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

/// A two-worker Ray cluster on loopback, stopped when this value is dropped (the script also stops
/// it by itself when this test process ends, or after 15 minutes).
struct RayCluster {
    child: std::process::Child,
    address: String,
}

impl RayCluster {
    fn start() -> RayCluster {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python())
            .arg(root.join("scripts/ray-cluster.py"))
            .args(["--nodes", "2", "--cpus-per-node", "1", "--max-seconds", "900"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", python().display()));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(
            line.trim().starts_with("127.0.0.1:"),
            "the Ray cluster did not start (is ray installed? scripts/bootstrap.sh --ray): {line:?}"
        );
        RayCluster { child, address: line.trim().to_string() }
    }
}

impl Drop for RayCluster {
    /// SIGTERM (the script shuts the cluster down), then wait: no Ray process outlives the test.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn one_machine(dir: &Path) -> std::collections::BTreeMap<String, (String, bool, bool)> {
    mf_ok(dir, &["run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--artifacts", "one-machine"]);
    record_in(&dir.join("one-machine"))
}

#[test]
fn index_and_prep_on_a_two_node_ray_cluster_are_byte_identical_to_one_machine() {
    let cluster = RayCluster::start();
    let address = cluster.address.clone();
    let d = tempfile::tempdir().unwrap();
    let dir = machine(d.path(), "m", "");
    let one = one_machine(&dir);
    let url = store_url("ray");
    let once = d.path().join("killed-once");
    let out = s3_env(command().current_dir(&dir).args([
        "run", "pipelines/p.toml", "--device", "cpu", "--until", "prep", "--store", &url,
        "--executor", "ray", "--ray-address", &address, "--task-items", "4",
    ]))
    .arg("--ray-python")
    .arg(python())
    .env("MASKFLOW_RAY_SHUFFLE", "7")
    .env("MASKFLOW_RAY_DUPLICATE", "1")
    .env("MASKFLOW_FAILPOINT", "task-before-record")
    .env("MASKFLOW_FAILPOINT_ONCE", &once)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(once.exists(), "one task was killed at the failpoint (and retried):\n{text}");
    let summaries: Vec<&str> = text.lines().filter(|l| l.starts_with("ray: ") && l.contains("task runs")).collect();
    assert_eq!(summaries.len(), 2, "index and prep each ran on Ray:\n{text}");
    for s in &summaries {
        assert!(s.contains("on 2 node(s)") && s.contains("0 failed"), "both worker nodes ran tasks: {s}");
    }
    let rec = record(&dir);
    for kind in ["index", "prep"] {
        assert_eq!(rec[kind].0, one[kind].0, "{kind}: same key");
        let (a, b) = (dir.join("one-machine").join(kind).join(&one[kind].0), dir.join("artifacts").join(kind).join(&one[kind].0));
        assert!(files(&a) == files(&b), "{kind}: the Ray-made artifact differs from the one-machine one");
        let m = |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap() };
        assert_eq!(m(&a)["files"], m(&b)["files"], "{kind}: manifests list the same files and blake3");
    }
}
