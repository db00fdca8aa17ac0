// The decode GEMV (see gemv.h): y [m, n] = x [m, k] @ w [n, k]^T, m <= 8, bf16 in and out.
//
// Block b owns rows [b * R, b * R + R) of w. Thread t of the block (8 warps) reads the 16-byte
// vectors t, t + 256, t + 512, ... of each of its R rows (vector v = elements 8v .. 8v + 7), so a
// warp reads 512 contiguous bytes of a row per load (coalesced), and the block's 8 warps sweep
// the row together. Each iteration issues R * U loads of w (R * U = 8) before using any, then for
// each chunk reads the M matching vectors of x (L1/L2 resident: x is at most 8 rows) and
// accumulates M * R fp32 partial sums.
#include "kernels/cuda/gemv.h"

#include "kernels/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemv.cuh"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
// Loads of w in flight per thread per iteration.
constexpr int kLoadsInFlight = 8;

template <int M, int R>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const bf16* __restrict__ x, const bf16* __restrict__ w, int n, int k,
               bf16* __restrict__ y) {
  constexpr int U = kLoadsInFlight / R;  // chunks per iteration
  static_assert(U >= 1 && U * R == kLoadsInFlight, "R must divide kLoadsInFlight");
  const int vectors = k / 8;  // 16-byte vectors per row
  const int row0 = blockIdx.x * R;
  // Rows past n re-read row n - 1 (valid memory, no branch in the loop); never written.
  const bf16* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wr[r] = w + static_cast<int64_t>(min(row0 + r, n - 1)) * k;

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
        wv[u][r] = v < vectors ? LoadStreaming(wr[r] + 8 * v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = base + u * kThreads;
      if (v >= vectors) break;
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) Unpack8(Bf16x8{wv[u][r]}, wf[r]);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float xf[8];
        Unpack8(Load8(x + static_cast<int64_t>(i) * k + 8 * v), xf);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][r] = fmaf(xf[j], wf[r][j], acc[i][r]);
      }
    }
  }

  GemvReduceStore<kThreads>(acc, row0, n, y);
}

template <int M>
void LaunchForRows(const bf16* x, const bf16* w, int n, int k, bf16* y, cudaStream_t stream,
                   int rows) {
  const auto blocks = [&](int r) { return (n + r - 1) / r; };
  switch (rows) {
    case 1:
      GemvKernel<M, 1><<<blocks(1), kThreads, 0, stream>>>(x, w, n, k, y);
      break;
    case 2:
      GemvKernel<M, 2><<<blocks(2), kThreads, 0, stream>>>(x, w, n, k, y);
      break;
    case 4:
      GemvKernel<M, 4><<<blocks(4), kThreads, 0, stream>>>(x, w, n, k, y);
      break;
    default:
      TESSERA_CHECK(false) << "GEMV rows per block must be 1, 2 or 4, not " << rows;
  }
}

}  // namespace

bool GemvSupported(const bf16* x, const bf16* w, int64_t m, int64_t k) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return m >= 1 && m <= kGemvMaxRows && k > 0 && k % 8 == 0 && aligned(x) && aligned(w);
}

bool GemvPreferred(int64_t m, int64_t n, int64_t k) {
  (void)n;
  return m == 1 || (m == 2 && k >= 2048);
}

// NOTE: 2 rows per block measured fastest or within 2% at m <= 2 for every k >= 4352; short rows
// (k = 1280) want 4 per block, so that a block has enough bytes in flight to cover its start.
int GemvRowsPerBlock(int64_t m, int64_t n, int64_t k) {
  (void)m;
  (void)n;
  return k < 2048 ? 4 : 2;
}

void LaunchGemv(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, bf16* y,
                cudaStream_t stream, int rows_per_block) {
  TESSERA_CHECK(GemvSupported(x, w, m, k))
      << "GEMV needs 1 <= m <= " << kGemvMaxRows
      << ", k % 8 == 0 and 16-byte aligned x and w (m=" << m << " k=" << k << ")";
  TESSERA_CHECK(n > 0 && n < (int64_t{1} << 31) && k < (int64_t{1} << 31));
  const int rows = rows_per_block > 0 ? rows_per_block : GemvRowsPerBlock(m, n, k);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (m) {
    case 1:
      LaunchForRows<1>(x, w, ni, ki, y, stream, rows);
      break;
    case 2:
      LaunchForRows<2>(x, w, ni, ki, y, stream, rows);
      break;
    case 3:
      LaunchForRows<3>(x, w, ni, ki, y, stream, rows);
      break;
    case 4:
      LaunchForRows<4>(x, w, ni, ki, y, stream, rows);
      break;
    case 5:
      LaunchForRows<5>(x, w, ni, ki, y, stream, rows);
      break;
    case 6:
      LaunchForRows<6>(x, w, ni, ki, y, stream, rows);
      break;
    case 7:
      LaunchForRows<7>(x, w, ni, ki, y, stream, rows);
      break;
    default:
      LaunchForRows<8>(x, w, ni, ki, y, stream, rows);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
