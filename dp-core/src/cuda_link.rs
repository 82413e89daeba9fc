//! Keeps `libtorch_cuda` linked into every binary that uses `dp-core`.
//!
//! libtorch registers its CUDA backend when `libtorch_cuda.so` is loaded; nothing in Rust calls
//! into it, so the linker's default `--as-needed` would leave it out and a GPU machine would
//! report no CUDA. The build script links it (a `rustc-link-lib`, which Cargo passes on to
//! dependent crates, unlike link arguments) and this static refers to one of its C functions,
//! so the reference survives into the final link of any crate depending on `dp-core`.
//! `aoti_torch_create_cuda_guard` belongs to libtorch's stable C interface (AOTInductor's
//! shim); it is never called.

#[allow(unsafe_code)]
mod reference {
    #[link(name = "torch_cuda")]
    extern "C" {
        fn aoti_torch_create_cuda_guard();
    }

    #[used]
    static KEEP_TORCH_CUDA: unsafe extern "C" fn() = aoti_torch_create_cuda_guard;
}
