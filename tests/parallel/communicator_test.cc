// MpiCommunicator under mpirun (run with 3 ranks): every collective against values each rank can
// compute alone, sub-communicators from Split, and uneven all-to-all(v) with empty blocks.
#include <mpi.h>

#include <numeric>

#include <gtest/gtest.h>

#include "parallel/mpi_communicator.h"

namespace tessera {
namespace {

Communicator& World() {
  static std::unique_ptr<Communicator> world = MakeMpiCommunicator(MPI_COMM_WORLD, "world");
  return *world;
}

TEST(MpiCommunicatorTest, AllReduceSumsFloatsAndInts) {
  Communicator& w = World();
  std::vector<float> f = {1.0f * w.rank(), 2.0f, -0.5f};
  w.AllReduceSum(f.data(), f.size(), DType::kF32);
  const int n = w.size();
  EXPECT_FLOAT_EQ(f[0], n * (n - 1) / 2.0f);
  EXPECT_FLOAT_EQ(f[1], 2.0f * n);
  EXPECT_FLOAT_EQ(f[2], -0.5f * n);
  int64_t i = w.rank() + 1;
  w.AllReduceSum(&i, 1, DType::kI64);
  EXPECT_EQ(i, n * (n + 1) / 2);
}

TEST(MpiCommunicatorTest, AllGatherAndAllGatherV) {
  Communicator& w = World();
  const int n = w.size();
  std::vector<float> mine = {static_cast<float>(w.rank()), static_cast<float>(10 * w.rank())};
  std::vector<float> all(2 * n);
  w.AllGather(mine.data(), all.data(), 2, DType::kF32);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(all[2 * r], r);
    EXPECT_EQ(all[2 * r + 1], 10 * r);
  }
  // Rank r contributes r elements (rank 0 none).
  std::vector<size_t> counts(n), displs(n);
  for (int r = 0; r < n; ++r) counts[r] = r;
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), size_t{0});
  std::vector<float> send(w.rank(), static_cast<float>(w.rank()));
  std::vector<float> recv(displs.back() + counts.back(), -1.0f);
  w.AllGatherV(send.data(), send.size(), recv.data(), counts, displs, DType::kF32);
  for (int r = 0; r < n; ++r)
    for (size_t j = 0; j < counts[r]; ++j) EXPECT_EQ(recv[displs[r] + j], r);
}

TEST(MpiCommunicatorTest, ReduceScatterSum) {
  Communicator& w = World();
  const int n = w.size();
  std::vector<float> send(2 * n);
  for (int i = 0; i < 2 * n; ++i) send[i] = static_cast<float>(i + w.rank());
  std::vector<float> recv(2);
  w.ReduceScatterSum(send.data(), recv.data(), 2, DType::kF32);
  for (int j = 0; j < 2; ++j) {
    const float i = static_cast<float>(2 * w.rank() + j);
    EXPECT_FLOAT_EQ(recv[j], n * i + n * (n - 1) / 2.0f);
  }
}

TEST(MpiCommunicatorTest, AllToAllVWithEmptyBlocks) {
  Communicator& w = World();
  const int n = w.size(), me = w.rank();
  // Rank s sends (s + d) % 3 elements valued 100 s + d to rank d: some blocks are empty.
  std::vector<int64_t> send_counts(n), recv_counts;
  for (int d = 0; d < n; ++d) send_counts[d] = (me + d) % 3;
  w.AllToAllCounts(send_counts, &recv_counts);
  for (int s = 0; s < n; ++s) EXPECT_EQ(recv_counts[s], (s + me) % 3);
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  for (int d = 0; d < n; ++d) {
    sc[d] = send_counts[d];
    rc[d] = recv_counts[d];
  }
  std::exclusive_scan(sc.begin(), sc.end(), sd.begin(), size_t{0});
  std::exclusive_scan(rc.begin(), rc.end(), rd.begin(), size_t{0});
  std::vector<int32_t> send(sd.back() + sc.back()), recv(rd.back() + rc.back(), -1);
  for (int d = 0; d < n; ++d)
    for (size_t j = 0; j < sc[d]; ++j) send[sd[d] + j] = 100 * me + d;
  w.AllToAllV(send.data(), sc, sd, recv.data(), rc, rd, DType::kI32);
  for (int s = 0; s < n; ++s)
    for (size_t j = 0; j < rc[s]; ++j) EXPECT_EQ(recv[rd[s] + j], 100 * s + me);
}

TEST(MpiCommunicatorTest, SendRecvRingAndBroadcast) {
  Communicator& w = World();
  const int n = w.size(), me = w.rank();
  float token = static_cast<float>(me);
  float got = -1.0f;
  if (me % 2 == 0) {
    w.Send(&token, 1, DType::kF32, (me + 1) % n);
    w.Recv(&got, 1, DType::kF32, (me + n - 1) % n);
  } else {
    w.Recv(&got, 1, DType::kF32, (me + n - 1) % n);
    w.Send(&token, 1, DType::kF32, (me + 1) % n);
  }
  EXPECT_EQ(got, (me + n - 1) % n);
  std::vector<uint8_t> bytes;
  if (me == n - 1) bytes = {1, 2, 3, 4, 5};
  w.BroadcastBytes(&bytes, n - 1);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3, 4, 5}));
}

TEST(MpiCommunicatorTest, SplitMakesIndependentGroups) {
  Communicator& w = World();
  auto group = w.Split(w.rank() % 2, w.rank(), "parity");
  EXPECT_EQ(group->size(), (w.size() + 1 - w.rank() % 2) / 2);
  float v = 1.0f;
  group->AllReduceSum(&v, 1, DType::kF32);
  EXPECT_EQ(v, group->size());
  EXPECT_EQ(group->name(), "parity");
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {  // one report is enough; failures on any rank still fail the exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int result = RUN_ALL_TESTS();
  int worst = result;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
