//! The integration tests that need no server: the binary end to end on generated data, the crate
//! graph and stages.lock, interop with the venv's Python (pyarrow, PyTorch, facenet-pytorch).
//! `just test-fast` runs these with every crate's unit tests; `just test` adds `tests/servers`.
//! One test binary (one link) for all of them.

#[path = "../common/mod.rs"]
mod common;

mod architecture;
mod deteval;
mod dettrain;
mod dist;
mod eval;
mod experiments;
mod export;
mod faces;
mod graph;
mod interop_pyarrow;
mod pipeline;
mod resume;
mod review;
