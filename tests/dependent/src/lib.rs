//! A user's crate, as far as linking goes: it depends on `dp-core` and `dp-train` by path and
//! has no build script, no `.cargo/config.toml` and no linker flags of its own. Its test
//! (`tests/dependent.rs`) checks that such a crate builds, that its binaries load libtorch
//! under `cargo test`, and that `libtorch_cuda` is linked wherever the libtorch has it.
