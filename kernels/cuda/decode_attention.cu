// Split-KV paged decode attention: every token of the batch is one sequence's single query.
//
// Two split kernels share the plan, the partial layout and the combine kernel: a tensor-core one
// (TcDecodeKernel, further down) for head_dim 64 and 128 with 16-byte aligned rows, the shapes
// models use, and the fp32 one described here for every other shape. On an H200 at Qwen3-14B's
// shape the tensor-core kernel reads the KV cache at 3.7 TB/s (32 x 4K keys) where this one
// reached 1.5 (ReportsKvBandwidth in tests/kernels/cuda/attention_test.cc).
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
#include "kernels/cuda/mma.cuh"

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

// A split with no keys of its token's context: partials (m = -inf, l = 0) that the combine
// weighs 0, for the `group` query heads from `part` on (strided by num_splits). With one split
// the kernel writes the output directly, so there is nothing to write.
__device__ __forceinline__ void WriteEmptyPartials(const DecodeParams& p, int64_t part, int group,
                                                   int tid, int threads) {
  if (p.num_splits <= 1) return;
  for (int h = tid; h < group; h += threads) {
    p.part_m[part + static_cast<int64_t>(h) * p.num_splits] = -INFINITY;
    p.part_l[part + static_cast<int64_t>(h) * p.num_splits] = 0.0f;
  }
}

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
    WriteEmptyPartials(p, part, group, tid, kThreads);
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

// ---- The tensor-core kernel: head_dim 64 or 128, 16-byte aligned rows ----
//
// Block (t, g, s) as above, 4 warps, but its keys are the context's tiles s, s + S, ... (below).
// The block streams its keys through shared memory in tiles
// of kTcKeys = 64 keys (K and V rows gathered through the block table by 16-byte cp.async, each
// warp's copies covering whole 256-byte rows, kTcStages<kD> tiles in flight) and warp w takes
// keys 16w .. 16w + 15 of every tile with mma.sync m16n8k16: S = Q K^T with the GQA group's
// query heads as the 16 rows (zero rows past the group), an online softmax per row in fp32
// (exp2 domain), O += P V. Each warp keeps its own running (m, l, O); at the end the 4 warps'
// states are merged in a fixed order through shared memory, as the combine kernel merges splits.
//
// NOTE: P is split into bf16 hi + lo parts (hi = bf16(p), lo = bf16(p - hi)), each multiplied
// by V on the tensor cores: p is then carried to ~2^-16 relative, far below the output's one
// bf16 rounding, so this kernel keeps the fp32 kernel's tolerance u. The second mma costs tensor
// time the memory-bound loop has spare (per 16 keys a warp does 48 mma against 8 KB of K/V).
// Q (bf16, unscaled: scores are scaled in fp32 after the exact bf16 products) stays in registers
// as A fragments for the whole block.
constexpr int kTcWarps = 4;
constexpr int kTcThreads = kTcWarps * 32;
constexpr int kTcKeys = 16 * kTcWarps;  // keys per shared-memory tile, 16 per warp
static_assert(kTcThreads == kThreads, "both kernels share the occupancy query's block size");
static_assert(kTileKeys % kTcKeys == 0, "split lengths are whole tiles of both kernels");
// NOTE: stages of K/V tiles (kTcKeys x kD x 2 x 2 bytes each: 32 KB at d128) in flight per block:
// 3 at d128 is 100 KB per block, two blocks per SM, and up to 4 tiles (128 KB) being fetched per
// SM, well past the ~50 KB that covers the memory latency at full bandwidth.
template <int kD>
constexpr int kTcStages = kD == 128 ? 3 : 4;

template <int kD>
struct TcSmem {
  static constexpr int kRowBytes = kD * 2;
  static constexpr int kStageBytes = 2 * kTcKeys * kRowBytes;  // K tile, then V tile
  static constexpr int kQ = 0;                                 // [16, kD] bf16, swizzled
  static constexpr int kKv = kQ + 16 * kRowBytes;              // kTcStages<kD> stages
  static constexpr int kTotal = kKv + kTcStages<kD> * kStageBytes;
  // After the key loop the stages hold the warps' states for the merge: O [warps, 16, kOStride]
  // fp32 (rows padded against bank conflicts), then m and l [warps, 16].
  static constexpr int kOStride = kD + 8;
  static constexpr int kMergeO = kKv;
  static constexpr int kMergeM = kMergeO + kTcWarps * 16 * kOStride * 4;
  static constexpr int kMergeL = kMergeM + kTcWarps * 16 * 4;
  static_assert(kMergeL + kTcWarps * 16 * 4 <= kTotal, "the merge fits in the stages");
};

// (hi, lo) bf16 pairs of (x, y): hi = bf16(x), lo = bf16(x - hi), exact subtraction in fp32.
__device__ __forceinline__ void SplitBf16(float x, float y, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  const float2 back = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x - back.x, y - back.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

template <int kD>
__global__ void __launch_bounds__(kTcThreads, 2) TcDecodeKernel(DecodeParams p) {
  using L = TcSmem<kD>;
  constexpr int kStages = kTcStages<kD>;
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  constexpr int kDTiles = kD / 8;  // n tiles of O
  constexpr int kRowBytes = L::kRowBytes;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qr = lane / 4, tig = lane % 4;  // mma fragment row group and thread-in-group
  const int group = p.q_heads / p.kv_heads;
  const int head0 = g * group;
  const int context = p.positions[t] + 1;
  // NOTE: the context's tiles are dealt round-robin, split s taking tiles s, s + S, s + 2S, ...
  // (S = num_splits), rather than a fixed key range of split_len keys: S is planned for the
  // graph's key capacity, often far above the context, and ranges would leave every split but
  // the first few idle (at 1K keys of a 40K capacity, 1 block per KV head instead of 16).
  const int key_end = context;
  const int context_tiles = (context + kTcKeys - 1) / kTcKeys;
  // Partial state of query head head0 + h sits at index part + h * num_splits.
  const int64_t part = (static_cast<int64_t>(t) * p.q_heads + head0) * p.num_splits + split;

  if (split >= context_tiles) {  // no tile for this split: an empty partial
    WriteEmptyPartials(p, part, group, tid, kTcThreads);
    return;
  }

  const int32_t* table =
      p.block_tables + static_cast<int64_t>(p.token_seq[t]) * p.max_blocks_per_seq;
  const int64_t kv_row = static_cast<int64_t>(p.kv_heads) * kD;
  const int64_t head_offset = static_cast<int64_t>(g) * kD;
  const int num_tiles = (context_tiles - split - 1) / p.num_splits + 1;  // this split's tiles
  // First key of this split's tile `tile`.
  auto tile_key0 = [&](int tile) { return (split + tile * p.num_splits) * kTcKeys; };
  // Issues the copies of tile `tile` into stage `stage`; keys at or past key_end are zero-filled
  // (V must be finite where P is 0; their scores are masked).
  auto load_tile = [&](int tile, int stage) {
    constexpr int kRowsPerPass = kTcThreads / kChunks;
    const uint32_t k_dst = smem_base + L::kKv + stage * L::kStageBytes;
    const uint32_t v_dst = k_dst + kTcKeys * kRowBytes;
    const int chunk = tid % kChunks;
#pragma unroll
    for (int i = 0; i < kTcKeys / kRowsPerPass; ++i) {
      const int r = tid / kChunks + i * kRowsPerPass;
      const int key = tile_key0(tile) + r;
      const bool valid = key < key_end;
      int64_t off = 0;
      if (valid) {
        const int64_t slot =
            static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size;
        off = slot * kv_row + head_offset + chunk * 8;
      }
      CpAsync16(TileAddr<kD>(k_dst, r, chunk), p.k_cache + off, valid);
      CpAsync16(TileAddr<kD>(v_dst, r, chunk), p.v_cache + off, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) load_tile(s, s);
    CpAsyncCommit();  // empty groups too: the loop's wait counts kStages - 1 groups ahead
  }

  // The group's query rows (zero rows past the group) into shared memory, then into registers.
  for (int c = tid; c < 16 * kChunks; c += kTcThreads) {
    const int row = c / kChunks, chunk = c % kChunks;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row < group) {
      v = *reinterpret_cast<const uint4*>(p.q + t * p.q_row_stride +
                                          static_cast<int64_t>(head0 + row) * kD + chunk * 8);
    }
    *reinterpret_cast<uint4*>(smem + (TileAddr<kD>(L::kQ, row, chunk))) = v;
  }
  __syncthreads();
  // ldmatrix lane offsets (LaneOffset): Q rows 0-7 / 8-15 (lanes 0-7 / 8-15) at chunk 2ks, then
  // the same at 2ks + 1 (lanes 16-31); K keys 0-7 at chunks 2ks, 2ks + 1, then keys 8-15; V keys
  // 0-7 / 8-15 at chunk 2dp, then the same at 2dp + 1.
  const uint32_t q_lane = LaneOffset<kD>((lane & 7) + 8 * ((lane >> 3) & 1), lane >> 4);
  const uint32_t k_lane = LaneOffset<kD>((lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1);
  const uint32_t v_lane = q_lane;
  uint32_t qa[kD / 16][4];
#pragma unroll
  for (int ks = 0; ks < kD / 16; ++ks) LdMatrixX4(qa[ks], smem_base + L::kQ + (q_lane ^ (ks << 5)));

  // This thread's rows: qr (c0, c1 of every tile) and qr + 8 (c2, c3). m in the log2 domain; l
  // is this thread's share of the row sum (its 2 columns of each 8), summed over the quad last.
  float o[kDTiles][4];
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  for (int kt = 0; kt < num_tiles; ++kt) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();  // tile kt visible to every warp; every warp is done with tile kt - 1
    {
      const int next = kt + kStages - 1;  // into the stage tile kt - 1 used
      if (next < num_tiles) load_tile(next, next % kStages);
      CpAsyncCommit();
    }
    const int key0 = tile_key0(kt) + warp * 16;
    if (key0 >= key_end) continue;  // this warp's keys are all past the context
    const uint32_t k_s =
        smem_base + L::kKv + (kt % kStages) * L::kStageBytes + warp * 16 * kRowBytes;
    const uint32_t v_s = k_s + kTcKeys * kRowBytes;

    // S[16 heads, 16 keys] = Q K^T, two n tiles of 8 keys.
    float s[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t kb[4];
      LdMatrixX4(kb, k_s + (k_lane ^ (ks << 5)));
      Mma(s[0], qa[ks], kb[0], kb[1]);
      Mma(s[1], qa[ks], kb[2], kb[3]);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= p.scale_log2;
    if (key0 + 16 > key_end) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int key = key0 + j * 8 + 2 * tig;
        if (key >= key_end) s[j][0] = s[j][2] = -INFINITY;
        if (key + 1 >= key_end) s[j][1] = s[j][3] = -INFINITY;
      }
    }

    // Online softmax over the quad (the 4 threads sharing a row). key0 < key_end, so every row
    // has a finite score here and the new maxima are finite.
    float mx_a = m_a, mx_b = m_b;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      mx_a = fmaxf(mx_a, fmaxf(s[j][0], s[j][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
    }
    const float corr_a = Exp2(m_a - mx_a);  // first tile: exp2(-inf) = 0 (O and l are 0)
    const float corr_b = Exp2(m_b - mx_b);
    m_a = mx_a;
    m_b = mx_b;
    // NOTE: once the running maxima settle most tiles leave them unchanged: skip the rescale.
    if (__any_sync(0xffffffffu, corr_a != 1.0f || corr_b != 1.0f)) {
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        o[i][0] *= corr_a;
        o[i][1] *= corr_a;
        o[i][2] *= corr_b;
        o[i][3] *= corr_b;
      }
    }

    // P as A fragments (keys 0-7 from s[0], 8-15 from s[1]), split into hi and lo parts.
    uint32_t ph[4], pl[4];
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float a0 = Exp2(s[h][0] - mx_a), a1 = Exp2(s[h][1] - mx_a);
      const float b0 = Exp2(s[h][2] - mx_b), b1 = Exp2(s[h][3] - mx_b);
      sum_a += a0 + a1;
      sum_b += b0 + b1;
      SplitBf16(a0, a1, ph[2 * h], pl[2 * h]);
      SplitBf16(b0, b1, ph[2 * h + 1], pl[2 * h + 1]);
    }
    l_a = l_a * corr_a + sum_a;
    l_b = l_b * corr_b + sum_b;
#pragma unroll
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t vb[4];
      LdMatrixX4Trans(vb, v_s + (v_lane ^ (dp << 5)));
      Mma(o[2 * dp], ph, vb[0], vb[1]);
      Mma(o[2 * dp + 1], ph, vb[2], vb[3]);
      Mma(o[2 * dp], pl, vb[0], vb[1]);
      Mma(o[2 * dp + 1], pl, vb[2], vb[3]);
    }
  }

  // Merge the warps' states: every copy has landed and every warp is done with the stages.
  CpAsyncWait<0>();
  __syncthreads();
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  float* merge_o = reinterpret_cast<float*>(smem + L::kMergeO);
  float* merge_m = reinterpret_cast<float*>(smem + L::kMergeM);
  float* merge_l = reinterpret_cast<float*>(smem + L::kMergeL);
  {
    float* row_a = merge_o + (warp * 16 + qr) * L::kOStride + 2 * tig;
    float* row_b = row_a + 8 * L::kOStride;
    if (qr < group) {
#pragma unroll
      for (int i = 0; i < kDTiles; ++i)
        *reinterpret_cast<float2*>(row_a + i * 8) = make_float2(o[i][0], o[i][1]);
    }
    if (qr + 8 < group) {
#pragma unroll
      for (int i = 0; i < kDTiles; ++i)
        *reinterpret_cast<float2*>(row_b + i * 8) = make_float2(o[i][2], o[i][3]);
    }
    if (tig == 0) {  // a warp with no key keeps m = -inf, l = 0, O = 0: weight 0 below
      merge_m[warp * 16 + qr] = m_a;
      merge_m[warp * 16 + qr + 8] = m_b;
      merge_l[warp * 16 + qr] = l_a;
      merge_l[warp * 16 + qr + 8] = l_b;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < group * kD; idx += kTcThreads) {
    const int h = idx / kD, d = idx % kD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) mx = fmaxf(mx, merge_m[w * 16 + h]);  // finite: warp 0
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) {
      const float weight = Exp2(merge_m[w * 16 + h] - mx);
      sum = fmaf(weight, merge_l[w * 16 + h], sum);
      acc = fmaf(weight, merge_o[(w * 16 + h) * L::kOStride + d], acc);
    }
    if (p.num_splits == 1) {
      p.out[(static_cast<int64_t>(t) * p.q_heads + head0 + h) * kD + d] = ToBf16(acc / sum);
    } else {
      const int64_t at = part + static_cast<int64_t>(h) * p.num_splits;
      p.part_o[at * kD + d] = acc;
      if (d == 0) {
        p.part_m[at] = mx;
        p.part_l[at] = sum;
      }
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
  // Before the occupancy query and the first launch.
  AllowDynamicSmem(reinterpret_cast<const void*>(kernel), smem);
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
  // The tensor-core kernel where its 16-byte copies and loads of q and cache rows are aligned.
  if (vec16 && (a.head_dim == 64 || a.head_dim == 128) && aligned(a.q, 16) &&
      a.q_row_stride % 8 == 0) {
    sel.vec = 8;
    sel.kernel = a.head_dim == 64 ? &TcDecodeKernel<64> : &TcDecodeKernel<128>;
    sel.smem = a.head_dim == 64 ? TcSmem<64>::kTotal : TcSmem<128>::kTotal;
    QueryDevice(sel.kernel, sel.smem, &sel);
    return sel;
  }
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
