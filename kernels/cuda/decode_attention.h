// Split-KV ("flash-decoding") paged attention for pure-decode batches (decode_attention.cu).
//
// A decode step gives each sequence one query token, so one block per (token, KV head) leaves
// most of the GPU idle at small batches. Here the keys of each token are also cut into splits:
// grid (num_tokens, kv_heads, num_splits), each block one GQA group over one key range, its
// partial softmax state (m, l, o) written to a workspace, and a small kernel merges the splits.
// head_dim 64 and 128 run on tensor cores (mma.sync, K/V staged through shared memory by
// cp.async); other head sizes on an fp32 kernel (decode_attention.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention.h"

namespace tessera::cuda {

// Keys per tile of the split kernel; every split length is a multiple of it.
constexpr int kDecodeTileKeys = 128;
// Most splits per token; bounds the combine kernel's shared memory.
constexpr int kMaxDecodeSplits = 256;
// Largest GQA group (q_heads / kv_heads) the split kernel takes; larger ones use the old kernel.
constexpr int kMaxDecodeGroup = 16;

struct DecodeSplitPlan {
  int num_splits = 1;  // blocks per (token, KV head)
  // Keys per split, a multiple of kDecodeTileKeys, for the fp32 kernel; the tensor-core kernel
  // deals the context's 64-key tiles round-robin to the splits instead.
  int split_len = 0;
};

// The split count from launch constants only, never from context lengths, so that a CUDA graph
// captured once replays correctly for every context up to key_capacity (max_blocks_per_seq *
// block_size): as many splits as fill one wave of `resident_blocks` (SMs x resident blocks per
// SM), lowered so the partials fit workspace_bytes (num_splits == 1 needs no workspace: the
// split kernel then writes the output itself).
DecodeSplitPlan PlanDecodeSplits(int num_tokens, int q_heads, int kv_heads, int head_dim,
                                 int64_t key_capacity, int resident_blocks, size_t workspace_bytes);

// The plan LaunchSplitKvDecode makes for `args` on the current device; num_splits == 0 when it
// would decline them.
DecodeSplitPlan PlanSplitKvDecode(const PagedAttentionArgs& args);

// Workspace bytes the partials of `num_splits` splits take: o [num_tokens, q_heads, splits,
// head_dim], then m and l [num_tokens, q_heads, splits], all fp32.
size_t DecodeWorkspaceBytes(int num_tokens, int q_heads, int head_dim, int num_splits);

// Runs the split-KV decode attention on `args` (each token attends to positions 0..positions[t]
// of its sequence, as LaunchPagedAttention) and returns true; returns false without launching
// when the arguments are outside what it supports (no workspace, group > kMaxDecodeGroup, odd
// head_dim, caches not 4-byte aligned), so the caller runs the general kernel instead.
bool LaunchSplitKvDecode(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace tessera::cuda
