// Embedding (including vocab-parallel shards), SwiGLU and Add.
#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

TEST(EmbeddingTest, ShardsSumToFullTable) {
  const int vocab = 11, hidden = 5;
  std::mt19937 rng(1);
  auto table = testing::RandomVector(vocab * hidden, rng);
  std::vector<int32_t> ids = {0, 10, 3, 3, 7};
  std::vector<float> full(ids.size() * hidden, NAN);
  cpu::Embedding(table.data(), 0, vocab, hidden, ids.data(), ids.size(), full.data());
  for (size_t t = 0; t < ids.size(); ++t)
    for (int d = 0; d < hidden; ++d) EXPECT_EQ(full[t * hidden + d], table[ids[t] * hidden + d]);
  // Two shards [0, 6) and [6, 11): each row is found in exactly one, zeros in the other.
  std::vector<float> a(full.size(), NAN), b(full.size(), NAN);
  cpu::Embedding(table.data(), 0, 6, hidden, ids.data(), ids.size(), a.data());
  cpu::Embedding(table.data() + 6 * hidden, 6, vocab, hidden, ids.data(), ids.size(), b.data());
  for (size_t i = 0; i < full.size(); ++i) EXPECT_EQ(a[i] + b[i], full[i]);
}

TEST(SiluMulTest, MatchesFloat64) {
  const int m = 3, inter = 17;
  std::mt19937 rng(2);
  auto gu = testing::RandomVector(m * 2 * inter, rng, -6, 6);
  std::vector<float> out(m * inter, NAN);
  cpu::SiluMul(gu.data(), m, inter, out.data());
  std::vector<double> ref(m * inter);
  for (int r = 0; r < m; ++r)
    for (int i = 0; i < inter; ++i) {
      const double g = gu[r * 2 * inter + i];
      ref[r * inter + i] = g / (1 + std::exp(-g)) * gu[r * 2 * inter + inter + i];
    }
  testing::ExpectClose(out, ref, 1e-6, 1e-5);
}

TEST(GatherRowsTest, PicksRowsInOrder) {
  std::vector<float> x = {0, 1, 10, 11, 20, 21};
  std::vector<int32_t> rows = {2, 0, 2};
  std::vector<float> out(6, NAN);
  cpu::GatherRows(x.data(), rows.data(), 3, 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{20, 21, 0, 1, 20, 21}));
}

TEST(AddTest, InPlace) {
  std::vector<float> a = {1, 2, 3}, b = {0.5f, -2, 4};
  cpu::Add(a.data(), b.data(), 3, a.data());
  EXPECT_EQ(a, (std::vector<float>{1.5f, 0, 7}));
}

}  // namespace
}  // namespace tessera
