// The byte-level BPE model: turns one pre-tokenized piece (raw bytes) into token ids by applying
// merges in rank order, as Hugging Face's BPE model does.
//
// Everything works on ids, never on strings: a piece starts as one id per byte (the token for the
// byte's alphabet character), and each merge (left id, right id) -> (rank, merged id) is looked up
// in a flat hash map keyed by the pair packed into 64 bits.
//
// Merging follows Hugging Face exactly: repeatedly take the adjacent pair with the lowest rank,
// the leftmost one among equals, and replace it by its merged token, until no pair has a merge.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace tessera::tokenizer_internal {

// Pieces already encoded, per thread and per model. A piece's ids depend only on the piece, so a
// thread can keep its own answers; no lock, no atomic operation on the hot path.
// NOTE: a shared cache behind a reader-writer lock spent a quarter of warm encode time in the
// lock's two atomic operations per piece (Hugging Face moved to per-thread caches too).
class PieceCache {
 public:
  // Bounded like Hugging Face's BPE cache: long pieces are rare and would crowd it out, and once
  // full it keeps what it has (the frequent pieces come early in practice).
  static constexpr size_t kCapacity = 1 << 16;
  static constexpr size_t kMaxPieceBytes = 64;

  PieceCache();
  // Appends the cached ids of `piece` to `out` and returns true, or returns false.
  bool Lookup(std::string_view piece, std::vector<int32_t>* out) const;
  void Insert(std::string_view piece, const int32_t* ids, size_t count) const;

 private:
  struct Local;
  Local& ThisThread() const;
  const uint64_t owner_;  // unique per cache instance, never reused
};

struct BpeMerge {
  int32_t left;
  int32_t right;
};

class BpeModel {
 public:
  struct Options {
    std::optional<int32_t> unk_id;  // emitted for bytes missing from the vocabulary
    bool fuse_unk = false;          // consecutive unknown bytes make one unk
    bool ignore_merges = false;     // a piece that is itself a token is emitted whole
  };

  // `byte_ids[b]` is the token of the single byte b (-1 when the vocabulary lacks it); `whole`
  // maps token bytes to ids and is needed only with ignore_merges. `merges` are in rank order;
  // `merged[i]` is the id of merges[i].left + merges[i].right. A pair listed twice keeps its
  // last rank, as in Hugging Face.
  BpeModel(const std::array<int32_t, 256>& byte_ids,
           absl::flat_hash_map<std::string, int32_t> whole, const std::vector<BpeMerge>& merges,
           const std::vector<int32_t>& merged, Options options);

  // Appends the ids of `piece` to `out`.
  void Encode(std::string_view piece, std::vector<int32_t>* out) const;

 private:
  struct MergeTarget {
    uint32_t rank;
    int32_t id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const MergeTarget* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void Merge(std::string_view piece, std::vector<int32_t>* out) const;

  std::array<int32_t, 256> byte_id_;  // id of each single-byte token, -1 when missing
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  absl::flat_hash_map<std::string, int32_t> whole_;  // for ignore_merges only
  Options options_;
  PieceCache cache_;
};

}  // namespace tessera::tokenizer_internal
