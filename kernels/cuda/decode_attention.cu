// Split-KV paged decode attention: every token of the batch is one sequence's single query.
//
// Block (t, g, s) takes token t's query heads of KV head g's GQA group (all of them: each loaded
// key serves the whole group) over keys [s * split_len, (s + 1) * split_len) clipped to the
// token's context positions[t] + 1, read on the device. It walks its keys in tiles of
// kDecodeTileKeys = kThreads:
//   1. scores: thread j takes key j of the tile and dots its K row with every head's q (q in
//      shared memory, fp32, pre-scaled by scale * log2 e, read as warp-wide broadcasts);
//   2. online softmax in the exp2 domain: one warp per head rescales its running max m and sum l
//      and turns the tile's scores into probabilities;
//   3. P.V: thread (c, r) owns dims [c * kVec, (c + 1) * kVec) of every head's output in
//      registers and the tile's keys r, r + R, ...; the kVec-wide V chunks of a warp are
//      contiguous, so V is read coalesced.
// Then the R partial outputs of each dim are summed in a fixed order through shared memory and
// written either as the final bf16 output (one split) or as fp32 partials (o unnormalised, m,
// l) that CombineSplitsKernel merges. Everything is fp32 inside with one final bf16 rounding,
// and every reduction has a fixed order, so a launch is deterministic.
//
// NOTE: K and V are read straight from global memory, without shared-memory staging: each key
// is read once per block, its 16-byte chunks (kVec = 8) sit in L1 between a thread's
// consecutive loads, and several blocks per SM keep enough loads in flight to stay
// bandwidth-bound. Heads are padded with zero queries to a compiled group size kG, so the inner
// loops have compile-time bounds and the accumulators stay in registers.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = kDecodeTileKeys;
static_assert(kTileKeys == kThreads, "the score phase gives each thread one key of the tile");
static_assert(kTileKeys % 32 == 0, "the softmax phase gives each lane kTileKeys / 32 scores");
constexpr int kCombineThreads = 128;
// Heads whose output partials are summed per round of the final reduction (bounds its buffer).
constexpr int kDumpHeads = 4;
// NOTE: loads issued back to back before their math, so each thread has several in flight.
constexpr int kScoreUnroll = 8;  // K chunks per thread
// V chunks per thread: 4 of 16 bytes; 2 of 4 bytes in the fallback, where 4 made ptxas spill.
template <int kVec>
constexpr int kValueUnroll = kVec == 8 ? 4 : 2;

struct DecodeParams {
  const bf16* q;  // [num_tokens, q_heads, head_dim], rows q_row_stride apart
  int64_t q_row_stride;
  const bf16* k_cache;  // [num_slots, kv_heads, head_dim]
  const bf16* v_cache;
  const int32_t* positions;     // [num_tokens]
  const int32_t* token_seq;     // [num_tokens]
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int max_blocks_per_seq;
  int block_size;
  int q_heads;
  int kv_heads;
  int head_dim;
  float scale_log2;  // scale * log2(e)
  int split_len;
  int num_splits;
  bf16* out;      // [num_tokens, q_heads, head_dim]; written when num_splits == 1
  float* part_o;  // [num_tokens, q_heads, num_splits, head_dim]; when num_splits > 1
  float* part_m;  // [num_tokens, q_heads, num_splits]
  float* part_l;  // [num_tokens, q_heads, num_splits]
};

// Dynamic shared memory of SplitKvDecodeKernel<kG, kVec>, in floats.
struct SmemLayout {
  int q, s, m, l, c, dump, total;
  __host__ __device__ SmemLayout(int kg, int vec, int head_dim) {
    q = 0;                   // [kg, head_dim] scaled queries
    s = q + kg * head_dim;   // [kg, kTileKeys] scores, then probabilities
    m = s + kg * kTileKeys;  // [kg] running max (log2 domain)
    l = m + kg;              // [kg] running sum
    c = l + kg;              // [kg] this tile's rescale factor
    dump = c + kg;           // [kThreads, kDumpHeads, vec] output partials per round
    total = dump + kThreads * kDumpHeads * vec;
  }
};

// kVec bf16 values (kVec / 2 words) from a 4 * (kVec / 2)-byte aligned address.
template <int kVec>
__device__ __forceinline__ void LoadChunk(const bf16* p, uint32_t (&w)[kVec / 2]) {
  static_assert(kVec == 8 || kVec == 2, "16-byte or 4-byte chunks");
  if constexpr (kVec == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
  } else {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

// The two bf16 of a word (element 0 in the low half) as fp32; exact.
__device__ __forceinline__ float LowBf16(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float HighBf16(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// acc + q[0..kVec) . k, q in shared memory (16-byte aligned for kVec 8, 8-byte for kVec 2).
template <int kVec>
__device__ __forceinline__ float DotChunk(const float* q, const float (&k)[kVec], float acc) {
  if constexpr (kVec == 8) {
    const float4 a = reinterpret_cast<const float4*>(q)[0];
    const float4 b = reinterpret_cast<const float4*>(q)[1];
    acc = fmaf(a.x, k[0], acc);
    acc = fmaf(a.y, k[1], acc);
    acc = fmaf(a.z, k[2], acc);
    acc = fmaf(a.w, k[3], acc);
    acc = fmaf(b.x, k[4], acc);
    acc = fmaf(b.y, k[5], acc);
    acc = fmaf(b.z, k[6], acc);
    return fmaf(b.w, k[7], acc);
  } else {
    const float2 a = reinterpret_cast<const float2*>(q)[0];
    acc = fmaf(a.x, k[0], acc);
    return fmaf(a.y, k[1], acc);
  }
}

// NOTE: P.V keeps kG * kVec fp32 accumulators per thread; past 64 they would spill, so the
// heads are cut into slices, each taken by its own kThreads / slices threads (which then
// read each V chunk once per slice, from L1).
template <int kG, int kVec>
constexpr int kHeadSlices = kG* kVec > 64 ? kG* kVec / 64 : 1;
static_assert(16 % kHeadSlices<16, 8> == 0, "slices split the heads evenly");

template <int kG, int kVec>
__global__ void __launch_bounds__(kThreads) SplitKvDecodeKernel(DecodeParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int D = p.head_dim;
  const SmemLayout lay(kG, kVec, D);
  float* q_s = smem + lay.q;
  float* s_s = smem + lay.s;
  float* m_s = smem + lay.m;
  float* l_s = smem + lay.l;
  float* c_s = smem + lay.c;
  float* dump = smem + lay.dump;

  const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x;
  const int group = p.q_heads / p.kv_heads;
  const int head0 = g * group;
  const int context = p.positions[t] + 1;
  const int key_begin = split * p.split_len;
  const int key_end = min(context, key_begin + p.split_len);
  // Partial state of query head head0 + h sits at index part + h * num_splits.
  const int64_t part = (static_cast<int64_t>(t) * p.q_heads + head0) * p.num_splits + split;

  if (key_begin >= key_end) {  // a split past the context: an empty partial
    if (p.num_splits > 1) {
      for (int h = tid; h < group; h += kThreads) {
        p.part_m[part + static_cast<int64_t>(h) * p.num_splits] = -INFINITY;
        p.part_l[part + static_cast<int64_t>(h) * p.num_splits] = 0.0f;
      }
    }
    return;
  }

  for (int idx = tid; idx < kG * D; idx += kThreads) {
    const int h = idx / D, d = idx - h * D;
    q_s[idx] = h < group
                   ? ToFloat(p.q[t * p.q_row_stride + static_cast<int64_t>(head0 + h) * D + d]) *
                         p.scale_log2
                   : 0.0f;  // padding heads: scores 0, outputs never written
  }
  for (int h = tid; h < kG; h += kThreads) {
    m_s[h] = -INFINITY;
    l_s[h] = 0.0f;
  }

  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  const int64_t kv_row = static_cast<int64_t>(p.kv_heads) * D;
  const int64_t head_offset = static_cast<int64_t>(g) * D;
  auto row_offset = [&](int key) {
    const int64_t slot =
        static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size;
    return slot * kv_row + head_offset;
  };

  // P.V ownership: head slice hs (heads hs * kSliceHeads ...), chunk c of those heads' outputs,
  // keys r, r + R, ... of each tile.
  constexpr int kSliceThreads = kThreads / kHeadSlices<kG, kVec>;
  constexpr int kSliceHeads = kG / kHeadSlices<kG, kVec>;
  const int chunks = D / kVec;  // <= kSliceThreads: D <= 256, kVec 2 (1 slice) or 8 (<= 4)
  const int phases = kSliceThreads / chunks;
  const int my_hs = tid / kSliceThreads, my_c = tid % kSliceThreads % chunks,
            my_r = tid % kSliceThreads / chunks;
  const bool pv_thread = my_r < phases;
  const int pv_head0 = my_hs * kSliceHeads;
  float o[kSliceHeads][kVec];
#pragma unroll
  for (int h = 0; h < kSliceHeads; ++h)
#pragma unroll
    for (int e = 0; e < kVec; ++e) o[h][e] = 0.0f;
  __syncthreads();

  for (int tile0 = key_begin; tile0 < key_end; tile0 += kTileKeys) {
    const int tile_len = min(kTileKeys, key_end - tile0);

    // 1. Scores of key tile0 + tid against every head.
    {
      float acc[kG];
#pragma unroll
      for (int h = 0; h < kG; ++h) acc[h] = 0.0f;
      if (tid < tile_len) {
        const bf16* k_row = p.k_cache + row_offset(tile0 + tid);
        for (int d0 = 0; d0 < D; d0 += kScoreUnroll * kVec) {
          uint32_t w[kScoreUnroll][kVec / 2];
#pragma unroll
          for (int u = 0; u < kScoreUnroll; ++u) {
            if (d0 + u * kVec < D) {
              LoadChunk<kVec>(k_row + d0 + u * kVec, w[u]);
            } else {
#pragma unroll
              for (int i = 0; i < kVec / 2; ++i) w[u][i] = 0u;
            }
          }
#pragma unroll
          for (int u = 0; u < kScoreUnroll; ++u) {
            if (d0 + u * kVec < D) {
              float k[kVec];
#pragma unroll
              for (int i = 0; i < kVec / 2; ++i) {
                k[2 * i] = LowBf16(w[u][i]);
                k[2 * i + 1] = HighBf16(w[u][i]);
              }
#pragma unroll
              for (int h = 0; h < kG; ++h) {
                // NOTE: every thread of the warp reads the same q words: a broadcast.
                acc[h] = DotChunk<kVec>(q_s + h * D + d0 + u * kVec, k, acc[h]);
              }
            }
          }
        }
      }
#pragma unroll
      for (int h = 0; h < kG; ++h) s_s[h * kTileKeys + tid] = tid < tile_len ? acc[h] : -INFINITY;
    }
    __syncthreads();

    // 2. Online softmax, one warp per head. The tile has at least one key, so m_new is finite.
    {
      const int warp = tid / 32, lane = tid % 32;
      for (int h = warp; h < kG; h += kWarps) {
        float* sr = s_s + h * kTileKeys;
        float v[kTileKeys / 32];
        float tile_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kTileKeys / 32; ++i) {
          v[i] = sr[lane + 32 * i];
          tile_max = fmaxf(tile_max, v[i]);
        }
        const float m_old = m_s[h];
        const float m_new = fmaxf(m_old, WarpMax(tile_max));
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < kTileKeys / 32; ++i) {
          const float e = exp2f(v[i] - m_new);  // masked keys: exp2(-inf) = 0
          sr[lane + 32 * i] = e;
          sum += e;
        }
        sum = WarpSum(sum);  // every lane has read m_s[h] before lane 0 writes it below
        const float correction = exp2f(m_old - m_new);  // first tile: exp2(-inf) = 0
        if (lane == 0) {
          c_s[h] = correction;
          l_s[h] = l_s[h] * correction + sum;
          m_s[h] = m_new;
        }
      }
    }
    __syncthreads();

    // 3. o = o * correction + P . V over this thread's keys of the tile.
    if (pv_thread) {
#pragma unroll
      for (int h = 0; h < kSliceHeads; ++h) {
        const float correction = c_s[pv_head0 + h];
#pragma unroll
        for (int e = 0; e < kVec; ++e) o[h][e] *= correction;
      }
      for (int j0 = my_r; j0 < tile_len; j0 += kValueUnroll<kVec> * phases) {
        uint32_t w[kValueUnroll<kVec>][kVec / 2];
#pragma unroll
        for (int u = 0; u < kValueUnroll<kVec>; ++u) {
          const int j = j0 + u * phases;
          if (j < tile_len) {
            LoadChunk<kVec>(p.v_cache + row_offset(tile0 + j) + my_c * kVec, w[u]);
          } else {
#pragma unroll
            for (int i = 0; i < kVec / 2; ++i) w[u][i] = 0u;
          }
        }
#pragma unroll
        for (int u = 0; u < kValueUnroll<kVec>; ++u) {
          const int j = j0 + u * phases;
          if (j < tile_len) {
            float v[kVec];
#pragma unroll
            for (int i = 0; i < kVec / 2; ++i) {
              v[2 * i] = LowBf16(w[u][i]);
              v[2 * i + 1] = HighBf16(w[u][i]);
            }
#pragma unroll
            for (int h = 0; h < kSliceHeads; ++h) {
              const float pj = s_s[(pv_head0 + h) * kTileKeys + j];
#pragma unroll
              for (int e = 0; e < kVec; ++e) o[h][e] = fmaf(pj, v[e], o[h][e]);
            }
          }
        }
      }
    }
    __syncthreads();  // the next tile overwrites s_s and c_s
  }

  // Sum the phases' partial outputs, kDumpHeads heads of each slice per round, phase 0 first.
#pragma unroll
  for (int h0 = 0; h0 < kSliceHeads; h0 += kDumpHeads) {
    if (pv_thread) {
#pragma unroll
      for (int hh = 0; hh < kDumpHeads; ++hh) {
        if (h0 + hh < kSliceHeads) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) dump[(tid * kDumpHeads + hh) * kVec + e] = o[h0 + hh][e];
        }
      }
    }
    __syncthreads();
    for (int idx = tid; idx < kHeadSlices<kG, kVec> * kDumpHeads * D; idx += kThreads) {
      const int hs = idx / (kDumpHeads * D), hh = idx / D % kDumpHeads, d = idx % D;
      const int h = hs * kSliceHeads + h0 + hh;
      if (h0 + hh >= kSliceHeads || h >= group) continue;
      const int c = d / kVec, e = d - c * kVec;
      const float* src = dump + (hs * kSliceThreads + c) * kDumpHeads * kVec + hh * kVec + e;
      float sum = 0.0f;
      for (int r = 0; r < phases; ++r) sum += src[r * chunks * kDumpHeads * kVec];
      if (p.num_splits == 1) {
        // NOTE: __fdividef (2 ulp, no slow-path call): an IEEE division's call would make the
        // accumulators still live here spill around it. 1 <= l <= 2^31, in its valid range.
        p.out[(static_cast<int64_t>(t) * p.q_heads + head0 + h) * D + d] =
            ToBf16(__fdividef(sum, l_s[h]));
      } else {
        p.part_o[(part + static_cast<int64_t>(h) * p.num_splits) * D + d] = sum;
      }
    }
    __syncthreads();  // dump is refilled by the next round
  }
  if (p.num_splits > 1) {
    for (int h = tid; h < group; h += kThreads) {
      p.part_m[part + static_cast<int64_t>(h) * p.num_splits] = m_s[h];
      p.part_l[part + static_cast<int64_t>(h) * p.num_splits] = l_s[h];
    }
  }
}

// Row (token, query head) = blockIdx.x: out = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s,
// M = max_s m_s. Empty splits (m = -inf) get weight 0 and their o, never written, is not read.
__global__ void __launch_bounds__(kCombineThreads)
    CombineSplitsKernel(const float* part_o, const float* part_m, const float* part_l,
                        int num_splits, int head_dim, bf16* out) {
  __shared__ float weight[kMaxDecodeSplits];
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* m = part_m + row * num_splits;
  const float* l = part_l + row * num_splits;
  float max_m = -INFINITY;
  for (int s = threadIdx.x; s < num_splits; s += kCombineThreads) max_m = fmaxf(max_m, m[s]);
  max_m = BlockMax(max_m, scratch);  // finite: split 0 always holds key 0
  float sum = 0.0f;
  for (int s = threadIdx.x; s < num_splits; s += kCombineThreads) {
    const float w = m[s] == -INFINITY ? 0.0f : exp2f(m[s] - max_m);
    weight[s] = w;
    sum += w * l[s];
  }
  sum = BlockSum(sum, scratch);  // its barriers also publish weight[]
  const float inv_sum = 1.0f / sum;
  const float* o = part_o + row * num_splits * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += kCombineThreads) {
    float acc = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      if (weight[s] != 0.0f) acc = fmaf(weight[s], o[static_cast<int64_t>(s) * head_dim + d], acc);
    }
    out[row * head_dim + d] = ToBf16(acc * inv_sum);
  }
}

using KernelFn = void (*)(DecodeParams);

// A compiled instance for the group and chunk width, and its compiled group size kG. Compiled
// group sizes: Qwen3's (2, 4, 5, 8, 16, with or without TP) and 1; others round up.
template <int kVec>
KernelFn SelectForVec(int group, int* kg) {
  *kg = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : group <= 5 ? 5 : group <= 8 ? 8 : 16;
  switch (*kg) {
    case 1:
      return &SplitKvDecodeKernel<1, kVec>;
    case 2:
      return &SplitKvDecodeKernel<2, kVec>;
    case 4:
      return &SplitKvDecodeKernel<4, kVec>;
    case 5:
      return &SplitKvDecodeKernel<5, kVec>;
    case 8:
      return &SplitKvDecodeKernel<8, kVec>;
    default:
      return &SplitKvDecodeKernel<16, kVec>;
  }
}

struct Selection {
  KernelFn kernel = nullptr;  // null: the arguments are outside what the kernel takes
  int vec = 0;
  size_t smem = 0;
  int blocks_per_sm = 0;
  int sm_count = 0;
};

// Resident blocks per SM of `kernel` with `smem` bytes, and the SM count, per device; asked of
// the runtime once per (device, kernel, smem) (host calls only: legal during graph capture).
void QueryDevice(KernelFn kernel, size_t smem, Selection* sel) {
  struct Entry {
    int device;
    KernelFn kernel;
    size_t smem;
    int blocks_per_sm, sm_count;
  };
  static std::vector<Entry> cache;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  for (const Entry& e : cache) {
    if (e.device == device && e.kernel == kernel && e.smem == smem) {
      sel->blocks_per_sm = e.blocks_per_sm;
      sel->sm_count = e.sm_count;
      return;
    }
  }
  Entry e{device, kernel, smem, 0, 0};
  CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&e.blocks_per_sm, kernel, kThreads, smem));
  CUDA_CHECK(cudaDeviceGetAttribute(&e.sm_count, cudaDevAttrMultiProcessorCount, device));
  cache.push_back(e);
  sel->blocks_per_sm = e.blocks_per_sm;
  sel->sm_count = e.sm_count;
}

Selection Select(const PagedAttentionArgs& a) {
  Selection sel;
  if (a.workspace == nullptr || a.num_tokens <= 0 || a.kv_heads <= 0) return sel;
  if (a.q_heads % a.kv_heads != 0) return sel;
  const int group = a.q_heads / a.kv_heads;
  const int64_t capacity = static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size;
  if (group < 1 || group > kMaxDecodeGroup || a.block_size < 1 || capacity < 1) return sel;
  if (a.head_dim < 2 || a.head_dim > kMaxHeadDim || a.head_dim % 2 != 0) return sel;
  const auto aligned = [](const void* ptr, uintptr_t bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
  };
  // 16-byte K/V chunks when every row start is 16-byte aligned, else 4-byte (bf16 pairs).
  const bool vec16 = a.head_dim % 8 == 0 && aligned(a.k_cache, 16) && aligned(a.v_cache, 16);
  if (!vec16 && !(aligned(a.k_cache, 4) && aligned(a.v_cache, 4))) return sel;
  if (!aligned(a.workspace, sizeof(float))) return sel;
  int kg = 0;
  sel.vec = vec16 ? 8 : 2;
  sel.kernel = vec16 ? SelectForVec<8>(group, &kg) : SelectForVec<2>(group, &kg);
  sel.smem = SmemLayout(kg, sel.vec, a.head_dim).total * sizeof(float);
  // kG <= 16, head_dim <= 256, kVec <= 8: 16 + 8 + 16 KB and the stats, under the 48 KB default.
  TESSERA_CHECK_LE(sel.smem, size_t{48} << 10);
  QueryDevice(sel.kernel, sel.smem, &sel);
  return sel;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Keys per split for `splits` splits of `capacity` keys, rounded up to whole tiles.
int SplitLength(int64_t capacity, int64_t splits) {
  return static_cast<int>(CeilDiv(CeilDiv(capacity, splits), kTileKeys) * kTileKeys);
}

}  // namespace

size_t DecodeWorkspaceBytes(int num_tokens, int q_heads, int head_dim, int num_splits) {
  return static_cast<size_t>(num_tokens) * q_heads * num_splits * (head_dim + 2) * sizeof(float);
}

DecodeSplitPlan PlanDecodeSplits(int num_tokens, int q_heads, int kv_heads, int head_dim,
                                 int64_t key_capacity, int resident_blocks,
                                 size_t workspace_bytes) {
  // NOTE: as many splits as fit one wave of resident blocks and no more: a second, partial wave
  // would cost as long as the first. Splits are whole tiles (kTileKeys keys), so every tile of a
  // split but the one holding the context's end is full.
  const int64_t capacity = std::max<int64_t>(key_capacity, 1);
  const int64_t blocks = std::max<int64_t>(int64_t{num_tokens} * kv_heads, 1);
  int64_t splits = std::max<int64_t>(resident_blocks, 1) / blocks;
  splits = std::min<int64_t>(splits, kMaxDecodeSplits);
  const size_t per_split = DecodeWorkspaceBytes(num_tokens, q_heads, head_dim, 1);
  if (splits > 1 && per_split > 0) {
    splits = std::min<int64_t>(splits, static_cast<int64_t>(workspace_bytes / per_split));
  }
  DecodeSplitPlan plan;
  if (splits <= 1) {
    plan.num_splits = 1;
    plan.split_len = SplitLength(capacity, 1);
    return plan;
  }
  plan.split_len = SplitLength(capacity, splits);
  // Rounding the length up can leave trailing splits with no key at all: drop them.
  plan.num_splits = static_cast<int>(CeilDiv(capacity, plan.split_len));
  return plan;
}

DecodeSplitPlan PlanSplitKvDecode(const PagedAttentionArgs& a) {
  const Selection sel = Select(a);
  if (sel.kernel == nullptr) return DecodeSplitPlan{0, 0};
  return PlanDecodeSplits(a.num_tokens, a.q_heads, a.kv_heads, a.head_dim,
                          static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size,
                          sel.sm_count * sel.blocks_per_sm, a.workspace_bytes);
}

bool LaunchSplitKvDecode(const PagedAttentionArgs& a, cudaStream_t stream) {
  const Selection sel = Select(a);
  if (sel.kernel == nullptr) return false;
  const DecodeSplitPlan plan =
      PlanDecodeSplits(a.num_tokens, a.q_heads, a.kv_heads, a.head_dim,
                       static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size,
                       sel.sm_count * sel.blocks_per_sm, a.workspace_bytes);
  DecodeParams params;
  params.q = a.q;
  params.q_row_stride = a.q_row_stride;
  params.k_cache = a.k_cache;
  params.v_cache = a.v_cache;
  params.positions = a.positions;
  params.token_seq = a.token_seq;
  params.block_tables = a.block_tables;
  params.max_blocks_per_seq = a.max_blocks_per_seq;
  params.block_size = a.block_size;
  params.q_heads = a.q_heads;
  params.kv_heads = a.kv_heads;
  params.head_dim = a.head_dim;
  params.scale_log2 = a.scale * 1.4426950408889634f;
  params.split_len = plan.split_len;
  params.num_splits = plan.num_splits;
  params.out = a.out;
  params.part_o = nullptr;
  params.part_m = nullptr;
  params.part_l = nullptr;
  if (plan.num_splits > 1) {
    const int64_t rows = static_cast<int64_t>(a.num_tokens) * a.q_heads * plan.num_splits;
    TESSERA_CHECK_LE(DecodeWorkspaceBytes(a.num_tokens, a.q_heads, a.head_dim, plan.num_splits),
                     a.workspace_bytes);
    params.part_o = static_cast<float*>(a.workspace);
    params.part_m = params.part_o + rows * a.head_dim;
    params.part_l = params.part_m + rows;
  }
  const dim3 grid(a.num_tokens, a.kv_heads, plan.num_splits);
  sel.kernel<<<grid, kThreads, sel.smem, stream>>>(params);
  CUDA_CHECK_LAUNCH();
  if (plan.num_splits > 1) {
    CombineSplitsKernel<<<a.num_tokens * a.q_heads, kCombineThreads, 0, stream>>>(
        params.part_o, params.part_m, params.part_l, plan.num_splits, a.head_dim, a.out);
    CUDA_CHECK_LAUNCH();
  }
  return true;
}

}  // namespace tessera::cuda
