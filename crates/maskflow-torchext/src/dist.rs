//! A c10d process group over gloo: how ranks meet ([`Rendezvous`]), and the three collectives data
//! parallelism needs — [`ProcessGroup::broadcast`] (the weights at the start),
//! [`ProcessGroup::allreduce_mean`] in buckets (the gradients after each backward pass) and
//! [`ProcessGroup::barrier`].
//!
//! A rank that dies closes its sockets; the others' next collective fails with gloo's error instead
//! of waiting, and a rank that merely stalls fails them after the group's timeout.

use crate::{check, TorchError};
use std::ffi::{c_int, c_void, CString};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

/// How the ranks find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    /// A file all ranks can open (ranks on one machine; no server, no port).
    File(PathBuf),
    /// A c10d TCPStore at `host:port`; with `serve`, rank 0 serves it (without: it is already
    /// served, as torchrun's agent does).
    Tcp { host: String, port: u16, serve: bool },
}

/// Everything a rank needs to join its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub rendezvous: Rendezvous,
    pub rank: usize,
    pub world: usize,
    /// The network interface gloo binds (`lo` for one machine); None: `GLOO_SOCKET_IFNAME`, else
    /// the interface of the host name, as torch.distributed does.
    pub interface: Option<String>,
    /// How long a collective or the rendezvous may wait for the other ranks.
    pub timeout: Duration,
}

/// Why a group could not be formed from the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{name}={value:?} is not a valid {what}")]
    Invalid { name: &'static str, value: String, what: &'static str },
    #[error("{name} is set but {missing} is not (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together)")]
    Missing { name: &'static str, missing: &'static str },
    #[error("RANK {rank} is not below WORLD_SIZE {world}")]
    RankOutOfRange { rank: usize, world: usize },
}

/// The environment variables that torchrun (and Slurm scripts in its style) set for each rank.
pub const ENV_VARS: [&str; 4] = ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];

impl GroupConfig {
    /// A group described by torchrun's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT`; `TORCHELASTIC_USE_AGENT_STORE=True` when torchrun's agent serves the store),
    /// or None when `WORLD_SIZE` is not set.
    pub fn from_env(get: impl Fn(&str) -> Option<String>, timeout: Duration) -> Result<Option<GroupConfig>, EnvError> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let world = parse(&world, "WORLD_SIZE", "number of ranks")?;
        let need = |name: &'static str| get(name).ok_or(EnvError::Missing { name: "WORLD_SIZE", missing: name });
        let rank = parse(&need("RANK")?, "RANK", "rank")?;
        if world == 0 || rank >= world {
            return Err(EnvError::RankOutOfRange { rank, world });
        }
        let host = need("MASTER_ADDR")?;
        let port_s = need("MASTER_PORT")?;
        let port: u16 = port_s.parse().map_err(|_| EnvError::Invalid { name: "MASTER_PORT", value: port_s, what: "port" })?;
        let agent = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Some(GroupConfig {
            rendezvous: Rendezvous::Tcp { host, port, serve: !agent },
            rank,
            world,
            interface: None,
            timeout,
        }))
    }
}

fn parse(value: &str, name: &'static str, what: &'static str) -> Result<usize, EnvError> {
    value.parse().map_err(|_| EnvError::Invalid { name, value: value.into(), what })
}

/// A member of a gloo process group.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world: usize,
}

// The c10d backend is used from one thread at a time (it is not Sync); moving it between threads
// is what libtorch's own Python bindings do.
unsafe impl Send for ProcessGroup {}

fn cstring(op: &'static str, s: &str) -> Result<CString, TorchError> {
    CString::new(s).map_err(|_| TorchError { op, message: format!("{s:?} contains a NUL byte") })
}

impl ProcessGroup {
    /// Joins the group (blocks until every rank has joined, or the timeout).
    pub fn new(cfg: &GroupConfig) -> Result<ProcessGroup, TorchError> {
        const OP: &str = "c10d gloo init";
        let (file, host, port, serve) = match &cfg.rendezvous {
            Rendezvous::File(p) => (p.to_string_lossy().into_owned(), String::new(), 0, false),
            Rendezvous::Tcp { host, port, serve } => (String::new(), host.clone(), *port, *serve),
        };
        let (file, host) = (cstring(OP, &file)?, cstring(OP, &host)?);
        let iface = cstring(OP, cfg.interface.as_deref().unwrap_or(""))?;
        let prefix = cstring(OP, "maskflow")?;
        let too_big = |what: &str| TorchError { op: OP, message: format!("{what} does not fit a C int") };
        let rank = c_int::try_from(cfg.rank).map_err(|_| too_big("rank"))?;
        let world = c_int::try_from(cfg.world).map_err(|_| too_big("world size"))?;
        let timeout_ms = i64::try_from(cfg.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut out = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call; `out` receives an owned pointer.
        check(OP, unsafe {
            crate::mf_pg_gloo_new(
                file.as_ptr(),
                host.as_ptr(),
                c_int::from(port),
                c_int::from(serve),
                iface.as_ptr(),
                prefix.as_ptr(),
                rank,
                world,
                timeout_ms,
                &mut out,
            )
        })?;
        let raw = NonNull::new(out).ok_or(TorchError { op: OP, message: "no group returned".into() })?;
        Ok(ProcessGroup { raw, rank: cfg.rank, world: cfg.world })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn pointers(tensors: &[&Tensor]) -> Vec<*const c_void> {
        tensors.iter().map(|t| t.as_ptr() as *const c_void).collect()
    }

    /// Every rank's `tensors` become `root`'s, in place (one collective per tensor; see
    /// [`ProcessGroup::broadcast_packed`] for many small ones).
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), TorchError> {
        let ptrs = Self::pointers(tensors);
        let root = c_int::try_from(root).map_err(|_| TorchError { op: "broadcast", message: "root rank too large".into() })?;
        // SAFETY: the pointers are live at::Tensor handles borrowed for the call.
        check("c10d broadcast", unsafe { crate::mf_pg_broadcast(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len() as c_int, root) })
    }

    /// Every rank's `tensors` become the element-wise sum over the ranks, in place (one collective
    /// per tensor).
    pub fn allreduce_sum(&self, tensors: &[&Tensor]) -> Result<(), TorchError> {
        let ptrs = Self::pointers(tensors);
        // SAFETY: as in `broadcast`.
        check("c10d all-reduce", unsafe { crate::mf_pg_allreduce_sum(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len() as c_int) })
    }

    /// Bytes from rank 0 to every rank: rank 0 passes `Some`, the others `None`; all get rank 0's
    /// bytes (the length goes first, then the bytes).
    pub fn broadcast_bytes(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, TorchError> {
        let len = Tensor::from_slice(&[bytes.map_or(0, |b| b.len() as i64)]);
        self.broadcast(&[&len], 0)?;
        let n = len.int64_value(&[0]);
        let buf = match bytes {
            Some(b) => Tensor::from_slice(b),
            None => Tensor::zeros([n], (tch::Kind::Uint8, tch::Device::Cpu)),
        };
        self.broadcast(&[&buf], 0)?;
        Ok(Vec::<u8>::try_from(&buf).map_err(|e| TorchError { op: "broadcast", message: e.to_string() })?)
    }

    /// Returns when every rank has reached it.
    pub fn barrier(&self) -> Result<(), TorchError> {
        // SAFETY: a live group.
        check("c10d barrier", unsafe { crate::mf_pg_barrier(self.raw.as_ptr()) })
    }

    /// Every rank's `tensors` become `root`'s, packed into flat buckets (of one kind, at most
    /// `bucket_bytes`) so that many small tensors cost a few collectives.
    pub fn broadcast_packed(&self, tensors: &[&Tensor], root: usize, bucket_bytes: usize) -> Result<(), TorchError> {
        for bucket in buckets(tensors, bucket_bytes) {
            let flat = pack(&bucket);
            self.broadcast(&[&flat], root)?;
            unpack(&flat, &bucket);
        }
        Ok(())
    }

    /// The mean over the ranks of each tensor, in place: the tensors are packed into flat buckets of
    /// at most `bucket_bytes` (one tensor larger than that gets a bucket of its own), each bucket
    /// summed in one all-reduce, divided by the world size and unpacked. Every rank must pass tensors
    /// of the same shapes in the same order.
    pub fn allreduce_mean(&self, tensors: &[&Tensor], bucket_bytes: usize) -> Result<(), TorchError> {
        for bucket in buckets(tensors, bucket_bytes) {
            let flat = pack(&bucket);
            self.allreduce_sum(&[&flat])?;
            unpack(&(flat / self.world as f64), &bucket);
        }
        Ok(())
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(gloo, rank {} of {})", self.rank, self.world)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the pointer came from mf_pg_gloo_new and is freed once.
        unsafe { crate::mf_pg_free(self.raw.as_ptr()) }
    }
}

/// One flat tensor of a bucket's elements, in order.
fn pack(bucket: &[&Tensor]) -> Tensor {
    let parts: Vec<Tensor> = bucket.iter().map(|t| t.detach().reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

/// Copies `flat`'s elements back into the bucket's tensors, in place.
fn unpack(flat: &Tensor, bucket: &[&Tensor]) {
    let mut offset = 0;
    tch::no_grad(|| {
        for t in bucket {
            let n = t.numel() as i64;
            let mut t = t.shallow_clone();
            t.copy_(&flat.narrow(0, offset, n).view_as(&t));
            offset += n;
        }
    });
}

/// Consecutive runs of `tensors` of one kind and at most `bytes` each (a larger tensor alone).
fn buckets<'a>(tensors: &[&'a Tensor], bytes: usize) -> Vec<Vec<&'a Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = vec![];
    let mut size = 0;
    for &t in tensors {
        let b = t.numel() * t.kind().elt_size_in_bytes();
        let other_kind = out.last().and_then(|v| v.first()).is_some_and(|f| f.kind() != t.kind());
        if out.is_empty() || size + b > bytes || other_kind {
            out.push(vec![]);
            size = 0;
        }
        out.last_mut().expect("a bucket was just pushed").push(t);
        size += b;
    }
    out
}

/// The bucket size DDP uses by default (25 MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// A tensor's gradient, which must exist: every rank's backward pass reaches the same parameters.
pub fn grads_of(params: &[&Tensor]) -> Result<Vec<Tensor>, TorchError> {
    params
        .iter()
        .map(|p| {
            let g = p.grad();
            if g.defined() {
                Ok(g)
            } else {
                Err(TorchError { op: "gradient all-reduce", message: "a trainable parameter has no gradient".into() })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn torchrun_environment() {
        let t = Duration::from_secs(5);
        assert_eq!(GroupConfig::from_env(env(&[]), t).unwrap(), None);
        let cfg = GroupConfig::from_env(
            env(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("TORCHELASTIC_USE_AGENT_STORE", "True")]),
            t,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.rendezvous, Rendezvous::Tcp { host: "127.0.0.1".into(), port: 29500, serve: false });
        assert_eq!((cfg.rank, cfg.world), (1, 2));
        let e = GroupConfig::from_env(env(&[("WORLD_SIZE", "2"), ("RANK", "0")]), t).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = GroupConfig::from_env(env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]), t).unwrap_err();
        assert!(matches!(e, EnvError::RankOutOfRange { rank: 2, world: 2 }), "{e}");
        let e = GroupConfig::from_env(env(&[("WORLD_SIZE", "two")]), t).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE=\"two\""), "{e}");
    }

    /// Runs `body(rank)` in `world` processes (this test binary again, filtered to `test`) that
    /// meet through a file store on loopback; fails unless every rank succeeds.
    fn ranks(test: &str, world: usize, body: impl Fn(&ProcessGroup)) {
        if let Ok(rank) = std::env::var("MF_TEST_RANK") {
            let cfg = GroupConfig {
                rendezvous: Rendezvous::File(std::env::var("MF_TEST_STORE").unwrap().into()),
                rank: rank.parse().unwrap(),
                world,
                interface: Some("lo".into()),
                timeout: Duration::from_secs(60),
            };
            body(&ProcessGroup::new(&cfg).unwrap());
            return;
        }
        let dir = std::env::temp_dir().join(format!("mf-dist-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
        let _ = std::fs::remove_file(&store);
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..world)
            .map(|r| {
                std::process::Command::new(&exe)
                    .args([test, "--exact", "--nocapture", "--test-threads", "1"])
                    .env("MF_TEST_RANK", r.to_string())
                    .env("MF_TEST_STORE", &store)
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (r, mut c) in children.into_iter().enumerate() {
            assert!(c.wait().unwrap().success(), "rank {r} failed");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_ranks_broadcast_sum_and_mean() {
        ranks("dist::tests::two_ranks_broadcast_sum_and_mean", 2, |pg| {
            let r = pg.rank() as f64;
            let w = Tensor::full([3], r + 1.0, (tch::Kind::Float, tch::Device::Cpu));
            pg.broadcast(&[&w], 0).unwrap();
            assert_eq!(Vec::<f32>::try_from(&w).unwrap(), vec![1.0; 3], "rank {r}: root's values");
            let (p, q) = (Tensor::full([2], r, (tch::Kind::Float, tch::Device::Cpu)), Tensor::full([3], r, (tch::Kind::Int64, tch::Device::Cpu)));
            pg.broadcast_packed(&[&p, &q], 1, 1 << 20).unwrap();
            assert_eq!((p.sum(tch::Kind::Float).double_value(&[]), q.sum(tch::Kind::Float).double_value(&[])), (2.0, 3.0), "rank 1's values");
            let a = Tensor::full([2, 2], r + 1.0, (tch::Kind::Float, tch::Device::Cpu));
            let b = Tensor::from_slice(&[r as f32 * 10.0, 1.0]);
            // Two buckets (16 bytes and 8 bytes with a 16-byte limit).
            pg.allreduce_mean(&[&a, &b], 16).unwrap();
            let msg = pg.broadcast_bytes((pg.rank() == 0).then_some(b"hello".as_slice())).unwrap();
            assert_eq!(msg, b"hello");
            assert_eq!(Vec::<f32>::try_from(&a.reshape([-1])).unwrap(), vec![1.5; 4]);
            assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![5.0, 1.0]);
            pg.barrier().unwrap();
        });
    }

    #[test]
    fn buckets_keep_order_and_size() {
        let ts: Vec<Tensor> = [10, 20, 300, 5, 5].iter().map(|&n| Tensor::zeros([n], (tch::Kind::Float, tch::Device::Cpu))).collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let b = buckets(&refs, 200); // bytes: 40, 80, 1200, 20, 20
        let sizes: Vec<Vec<i64>> = b.iter().map(|v| v.iter().map(|t| t.numel() as i64).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 20], vec![300], vec![5, 5]]);
    }
}
