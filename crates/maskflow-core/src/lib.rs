//! maskflow-core: the machinery every stage shares.
//!
//! - [`hash`]: blake3 helpers and the canonical JSON encoding that stage keys are computed over.
//! - [`fsutil`]: atomic file writes (temp + rename) and small filesystem helpers.
//! - [`store`]: the content-addressed artifact store (`artifacts/<stage>/<key>/` + `manifest.json`).
//! - [`record`]: versioned records (format + writer), read as corrupt, compatible or newer.
//! - [`runs`]: run records (`artifacts/runs/<pipeline>/<timestamp>.json`, `latest.json`).
//! - [`alloc`]: glibc malloc tuning for libtorch (no mmap churn), applied at start-up.
//! - [`cuda`]: loading libtorch's CUDA backend on demand (`--device cuda` / `auto`).
//! - [`device`]: where compute runs (`cpu`, `cuda:N`), typed.
//! - [`config`]: typed TOML loading whose errors name `file:line:column` and the key.
//! - [`dataset`]: walking a `root/<class>/…` folder and its content fingerprint.
//! - [`rng`]: a tiny, version-stable seeded generator (SplitMix64) for reproducible draws.
//! - [`progress`]: progress bars with one look across the stages.

pub mod alloc;
pub mod config;
pub mod cuda;
pub mod dataset;
pub mod device;
pub mod fsutil;
pub mod hash;
pub mod html;
pub mod progress;
pub mod record;
pub mod rng;
pub mod runs;
pub mod store;

/// The tool version written into every manifest and run record.
pub const TOOL_VERSION: &str = concat!("maskflow ", env!("CARGO_PKG_VERSION"));
