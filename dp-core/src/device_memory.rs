//! Memory allocated on a CUDA device by libtorch's caching allocator: the current and peak
//! bytes behind PyTorch's `torch.cuda.memory_allocated` and `torch.cuda.max_memory_allocated`
//! (tensors' storage, rounded to the allocator's blocks; not the cached free blocks, not the
//! CUDA context). tch exposes none of these, so a small C++ shim (`csrc/device_memory.cpp`,
//! built against the same libtorch) reads them through c10's device allocator interface.
//!
//! One of the four modules of the workspace with `unsafe` code (with `host`, `collectives` and
//! `cuda_link`): the two calls into the shim, which take a device index and write two integers.

use tch::Device;

/// Bytes allocated on one CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Allocated now.
    pub current: u64,
    /// The most allocated at once since the last [`reset_peak`] (or the process's start).
    pub peak: u64,
}

/// The allocated bytes of `device`, or `None` when it is not a CUDA device, CUDA is not
/// available, or libtorch could not answer (the shim was not built, or it raised).
pub fn allocated(device: Device) -> Option<DeviceMemory> {
    let index = cuda_index(device)?;
    let (mut current, mut peak) = (0i64, 0i64);
    (shim::allocated(index, &mut current, &mut peak) == 0).then_some(DeviceMemory {
        current: current.max(0) as u64,
        peak: peak.max(0) as u64,
    })
}

/// Starts a new peak at the current allocation (`torch.cuda.reset_peak_memory_stats`); false
/// when nothing could be reset (as for [`allocated`]).
pub fn reset_peak(device: Device) -> bool {
    cuda_index(device).is_some_and(|index| shim::reset_peak(index) == 0)
}

fn cuda_index(device: Device) -> Option<i32> {
    match device {
        Device::Cuda(index) if tch::Cuda::is_available() => i32::try_from(index).ok(),
        _ => None,
    }
}

#[cfg(device_memory_shim)]
#[allow(unsafe_code)]
mod shim {
    extern "C" {
        fn dp_cuda_memory_allocated(device: i32, current: *mut i64, peak: *mut i64) -> i32;
        fn dp_cuda_reset_peak_memory(device: i32) -> i32;
    }

    pub fn allocated(device: i32, current: &mut i64, peak: &mut i64) -> i32 {
        // SAFETY: the shim writes one i64 through each pointer, both valid and exclusive for
        // the call, and catches every C++ exception before returning.
        unsafe { dp_cuda_memory_allocated(device, current, peak) }
    }

    pub fn reset_peak(device: i32) -> i32 {
        // SAFETY: the shim takes a device index only and catches every C++ exception.
        unsafe { dp_cuda_reset_peak_memory(device) }
    }
}

/// Without the shim (libtorch's headers were not found at build time) nothing is measured.
#[cfg(not(device_memory_shim))]
mod shim {
    pub fn allocated(_device: i32, _current: &mut i64, _peak: &mut i64) -> i32 {
        1
    }

    pub fn reset_peak(_device: i32) -> i32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory_to_report() {
        assert_eq!(allocated(Device::Cpu), None);
        assert!(!reset_peak(Device::Cpu));
    }

    #[test]
    fn the_shim_is_built_against_libtorch() {
        // The build finds libtorch's headers wherever it finds libtorch (tch needs both), so a
        // build without the shim is a broken build, not a CPU machine.
        const { assert!(cfg!(device_memory_shim)) }
    }

    #[test]
    fn the_shim_answers_on_a_machine_without_a_device() {
        // Linked and callable: no CUDA allocator in use yet, so either nothing allocated or
        // a caught error, never a crash.
        let (mut current, mut peak) = (-1i64, -1i64);
        match shim::allocated(0, &mut current, &mut peak) {
            0 => assert_eq!((current, peak), (0, 0)),
            code => assert_eq!(code, 1),
        }
        assert!(matches!(shim::reset_peak(0), 0 | 1));
    }
}
