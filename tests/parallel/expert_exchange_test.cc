// ExpertExchange on the CPU backend over MPI (run with 3 ranks): each rank's tokens dispatched to
// the owners of their experts by MPI_Alltoallv, the experts run where they live, the partial sums
// combined at home, against MoeExperts over all experts on one rank. A rank with no tokens (an
// idle DP replica) joins every call; repeated calls reuse the buffers; the load counters add up.
// Low-latency mode (fixed blocks, no host read) gives normal mode's bits, interleaved with it, and
// its load counters (on the device, gathered by SyncLoad) add up as normal mode's do; rows past
// SetValidRows are routed nowhere and not counted. The FP8 payload gives exactly the exchange of
// the rows quantized and dequantized, in both modes.
#include <mpi.h>

#include <algorithm>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "parallel/expert_exchange.h"
#include "parallel/mpi_communicator.h"

namespace tessera {
namespace {

Communicator& World() {
  static std::unique_ptr<Communicator> world = MakeMpiCommunicator(MPI_COMM_WORLD, "world");
  return *world;
}

std::vector<float> Random(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Rank `rank`'s experts [rank * per_rank, (rank + 1) * per_rank) of the full expert weights
// (gate_up [E, 2I, H], down [E, H, I]), which every rank holds alike.
ExpertWeights RankExperts(int rank, int per_rank, int H, int I, const std::vector<float>& gate_up,
                          const std::vector<float>& down) {
  ExpertWeights mine;
  mine.first_expert = rank * per_rank;
  mine.num_local_experts = per_rank;
  mine.hidden = H;
  mine.intermediate = I;
  mine.gate_up = gate_up.data() + static_cast<size_t>(mine.first_expert) * 2 * I * H;
  mine.down = down.data() + static_cast<size_t>(mine.first_expert) * H * I;
  return mine;
}

TEST(ExpertExchangeTest, MatchesOneRankAndCountsLoad) {
  Communicator& w = World();
  const int S = w.size(), per_rank = 4, E = S * per_rank, k = 3, H = 13, I = 5, max_tokens = 9;
  std::mt19937 weights_rng(5);  // the same expert weights on every rank
  const auto gate_up = Random(static_cast<size_t>(E) * 2 * I * H, weights_rng);
  const auto down = Random(static_cast<size_t>(E) * H * I, weights_rng);
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  ExpertExchange exchange(w, *cpu, {H, k, E, max_tokens});
  const ExpertWeights mine = RankExperts(w.rank(), per_rank, H, I, gate_up, down);

  std::mt19937 rng(100 + w.rank());
  int64_t routed = 0;
  for (int call = 0; call < 3; ++call) {
    // Rank 1 is idle in call 0; every rank's count varies per call (the last: a full slice).
    const int m = (w.rank() == 1 && call == 0) ? 0
                  : call == 2                  ? max_tokens
                                               : 2 + (w.rank() + call) % 5;
    const auto x = Random(static_cast<size_t>(m) * H, rng);
    const auto wt = Random(static_cast<size_t>(m) * k, rng, 0.1f, 1.0f);
    std::vector<int32_t> ids(static_cast<size_t>(m) * k), all(E);
    std::iota(all.begin(), all.end(), 0);
    for (int t = 0; t < m; ++t) {
      std::shuffle(all.begin(), all.end(), rng);
      std::copy_n(all.begin(), k, ids.begin() + static_cast<size_t>(t) * k);
    }
    if (m > 2) std::fill_n(ids.begin() + k, k, -1);  // token 1: padding, sent nowhere
    routed +=
        static_cast<int64_t>(std::count_if(ids.begin(), ids.end(), [](int id) { return id >= 0; }));

    const int received = exchange.Dispatch(x.data(), ids.data(), wt.data(), m);
    cpu->MoeExperts(exchange.recv_x(), received, exchange.recv_ids(), exchange.recv_weights(), k,
                    mine, exchange.recv_y());
    std::vector<float> got(static_cast<size_t>(m) * H, NAN), want(got.size());
    exchange.Combine(got.data());
    cpu::MoeExperts(x.data(), m, ids.data(), wt.data(), k, 0, E, H, I, gate_up.data(), down.data(),
                    want.data());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::fabs(want[i]))
          << "call " << call << " at " << i;
  }
  // Load: the group's routed pairs per expert and rows per rank, the same on every rank.
  int64_t pairs = 0;
  for (int64_t c : exchange.tokens_per_expert()) pairs += c;
  int64_t world_routed = routed;
  w.AllReduceSum(&world_routed, 1, DType::kI64);
  EXPECT_EQ(pairs, world_routed);
  int64_t rows = 0;
  for (int64_t c : exchange.rows_per_rank()) rows += c;
  EXPECT_GT(rows, 0);
  EXPECT_LE(rows, pairs);
  std::vector<int64_t> rank0 = exchange.rows_per_rank();
  w.Broadcast(rank0.data(), rank0.size(), DType::kI64, 0);
  EXPECT_EQ(rank0, exchange.rows_per_rank());
}

// Routing of m tokens over E experts, k distinct per token; token 1 padding when m > 2.
std::vector<int32_t> Routing(int m, int E, int k, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(m) * k), all(E);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < m; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), k, ids.begin() + static_cast<size_t>(t) * k);
  }
  if (m > 2) std::fill_n(ids.begin() + k, k, -1);
  return ids;
}

TEST(ExpertExchangeTest, LowLatencyGivesNormalModesBits) {
  Communicator& w = World();
  const int S = w.size(), per_rank = 2, E = S * per_rank, k = 4, H = 9, I = 3, cap = 6;
  std::mt19937 weights_rng(7);
  const auto gate_up = Random(static_cast<size_t>(E) * 2 * I * H, weights_rng);
  const auto down = Random(static_cast<size_t>(E) * H * I, weights_rng);
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  ExpertExchangeShape shape{H, k, E, 11};
  shape.block_capacity = cap;
  ExpertExchange exchange(w, *cpu, shape);
  const ExpertWeights mine = RankExperts(w.rank(), per_rank, H, I, gate_up, down);
  auto run = [&](const std::vector<float>& x, const std::vector<int32_t>& ids,
                 const std::vector<float>& wt, int m, int block_rows) {
    const int received =
        block_rows > 0 ? exchange.DispatchLowLatency(x.data(), ids.data(), wt.data(), m, block_rows)
                       : exchange.Dispatch(x.data(), ids.data(), wt.data(), m);
    cpu->MoeExperts(exchange.recv_x(), received, exchange.recv_ids(), exchange.recv_weights(), k,
                    mine, exchange.recv_y());
    std::vector<float> out(static_cast<size_t>(m) * H, NAN);
    exchange.Combine(out.data());
    return out;
  };
  std::mt19937 rng(300 + w.rank());
  for (int call = 0; call < 4; ++call) {
    // Rank 0 idle in call 1; call 3 fills the planned blocks (m = cap); blocks of 5 rows in
    // call 2 (every rank's m <= 5 there).
    const int m = (w.rank() == 0 && call == 1) ? 0
                  : call == 3                  ? cap
                  : call == 2                  ? 1 + w.rank() % 5
                                               : 1 + (w.rank() + call) % cap;
    const int block_rows = call == 2 ? 5 : cap;
    const auto x = Random(static_cast<size_t>(m) * H, rng);
    const auto wt = Random(static_cast<size_t>(m) * k, rng, 0.1f, 1.0f);
    const auto ids = Routing(m, E, k, rng);
    const auto low = run(x, ids, wt, m, block_rows);
    const auto normal = run(x, ids, wt, m, 0);
    EXPECT_EQ(low, normal) << "call " << call;
    std::vector<float> want(static_cast<size_t>(m) * H);
    cpu::MoeExperts(x.data(), m, ids.data(), wt.data(), k, 0, E, H, I, gate_up.data(), down.data(),
                    want.data());
    for (size_t i = 0; i < low.size(); ++i)
      ASSERT_NEAR(low[i], want[i], 1e-5 + 1e-5 * std::fabs(want[i])) << "call " << call;
  }

  // Load: low-latency dispatches reach the totals at SyncLoad, each once; the same routing went
  // through both modes, so each mode holds half of every total.
  const std::vector<int64_t> experts_normal = exchange.tokens_per_expert();
  const std::vector<int64_t> ranks_normal = exchange.rows_per_rank();
  EXPECT_GT(exchange.load_pairs(/*low_latency=*/false), 0);
  EXPECT_EQ(exchange.load_pairs(/*low_latency=*/true), 0);
  exchange.SyncLoad();
  exchange.SyncLoad();  // nothing new since the last: nothing added twice
  for (int e = 0; e < E; ++e) EXPECT_EQ(exchange.tokens_per_expert()[e], 2 * experts_normal[e]);
  for (int r = 0; r < S; ++r) EXPECT_EQ(exchange.rows_per_rank()[r], 2 * ranks_normal[r]);
  EXPECT_EQ(exchange.load_pairs(true), exchange.load_pairs(false));

  // Valid rows (a decode graph's padding): tokens from 2 on are routed nowhere, give zeros and
  // are not counted.
  const int64_t before = exchange.load_pairs(true);
  exchange.SetValidRows(2);
  const auto x = Random(static_cast<size_t>(cap) * H, rng);
  const auto wt = Random(static_cast<size_t>(cap) * k, rng, 0.1f, 1.0f);
  auto ids = Routing(cap, E, k, rng);
  const auto got = run(x, ids, wt, cap, cap);
  std::fill(ids.begin() + 2 * k, ids.end(), -1);
  std::vector<float> want(static_cast<size_t>(cap) * H);
  cpu::MoeExperts(x.data(), cap, ids.data(), wt.data(), k, 0, E, H, I, gate_up.data(), down.data(),
                  want.data());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::fabs(want[i])) << "valid rows, at " << i;
  int64_t valid_pairs = std::count_if(ids.begin(), ids.end(), [](int id) { return id >= 0; });
  w.AllReduceSum(&valid_pairs, 1, DType::kI64);
  exchange.SyncLoad();
  EXPECT_EQ(exchange.load_pairs(true) - before, valid_pairs);
}

TEST(ExpertExchangeTest, Fp8PayloadIsQuantizeDequantizeExactly) {
  Communicator& w = World();
  // H = 200: a full 128-group and a partial one.
  const int S = w.size(), per_rank = 2, E = S * per_rank, k = 2, H = 200, I = 3, cap = 7;
  std::mt19937 weights_rng(9);
  const auto gate_up = Random(static_cast<size_t>(E) * 2 * I * H, weights_rng);
  const auto down = Random(static_cast<size_t>(E) * H * I, weights_rng);
  std::unique_ptr<Backend> cpu = MakeCpuBackend();
  ExpertExchangeShape shape{H, k, E, cap};
  shape.block_capacity = cap;
  ExpertExchange plain(w, *cpu, shape);
  shape.fp8_payload = true;
  ExpertExchange fp8(w, *cpu, shape);
  const ExpertWeights mine = RankExperts(w.rank(), per_rank, H, I, gate_up, down);
  auto run = [&](ExpertExchange& ex, const std::vector<float>& x, const std::vector<int32_t>& ids,
                 const std::vector<float>& wt, int m, bool low_latency) {
    const int received = low_latency
                             ? ex.DispatchLowLatency(x.data(), ids.data(), wt.data(), m, cap)
                             : ex.Dispatch(x.data(), ids.data(), wt.data(), m);
    cpu->MoeExperts(ex.recv_x(), received, ex.recv_ids(), ex.recv_weights(), k, mine, ex.recv_y());
    std::vector<float> out(static_cast<size_t>(m) * H, NAN);
    ex.Combine(out.data());
    return out;
  };
  std::mt19937 rng(500 + w.rank());
  for (int call = 0; call < 4; ++call) {
    const bool low_latency = call % 2 == 1;
    const int m = (w.rank() == 2 && call == 0) ? 0 : 1 + (w.rank() * 3 + call) % cap;
    auto x = Random(static_cast<size_t>(m) * H, rng, -3.0f, 3.0f);
    if (m > 0) x[5] = 0.0f;
    const auto wt = Random(static_cast<size_t>(m) * k, rng, 0.1f, 1.0f);
    const auto ids = Routing(m, E, k, rng);
    // The rows as the FP8 payload carries them: quantized, then dequantized.
    std::vector<uint8_t> q(x.size());
    std::vector<float> scales(static_cast<size_t>(Fp8Blocks(H)) * std::max(m, 1));
    std::vector<float> xq(x.size());
    cpu::QuantizeFp8(x.data(), m, H, q.data(), scales.data(), std::max(m, 1));
    cpu::DequantizeFp8Activations(q.data(), scales.data(), std::max(m, 1), m, H, xq.data());
    const auto got = run(fp8, x, ids, wt, m, low_latency);
    const auto want = run(plain, xq, ids, wt, m, low_latency);
    EXPECT_EQ(got, want) << "call " << call;
    if (m > 0) {
      EXPECT_NE(xq, x);  // the payload did round
    }
  }
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int result = RUN_ALL_TESTS();
  int worst = result;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
