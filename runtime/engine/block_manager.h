// KV block bookkeeping for one KV pool (one attention-DP replica), with prefix caching.
//
// Runs on the coordinator only: its decisions reach every rank as block tables in the StepPlan,
// so every rank's cache holds the same thing in the same block.
//
// Prefix caching: once a block is full of computed tokens it is registered under a hash of
// (the previous block's hash, its own tokens), so a later sequence whose prompt starts with the
// same full blocks reuses them instead of recomputing. Blocks are reference counted; a freed
// block that holds a registered prefix stays cached (evictable, least recently freed first) until
// its memory is needed. Matches are verified token by token, so a hash collision can never
// return another prompt's KV.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace tessera {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool prefix_caching);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  // Blocks a new allocation can take: never used, or cached but unreferenced (evictable).
  int num_free() const { return static_cast<int>(free_.size() + evictable_.size()); }
  // Blocks holding registered prefixes (in use or evictable).
  int num_cached() const { return static_cast<int>(by_hash_.size()); }

  // The longest run of cached full blocks that `tokens` starts with, leaving at least
  // `min_uncached` tokens uncached (a prompt's last token must be computed for its logits).
  // Appends those blocks to `blocks` (taking a reference on each) and returns the tokens they
  // cover. Requires `blocks` empty.
  int MatchPrefix(const std::vector<int32_t>& tokens, int min_uncached,
                  std::vector<int32_t>* blocks);

  // Makes `blocks` cover `num_tokens` tokens, allocating what is missing (evicting cached blocks
  // if needed). All or nothing: false, with `blocks` unchanged, when too few blocks are free.
  bool Reserve(std::vector<int32_t>* blocks, int num_tokens);

  // Registers the full blocks of `blocks` whose tokens are all computed (`num_computed`) and not
  // yet registered; `tokens` holds the sequence's tokens. `num_registered` tracks progress per
  // sequence (blocks already registered).
  void Register(const std::vector<int32_t>& tokens, const std::vector<int32_t>& blocks,
                int num_computed, int* num_registered);

  // Drops the sequence's references. Registered blocks become evictable; others free.
  void Free(std::vector<int32_t>* blocks);

 private:
  struct Block {
    int refs = 0;
    bool registered = false;
    uint64_t hash = 0;
    int32_t parent = -1;               // previous block of the prefix (-1 for the first)
    std::vector<int32_t> tokens;       // this block's tokens, for verification
    std::list<int32_t>::iterator lru;  // position in evictable_ when refs == 0 and registered
  };
  int32_t TakeFree();
  static uint64_t HashBlock(uint64_t parent_hash, const int32_t* tokens, int count);

  int num_blocks_;
  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;     // never-registered free blocks (a stack: low ids first)
  std::list<int32_t> evictable_;  // registered, unreferenced; front = evict first
  std::unordered_multimap<uint64_t, int32_t> by_hash_;
};

}  // namespace tessera
