//! Leases: "this machine is building that key, until then". A builder creates the lease object
//! create-only, renews it while it works and deletes it when done; another machine that finds a
//! live lease waits for the manifest instead of building the same thing, and takes an expired lease
//! over (a conditional replace where the store has one). Leases only save work: a manifest is
//! trusted for its content, never because of a lease, so a lost or stolen lease costs time at most.

use crate::{now_unix, Remote, RemoteError};
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

/// A lease as stored (`leases/<kind>/<key>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// `host:pid:unique`, unique per lease taken.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub acquired_unix: u64,
    pub expires_unix: u64,
}

impl LeaseInfo {
    pub fn live(&self) -> bool {
        self.expires_unix > now_unix()
    }
}

/// A lease this process holds.
pub struct Lease<'r> {
    remote: &'r Remote,
    rel: String,
    ttl: Duration,
    state: Mutex<(LeaseInfo, UpdateVersion)>,
    /// The expired lease this one replaced, if any.
    pub took_over: Option<LeaseInfo>,
}

pub enum LeaseAttempt<'r> {
    Acquired(Lease<'r>),
    /// Another machine holds a live lease.
    Held(LeaseInfo),
}

fn lease_rel(kind: &str, key: &str) -> String {
    format!("leases/{kind}/{key}.json")
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

fn version(r: &object_store::PutResult) -> UpdateVersion {
    UpdateVersion { e_tag: r.e_tag.clone(), version: r.version.clone() }
}

impl Remote {
    /// The lease on `kind`/`key`, if one is stored (an unreadable one counts as expired).
    pub fn lease_info(&self, kind: &str, key: &str) -> Result<Option<LeaseInfo>, RemoteError> {
        Ok(self.read_lease(&lease_rel(kind, key))?.map(|(info, _)| info))
    }

    fn read_lease(&self, rel: &str) -> Result<Option<(LeaseInfo, UpdateVersion)>, RemoteError> {
        let path = self.path(rel);
        self.block_on(async {
            let got = match self.store.get(&path).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.backend(rel)(e)),
            };
            let v = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
            let bytes = got.bytes().await.map_err(self.backend(rel))?;
            let info = serde_json::from_slice(&bytes).unwrap_or(LeaseInfo {
                holder: "(unreadable lease)".into(),
                host: String::new(),
                pid: 0,
                acquired_unix: 0,
                expires_unix: 0,
            });
            Ok(Some((info, v)))
        })
    }

    /// Tries to take the lease on `kind`/`key` for `ttl`: created if absent, taken over if expired.
    pub fn try_lease(&self, kind: &str, key: &str, ttl: Duration) -> Result<LeaseAttempt<'_>, RemoteError> {
        let rel = lease_rel(kind, key);
        let host = host();
        let mut took_over = None;
        // Each round either ends or loses a race to another machine's write; a few suffice.
        for _ in 0..8 {
            let now = now_unix();
            let info = LeaseInfo {
                holder: format!("{host}:{}:{}", std::process::id(), maskflow_core::fsutil::unique_suffix()),
                host: host.clone(),
                pid: std::process::id(),
                acquired_unix: now,
                expires_unix: now + ttl.as_secs().max(1),
            };
            let body = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
            if let Some(r) = self.create(&rel, body.clone())? {
                let v = version(&r);
                return Ok(LeaseAttempt::Acquired(Lease { remote: self, rel, ttl, state: Mutex::new((info, v)), took_over }));
            }
            let Some((current, v)) = self.read_lease(&rel)? else { continue };
            if current.live() {
                return Ok(LeaseAttempt::Held(current));
            }
            // Expired: replace it only if it is still the one we read.
            let opts = PutOptions { mode: PutMode::Update(v), ..Default::default() };
            match self.block_on(self.store.put_opts(&self.path(&rel), PutPayload::from_bytes(body), opts)) {
                Ok(r) => {
                    let v = version(&r);
                    return Ok(LeaseAttempt::Acquired(Lease {
                        remote: self,
                        rel,
                        ttl,
                        state: Mutex::new((info, v)),
                        took_over: Some(current),
                    }));
                }
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                    // No conditional replace here (a local filesystem): delete and race to create.
                    self.delete(&rel)?;
                    took_over = Some(current);
                }
                Err(e) => return Err(self.backend(&rel)(e)),
            }
        }
        // Constant contention: report whoever holds it now.
        match self.read_lease(&rel)? {
            Some((info, _)) => Ok(LeaseAttempt::Held(info)),
            None => self.try_lease(kind, key, ttl),
        }
    }
}

impl Lease<'_> {
    pub fn info(&self) -> LeaseInfo {
        self.state.lock().map(|s| s.0.clone()).unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// Extends the lease by its ttl from now. `Ok(false)`: it was taken over (this process was too
    /// slow to renew); the build may go on, its result is as valid as the other machine's.
    pub fn renew(&self) -> Result<bool, RemoteError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut info = state.0.clone();
        info.expires_unix = now_unix() + self.ttl.as_secs().max(1);
        let body = PutPayload::from(serde_json::to_vec(&info).unwrap_or_default());
        let path = self.remote.path(&self.rel);
        let opts = PutOptions { mode: PutMode::Update(state.1.clone()), ..Default::default() };
        let result = match self.remote.block_on(self.remote.store.put_opts(&path, body.clone(), opts)) {
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                // No conditional replace: check the holder, then overwrite (a narrow race, harmless).
                match self.remote.read_lease(&self.rel)? {
                    Some((cur, _)) if cur.holder == info.holder => self.remote.block_on(self.remote.store.put(&path, body)),
                    _ => return Ok(false),
                }
            }
            other => other,
        };
        match result {
            Ok(r) => {
                *state = (info, version(&r));
                Ok(true)
            }
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.remote.backend(&self.rel)(e)),
        }
    }

    /// Deletes the lease if it is still ours.
    pub fn release(self) -> Result<(), RemoteError> {
        let mine = self.info().holder;
        match self.remote.read_lease(&self.rel)? {
            Some((cur, _)) if cur.holder == mine => self.remote.delete(&self.rel),
            _ => Ok(()),
        }
    }
}
