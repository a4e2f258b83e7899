//! Compiles `csrc/shim.cpp` against the headers of the libtorch that torch-sys links (the torch wheel
//! in the project venv, `$LIBTORCH` as set in .cargo/config.toml), with the same C++ ABI.
//!
//! c10d's `ProcessGroupGloo.hpp` includes five gloo headers that the wheel does not ship. The class's
//! layout holds gloo types only behind `std::shared_ptr` / `std::unique_ptr`, and the shim calls only
//! functions defined inside libtorch, so `csrc/gloo_decl/` declares just enough of those names for
//! the header to parse (see its README). The two-rank test checks the result against one process.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let root = PathBuf::from(std::env::var("LIBTORCH").unwrap_or_else(|_| {
        panic!("LIBTORCH is not set: it names the libtorch torch-sys links (.cargo/config.toml sets it to .venv/torch; run scripts/bootstrap.sh)")
    }));
    let include = root.join("include");
    if !include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp").exists() {
        panic!("{}: no c10d headers (torch/csrc/distributed/c10d); is LIBTORCH a torch wheel's folder?", include.display());
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .include("csrc/gloo_decl")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++20")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .opt_level(2)
        .compile("maskflow_torchext");
}
