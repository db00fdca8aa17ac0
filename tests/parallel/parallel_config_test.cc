// ParallelConfig: coordinates of every rank, and a precise error for every mis-specified layout.
#include "parallel/parallel_config.h"

#include <set>

#include <gtest/gtest.h>

namespace tessera {
namespace {

ModelDims Dense() {
  ModelDims d;
  d.num_layers = 4;
  d.num_attention_heads = 8;
  d.num_key_value_heads = 2;
  d.intermediate_size = 96;
  d.vocab_size = 384;
  return d;
}

ModelDims Moe() {
  ModelDims d = Dense();
  d.num_experts = 8;
  d.moe_intermediate_size = 32;
  return d;
}

TEST(ParallelConfigTest, CoordinatesCoverTheWorldOnce) {
  std::set<std::tuple<int, int, int>> seen;
  for (int rank = 0; rank < 8; ++rank) {
    auto c = ParallelConfig::Create(8, rank, 2, 2, 1, 0, Dense());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->dp, 2);
    EXPECT_EQ(c->RankOf(c->stage(), c->dp_rank(), c->tp_rank()), rank);
    seen.insert({c->stage(), c->dp_rank(), c->tp_rank()});
  }
  EXPECT_EQ(seen.size(), 8u);
}

TEST(ParallelConfigTest, LayersSplitContiguously) {
  auto c = ParallelConfig::Create(3, 0, 1, 3, 1, 1, [] {
    ModelDims d = Dense();
    d.num_layers = 7;
    return d;
  }());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->FirstLayer(7, 0), 0);
  EXPECT_EQ(c->FirstLayer(7, 1), 3);
  EXPECT_EQ(c->FirstLayer(7, 2), 5);
  EXPECT_EQ(c->FirstLayer(7, 3), 7);
}

TEST(ParallelConfigTest, ExpertParallelSpansTheStage) {
  auto c = ParallelConfig::Create(4, 3, 2, 1, 4, 0, Moe());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dp, 2);
  EXPECT_EQ(c->ep_rank(), 3);
  // `mpirun -np 2 tessera run --ep 2` is attention-DP over 2 ranks with experts split 2 ways.
  auto d = ParallelConfig::Create(2, 1, 1, 1, 2, 0, Moe());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->dp, 2);
  EXPECT_EQ(d->ep_rank(), 1);
}

TEST(ParallelConfigTest, KvHeadsReplicateWhenTpExceedsThem) {
  EXPECT_TRUE(ParallelConfig::Create(4, 0, 4, 1, 1, 0, Dense()).ok());  // 2 kv heads, tp 4
}

void ExpectError(absl::StatusOr<ParallelConfig> c, const std::string& needle) {
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find(needle), std::string::npos)
      << c.status().message();
}

TEST(ParallelConfigTest, RejectsEveryBadLayoutWithTheNumbers) {
  ExpectError(ParallelConfig::Create(3, 0, 3, 1, 1, 0, Dense()),
              "--tp 3 does not divide num_attention_heads (8)");
  ModelDims odd_kv = Dense();
  odd_kv.num_key_value_heads = 3;
  odd_kv.num_attention_heads = 12;
  ExpectError(ParallelConfig::Create(4, 0, 4, 1, 1, 0, odd_kv), "num_key_value_heads (3)");
  ModelDims odd_inter = Dense();
  odd_inter.intermediate_size = 90;
  ExpectError(ParallelConfig::Create(4, 0, 4, 1, 1, 0, odd_inter), "intermediate_size (90)");
  ExpectError(ParallelConfig::Create(2, 0, 1, 1, 2, 0, Dense()), "dense");
  ExpectError(ParallelConfig::Create(4, 0, 1, 1, 3, 0, Moe()),
              "--ep 3 must be 1 or --tp x --dp = 4");
  ModelDims six = Moe();
  six.num_experts = 6;
  ExpectError(ParallelConfig::Create(4, 0, 1, 1, 4, 0, six), "num_experts (6)");
  ExpectError(ParallelConfig::Create(5, 0, 1, 5, 1, 0, Dense()),
              "exceeds the number of layers (4)");
  ExpectError(ParallelConfig::Create(4, 0, 2, 1, 1, 3, Dense()), "but the world has 4 ranks");
  ExpectError(ParallelConfig::Create(3, 0, 2, 1, 1, 0, Dense()), "not a multiple");
  ModelDims moe_inter = Moe();
  moe_inter.moe_intermediate_size = 30;
  ExpectError(ParallelConfig::Create(4, 0, 4, 1, 1, 0, moe_inter), "moe_intermediate_size (30)");
  ExpectError(ParallelConfig::Create(2, 0, 0, 1, 1, 0, Dense()), "--tp must be >= 1");
}

}  // namespace
}  // namespace tessera
