// Expert-parallel dispatch layout, packing and combine (moe_dispatch.h).
//
// Layout: one block per destination rank r, as MoeGroupKernel (moe.cu) is one block per expert.
// Pass 1 counts, over all tokens, the distinct ranks below r that each token is sent to: that is
// where r's send rows begin. Pass 2 walks the tokens in order and gives each token with an expert
// on r the next row (a ballot prefix: the order is the tokens', never an atomic's), and records
// the row in the token's slot (its number of distinct ranks below r), so slots list ranks in
// increasing order. Block r also counts its own experts' pairs (shared-memory integer atomics:
// exact in any order), and block 0 marks each token's unused slots -1. With a block capacity C
// (the low-latency exchange's fixed blocks) r's rows start at r * C instead (pass 1's sum is not
// used) and block r marks its block's unused rows -1. Tokens from *valid_rows on (a decode graph's
// padding; the count is read on the device) take part in nothing but get slots -1. With `load`,
// block r adds its row count and its experts' pairs to the counters (each block its own entries:
// no atomics across blocks), so a recorded graph counts every replay.
//
// Pack: one block per send row, a row copy 8 bf16 per thread access, plus the token's ids and
// weights (a row of no token: zeros, ids -1). Combine: one block per token, each thread 8 columns,
// the rows summed in fp32 in slot order (increasing rank) and rounded once: the same result on
// every run. Dequantize (the FP8 payload's receiving end): one block per row, 8 bytes per thread
// access where aligned.
#include <cuda_fp8.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/moe_dispatch.h"

namespace tessera::cuda {
namespace {

constexpr int kLayoutThreads = 256;
constexpr int kMaxTopK = 64;
// Shared-memory expert counters of one rank: 48 KB.
constexpr int kMaxExpertsPerRank = 12 * 1024;

// Token t's ranks relative to rank r: whether it has an expert on r, and `below` = how many
// distinct ranks < r it has (r = num_ranks: all of them).
__device__ __forceinline__ bool TokenRanks(const int32_t* __restrict__ t_ids, int top_k,
                                           int experts_per_rank, int r, int* below) {
  bool has = false;
  int count = 0;
  for (int k = 0; k < top_k; ++k) {
    if (t_ids[k] < 0) continue;
    const int q = t_ids[k] / experts_per_rank;
    has |= q == r;
    if (q >= r) continue;
    bool first = true;
    for (int j = 0; j < k; ++j) first &= t_ids[j] < 0 || t_ids[j] / experts_per_rank != q;
    count += first ? 1 : 0;
  }
  *below = count;
  return has;
}

// Integer sum over the block; every thread gets it. `scratch` holds kLayoutThreads / 32 ints.
__device__ __forceinline__ int BlockSumInt(int v, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int sum = 0;
#pragma unroll
  for (int w = 0; w < kLayoutThreads / 32; ++w) sum += scratch[w];
  return sum;
}

// Exclusive prefix of `flag` over the block's threads (thread order), and the block's total.
__device__ __forceinline__ int BlockExclusiveCount(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  __syncthreads();
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = __popc(ballot & ((1u << lane) - 1u)), sum = 0;
#pragma unroll
  for (int w = 0; w < kLayoutThreads / 32; ++w) {
    if (w < warp) before += warp_counts[w];
    sum += warp_counts[w];
  }
  *total = sum;
  return before;
}

__global__ void __launch_bounds__(kLayoutThreads)
    MoeDispatchLayoutKernel(const int32_t* __restrict__ ids, int n, int top_k, int num_ranks,
                            int experts_per_rank, int32_t* __restrict__ rank_counts,
                            int32_t* __restrict__ expert_counts, int32_t* __restrict__ send_tokens,
                            int32_t* __restrict__ token_slots, int block_capacity,
                            const int32_t* __restrict__ valid_rows, int64_t* __restrict__ load) {
  extern __shared__ int local_counts[];  // [experts_per_rank] when expert_counts or load
  __shared__ int scratch[kLayoutThreads / 32];
  const int r = blockIdx.x;
  const int first = r * experts_per_rank;
  const bool count_experts = expert_counts != nullptr || load != nullptr;
  const int valid = valid_rows != nullptr ? min(max(*valid_rows, 0), n) : n;
  if (count_experts) {
    for (int e = threadIdx.x; e < experts_per_rank; e += kLayoutThreads) local_counts[e] = 0;
    __syncthreads();
  }
  int lower = 0;
  for (int t = threadIdx.x; t < n; t += kLayoutThreads) {
    if (t >= valid) {  // padding: no rows, no slots
      if (r == 0) {
        for (int k = 0; k < top_k; ++k) token_slots[static_cast<int64_t>(t) * top_k + k] = -1;
      }
      continue;
    }
    const int32_t* t_ids = ids + static_cast<int64_t>(t) * top_k;
    int below = 0;
    TokenRanks(t_ids, top_k, experts_per_rank, r, &below);
    lower += below;
    if (count_experts) {
      for (int k = 0; k < top_k; ++k) {
        const int local = t_ids[k] - first;
        if (t_ids[k] >= 0 && local >= 0 && local < experts_per_rank)
          atomicAdd(&local_counts[local], 1);
      }
    }
    if (r == 0) {  // the token's slots past its last rank
      int all = 0;
      TokenRanks(t_ids, top_k, experts_per_rank, num_ranks, &all);
      for (int k = all; k < top_k; ++k) token_slots[static_cast<int64_t>(t) * top_k + k] = -1;
    }
  }
  // NOTE: summed in either layout: calling it only for the packed one made ptxas spill.
  const int below_r = BlockSumInt(lower, scratch);
  const int base = block_capacity > 0 ? r * block_capacity : below_r;
  // after this loop: rows [base, next) hold r's tokens in increasing order.
  int next = base;
  for (int t0 = 0; t0 < valid; t0 += kLayoutThreads) {
    const int t = t0 + threadIdx.x;
    int below = 0;
    const bool has = t < valid && TokenRanks(ids + static_cast<int64_t>(t) * top_k, top_k,
                                             experts_per_rank, r, &below);
    int count = 0;
    const int row = next + BlockExclusiveCount(has, scratch, &count);
    if (has) {
      send_tokens[row] = t;
      token_slots[static_cast<int64_t>(t) * top_k + below] = row;
    }
    next += count;
  }
  if (threadIdx.x == 0) {
    rank_counts[r] = next - base;
    if (load != nullptr) load[r] += next - base;
  }
  if (block_capacity > 0) {
    for (int i = next + threadIdx.x; i < base + block_capacity; i += kLayoutThreads)
      send_tokens[i] = -1;
  }
  if (count_experts) {
    __syncthreads();
    for (int e = threadIdx.x; e < experts_per_rank; e += kLayoutThreads) {
      if (expert_counts != nullptr) expert_counts[first + e] = local_counts[e];
      if (load != nullptr) load[num_ranks + first + e] += local_counts[e];
    }
  }
}

constexpr int kRowThreads = 128;

template <bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    MoeDispatchPackKernel(const bf16* __restrict__ x, const int32_t* __restrict__ ids,
                          const float* __restrict__ weights,
                          const int32_t* __restrict__ send_tokens, int64_t hidden, int top_k,
                          bf16* __restrict__ send_x, int32_t* __restrict__ send_ids,
                          float* __restrict__ send_weights) {
  const int64_t i = blockIdx.x;
  const int64_t t = send_tokens[i];
  bf16* dst = send_x + i * hidden;
  if (t < 0) {  // an unused row of a fixed-capacity block
    const bf16 zero = ToBf16(0.0f);
    for (int64_t c = threadIdx.x; c < hidden; c += kRowThreads) dst[c] = zero;
    if (threadIdx.x < top_k) {
      send_ids[i * top_k + threadIdx.x] = -1;
      send_weights[i * top_k + threadIdx.x] = 0.0f;
    }
    return;
  }
  const bf16* src = x + t * hidden;
  if constexpr (kVec) {
    for (int64_t c = 8 * threadIdx.x; c < hidden; c += 8 * kRowThreads)
      Store8(dst + c, Load8(src + c));
  } else {
    for (int64_t c = threadIdx.x; c < hidden; c += kRowThreads) dst[c] = src[c];
  }
  if (threadIdx.x < top_k) {
    send_ids[i * top_k + threadIdx.x] = ids[t * top_k + threadIdx.x];
    send_weights[i * top_k + threadIdx.x] = weights[t * top_k + threadIdx.x];
  }
}

template <bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    MoeCombineRanksKernel(const bf16* __restrict__ y, const int32_t* __restrict__ token_slots,
                          int top_k, int64_t hidden, bf16* __restrict__ out) {
  __shared__ int rows[kMaxTopK];
  __shared__ int count;
  const int64_t t = blockIdx.x;
  if (threadIdx.x == 0) {
    int c = 0;
    while (c < top_k && token_slots[t * top_k + c] >= 0) {
      rows[c] = token_slots[t * top_k + c];
      ++c;
    }
    count = c;
  }
  __syncthreads();
  bf16* o = out + t * hidden;
  if constexpr (kVec) {
    for (int64_t c = 8 * threadIdx.x; c < hidden; c += 8 * kRowThreads) {
      float acc[8] = {};
      for (int s = 0; s < count; ++s) {
        float v[8];
        Unpack8(Load8(y + static_cast<int64_t>(rows[s]) * hidden + c), v);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] += v[i];
      }
      Store8(o + c, Pack8(acc));
    }
  } else {
    for (int64_t c = threadIdx.x; c < hidden; c += kRowThreads) {
      float acc = 0.0f;
      for (int s = 0; s < count; ++s) acc += ToFloat(y[static_cast<int64_t>(rows[s]) * hidden + c]);
      o[c] = ToBf16(acc);
    }
  }
}

__device__ __forceinline__ float E4m3ToFloat(uint8_t v) {
  __nv_fp8_e4m3 f;
  f.__x = v;
  return static_cast<float>(f);
}

template <bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    DequantizeFp8Kernel(const uint8_t* __restrict__ data, const float* __restrict__ scale,
                        int64_t scale_stride, int64_t k, bf16* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const uint8_t* src = data + t * k;
  bf16* dst = out + t * k;
  if constexpr (kVec) {  // 8 elements share one 128-group: k % 8 == 0
    for (int64_t c = 8 * threadIdx.x; c < k; c += 8 * kRowThreads) {
      const uint2 bytes = *reinterpret_cast<const uint2*>(src + c);
      const float s = scale[(c / 128) * scale_stride + t];
      float v[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[i] = E4m3ToFloat(static_cast<uint8_t>(bytes.x >> (8 * i))) * s;
        v[4 + i] = E4m3ToFloat(static_cast<uint8_t>(bytes.y >> (8 * i))) * s;
      }
      Store8(dst + c, Pack8(v));
    }
  } else {
    for (int64_t c = threadIdx.x; c < k; c += kRowThreads)
      dst[c] = ToBf16(E4m3ToFloat(src[c]) * scale[(c / 128) * scale_stride + t]);
  }
}

}  // namespace

void LaunchDequantizeFp8(const uint8_t* data, const float* scale, int64_t scale_stride, int64_t m,
                         int64_t k, bf16* out, cudaStream_t stream) {
  if (m == 0 || k == 0) return;
  TESSERA_CHECK(scale_stride >= m) << "activation scale stride " << scale_stride;
  if (k % 8 == 0 && IsAligned(data, 8) && IsAligned(out, 16)) {
    DequantizeFp8Kernel<true>
        <<<static_cast<unsigned>(m), kRowThreads, 0, stream>>>(data, scale, scale_stride, k, out);
  } else {
    DequantizeFp8Kernel<false>
        <<<static_cast<unsigned>(m), kRowThreads, 0, stream>>>(data, scale, scale_stride, k, out);
  }
  CUDA_CHECK_LAUNCH();
}

void LaunchMoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks,
                             int experts_per_rank, int32_t* rank_counts, int32_t* expert_counts,
                             int32_t* send_tokens, int32_t* token_slots, int block_capacity,
                             const int32_t* valid_rows, int64_t* load, cudaStream_t stream) {
  TESSERA_CHECK(num_ranks >= 1 && num_ranks < 65536) << num_ranks << " ranks";
  TESSERA_CHECK(top_k >= 1 && top_k <= kMaxTopK) << "top_k " << top_k;
  TESSERA_CHECK(experts_per_rank >= 1 && experts_per_rank <= kMaxExpertsPerRank)
      << experts_per_rank << " experts per rank";
  TESSERA_CHECK(static_cast<int64_t>(n) * top_k < (int64_t{1} << 31)) << n << " x " << top_k;
  TESSERA_CHECK(block_capacity == 0 ||
                (n <= block_capacity &&
                 static_cast<int64_t>(num_ranks) * block_capacity < (int64_t{1} << 31)))
      << n << " tokens for blocks of " << block_capacity;
  const size_t smem =
      expert_counts != nullptr || load != nullptr ? experts_per_rank * sizeof(int) : 0;
  MoeDispatchLayoutKernel<<<num_ranks, kLayoutThreads, smem, stream>>>(
      ids, n, top_k, num_ranks, experts_per_rank, rank_counts, expert_counts, send_tokens,
      token_slots, block_capacity, valid_rows, load);
  CUDA_CHECK_LAUNCH();
}

void LaunchMoeDispatchPack(const bf16* x, const int32_t* ids, const float* weights,
                           const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                           bf16* send_x, int32_t* send_ids, float* send_weights,
                           cudaStream_t stream) {
  if (rows == 0) return;
  TESSERA_CHECK(top_k >= 1 && top_k <= kRowThreads) << "top_k " << top_k;
  if (hidden % 8 == 0 && IsAligned(x, 16) && IsAligned(send_x, 16)) {
    MoeDispatchPackKernel<true><<<rows, kRowThreads, 0, stream>>>(
        x, ids, weights, send_tokens, hidden, top_k, send_x, send_ids, send_weights);
  } else {
    MoeDispatchPackKernel<false><<<rows, kRowThreads, 0, stream>>>(
        x, ids, weights, send_tokens, hidden, top_k, send_x, send_ids, send_weights);
  }
  CUDA_CHECK_LAUNCH();
}

void LaunchMoeCombineRanks(const bf16* y, const int32_t* token_slots, int n, int top_k,
                           int64_t hidden, bf16* out, cudaStream_t stream) {
  if (n == 0) return;
  TESSERA_CHECK(top_k >= 1 && top_k <= kMaxTopK) << "top_k " << top_k;
  if (hidden % 8 == 0 && IsAligned(y, 16) && IsAligned(out, 16)) {
    MoeCombineRanksKernel<true><<<n, kRowThreads, 0, stream>>>(y, token_slots, top_k, hidden, out);
  } else {
    MoeCombineRanksKernel<false><<<n, kRowThreads, 0, stream>>>(y, token_slots, top_k, hidden, out);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
