// dtype conversion on the device, for the weight loader: a checkpoint stored in another dtype
// than the backend's (F32, F16 or F8_E4M3 files for bf16 weights) is uploaded as it is stored and
// converted here, so the host never holds a converted copy (runtime/model/weight_loader.h).
//
// Bit-identical to the host's ConvertDType by construction: every source format is decoded by
// integer arithmetic on its bits to the exact float32 value (F16 and E4M3 values are all exact in
// float32; subnormals scale by a power of two, exact), NaN to the quiet NaN the host decoders
// return (sign kept, as their negation keeps it), and float32 -> bf16 is FloatToBF16's integer
// round-to-nearest-even rather than the intrinsic. Converting to an FP8 weight dtype with scales
// is the next step for FP8 checkpoints: a new (src, dst) pair here, nothing in the loader.
#include <algorithm>

#include "kernels/base/check.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
// NOTE: a grid-stride loop over at most this many blocks; loads are bandwidth-bound and a chunk
// of the loader (tens of MiB) fills the GPU many times over.
constexpr size_t kMaxBlocks = 4096;

__device__ __forceinline__ float SignedQuietNan(uint32_t sign) {
  return __uint_as_float((sign << 31) | 0x7fc00000u);
}

// F16ToFloat (kernels/base/dtype.cc).
__device__ __forceinline__ float F16Value(uint16_t h) {
  const uint32_t sign = h >> 15, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 31)
    return mantissa ? SignedQuietNan(sign) : __uint_as_float((sign << 31) | 0x7f800000u);
  if (exponent == 0) {  // zero or subnormal: m * 2^-24, exact
    const float v = __fmul_rn(static_cast<float>(mantissa), 5.9604644775390625e-8f);
    return __uint_as_float(__float_as_uint(v) | (sign << 31));
  }
  return __uint_as_float((sign << 31) | ((exponent + 112) << 23) | (mantissa << 13));
}

// F8E4M3ToFloat (kernels/base/dtype.cc): the "fn" variant, 0x7f / 0xff are NaN, no infinities.
__device__ __forceinline__ float F8E4M3Value(uint8_t b) {
  const uint32_t sign = b >> 7, exponent = (b >> 3) & 0xfu, mantissa = b & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return SignedQuietNan(sign);
  if (exponent == 0) {  // zero or subnormal: m * 2^-9, exact
    const float v = __fmul_rn(static_cast<float>(mantissa), 0.001953125f);
    return __uint_as_float(__float_as_uint(v) | (sign << 31));
  }
  return __uint_as_float((sign << 31) | ((exponent + 120) << 23) | (mantissa << 20));
}

// FloatToBF16 (kernels/base/dtype.h).
__device__ __forceinline__ uint16_t Bf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <DType kSrc>
__device__ __forceinline__ float Decode(const void* src, size_t i) {
  if constexpr (kSrc == DType::kF32) {
    return static_cast<const float*>(src)[i];
  } else if constexpr (kSrc == DType::kBF16) {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(src)[i]) << 16);
  } else if constexpr (kSrc == DType::kF16) {
    return F16Value(static_cast<const uint16_t*>(src)[i]);
  } else {
    return F8E4M3Value(static_cast<const uint8_t*>(src)[i]);
  }
}

template <DType kSrc, DType kDst>
__global__ void __launch_bounds__(kThreads)
    ConvertKernel(void* dst, const void* src, size_t count) {
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride) {
    const float v = Decode<kSrc>(src, i);
    if constexpr (kDst == DType::kF32) {
      static_cast<float*>(dst)[i] = v;
    } else {
      static_cast<uint16_t*>(dst)[i] = Bf16Bits(v);
    }
  }
}

template <DType kDst>
void Launch(void* dst, const void* src, DType src_dtype, size_t count, unsigned blocks,
            cudaStream_t stream) {
  switch (src_dtype) {
    case DType::kF32:
      ConvertKernel<DType::kF32, kDst><<<blocks, kThreads, 0, stream>>>(dst, src, count);
      return;
    case DType::kBF16:
      ConvertKernel<DType::kBF16, kDst><<<blocks, kThreads, 0, stream>>>(dst, src, count);
      return;
    case DType::kF16:
      ConvertKernel<DType::kF16, kDst><<<blocks, kThreads, 0, stream>>>(dst, src, count);
      return;
    case DType::kF8E4M3:
      ConvertKernel<DType::kF8E4M3, kDst><<<blocks, kThreads, 0, stream>>>(dst, src, count);
      return;
    case DType::kI32:
    case DType::kI64:
      break;
  }
  TESSERA_CHECK(false) << "Convert on the CUDA backend: integer dtype " << DTypeName(src_dtype);
}

}  // namespace

void LaunchConvert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count,
                   cudaStream_t stream) {
  TESSERA_CHECK(dst_dtype == DType::kBF16 || dst_dtype == DType::kF32)
      << "Convert on the CUDA backend: to bf16 or f32, not " << DTypeName(dst_dtype);
  if (count == 0) return;
  if (src_dtype == dst_dtype) {
    CUDA_CHECK(
        cudaMemcpyAsync(dst, src, count * DTypeSize(src_dtype), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const unsigned blocks =
      static_cast<unsigned>(std::min(kMaxBlocks, (count + kThreads - 1) / kThreads));
  if (dst_dtype == DType::kBF16) {
    Launch<DType::kBF16>(dst, src, src_dtype, count, blocks, stream);
  } else {
    Launch<DType::kF32>(dst, src, src_dtype, count, blocks, stream);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
