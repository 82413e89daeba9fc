//! dp-core's build script: libtorch's rpath and eager CUDA link (shared with the other crates,
//! `build/link_libtorch.rs`), and the device-memory shim (`csrc/device_memory.cpp`) compiled
//! against the same libtorch's headers. Without libtorch the shim is left out and
//! `dp_core::device_memory` reports that nothing is measured.

#[path = "../build/link_libtorch.rs"]
mod link_libtorch;

fn main() {
    link_libtorch::main();
    println!("cargo:rerun-if-changed=csrc/device_memory.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rustc-check-cfg=cfg(device_memory_shim)");
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
}
