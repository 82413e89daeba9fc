//! Build script shared by the crates that link libtorch (`dp-core`, `dp-train`, `dp-toolkit`).
//!
//! 1. Finds the libtorch library folder the same way `torch-sys` does with
//!    `LIBTORCH_USE_PYTORCH=1` (the `torch` package of the active Python), or `LIBTORCH_LIB`.
//! 2. Sets an rpath to it, so the workspace's binaries, tests and examples run without
//!    `LD_LIBRARY_PATH`. On another machine `LD_LIBRARY_PATH` still wins (the rpath is a
//!    DT_RUNPATH). Cargo passes link arguments to the package's own targets only: a crate
//!    that depends on ours gets libtorch from `dp-core`'s build script instead (a link search
//!    path inside its `OUT_DIR`, which `cargo run` and `cargo test` put on the loader's path),
//!    and `torch_cuda` through `dp_core`'s reference to it (`dp-core/src/cuda_link.rs`).
//!
//! `dp-core`'s own build script includes this file as a module (to compile its C++ shim
//! against the same libtorch), hence the public items.

use std::path::PathBuf;
use std::process::Command;

const PRINT_TORCH_LIB: &str =
    "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";

/// Emits the rpath above (a warning instead when libtorch is not found).
pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let Some(lib_dir) = torch_lib_dir() else {
        println!(
            "cargo:warning=libtorch not found: run `make setup` (or `scripts/setup.sh`) and build \
             through `make`, or set LIBTORCH_LIB; binaries will need LD_LIBRARY_PATH"
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
}

/// libtorch's library folder: `$LIBTORCH_LIB/lib`, or the active Python's `torch/lib`.
pub fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(lib) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    std::env::var_os("LIBTORCH_USE_PYTORCH")?;
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let output = Command::new(python)
        .args(["-c", PRINT_TORCH_LIB])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}
