// Peak and current bytes allocated on a CUDA device by libtorch's caching allocator: the
// numbers behind torch.cuda.memory_allocated / max_memory_allocated, read through c10's
// device-generic allocator interface (no CUDA header needed). tch exposes none of them.
//
// Every entry point returns 0 on success and 1 when libtorch raised (no such device, no
// CUDA allocator registered); nothing is thrown across the C boundary.

#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

namespace {

c10::DeviceAllocator* cuda_allocator() {
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}

}  // namespace

extern "C" int dp_cuda_memory_allocated(int device, int64_t* current, int64_t* peak) {
  try {
    auto* allocator = cuda_allocator();
    if (!allocator->initialized()) {
      // Nothing has been allocated on any device yet.
      *current = 0;
      *peak = 0;
      return 0;
    }
    const auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto& bytes =
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    *current = bytes.current;
    *peak = bytes.peak;
    return 0;
  } catch (...) {
    return 1;
  }
}

extern "C" int dp_cuda_reset_peak_memory(int device) {
  try {
    auto* allocator = cuda_allocator();
    if (allocator->initialized()) {
      allocator->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    }
    return 0;
  } catch (...) {
    return 1;
  }
}
