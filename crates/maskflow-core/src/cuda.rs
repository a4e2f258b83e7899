//! Loading libtorch's CUDA backend. The binaries link `libtorch_cpu.so` only: the linker drops
//! `libtorch_cuda.so` because no symbol of it is referenced directly (its code registers itself with
//! libtorch when loaded). So CUDA is loaded on demand, when a command asks for `--device cuda` or
//! `auto`: `dlopen` with `RTLD_GLOBAL` runs its registration, after which `tch::Cuda` sees the GPUs.
//! The library is found the way the binary found libtorch (its rpath), or through
//! `LD_LIBRARY_PATH`.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The outcome of the (single) attempt to load `libtorch_cuda.so`: `Ok` or the loader's message.
pub fn load_backend() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| dlopen_global("libtorch_cuda.so")).clone()
}

fn dlopen_global(name: &str) -> Result<(), String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept open for the process's
    // life on purpose (libtorch keeps pointers into it). dlerror is read at once, on this thread.
    unsafe {
        let handle = libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let msg = if err.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(format!("cannot load {name}: {msg}"));
        }
    }
    Ok(())
}
