// Paged-KV-cache launchers (attention.cu): the cache write and causal GQA attention.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tessera::cuda {

// Writes k and v [n, kv_heads, head_dim] (rows row_stride elements apart) into the caches
// [num_slots, kv_heads, head_dim] at slot_mapping[t]; negative slots are skipped.
void LaunchWriteKvCache(const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t row_stride, int n,
                        int kv_heads, int head_dim, const int32_t* slot_mapping,
                        __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, cudaStream_t stream);

struct PagedAttentionArgs {
  const __nv_bfloat16* q = nullptr;  // [num_tokens, q_heads, head_dim], rows q_row_stride apart
  int64_t q_row_stride = 0;
  const __nv_bfloat16* k_cache = nullptr;  // [num_slots, kv_heads, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  const int32_t* positions = nullptr;     // [num_tokens]
  const int32_t* token_seq = nullptr;     // [num_tokens]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int num_tokens = 0;
  int num_seqs = 0;
  // Leading one-token sequences (AttentionBatch::num_single): token t < num_single is sequence t
  // at its only row. 0 = unknown.
  int num_single = 0;
  int max_blocks_per_seq = 0;
  int block_size = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;  // even, <= kMaxHeadDim
  float scale = 0;
  __nv_bfloat16* out = nullptr;  // [num_tokens, q_heads, head_dim]
  // Scratch for the split-KV decode path (decode_attention.h), allocated once by the caller;
  // null / 0 disables that path.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

constexpr int kMaxHeadDim = 256;

// Token t (sequence token_seq[t], position p) attends to its sequence's cached positions 0..p.
void LaunchPagedAttention(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace tessera::cuda
