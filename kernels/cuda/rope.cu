// Qwen3's q_norm / k_norm (RMSNorm over each head) fused with NeoX rotate-half RoPE, and the
// whole per-layer step between the qkv projection and attention: q/k norm + RoPE + KV-cache write.
//
// One warp per (token, head): lanes accumulate sum(x^2) in fp32, a warp reduction gives the
// norm, then each lane rotates pairs (i, i + d/2) in fp32 with cos/sin of the fp32 angle
// inv_freq[i] * position (evaluated in double and rounded, so as exact as transformers' fp32
// cos/sin), writing bf16 in place. Fusing norm and rotation reads and writes q and k once.
//
// The vectorised path (d/2 even, d <= 256, 4-byte aligned rows) keeps the head in registers:
// lane l owns pairs i = 2l, 2l + 1 (+ 64 for d = 256), two bf16x2 loads per 64 pairs, all issued
// before the reduction. Other shapes take the scalar kernel, which reads the head twice; the
// warp's shuffle reduction orders every lane's reads before any lane's writes.
//
// The fused op (LaunchQkNormRopeKvWrite) runs the same per-head code over all q, k and v heads of
// a fused qkv row in one launch: q heads in place; k heads in place and into the key cache; v
// heads copied into the value cache (slots < 0 skipped). Its results are bit for bit those of
// HeadNormRope on q, HeadNormRope on k, then WriteKvCache. Its blocks hold one token's heads,
// so the token's cos/sin are evaluated once per block, not once per head.
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/rope.h"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kVecWarps = 8;
constexpr double kInvPi = 0.31830988618379067154;

// NOTE: sincosf's reduction of large angles (positions reach 1e5 rad) spills to local memory;
// sincospi reduces exactly, so the fp32 angle goes through it in double.
__device__ __forceinline__ void CosSin(float inv_freq, float pos, float scaling, float* cos_v,
                                       float* sin_v) {
  const float angle = inv_freq * pos;
  double sin_d, cos_d;
  sincospi(static_cast<double>(angle) * kInvPi, &sin_d, &cos_d);
  *cos_v = static_cast<float>(cos_d) * scaling;
  *sin_v = static_cast<float>(sin_d) * scaling;
}

// One head v[head_dim] by one warp, in registers: kChunks = ceil(head_dim / 128) chunks of 64
// pairs; lane owns pairs i = 2 * lane + 64 * c and i + 1 of chunk c (i < half).
template <int kChunks>
struct HeadRegs {
  __nv_bfloat162 lo[kChunks], hi[kChunks];  // elements i, i + 1 and i + half, i + half + 1
};

template <int kChunks>
__device__ __forceinline__ void LoadHead(const bf16* v, int half, int lane, HeadRegs<kChunks>* r) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int i = 2 * lane + 64 * c;
    if (i < half) {
      r->lo[c] = *reinterpret_cast<const __nv_bfloat162*>(v + i);
      r->hi[c] = *reinterpret_cast<const __nv_bfloat162*>(v + i + half);
    }
  }
}

// Norm (when `norm_weight`) and rotation of a loaded head, the result written to v and, when
// `copy` is not null, to copy. cos_sin(i, &cos, &sin) gives pair i's scaled cos and sin.
template <int kChunks, typename CosSinAt>
__device__ __forceinline__ void NormRopeStore(const HeadRegs<kChunks>& r, bf16* v, bf16* copy,
                                              int head_dim, const bf16* norm_weight, float eps,
                                              int lane, CosSinAt cos_sin) {
  const int half = head_dim / 2;
  float inv = 1.0f;
  if (norm_weight != nullptr) {
    float sum_sq = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if (2 * lane + 64 * c < half) {
        const float2 a = __bfloat1622float2(r.lo[c]), b = __bfloat1622float2(r.hi[c]);
        sum_sq += a.x * a.x + a.y * a.y + b.x * b.x + b.y * b.y;
      }
    }
    sum_sq = WarpSum(sum_sq);
    inv = 1.0f / sqrtf(sum_sq / static_cast<float>(head_dim) + eps);
  }
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int i = 2 * lane + 64 * c;
    if (i >= half) continue;
    float a[2], b[2];
    {
      const float2 fa = __bfloat1622float2(r.lo[c]), fb = __bfloat1622float2(r.hi[c]);
      a[0] = fa.x, a[1] = fa.y, b[0] = fb.x, b[1] = fb.y;
    }
    float ra[2], rb[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (norm_weight != nullptr) {
        a[e] = ToFloat(norm_weight[i + e]) * (a[e] * inv);
        b[e] = ToFloat(norm_weight[i + e + half]) * (b[e] * inv);
      }
      float cos_v, sin_v;
      cos_sin(i + e, &cos_v, &sin_v);
      ra[e] = a[e] * cos_v - b[e] * sin_v;
      rb[e] = b[e] * cos_v + a[e] * sin_v;
    }
    const __nv_bfloat162 out_lo = __floats2bfloat162_rn(ra[0], ra[1]);
    const __nv_bfloat162 out_hi = __floats2bfloat162_rn(rb[0], rb[1]);
    *reinterpret_cast<__nv_bfloat162*>(v + i) = out_lo;
    *reinterpret_cast<__nv_bfloat162*>(v + i + half) = out_hi;
    if (copy != nullptr) {
      *reinterpret_cast<__nv_bfloat162*>(copy + i) = out_lo;
      *reinterpret_cast<__nv_bfloat162*>(copy + i + half) = out_hi;
    }
  }
}

// A loaded head copied unchanged to dst.
template <int kChunks>
__device__ __forceinline__ void StoreHead(const HeadRegs<kChunks>& r, bf16* dst, int half,
                                          int lane) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int i = 2 * lane + 64 * c;
    if (i < half) {
      *reinterpret_cast<__nv_bfloat162*>(dst + i) = r.lo[c];
      *reinterpret_cast<__nv_bfloat162*>(dst + i + half) = r.hi[c];
    }
  }
}

template <int kChunks>
__global__ void __launch_bounds__(kVecWarps * 32)
    HeadNormRopeVecKernel(bf16* x, int64_t row_stride, int n, int heads, int head_dim,
                          const bf16* norm_weight, float eps, const int32_t* positions,
                          const float* inv_freq, float attention_scaling) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kVecWarps + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(n) * heads) return;
  const int64_t t = item / heads;
  const int h = static_cast<int>(item - t * heads);
  const int lane = threadIdx.x & 31;
  bf16* v = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
  HeadRegs<kChunks> r;
  LoadHead<kChunks>(v, head_dim / 2, lane, &r);
  const float pos = static_cast<float>(positions[t]);
  NormRopeStore<kChunks>(r, v, nullptr, head_dim, norm_weight, eps, lane,
                         [&](int i, float* cos_v, float* sin_v) {
                           CosSin(inv_freq[i], pos, attention_scaling, cos_v, sin_v);
                         });
}

// One block per (token, group of kVecWarps heads of q | k | v) of the fused qkv rows, one warp
// per head. NOTE: cos/sin depend on the token and the pair only: the block evaluates them once
// into shared memory (threads < half, while the heads' loads are in flight) instead of once per
// head. Same CosSin, same values: results are bit for bit those of HeadNormRope.
template <int kChunks>
__global__ void __launch_bounds__(kVecWarps * 32)
    QkNormRopeKvWriteKernel(bf16* qkv, int64_t row_stride, int q_heads, int kv_heads, int head_dim,
                            int groups, const bf16* q_norm, const bf16* k_norm, float eps,
                            const int32_t* positions, const float* inv_freq,
                            float attention_scaling, const int32_t* slot_mapping, bf16* k_cache,
                            bf16* v_cache) {
  __shared__ float cos_table[64 * kChunks], sin_table[64 * kChunks];
  const int heads = q_heads + 2 * kv_heads, half = head_dim / 2;
  const int64_t t = blockIdx.x / groups;
  const int h = static_cast<int>(blockIdx.x - t * groups) * kVecWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  bf16* v = qkv + t * row_stride + static_cast<int64_t>(h) * head_dim;
  HeadRegs<kChunks> r;
  if (h < heads) LoadHead<kChunks>(v, half, lane, &r);
  const float pos = static_cast<float>(positions[t]);
  if (threadIdx.x < half)
    CosSin(inv_freq[threadIdx.x], pos, attention_scaling, &cos_table[threadIdx.x],
           &sin_table[threadIdx.x]);
  __syncthreads();
  if (h >= heads) return;
  auto from_table = [&](int i, float* cos_v, float* sin_v) {
    *cos_v = cos_table[i];
    *sin_v = sin_table[i];
  };
  if (h < q_heads) {
    NormRopeStore<kChunks>(r, v, nullptr, head_dim, q_norm, eps, lane, from_table);
    return;
  }
  const int64_t slot = slot_mapping[t];
  const int64_t kv_width = static_cast<int64_t>(kv_heads) * head_dim;
  if (h < q_heads + kv_heads) {
    bf16* cached = slot < 0
                       ? nullptr
                       : k_cache + slot * kv_width + static_cast<int64_t>(h - q_heads) * head_dim;
    NormRopeStore<kChunks>(r, v, cached, head_dim, k_norm, eps, lane, from_table);
    return;
  }
  if (slot < 0) return;
  StoreHead<kChunks>(
      r, v_cache + slot * kv_width + static_cast<int64_t>(h - q_heads - kv_heads) * head_dim, half,
      lane);
}

// Whether the vectorised kernels take a head layout: pairs of bf16 stay 4-byte aligned and a
// warp's registers hold the head.
bool VecHeads(const void* x, int64_t row_stride, int head_dim) {
  return head_dim % 4 == 0 && head_dim <= 256 && row_stride % 2 == 0 && IsAligned(x, 4);
}

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
    float cos_v, sin_v;
    CosSin(inv_freq[i], pos, attention_scaling, &cos_v, &sin_v);
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
  if (VecHeads(x, row_stride, head_dim)) {
    const auto blocks = static_cast<unsigned>((items + kVecWarps - 1) / kVecWarps);
    if (head_dim <= 128) {
      HeadNormRopeVecKernel<1>
          <<<blocks, kVecWarps * 32, 0, stream>>>(x, row_stride, n, heads, head_dim, norm_weight,
                                                  eps, positions, inv_freq, attention_scaling);
    } else {
      HeadNormRopeVecKernel<2>
          <<<blocks, kVecWarps * 32, 0, stream>>>(x, row_stride, n, heads, head_dim, norm_weight,
                                                  eps, positions, inv_freq, attention_scaling);
    }
    CUDA_CHECK_LAUNCH();
    return;
  }
  const unsigned blocks = static_cast<unsigned>((items + kWarps - 1) / kWarps);
  HeadNormRopeKernel<<<blocks, kWarps * 32, 0, stream>>>(
      x, row_stride, n, heads, head_dim, norm_weight, eps, positions, inv_freq, attention_scaling);
  CUDA_CHECK_LAUNCH();
}

void LaunchQkNormRopeKvWrite(bf16* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                             int head_dim, const bf16* q_norm, const bf16* k_norm, float eps,
                             const int32_t* positions, const float* inv_freq,
                             float attention_scaling, const int32_t* slot_mapping, bf16* k_cache,
                             bf16* v_cache, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(n) * (q_heads + 2 * kv_heads);
  if (items == 0) return;
  if (!VecHeads(qkv, row_stride, head_dim) || !IsAligned(k_cache, 4) || !IsAligned(v_cache, 4)) {
    bf16* k = qkv + static_cast<int64_t>(q_heads) * head_dim;
    LaunchHeadNormRope(qkv, row_stride, n, q_heads, head_dim, q_norm, eps, positions, inv_freq,
                       attention_scaling, stream);
    LaunchHeadNormRope(k, row_stride, n, kv_heads, head_dim, k_norm, eps, positions, inv_freq,
                       attention_scaling, stream);
    LaunchWriteKvCache(k, k + static_cast<int64_t>(kv_heads) * head_dim, row_stride, n, kv_heads,
                       head_dim, slot_mapping, k_cache, v_cache, stream);
    return;
  }
  const int groups = (q_heads + 2 * kv_heads + kVecWarps - 1) / kVecWarps;
  const auto blocks = static_cast<unsigned>(static_cast<int64_t>(n) * groups);
  if (head_dim <= 128) {
    QkNormRopeKvWriteKernel<1><<<blocks, kVecWarps * 32, 0, stream>>>(
        qkv, row_stride, q_heads, kv_heads, head_dim, groups, q_norm, k_norm, eps, positions,
        inv_freq, attention_scaling, slot_mapping, k_cache, v_cache);
  } else {
    QkNormRopeKvWriteKernel<2><<<blocks, kVecWarps * 32, 0, stream>>>(
        qkv, row_stride, q_heads, kv_heads, head_dim, groups, q_norm, k_norm, eps, positions,
        inv_freq, attention_scaling, slot_mapping, k_cache, v_cache);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
