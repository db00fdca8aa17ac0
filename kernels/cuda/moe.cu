// The MoE router's softmax + top-k, and the combine that sums each token's expert outputs.
//
// RouterTopK: one block per token. The softmax is computed in fp32 over all experts into shared
// memory (max, exp, sum by block reductions), then top_k rounds of a block arg-max pick the
// experts: larger probability wins, equal probabilities go to the lower id (as the CPU
// reference's sort), and a picked expert is marked -1 (probabilities are >= 0). The weights are
// renormalised by their sum in pick order.
//
// MoeCombine: one block per token, each thread a column; the token's expert outputs are summed in
// fp32 in the order the host listed them (increasing expert id), with no atomics, so the result is
// the same on every run and every rank layout.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/moe.h"

namespace tessera::cuda {
namespace {

constexpr int kRouterThreads = 128;
constexpr int kMaxTopK = 64;

__global__ void __launch_bounds__(kRouterThreads)
    RouterTopKKernel(const bf16* logits, int num_experts, int top_k, bool normalize, int32_t* ids,
                     float* weights) {
  extern __shared__ float probs[];  // [num_experts]
  __shared__ float scratch[32];
  __shared__ float best_val[kRouterThreads / 32];
  __shared__ int best_idx[kRouterThreads / 32];
  __shared__ float picked[kMaxTopK];
  const int64_t t = blockIdx.x;
  const bf16* row = logits + t * num_experts;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  float mx = -INFINITY;
  for (int e = tid; e < num_experts; e += kRouterThreads) mx = fmaxf(mx, ToFloat(row[e]));
  mx = BlockMax(mx, scratch);
  float sum = 0.0f;
  for (int e = tid; e < num_experts; e += kRouterThreads) {
    const float p = expf(ToFloat(row[e]) - mx);
    probs[e] = p;
    sum += p;
  }
  sum = BlockSum(sum, scratch);
  for (int e = tid; e < num_experts; e += kRouterThreads) probs[e] /= sum;
  __syncthreads();

  for (int k = 0; k < top_k; ++k) {
    float v = -1.0f;
    int idx = num_experts;
    for (int e = tid; e < num_experts; e += kRouterThreads) {
      if (probs[e] > v) {  // strided ascending scan: the first of equal values is the lowest id
        v = probs[e];
        idx = e;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, offset);
      if (ov > v || (ov == v && oi < idx)) {
        v = ov;
        idx = oi;
      }
    }
    if (lane == 0) {
      best_val[warp] = v;
      best_idx[warp] = idx;
    }
    __syncthreads();
    if (tid == 0) {
      float bv = best_val[0];
      int bi = best_idx[0];
      for (int w = 1; w < kRouterThreads / 32; ++w) {
        if (best_val[w] > bv || (best_val[w] == bv && best_idx[w] < bi)) {
          bv = best_val[w];
          bi = best_idx[w];
        }
      }
      ids[t * top_k + k] = bi;
      picked[k] = bv;
      probs[bi] = -1.0f;
    }
    __syncthreads();
  }
  if (tid == 0) {
    float top_sum = 0.0f;
    for (int k = 0; k < top_k; ++k) top_sum += picked[k];
    for (int k = 0; k < top_k; ++k)
      weights[t * top_k + k] = normalize ? picked[k] / top_sum : picked[k];
  }
}

constexpr int kCombineThreads = 256;

__global__ void __launch_bounds__(kCombineThreads)
    MoeCombineKernel(const bf16* y, const int32_t* rows, const int32_t* widx, const float* weights,
                     int slots, int64_t hidden, bf16* out) {
  const int64_t t = blockIdx.x;
  const int32_t* tr = rows + t * slots;
  const int32_t* tw = widx + t * slots;
  for (int64_t c = threadIdx.x; c < hidden; c += kCombineThreads) {
    float acc = 0.0f;
    for (int s = 0; s < slots && tr[s] >= 0; ++s)
      acc += weights[tw[s]] * ToFloat(y[static_cast<int64_t>(tr[s]) * hidden + c]);
    out[t * hidden + c] = ToBf16(acc);
  }
}

}  // namespace

void LaunchRouterTopK(const bf16* logits, int n, int num_experts, int top_k, bool normalize,
                      int32_t* ids, float* weights, cudaStream_t stream) {
  if (n == 0) return;
  TESSERA_CHECK(top_k >= 1 && top_k <= kMaxTopK && top_k <= num_experts)
      << "top_k " << top_k << " of " << num_experts << " experts";
  const size_t smem = static_cast<size_t>(num_experts) * sizeof(float);
  TESSERA_CHECK(smem <= 48 * 1024) << num_experts << " experts";
  RouterTopKKernel<<<n, kRouterThreads, smem, stream>>>(logits, num_experts, top_k, normalize, ids,
                                                        weights);
  CUDA_CHECK_LAUNCH();
}

void LaunchMoeCombine(const bf16* y, const int32_t* rows, const int32_t* widx, const float* weights,
                      int n, int slots, int64_t hidden, bf16* out, cudaStream_t stream) {
  if (n == 0) return;
  MoeCombineKernel<<<n, kCombineThreads, 0, stream>>>(y, rows, widx, weights, slots, hidden, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
