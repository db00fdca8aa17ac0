// Decode steps replayed from CUDA graphs against the same steps run op by op: a golden fixture's
// model (dense, and MoE with dense and MoE layers mixed) on two executors (graphs on, and
// TESSERA_CUDA_GRAPHS=0), the same sequences prefilled on both, then decode steps whose batch grows
// and shrinks (new buckets, replays with new positions, tokens and block tables). Skips itself
// without a GPU.
//
// Tolerance: a graph runs the padded batch (its GEMMs have more rows), so cuBLASLt may pick other
// algorithms than for the unpadded step: fp32 accumulation in another order, then the same bf16
// roundings. Rows then differ by occasional one-ulp flips of bf16 activations (relative 2^-8 on
// that element), carried through the fixture's layers: far below 1e-2 in relative L2, while a
// wrong position, token, block table or stale metadata moves a row by O(1).
#include <cmath>
#include <cstdlib>
#include <random>

#include <gtest/gtest.h>

#include "tests/golden/bf16_golden.h"

namespace tessera {
namespace {

constexpr int kBlockSize = 16;
constexpr int kBlocksPerSeq = 4;  // 64 positions per sequence (the executor has 32 blocks)

struct Seq {
  std::vector<int32_t> tokens;
  int done = 0;  // positions cached so far
};

// One step: every sequence in `active` appends tokens [done, end) and wants its last logits.
StepPlan MakePlan(const std::vector<Seq>& seqs, const std::vector<int>& active,
                  const std::vector<int>& end) {
  StepPlan plan;
  plan.replicas.assign(1, std::vector<StepBatch>(1));
  StepBatch& b = plan.replicas[0][0];
  b.num_seqs = static_cast<int>(active.size());
  b.max_blocks_per_seq = kBlocksPerSeq;
  for (size_t j = 0; j < active.size(); ++j) {
    const int s = active[j];
    for (int k = 0; k < kBlocksPerSeq; ++k) b.block_tables.push_back(s * kBlocksPerSeq + k);
    for (int p = seqs[s].done; p < end[j]; ++p) {
      b.token_ids.push_back(seqs[s].tokens[p]);
      b.positions.push_back(p);
      b.token_seq.push_back(static_cast<int32_t>(j));
      b.slot_mapping.push_back((s * kBlocksPerSeq + p / kBlockSize) * kBlockSize + p % kBlockSize);
    }
    b.logit_tokens.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
  }
  return plan;
}

double RowRelL2(const float* got, const float* ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (got[i] - ref[i]) * static_cast<double>(got[i] - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

class CudaGraphTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaGraphTest, DecodeReplaysMatchDirectSteps) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device: the CUDA backend is not run";
  std::unique_ptr<Backend> graph_backend = MakeCudaBackend(0);
  std::unique_ptr<Backend> direct_backend = MakeCudaBackend(0);
  auto with_graphs = testing::LoadGoldenModel(GetParam(), *graph_backend, kBlockSize);
  setenv("TESSERA_CUDA_GRAPHS", "0", 1);
  auto direct = testing::LoadGoldenModel(GetParam(), *direct_backend, kBlockSize);
  unsetenv("TESSERA_CUDA_GRAPHS");
  const int64_t vocab = with_graphs->config.vocab_size;

  // Six sequences: slices of the fixture's prompt, extended by the fixture's own ids (any ids do).
  std::vector<Seq> seqs(6);
  std::mt19937 rng(7);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int p = 0; p < 100; ++p) {
      seqs[s].tokens.push_back(static_cast<int32_t>(rng() % (vocab - 1)));
    }
  }
  auto step = [&](const std::vector<int>& active, const std::vector<int>& end, const char* what) {
    const StepPlan plan = MakePlan(seqs, active, end);
    const std::vector<float> got = with_graphs->executor->Execute(plan).logits;
    const std::vector<float> ref = direct->executor->Execute(plan).logits;
    ASSERT_EQ(got.size(), ref.size());
    ASSERT_EQ(got.size(), active.size() * static_cast<size_t>(vocab));
    for (size_t j = 0; j < active.size(); ++j) {
      const double err = RowRelL2(got.data() + j * vocab, ref.data() + j * vocab, vocab);
      EXPECT_LT(err, 1e-2) << what << ": sequence " << active[j] << " at position " << end[j] - 1;
    }
    for (size_t j = 0; j < active.size(); ++j) seqs[active[j]].done = end[j];
  };
  // Prefill (not recorded): sequences of different lengths.
  step({0, 1, 2, 3, 4, 5}, {5, 17, 33, 9, 40, 2}, "prefill");
  // Decode: batch 3 (bucket 4) twice, then 6 (bucket 8), 1, then 3 again with other sequences
  // and positions that cross block boundaries.
  for (int i = 0; i < 2; ++i) {
    step({0, 1, 2}, {seqs[0].done + 1, seqs[1].done + 1, seqs[2].done + 1}, "decode 3");
  }
  for (int i = 0; i < 3; ++i) {
    std::vector<int> all = {0, 1, 2, 3, 4, 5}, end;
    for (int s : all) end.push_back(seqs[s].done + 1);
    step(all, end, "decode 6");
  }
  step({4}, {seqs[4].done + 1}, "decode 1");
  for (int i = 0; i < 20; ++i) {
    step({5, 3, 1}, {seqs[5].done + 1, seqs[3].done + 1, seqs[1].done + 1}, "decode 3 again");
  }
  EXPECT_GE(with_graphs->executor->model().num_decode_graphs(), 3);
  EXPECT_EQ(direct->executor->model().num_decode_graphs(), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaGraphTest,
                         ::testing::Values("dense_gqa", "moe_mixed_layers"));

}  // namespace
}  // namespace tessera
