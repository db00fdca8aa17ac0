// Mixture-of-experts: the router (softmax -> top-k -> optional renormalisation, in fp32, as
// transformers' Qwen3MoeTopKRouter) and the expert MLPs of the experts this rank holds.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/reference.h"

namespace tessera::cpu {

void RouterTopK(const float* logits, int n, int num_experts, int top_k, bool normalize,
                int32_t* ids, float* weights) {
  std::vector<float> probs(num_experts);
  std::vector<int> order(num_experts);
  for (int t = 0; t < n; ++t) {
    const float* row = logits + static_cast<int64_t>(t) * num_experts;
    const float max_logit = *std::max_element(row, row + num_experts);
    float sum = 0.0f;
    for (int e = 0; e < num_experts; ++e) {
      probs[e] = std::exp(row[e] - max_logit);
      sum += probs[e];
    }
    for (int e = 0; e < num_experts; ++e) probs[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    // Largest first; ties go to the lower expert id.
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int a, int b) {
      return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
    });
    float top_sum = 0.0f;
    for (int k = 0; k < top_k; ++k) top_sum += probs[order[k]];
    for (int k = 0; k < top_k; ++k) {
      ids[t * top_k + k] = order[k];
      weights[t * top_k + k] = normalize ? probs[order[k]] / top_sum : probs[order[k]];
    }
  }
}

void MoeExperts(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                int first_expert, int num_local_experts, int64_t hidden, int64_t intermediate,
                const float* gate_up, const float* down, float* out) {
  std::fill(out, out + static_cast<int64_t>(n) * hidden, 0.0f);
  // Group (token, slot) pairs by local expert, so each expert's weights are read once.
  std::vector<std::vector<std::pair<int, float>>> assigned(num_local_experts);
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const int local = ids[t * top_k + k] - first_expert;
      if (local >= 0 && local < num_local_experts)
        assigned[local].push_back({t, weights[t * top_k + k]});
    }
  }
  std::vector<float> rows, gu, act, y;
  for (int e = 0; e < num_local_experts; ++e) {
    const auto& tokens = assigned[e];
    if (tokens.empty()) continue;
    const int64_t m = static_cast<int64_t>(tokens.size());
    rows.resize(m * hidden);
    for (int64_t i = 0; i < m; ++i) {
      std::copy(x + tokens[i].first * hidden, x + (tokens[i].first + 1) * hidden,
                rows.begin() + i * hidden);
    }
    gu.resize(m * 2 * intermediate);
    act.resize(m * intermediate);
    y.resize(m * hidden);
    Linear(rows.data(), gate_up + e * 2 * intermediate * hidden, m, 2 * intermediate, hidden,
           gu.data());
    SiluMul(gu.data(), m, intermediate, act.data());
    Linear(act.data(), down + e * hidden * intermediate, m, hidden, intermediate, y.data());
    for (int64_t i = 0; i < m; ++i) {
      float* o = out + tokens[i].first * hidden;
      const float w = tokens[i].second;
      for (int64_t d = 0; d < hidden; ++d) o[d] += y[i * hidden + d] * w;
    }
  }
}

}  // namespace tessera::cpu
