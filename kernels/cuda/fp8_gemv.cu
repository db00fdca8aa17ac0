// The FP8-weight decode GEMV (see fp8_gemv.h).
//
// Block b owns rows [b * R, b * R + R) of w. Thread t reads the 16-byte vectors t, t + 256, ... of
// each of its rows (vector v = elements 16v .. 16v + 15, all in 128-column block v / 8), so a warp
// reads 512 contiguous bytes of a row per load. Each iteration issues 8 loads of w (R rows x U
// chunks) before using any; each chunk is widened to fp32 (e4m3 -> half is exact), dotted with the
// matching 16 elements of each row of x (L1-resident), and the dot is scaled by the block's scale.
#include "kernels/cuda/fp8_gemv.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/ops.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kLoadsInFlight = 8;
constexpr int kVectorsPerBlock = kFp8Block / 16;  // 16-byte vectors per 128-column scale block

// 16 e4m3 (4 words, element 4i + b in byte b of word i) -> 16 floats, exactly.
__device__ __forceinline__ void Unpack16(const uint4& v, float (&f)[16]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(
          static_cast<__nv_fp8x2_storage_t>(w[i] >> (16 * h)), __NV_E4M3);
      const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&raw));
      f[4 * i + 2 * h] = p.x;
      f[4 * i + 2 * h + 1] = p.y;
    }
  }
}

template <int M, int R>
__global__ void __launch_bounds__(kThreads)
    Fp8GemvKernel(const bf16* __restrict__ x, const uint8_t* __restrict__ w,
                  const float* __restrict__ scale, int64_t scale_stride, int n, int k,
                  bf16* __restrict__ y) {
  constexpr int U = kLoadsInFlight / R;
  static_assert(U >= 1 && U * R == kLoadsInFlight, "R must divide kLoadsInFlight");
  const int vectors = k / 16;
  const int row0 = blockIdx.x * R;
  const uint8_t* wr[R];
  const float* sr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = min(row0 + r, n - 1);  // rows past n re-read row n - 1; never written
    wr[r] = w + static_cast<int64_t>(row) * k;
    sr[r] = scale + (row / kFp8Block) * scale_stride;
  }
  float acc[M][R];
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[i][r] = 0.0f;

  for (int base = threadIdx.x; base < vectors; base += kThreads * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = base + u * kThreads;
#pragma unroll
      for (int r = 0; r < R; ++r)
        wv[u][r] = v < vectors ? LoadStreaming(wr[r] + 16 * v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = base + u * kThreads;
      if (v >= vectors) break;
      float wf[R][16], s[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        Unpack16(wv[u][r], wf[r]);
        s[r] = __ldg(sr[r] + v / kVectorsPerBlock);
      }
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float xa[8], xb[8];
        Unpack8(Load8(x + static_cast<int64_t>(i) * k + 16 * v), xa);
        Unpack8(Load8(x + static_cast<int64_t>(i) * k + 16 * v + 8), xb);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float dot = 0.0f;
#pragma unroll
          for (int j = 0; j < 8; ++j) dot = fmaf(xa[j], wf[r][j], dot);
#pragma unroll
          for (int j = 0; j < 8; ++j) dot = fmaf(xb[j], wf[r][8 + j], dot);
          acc[i][r] = fmaf(dot, s[r], acc[i][r]);
        }
      }
    }
  }

  GemvReduceStore<kThreads>(acc, row0, n, y);
}

template <int M>
void LaunchForRows(const bf16* x, const uint8_t* w, const float* scale, int64_t scale_stride, int n,
                   int k, bf16* y, cudaStream_t stream, int rows) {
  const auto blocks = [&](int r) { return (n + r - 1) / r; };
  switch (rows) {
    case 2:
      Fp8GemvKernel<M, 2><<<blocks(2), kThreads, 0, stream>>>(x, w, scale, scale_stride, n, k, y);
      break;
    case 4:
      Fp8GemvKernel<M, 4><<<blocks(4), kThreads, 0, stream>>>(x, w, scale, scale_stride, n, k, y);
      break;
    default:
      TESSERA_CHECK(false) << "FP8 GEMV rows per block must be 2 or 4, not " << rows;
  }
}

}  // namespace

bool Fp8GemvSupported(const bf16* x, const uint8_t* w, int64_t m, int64_t k) {
  return m >= 1 && m <= kFp8GemvMaxRows && k > 0 && k % 16 == 0 && IsAligned(x, 16) &&
         IsAligned(w, 16);
}

void LaunchFp8Gemv(const bf16* x, const uint8_t* w, const float* scale, int64_t scale_stride,
                   int64_t m, int64_t n, int64_t k, bf16* y, cudaStream_t stream,
                   int rows_per_block) {
  TESSERA_CHECK(Fp8GemvSupported(x, w, m, k))
      << "FP8 GEMV needs 1 <= m <= " << kFp8GemvMaxRows
      << ", k % 16 == 0 and 16-byte aligned x and w (m=" << m << " k=" << k << ")";
  TESSERA_CHECK(n > 0 && n < (int64_t{1} << 31) && k < (int64_t{1} << 31));
  // NOTE: half the bytes per row of a bf16 GEMV: short rows want 4 per block to keep enough
  // bytes in flight (as gemv.cu found for k < 2048 in bf16).
  const int rows = rows_per_block > 0 ? rows_per_block : (k < 4096 ? 4 : 2);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (m) {
#define TESSERA_FP8_GEMV_CASE(M)                                          \
  case M:                                                                 \
    LaunchForRows<M>(x, w, scale, scale_stride, ni, ki, y, stream, rows); \
    break;
    TESSERA_FP8_GEMV_CASE(1)
    TESSERA_FP8_GEMV_CASE(2)
    TESSERA_FP8_GEMV_CASE(3)
    TESSERA_FP8_GEMV_CASE(4)
    TESSERA_FP8_GEMV_CASE(5)
    TESSERA_FP8_GEMV_CASE(6)
    TESSERA_FP8_GEMV_CASE(7)
    default:
      LaunchForRows<8>(x, w, scale, scale_stride, ni, ki, y, stream, rows);
      break;
#undef TESSERA_FP8_GEMV_CASE
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
