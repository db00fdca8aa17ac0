// The block allocator: all-or-nothing allocation, reuse after free, double-free detection.
#include "runtime/model/kv_cache.h"

#include <set>

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(BlockAllocatorTest, AllocatesDistinctBlocksAllOrNothing) {
  BlockAllocator a(8);
  std::vector<int32_t> x, y, z;
  ASSERT_TRUE(a.Allocate(5, &x));
  EXPECT_EQ(a.num_free(), 3);
  EXPECT_FALSE(a.Allocate(4, &y));
  EXPECT_TRUE(y.empty());
  EXPECT_EQ(a.num_free(), 3);
  ASSERT_TRUE(a.Allocate(3, &z));
  std::set<int32_t> all(x.begin(), x.end());
  all.insert(z.begin(), z.end());
  EXPECT_EQ(all.size(), 8u);
  a.Free(x);
  EXPECT_EQ(a.num_free(), 5);
}

TEST(BlockAllocatorTest, SameCallsGiveSameBlocks) {
  // Every rank runs its own allocator; identical call sequences must give identical tables.
  BlockAllocator a(16), b(16);
  std::vector<int32_t> a1, a2, b1, b2;
  a.Allocate(3, &a1);
  b.Allocate(3, &b1);
  a.Allocate(4, &a2);
  b.Allocate(4, &b2);
  a.Free(a1);
  b.Free(b1);
  a1.clear();
  b1.clear();
  a.Allocate(6, &a1);
  b.Allocate(6, &b1);
  EXPECT_EQ(a1, b1);
  EXPECT_EQ(a2, b2);
}

TEST(BlockAllocatorDeathTest, DoubleFreeIsFatal) {
  BlockAllocator a(2);
  std::vector<int32_t> x;
  a.Allocate(1, &x);
  a.Free(x);
  EXPECT_DEATH(a.Free(x), "freed twice");
}

}  // namespace
}  // namespace tessera
