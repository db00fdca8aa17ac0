// The expert-parallel dispatch reference: the send layout against its definition (each token once
// per rank owning one of its experts, grouped by rank, tokens ascending; slots in increasing rank),
// and a whole exchange simulated in one process (S ranks' layouts, packs, an all-to-all by
// concatenation, each rank's experts, the return and the combine) against single-rank MoeExperts.
#include <algorithm>
#include <numeric>
#include <set>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

// Distinct experts per token over [0, experts), in random order; every `pad_every`-th row padding.
std::vector<int32_t> RandomRouting(int n, int experts, int top_k, std::mt19937& rng,
                                   int pad_every = 0) {
  std::vector<int32_t> ids(static_cast<size_t>(n) * top_k), all(experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    const bool pad = pad_every > 0 && t % pad_every == pad_every - 1;
    for (int k = 0; k < top_k; ++k) ids[static_cast<size_t>(t) * top_k + k] = pad ? -1 : all[k];
  }
  return ids;
}

struct Layout {
  std::vector<int32_t> rank_counts, expert_counts, send_tokens, token_slots;
};

Layout MakeLayout(const std::vector<int32_t>& ids, int n, int top_k, int ranks, int per_rank) {
  Layout l;
  l.rank_counts.assign(ranks, -7);
  l.expert_counts.assign(static_cast<size_t>(ranks) * per_rank, -7);
  l.send_tokens.assign(static_cast<size_t>(n) * std::min(top_k, ranks), -7);
  l.token_slots.assign(static_cast<size_t>(n) * top_k, -7);
  cpu::MoeDispatchLayout(ids.data(), n, top_k, ranks, per_rank, l.rank_counts.data(),
                         l.expert_counts.data(), l.send_tokens.data(), l.token_slots.data(), 0,
                         nullptr, nullptr);
  return l;
}

// n, ranks, experts per rank, top_k
class DispatchLayoutTest : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(DispatchLayoutTest, MatchesDefinition) {
  const auto [n, ranks, per_rank, top_k] = GetParam();
  std::mt19937 rng(n * 7 + ranks * 3 + top_k);
  const auto ids = RandomRouting(n, ranks * per_rank, top_k, rng, 5);
  const Layout l = MakeLayout(ids, n, top_k, ranks, per_rank);
  // The definition, row by row.
  std::vector<int32_t> want_tokens, want_counts(ranks, 0), want_experts(ranks * per_rank, 0);
  std::vector<std::vector<int32_t>> want_slots(n);
  for (int r = 0; r < ranks; ++r) {
    for (int t = 0; t < n; ++t) {
      bool has = false;
      for (int k = 0; k < top_k; ++k) {
        const int id = ids[t * top_k + k];
        has |= id >= 0 && id / per_rank == r;
      }
      if (!has) continue;
      want_slots[t].push_back(static_cast<int32_t>(want_tokens.size()));
      want_tokens.push_back(t);
      ++want_counts[r];
    }
  }
  for (int32_t id : ids)
    if (id >= 0) ++want_experts[id];
  EXPECT_EQ(l.rank_counts, want_counts);
  EXPECT_EQ(l.expert_counts, want_experts);
  ASSERT_LE(want_tokens.size(), l.send_tokens.size());
  EXPECT_TRUE(std::equal(want_tokens.begin(), want_tokens.end(), l.send_tokens.begin()));
  for (int t = 0; t < n; ++t) {
    want_slots[t].resize(top_k, -1);
    EXPECT_TRUE(
        std::equal(want_slots[t].begin(), want_slots[t].end(), l.token_slots.begin() + t * top_k))
        << "token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DispatchLayoutTest,
                         ::testing::Values(std::make_tuple(0, 4, 2, 2), std::make_tuple(1, 1, 8, 3),
                                           std::make_tuple(13, 2, 4, 2),
                                           std::make_tuple(37, 8, 16, 8),
                                           std::make_tuple(29, 3, 3, 5),
                                           std::make_tuple(64, 16, 8, 8)));

// The fixed-block layout (low-latency exchange): rank r's rows of the packed layout at r * C, the
// rest of each block -1, slots naming the moved rows; the pack's unused rows zeros with ids -1.
TEST(DispatchLayoutTest, FixedBlocksMovePackedRows) {
  const int n = 23, ranks = 4, per_rank = 3, top_k = 4, hidden = 5;
  for (int cap : {n, n + 6}) {
    std::mt19937 rng(cap);
    const auto ids = RandomRouting(n, ranks * per_rank, top_k, rng, 4);
    const Layout packed = MakeLayout(ids, n, top_k, ranks, per_rank);
    Layout l;
    l.rank_counts.assign(ranks, -7);
    l.send_tokens.assign(static_cast<size_t>(ranks) * cap, -7);
    l.token_slots.assign(static_cast<size_t>(n) * top_k, -7);
    cpu::MoeDispatchLayout(ids.data(), n, top_k, ranks, per_rank, l.rank_counts.data(), nullptr,
                           l.send_tokens.data(), l.token_slots.data(), cap, nullptr, nullptr);
    EXPECT_EQ(l.rank_counts, packed.rank_counts);
    std::vector<int32_t> moved(packed.send_tokens.size(), -1);  // packed row -> block row
    int begin = 0;
    for (int r = 0; r < ranks; ++r) {
      for (int j = 0; j < cap; ++j) {
        const int32_t want = j < packed.rank_counts[r] ? packed.send_tokens[begin + j] : -1;
        EXPECT_EQ(l.send_tokens[r * cap + j], want) << "rank " << r << " row " << j;
        if (j < packed.rank_counts[r]) moved[begin + j] = r * cap + j;
      }
      begin += packed.rank_counts[r];
    }
    for (int i = 0; i < n * top_k; ++i) {
      const int32_t s = packed.token_slots[i];
      EXPECT_EQ(l.token_slots[i], s < 0 ? -1 : moved[s]) << "slot " << i;
    }
    const auto x = testing::RandomVector(n * hidden, rng);
    const auto w = testing::RandomVector(n * top_k, rng);
    const int rows = ranks * cap;
    std::vector<float> sx(rows * hidden, NAN), sw(rows * top_k, NAN);
    std::vector<int32_t> si(rows * top_k, -7);
    cpu::MoeDispatchPack(x.data(), ids.data(), w.data(), l.send_tokens.data(), rows, hidden, top_k,
                         sx.data(), si.data(), sw.data());
    for (int i = 0; i < rows; ++i) {
      const int t = l.send_tokens[i];
      for (int c = 0; c < hidden; ++c)
        EXPECT_EQ(sx[i * hidden + c], t < 0 ? 0.0f : x[t * hidden + c]);
      for (int k = 0; k < top_k; ++k) {
        EXPECT_EQ(si[i * top_k + k], t < 0 ? -1 : ids[t * top_k + k]);
        EXPECT_EQ(sw[i * top_k + k], t < 0 ? 0.0f : w[t * top_k + k]);
      }
    }
  }
}

// valid_rows: the tokens past it are padding (the layout of the leading tokens alone, slots -1),
// and the load counters add up the counts over calls, in either layout.
TEST(DispatchLayoutTest, ValidRowsAndLoadCounters) {
  const int n = 19, ranks = 3, per_rank = 5, top_k = 4, experts = ranks * per_rank;
  std::mt19937 rng(5);
  for (int cap : {0, n}) {
    std::vector<int64_t> load(ranks + experts, 0), want_load(ranks + experts, 0);
    for (int valid : {n, 11, 0, n + 4}) {
      const auto ids = RandomRouting(n, experts, top_k, rng, 6);
      const int used = std::min(valid, n);
      // The reference: the first `used` tokens with the rest routed nowhere.
      std::vector<int32_t> padded = ids;
      std::fill(padded.begin() + used * top_k, padded.end(), -1);
      const Layout want = MakeLayout(padded, n, top_k, ranks, per_rank);
      Layout l;
      l.rank_counts.assign(ranks, -7);
      l.expert_counts.assign(experts, -7);
      l.send_tokens.assign(cap > 0 ? ranks * cap : n * std::min(top_k, ranks), -7);
      l.token_slots.assign(n * top_k, -7);
      cpu::MoeDispatchLayout(ids.data(), n, top_k, ranks, per_rank, l.rank_counts.data(),
                             l.expert_counts.data(), l.send_tokens.data(), l.token_slots.data(),
                             cap, &valid, load.data());
      EXPECT_EQ(l.rank_counts, want.rank_counts) << "valid " << valid << " cap " << cap;
      EXPECT_EQ(l.expert_counts, want.expert_counts) << "valid " << valid << " cap " << cap;
      if (cap == 0) {
        EXPECT_EQ(l.token_slots, want.token_slots) << "valid " << valid;
      }
      for (int t = used; t < n; ++t) {
        for (int k = 0; k < top_k; ++k) EXPECT_EQ(l.token_slots[t * top_k + k], -1);
      }
      for (int r = 0; r < ranks; ++r) want_load[r] += want.rank_counts[r];
      for (int e = 0; e < experts; ++e) want_load[ranks + e] += want.expert_counts[e];
      EXPECT_EQ(load, want_load) << "valid " << valid << " cap " << cap;
    }
  }
}

// S ranks, each with its own tokens, exchange as expert_exchange.cc does; every rank's combined
// output must equal MoeExperts over all experts on one rank.
TEST(DispatchExchangeTest, SimulatedRanksMatchOneRank) {
  const int ranks = 3, per_rank = 4, experts = ranks * per_rank, top_k = 3, hidden = 11, inter = 6;
  const std::vector<int> tokens = {7, 0, 12};  // rank 1 has no work, as an idle DP replica
  std::mt19937 rng(17);
  auto gate_up = testing::RandomVector(experts * 2 * inter * hidden, rng);
  auto down = testing::RandomVector(experts * hidden * inter, rng);
  std::vector<std::vector<float>> x(ranks), w(ranks), send_x(ranks), send_w(ranks);
  std::vector<std::vector<int32_t>> ids(ranks), send_ids(ranks);
  std::vector<Layout> layouts(ranks);
  for (int s = 0; s < ranks; ++s) {
    const int n = tokens[s];
    x[s] = testing::RandomVector(n * hidden, rng);
    ids[s] = RandomRouting(n, experts, top_k, rng);
    w[s] = testing::RandomVector(n * top_k, rng, 0.1f, 1.0f);
    layouts[s] = MakeLayout(ids[s], n, top_k, ranks, per_rank);
    const int rows =
        std::accumulate(layouts[s].rank_counts.begin(), layouts[s].rank_counts.end(), 0);
    send_x[s].resize(rows * hidden);
    send_ids[s].resize(rows * top_k);
    send_w[s].resize(rows * top_k);
    cpu::MoeDispatchPack(x[s].data(), ids[s].data(), w[s].data(), layouts[s].send_tokens.data(),
                         rows, hidden, top_k, send_x[s].data(), send_ids[s].data(),
                         send_w[s].data());
  }
  // Rank d receives, in source order, block d of every source; computes its experts; returns.
  auto block_begin = [&](int s, int d) {
    return std::accumulate(layouts[s].rank_counts.begin(), layouts[s].rank_counts.begin() + d, 0);
  };
  std::vector<std::vector<float>> back(ranks);
  for (int s = 0; s < ranks; ++s) back[s].assign(send_x[s].size(), NAN);
  for (int d = 0; d < ranks; ++d) {
    std::vector<float> rx, rw;
    std::vector<int32_t> rids;
    for (int s = 0; s < ranks; ++s) {
      const int b = block_begin(s, d), c = layouts[s].rank_counts[d];
      rx.insert(rx.end(), send_x[s].begin() + b * hidden, send_x[s].begin() + (b + c) * hidden);
      rids.insert(rids.end(), send_ids[s].begin() + b * top_k,
                  send_ids[s].begin() + (b + c) * top_k);
      rw.insert(rw.end(), send_w[s].begin() + b * top_k, send_w[s].begin() + (b + c) * top_k);
    }
    const int rows = static_cast<int>(rx.size() / hidden);
    std::vector<float> ry(rx.size());
    cpu::MoeExperts(rx.data(), rows, rids.data(), rw.data(), top_k, d * per_rank, per_rank, hidden,
                    inter, gate_up.data() + d * per_rank * 2 * inter * hidden,
                    down.data() + d * per_rank * hidden * inter, ry.data());
    int at = 0;
    for (int s = 0; s < ranks; ++s) {
      const int b = block_begin(s, d), c = layouts[s].rank_counts[d];
      std::copy(ry.begin() + at * hidden, ry.begin() + (at + c) * hidden,
                back[s].begin() + b * hidden);
      at += c;
    }
  }
  for (int s = 0; s < ranks; ++s) {
    const int n = tokens[s];
    std::vector<float> got(n * hidden, NAN), want(n * hidden);
    cpu::MoeCombineRanks(back[s].data(), layouts[s].token_slots.data(), n, top_k, hidden,
                         got.data());
    cpu::MoeExperts(x[s].data(), n, ids[s].data(), w[s].data(), top_k, 0, experts, hidden, inter,
                    gate_up.data(), down.data(), want.data());
    std::vector<double> ref(want.begin(), want.end());
    testing::ExpectClose(got, ref, 1e-5, 1e-5);
  }
}

}  // namespace
}  // namespace tessera
