// The paged KV cache: device storage for every layer of this rank, and the block allocator.
//
// Storage per layer: K and V, each A[num_blocks * block_size, kv_heads_local, head_dim]
// (kv_heads_local is the per-shard count). A sequence's token at position p lives in slot
// block_table[p / block_size] * block_size + p % block_size.
//
// The BlockAllocator is host bookkeeping only. Every rank runs the same allocator with the same
// calls in the same order (the StepPlan carries the resulting block tables), so the physical
// layout is identical on every rank.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace tessera {

class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);
  int num_blocks() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  // Allocates `count` blocks, or returns false (and allocates nothing) if too few are free.
  bool Allocate(int count, std::vector<int32_t>* blocks);
  void Free(const std::vector<int32_t>& blocks);

 private:
  int num_blocks_;
  std::vector<int32_t> free_;  // a stack: the lowest ids come out first
  std::vector<bool> in_use_;
};

class KvCache {
 public:
  KvCache(Backend& backend, int num_layers, int num_blocks, int block_size, int kv_heads,
          int head_dim);
  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  void* k(int layer) const { return k_[layer].data(); }
  void* v(int layer) const { return v_[layer].data(); }

 private:
  int num_blocks_;
  int block_size_;
  std::vector<DeviceBuffer> k_;
  std::vector<DeviceBuffer> v_;
};

}  // namespace tessera
