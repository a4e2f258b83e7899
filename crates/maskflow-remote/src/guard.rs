//! What keeps `gc` from racing a publisher, and the store's clock.
//!
//! **Invariant: a blob that a publisher (a build, a fan-out task or commit) relies on is never
//! deleted between its check and the moment a manifest or task record naming it lands.**
//!
//! - A publisher first writes an *intent* (`intents/<unique>.json`, naming every blob it will
//!   reference), then waits while a gc holds the gc lock, and only then checks which blobs exist,
//!   uploads the others and writes its manifest (or task record). It deletes the intent after.
//! - `gc --apply` takes the gc lock (`locks/gc.json`, create-only) *before* it lists the store, and
//!   treats every intent it lists as a root; it deletes the lock when done.
//!
//! Either the publisher's look at the lock comes before the gc took it (so the gc's listing, made
//! after, contains the intent, and its blobs are spared), or the publisher waited for that gc to end
//! (so whatever it deleted was gone before the publisher checked, and is uploaded again). An intent
//! older than gc's plan ttl is a publisher that died: gc sweeps it. A gc lock older than its ttl
//! (by the store's clock) is a gc that died: publishers stop waiting for it.
//!
//! Times are the store's (objects' last-modified), never compared with this machine's clock.

use crate::{Remote, RemoteError};
use bytes::Bytes;
use maskflow_core::record::Format;
use maskflow_core::store::FileEntry;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub(crate) const GC_LOCK: &str = "locks/gc.json";
/// A gc lock older than this (store clock) is a gc that died.
pub const GC_LOCK_TTL: Duration = Duration::from_secs(3600);
/// How long a publisher waits for a running gc at most before giving up with an error.
const GC_WAIT: Duration = Duration::from_secs(2 * 3600);

pub(crate) const INTENT_FORMAT: Format = Format::new("publish intent", 1);
pub(crate) const GC_LOCK_FORMAT: Format = Format::new("gc lock", 1);

/// `intents/<unique>.json`: the blobs a publisher is about to rely on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub format: u32,
    pub tool_version: String,
    pub what: String,
    pub files: Vec<FileEntry>,
}

/// `locks/gc.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GcLock {
    pub format: u32,
    pub tool_version: String,
    pub holder: String,
}

/// An intent this process wrote; deleted on drop (a publisher that panics leaves none behind).
pub struct IntentGuard<'r> {
    remote: &'r Remote,
    rel: String,
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        let _ = self.remote.delete(&self.rel);
    }
}

impl Remote {
    /// The store's current time. Read once per process as the last-modified stamp of an object
    /// written then (and deleted); after that, that reading plus this process's monotonic time
    /// since — no wall clock of this machine is ever compared with the store's.
    pub fn store_now(&self) -> Result<chrono_like::Stamp, RemoteError> {
        let (at, stamp) = match self.clock.get() {
            Some(c) => *c,
            None => {
                let rel = format!("probes/clock-{}", maskflow_core::fsutil::unique_suffix());
                self.put(&rel, b"t".to_vec())?;
                let head = self.block_on(self.store.head(&self.path(&rel))).map_err(self.backend(&rel));
                let _ = self.delete(&rel);
                let read = (Instant::now(), chrono_like::Stamp::of(&head?));
                *self.clock.get_or_init(|| read)
            }
        };
        Ok(chrono_like::Stamp(stamp.0 + at.elapsed().as_millis() as i64))
    }

    /// Declares that `files` are about to be relied on (see the module doc), then waits while a
    /// gc runs. Keep the guard until the manifest or record naming them has landed.
    pub fn intend(&self, what: &str, files: &[FileEntry]) -> Result<IntentGuard<'_>, RemoteError> {
        let rel = format!("intents/{}.json", maskflow_core::fsutil::unique_suffix());
        let intent = Intent {
            format: INTENT_FORMAT.current(),
            tool_version: maskflow_core::record::writer(),
            what: what.into(),
            files: files.to_vec(),
        };
        let body = serde_json::to_vec(&intent).map_err(|e| RemoteError::Io { path: rel.clone().into(), source: e.into() })?;
        self.create(&rel, Bytes::from(body))?;
        let guard = IntentGuard { remote: self, rel };
        self.wait_for_gc()?;
        Ok(guard)
    }

    /// Returns once no live gc lock is held.
    fn wait_for_gc(&self) -> Result<(), RemoteError> {
        let started = Instant::now();
        loop {
            let head = match self.block_on(self.store.head(&self.path(GC_LOCK))) {
                Ok(h) => h,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(self.backend(GC_LOCK)(e)),
            };
            let age = self.store_now()?.since(&chrono_like::Stamp::of(&head));
            if age >= GC_LOCK_TTL {
                return Ok(());
            }
            if started.elapsed() > GC_WAIT {
                return Err(RemoteError::Busy { at: self.at(GC_LOCK), why: format!("a gc has held the store for {}s", age.as_secs()) });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Takes the gc lock (create-only; a stale one is replaced). `Err(Busy)` when a live gc holds it.
    pub(crate) fn lock_for_gc(&self) -> Result<GcLockGuard<'_>, RemoteError> {
        let holder = format!("{}:{}:{}", crate::host(), std::process::id(), maskflow_core::fsutil::unique_suffix());
        let body = serde_json::to_vec(&GcLock { format: GC_LOCK_FORMAT.current(), tool_version: maskflow_core::record::writer(), holder: holder.clone() })
            .map_err(|e| RemoteError::Io { path: GC_LOCK.into(), source: e.into() })?;
        for _ in 0..3 {
            if self.create(GC_LOCK, Bytes::from(body.clone()))?.is_some() {
                return Ok(GcLockGuard { remote: self });
            }
            let head = match self.block_on(self.store.head(&self.path(GC_LOCK))) {
                Ok(h) => h,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.backend(GC_LOCK)(e)),
            };
            let age = self.store_now()?.since(&chrono_like::Stamp::of(&head));
            if age < GC_LOCK_TTL {
                let who = self
                    .get_optional(GC_LOCK)?
                    .and_then(|b| GC_LOCK_FORMAT.decode::<GcLock>(&b).ok())
                    .map_or_else(|| "another gc".to_string(), |l| l.holder);
                return Err(RemoteError::Busy { at: self.at(GC_LOCK), why: format!("{who} is collecting (for {}s)", age.as_secs()) });
            }
            self.delete(GC_LOCK)?;
        }
        Err(RemoteError::Busy { at: self.at(GC_LOCK), why: "the gc lock changed hands three times while taking it".into() })
    }
}

/// The gc lock, released on drop.
pub(crate) struct GcLockGuard<'r> {
    remote: &'r Remote,
}

impl Drop for GcLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.remote.delete(GC_LOCK);
    }
}

/// Store timestamps without a date-time dependency in the API.
pub mod chrono_like {
    use std::time::Duration;

    /// An instant on the store's clock (milliseconds since the Unix epoch).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Stamp(pub i64);

    impl Stamp {
        pub fn of(meta: &object_store::ObjectMeta) -> Stamp {
            Stamp(meta.last_modified.timestamp_millis())
        }
        /// How long after `earlier` this is (zero if it is not after).
        pub fn since(&self, earlier: &Stamp) -> Duration {
            Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
        }
    }
}
