// RMSNorm and the fused residual-add + RMSNorm that opens every Qwen3 sub-block.
//
// Per row: accumulate sum(x^2) in fp32 (and, fused, write residual += x rounded to bf16), reduce
// to 1/sqrt(mean + eps), then write weight * (x * inv) rounded once to bf16.
//
// The vectorised path (dim % 8 == 0, 16-byte aligned rows) keeps the row in registers: each
// thread loads up to kVec 16-byte vectors before its first use, so a row costs one read of x
// (and of the residual) and one write of each output, with every load of a thread in flight at
// once. Rows of up to 1024 elements go one per warp (a shuffle reduction, 8 rows per block);
// wider rows one per block of up to 1024 threads (5120 wide: 640 threads, one vector each).
// NOTE: at decode (one row) the old scalar loop was ~17 us: each thread's loads waited on its
// previous store (residual and x may alias), 20 round trips to memory in series.
//
// Other shapes take the scalar kernel: one block per row, two passes over the row. Each thread
// touches the same columns in both passes, so the in-place residual needs no barrier between.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/norm.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlockThreads = 1024;
constexpr int kMaxVec = 4;  // 16-byte vectors per thread and row; 4 keeps the kernel under 64 regs
constexpr int kWarpRowMaxDim = 32 * kMaxVec * 8;  // 1024: widest row a single warp owns
constexpr int kWarpRowsPerBlock = 8;

template <bool kAddResidual>
__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(bf16* residual, const bf16* x, const bf16* weight, int64_t dim, float eps,
                  bf16* out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const bf16* xr = x + row * dim;
  bf16* rr = kAddResidual ? residual + row * dim : nullptr;
  bf16* orow = out + row * dim;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float v = ToFloat(xr[i]);
    if constexpr (kAddResidual) {
      const bf16 sum = ToBf16(ToFloat(rr[i]) + v);
      rr[i] = sum;
      v = ToFloat(sum);
    }
    sum_sq += v * v;
  }
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = ToFloat(kAddResidual ? rr[i] : xr[i]);
    orow[i] = ToBf16(ToFloat(weight[i]) * (v * inv));
  }
}

// kWarpRow: one warp per row (rows of blockIdx.x * warps + warp), else one block per row.
// Thread `lane` of a row's group owns vectors lane, lane + group, ... (< dim / 8).
template <bool kAddResidual, bool kWarpRow, int kVec>
__global__ void __launch_bounds__(kMaxBlockThreads)
    RmsNormVecKernel(bf16* residual, const bf16* x, const bf16* weight, int64_t rows, int dim,
                     float eps, bf16* out) {
  __shared__ float scratch[32];
  const int64_t row =
      kWarpRow ? static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5)
               : blockIdx.x;
  if (kWarpRow && row >= rows) return;  // whole warps leave: the reduction is per warp
  const int lane = kWarpRow ? (threadIdx.x & 31) : threadIdx.x;
  const int group = kWarpRow ? 32 : blockDim.x;
  const int vecs = dim >> 3;
  const int64_t base = row * dim;

  Bf16x8 xv[kVec];
  Bf16x8 rv[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int j = lane + k * group;
    if (j < vecs) {
      xv[k] = Load8(x + base + 8 * j);
      if constexpr (kAddResidual) rv[k] = Load8(residual + base + 8 * j);
    }
  }
  float sum_sq = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int j = lane + k * group;
    if (j < vecs) {
      float f[8];
      Unpack8(xv[k], f);
      if constexpr (kAddResidual) {
        float r[8];
        Unpack8(rv[k], r);
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] += r[e];
        xv[k] = Pack8(f);  // the residual as stored: rounded to bf16
        Store8(residual + base + 8 * j, xv[k]);
        Unpack8(xv[k], f);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) sum_sq += f[e] * f[e];
    }
  }
  sum_sq = kWarpRow ? WarpSum(sum_sq) : BlockSum(sum_sq, scratch);
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int j = lane + k * group;
    if (j < vecs) {
      float f[8], w[8];
      Unpack8(xv[k], f);
      Unpack8(Load8(weight + 8 * j), w);
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = w[e] * (f[e] * inv);
      Store8(out + base + 8 * j, Pack8(f));
    }
  }
}

template <bool kAddResidual, bool kWarpRow>
void LaunchVec(int vec, unsigned blocks, unsigned threads, bf16* residual, const bf16* x,
               const bf16* weight, int64_t rows, int dim, float eps, bf16* out,
               cudaStream_t stream) {
  switch (vec) {
    case 1:
      RmsNormVecKernel<kAddResidual, kWarpRow, 1>
          <<<blocks, threads, 0, stream>>>(residual, x, weight, rows, dim, eps, out);
      break;
    case 2:
      RmsNormVecKernel<kAddResidual, kWarpRow, 2>
          <<<blocks, threads, 0, stream>>>(residual, x, weight, rows, dim, eps, out);
      break;
    default:
      RmsNormVecKernel<kAddResidual, kWarpRow, 4>
          <<<blocks, threads, 0, stream>>>(residual, x, weight, rows, dim, eps, out);
      break;
  }
}

// Vectors per thread: the fewest of 1, 2, 4 that cover `vecs` with `group` threads.
int VecPerThread(int64_t vecs, int64_t group) {
  if (vecs <= group) return 1;
  if (vecs <= 2 * group) return 2;
  return 4;
}

template <bool kAddResidual>
void Launch(bf16* residual, const bf16* x, const bf16* weight, int64_t rows, int64_t dim, float eps,
            bf16* out, cudaStream_t stream) {
  if (rows == 0) return;
  const bool vectorised = dim % 8 == 0 && dim <= kMaxBlockThreads * kMaxVec * 8 &&
                          IsAligned(x, 16) && IsAligned(weight, 16) && IsAligned(out, 16) &&
                          (!kAddResidual || IsAligned(residual, 16));
  if (!vectorised) {
    RmsNormKernel<kAddResidual>
        <<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(residual, x, weight, dim, eps, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t vecs = dim / 8;
  const int d = static_cast<int>(dim);
  if (dim <= kWarpRowMaxDim) {
    const int64_t per_block = std::min<int64_t>(kWarpRowsPerBlock, rows);
    const auto blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
    LaunchVec<kAddResidual, true>(VecPerThread(vecs, 32), blocks,
                                  static_cast<unsigned>(per_block * 32), residual, x, weight, rows,
                                  d, eps, out, stream);
  } else {
    const int vec = VecPerThread(vecs, kMaxBlockThreads);
    const int64_t threads = ((vecs + vec - 1) / vec + 31) / 32 * 32;
    LaunchVec<kAddResidual, false>(vec, static_cast<unsigned>(rows), static_cast<unsigned>(threads),
                                   residual, x, weight, rows, d, eps, out, stream);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void LaunchRmsNorm(const bf16* x, const bf16* weight, int64_t rows, int64_t dim, float eps,
                   bf16* out, cudaStream_t stream) {
  Launch<false>(nullptr, x, weight, rows, dim, eps, out, stream);
}

void LaunchAddRmsNorm(bf16* residual, const bf16* x, const bf16* weight, int64_t rows, int64_t dim,
                      float eps, bf16* out, cudaStream_t stream) {
  Launch<true>(residual, x, weight, rows, dim, eps, out, stream);
}

}  // namespace tessera::cuda
