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

void MoeGroupRows(const int32_t* ids, int n, int top_k, int first_expert, int num_local_experts,
                  int32_t* offsets, int32_t* gather, int32_t* pair_row) {
  std::fill(offsets, offsets + num_local_experts + 1, 0);
  for (int64_t i = 0; i < static_cast<int64_t>(n) * top_k; ++i) {
    const int local = ids[i] - first_expert;
    if (local >= 0 && local < num_local_experts) ++offsets[local + 1];
  }
  for (int e = 0; e < num_local_experts; ++e) offsets[e + 1] += offsets[e];
  std::vector<int32_t> next(offsets, offsets + num_local_experts);
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const int64_t i = static_cast<int64_t>(t) * top_k + k;
      const int local = ids[i] - first_expert;
      if (local < 0 || local >= num_local_experts) {
        pair_row[i] = -1;
        continue;
      }
      pair_row[i] = next[local]++;
      gather[pair_row[i]] = t;
    }
  }
}

void MoeExperts(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                int first_expert, int num_local_experts, int64_t hidden, int64_t intermediate,
                const float* gate_up, const float* down, float* out) {
  MoeExpertsWith(
      x, n, ids, weights, top_k, first_expert, num_local_experts, hidden, intermediate,
      [&](int e, const float** gu, const float** dn) {
        *gu = gate_up + e * 2 * intermediate * hidden;
        *dn = down + e * hidden * intermediate;
      },
      out);
}

void MoeExpertsWith(const float* x, int n, const int32_t* ids, const float* weights, int top_k,
                    int first_expert, int num_local_experts, int64_t hidden, int64_t intermediate,
                    const std::function<void(int, const float**, const float**)>& expert_weights,
                    float* out) {
  // Pairs grouped by local expert (as the CUDA backend groups them), so each expert's weights are
  // read once.
  const int64_t pairs = static_cast<int64_t>(n) * top_k;
  std::vector<int32_t> offsets(num_local_experts + 1), gather(pairs), pair_row(pairs);
  MoeGroupRows(ids, n, top_k, first_expert, num_local_experts, offsets.data(), gather.data(),
               pair_row.data());
  const int64_t rows_total = offsets[num_local_experts];
  std::vector<float> rows(rows_total * hidden), gu(rows_total * 2 * intermediate),
      act(rows_total * intermediate), y(rows_total * hidden);
  for (int64_t r = 0; r < rows_total; ++r) {
    std::copy(x + gather[r] * hidden, x + (gather[r] + 1) * hidden, rows.begin() + r * hidden);
  }
  for (int e = 0; e < num_local_experts; ++e) {
    const int64_t b = offsets[e], m = offsets[e + 1] - b;
    if (m == 0) continue;
    const float* gate_up = nullptr;
    const float* down = nullptr;
    expert_weights(e, &gate_up, &down);
    Linear(rows.data() + b * hidden, gate_up, m, 2 * intermediate, hidden,
           gu.data() + b * 2 * intermediate);
    SiluMul(gu.data() + b * 2 * intermediate, m, intermediate, act.data() + b * intermediate);
    Linear(act.data() + b * intermediate, down, m, hidden, intermediate, y.data() + b * hidden);
  }
  // Each token's expert outputs summed in increasing expert id: its local rows in row order.
  std::fill(out, out + static_cast<int64_t>(n) * hidden, 0.0f);
  std::vector<std::pair<int32_t, float>> mine;
  for (int t = 0; t < n; ++t) {
    mine.clear();
    for (int k = 0; k < top_k; ++k) {
      const int64_t i = static_cast<int64_t>(t) * top_k + k;
      if (pair_row[i] >= 0) mine.push_back({pair_row[i], weights[i]});
    }
    std::sort(mine.begin(), mine.end());
    float* o = out + static_cast<int64_t>(t) * hidden;
    for (const auto& [row, w] : mine) {
      for (int64_t d = 0; d < hidden; ++d) o[d] += y[row * hidden + d] * w;
    }
  }
}

}  // namespace tessera::cpu
