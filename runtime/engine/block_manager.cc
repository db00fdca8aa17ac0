#include "runtime/engine/block_manager.h"

#include <algorithm>

#include "kernels/base/check.h"

namespace tessera {

BlockManager::BlockManager(int num_blocks, int block_size, bool prefix_caching)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      prefix_caching_(prefix_caching),
      blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

uint64_t BlockManager::HashBlock(uint64_t parent_hash, const int32_t* tokens, int count) {
  // FNV-1a over the parent hash and the token ids, then a final avalanche (splitmix64).
  uint64_t h = 1469598103934665603ull ^ parent_hash;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (int i = 0; i < count; ++i) mix(static_cast<uint32_t>(tokens[i]));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

int BlockManager::MatchPrefix(const std::vector<int32_t>& tokens, int min_uncached,
                              std::vector<int32_t>* blocks) {
  TESSERA_CHECK(blocks->empty());
  if (!prefix_caching_) return 0;
  const int limit = static_cast<int>(tokens.size()) - min_uncached;
  uint64_t parent_hash = 0;
  int32_t parent = -1;
  int covered = 0;
  while (covered + block_size_ <= limit) {
    const int32_t* block_tokens = tokens.data() + covered;
    const uint64_t h = HashBlock(parent_hash, block_tokens, block_size_);
    int32_t found = -1;
    auto range = by_hash_.equal_range(h);
    for (auto it = range.first; it != range.second; ++it) {
      const Block& b = blocks_[it->second];
      if (b.parent == parent && std::equal(b.tokens.begin(), b.tokens.end(), block_tokens)) {
        found = it->second;
        break;
      }
    }
    if (found < 0) break;
    Block& b = blocks_[found];
    if (b.refs == 0) evictable_.erase(b.lru);
    ++b.refs;
    blocks->push_back(found);
    parent_hash = h;
    parent = found;
    covered += block_size_;
  }
  return covered;
}

int32_t BlockManager::TakeFree() {
  if (!free_.empty()) {
    const int32_t id = free_.back();
    free_.pop_back();
    return id;
  }
  TESSERA_CHECK(!evictable_.empty());
  const int32_t id = evictable_.front();  // least recently freed
  evictable_.pop_front();
  Block& b = blocks_[id];
  auto range = by_hash_.equal_range(b.hash);
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second == id) {
      by_hash_.erase(it);
      break;
    }
  }
  b.registered = false;
  b.tokens.clear();
  b.parent = -1;
  return id;
}

bool BlockManager::Reserve(std::vector<int32_t>* blocks, int num_tokens) {
  const int needed =
      (num_tokens + block_size_ - 1) / block_size_ - static_cast<int>(blocks->size());
  if (needed <= 0) return true;
  if (needed > num_free()) return false;
  for (int i = 0; i < needed; ++i) {
    const int32_t id = TakeFree();
    blocks_[id].refs = 1;
    blocks->push_back(id);
  }
  return true;
}

void BlockManager::Register(const std::vector<int32_t>& tokens, const std::vector<int32_t>& blocks,
                            int num_computed, int* num_registered) {
  if (!prefix_caching_) return;
  const int full = std::min<int>(num_computed / block_size_, static_cast<int>(blocks.size()));
  for (int i = *num_registered; i < full; ++i) {
    Block& b = blocks_[blocks[i]];
    if (b.registered) continue;  // reused from the cache
    const uint64_t parent_hash = i == 0 ? 0 : blocks_[blocks[i - 1]].hash;
    b.hash = HashBlock(parent_hash, tokens.data() + i * block_size_, block_size_);
    b.parent = i == 0 ? -1 : blocks[i - 1];
    b.tokens.assign(tokens.begin() + i * block_size_, tokens.begin() + (i + 1) * block_size_);
    b.registered = true;
    by_hash_.emplace(b.hash, blocks[i]);
  }
  *num_registered = std::max(*num_registered, full);
}

void BlockManager::Free(std::vector<int32_t>* blocks) {
  // Later blocks first, so that a prefix's tail is evicted before its head.
  for (auto it = blocks->rbegin(); it != blocks->rend(); ++it) {
    Block& b = blocks_[*it];
    TESSERA_CHECK(b.refs > 0) << "block " << *it << " freed twice";
    if (--b.refs > 0) continue;
    if (b.registered) {
      evictable_.push_back(*it);
      b.lru = std::prev(evictable_.end());
    } else {
      free_.push_back(*it);
    }
  }
  blocks->clear();
}

}  // namespace tessera
