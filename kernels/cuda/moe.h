// Mixture-of-experts launchers (moe.cu): the router's top-k, the device-side grouping of
// (token, slot) pairs by local expert, the grouped expert GEMMs and the weighted combine. Together
// they run a MoE layer with no host read of the routing, so a step can be recorded as a CUDA graph.
//
// Layout of one step (P = n * top_k bounds every pair count; grouped rows are "pairs" of the
// experts this rank holds, expert by expert, tokens ascending within each expert):
//   offsets  int32 [E + 1]  grouped rows of local expert e: [offsets[e], offsets[e + 1])
//   gather   int32 [P]      token of each grouped row (entries >= offsets[E] unused)
//   pair_row int32 [n, top_k] grouped row of each (token, slot), -1 when another rank's expert
//   act      A [P, I]        silu(gate) * up of each grouped row
//   y        A [P, H]        each grouped row's expert output
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ops.h"

namespace tessera::cuda {

// probs = softmax(logits [n, num_experts]) in fp32; the top_k largest per row (ties to the lower
// expert id) into ids [n, top_k] and weights [n, top_k], renormalised to sum 1 when `normalize`.
void LaunchRouterTopK(const __nv_bfloat16* logits, int n, int num_experts, int top_k,
                      bool normalize, int32_t* ids, float* weights, cudaStream_t stream);

// From ids [n, top_k] (global expert ids, distinct within a row; ids outside
// [first_expert, first_expert + num_local_experts) belong to other ranks): offsets, gather and
// pair_row as above. The order is fixed by the ids alone (no atomics), as cpu::MoeGroupRows.
void LaunchMoeGroup(const int32_t* ids, int n, int top_k, int first_expert, int num_local_experts,
                    int32_t* offsets, int32_t* gather, int32_t* pair_row, cudaStream_t stream);

// act [P, I] = silu(x[gather[r]] @ gate_e^T) * (x[gather[r]] @ up_e^T) for each grouped row r of
// each local expert e (gate|up rounded to bf16 before the product, as Linear then SiluMul).
// x [n, H]; gate_up W [E, 2I, H] (gate rows then up rows). max_rows bounds offsets[E] (the grid
// is sized from it; the tiles themselves are read from `offsets` on the device).
void LaunchMoeGateUp(const __nv_bfloat16* x, const int32_t* gather, const int32_t* offsets,
                     int num_local_experts, int max_rows, const __nv_bfloat16* gate_up,
                     int64_t hidden, int64_t intermediate, __nv_bfloat16* act, cudaStream_t stream);

// y [P, H] = act[r] @ down_e^T for each grouped row r of each local expert e; down W [E, H, I].
void LaunchMoeDown(const __nv_bfloat16* act, const int32_t* offsets, int num_local_experts,
                   int max_rows, const __nv_bfloat16* down, int64_t hidden, int64_t intermediate,
                   __nv_bfloat16* y, cudaStream_t stream);

// The same two GEMMs with FP8 experts (W8A16, kernels/ops.h MoeExpertsFp8): each e4m3 weight
// tile is widened to bf16 in shared memory times its 128 x 128 block's scale (rounded once, as
// DequantizeFp8Weight), so act and y equal the dequantize-then-bf16 path's bit for bit. Expert
// e's weight starts at w.data + e * rows * cols bytes, its scale table at
// w.scale + e * scale_batch_stride; any row offset and parts (gate|up), col_offset % 16 == 0.
// Graph-capturable (the tiles are read from `offsets` on the device); an expert with no rows
// launches no tile, one with up to a tile's rows (32 at decode) reads its weights once.
bool MoeFp8Supported(const Fp8Weight& w, int64_t k);
void LaunchMoeGateUpFp8(const __nv_bfloat16* x, const int32_t* gather, const int32_t* offsets,
                        int num_local_experts, int max_rows, const Fp8Weight& gate_up,
                        int64_t scale_batch_stride, int64_t hidden, int64_t intermediate,
                        __nv_bfloat16* act, cudaStream_t stream);
void LaunchMoeDownFp8(const __nv_bfloat16* act, const int32_t* offsets, int num_local_experts,
                      int max_rows, const Fp8Weight& down, int64_t scale_batch_stride,
                      int64_t hidden, int64_t intermediate, __nv_bfloat16* y, cudaStream_t stream);

// How the FP8 expert GEMMs widen e4m3 to bf16 (same bits either way): kBits by bit moves and one
// fp32 multiply (fp8.cuh WidenE4M3Bits), kCvt by conversion instructions (WidenE4M3), kept for
// one-GPU A/B runs. TESSERA_MOE_FP8_WIDEN=cvt|bits (read once) sets the default: cvt until a GPU
// run has checked bits (cuda_moe_fp8_test compares both with the dequantize path);
// SetMoeFp8Widen overrides it process-wide for later launches (benchmarks; kDefault clears it).
enum class MoeFp8Widen { kDefault, kCvt, kBits };
MoeFp8Widen MoeFp8DefaultWiden();
void SetMoeFp8Widen(MoeFp8Widen how);

// out [n, hidden] = sum over the token's local slots, in increasing expert id, of
// weights[t, k] * y[pair_row[t, k]], in fp32 (the CPU reference's order: deterministic on every
// run and rank layout); 0 for a token with no local expert.
void LaunchMoeCombine(const __nv_bfloat16* y, const int32_t* ids, const int32_t* pair_row,
                      const float* weights, int n, int top_k, int64_t hidden, __nv_bfloat16* out,
                      cudaStream_t stream);

}  // namespace tessera::cuda
