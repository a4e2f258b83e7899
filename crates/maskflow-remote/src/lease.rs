//! Leases: "this machine is building that key". Leases only save work: a manifest is trusted for
//! its content, never because of a lease, so a lost lease costs time at most. Still, at most one
//! process holds a key's lease at a time, on any store:
//!
//! - A lease is a sequence of *generations*, `leases/<kind>/<key>/<generation>.json`. Only the
//!   highest generation counts. Taking the lease is creating the next generation **create-only**
//!   (If-None-Match: * on S3, an exclusive create on a filesystem), so of two machines racing for
//!   it one wins, on every backend; nothing is ever deleted to take a lease over.
//! - The holder renews by rewriting its own generation (which refreshes its last-modified) and
//!   releases by rewriting it as released. A generation number is never reused while its object
//!   exists; gc removes lease objects older than its grace period.
//! - A lease is expired when its generation was last written longer ago than its ttl **by the
//!   store's clock** (the object's last-modified against an object written now), never by
//!   comparing the clocks of two machines.
//! - Retries are bounded: a few rounds, then the current holder is reported.

use crate::guard::chrono_like::Stamp;
use crate::{Remote, RemoteError};
use bytes::Bytes;
use maskflow_core::record::Format;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) const LEASE_FORMAT: Format = Format::new("lease", 1);

/// A lease generation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub format: u32,
    pub tool_version: String,
    /// `host:pid:unique`, unique per lease taken.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// Seconds the lease lasts after each renewal (by the store's clock).
    pub ttl_s: u64,
    /// Released by its holder: free to take.
    pub released: bool,
}

/// A lease as another process sees it.
#[derive(Debug, Clone)]
pub struct LeaseSeen {
    pub generation: u64,
    /// `None`: a lease record this maskflow cannot read (newer or corrupt); it is respected for
    /// the ttl asked of [`Remote::try_lease`] (or a minute, in [`Remote::lease_info`]).
    pub info: Option<LeaseInfo>,
    /// Since its last renewal, by the store's clock.
    pub age: Duration,
    ttl: Duration,
}

impl LeaseSeen {
    pub fn live(&self) -> bool {
        !self.info.as_ref().is_some_and(|i| i.released) && self.age < self.ttl
    }
    /// How long it lasts unless renewed.
    pub fn left(&self) -> Duration {
        self.ttl.saturating_sub(self.age)
    }
    pub fn holder(&self) -> String {
        self.info.as_ref().map_or_else(|| format!("(an unreadable lease, generation {})", self.generation), |i| i.holder.clone())
    }
}

/// A lease this process holds. Dropping it releases it (a build that panics frees its key).
pub struct Lease<'r> {
    remote: &'r Remote,
    prefix: String,
    generation: u64,
    info: Mutex<LeaseInfo>,
    /// The expired or released lease this one followed, if any.
    pub took_over: Option<LeaseSeen>,
    done: std::sync::atomic::AtomicBool,
}

pub enum LeaseAttempt<'r> {
    Acquired(Lease<'r>),
    /// Another machine holds a live lease.
    Held(LeaseSeen),
}

fn lease_prefix(kind: &str, key: &str) -> String {
    format!("leases/{kind}/{key}")
}

fn gen_rel(prefix: &str, generation: u64) -> String {
    format!("{prefix}/{generation:020}.json")
}

/// Attempts at taking a lease before reporting whoever holds it.
const ROUNDS: usize = 8;

impl Remote {
    /// The generations of a lease, highest last.
    fn generations(&self, prefix: &str) -> Result<Vec<(u64, object_store::ObjectMeta)>, RemoteError> {
        let mut gens: Vec<(u64, object_store::ObjectMeta)> = self
            .list_metas(Some(prefix))?
            .into_iter()
            .filter_map(|(rel, m)| {
                let name = rel.rsplit('/').next()?;
                Some((name.strip_suffix(".json")?.parse::<u64>().ok()?, m))
            })
            .collect();
        gens.sort_by_key(|g| g.0);
        Ok(gens)
    }

    /// The current generation of a lease, as seen now. A generation that vanishes between the
    /// listing and the read was tidied away by the taker of a higher one: list again.
    fn current_lease(&self, prefix: &str, unreadable_ttl: Duration) -> Result<Option<LeaseSeen>, RemoteError> {
        for _ in 0..ROUNDS {
            let Some((generation, meta)) = self.generations(prefix)?.pop() else { return Ok(None) };
            let Some(bytes) = self.get_optional(&gen_rel(prefix, generation))? else { continue };
            let info = LEASE_FORMAT.decode::<LeaseInfo>(&bytes).ok();
            let ttl = info.as_ref().map_or(unreadable_ttl, |i| Duration::from_secs(i.ttl_s));
            let age = self.store_now()?.since(&Stamp::of(&meta));
            return Ok(Some(LeaseSeen { generation, info, age, ttl }));
        }
        Err(RemoteError::Busy { at: self.at(prefix), why: format!("the lease changed hands {ROUNDS} times while being read") })
    }

    /// The lease on `kind`/`key`, if one is stored.
    pub fn lease_info(&self, kind: &str, key: &str) -> Result<Option<LeaseSeen>, RemoteError> {
        self.current_lease(&lease_prefix(kind, key), Duration::from_secs(60))
    }

    /// Tries to take the lease on `kind`/`key` for `ttl`: the next generation, created create-only,
    /// when there is none or the current one is expired or released.
    pub fn try_lease(&self, kind: &str, key: &str, ttl: Duration) -> Result<LeaseAttempt<'_>, RemoteError> {
        let prefix = lease_prefix(kind, key);
        let host = crate::host();
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..ROUNDS {
            let current = self.current_lease(&prefix, ttl)?;
            if let Some(c) = current.as_ref().filter(|c| c.live()) {
                return Ok(LeaseAttempt::Held(c.clone()));
            }
            let generation = current.as_ref().map_or(0, |c| c.generation + 1);
            let info = LeaseInfo {
                format: LEASE_FORMAT.current(),
                tool_version: maskflow_core::record::writer(),
                holder: format!("{host}:{pid}:{}", maskflow_core::fsutil::unique_suffix()),
                host: host.clone(),
                pid,
                ttl_s: ttl.as_secs().max(1),
                released: false,
            };
            let body = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
            if self.create(&gen_rel(&prefix, generation), body)?.is_some() {
                let gens = self.generations(&prefix)?;
                if gens.last().is_some_and(|(top, _)| *top > generation) {
                    // A higher generation was taken meanwhile (ours was computed from a listing
                    // that a tidy-up made stale): ours never counted. Mark it released, look again.
                    let released = LeaseInfo { released: true, ..info };
                    let _ = self.put_lease(&gen_rel(&prefix, generation), &released);
                    continue;
                }
                // Older generations are dead for good: tidy them (best effort).
                for (g, _) in gens.into_iter().filter(|(g, _)| *g < generation) {
                    let _ = self.delete(&gen_rel(&prefix, g));
                }
                return Ok(LeaseAttempt::Acquired(Lease {
                    remote: self,
                    prefix,
                    generation,
                    info: Mutex::new(info),
                    took_over: current,
                    done: false.into(),
                }));
            }
            last = current;
        }
        // Constant contention: report whoever holds it now.
        match self.current_lease(&prefix, ttl)? {
            Some(seen) => Ok(LeaseAttempt::Held(seen)),
            None => Err(RemoteError::Busy {
                at: self.at(&prefix),
                why: format!("lost {ROUNDS} races for the lease (last seen: {:?})", last.map(|l| l.holder())),
            }),
        }
    }
}

impl Remote {
    fn put_lease(&self, rel: &str, info: &LeaseInfo) -> Result<(), RemoteError> {
        let body = object_store::PutPayload::from(serde_json::to_vec(info).unwrap_or_default());
        self.block_on(self.store.put(&self.path(rel), body)).map(|_| ()).map_err(self.backend(rel))
    }
}

impl Lease<'_> {
    pub fn info(&self) -> LeaseInfo {
        self.info.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn still_mine(&self) -> Result<bool, RemoteError> {
        let top = self.remote.generations(&self.prefix)?.pop().map(|g| g.0);
        Ok(top == Some(self.generation))
    }

    fn write(&self, info: &LeaseInfo) -> Result<(), RemoteError> {
        self.remote.put_lease(&gen_rel(&self.prefix, self.generation), info)
    }

    /// Extends the lease by its ttl from now (by the store's clock). `Ok(false)`: another process
    /// took it (this one was too slow to renew); the build may go on, its result is as valid.
    pub fn renew(&self) -> Result<bool, RemoteError> {
        if !self.still_mine()? {
            return Ok(false);
        }
        self.write(&self.info())?;
        Ok(true)
    }

    /// Marks the lease released, if it is still ours.
    pub fn release(self) -> Result<(), RemoteError> {
        self.release_ref()
    }

    fn release_ref(&self) -> Result<(), RemoteError> {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if !self.still_mine()? {
            return Ok(());
        }
        let mut info = self.info();
        info.released = true;
        self.write(&info)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let _ = self.release_ref();
    }
}
