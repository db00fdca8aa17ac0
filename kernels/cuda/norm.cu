// RMSNorm and the fused residual-add + RMSNorm that opens every Qwen3 sub-block.
//
// One block per row: pass 1 accumulates sum(x^2) in fp32 (and, fused, writes residual += x),
// a block reduction gives 1/sqrt(mean + eps), pass 2 writes weight * (x * inv) rounded once to
// bf16. Each thread touches the same columns in both passes, so the in-place residual needs no
// barrier between them. Fusing the add saves one read and one write of the residual per norm.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/norm.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;

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

}  // namespace

void LaunchRmsNorm(const bf16* x, const bf16* weight, int64_t rows, int64_t dim, float eps,
                   bf16* out, cudaStream_t stream) {
  if (rows == 0) return;
  RmsNormKernel<false>
      <<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(nullptr, x, weight, dim, eps, out);
  CUDA_CHECK_LAUNCH();
}

void LaunchAddRmsNorm(bf16* residual, const bf16* x, const bf16* weight, int64_t rows, int64_t dim,
                      float eps, bf16* out, cudaStream_t stream) {
  if (rows == 0) return;
  RmsNormKernel<true>
      <<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(residual, x, weight, dim, eps, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
