//! dp-core's build script: libtorch's rpath and eager CUDA link (shared with the other crates,
//! `build/link_libtorch.rs`), and two shims compiled against the same libtorch's headers: the
//! device-memory one (`csrc/device_memory.cpp`) and the c10d collectives
//! (`csrc/collectives.cpp`, with Gloo's headers from `csrc/third_party/gloo`). Without
//! libtorch's headers the shims are left out: `dp_core::device_memory` then reports that
//! nothing is measured, and `dp_core::Collectives` connects no group of more than one process.

#[path = "../build/link_libtorch.rs"]
mod link_libtorch;

fn main() {
    link_libtorch::main();
    println!("cargo:rustc-check-cfg=cfg(torch_cuda_link)");
    if let Some(lib_dir) = link_libtorch::torch_lib_dir() {
        link_for_dependents(&lib_dir);
    }
    println!("cargo:rerun-if-changed=csrc/device_memory.cpp");
    println!("cargo:rerun-if-changed=csrc/collectives.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rustc-check-cfg=cfg(device_memory_shim)");
    println!("cargo:rustc-check-cfg=cfg(collectives_shim)");
    let Some(lib_dir) = link_libtorch::torch_lib_dir() else {
        return;
    };
    let include = lib_dir.with_file_name("include");
    if !include.join("c10/core/CachingDeviceAllocator.h").exists() {
        println!(
            "cargo:warning=libtorch's headers are not in {}: GPU memory will not be measured",
            include.display()
        );
        return;
    }
    // The PyPI wheels use the C++11 ABI, as torch-sys assumes unless told otherwise.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/device_memory.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("dp_device_memory");
    println!("cargo:rustc-cfg=device_memory_shim");
    if !include
        .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
        .exists()
    {
        println!(
            "cargo:warning=libtorch's c10d headers are not in {}: collectives across processes are left out",
            include.display()
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/collectives.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/third_party/gloo")
        .define("USE_C10D_GLOO", None)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("dp_collectives");
    println!("cargo:rustc-cfg=collectives_shim");
}

/// What every crate linking `dp-core` needs, which Cargo passes on to them (unlike link
/// arguments): libtorch's folder as a link search path inside `OUT_DIR` (a symbolic link to
/// it), which `cargo run` and `cargo test` of any dependent put on the loader's path; and, when
/// the libtorch has CUDA, `torch_cuda` as a linked library. Nothing calls into `torch_cuda`, so
/// the linker's `--as-needed` would drop it (CUDA would never register with libtorch and
/// `tch::Cuda::is_available()` would be false on a GPU machine): `src/cuda_link.rs` holds a
/// reference to one of its functions, which keeps it.
fn link_for_dependents(lib_dir: &std::path::Path) {
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let link = out_dir.join("libtorch");
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(lib_dir, &link).is_ok() {
        println!("cargo:rustc-link-search=native={}", link.display());
    }
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-cfg=torch_cuda_link");
    }
}
