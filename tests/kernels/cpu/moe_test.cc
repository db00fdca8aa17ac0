// The MoE router and experts: against a per-token float64 reference, and expert-parallel
// shards summing to the single-rank result.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

TEST(RouterTopKTest, SoftmaxTopKAndRenormalisation) {
  const int n = 4, experts = 9, top_k = 3;
  std::mt19937 rng(4);
  auto logits = testing::RandomVector(n * experts, rng, -3, 3);
  for (bool normalize : {false, true}) {
    std::vector<int32_t> ids(n * top_k);
    std::vector<float> w(n * top_k);
    cpu::RouterTopK(logits.data(), n, experts, top_k, normalize, ids.data(), w.data());
    for (int t = 0; t < n; ++t) {
      std::vector<double> p(experts);
      double den = 0;
      for (int e = 0; e < experts; ++e)
        den += (p[e] = std::exp(static_cast<double>(logits[t * experts + e])));
      std::vector<int> order(experts);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
      double top = 0;
      for (int k = 0; k < top_k; ++k) top += p[order[k]] / den;
      for (int k = 0; k < top_k; ++k) {
        EXPECT_EQ(ids[t * top_k + k], order[k]);
        const double want = p[order[k]] / den / (normalize ? top : 1.0);
        EXPECT_NEAR(w[t * top_k + k], want, 1e-6);
      }
    }
  }
}

TEST(RouterTopKTest, TiesGoToLowerExpert) {
  std::vector<float> logits = {1, 2, 2, 2, 0};
  std::vector<int32_t> ids(2);
  std::vector<float> w(2);
  cpu::RouterTopK(logits.data(), 1, 5, 2, true, ids.data(), w.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(w[0], 0.5f);
}

TEST(MoeExpertsTest, MatchesPerTokenReferenceAndShardsSum) {
  const int n = 7, experts = 6, top_k = 2, hidden = 9, inter = 5;
  std::mt19937 rng(8);
  auto x = testing::RandomVector(n * hidden, rng);
  auto gate_up = testing::RandomVector(experts * 2 * inter * hidden, rng);
  auto down = testing::RandomVector(experts * hidden * inter, rng);
  std::vector<int32_t> ids(n * top_k);
  std::vector<float> w(n * top_k);
  for (int t = 0; t < n; ++t) {
    ids[t * top_k] = t % experts;
    ids[t * top_k + 1] =
        (t * 5 + 1) % experts == t % experts ? (t + 1) % experts : (t * 5 + 1) % experts;
    w[t * top_k] = 0.7f;
    w[t * top_k + 1] = 0.3f;
  }
  std::vector<float> out(n * hidden, NAN);
  cpu::MoeExperts(x.data(), n, ids.data(), w.data(), top_k, 0, experts, hidden, inter,
                  gate_up.data(), down.data(), out.data());
  std::vector<double> ref(n * hidden, 0.0);
  for (int t = 0; t < n; ++t)
    for (int k = 0; k < top_k; ++k) {
      const int e = ids[t * top_k + k];
      std::vector<double> act(inter);
      for (int i = 0; i < inter; ++i) {
        double g = 0, u = 0;
        for (int d = 0; d < hidden; ++d) {
          g += static_cast<double>(gate_up[(e * 2 * inter + i) * hidden + d]) * x[t * hidden + d];
          u += static_cast<double>(gate_up[(e * 2 * inter + inter + i) * hidden + d]) *
               x[t * hidden + d];
        }
        act[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int d = 0; d < hidden; ++d) {
        double y = 0;
        for (int i = 0; i < inter; ++i) y += down[(e * hidden + d) * inter + i] * act[i];
        ref[t * hidden + d] += w[t * top_k + k] * y;
      }
    }
  testing::ExpectClose(out, ref, 1e-5, 1e-4);

  // Expert parallel: ranks holding experts [0, 2), [2, 4), [4, 6) sum to the same result.
  std::vector<double> sum(n * hidden, 0.0);
  for (int first = 0; first < experts; first += 2) {
    std::vector<float> part(n * hidden, NAN);
    cpu::MoeExperts(x.data(), n, ids.data(), w.data(), top_k, first, 2, hidden, inter,
                    gate_up.data() + first * 2 * inter * hidden,
                    down.data() + first * hidden * inter, part.data());
    for (int i = 0; i < n * hidden; ++i) sum[i] += part[i];
  }
  std::vector<float> sum_f(sum.begin(), sum.end());
  testing::ExpectClose(sum_f, ref, 1e-5, 1e-4);
}

}  // namespace
}  // namespace tessera
