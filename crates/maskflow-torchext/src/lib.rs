//! What libtorch has and tch does not expose, through a small C++ shim (`csrc/shim.cpp`, built
//! against the venv's libtorch headers by `build.rs`):
//!
//! - [`autocast`]: mixed precision on CPU and CUDA — inside an [`autocast::Autocast`] guard, the
//!   operators that autocast lists (convolutions, matmuls, …) run in bf16 while the weights, their
//!   gradients and the optimizer state stay fp32.
//! - [`dist`]: a c10d process group over gloo (CPU; TCP on loopback or a network): broadcast,
//!   all-reduce and barrier, for data-parallel training.

pub mod autocast;
pub mod dist;

use std::ffi::{c_char, c_int, c_void, CStr};

/// An error raised inside libtorch (a C++ exception caught by the shim), with the operation's name.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct TorchError {
    pub op: &'static str,
    pub message: String,
}

extern "C" {
    fn mf_last_error() -> *const c_char;
    fn mf_autocast_enter(cuda: c_int, scalar_type: c_int, prev_enabled: *mut c_int, prev_type: *mut c_int) -> c_int;
    fn mf_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_type: c_int) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn mf_pg_gloo_new(
        file_path: *const c_char,
        host: *const c_char,
        port: c_int,
        tcp_server: c_int,
        iface: *const c_char,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> c_int;
    fn mf_pg_free(g: *mut c_void);
    fn mf_pg_broadcast(g: *mut c_void, ts: *const *const c_void, n: c_int, root: c_int) -> c_int;
    fn mf_pg_allreduce_sum(g: *mut c_void, ts: *const *const c_void, n: c_int) -> c_int;
    fn mf_pg_barrier(g: *mut c_void) -> c_int;
}

/// The shim's status → a Result, with the C++ message of a failure.
fn check(op: &'static str, status: c_int) -> Result<(), TorchError> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: the shim keeps the message in a thread-local std::string that lives until the next
    // failing call on this thread; it is copied out at once.
    let message = unsafe { CStr::from_ptr(mf_last_error()) }.to_string_lossy().into_owned();
    Err(TorchError { op, message })
}
