// Token sampling, the float32 reference: the rule of kernels/base/sampling_rule.h written as
// plainly as possible (sorts and sequential sums). The CUDA kernel must pick the same ids.
//
// NOTE: built with -ffp-contract=off (kernels/CMakeLists.txt): the weights must come from the
// same correctly rounded operations as on the GPU.
#include <algorithm>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/base/sampling_rule.h"
#include "kernels/cpu/reference.h"

namespace tessera::cpu {

int32_t SampleRow(const float* x, int64_t vocab, const SamplingRowParams& p) {
  using sampling::Weight;
  const int64_t V = p.sampleable_vocab > 0 ? std::min<int64_t>(p.sampleable_vocab, vocab) : vocab;
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  if (p.temperature == 0.0f || V == 1) return static_cast<int32_t>(best);
  const float m = x[best];
  const float scale = sampling::WeightScale(p.temperature);
  constexpr float kAll = -std::numeric_limits<float>::infinity();

  // top-k: the k-th largest value, ties kept.
  float tau_k = kAll;
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<float> values(x, x + V);
    std::nth_element(values.begin(), values.begin() + (p.top_k - 1), values.end(),
                     std::greater<float>());
    tau_k = values[p.top_k - 1];
  }

  // top-p: walk whole value classes from the top until their mass reaches the target.
  float tau_p = kAll;
  if (p.top_p < 1.0f) {
    std::vector<std::pair<float, uint64_t>> kept;  // (value, weight)
    uint64_t total = 0;
    for (int64_t i = 0; i < V; ++i) {
      if (x[i] < tau_k) continue;
      kept.emplace_back(x[i], Weight(x[i], m, scale));
      total += kept.back().second;
    }
    std::sort(kept.begin(), kept.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    const uint64_t target = sampling::FractionOf(p.top_p, total);
    uint64_t mass = 0;
    for (size_t i = 0; i < kept.size();) {
      const float v = kept[i].first;
      for (; i < kept.size() && kept[i].first == v; ++i) mass += kept[i].second;
      if (mass >= target) {
        tau_p = v;
        break;
      }
    }
  }

  // min-p, then the draw over the kept weights in ascending id order.
  const uint64_t min_weight =
      p.min_p > 0.0f ? sampling::FractionOf(p.min_p, uint64_t{1} << sampling::kWeightBits) : 0;
  auto kept_weight = [&](int64_t i) -> uint64_t {
    if (x[i] < tau_k || x[i] < tau_p) return 0;
    const uint64_t q = Weight(x[i], m, scale);
    return q >= min_weight ? q : 0;
  };
  uint64_t total = 0;
  for (int64_t i = 0; i < V; ++i) total += kept_weight(i);
  if (total == 0) return static_cast<int32_t>(best);  // only with -inf everywhere
  const uint64_t t = sampling::ScaleDraw(sampling::DrawBits(p.seed, p.step), total);
  uint64_t running = 0;
  for (int64_t i = 0; i < V; ++i) {
    running += kept_weight(i);
    if (running > t) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(best);  // unreachable: running ends at total > t
}

void ApplyPenalties(float* x, int64_t vocab, const SamplingPenaltyRow& row,
                    const int32_t* entries) {
  for (int32_t e = row.begin; e < row.end; ++e) {
    const int32_t id = entries[2 * e], count = entries[2 * e + 1];
    if (id < 0 || id >= vocab) continue;
    x[id] = sampling::Penalise(x[id], count, row.repetition, row.presence, row.frequency);
  }
}

void SampleTokens(const float* logits, int rows, int64_t vocab, int shards,
                  const SamplingRowParams* params, const SamplingPenalties* penalties,
                  int32_t* tokens) {
  const int64_t cols = vocab / shards;
  std::vector<float> row(static_cast<size_t>(vocab));
  for (int r = 0; r < rows; ++r) {
    for (int s = 0; s < shards; ++s) {
      const float* src = logits + (static_cast<int64_t>(s) * rows + r) * cols;
      std::copy(src, src + cols, row.begin() + s * cols);
    }
    if (penalties != nullptr) {
      const int64_t V = params[r].sampleable_vocab > 0
                            ? std::min<int64_t>(params[r].sampleable_vocab, vocab)
                            : vocab;
      ApplyPenalties(row.data(), V, penalties->rows[r], penalties->entries);
    }
    tokens[r] = SampleRow(row.data(), vocab, params[r]);
  }
}

}  // namespace tessera::cpu
