//! What a crate depending on ours gets without any flag of its own: libtorch found at run time
//! (`cargo test`/`cargo run` put `dp-core`'s link search path on the loader's path), the CUDA
//! backend linked where the libtorch has one (so `tch::Cuda::is_available()` is true on a GPU
//! machine), and a private training step that runs.

use dp_core::layers::DpLinear;
use dp_core::{NoiseMode, PrivacyRng, Tape};
use dp_train::{train, Batches, DpSgdConfig, PrivacyTarget};
use tch::{nn, Device, Kind, Tensor};

/// The shared libraries this process has mapped.
fn loaded_libraries() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains(".so"))
        .map(std::path::PathBuf::from)
        .collect()
}

#[test]
fn libtorch_and_its_cuda_backend_are_loaded_and_a_private_step_runs() {
    // A DP step on a small model: libtorch is loaded and works.
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = DpLinear::new(&(vs.root() / "layer"), 4, 2, true);
    let inputs = Tensor::randn([64, 4], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(2, [64], (Kind::Int64, Device::Cpu));
    let config = DpSgdConfig::for_target(
        PrivacyTarget {
            epsilon: 8.0,
            delta: 1e-3,
            dataset_size: 64,
            expected_batch_size: 16.0,
            epochs: 1.0,
            clip_norm: 1.0,
            noise: NoiseMode::Fast,
        },
        0.1,
    )
    .unwrap();
    let summary = train(
        &vs,
        |x: &Tensor, tape: &mut Tape| layer.forward(x, tape),
        Batches {
            inputs: &inputs,
            labels: &labels,
        },
        &config,
        &mut PrivacyRng::from_seed(1),
        |_| {},
    )
    .unwrap();
    assert_eq!(summary.ledger.steps(), 4);

    // The libtorch loaded is the one dp-core was built against; if it has a CUDA backend,
    // that is loaded too.
    let libraries = loaded_libraries();
    let torch_cpu = libraries
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "libtorch_cpu.so"))
        .expect("libtorch_cpu.so is loaded");
    let cuda = torch_cpu.with_file_name("libtorch_cuda.so");
    if cuda.exists() {
        assert!(
            libraries.iter().any(|p| p.file_name() == cuda.file_name()),
            "{} exists but was not loaded: CUDA would not register",
            cuda.display()
        );
    }
}
