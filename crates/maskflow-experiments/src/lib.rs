//! maskflow-experiments: comparing runs. Reads run records (`artifacts/runs/<pipeline>/*.json`)
//! and the reports of the artifacts they name, generic over stage kinds (each kind says what its
//! report's figures are: [`maskflow_pipeline::Metrics`]).
//!
//! - [`rows`]: runs as rows — a record, or each point of a sweep's record — with their params,
//!   keys and figures; a run id from a part of it.
//! - [`table`]: `maskflow runs` — filter and sort by a metric or param; the params that differ;
//!   the headline metrics; as text, CSV or JSON.
//! - [`diff`]: `maskflow diff A B` — params, metrics with deltas, which instances differ and why.
//! - [`html`]: `runs.html` — the table, curves overlaid, confusion matrices side by side, links.

pub mod diff;
pub mod html;
pub mod rows;
pub mod table;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Record(PathBuf, String),
    #[error("no run {query:?}{}", if known.is_empty() { " (there are no runs yet)".to_string() } else { format!("; the latest: {}", known.join(", ")) })]
    NoRun { query: String, known: Vec<String> },
    #[error("{query:?} names more than one run: {}; give more of the id", hits.join(", "))]
    Ambiguous { query: String, hits: Vec<String> },
    #[error("{0}")]
    Usage(String),
}
