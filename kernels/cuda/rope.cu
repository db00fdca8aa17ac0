// Qwen3's q_norm / k_norm (RMSNorm over each head) fused with NeoX rotate-half RoPE.
//
// One warp per (token, head): lanes accumulate sum(x^2) in fp32, a warp reduction gives the
// norm, then each lane owns pairs (i, i + d/2) and rotates them in fp32 with cos/sin of the
// fp32 angle inv_freq[i] * position (evaluated in double and rounded, so as exact as
// transformers' fp32 cos/sin), writing
// bf16 in place. Fusing norm and rotation reads and writes q and k once instead of twice.
// The warp's shuffle reduction orders every lane's reads before any lane's writes.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/rope.h"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr double kInvPi = 0.31830988618379067154;

__global__ void __launch_bounds__(kWarps * 32)
    HeadNormRopeKernel(bf16* x, int64_t row_stride, int n, int heads, int head_dim,
                       const bf16* norm_weight, float eps, const int32_t* positions,
                       const float* inv_freq, float attention_scaling) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(n) * heads) return;
  const int64_t t = item / heads;
  const int h = static_cast<int>(item % heads);
  bf16* v = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
  const int half = head_dim / 2;

  float inv = 1.0f;
  if (norm_weight != nullptr) {
    float sum_sq = 0.0f;
    for (int i = lane; i < head_dim; i += 32) {
      const float e = ToFloat(v[i]);
      sum_sq += e * e;
    }
    sum_sq = WarpSum(sum_sq);
    inv = 1.0f / sqrtf(sum_sq / static_cast<float>(head_dim) + eps);
  }
  __syncwarp();
  const float pos = static_cast<float>(positions[t]);
  for (int i = lane; i < half; i += 32) {
    float a = ToFloat(v[i]);
    float b = ToFloat(v[i + half]);
    if (norm_weight != nullptr) {
      a = ToFloat(norm_weight[i]) * (a * inv);
      b = ToFloat(norm_weight[i + half]) * (b * inv);
    }
    // NOTE: sincosf's reduction of large angles (positions reach 1e5 rad) spills to local memory;
    // sincospi reduces exactly, so the fp32 angle goes through it in double.
    const float angle = inv_freq[i] * pos;
    double sin_d, cos_d;
    sincospi(static_cast<double>(angle) * kInvPi, &sin_d, &cos_d);
    const float cos_v = static_cast<float>(cos_d) * attention_scaling;
    const float sin_v = static_cast<float>(sin_d) * attention_scaling;
    v[i] = ToBf16(a * cos_v - b * sin_v);
    v[i + half] = ToBf16(b * cos_v + a * sin_v);
  }
}

}  // namespace

void LaunchHeadNormRope(bf16* x, int64_t row_stride, int n, int heads, int head_dim,
                        const bf16* norm_weight, float eps, const int32_t* positions,
                        const float* inv_freq, float attention_scaling, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(n) * heads;
  if (items == 0) return;
  const unsigned blocks = static_cast<unsigned>((items + kWarps - 1) / kWarps);
  HeadNormRopeKernel<<<blocks, kWarps * 32, 0, stream>>>(
      x, row_stride, n, heads, head_dim, norm_weight, eps, positions, inv_freq, attention_scaling);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
