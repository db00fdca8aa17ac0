// Byte-level BPE merging (see bpe.h).
#include "runtime/text/tokenizer/bpe.h"

#include <algorithm>
#include <atomic>

#include "kernels/base/string_view.h"
#include "runtime/text/utf8.h"

namespace tessera::tokenizer_internal {

// One thread's entries for one PieceCache. Ids live in one pool; the map holds (offset, count).
struct PieceCache::Local {
  uint64_t owner = 0;
  absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> map;
  std::vector<int32_t> pool;
};

namespace {
std::atomic<uint64_t> next_cache_owner{1};
}  // namespace

PieceCache::PieceCache() : owner_(next_cache_owner.fetch_add(1)) {}

PieceCache::Local& PieceCache::ThisThread() const {
  // A few caches per thread, for the few tokenizers a process uses; the least recently used one
  // is recycled when another tokenizer comes along.
  constexpr size_t kSlots = 4;
  thread_local std::array<Local, kSlots> slots;
  thread_local std::array<uint64_t, kSlots> last_use{};
  thread_local uint64_t clock = 0;
  size_t victim = 0;
  for (size_t i = 0; i < kSlots; ++i) {
    if (slots[i].owner == owner_) {
      last_use[i] = ++clock;
      return slots[i];
    }
    if (last_use[i] < last_use[victim]) victim = i;
  }
  Local& local = slots[victim];
  local.owner = owner_;
  local.map.clear();
  local.pool.clear();
  last_use[victim] = ++clock;
  return local;
}

bool PieceCache::Lookup(std::string_view piece, std::vector<int32_t>* out) const {
  const Local& local = ThisThread();
  auto it = local.map.find(AbslView(piece));
  if (it == local.map.end()) return false;
  const int32_t* ids = local.pool.data() + it->second.first;
  out->insert(out->end(), ids, ids + it->second.second);
  return true;
}

void PieceCache::Insert(std::string_view piece, const int32_t* ids, size_t count) const {
  if (piece.size() > kMaxPieceBytes) return;
  Local& local = ThisThread();
  if (local.map.size() >= kCapacity) return;
  if (local.map
          .try_emplace(AbslView(piece), static_cast<uint32_t>(local.pool.size()),
                       static_cast<uint32_t>(count))
          .second) {
    local.pool.insert(local.pool.end(), ids, ids + count);
  }
}

BpeModel::BpeModel(const std::array<int32_t, 256>& byte_ids,
                   absl::flat_hash_map<std::string, int32_t> whole,
                   const std::vector<BpeMerge>& merges, const std::vector<int32_t>& merged,
                   Options options)
    : byte_id_(byte_ids), whole_(std::move(whole)), options_(options) {
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    merges_.insert_or_assign(PairKey(merges[rank].left, merges[rank].right),
                             MergeTarget{static_cast<uint32_t>(rank), merged[rank]});
  }
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (options_.ignore_merges) {
    auto it = whole_.find(AbslView(piece));
    if (it != whole_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // NOTE: single bytes (punctuation, lone digits, spaces) are frequent and need no merging.
  if (piece.size() == 1 && byte_id_[static_cast<uint8_t>(piece[0])] >= 0) {
    out->push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (cache_.Lookup(piece, out)) return;
  const size_t first = out->size();
  Merge(piece, out);
  cache_.Insert(piece, out->data() + first, out->size() - first);
}

namespace {

struct Symbol {
  int32_t id;    // -1 once merged into its left neighbour
  int32_t prev;  // index of the previous live symbol, or -1
  int32_t next;  // index of the next live symbol, or -1
};

// A merge waiting in the queue: the pair that starts at symbol `pos`.
struct Candidate {
  uint32_t rank;
  int32_t pos;
  // The queue is a min-heap on (rank, pos): lowest rank first, leftmost first among equals.
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void BpeModel::Merge(std::string_view piece, std::vector<int32_t>* out) const {
  // NOTE: the scratch buffers live per thread so that merging allocates nothing in steady state.
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> queue;
  symbols.clear();
  queue.clear();

  // One symbol per byte; bytes missing from the vocabulary become unk (or vanish without one).
  bool pending_unk = false;
  auto add = [&](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back(Symbol{id, index - 1, -1});
  };
  for (char ch : piece) {
    const int32_t id = byte_id_[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (pending_unk) add(*options_.unk_id);
      pending_unk = false;
      add(id);
    } else if (options_.unk_id) {
      if (pending_unk && !options_.fuse_unk) add(*options_.unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) add(*options_.unk_id);

  const auto push = [&](int32_t pos) {
    const Symbol& s = symbols[pos];
    if (s.next < 0) return;
    if (const MergeTarget* m = FindMerge(s.id, symbols[s.next].id)) {
      queue.push_back(Candidate{m->rank, pos});
      std::push_heap(queue.begin(), queue.end(), std::greater<Candidate>());
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push(i);

  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), std::greater<Candidate>());
    const Candidate top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;  // merged away since it was queued
    Symbol& right = symbols[left.next];
    const MergeTarget* m = FindMerge(left.id, right.id);
    // The pair at `pos` may have changed since it was queued; a stale entry is dropped (the
    // current pair, if it merges, has its own entry).
    if (m == nullptr || m->rank != top.rank) continue;
    left.id = m->id;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }

  for (int32_t i = 0; i >= 0 && !symbols.empty(); i = symbols[i].next)
    out->push_back(symbols[i].id);
}

}  // namespace tessera::tokenizer_internal
