// Causal GQA flash attention for prefill on tensor cores (FlashAttention-2 style, sm_80+).
//
// One block (8 warps) owns 256 consecutive query tokens of one query head; each warp owns 32 of
// those rows, as two m16 row tiles. The block streams its KV head's keys and values through shared
// memory 128 keys at a time (cp.async, double-buffered), each key row gathered through the block
// table. A warp computes S = Q K^T for its 32 rows with mma.sync m16n8k16 (bf16 in, fp32
// accumulate), keeps a running max and sum per row (online softmax in fp32, exp2 domain: scores
// times scale * log2 e), rounds P to bf16 in registers and accumulates O += P V with the same mma.
// The output is normalised by the sum of the rounded P, so it stays a convex combination of V
// rows, and written as bf16.
//
// Causality and varlen: token t sees keys 0..positions[t] of its sequence (a cached prefix from
// earlier chunks included). Tokens of a sequence are contiguous and in position order
// (runtime/engine/ENGINE.md), so a tile usually holds one run of one sequence; when it holds
// several (a mixed batch), the block walks them one segment at a time, as attention.cu does, and
// rows of other segments are masked. Key tiles past the segment's last position are never loaded; a
// warp skips tiles above all of its rows, and applies the mask only on tiles that cross a row's
// position (or when some of its rows are outside the segment).
//
// Budget (head_dim 128): shared memory Q 256x128 + K, V 2 x 128x128 each, bf16 = 192 KB, plus 2 KB
// of token metadata: one block per SM on H100/H200 (227 KB per block); where a block gets less
// (A100, 163 KB) the same kernel runs with 64-key tiles (128 KB). Registers: 254 per thread
// (__launch_bounds__(256, 1)): the O accumulator is 128 fp32 (32 rows x 128 / 32 lanes), S 32
// fp32 (32 keys per softmax step, kSub below; 64 spills a few), fragments and bookkeeping the
// rest; Q is read from shared memory by ldmatrix at each k step rather than kept in registers.
// NOTE: two row tiles per warp are what pays: each K or V fragment read from shared memory feeds
// two mma instead of one, and the shared-memory reads per mma were the limit of the 16-row warp.
// head_dim 64: 64 KB of shared memory, O 64 fp32, 64 keys per step (238 registers).
#include <climits>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_prefill.h"
#include "kernels/cuda/flash_prefill_sm90.h"
#include "kernels/cuda/mma.cuh"

namespace tessera::cuda {
namespace {

// The block's shape: kWarps warps of kMt m16 row tiles each (16 * kMt query rows per warp),
// kKeys keys per shared-memory K/V tile and kSub keys per online-softmax step.
template <int kD_, int kWarps_, int kMt_, int kSub_, int kKeys_ = 64>
struct Cfg {
  static constexpr int kKeys = kKeys_;
  static constexpr int kD = kD_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMt = kMt_;
  static constexpr int kSub = kSub_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * 16 * kMt;  // query tokens per block
  // Resident blocks per SM the register cap is set for: 16 warp-row-tiles of 16 rows per SM.
  static constexpr int kMinBlocks = 16 / (kWarps * kMt) > 0 ? 16 / (kWarps * kMt) : 1;
  static_assert(kKeys % kSub == 0 && kSub % 16 == 0, "whole softmax steps of 16-key mma tiles");
};

template <class C>
struct Smem {
  static_assert(C::kD % 64 == 0, "rows of >= 8 16-byte chunks: the XOR swizzle permutes 8 chunks");
  static constexpr int kRowBytes = C::kD * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + C::kRows * kRowBytes;  // 2 buffers
  static constexpr int kV = kK + 2 * C::kKeys * kRowBytes;
  static constexpr int kPos = kV + 2 * C::kKeys * kRowBytes;
  static constexpr int kSeq = kPos + C::kRows * 4;
  static constexpr int kTotal = kSeq + C::kRows * 4;
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
template <class C>
__device__ __forceinline__ void LoadKvTile(const PagedAttentionArgs& a, const int32_t* table,
                                           int kv_head, int key0, int key_end, uint32_t k_dst,
                                           uint32_t v_dst) {
  constexpr int kD = C::kD, kKeys = C::kKeys;
  constexpr int kChunks = kD / 8;
  constexpr int kRowsPerPass = C::kThreads / kChunks;
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

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    FlashPrefillKernel(PagedAttentionArgs a, float scale_log2) {
  constexpr int kD = C::kD, kMt = C::kMt, kSub = C::kSub;
  constexpr int kRows = C::kRows, kThreads = C::kThreads, kKeys = C::kKeys;
  using L = Smem<C>;
  constexpr int kChunks = kD / 8;
  constexpr int kDTiles = kD / 8;  // n tiles of O
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

  // This warp's rows are row0 .. row0 + 16 kMt - 1; of row tile mt this thread holds rows
  // row0 + 16 mt + g (h = 0: c0, c1 of every mma tile) and + 8 (h = 1: c2, c3). m is in raw
  // score units; l is this thread's share of the row sum (its 2 columns of each 8), summed over
  // the quad at the end.
  const int row0 = warp * 16 * kMt;
  // ldmatrix lane offsets (LaneOffset): Q rows 0-7 / 8-15 of a row tile (lanes 0-7 / 8-15) at
  // chunk 2ks, then the same at 2ks + 1 (lanes 16-31); K keys 0-7 at chunks 2ks, 2ks + 1, then
  // keys 8-15; V keys 0-7 / 8-15 at chunk 2dp, then the same at 2dp + 1.
  constexpr int kRowBytes = L::kRowBytes;
  const uint32_t q_warp = q_s + row0 * kRowBytes;
  const uint32_t q_lane = LaneOffset<kD>((lane & 7) + 8 * ((lane >> 3) & 1), lane >> 4);
  const uint32_t k_lane = LaneOffset<kD>((lane & 7) + 8 * (lane >> 4), (lane >> 3) & 1);
  const uint32_t v_lane = q_lane;
  float o[kMt][kDTiles][4];
  float m[kMt][2], l[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  int seg_begin = 0;
  while (seg_begin < tokens) {
    // The run of the tile's tokens that belong to one sequence, and the keys they need.
    const int seq = tok_seq[seg_begin];
    int seg_end = seg_begin + 1, key_end = tok_pos[seg_begin] + 1;
    while (seg_end < tokens && tok_seq[seg_end] == seq)
      key_end = max(key_end, tok_pos[seg_end++] + 1);
    const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

    // This warp's rows in the segment: their smallest and largest positions, and whether all
    // 16 kMt are in (then tiles wholly below the smallest position need no mask).
    const int my_row = row0 + lane;
    const bool in_seg = lane < 16 * kMt && my_row >= seg_begin && my_row < seg_end;
    int w_min = in_seg ? tok_pos[my_row] : INT_MAX, w_max = in_seg ? tok_pos[my_row] : -1;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      w_min = min(w_min, __shfl_xor_sync(0xffffffffu, w_min, off));
      w_max = max(w_max, __shfl_xor_sync(0xffffffffu, w_max, off));
    }
    // Keys at or below this one are seen by every row of the warp: no mask needed.
    const int unmasked_end = __popc(__ballot_sync(0xffffffffu, in_seg)) == 16 * kMt ? w_min : -1;

    const int num_tiles = (key_end + kKeys - 1) / kKeys;
    LoadKvTile<C>(a, table, kv_head, 0, key_end, smem_base + L::kK, smem_base + L::kV);
    CpAsyncCommit();
    for (int kt = 0; kt < num_tiles; ++kt) {
      const int buf = kt & 1;
      if (kt + 1 < num_tiles) {
        const int nb = buf ^ 1;
        LoadKvTile<C>(a, table, kv_head, (kt + 1) * kKeys, key_end,
                      smem_base + L::kK + nb * kKeys * kRowBytes,
                      smem_base + L::kV + nb * kKeys * kRowBytes);
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

        // S[16 kMt rows, kSub keys] = Q K^T: n tiles of 8 keys.
        // NOTE: each K fragment feeds kMt row tiles: with kMt = 2 the shared-memory reads per
        // mma halve on this side, which is what bounds the kMt = 1 kernel.
        float s[kMt][kSub / 8][4];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
          for (int j = 0; j < kSub / 8; ++j)
            s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          uint32_t qa[kMt][4];
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt)
            LdMatrixX4(qa[mt], q_warp + mt * 16 * kRowBytes + (q_lane ^ (ks << 5)));
#pragma unroll
          for (int np = 0; np < kSub / 16; ++np) {
            uint32_t kb[4];
            LdMatrixX4(kb, k_s + np * 16 * kRowBytes + (k_lane ^ (ks << 5)));
#pragma unroll
            for (int mt = 0; mt < kMt; ++mt) {
              Mma(s[mt][2 * np], qa[mt], kb[0], kb[1]);
              Mma(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
            }
          }
        }

        if (key0 + kSub - 1 > unmasked_end) {
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              // The row's position; -1 masks every key (a row of another segment or padding).
              const int row = row0 + 16 * mt + g + 8 * h;
              const int pos = row >= seg_begin && row < seg_end ? tok_pos[row] : -1;
#pragma unroll
              for (int j = 0; j < kSub / 8; ++j) {
                const int key = key0 + j * 8 + 2 * tig;
                if (key > pos) s[mt][j][2 * h] = -INFINITY;
                if (key + 1 > pos) s[mt][j][2 * h + 1] = -INFINITY;
              }
            }
          }
        }

        // Online softmax: new running max over the quad (the 4 threads sharing a row).
        float base[kMt][2], corr[kMt][2];
        bool moved = false;
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float mx = m[mt][h];
#pragma unroll
            for (int j = 0; j < kSub / 8; ++j)
              mx = fmaxf(mx, fmaxf(s[mt][j][2 * h], s[mt][j][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // A row with no key yet keeps max -inf: subtract 0 then, so exp2 gives 0, not NaN.
            base[mt][h] = mx == -INFINITY ? 0.0f : mx * scale_log2;
            corr[mt][h] = Exp2(m[mt][h] * scale_log2 - base[mt][h]);  // m -inf: 0 (O, l are 0)
            moved |= corr[mt][h] != 1.0f;
            m[mt][h] = mx;
          }
        }
        // NOTE: once the running maxima settle, most steps leave them unchanged: skip the rescale
        // (kMt * kD / 2 multiplies per thread) when no row of the warp needs it.
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
            for (int i = 0; i < kDTiles; ++i) {
              o[mt][i][0] *= corr[mt][0];
              o[mt][i][1] *= corr[mt][0];
              o[mt][i][2] *= corr[mt][1];
              o[mt][i][3] *= corr[mt][1];
            }
        }
        // l gains the rounded P of this step in place (PackBf16), after the same rescale.
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          l[mt][0] *= corr[mt][0];
          l[mt][1] *= corr[mt][1];
        }

        // O += P V, 16 keys at a time: P in bf16 as the A operand (keys 16kk .. 16kk + 15 are S
        // tiles 2kk, 2kk + 1); V^T fragments by transposing loads, each feeding kMt row tiles.
#pragma unroll
        for (int kk = 0; kk < kSub / 16; ++kk) {
          uint32_t pa[kMt][4];
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const float* sj = s[mt][2 * kk + hh];
              pa[mt][2 * hh] = PackBf16(Exp2(fmaf(sj[0], scale_log2, -base[mt][0])),
                                        Exp2(fmaf(sj[1], scale_log2, -base[mt][0])), l[mt][0]);
              pa[mt][2 * hh + 1] = PackBf16(Exp2(fmaf(sj[2], scale_log2, -base[mt][1])),
                                            Exp2(fmaf(sj[3], scale_log2, -base[mt][1])), l[mt][1]);
            }
          }
#pragma unroll
          for (int dp = 0; dp < kD / 16; ++dp) {
            uint32_t vb[4];
            LdMatrixX4Trans(vb, v_s + kk * 16 * kRowBytes + (v_lane ^ (dp << 5)));
#pragma unroll
            for (int mt = 0; mt < kMt; ++mt) {
              Mma(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
              Mma(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
            }
          }
        }
      }
      __syncthreads();  // every warp is done with buffer `buf` before tile kt + 2 is loaded in it
    }
    seg_begin = seg_end;
  }

  // Every real row saw its own position's key (p = 1 there), so l >= 1.
  const int64_t q_heads = a.q_heads;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = row0 + 16 * mt + g + 8 * h;
      if (row < tokens) {
        const float inv = 1.0f / sum;
        bf16* dst = a.out + ((t0 + row) * q_heads + head) * kD + 2 * tig;
#pragma unroll
        for (int i = 0; i < kDTiles; ++i)
          *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) =
              __floats2bfloat162_rn(o[mt][i][2 * h] * inv, o[mt][i][2 * h + 1] * inv);
      }
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The opt-in shared-memory limit of a block on the current device (227 KB on H100/H200, 163 KB
// on A100), read once per device.
int MaxSmemPerBlock() {
  static std::vector<int> limit;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  if (limit.size() <= static_cast<size_t>(device)) limit.resize(device + 1, 0);
  if (limit[device] == 0)
    CUDA_CHECK(
        cudaDeviceGetAttribute(&limit[device], cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit[device];
}

template <class C>
bool Launch(const PagedAttentionArgs& a, cudaStream_t stream) {
  if ((a.num_tokens + C::kRows - 1) / C::kRows > 65535) return false;
  constexpr int kSmem = Smem<C>::kTotal;
  if (kSmem > MaxSmemPerBlock()) return false;
  AllowDynamicSmem(reinterpret_cast<const void*>(FlashPrefillKernel<C>), kSmem);
  const dim3 grid(a.q_heads, (a.num_tokens + C::kRows - 1) / C::kRows);
  const float kLog2e = 1.4426950408889634f;
  FlashPrefillKernel<C><<<grid, C::kThreads, kSmem, stream>>>(a, a.scale * kLog2e);
  CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace

bool LaunchFlashPrefillMmaSync(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens <= 0 || a.kv_heads <= 0 || a.q_heads % a.kv_heads != 0 || a.block_size < 1)
    return false;
  if (!(a.scale > 0)) return false;
  // 16-byte cp.async of q and cache rows: every row start must be 16-byte aligned.
  if (a.q_row_stride % 8 != 0 || !Aligned16(a.q) || !Aligned16(a.k_cache) ||
      !Aligned16(a.v_cache) || !Aligned16(a.out))
    return false;
  // NOTE: 8 warps of 32 rows (two m16 tiles per warp, so each K and V fragment read from shared
  // memory feeds two mma), 32 keys per softmax step, one block per SM (254 registers at head_dim
  // 128, no spills). Measured on H200 against the 8-warp x 16-row kernel: 182/200/202 ->
  // 222/259/265 TFLOP/s at 4K/16K/32K (d128), 202 -> 228 at 16K (d64); 4 warps of 32 rows, two
  // blocks per SM, measured 214/239/243. 128-key K/V tiles (194 KB of shared memory) won
  // another 2% over 64-key ones, which remain for devices with less shared memory (A100).
  switch (a.head_dim) {
    case 64:
      return Launch<Cfg<64, 8, 2, 64>>(a, stream);
    case 128:
      return Launch<Cfg<128, 8, 2, 32, 128>>(a, stream) ||
             Launch<Cfg<128, 8, 2, 32, 64>>(a, stream);
    default:
      return false;
  }
}

bool LaunchFlashPrefill(const PagedAttentionArgs& a, cudaStream_t stream) {
  return LaunchFlashPrefillSm90(a, stream) || LaunchFlashPrefillMmaSync(a, stream);
}

}  // namespace tessera::cuda
