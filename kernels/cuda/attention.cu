// Causal GQA attention over the paged KV cache, and the cache write.
//
// The attention is flash-style: one block owns a tile of consecutive query tokens and the query
// heads that share one KV head (a GQA group, or a slice of it), streams that KV head's keys and
// values through shared memory 32 at a time, and keeps a running max and sum per query row so
// the softmax is exact (fp32 throughout, in the log2 domain: q is pre-scaled by scale * log2 e).
// The same kernel serves prefill rows and decode rows: each row masks keys past its own
// position, and a tile whose tokens span several sequences walks them one segment at a time
// (tokens of a sequence are contiguous and in position order, ENGINE.md). The host picks the
// token tile from the batch's tokens per sequence: 1 for pure decode, more for prefill so the
// tile's rows share each loaded key.
//
// This is the correct-first version: scores and P.V are scalar fp32 FMAs from shared memory, no
// tensor cores. It is now the fallback: pure decode batches go to the split-KV kernel
// (decode_attention.cu) and batches with prefill rows to the tensor-core kernel
// (flash_prefill.cu) when those take their arguments.
#include <algorithm>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/flash_prefill.h"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kTileKeys = 32;
// Query rows per block are bounded so that q and the output accumulator ([rows, head_dim] fp32
// each) take at most 2 * 16 KB of shared memory.
constexpr int kRowElements = 4096;
constexpr int kMaxRows = 64;

__global__ void __launch_bounds__(kThreads)
    WriteKvCacheKernel(const bf16* k, const bf16* v, int64_t row_stride, int64_t width,
                       const int32_t* slot_mapping, bf16* k_cache, bf16* v_cache) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  for (int64_t c = threadIdx.x; c < width; c += kThreads) {
    k_cache[slot * width + c] = k[t * row_stride + c];
    v_cache[slot * width + c] = v[t * row_stride + c];
  }
}

struct Tiling {
  int heads_per_block;   // query heads of one group per block
  int chunks;            // blocks per KV head: ceil(group / heads_per_block)
  int tokens_per_block;  // query tokens per block
  int rows() const { return heads_per_block * tokens_per_block; }
};

// Shared memory layout, in 4-byte words.
struct Layout {
  int q, o, k, v, s, m, l, c, pos, seq, total;
  __host__ __device__ Layout(int rows, int head_dim, int tokens) {
    q = 0;
    o = q + rows * head_dim;
    k = o + rows * head_dim;
    v = k + kTileKeys * (head_dim + 1);  // NOTE: +1 pads K rows so a warp's 32 keys hit 32 banks
    s = v + kTileKeys * head_dim;
    m = s + rows * kTileKeys;
    l = m + rows;
    c = l + rows;
    pos = c + rows;
    seq = pos + tokens;
    total = seq + tokens;
  }
};

__global__ void __launch_bounds__(kThreads)
    PagedAttentionKernel(PagedAttentionArgs a, Tiling tiling, float scale_log2) {
  extern __shared__ float smem[];
  const int D = a.head_dim;
  const int hpb = tiling.heads_per_block;
  const int tq = tiling.tokens_per_block;
  const int rows = hpb * tq;
  const Layout lay(rows, D, tq);
  float* q_s = smem + lay.q;
  float* o_s = smem + lay.o;
  float* k_s = smem + lay.k;
  float* v_s = smem + lay.v;
  float* s_s = smem + lay.s;
  float* m_s = smem + lay.m;
  float* l_s = smem + lay.l;
  float* c_s = smem + lay.c;
  int* tok_pos = reinterpret_cast<int*>(smem + lay.pos);
  int* tok_seq = reinterpret_cast<int*>(smem + lay.seq);

  const int group = a.q_heads / a.kv_heads;
  const int g = blockIdx.y / tiling.chunks;                          // KV head
  const int head0 = g * group + (blockIdx.y % tiling.chunks) * hpb;  // first query head
  const int heads_here = min(hpb, (g + 1) * group - head0);
  const int t0 = blockIdx.x * tq;
  const int tokens = min(tq, a.num_tokens - t0);
  const int tid = threadIdx.x;

  for (int i = tid; i < tq; i += kThreads) {
    tok_pos[i] = i < tokens ? a.positions[t0 + i] : -1;
    tok_seq[i] = i < tokens ? a.token_seq[t0 + i] : -1;
  }
  // Row r = i * hpb + h: token t0 + i, query head head0 + h.
  for (int idx = tid; idx < rows * D; idx += kThreads) {
    const int r = idx / D, d = idx - r * D;
    const int i = r / hpb, h = r - i * hpb;
    float val = 0.0f;
    if (i < tokens && h < heads_here) {
      val = ToFloat(a.q[(t0 + i) * a.q_row_stride + static_cast<int64_t>(head0 + h) * D + d]) *
            scale_log2;
    }
    q_s[idx] = val;
    o_s[idx] = 0.0f;
  }
  for (int r = tid; r < rows; r += kThreads) {
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  __syncthreads();

  const int64_t kv_row = static_cast<int64_t>(a.kv_heads) * D;
  int seg_begin = 0;
  while (seg_begin < tokens) {
    // The run of this tile's tokens that belong to one sequence, and the keys they need.
    const int seq = tok_seq[seg_begin];
    int seg_end = seg_begin + 1;
    int key_end = tok_pos[seg_begin] + 1;
    while (seg_end < tokens && tok_seq[seg_end] == seq) {
      key_end = max(key_end, tok_pos[seg_end] + 1);
      ++seg_end;
    }
    const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
    const int row_begin = seg_begin * hpb, seg_rows = (seg_end - seg_begin) * hpb;

    for (int key0 = 0; key0 < key_end; key0 += kTileKeys) {
      for (int idx = tid; idx < kTileKeys * D; idx += kThreads) {
        const int j = idx / D, d = idx - j * D;
        const int key = key0 + j;
        float kf = 0.0f, vf = 0.0f;
        if (key < key_end) {
          const int64_t slot =
              static_cast<int64_t>(table[key / a.block_size]) * a.block_size + key % a.block_size;
          const int64_t off = slot * kv_row + static_cast<int64_t>(g) * D + d;
          kf = ToFloat(a.k_cache[off]);
          vf = ToFloat(a.v_cache[off]);
        }
        k_s[j * (D + 1) + d] = kf;
        v_s[j * D + d] = vf;
      }
      __syncthreads();

      // Scores of the segment's rows against the tile's keys; a warp covers one row's 32 keys.
      for (int idx = tid; idx < seg_rows * kTileKeys; idx += kThreads) {
        const int r = row_begin + idx / kTileKeys, j = idx % kTileKeys;
        const int i = r / hpb, h = r - i * hpb;
        float score = -INFINITY;
        if (key0 + j <= tok_pos[i] && h < heads_here) {
          const float* qr = q_s + r * D;
          const float* kr = k_s + j * (D + 1);
          float dot = 0.0f;
          for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
          score = dot;
        }
        s_s[r * kTileKeys + j] = score;
      }
      __syncthreads();

      // Online softmax, one thread per row: rescale factor for the old sum, probabilities in s_s.
      for (int r = row_begin + tid; r < row_begin + seg_rows; r += kThreads) {
        float* sr = s_s + r * kTileKeys;
        float tile_max = -INFINITY;
        for (int j = 0; j < kTileKeys; ++j) tile_max = fmaxf(tile_max, sr[j]);
        const float m_old = m_s[r];
        const float m_new = fmaxf(m_old, tile_max);
        if (m_new == -INFINITY) {  // a padding row: no key at all
          for (int j = 0; j < kTileKeys; ++j) sr[j] = 0.0f;
          c_s[r] = 1.0f;
          continue;
        }
        float sum = 0.0f;
        for (int j = 0; j < kTileKeys; ++j) {
          const float p = exp2f(sr[j] - m_new);  // masked keys: exp2(-inf) = 0
          sr[j] = p;
          sum += p;
        }
        const float correction = exp2f(m_old - m_new);
        l_s[r] = l_s[r] * correction + sum;
        m_s[r] = m_new;
        c_s[r] = correction;
      }
      __syncthreads();

      // o = o * correction + P . V
      for (int idx = tid; idx < seg_rows * D; idx += kThreads) {
        const int r = row_begin + idx / D, d = idx % D;
        const float* pr = s_s + r * kTileKeys;
        float acc = o_s[r * D + d] * c_s[r];
#pragma unroll 8
        for (int j = 0; j < kTileKeys; ++j) acc += pr[j] * v_s[j * D + d];
        o_s[r * D + d] = acc;
      }
      __syncthreads();
    }
    seg_begin = seg_end;
  }

  for (int idx = tid; idx < rows * D; idx += kThreads) {
    const int r = idx / D, d = idx - r * D;
    const int i = r / hpb, h = r - i * hpb;
    if (i < tokens && h < heads_here) {
      a.out[((static_cast<int64_t>(t0) + i) * a.q_heads + head0 + h) * D + d] =
          ToBf16(o_s[idx] / l_s[r]);
    }
  }
}

Tiling ChooseTiling(const PagedAttentionArgs& a) {
  const int group = a.q_heads / a.kv_heads;
  const int row_budget = std::min(kMaxRows, std::max(1, kRowElements / a.head_dim));
  Tiling t;
  t.heads_per_block = std::min(group, row_budget);
  t.chunks = (group + t.heads_per_block - 1) / t.heads_per_block;
  // NOTE: tokens per sequence bounds the tile: a pure decode batch gets one token per block, so
  // no block walks several sequences one after another.
  const int per_seq = std::max(1, a.num_tokens / std::max(1, a.num_seqs));
  t.tokens_per_block = std::max(1, std::min(row_budget / t.heads_per_block, per_seq));
  return t;
}

// A batch whose first num_single sequences have one token each and whose others have more:
// the split-KV decode kernel on the leading rows, the flash kernel on the rest. False, with
// nothing launched, when either declines its part (the caller then runs the whole batch).
// NOTE: the flash kernel alone gives such rows one CTA per 128 of them, walking their
// sequences one after another with one valid row per 128-row tensor-core tile: on an H100
// (Qwen3-30B-A3B, 250 decodes) a step took 63-75 ms with a 96-900 token prefill chunk beside
// them against 27 ms without it.
bool LaunchMixed(const PagedAttentionArgs& a, cudaStream_t stream) {
  const int s = a.num_single;
  PagedAttentionArgs decode = a;
  decode.num_tokens = s;
  decode.num_seqs = s;
  // Both kernels only read token_seq[t] to index the full block table and never num_seqs, so
  // the rest keeps the whole table and its token_seq values; num_seqs counts its own sequences.
  PagedAttentionArgs rest = a;
  rest.q = a.q + static_cast<int64_t>(s) * a.q_row_stride;
  rest.positions = a.positions + s;
  rest.token_seq = a.token_seq + s;
  rest.out = a.out + static_cast<int64_t>(s) * a.q_heads * a.head_dim;
  rest.num_tokens = a.num_tokens - s;
  rest.num_seqs = a.num_seqs - s;
  rest.num_single = 0;
  rest.workspace = nullptr;  // the decode part's partials
  rest.workspace_bytes = 0;
  if (PlanSplitKvDecode(decode).num_splits == 0) return false;
  if (!LaunchFlashPrefill(rest, stream)) return false;
  TESSERA_CHECK(LaunchSplitKvDecode(decode, stream)) << "the split-KV plan accepted it";
  return true;
}

}  // namespace

void LaunchWriteKvCache(const bf16* k, const bf16* v, int64_t row_stride, int n, int kv_heads,
                        int head_dim, const int32_t* slot_mapping, bf16* k_cache, bf16* v_cache,
                        cudaStream_t stream) {
  if (n == 0) return;
  WriteKvCacheKernel<<<n, kThreads, 0, stream>>>(
      k, v, row_stride, static_cast<int64_t>(kv_heads) * head_dim, slot_mapping, k_cache, v_cache);
  CUDA_CHECK_LAUNCH();
}

void LaunchPagedAttention(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  TESSERA_CHECK(a.kv_heads > 0 && a.q_heads % a.kv_heads == 0)
      << "q_heads " << a.q_heads << ", kv_heads " << a.kv_heads;
  TESSERA_CHECK(a.head_dim > 0 && a.head_dim <= kMaxHeadDim) << "head_dim " << a.head_dim;
  // Pure decode batches: the split-KV kernel; batches with prefill rows: the tensor-core flash
  // kernel; each where it supports the shape, the fp32 kernel below otherwise.
  if (a.num_tokens == a.num_seqs && LaunchSplitKvDecode(a, stream)) return;
  if (0 < a.num_single && a.num_single < a.num_seqs && LaunchMixed(a, stream)) return;
  if (a.num_tokens != a.num_seqs && LaunchFlashPrefill(a, stream)) return;
  const Tiling tiling = ChooseTiling(a);
  const size_t smem = Layout(tiling.rows(), a.head_dim, tiling.tokens_per_block).total * 4;
  AllowDynamicSmem(reinterpret_cast<const void*>(PagedAttentionKernel), smem);
  const dim3 grid((a.num_tokens + tiling.tokens_per_block - 1) / tiling.tokens_per_block,
                  a.kv_heads * tiling.chunks);
  const float kLog2e = 1.4426950408889634f;
  PagedAttentionKernel<<<grid, kThreads, smem, stream>>>(a, tiling, a.scale * kLog2e);
  CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
