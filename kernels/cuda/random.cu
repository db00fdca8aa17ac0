// Dummy weights generated on the device (`--load-format dummy`): the same counter-based generator
// as Backend::FillRandom's host default, so a model loaded on the GPU holds exactly the weights the
// host path would have uploaded, without the host loop and the upload (minutes for a 14B model).
//
// Bit-identical by construction:
//   - the generator is splitmix64 of (seed, 64-bit element index), integer arithmetic only;
//   - u = float(z >> 40) * 2^-23 - 1: a 24-bit integer is exact in fp32, the multiply by a power
//     of two is exact, and the subtraction is exact (the result is a multiple of 2^-23 in
//     [-1, 1)); the host compiles the same expression;
//   - mean + scale * u is two separately rounded fp32 operations on the host (x86-64 without
//     -mfma, so no contraction); here __fmul_rn / __fadd_rn forbid nvcc's default FMA contraction;
//   - bf16 rounding is FloatToBF16's integer round-to-nearest-even (kernels/base/dtype.h),
//     NaN included, rather than the intrinsic, so the two cannot disagree on any input.
#include <algorithm>

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/random.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
// NOTE: a grid-stride loop over at most this many blocks: enough to fill an H200 (132 SMs x 8
// resident blocks) several times over; more blocks only add launch overhead.
constexpr uint64_t kMaxBlocks = 4096;

__device__ __forceinline__ float RandomValue(uint64_t seed, uint64_t index, float mean,
                                             float scale) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + index + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = __fsub_rn(__fmul_rn(static_cast<float>(z >> 40), 2.0f / 16777216.0f), 1.0f);
  return __fadd_rn(mean, __fmul_rn(scale, u));
}

// FloatToBF16 (kernels/base/dtype.h) on the device: NaN stays a (quiet) NaN, everything else
// rounds to nearest even by integer arithmetic on the bits.
__device__ __forceinline__ uint16_t Bf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__global__ void __launch_bounds__(kThreads)
    FillRandomBf16Kernel(uint16_t* dst, uint64_t count, uint64_t seed, float mean, float scale) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kThreads;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride) {
    dst[i] = Bf16Bits(RandomValue(seed, i, mean, scale));
  }
}

__global__ void __launch_bounds__(kThreads)
    FillRandomF32Kernel(float* dst, uint64_t count, uint64_t seed, float mean, float scale) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kThreads;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride) {
    dst[i] = RandomValue(seed, i, mean, scale);
  }
}

}  // namespace

void LaunchFillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean, float scale,
                      cudaStream_t stream) {
  TESSERA_CHECK(dtype == DType::kBF16 || dtype == DType::kF32)
      << "FillRandom on the CUDA backend: bf16 or f32, not " << DTypeName(dtype);
  if (count == 0) return;
  const uint64_t n = count;
  const unsigned blocks =
      static_cast<unsigned>(std::min<uint64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads));
  if (dtype == DType::kBF16) {
    FillRandomBf16Kernel<<<blocks, kThreads, 0, stream>>>(static_cast<uint16_t*>(dst), n, seed,
                                                          mean, scale);
  } else {
    FillRandomF32Kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(dst), n, seed, mean,
                                                         scale);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
