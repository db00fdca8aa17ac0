// Launcher for the device-side dummy-weight generator (random.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/base/dtype.h"

namespace tessera::cuda {

// dst [count] of `dtype` (kBF16 or kF32) = mean + scale * u, u uniform in [-1, 1), bit for bit
// the values Backend::FillRandom's host default (kernels/cpu/cpu_backend.cc) produces for the
// same seed: element i depends only on (seed, i), so any launch shape gives the same values.
void LaunchFillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean, float scale,
                      cudaStream_t stream);

}  // namespace tessera::cuda
