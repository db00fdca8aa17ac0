#include "runtime/model/kv_cache.h"

#include <algorithm>

#include "kernels/base/check.h"

namespace tessera {

BlockAllocator::BlockAllocator(int num_blocks)
    : num_blocks_(num_blocks), in_use_(num_blocks, false) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

bool BlockAllocator::Allocate(int count, std::vector<int32_t>* blocks) {
  if (count > num_free()) return false;
  for (int i = 0; i < count; ++i) {
    blocks->push_back(free_.back());
    in_use_[free_.back()] = true;
    free_.pop_back();
  }
  return true;
}

void BlockAllocator::Free(const std::vector<int32_t>& blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    TESSERA_CHECK(*it >= 0 && *it < num_blocks_) << "freeing block " << *it;
    TESSERA_CHECK(in_use_[*it]) << "block " << *it << " was freed twice";
    in_use_[*it] = false;
    free_.push_back(*it);
  }
}

KvCache::KvCache(Backend& backend, int num_layers, int num_blocks, int block_size, int kv_heads,
                 int head_dim)
    : num_blocks_(num_blocks), block_size_(block_size) {
  const size_t bytes = static_cast<size_t>(num_blocks) * block_size * kv_heads * head_dim *
                       DTypeSize(backend.activation_dtype());
  for (int l = 0; l < num_layers; ++l) {
    k_.push_back(backend.Allocate(bytes));
    v_.push_back(backend.Allocate(bytes));
  }
}

}  // namespace tessera
