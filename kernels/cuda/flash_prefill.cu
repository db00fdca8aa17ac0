// Causal GQA flash attention for prefill on tensor cores (FlashAttention-2 style, sm_80+).
//
// One block (8 warps) owns 128 consecutive query tokens of one query head; each warp owns 16 of
// those rows. The block streams its KV head's keys and values through shared memory 64 keys at a
// time (cp.async, double-buffered), each key row gathered through the block table. A warp computes
// S = Q K^T for its 16 rows with mma.sync m16n8k16 (bf16 in, fp32 accumulate), keeps a running max
// and sum per row (online softmax in fp32, exp2 domain: scores times scale * log2 e), rounds P to
// bf16 in registers and accumulates O += P V with the same mma. The output is normalised by the sum
// of the rounded P, so it stays a convex combination of V rows, and written as bf16.
//
// Causality and varlen: token t sees keys 0..positions[t] of its sequence (a cached prefix from
// earlier chunks included). Tokens of a sequence are contiguous and in position order
// (runtime/ENGINE.md), so a tile usually holds one run of one sequence; when it holds several
// (a mixed batch), the block walks them one segment at a time, as attention.cu does, and rows of
// other segments are masked. Key tiles past the segment's last position are never loaded; a warp
// skips tiles above all of its rows, and applies the mask only on tiles that cross a row's
// position (or when some of its rows are outside the segment).
//
// Budget (head_dim 128): shared memory Q 128x128 + K, V 2 x 64x128 each, bf16 = 96 KB, plus 1 KB of
// token metadata: two blocks per SM on H100/H200 (228 KB), one on A100 (164 KB). Registers are
// capped at 128 per thread by __launch_bounds__(256, 2): per thread the O accumulator is 64 fp32,
// S 8 fp32 (16 keys per softmax step, kSub below), fragments a dozen; Q is read from shared memory
// by ldmatrix at each k step rather than kept in registers. So 16 warps per SM on Hopper (ptxas:
// 128 registers, no spills, for sm_80 and sm_90a). head_dim 64: 48 KB of shared memory, O 32 fp32,
// 32 keys per step, the same two blocks per SM (register-bound).
#include <climits>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_prefill.h"
#include "kernels/cuda/mma.cuh"

namespace tessera::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // query tokens per block, 16 per warp (one mma row tile)
constexpr int kKeys = 64;           // keys per shared-memory tile

template <int kD>
struct Smem {
  static constexpr int kRowBytes = kD * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kRows * kRowBytes;  // 2 buffers
  static constexpr int kV = kK + 2 * kKeys * kRowBytes;
  static constexpr int kPos = kV + 2 * kKeys * kRowBytes;
  static constexpr int kSeq = kPos + kRows * 4;
  static constexpr int kTotal = kSeq + kRows * 4;
};

// Rounds (lo, hi) to bf16; `sum` gains the rounded values, which are what P.V multiplies.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi, float& sum) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  const float2 back = __bfloat1622float2(p);
  sum += back.x + back.y;
  return *reinterpret_cast<const uint32_t*>(&p);
}

// Issues the cp.async copies of keys key0 .. key0 + kKeys - 1 (K and V rows of one KV head) into
// one pair of buffers; keys at or past key_end are zero-filled (V must be finite where P is 0).
template <int kD>
__device__ __forceinline__ void LoadKvTile(const PagedAttentionArgs& a, const int32_t* table,
                                           int kv_head, int key0, int key_end, uint32_t k_dst,
                                           uint32_t v_dst) {
  constexpr int kChunks = kD / 8;
  constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(kKeys % kRowsPerPass == 0, "whole passes over the tile");
  const int chunk = threadIdx.x % kChunks;
  const int64_t kv_row = static_cast<int64_t>(a.kv_heads) * kD;
#pragma unroll
  for (int r = threadIdx.x / kChunks; r < kKeys; r += kRowsPerPass) {
    const int key = key0 + r;
    const bool valid = key < key_end;
    int64_t off = 0;
    if (valid) {
      const int64_t slot =
          static_cast<int64_t>(table[key / a.block_size]) * a.block_size + key % a.block_size;
      off = slot * kv_row + static_cast<int64_t>(kv_head) * kD + chunk * 8;
    }
    CpAsync16(TileAddr<kD>(k_dst, r, chunk), a.k_cache + off, valid);
    CpAsync16(TileAddr<kD>(v_dst, r, chunk), a.v_cache + off, valid);
  }
}

template <int kD>
__global__ void __launch_bounds__(kThreads, 2)
    FlashPrefillKernel(PagedAttentionArgs a, float scale_log2) {
  using L = Smem<kD>;
  constexpr int kChunks = kD / 8;
  constexpr int kDTiles = kD / 8;  // n tiles of O
  // NOTE: keys per softmax step (S is kSub / 2 registers per thread). The 128-register cap of two
  // blocks per SM, where ptxas spills are build errors, leaves room for 16 next to O's 64 at
  // head_dim 128 (32 spills a few), 32 at head_dim 64. The shared-memory tile stays 64 keys, so
  // the block synchronises once per 64, and the O rescale is skipped when no max moved.
  constexpr int kSub = kD == 128 ? 16 : 32;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t q_s = smem_base + L::kQ;
  int* tok_pos = reinterpret_cast<int*>(smem + L::kPos);
  int* tok_seq = reinterpret_cast<int*>(smem + L::kSeq);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tig = lane % 4;  // mma fragment row group and thread-in-group
  const int head = blockIdx.x;
  const int kv_head = head / (a.q_heads / a.kv_heads);
  // NOTE: blockIdx.y counts down from the last tile: with causal masking later tiles carry more
  // keys, so the heaviest blocks start first and the light ones fill the tail of the grid. Heads
  // in x keep the blocks sharing a KV head (and its L2-resident K/V) adjacent in launch order.
  const int t0 = (gridDim.y - 1 - blockIdx.y) * kRows;
  const int tokens = min(kRows, a.num_tokens - t0);

  for (int i = tid; i < kRows; i += kThreads) {
    tok_pos[i] = i < tokens ? a.positions[t0 + i] : -1;
    tok_seq[i] = i < tokens ? a.token_seq[t0 + i] : -1;
  }
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int row = c / kChunks, chunk = c % kChunks;
    const bool valid = row < tokens;
    const bf16* src =
        valid ? a.q + (t0 + row) * a.q_row_stride + static_cast<int64_t>(head) * kD + chunk * 8
              : a.q;
    CpAsync16(TileAddr<kD>(q_s, row, chunk), src, valid);
  }
  CpAsyncCommit();  // completes by the first tile's wait, which leaves at most one newer group
  __syncthreads();

  // This thread's accumulator rows: ra = warp * 16 + g and rb = ra + 8 (c0, c1 / c2, c3 of every
  // mma tile). m is in raw score units; l is this thread's share of the row sum (its 2 columns of
  // each 8), summed over the quad at the end.
  const int ra = warp * 16 + g, rb = ra + 8;
  // ldmatrix lane offsets (LaneOffset): Q rows warp * 16 + 0-7 / 8-15 (lanes 0-7 / 8-15) at
  // chunk 2ks, then the same at 2ks + 1 (lanes 16-31); K keys 0-7 at chunks 2ks, 2ks + 1, then
  // keys 8-15; V keys 0-7 / 8-15 at chunk 2dp, then the same at 2dp + 1.
  constexpr int kRowBytes = Smem<kD>::kRowBytes;
  const uint32_t q_warp = q_s + warp * 16 * kRowBytes;
  const uint32_t q_lane = LaneOffset<kD>((lane & 7) + 8 * ((lane >> 3) & 1), lane >> 4);
  const uint32_t k_lane = LaneOffset<kD>((lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1);
  const uint32_t v_lane = q_lane;
  float o[kDTiles][4];
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  int seg_begin = 0;
  while (seg_begin < tokens) {
    // The run of the tile's tokens that belong to one sequence, and the keys they need.
    const int seq = tok_seq[seg_begin];
    int seg_end = seg_begin + 1, key_end = tok_pos[seg_begin] + 1;
    while (seg_end < tokens && tok_seq[seg_end] == seq)
      key_end = max(key_end, tok_pos[seg_end++] + 1);
    const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

    // This warp's rows in the segment: their smallest and largest positions, and whether all 16
    // are in (then tiles wholly below the smallest position need no mask).
    const int my_row = warp * 16 + (lane & 15);
    const bool in_seg = lane < 16 && my_row >= seg_begin && my_row < seg_end;
    int w_min = in_seg ? tok_pos[my_row] : INT_MAX, w_max = in_seg ? tok_pos[my_row] : -1;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      w_min = min(w_min, __shfl_xor_sync(0xffffffffu, w_min, off));
      w_max = max(w_max, __shfl_xor_sync(0xffffffffu, w_max, off));
    }
    // Keys at or below this one are seen by every row of the warp: no mask needed.
    const int unmasked_end = __popc(__ballot_sync(0xffffffffu, in_seg)) == 16 ? w_min : -1;

    const int num_tiles = (key_end + kKeys - 1) / kKeys;
    LoadKvTile<kD>(a, table, kv_head, 0, key_end, smem_base + L::kK, smem_base + L::kV);
    CpAsyncCommit();
    for (int kt = 0; kt < num_tiles; ++kt) {
      const int buf = kt & 1;
      if (kt + 1 < num_tiles) {
        const int nb = buf ^ 1;
        LoadKvTile<kD>(a, table, kv_head, (kt + 1) * kKeys, key_end,
                       smem_base + L::kK + nb * kKeys * L::kRowBytes,
                       smem_base + L::kV + nb * kKeys * L::kRowBytes);
        CpAsyncCommit();
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      __syncthreads();  // tile kt (and Q) visible to every warp

      // The tile in sub-tiles of kSub keys, one online-softmax step each.
#pragma unroll 1
      for (int sub = 0; sub < kKeys / kSub; ++sub) {
        const int key0 = kt * kKeys + sub * kSub;
        if (key0 > w_max) break;  // no row of this warp sees these keys (w_max -1: no row at all)
        const uint32_t k_s = smem_base + L::kK + (buf * kKeys + sub * kSub) * kRowBytes;
        const uint32_t v_s = smem_base + L::kV + (buf * kKeys + sub * kSub) * kRowBytes;

        // S[16 rows, kSub keys] = Q K^T: n tiles of 8 keys.
        float s[kSub / 8][4];
#pragma unroll
        for (int j = 0; j < kSub / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          uint32_t qa[4];
          LdMatrixX4(qa, q_warp + (q_lane ^ (ks << 5)));
#pragma unroll
          for (int np = 0; np < kSub / 16; ++np) {
            uint32_t kb[4];
            LdMatrixX4(kb, k_s + np * 16 * kRowBytes + (k_lane ^ (ks << 5)));
            Mma(s[2 * np], qa, kb[0], kb[1]);
            Mma(s[2 * np + 1], qa, kb[2], kb[3]);
          }
        }

        if (key0 + kSub - 1 > unmasked_end) {
          // Positions of this thread's rows; -1 masks every key (a row of another segment or
          // padding).
          const int pos_a = ra >= seg_begin && ra < seg_end ? tok_pos[ra] : -1;
          const int pos_b = rb >= seg_begin && rb < seg_end ? tok_pos[rb] : -1;
#pragma unroll
          for (int j = 0; j < kSub / 8; ++j) {
            const int key = key0 + j * 8 + 2 * tig;
            if (key > pos_a) s[j][0] = -INFINITY;
            if (key + 1 > pos_a) s[j][1] = -INFINITY;
            if (key > pos_b) s[j][2] = -INFINITY;
            if (key + 1 > pos_b) s[j][3] = -INFINITY;
          }
        }

        // Online softmax: new running max over the quad (the 4 threads sharing a row).
        float mx_a = m_a, mx_b = m_b;
#pragma unroll
        for (int j = 0; j < kSub / 8; ++j) {
          mx_a = fmaxf(mx_a, fmaxf(s[j][0], s[j][1]));
          mx_b = fmaxf(mx_b, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
          mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
          mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
        }
        // A row with no key yet keeps max -inf: subtract 0 then, so exp2 gives 0, not NaN.
        const float base_a = mx_a == -INFINITY ? 0.0f : mx_a * scale_log2;
        const float base_b = mx_b == -INFINITY ? 0.0f : mx_b * scale_log2;
        const float corr_a = Exp2(m_a * scale_log2 - base_a);  // m -inf: 0 (O and l are 0)
        const float corr_b = Exp2(m_b * scale_log2 - base_b);
        m_a = mx_a;
        m_b = mx_b;
        // NOTE: once the running maxima settle, most steps leave them unchanged: skip the rescale
        // (64 multiplies per thread) when no row of the warp needs it.
        if (__any_sync(0xffffffffu, corr_a != 1.0f || corr_b != 1.0f)) {
#pragma unroll
          for (int i = 0; i < kDTiles; ++i) {
            o[i][0] *= corr_a;
            o[i][1] *= corr_a;
            o[i][2] *= corr_b;
            o[i][3] *= corr_b;
          }
        }

        // O += P V, 16 keys at a time: P in bf16 as the A operand (keys 16kk .. 16kk + 15 are S
        // tiles 2kk, 2kk + 1); V^T fragments by transposing loads.
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kSub / 16; ++kk) {
          uint32_t pa[4];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float* sj = s[2 * kk + h];
            pa[2 * h] = PackBf16(Exp2(fmaf(sj[0], scale_log2, -base_a)),
                                 Exp2(fmaf(sj[1], scale_log2, -base_a)), sum_a);
            pa[2 * h + 1] = PackBf16(Exp2(fmaf(sj[2], scale_log2, -base_b)),
                                     Exp2(fmaf(sj[3], scale_log2, -base_b)), sum_b);
          }
#pragma unroll
          for (int dp = 0; dp < kD / 16; ++dp) {
            uint32_t vb[4];
            LdMatrixX4Trans(vb, v_s + kk * 16 * kRowBytes + (v_lane ^ (dp << 5)));
            Mma(o[2 * dp], pa, vb[0], vb[1]);
            Mma(o[2 * dp + 1], pa, vb[2], vb[3]);
          }
        }
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
      }
      __syncthreads();  // every warp is done with buffer `buf` before tile kt + 2 is loaded in it
    }
    seg_begin = seg_end;
  }

  // Every real row saw its own position's key (p = 1 there), so l >= 1.
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  const int64_t q_heads = a.q_heads;
  if (ra < tokens) {
    const float inv = 1.0f / l_a;
    bf16* dst = a.out + ((t0 + ra) * q_heads + head) * kD + 2 * tig;
#pragma unroll
    for (int i = 0; i < kDTiles; ++i)
      *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) =
          __floats2bfloat162_rn(o[i][0] * inv, o[i][1] * inv);
  }
  if (rb < tokens) {
    const float inv = 1.0f / l_b;
    bf16* dst = a.out + ((t0 + rb) * q_heads + head) * kD + 2 * tig;
#pragma unroll
    for (int i = 0; i < kDTiles; ++i)
      *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) =
          __floats2bfloat162_rn(o[i][2] * inv, o[i][3] * inv);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int kD>
void Launch(const PagedAttentionArgs& a, cudaStream_t stream) {
  constexpr int kSmem = Smem<kD>::kTotal;
  // The dynamic shared-memory limit past 48 KB belongs to the device's context: raise it once per
  // device, outside any capture's hot path.
  static std::vector<bool> granted;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  if (granted.size() <= static_cast<size_t>(device)) granted.resize(device + 1, false);
  if (!granted[device]) {
    CUDA_CHECK(cudaFuncSetAttribute(FlashPrefillKernel<kD>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    granted[device] = true;
  }
  const dim3 grid(a.q_heads, (a.num_tokens + kRows - 1) / kRows);
  const float kLog2e = 1.4426950408889634f;
  FlashPrefillKernel<kD><<<grid, kThreads, kSmem, stream>>>(a, a.scale * kLog2e);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool LaunchFlashPrefill(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens <= 0 || a.kv_heads <= 0 || a.q_heads % a.kv_heads != 0 || a.block_size < 1)
    return false;
  if ((a.num_tokens + kRows - 1) / kRows > 65535 || !(a.scale > 0)) return false;
  // 16-byte cp.async of q and cache rows: every row start must be 16-byte aligned.
  if (a.q_row_stride % 8 != 0 || !Aligned16(a.q) || !Aligned16(a.k_cache) ||
      !Aligned16(a.v_cache) || !Aligned16(a.out))
    return false;
  switch (a.head_dim) {
    case 64:
      Launch<64>(a, stream);
      return true;
    case 128:
      Launch<128>(a, stream);
      return true;
    default:
      return false;
  }
}

}  // namespace tessera::cuda
