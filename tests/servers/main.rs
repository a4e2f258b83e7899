//! The integration tests that need a server on loopback: the shared store against a real S3 server
//! (moto; `scripts/with-s3.sh` starts one for the whole run, or the first test that needs it starts
//! its own), fan-out through plan/task/commit, the chaos suite, and a two-node Ray cluster.
//! `just test` runs these; `just test-fast` does not.

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod fanout;
mod ray_cluster;
mod shared_store;
