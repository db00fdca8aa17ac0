// Expert-parallel dispatch over all-to-all, on the device (moe_dispatch.cu): the send layout
// (which of a rank's tokens go to which rank, in what order), the packing of the send rows and the
// combine of the ranks' partial sums on the tokens' home rank. parallel/expert_exchange.h runs
// the exchange around them; Backend::MoeDispatchLayout (kernels/ops.h) documents the layout, and
// cpu::MoeDispatchLayout is the reference these match bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace tessera::cuda {

// rank_counts [S], expert_counts [S * experts_per_rank] (may be null), send_tokens
// [n * min(top_k, S)] (or [S * block_capacity] when block_capacity > 0) and token_slots
// [n, top_k] from ids [n, top_k], the tokens before *valid_rows (int32 [1]; null: all n) only, and
// load int64 [S + S * experts_per_rank] (may be null) += the counts, as Backend::MoeDispatchLayout.
void LaunchMoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks,
                             int experts_per_rank, int32_t* rank_counts, int32_t* expert_counts,
                             int32_t* send_tokens, int32_t* token_slots, int block_capacity,
                             const int32_t* valid_rows, int64_t* load, cudaStream_t stream);

// send_x [rows, hidden] = x[send_tokens[i]], send_ids / send_weights [rows, top_k] likewise; rows
// with send_tokens[i] < 0 get zeros, ids -1, weights 0.
void LaunchMoeDispatchPack(const __nv_bfloat16* x, const int32_t* ids, const float* weights,
                           const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                           __nv_bfloat16* send_x, int32_t* send_ids, float* send_weights,
                           cudaStream_t stream);

// out bf16 [m, k] = data e4m3 [m, k] * scale fp32 [ceil(k / 128), scale_stride][t] in fp32,
// rounded once (Backend::DequantizeFp8: the FP8 expert-exchange payload back as activations).
void LaunchDequantizeFp8(const uint8_t* data, const float* scale, int64_t scale_stride, int64_t m,
                         int64_t k, __nv_bfloat16* out, cudaStream_t stream);

// out [n, hidden] = sum over token t's rows of y listed in token_slots [n, top_k] (in order, up to
// the first -1), in fp32, rounded once; 0 for a token with none.
void LaunchMoeCombineRanks(const __nv_bfloat16* y, const int32_t* token_slots, int n, int top_k,
                           int64_t hidden, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace tessera::cuda
