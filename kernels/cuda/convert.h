// Launcher for the weight loader's dtype conversion on the device (convert.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/base/dtype.h"

namespace tessera::cuda {

// dst [count] of `dst_dtype` (kBF16 or kF32) = src [count] of `src_dtype` (F32, BF16, F16 or
// F8_E4M3) converted bit for bit as ConvertDType (kernels/base/dtype.h) converts on the host.
// The same dtype is a device-to-device copy. src and dst must not overlap.
void LaunchConvert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count,
                   cudaStream_t stream);

}  // namespace tessera::cuda
