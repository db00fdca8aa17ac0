// Causal GQA flash attention for prefill on Hopper's warpgroup MMA (wgmma, sm_90a only).
//
// Same contract and numerics as flash_prefill.cu (the mma.sync kernel, which remains the path on
// every other GPU and build): token t sees keys 0..positions[t] of its sequence through the paged
// cache's block table; scores and sums in fp32, online softmax in the exp2 domain, P rounded to
// bf16 before P.V and the output normalised by the sum of the rounded P.
//
// One block = 128 consecutive query tokens of one query head, in three warpgroups:
//   - warpgroup 0, the producer, gathers K and V tiles of 128 keys through the block table into
//     a ring of kStages shared-memory stages: a full tile by TMA (one box per page and 64-column
//     half, issued by the lanes of warp 0, the stage's barrier expecting the tile's bytes), a
//     segment's partial last tile (and every tile where TMA does not apply: block sizes below 8
//     or not powers of two) by cp.async from all 128 threads, zero-filling keys past the end
//     (cp.async.mbarrier.arrive.noinc); it reuses a stage once each consumer warp released it;
//     Q arrives by TMA too, issued first thing;
//   - warpgroups 1 and 2, the consumers, own 64 query rows each: S = Q K^T by wgmma m64n128k16
//     (Q and K from shared memory, K-major), online softmax in registers, P packed to bf16 in
//     registers as the A operand of O += P V (wgmma, V from shared memory MN-major: the
//     transpose bit), then each warp releases the stage.
// NOTE: a consumer issues P.V of tile j and S of tile j + 1 back to back before waiting, so the
// tensor cores never idle between the two products; the other consumer's softmax fills the time
// this one spends on its own softmax.
// setmaxnreg moves registers from the producer (40) to the consumers (232): O and S are 64 fp32
// each per thread, P 32 words.
//
// Shared memory (the layout wgmma's 128-byte swizzle expects): every [rows, 128] bf16 tile is two
// [rows, 64] halves (head_dim 0-63, 64-127), each row 128 bytes, 16-byte chunk c of row r stored
// at chunk c ^ (r & 7); halves and stages 1024-byte aligned. Q 32 KB, each stage K + V 64 KB:
// 3 stages, 224 KB (measured on H200 at 16K, 40/8 heads: 2 stages 229, 3 stages 259 TFLOP/s
// before the producer's block-size divisions became shifts, 324 after, 480 with one block-table
// load per page, 502 with TMA for K/V, 519 with TMA for Q too;
// docs/perf/2026-11-22-prefill-attention-wgmma-h200.md).
//
// Causality and varlen as in flash_prefill.cu: a tile holding several sequences is walked one
// segment at a time, with rows of other segments masked; key tiles past a segment's last
// position are not loaded, a consumer skips the tiles above all of its rows and masks only the
// tiles that cross one of its rows' positions.
#include <cuda.h>  // CUtensorMap and the encoder's types only: no -lcuda, see EncodeKvMap

#include <climits>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_prefill_sm90.h"

namespace tessera::cuda {
namespace {

constexpr int kD = 128;                  // head_dim
constexpr int kRows = 128;               // query tokens per block: 2 consumer warpgroups x 64
constexpr int kKeys = 128;               // keys per K/V tile
constexpr int kThreads = 384;            // producer warpgroup + 2 consumer warpgroups
constexpr int kHalfBytes = 128 * kKeys;  // one [128 rows, 64] half of a tile
constexpr int kTileBytes = 2 * kHalfBytes;
static_assert(kRows == kKeys, "Q and K/V tiles share the [128, 128] two-half layout");

template <int kStages>
struct Layout {
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kTileBytes;
  static constexpr int kV = kK + kStages * kTileBytes;
  // NOTE: + 1024: the dynamic shared memory base is aligned up to the 1024-byte swizzle repeat.
  static constexpr int kDynamic = kV + kStages * kTileBytes + 1024;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Byte offset of 16-byte chunk `chunk` (0-15) of row `row` in a [128, 128] two-half tile.
__device__ __forceinline__ uint32_t SwizzledChunk(int row, int chunk) {
  return (chunk >> 3) * kHalfBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

// The wgmma shared-memory descriptor of a 128-byte-swizzled operand starting at `addr`:
// start >> 4 in bits 0-13, the leading byte offset >> 4 in 16-29, the stride byte offset >> 4 in
// 32-45, swizzle mode 1 (128 B) in 62-63. K-major: the stride is 1024 bytes between groups of 8
// rows; the leading offset is unused (a k16 step stays in one 128-byte row). MN-major (V): the
// leading offset is the 16 KB between the two 64-column halves, the stride 1024 bytes between
// groups of 8 keys.
__device__ __forceinline__ uint64_t Desc(uint32_t addr, uint32_t lead_bytes) {
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) |
         (static_cast<uint64_t>(lead_bytes >> 4) << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ void MbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the barrier's phase of parity `parity`.
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Waits for a full stage: the producer's cp.async writes (generic proxy), then the proxy fence so
// this thread's wgmma (async proxy) reads see them.
__device__ __forceinline__ void WaitFull(uint32_t bar, uint32_t parity) {
  MbarWait(bar, parity);
  FenceProxyAsync();
}
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaWaitAll() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Pins registers an in-flight wgmma reads or writes: the compiler may not move their other uses
// across this point (placed after the wait), nor reuse an input's register before it.
__device__ __forceinline__ void Pin(float (&r)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void Pin(uint32_t (&r)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

// One box of a K/V tensor map (3-D: head_dim, kv head, slot) into shared memory at `dst`,
// completing on barrier `bar` with the box's bytes.
__device__ __forceinline__ void TmaLoad(uint32_t dst, const CUtensorMap& map, int col, int kv_head,
                                        int slot, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(col), "r"(kv_head), "r"(slot), "r"(bar)
      : "memory");
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Rounds (lo, hi) to bf16; `sum` gains the rounded values, which are what P.V multiplies.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi, float& sum) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  const float2 back = __bfloat1622float2(p);
  sum += back.x + back.y;
  return *reinterpret_cast<const uint32_t*>(&p);
}

// d[64 x 128] (+)= A[64 x 16] B[16 x 128], A and B K-major in shared memory (descriptors);
// scale_d 0 overwrites d instead of accumulating.
__device__ __forceinline__ void WgmmaSS(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                        int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[64 x 128] += A[64 x 16] B[16 x 128], A from registers (each warp's 16 rows as the mma.sync
// m16n8k16 A fragment), B MN-major in shared memory (the transpose bit, imm-trans-b = 1).
__device__ __forceinline__ void WgmmaRS(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// The run of the block's tokens from `begin` that belong to one sequence, and the keys they need.
struct Segment {
  int end;               // one past the run's last row
  int key_end;           // 1 + the largest position in the run
  const int32_t* table;  // the sequence's block table
};
__device__ __forceinline__ Segment FindSegment(const PagedAttentionArgs& a, const int* tok_pos,
                                               const int* tok_seq, int begin, int tokens) {
  const int seq = tok_seq[begin];
  Segment s{begin + 1, tok_pos[begin] + 1,
            a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq};
  while (s.end < tokens && tok_seq[s.end] == seq) s.key_end = max(s.key_end, tok_pos[s.end++] + 1);
  return s;
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// kStages K/V stages in the ring; kTma: Q comes by TMA through q_map and, for block sizes of
// >= 8 keys, full K/V tiles through k_map / v_map (otherwise, and for a segment's partial last
// tile, by cp.async). Without the sm_90a target (the sm_80 image of a
// multi-arch build) the body is empty: the host launches this kernel only after finding its
// sm_90a image (KernelPresent below).
template <int kStages, bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    FlashPrefillSm90Kernel(PagedAttentionArgs a, float scale_log2, int block_shift,
                           const __grid_constant__ CUtensorMap q_map,
                           const __grid_constant__ CUtensorMap k_map,
                           const __grid_constant__ CUtensorMap v_map) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = Layout<kStages>;
  // 64 K registers per SM: the producer's 128 threads take kProducerRegs, the consumers share
  // the rest in setmaxnreg's steps of 8.
  // NOTE: 32 or 24 for the producer spill: it keeps the cp.async path for partial tiles.
  constexpr int kProducerRegs = 40;
  constexpr int kConsumerRegs = ((65536 - 128 * kProducerRegs) / 256) & ~7;
  __shared__ int tok_pos[kRows], tok_seq[kRows];
  __shared__ alignas(8) uint64_t full_bar[kStages], empty_bar[kStages], q_bar;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base =
      (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~uint32_t{1023};
  const uint32_t q_s = base + L::kQ, k_s = base + L::kK, v_s = base + L::kV;
  const uint32_t full0 = static_cast<uint32_t>(__cvta_generic_to_shared(full_bar));
  const uint32_t empty0 = static_cast<uint32_t>(__cvta_generic_to_shared(empty_bar));

  const int tid = threadIdx.x;
  const int head = blockIdx.x;
  const int kv_head = head / (a.q_heads / a.kv_heads);
  // NOTE: the last query tile (the most keys) first, as in flash_prefill.cu.
  const int t0 = (gridDim.y - 1 - blockIdx.y) * kRows;
  const int tokens = min(kRows, a.num_tokens - t0);

  const uint32_t q_full = static_cast<uint32_t>(__cvta_generic_to_shared(&q_bar));
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      MbarInit(full0 + 8 * s, 128);  // every producer thread, once its copies landed
      MbarInit(empty0 + 8 * s, 8);   // every consumer warp, once its wgmma read the stage
    }
    MbarInit(q_full, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    FenceProxyAsync();
    if (kTma) {
      // NOTE: Q by TMA before anything else (rows past the end read as zero, out of the map's
      // bounds): its load overlaps the token metadata's and the first K/V tile's.
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(q_full),
                   "r"(kTileBytes)
                   : "memory");
#pragma unroll
      for (int h = 0; h < 2; ++h)
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
            "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(q_s + h * kHalfBytes),
            "l"(reinterpret_cast<uint64_t>(&q_map)), "r"(head * kD + 64 * h), "r"(t0), "r"(q_full)
            : "memory");
    }
  }
  for (int i = tid; i < kRows; i += kThreads) {
    tok_pos[i] = i < tokens ? a.positions[t0 + i] : -1;
    tok_seq[i] = i < tokens ? a.token_seq[t0 + i] : -1;
  }
  for (int c = tid; c < (kTma ? 0 : kRows * 16); c += kThreads) {
    const int row = c / 16, chunk = c % 16;
    const bool valid = row < tokens;
    const bf16* src =
        valid ? a.q + (t0 + row) * a.q_row_stride + static_cast<int64_t>(head) * kD + chunk * 8
              : a.q;
    CpAsync16(q_s + SwizzledChunk(row, chunk), src, valid);
  }
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  FenceProxyAsync();  // Q, written by cp.async, is read by wgmma (the async proxy)
  __syncthreads();

  if (tid < 128) {
    // Producer. Thread p copies 16-byte chunk p % 16 of rows p / 16 + 8 i: every row it writes
    // has the same row & 7, so one swizzled offset serves them all.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs) : "memory");
    const int chunk = tid % 16, r0 = tid / 16;
    const int64_t kv_row = static_cast<int64_t>(a.kv_heads) * kD;
    const bf16* k_src = a.k_cache + static_cast<int64_t>(kv_head) * kD + chunk * 8;
    const bf16* v_src = a.v_cache + static_cast<int64_t>(kv_head) * kD + chunk * 8;
    const uint32_t dst0 = SwizzledChunk(r0, chunk);
    const int bs = a.block_size;
    int it = 0;
    for (int seg_begin = 0; seg_begin < tokens;) {
      const Segment seg = FindSegment(a, tok_pos, tok_seq, seg_begin, tokens);
      const int num_tiles = (seg.key_end + kKeys - 1) / kKeys;
      for (int kt = 0; kt < num_tiles; ++kt, ++it) {
        const int s = it % kStages;
        if (it >= kStages) MbarWait(empty0 + 8 * s, ((it / kStages) & 1) ^ 1);
        if (kTma && block_shift >= 3 && (kt + 1) * kKeys <= seg.key_end) {
          // NOTE: a full tile by TMA: lane l of warp 0 loads box l (its page, or the tile's
          // part of one) of both halves of K and V; the other threads only arrive. Thread 0
          // arrives first with the tile's bytes expected, so the phase waits for every box.
          // Partial tiles (keys past the segment's end must be zero) stay on cp.async.
          const uint32_t bar = full0 + 8 * s;
          if (tid == 0) {
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                         "r"(2 * kTileBytes)
                         : "memory");
          }
          if (tid < 32) {
            __syncwarp();
            const int box_shift = min(block_shift, 7);  // rows per box: one page, at most a tile
            if (tid < (kKeys >> box_shift)) {
              const int key = kt * kKeys + (tid << box_shift);
              const int slot = seg.table[key >> block_shift] * bs + (key & (bs - 1));
              const uint32_t row = (tid << box_shift) * 128;
              const uint32_t ks = k_s + s * kTileBytes + row, vs = v_s + s * kTileBytes + row;
              TmaLoad(ks, k_map, 0, kv_head, slot, bar);
              TmaLoad(ks + kHalfBytes, k_map, 64, kv_head, slot, bar);
              TmaLoad(vs, v_map, 0, kv_head, slot, bar);
              TmaLoad(vs + kHalfBytes, v_map, 64, kv_head, slot, bar);
            }
          }
          if (tid != 0) MbarArrive(bar);
          continue;
        }
        const uint32_t kd = k_s + s * kTileBytes + dst0, vd = v_s + s * kTileBytes + dst0;
        if (block_shift >= 2) {
          // NOTE: one block-table load per page, not per key row: lane l holds the entry of the
          // tile's page l (a tile spans at most 32 pages of >= 4 keys; one page, entered at
          // in_first, when pages are longer than a tile) and each row shuffles its page's from
          // it. The per-row loads, dependent on the page they look up, held the producer back:
          // 325 -> 458 TFLOP/s at 16K, and the full unroll (no loads left in the loop) 482.
          const int first = (kt * kKeys) >> block_shift, in_first = (kt * kKeys) & (bs - 1);
          const int pages = (seg.key_end + bs - 1) >> block_shift;
          const int lane = tid % 32;
          const int32_t entry = lane <= ((kKeys - 1) >> block_shift) && first + lane < pages
                                    ? seg.table[first + lane]
                                    : 0;
#pragma unroll
          for (int i = 0; i < kKeys / 8; ++i) {
            // Keys past the segment's end are zero-filled: V must be finite where P is 0.
            const int at = in_first + r0 + 8 * i;
            const bool valid = kt * kKeys + r0 + 8 * i < seg.key_end;
            const int32_t page = __shfl_sync(0xffffffffu, entry, at >> block_shift);
            const int64_t off =
                valid ? (static_cast<int64_t>(page) * bs + (at & (bs - 1))) * kv_row : 0;
            CpAsync16(kd + i * 8 * 128, k_src + off, valid);
            CpAsync16(vd + i * 8 * 128, v_src + off, valid);
          }
        } else {
#pragma unroll 4
          for (int i = 0; i < kKeys / 8; ++i) {
            const int key = kt * kKeys + r0 + 8 * i;
            const bool valid = key < seg.key_end;
            int64_t off = 0;
            if (valid) {
              // NOTE: a shift and a mask for power-of-two block sizes (the engine's): two
              // integer divisions per row were a large share of the producer's instructions.
              const int page = block_shift >= 0 ? key >> block_shift : key / bs;
              const int in_page = block_shift >= 0 ? key & (bs - 1) : key % bs;
              off = (static_cast<int64_t>(seg.table[page]) * bs + in_page) * kv_row;
            }
            CpAsync16(kd + i * 8 * 128, k_src + off, valid);
            CpAsync16(vd + i * 8 * 128, v_src + off, valid);
          }
        }
        // NOTE: the stage's barrier completes when this thread's copies land (noinc: the arrival
        // is one of the 128 expected), so the producer never waits on its own copies and keeps
        // up to kStages tiles in flight.
        asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(full0 + 8 * s)
                     : "memory");
      }
      seg_begin = seg.end;
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");  // no copy outlives its thread
  } else {
    // Consumer wg: rows 64 wg .. 64 wg + 63; warp w of it rows 64 wg + 16 w + (0..15), of which
    // this thread holds row_lo (accumulator elements 4j, 4j + 1 of n tile j) and row_lo + 8
    // (4j + 2, 4j + 3), columns 8j + 2 tig + (0, 1).
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs) : "memory");
    if (kTma) MbarWait(q_full, 0);
    const int wg = tid / 128 - 1;
    const int warp = (tid / 32) % 4, lane = tid % 32;
    const int g = lane / 4, tig = lane % 4;
    const int row_lo = 64 * wg + 16 * warp + g, row_hi = row_lo + 8;
    const uint32_t q_wg = q_s + wg * 64 * 128;
    float o[64], s[64];
    uint32_t p[32];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = s[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) p[i] = 0;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    // S = Q K^T for the tile in stage `stage`: 8 k steps of 16 (4 per 64-column half).
    auto issue_s = [&](int stage) {
      const uint32_t k_stage = k_s + stage * kTileBytes;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const uint32_t at = (ks >> 2) * kHalfBytes + (ks & 3) * 32;
        WgmmaSS(s, Desc(q_wg + at, 16), Desc(k_stage + at, 16), ks > 0);
      }
    };
    auto release = [&](int stage) {
      __syncwarp();
      if (lane == 0) MbarArrive(empty0 + 8 * stage);
    };

    int it = 0;
    for (int seg_begin = 0; seg_begin < tokens;) {
      const Segment seg = FindSegment(a, tok_pos, tok_seq, seg_begin, tokens);
      const int num_tiles = (seg.key_end + kKeys - 1) / kKeys;
      // This warpgroup's rows in the segment, their smallest and largest positions.
      const int lo = max(seg_begin, 64 * wg), hi = min(seg.end, 64 * wg + 64);
      int w_min = INT_MAX, w_max = -1;
      for (int r = lo; r < hi; ++r) {
        w_min = min(w_min, tok_pos[r]);
        w_max = max(w_max, tok_pos[r]);
      }
      // Keys at or below this one are seen by all 64 rows: no mask needed.
      const int unmasked_end = lo == 64 * wg && hi == 64 * wg + 64 ? w_min : -1;
      // NOTE: read back through a shuffle so ptxas sees a warp-uniform trip count; otherwise it
      // treats the loop as divergent and serialises every wgmma in it (C7520).
      const int active =
          __shfl_sync(0xffffffffu, w_max < 0 ? 0 : min(num_tiles, w_max / kKeys + 1), 0);
      // This thread's rows' positions; -1 masks every key (another segment, or padding).
      const int pos_lo = row_lo >= seg_begin && row_lo < seg.end ? tok_pos[row_lo] : -1;
      const int pos_hi = row_hi >= seg_begin && row_hi < seg.end ? tok_pos[row_hi] : -1;

      if (active > 0) {
        WaitFull(full0 + 8 * (it % kStages), (it / kStages) & 1);
        WgmmaFence();
        issue_s(it % kStages);
        WgmmaCommit();
      }
      for (int kt = 0; kt < active; ++kt) {
        const int cur = it + kt;
        WgmmaWaitAll();  // S of tile kt, and P.V of tile kt - 1
        Pin(s);
        Pin(o);
        Pin(p);
        if (kt > 0) release((cur - 1) % kStages);

        const int key0 = kt * kKeys;
        if (key0 + kKeys - 1 > unmasked_end) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const int key = key0 + 8 * j + 2 * tig;
            if (key > pos_lo) s[4 * j] = -INFINITY;
            if (key + 1 > pos_lo) s[4 * j + 1] = -INFINITY;
            if (key > pos_hi) s[4 * j + 2] = -INFINITY;
            if (key + 1 > pos_hi) s[4 * j + 3] = -INFINITY;
          }
        }
        // Online softmax: the new running max over the quad (the 4 threads sharing a row).
        float base[2], corr[2];
        bool moved = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = m[h];
#pragma unroll
          for (int j = 0; j < 16; ++j)
            mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          // A row with no key yet keeps max -inf: subtract 0 then, so exp2 gives 0, not NaN.
          base[h] = mx == -INFINITY ? 0.0f : mx * scale_log2;
          corr[h] = Exp2(m[h] * scale_log2 - base[h]);  // m -inf: 0 (O and l are 0)
          moved |= corr[h] != 1.0f;
          m[h] = mx;
          l[h] *= corr[h];
        }
        // NOTE: once the maxima settle most tiles leave them unchanged: skip the rescale then.
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            o[4 * j] *= corr[0];
            o[4 * j + 1] *= corr[0];
            o[4 * j + 2] *= corr[1];
            o[4 * j + 3] *= corr[1];
          }
        }
        // P in bf16 as wgmma's register A operand: keys 16 kk .. 16 kk + 15 are n tiles 2 kk
        // (a0: row_lo, a1: row_hi) and 2 kk + 1 (a2: row_lo, a3: row_hi).
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const float* sj = s + 4 * (2 * kk + hh);
            p[4 * kk + 2 * hh] = PackBf16(Exp2(fmaf(sj[0], scale_log2, -base[0])),
                                          Exp2(fmaf(sj[1], scale_log2, -base[0])), l[0]);
            p[4 * kk + 2 * hh + 1] = PackBf16(Exp2(fmaf(sj[2], scale_log2, -base[1])),
                                              Exp2(fmaf(sj[3], scale_log2, -base[1])), l[1]);
          }
        }

        WgmmaFence();
        const uint32_t v_stage = v_s + (cur % kStages) * kTileBytes;
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          const uint32_t pa[4] = {p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3]};
          WgmmaRS(o, pa, Desc(v_stage + kk * 16 * 128, kHalfBytes));
        }
        if (kt + 1 < active) {
          WaitFull(full0 + 8 * ((cur + 1) % kStages), ((cur + 1) / kStages) & 1);
          issue_s((cur + 1) % kStages);
        }
        WgmmaCommit();
      }
      if (active > 0) {
        WgmmaWaitAll();
        Pin(s);
        Pin(o);
        Pin(p);
        release((it + active - 1) % kStages);
      }
      // Tiles above every row of this warpgroup: loaded for the other one; let them go.
      for (int kt = active; kt < num_tiles; ++kt) {
        MbarWait(full0 + 8 * ((it + kt) % kStages), ((it + kt) / kStages) & 1);
        release((it + kt) % kStages);
      }
      it += num_tiles;
      seg_begin = seg.end;
    }

    // Every real row saw its own position's key (p = 1 there), so l >= 1.
    const int64_t q_heads = a.q_heads;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = h ? row_hi : row_lo;
      if (row < tokens) {
        const float inv = 1.0f / sum;
        bf16* dst = a.out + ((t0 + row) * q_heads + head) * kD + 2 * tig;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          *reinterpret_cast<__nv_bfloat162*>(dst + 8 * j) =
              __floats2bfloat162_rn(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
    }
  }
#else
  (void)a;
  (void)scale_log2;
  (void)block_shift;
  (void)q_map;
  (void)k_map;
  (void)v_map;
#endif
}

constexpr int kStagesUsed = 3;

using Kernel = void (*)(PagedAttentionArgs, float, int, CUtensorMap, CUtensorMap, CUtensorMap);

// Whether this device runs the kernel's sm_90a image, and has the shared memory for it: the
// static shared memory (token metadata, barriers) exists only in the sm_90a body, so a build
// without that target (or a device that picks another image) reports none. Once per device.
bool KernelPresent(Kernel kernel) {
  static std::vector<int> present;  // per device: 0 unknown, 1 yes, 2 no
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  if (present.size() <= static_cast<size_t>(device)) present.resize(device + 1, 0);
  if (present[device] == 0) {
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cudaFuncAttributes attr{};
    int smem_limit = 0;
    CUDA_CHECK(
        cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const bool ok =
        major == 9 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
        attr.sharedSizeBytes >= 2 * kRows * sizeof(int) &&
        attr.sharedSizeBytes + Layout<kStagesUsed>::kDynamic <= static_cast<size_t>(smem_limit);
    (void)cudaGetLastError();  // a missing image is an answer, not an error to carry on
    present[device] = ok ? 1 : 2;
  }
  return present[device] == 1;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, through the runtime (no link against libcuda); null
// where the driver lacks it.
EncodeTiled GetEncoder() {
  static const EncodeTiled encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<EncodeTiled>(fn);
  }();
  return encode;
}

// A tensor map over a cache viewed as [slots, kv_heads, 128] bf16, boxes of [rows, 1, 64] in
// the 128-byte swizzle the wgmma descriptors expect. The slot extent is a bound, not the
// cache's size: the kernel loads only slots of the block table's pages.
// NOTE: built per call on the host and passed by value (a __grid_constant__ parameter), so a
// captured graph replays the map it was captured with, like any other kernel argument.
bool EncodeKvMap(const bf16* cache, int kv_heads, int rows, CUtensorMap* map) {
  const EncodeTiled encode = GetEncoder();
  if (encode == nullptr) return false;
  const cuuint64_t row_bytes = static_cast<cuuint64_t>(kv_heads) * kD * sizeof(bf16);
  const cuuint64_t dims[3] = {kD, static_cast<cuuint64_t>(kv_heads), cuuint64_t{1} << 31};
  const cuuint64_t strides[2] = {kD * sizeof(bf16), row_bytes};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<bf16*>(cache), dims, strides,
                box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Q [num_tokens, q_heads * 128] with rows q_row_stride apart, boxes of [128 rows, 64].
bool EncodeQMap(const PagedAttentionArgs& a, CUtensorMap* map) {
  const EncodeTiled encode = GetEncoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(a.q_heads) * kD,
                              static_cast<cuuint64_t>(a.num_tokens)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(a.q_row_stride) * sizeof(bf16)};
  const cuuint32_t box[2] = {64, kRows};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(a.q), dims, strides,
                box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

bool LaunchFlashPrefillSm90(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim != kD || a.num_tokens <= 0 || a.kv_heads <= 0 || a.q_heads % a.kv_heads != 0 ||
      a.block_size < 1 || !(a.scale > 0))
    return false;
  if (a.q_row_stride % 8 != 0 || !Aligned16(a.q) || !Aligned16(a.k_cache) ||
      !Aligned16(a.v_cache) || !Aligned16(a.out))
    return false;
  const int tiles = (a.num_tokens + kRows - 1) / kRows;
  if (tiles > 65535 || !KernelPresent(FlashPrefillSm90Kernel<kStagesUsed, false>)) return false;
  const float kLog2e = 1.4426950408889634f;
  int block_shift = -1;
  if ((a.block_size & (a.block_size - 1)) == 0)
    for (block_shift = 0; (1 << block_shift) < a.block_size;) ++block_shift;
  // TMA boxes are whole pages (at most a tile) of >= 8 rows: 1024-byte aligned in shared
  // memory, where the swizzle pattern repeats.
  CUtensorMap q_map{}, k_map{}, v_map{};
  const int rows = block_shift >= 7 ? kKeys : a.block_size;
  const bool tma = a.q_row_stride >= static_cast<int64_t>(a.q_heads) * kD &&
                   EncodeQMap(a, &q_map) &&
                   (block_shift < 3 || (EncodeKvMap(a.k_cache, a.kv_heads, rows, &k_map) &&
                                        EncodeKvMap(a.v_cache, a.kv_heads, rows, &v_map)));
  const Kernel kernel =
      tma ? FlashPrefillSm90Kernel<kStagesUsed, true> : FlashPrefillSm90Kernel<kStagesUsed, false>;
  constexpr int kSmem = Layout<kStagesUsed>::kDynamic;
  AllowDynamicSmem(reinterpret_cast<const void*>(kernel), kSmem);
  kernel<<<dim3(a.q_heads, tiles), kThreads, kSmem, stream>>>(a, a.scale * kLog2e, block_shift,
                                                              q_map, k_map, v_map);
  CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace tessera::cuda
