// Embedding lookup (vocab-sharded), SwiGLU activation, row gather and addition.
//
// All four are pure bandwidth: one read and one write per element, fp32 math in registers, one
// rounding to bf16 on the way out. Where the widths are multiples of 8 and the pointers 16-byte
// aligned, each thread moves 16-byte vectors (8 bf16); other shapes take scalar loops.
// Row copies (Embedding, GatherRows) use one block per row so the row's index is read once;
// SiluMul and Add are flat grid-stride loops over vectors, the grid one full wave of resident
// blocks, so one row at decode still spreads over many SMs.
// NOTE: the old SiluMul (one block per row, scalar) took ~33 us on one 17408-wide row: each of a
// thread's 68 iterations waited on its previous store, since out may alias gate_up.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // 8 x 256 threads: a full SM

// Blocks for a grid-stride loop over `work` items: no more than one resident wave.
unsigned GridFor(int64_t work) {
  const int64_t wave = static_cast<int64_t>(CurrentSmCount()) * kBlocksPerSm;
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min((work + kThreads - 1) / kThreads, wave)));
}

__global__ void __launch_bounds__(kThreads)
    EmbeddingVecKernel(const bf16* __restrict__ table, int64_t vocab_start, int64_t vocab_end,
                       int64_t hidden, const int32_t* __restrict__ ids, bf16* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  bf16* row = out + t * hidden;
  const int64_t vecs = hidden / 8;
  if (id >= vocab_start && id < vocab_end) {
    const bf16* src = table + (id - vocab_start) * hidden;
    for (int64_t j = threadIdx.x; j < vecs; j += kThreads) Store8(row + 8 * j, Load8(src + 8 * j));
  } else {
    float zeros[8] = {};
    const Bf16x8 z = Pack8(zeros);
    for (int64_t j = threadIdx.x; j < vecs; j += kThreads) Store8(row + 8 * j, z);
  }
}

__device__ __forceinline__ Bf16x8 SiluMul8(const Bf16x8& gate, const Bf16x8& up) {
  float g[8], u[8];
  Unpack8(gate, g);
  Unpack8(up, u);
#pragma unroll
  for (int e = 0; e < 8; ++e) g[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
  return Pack8(g);
}

// Vector j of the output: row j / (I / 8), columns 8 * (j % (I / 8)) ...
__global__ void __launch_bounds__(kThreads)
    SiluMulVecKernel(const bf16* __restrict__ gate_up, int64_t m, int64_t intermediate,
                     bf16* __restrict__ out) {
  const int64_t row_vecs = intermediate / 8;
  const int64_t total = m * row_vecs;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < total;
       j += stride) {
    const int64_t r = j / row_vecs;
    const int64_t c = 8 * (j - r * row_vecs);
    const bf16* gate = gate_up + r * 2 * intermediate + c;
    const Bf16x8 g = Load8(gate);
    const Bf16x8 u = Load8(gate + intermediate);
    Store8(out + r * intermediate + c, SiluMul8(g, u));
  }
}

__global__ void __launch_bounds__(kThreads)
    GatherRowsVecKernel(const bf16* __restrict__ x, const int32_t* __restrict__ rows, int64_t dim,
                        bf16* __restrict__ out) {
  const int64_t i = blockIdx.x;
  const bf16* src = x + static_cast<int64_t>(rows[i]) * dim;
  bf16* dst = out + i * dim;
  const int64_t vecs = dim / 8;
  for (int64_t j = threadIdx.x; j < vecs; j += kThreads) Store8(dst + 8 * j, Load8(src + 8 * j));
}

// Vectors of 8, then the last n % 8 elements one per thread. out may alias a or b: each element
// is read and written by one thread only.
__global__ void __launch_bounds__(kThreads)
    AddVecKernel(const bf16* a, const bf16* b, int64_t n, bf16* out) {
  const int64_t vecs = n / 8;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = first; j < vecs; j += stride) {
    float fa[8], fb[8];
    Unpack8(Load8(a + 8 * j), fa);
    Unpack8(Load8(b + 8 * j), fb);
#pragma unroll
    for (int e = 0; e < 8; ++e) fa[e] += fb[e];
    Store8(out + 8 * j, Pack8(fa));
  }
  const int64_t tail = 8 * vecs + first;
  if (tail < n) out[tail] = ToBf16(ToFloat(a[tail]) + ToFloat(b[tail]));
}

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
  if (hidden % 8 == 0 && IsAligned(table, 16) && IsAligned(out, 16)) {
    EmbeddingVecKernel<<<n, kThreads, 0, stream>>>(table, vocab_start, vocab_end, hidden, ids, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  EmbeddingKernel<<<n, kThreads, 0, stream>>>(table, vocab_start, vocab_end, hidden, ids, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchSiluMul(const bf16* gate_up, int64_t m, int64_t intermediate, bf16* out,
                   cudaStream_t stream) {
  if (m == 0) return;
  if (intermediate % 8 == 0 && IsAligned(gate_up, 16) && IsAligned(out, 16)) {
    SiluMulVecKernel<<<GridFor(m * intermediate / 8), kThreads, 0, stream>>>(gate_up, m,
                                                                             intermediate, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  SiluMulKernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(gate_up, intermediate, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchGatherRows(const bf16* x, const int32_t* rows, int r, int64_t dim, bf16* out,
                      cudaStream_t stream) {
  if (r == 0) return;
  if (dim % 8 == 0 && IsAligned(x, 16) && IsAligned(out, 16)) {
    GatherRowsVecKernel<<<r, kThreads, 0, stream>>>(x, rows, dim, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  GatherRowsKernel<<<r, kThreads, 0, stream>>>(x, rows, dim, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchAdd(const bf16* a, const bf16* b, int64_t n, bf16* out, cudaStream_t stream) {
  if (n == 0) return;
  if (IsAligned(a, 16) && IsAligned(b, 16) && IsAligned(out, 16)) {
    AddVecKernel<<<GridFor(std::max<int64_t>(n / 8, 1)), kThreads, 0, stream>>>(a, b, n, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  AddKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, b, n, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
