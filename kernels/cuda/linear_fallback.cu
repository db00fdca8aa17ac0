// A plain bf16 GEMM for the shapes cuBLASLt declines (in practice: operands at odd element
// offsets, such as one expert's rows of a hidden size that is not a multiple of 8).
//
// y [m, n] = x [m, k] w [n, k]^T with fp32 accumulation: 16 x 16 output tiles, each thread one
// output, k walked in 16-wide tiles staged through shared memory. Correct, not fast; the LtGemm
// plan cache sends a shape here only when the heuristic finds no cuBLASLt algorithm for it.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm.h"

namespace tessera::cuda {
namespace {

constexpr int kTile = 16;

__global__ void __launch_bounds__(kTile* kTile)
    LinearFallbackKernel(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, bf16* y) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ws[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + ty;  // of y and x
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;  // of y
  const int64_t w_row = static_cast<int64_t>(blockIdx.x) * kTile + ty;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    xs[ty][tx] = row < m && k0 + tx < k ? ToFloat(x[row * k + k0 + tx]) : 0.0f;
    ws[ty][tx] = w_row < n && k0 + tx < k ? ToFloat(w[w_row * k + k0 + tx]) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTile; ++i) acc += xs[ty][i] * ws[tx][i];
    __syncthreads();
  }
  if (row < m && col < n) y[row * n + col] = ToBf16(acc);
}

}  // namespace

void LaunchLinearFallback(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, bf16* y,
                          cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile),
                  static_cast<unsigned>((m + kTile - 1) / kTile));
  LinearFallbackKernel<<<grid, kTile * kTile, 0, stream>>>(x, w, m, n, k, y);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
