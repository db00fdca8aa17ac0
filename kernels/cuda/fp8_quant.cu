// Per-token 1 x 128 FP8 quantization (see fp8_quant.h).
#include "kernels/cuda/fp8_quant.h"

#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/ops.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kGroupsPerBlock = kThreads / 32;  // one warp per group
static_assert(kFp8Block == 32 * 4, "a warp covers one group with 4 elements per lane");

// NOTE: x / scale (not x * (1 / scale)) and amax / 448 with IEEE division, as the CPU reference
// computes them: the bytes and scales match it exactly. The kernel is bound by memory, not by the
// division.
__device__ __forceinline__ uint16_t ToE4M3x2(float a, float b) {
  return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

// The lane's 4 elements of a row from column j (0 past k).
template <bool kVector>
__device__ __forceinline__ void Load4(const bf16* row, int64_t j, int64_t k, float (&v)[4]) {
  if (kVector) {  // k % 4 == 0 and rows 8-byte aligned: the 4 elements are all in or all out
    if (j < k) {
      const uint2 bits = *reinterpret_cast<const uint2*>(row + j);
      v[0] = __uint_as_float(bits.x << 16);
      v[1] = __uint_as_float(bits.x & 0xffff0000u);
      v[2] = __uint_as_float(bits.y << 16);
      v[3] = __uint_as_float(bits.y & 0xffff0000u);
    } else {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
    }
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = j + e < k ? ToFloat(row[j + e]) : 0.0f;
  }
}

// kSiluMul: x is gate_up [m, 2k] and the quantized value silu(gate) * up, in fp32 (the formula of
// elementwise.cu's SiluMul, without its bf16 rounding).
template <bool kVector, bool kSiluMul>
__global__ void __launch_bounds__(kThreads)
    QuantizeFp8Kernel(const bf16* __restrict__ x, int64_t m, int64_t k, int64_t groups,
                      uint8_t* __restrict__ data, float* __restrict__ scale, int64_t scale_stride) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + (threadIdx.x >> 5);
  if (item >= m * groups) return;  // whole warps leave together
  const int64_t t = item / groups, g = item % groups;
  const int64_t j = g * kFp8Block + lane * 4;  // this lane's first column
  float v[4];
  if constexpr (kSiluMul) {
    const bf16* gate = x + t * 2 * k;
    float u[4];
    Load4<kVector>(gate, j, k, v);
    Load4<kVector>(gate + k, j, k, u);
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = v[e] / (1.0f + expf(-v[e])) * u[e];
  } else {
    Load4<kVector>(x + t * k, j, k, v);
  }
  const float amax =
      WarpMax(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
  const float s = amax > 0.0f ? __fdiv_rn(amax, kFp8Max) : 1.0f;
  if (lane == 0) scale[g * scale_stride + t] = s;
  const uint16_t lo = ToE4M3x2(__fdiv_rn(v[0], s), __fdiv_rn(v[1], s));
  const uint16_t hi = ToE4M3x2(__fdiv_rn(v[2], s), __fdiv_rn(v[3], s));
  uint8_t* out = data + t * k;
  if (kVector) {
    if (j < k) *reinterpret_cast<uint32_t*>(out + j) = lo | (static_cast<uint32_t>(hi) << 16);
  } else {
    const uint8_t b[4] = {static_cast<uint8_t>(lo), static_cast<uint8_t>(lo >> 8),
                          static_cast<uint8_t>(hi), static_cast<uint8_t>(hi >> 8)};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (j + e < k) out[j + e] = b[e];
  }
}

template <bool kSiluMul>
void Launch(const bf16* x, int64_t m, int64_t k, uint8_t* data, float* scale, int64_t scale_stride,
            cudaStream_t stream) {
  TESSERA_CHECK(scale_stride >= m) << "activation scale stride " << scale_stride << " < m " << m;
  if (m == 0 || k == 0) return;
  const int64_t groups = Fp8Blocks(k);
  const int64_t blocks = (m * groups + kGroupsPerBlock - 1) / kGroupsPerBlock;
  TESSERA_CHECK(blocks < (int64_t{1} << 31));
  const auto grid = static_cast<unsigned>(blocks);
  if (k % 4 == 0 && IsAligned(x, 8) && IsAligned(data, 4)) {
    QuantizeFp8Kernel<true, kSiluMul>
        <<<grid, kThreads, 0, stream>>>(x, m, k, groups, data, scale, scale_stride);
  } else {
    QuantizeFp8Kernel<false, kSiluMul>
        <<<grid, kThreads, 0, stream>>>(x, m, k, groups, data, scale, scale_stride);
  }
  CUDA_CHECK_LAUNCH();
}

// Grid (x: blocks over one weight's n * k elements, grid-stride; y: the batch). A weight that
// `only` skips returns before touching memory. The scale index is Fp8ScaleIndex's.
__global__ void __launch_bounds__(kThreads)
    DequantizeFp8WeightKernel(const uint8_t* __restrict__ data, const float* __restrict__ scale,
                              Fp8Weight layout, int64_t n, int64_t k, int64_t scale_batch_stride,
                              const int32_t* __restrict__ only, bf16* __restrict__ out) {
  const int64_t b = blockIdx.y;
  if (only != nullptr && only[b] == 0) return;
  const int64_t total = n * k;
  data += b * total;
  out += b * total;
  scale += b * scale_batch_stride;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t i = idx / k, j = idx % k;
    const int64_t part = layout.part_rows > 0 ? i / layout.part_rows : 0;
    const int64_t row = layout.part_rows > 0 ? i % layout.part_rows : i;
    const float s = scale[(part * layout.part_scale_rows + (row + layout.row_offset) / kFp8Block) *
                              layout.scale_stride +
                          (j + layout.col_offset) / kFp8Block];
    const __half_raw h = __nv_cvt_fp8_to_halfraw(data[idx], __NV_E4M3);
    out[idx] = ToBf16(__half2float(__half(h)) * s);
  }
}

__global__ void __launch_bounds__(kThreads)
    MarkExpertsKernel(const int32_t* __restrict__ ids, int64_t count, int first, int num,
                      int32_t* __restrict__ used) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride) {
    const int e = ids[i] - first;
    if (e >= 0 && e < num) used[e] = 1;  // every writer stores 1: no atomics needed
  }
}

// One block per 128 x 128 weight block: amax over the block (warp shuffles, then the 8 warps in
// shared memory), then every element scaled and converted.
__global__ void __launch_bounds__(kThreads)
    QuantizeFp8WeightKernel(const bf16* __restrict__ w, int64_t n, int64_t k,
                            uint8_t* __restrict__ data, float* __restrict__ scale,
                            int64_t scale_stride) {
  __shared__ float warp_amax[kThreads / 32];
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kFp8Block;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kFp8Block;
  float amax = 0.0f;
  for (int e = threadIdx.x; e < kFp8Block * kFp8Block; e += kThreads) {
    const int64_t i = i0 + e / kFp8Block, j = j0 + e % kFp8Block;
    if (i < n && j < k) amax = fmaxf(amax, fabsf(ToFloat(w[i * k + j])));
  }
  amax = WarpMax(amax);
  if ((threadIdx.x & 31) == 0) warp_amax[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warp_amax[0];
#pragma unroll
  for (int i = 1; i < kThreads / 32; ++i) amax = fmaxf(amax, warp_amax[i]);
  const float s = amax > 0.0f ? __fdiv_rn(kFp8Max, amax) : 1.0f;
  if (threadIdx.x == 0) scale[blockIdx.y * scale_stride + blockIdx.x] = __fdiv_rn(1.0f, s);
  for (int e = threadIdx.x; e < kFp8Block * kFp8Block; e += kThreads) {
    const int64_t i = i0 + e / kFp8Block, j = j0 + e % kFp8Block;
    if (i < n && j < k) {
      data[i * k + j] = static_cast<uint8_t>(
          __nv_cvt_float_to_fp8(__fmul_rn(ToFloat(w[i * k + j]), s), __NV_SATFINITE, __NV_E4M3));
    }
  }
}

}  // namespace

void LaunchDequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                               int64_t scale_batch_stride, bf16* out, const int32_t* only,
                               cudaStream_t stream) {
  const int64_t total = n * k;
  if (total == 0 || batch == 0) return;
  TESSERA_CHECK(batch < 65536) << "DequantizeFp8Weight: batch " << batch;
  // NOTE: about 2 waves of a 132-SM GPU over the whole batch, whatever its size.
  const int64_t per = std::max<int64_t>(
      1, std::min<int64_t>((total + kThreads - 1) / kThreads, (2048 + batch - 1) / batch));
  const dim3 grid(static_cast<unsigned>(per), static_cast<unsigned>(batch));
  DequantizeFp8WeightKernel<<<grid, kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(w.data), w.scale, w, n, k, scale_batch_stride, only, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchMarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used,
                       cudaStream_t stream) {
  if (num == 0) return;
  CUDA_CHECK(cudaMemsetAsync(used, 0, static_cast<size_t>(num) * sizeof(int32_t), stream));
  if (count == 0) return;
  const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 1024);
  MarkExpertsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(ids, count, first, num,
                                                                            used);
  CUDA_CHECK_LAUNCH();
}

void LaunchQuantizeFp8Weight(const bf16* w, int64_t n, int64_t k, uint8_t* data, float* scale,
                             int64_t scale_stride, cudaStream_t stream) {
  TESSERA_CHECK(scale_stride >= Fp8Blocks(k)) << "weight scale stride " << scale_stride;
  if (n == 0 || k == 0) return;
  TESSERA_CHECK(Fp8Blocks(n) < 65536) << "QuantizeFp8Weight: " << n << " rows";
  const dim3 grid(static_cast<unsigned>(Fp8Blocks(k)), static_cast<unsigned>(Fp8Blocks(n)));
  QuantizeFp8WeightKernel<<<grid, kThreads, 0, stream>>>(w, n, k, data, scale, scale_stride);
  CUDA_CHECK_LAUNCH();
}

void LaunchQuantizeFp8(const bf16* x, int64_t m, int64_t k, uint8_t* data, float* scale,
                       int64_t scale_stride, cudaStream_t stream) {
  Launch<false>(x, m, k, data, scale, scale_stride, stream);
}

void LaunchSiluMulQuantizeFp8(const bf16* gate_up, int64_t m, int64_t intermediate, uint8_t* data,
                              float* scale, int64_t scale_stride, cudaStream_t stream) {
  Launch<true>(gate_up, m, intermediate, data, scale, scale_stride, stream);
}

}  // namespace tessera::cuda
