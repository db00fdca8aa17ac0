#include "runtime/engine/step_plan.h"

#include <cstring>

namespace tessera {
namespace {

class Writer {
 public:
  void U32(uint32_t v) { Raw(&v, sizeof(v)); }
  void Ints(const std::vector<int32_t>& v) {
    U32(static_cast<uint32_t>(v.size()));
    Raw(v.data(), v.size() * sizeof(int32_t));
  }
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& in) : in_(in) {}
  bool U32(uint32_t* v) { return Raw(v, sizeof(*v)); }
  bool Ints(std::vector<int32_t>* v) {
    uint32_t n;
    if (!U32(&n) || n > (in_.size() - pos_) / sizeof(int32_t)) return false;
    v->resize(n);
    return Raw(v->data(), n * sizeof(int32_t));
  }
  bool Raw(void* p, size_t n) {
    if (n > in_.size() - pos_) return false;
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  const std::vector<uint8_t>& in_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> SerializeStepPlan(const StepPlan& plan) {
  Writer w;
  w.U32(static_cast<uint32_t>(plan.kind));
  w.U32(plan.overlapped ? 1 : 0);
  w.U32(static_cast<uint32_t>(plan.replicas.size()));
  for (const auto& micro_batches : plan.replicas) {
    w.U32(static_cast<uint32_t>(micro_batches.size()));
    for (const StepBatch& b : micro_batches) {
      w.Ints(b.token_ids);
      w.Ints(b.positions);
      w.Ints(b.token_seq);
      w.Ints(b.slot_mapping);
      w.Ints(b.block_tables);
      w.Ints(b.token_from_row);
      w.Ints(b.logit_tokens);
      w.U32(static_cast<uint32_t>(b.num_seqs));
      w.U32(static_cast<uint32_t>(b.max_blocks_per_seq));
      w.U32(static_cast<uint32_t>(b.single_token_seqs));
      w.U32(static_cast<uint32_t>(b.logit_sampling.size()));
      for (const LogitRowSampling& row : b.logit_sampling) {
        w.U32(row.on_device ? 1 : 0);
        w.Raw(&row.params, sizeof(row.params));
        w.Raw(&row.penalty, sizeof(row.penalty));
        w.Ints(row.penalty_entries);
      }
    }
  }
  return std::move(w.out);
}

absl::StatusOr<StepPlan> DeserializeStepPlan(const std::vector<uint8_t>& bytes) {
  Reader r(bytes);
  StepPlan plan;
  uint32_t kind, overlapped, replicas;
  const auto corrupt = absl::DataLossError("corrupt step plan");
  if (!r.U32(&kind) || kind > 3 || !r.U32(&overlapped) || overlapped > 1 || !r.U32(&replicas) ||
      replicas > bytes.size()) {
    return corrupt;
  }
  plan.kind = static_cast<StepPlan::Kind>(kind);
  plan.overlapped = overlapped == 1;
  plan.replicas.resize(replicas);
  for (auto& micro_batches : plan.replicas) {
    uint32_t count;
    if (!r.U32(&count) || count > bytes.size()) return corrupt;
    micro_batches.resize(count);
    for (StepBatch& b : micro_batches) {
      uint32_t seqs, blocks, single;
      if (!r.Ints(&b.token_ids) || !r.Ints(&b.positions) || !r.Ints(&b.token_seq) ||
          !r.Ints(&b.slot_mapping) || !r.Ints(&b.block_tables) || !r.Ints(&b.token_from_row) ||
          !r.Ints(&b.logit_tokens) || !r.U32(&seqs) || !r.U32(&blocks) || !r.U32(&single) ||
          single > seqs ||
          (!b.token_from_row.empty() && b.token_from_row.size() != b.token_ids.size())) {
        return corrupt;
      }
      b.num_seqs = static_cast<int>(seqs);
      b.max_blocks_per_seq = static_cast<int>(blocks);
      b.single_token_seqs = static_cast<int>(single);
      uint32_t sampled;
      if (!r.U32(&sampled) || sampled > bytes.size()) return corrupt;
      b.logit_sampling.resize(sampled);
      for (LogitRowSampling& row : b.logit_sampling) {
        uint32_t on_device;
        if (!r.U32(&on_device) || on_device > 1 || !r.Raw(&row.params, sizeof(row.params)) ||
            !r.Raw(&row.penalty, sizeof(row.penalty)) || !r.Ints(&row.penalty_entries) ||
            row.penalty_entries.size() % 2 != 0) {
          return corrupt;
        }
        row.on_device = on_device == 1;
      }
    }
  }
  if (!r.done()) return corrupt;
  return plan;
}

}  // namespace tessera
