// The float32 CPU reference kernels: plain, obviously correct loops (OpenMP across rows).
// Every other implementation (the CUDA backend) is tested against these on random inputs.
// Each function's contract is the one of the op of the same name in kernels/ops.h.
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/ops.h"

namespace tessera::cpu {

void Embedding(const float* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
               const int32_t* ids, int n, float* out);
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out);
void AddRmsNorm(float* residual, const float* x, const float* weight, int64_t rows, int64_t dim,
                float eps, float* out);
void Linear(const float* x, const float* w, int64_t m, int64_t n, int64_t k, float* y);
void HeadNormRope(float* x, int64_t row_stride, int n, int heads, int head_dim,
                  const float* norm_weight, float eps, const int32_t* positions,
                  const float* inv_freq, float attention_scaling);
void WriteKvCache(const float* k, const float* v, int64_t row_stride, int n, int kv_heads,
                  int head_dim, const int32_t* slot_mapping, float* k_cache, float* v_cache);
void QkNormRopeKvWrite(float* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                       int head_dim, const float* q_norm, const float* k_norm, float eps,
                       const int32_t* positions, const float* inv_freq, float attention_scaling,
                       const int32_t* slot_mapping, float* k_cache, float* v_cache);
void Attention(const float* q, int64_t q_row_stride, const float* k_cache, const float* v_cache,
               int num_tokens, const int32_t* positions, const int32_t* token_seq,
               const int32_t* block_tables, int max_blocks_per_seq, int block_size, int q_heads,
               int kv_heads, int head_dim, float scale, float* out);
void SiluMul(const float* gate_up, int64_t m, int64_t intermediate, float* out);
void GatherRows(const float* x, const int32_t* rows, int r, int64_t dim, float* out);
void Add(const float* a, const float* b, int64_t n, float* out);
void RouterTopK(const float* logits, int n, int num_experts, int top_k, bool normalize,
                int32_t* ids, float* weights);
// The grouping of (token, slot) pairs by local expert that the CUDA MoE kernels build on the
// device (kernels/cuda/moe.h has the layout): offsets [E + 1], gather [n * top_k] (entries past
// offsets[E] untouched), pair_row [n, top_k] (-1 for other ranks' experts). Tokens ascend within
// each expert.
void MoeGroupRows(const int32_t* ids, int n, int top_k, int first_expert, int num_local_experts,
                  int32_t* offsets, int32_t* gather, int32_t* pair_row);
void MoeExperts(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                int first_expert, int num_local_experts, int64_t hidden, int64_t intermediate,
                const float* gate_up, const float* down, float* out);
// MoeExperts with each local expert's weights from `expert_weights(e, &gate_up, &down)`: called
// once for each expert with rows, in increasing e; the pointers ([2I, H] and [H, I]) are used
// before the next call.
void MoeExpertsWith(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                    int first_expert, int num_local_experts, int64_t hidden, int64_t intermediate,
                    const std::function<void(int, const float**, const float**)>& expert_weights,
                    float* out);
// Expert-parallel dispatch over all-to-all (Backend::MoeDispatchLayout / MoeDispatchPack /
// MoeCombineRanks in kernels/ops.h have the layout).
void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                       int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                       int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                       int64_t* load);
void MoeDispatchPack(const float* x, const int32_t* ids, const float* weights,
                     const int32_t* send_tokens, int rows, int64_t hidden, int top_k, float* send_x,
                     int32_t* send_ids, float* send_weights);
void MoeCombineRanks(const float* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                     float* out);

// FP8 (kernels/ops.h: Fp8Weight, Fp8Activations, QuantizeFp8, LinearFp8): the arithmetic the GPU
// kernels do, bit for bit where they promise it (quantization), in float32 otherwise.
// The scale of a 1 x 128 activation group with largest magnitude `amax`: amax / 448, 1 for 0.
float Fp8GroupScale(float amax);
// x [m, k] -> data e4m3 [m, k], scale [ceil(k/128), scale_stride] (tokens fastest).
void QuantizeFp8(const float* x, int64_t m, int64_t k, uint8_t* data, float* scale,
                 int64_t scale_stride);
// The block-scaled weight w [n, k] = data * scale[i / 128][j / 128] as float32.
void DequantizeFp8Weight(const uint8_t* data, const float* scale, int64_t scale_stride, int64_t n,
                         int64_t k, float* w);
// The activations x [m, k] = data * scale[j / 128][t] as float32.
void DequantizeFp8Activations(const uint8_t* data, const float* scale, int64_t scale_stride,
                              int64_t m, int64_t k, float* x);
// W8A8: y [m, n] = sum over 128-k groups g of (sum_{j in g} xq[t, j] * wq[i, j]) * xs[g][t] *
// ws[i / 128][g], the sums in float32 (the GPU's fp32 scale promotion per k group).
void LinearFp8(const uint8_t* x_data, const float* x_scale, int64_t x_scale_stride,
               const uint8_t* w_data, const float* w_scale, int64_t w_scale_stride, int64_t m,
               int64_t n, int64_t k, float* y);
// w [batch, n, k] = the batch of e4m3 weights `data` with the scales and layout of `layout`
// (Backend::DequantizeFp8Weight; layout.data is ignored), in float32.
void DequantizeFp8Blocks(const uint8_t* data, const Fp8Weight& layout, int64_t n, int64_t k,
                         int64_t batch, int64_t scale_batch_stride, float* w,
                         const int32_t* only = nullptr);
void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used);
// w [n, k] -> data e4m3 [n, k], scale [ceil(n/128), scale_stride] as transformers quantizes
// weights (Backend::QuantizeFp8Weight).
void QuantizeFp8Weight(const float* w, int64_t n, int64_t k, uint8_t* data, float* scale,
                       int64_t scale_stride);
// W8A16: y [m, n] = x [m, k] @ DequantizeFp8Weight(w)^T.
void LinearFp8WeightOnly(const float* x, const uint8_t* w_data, const float* w_scale,
                         int64_t w_scale_stride, int64_t m, int64_t n, int64_t k, float* y);
// Backend::MoeExpertsFp8: each routed expert's gate_up and down dequantized exactly
// (DequantizeFp8Blocks, any offsets and parts) and run as MoeExperts runs them, so the result is
// the dequantize-then-MoeExperts path's bit for bit.
void MoeExpertsFp8(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                   const ExpertWeightsFp8& experts, float* out);

// One row x[vocab] (contiguous) by the rule of kernels/base/sampling_rule.h.
int32_t SampleRow(const float* x, int64_t vocab, const SamplingRowParams& params);
// Penalises row x[vocab] in place by `row`'s entries of `entries` (SamplingPenaltyRow).
void ApplyPenalties(float* x, int64_t vocab, const SamplingPenaltyRow& row, const int32_t* entries);
// `penalties` (null: none) in host memory; its scratch is not used.
void SampleTokens(const float* logits, int rows, int64_t vocab, int shards,
                  const SamplingRowParams* params, const SamplingPenalties* penalties,
                  int32_t* tokens);

}  // namespace tessera::cpu
