// The FP8-weight decode GEMVs (see fp8_gemv.h).
//
// v1: block b owns rows [b * R, b * R + R) of w. Thread t reads the 16-byte vectors t, t + 256, ...
// of each of its rows (vector v = elements 16v .. 16v + 15, all in 128-column block v / 8), so a
// warp reads 512 contiguous bytes of a row per load. Each iteration issues 8 loads of w (R rows x
// U chunks) before using any; each chunk is widened to fp32 (e4m3 -> half is exact), dotted with
// the matching 16 elements of each row of x (L1-resident), and the dot is scaled by the block's
// scale.
//
// v2: block b owns rows [16b, 16b + 16) of w, one 128-row scale block; warp j of 8 takes the 128-k
// groups [j * G / 8, (j + 1) * G / 8) of G. mma.sync m16n8k16 with A = 16 rows of w, B = x^T (its
// 8 columns are x's rows; those past m are zero). Lane (g, q) (g = lane / 4, q = lane % 4) loads
// the 16 bytes at k0 + 16q of rows g and g + 8, for k0 = each 64-k step, and the 16 elements of x
// row g at the same k: 4 mma k-steps' fragments. NOTE: within a k-step the order of k is free as
// long as A and B agree, so each lane's fragments come straight from its own 16-byte loads (no
// shared memory, no shuffles): k-step t of the 4 takes the lane's elements 4t .. 4t + 3, pairs
// (4t, 4t + 2) in the fragment's first register and (4t + 1, 4t + 3) in its second, the order
// E4m3x4ToBf16 produces (x's pairs rearranged to match by one byte permute each).
#include "kernels/cuda/fp8_gemv.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdlib>
#include <cstring>

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/mma.cuh"
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

// ---- v2 ----

constexpr int kMmaWarps = 8, kMmaThreads = 32 * kMmaWarps, kMmaRows = 16;
static_assert(kFp8Block % kMmaRows == 0, "a block's 16 rows lie in one 128-row scale block");

// 4 e4m3 (element i in byte i of q) -> bf16 pairs even = (e0, e2), odd = (e1, e3), exactly.
// Each byte's sign goes to its half's bit 15 and its exponent and mantissa to bits 4..10: a bf16
// of the value times 2^-120 (bias 127 against e4m3's 7; an e4m3 subnormal becomes the bf16
// subnormal of the same mantissa), then one bf16x2 multiply by 2^120 (a power of two: exact)
// restores the value. Finite e4m3 only (the NaN code 0x7f becomes 480).
__device__ __forceinline__ void E4m3x4ToBf16(uint32_t q, uint32_t& even, uint32_t& odd) {
  const uint32_t hi = q, lo = q << 8;
  const uint32_t o = (hi & 0x80008000u) | ((hi & 0x7F007F00u) >> 4);
  const uint32_t e = (lo & 0x80008000u) | ((lo & 0x7F007F00u) >> 4);
  const __nv_bfloat16 two_120 = __ushort_as_bfloat16(0x7B80);  // 2^120
  const __nv_bfloat162 bias = __halves2bfloat162(two_120, two_120);
  const __nv_bfloat162 ev = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&e), bias);
  const __nv_bfloat162 ov = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&o), bias);
  even = *reinterpret_cast<const uint32_t*>(&ev);
  odd = *reinterpret_cast<const uint32_t*>(&ov);
}

__device__ __forceinline__ uint32_t Word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// kU: 128-k groups loaded before any is used (each lane: 4 * kU loads of w in flight).
template <int kU>
__global__ void __launch_bounds__(kMmaThreads, 2)
    Fp8GemvMmaKernel(const bf16* __restrict__ x, const uint8_t* __restrict__ w,
                     const float* __restrict__ scale, int64_t scale_stride, int m, int n, int k,
                     bf16* __restrict__ y) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int row0 = blockIdx.x * kMmaRows;
  // Rows past n re-read row n - 1 (same scale block: n - 1 >= row0); never written.
  const uint8_t* wa = w + static_cast<int64_t>(min(row0 + g, n - 1)) * k + 16 * q;
  const uint8_t* wb = w + static_cast<int64_t>(min(row0 + g + 8, n - 1)) * k + 16 * q;
  const bool has_x = g < m;
  const bf16* xr = x + static_cast<int64_t>(has_x ? g : 0) * k + 16 * q;
  const float* srow = scale + static_cast<int64_t>(row0 / kFp8Block) * scale_stride;
  const int groups = (k + kFp8Block - 1) / kFp8Block;
  const int group_end = (warp + 1) * groups / kMmaWarps;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // rows g, g + 8 x columns 2q, 2q + 1
  for (int g0 = warp * groups / kMmaWarps; g0 < group_end; g0 += kU) {
    uint4 wv[kU][2][2];  // [group][64-k step][row g, row g + 8]
    float s[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int off = (g0 + u) * kFp8Block + 64 * h;
        const bool valid = g0 + u < group_end && off + 16 * q < k;
        wv[u][h][0] = valid ? LoadStreaming(wa + off) : zero;
        wv[u][h][1] = valid ? LoadStreaming(wb + off) : zero;
      }
      s[u] = g0 + u < group_end ? __ldg(srow + g0 + u) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (g0 + u >= group_end) break;
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int off = (g0 + u) * kFp8Block + 64 * h;
        const bool valid = has_x && off + 16 * q < k;
        const uint4 x0 = valid ? __ldg(reinterpret_cast<const uint4*>(xr + off)) : zero;
        const uint4 x1 = valid ? __ldg(reinterpret_cast<const uint4*>(xr + off + 8)) : zero;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          uint32_t a[4];
          E4m3x4ToBf16(Word(wv[u][h][0], t), a[0], a[2]);
          E4m3x4ToBf16(Word(wv[u][h][1], t), a[1], a[3]);
          const uint4& xv = t < 2 ? x0 : x1;
          const uint32_t p0 = Word(xv, 2 * (t & 1)), p1 = Word(xv, 2 * (t & 1) + 1);
          Mma(c, a, __byte_perm(p0, p1, 0x5410), __byte_perm(p0, p1, 0x7632));
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] = fmaf(c[i], s[u], acc[i]);
    }
  }

  // The warps' sums in index order (fixed: repeats bit for bit). [warp][i][lane]: no conflicts.
  __shared__ float partial[kMmaWarps][4][32];
#pragma unroll
  for (int i = 0; i < 4; ++i) partial[warp][i][lane] = acc[i];
  __syncthreads();
  if (threadIdx.x < kMmaRows * m) {
    const int r = threadIdx.x % kMmaRows, col = threadIdx.x / kMmaRows;
    const int from = (r % 8) * 4 + col / 2, i = (r / 8) * 2 + col % 2;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kMmaWarps; ++j) sum += partial[j][i][from];
    if (row0 + r < n) y[static_cast<int64_t>(col) * n + row0 + r] = ToBf16(sum);
  }
}

// ---- v1 ----

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

Fp8GemvVariant Fp8GemvDefaultVariant() {
  static const Fp8GemvVariant variant = [] {
    const char* env = std::getenv("TESSERA_FP8_GEMV");
    if (env == nullptr || *env == 0) return kFp8GemvDefault;
    TESSERA_CHECK(std::strcmp(env, "v1") == 0 || std::strcmp(env, "v2") == 0)
        << "TESSERA_FP8_GEMV=" << env << ": expected v1 or v2";
    return std::strcmp(env, "v1") == 0 ? Fp8GemvVariant::kV1 : Fp8GemvVariant::kV2;
  }();
  return variant;
}

void LaunchFp8Gemv(const bf16* x, const uint8_t* w, const float* scale, int64_t scale_stride,
                   int64_t m, int64_t n, int64_t k, bf16* y, cudaStream_t stream,
                   Fp8GemvVariant variant, int rows_per_block, int blocks_in_flight) {
  TESSERA_CHECK(Fp8GemvSupported(x, w, m, k))
      << "FP8 GEMV needs 1 <= m <= " << kFp8GemvMaxRows
      << ", k % 16 == 0 and 16-byte aligned x and w (m=" << m << " k=" << k << ")";
  TESSERA_CHECK(n > 0 && n < (int64_t{1} << 31) && k < (int64_t{1} << 31));
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (variant == Fp8GemvVariant::kDefault) variant = Fp8GemvDefaultVariant();
  if (variant == Fp8GemvVariant::kV2) {
    const int blocks = (ni + kMmaRows - 1) / kMmaRows;
    switch (blocks_in_flight == 0 ? 2 : blocks_in_flight) {
      case 1:
        Fp8GemvMmaKernel<1>
            <<<blocks, kMmaThreads, 0, stream>>>(x, w, scale, scale_stride, mi, ni, ki, y);
        break;
      case 2:
        Fp8GemvMmaKernel<2>
            <<<blocks, kMmaThreads, 0, stream>>>(x, w, scale, scale_stride, mi, ni, ki, y);
        break;
      case 4:
        Fp8GemvMmaKernel<4>
            <<<blocks, kMmaThreads, 0, stream>>>(x, w, scale, scale_stride, mi, ni, ki, y);
        break;
      default:
        TESSERA_CHECK(false) << "FP8 GEMV v2: 1, 2 or 4 groups in flight, not " << blocks_in_flight;
    }
    CUDA_CHECK_LAUNCH();
    return;
  }
  // NOTE: half the bytes per row of a bf16 GEMV: short rows want 4 per block to keep enough
  // bytes in flight (as gemv.cu found for k < 2048 in bf16).
  const int rows = rows_per_block > 0 ? rows_per_block : (k < 4096 ? 4 : 2);
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
