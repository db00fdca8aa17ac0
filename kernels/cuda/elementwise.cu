// Embedding lookup (vocab-sharded), SwiGLU activation, row gather and addition.
//
// All four are pure bandwidth: one read and one write per element, fp32 math in registers, one
// rounding to bf16 on the way out. Row-shaped ops use one block per row (grid-stride over the
// columns) so the row's index is read once; Add is a flat grid-stride loop.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    EmbeddingKernel(const bf16* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                    const int32_t* ids, bf16* out) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  bf16* row = out + t * hidden;
  if (id >= vocab_start && id < vocab_end) {
    const bf16* src = table + (id - vocab_start) * hidden;
    for (int64_t i = threadIdx.x; i < hidden; i += kThreads) row[i] = src[i];
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += kThreads) row[i] = ToBf16(0.0f);
  }
}

__global__ void __launch_bounds__(kThreads)
    SiluMulKernel(const bf16* gate_up, int64_t intermediate, bf16* out) {
  const int64_t r = blockIdx.x;
  const bf16* gate = gate_up + r * 2 * intermediate;
  const bf16* up = gate + intermediate;
  bf16* o = out + r * intermediate;
  for (int64_t i = threadIdx.x; i < intermediate; i += kThreads) {
    const float g = ToFloat(gate[i]);
    o[i] = ToBf16(g / (1.0f + expf(-g)) * ToFloat(up[i]));
  }
}

__global__ void __launch_bounds__(kThreads)
    GatherRowsKernel(const bf16* x, const int32_t* rows, int64_t dim, bf16* out) {
  const int64_t i = blockIdx.x;
  const bf16* src = x + static_cast<int64_t>(rows[i]) * dim;
  bf16* dst = out + i * dim;
  for (int64_t c = threadIdx.x; c < dim; c += kThreads) dst[c] = src[c];
}

__global__ void __launch_bounds__(kThreads)
    AddKernel(const bf16* a, const bf16* b, int64_t n, bf16* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    out[i] = ToBf16(ToFloat(a[i]) + ToFloat(b[i]));
}

}  // namespace

void LaunchEmbedding(const bf16* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                     const int32_t* ids, int n, bf16* out, cudaStream_t stream) {
  if (n == 0) return;
  EmbeddingKernel<<<n, kThreads, 0, stream>>>(table, vocab_start, vocab_end, hidden, ids, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchSiluMul(const bf16* gate_up, int64_t m, int64_t intermediate, bf16* out,
                   cudaStream_t stream) {
  if (m == 0) return;
  SiluMulKernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(gate_up, intermediate, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchGatherRows(const bf16* x, const int32_t* rows, int r, int64_t dim, bf16* out,
                      cudaStream_t stream) {
  if (r == 0) return;
  GatherRowsKernel<<<r, kThreads, 0, stream>>>(x, rows, dim, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchAdd(const bf16* a, const bf16* b, int64_t n, bf16* out, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  AddKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, b, n, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
