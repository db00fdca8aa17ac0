// NcclCommunicator under mpirun, one rank per GPU: every collective on device buffers (bf16, f32,
// int32) against values each rank can compute alone, host buffers through the same communicator
// (they go over MPI), and sub-communicators from Split. Skips itself without enough GPUs.
#include <mpi.h>

#include <numeric>

#include <gtest/gtest.h>

#include "kernels/base/dtype.h"
#include "kernels/ops.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace tessera {
namespace {

struct Rank {
  std::unique_ptr<Communicator> mpi;
  std::unique_ptr<Backend> gpu;
  std::unique_ptr<Communicator> nccl;
};

// Null when this machine has fewer GPUs than ranks (the same answer on every rank of one node).
Rank* Get() {
  static Rank* rank = [] {
    auto r = new Rank;
    r->mpi = MakeMpiCommunicator(MPI_COMM_WORLD, "mpi");
    if (CudaDeviceCount() < r->mpi->size()) return static_cast<Rank*>(nullptr);
    r->gpu = MakeCudaBackend(r->mpi->rank() % CudaDeviceCount());
    r->nccl = MakeNcclCommunicator(*r->mpi, r->gpu->stream(), "world");
    return r;
  }();
  return rank;
}

#define REQUIRE_GPUS()                                                                   \
  Rank* rank = Get();                                                                    \
  if (rank == nullptr) GTEST_SKIP() << "fewer CUDA devices than ranks: NCCL is not run"; \
  Communicator& w = *rank->nccl;                                                         \
  Backend& gpu = *rank->gpu

template <typename T>
DeviceBuffer ToDevice(Backend& gpu, const std::vector<T>& v) {
  DeviceBuffer b = gpu.Allocate(std::max<size_t>(1, v.size()) * sizeof(T));
  gpu.CopyToDevice(b.data(), v.data(), v.size() * sizeof(T));
  return b;
}
template <typename T>
std::vector<T> ToHost(Backend& gpu, const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  gpu.CopyToHost(v.data(), b.data(), n * sizeof(T));
  return v;
}

TEST(NcclCommunicatorTest, AllReduceSumsBf16AndF32OnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  std::vector<uint16_t> h(5);
  for (int i = 0; i < 5; ++i) h[i] = FloatToBF16(static_cast<float>(me + i));  // small ints: exact
  DeviceBuffer d = ToDevice(gpu, h);
  w.AllReduceSum(d.data(), 5, DType::kBF16);
  const auto got = ToHost<uint16_t>(gpu, d, 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(BF16ToFloat(got[i]), n * i + n * (n - 1) / 2.0f) << i;
  std::vector<float> f = {1.5f * me, -2.0f};
  DeviceBuffer df = ToDevice(gpu, f);
  w.AllReduceSum(df.data(), 2, DType::kF32);
  const auto gf = ToHost<float>(gpu, df, 2);
  EXPECT_FLOAT_EQ(gf[0], 1.5f * n * (n - 1) / 2);
  EXPECT_FLOAT_EQ(gf[1], -2.0f * n);
}

TEST(NcclCommunicatorTest, HostBuffersGoOverMpi) {
  REQUIRE_GPUS();
  (void)gpu;
  const int n = w.size();
  std::vector<float> f = {1.0f};
  w.AllReduceSum(f.data(), 1, DType::kF32);
  EXPECT_EQ(f[0], n);
  std::vector<int64_t> mine = {w.rank()}, all(n);
  w.AllGather(mine.data(), all.data(), 1, DType::kI64);
  for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], r);
}

TEST(NcclCommunicatorTest, AllGatherAndAllGatherVOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  DeviceBuffer send = ToDevice(gpu, std::vector<float>{1.0f * me, 10.0f * me});
  DeviceBuffer recv = gpu.Allocate(2 * n * sizeof(float));
  w.AllGather(send.data(), recv.data(), 2, DType::kF32);
  const auto all = ToHost<float>(gpu, recv, 2 * n);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(all[2 * r], r);
    EXPECT_EQ(all[2 * r + 1], 10 * r);
  }
  // Rank r contributes r elements (rank 0 none).
  std::vector<size_t> counts(n), displs(n);
  for (int r = 0; r < n; ++r) counts[r] = r;
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), size_t{0});
  const size_t total = displs.back() + counts.back();
  DeviceBuffer vsend = ToDevice(gpu, std::vector<int32_t>(me, 7 * me));
  DeviceBuffer vrecv = ToDevice(gpu, std::vector<int32_t>(total, -1));
  w.AllGatherV(vsend.data(), me, vrecv.data(), counts, displs, DType::kI32);
  const auto got = ToHost<int32_t>(gpu, vrecv, total);
  for (int r = 0; r < n; ++r)
    for (size_t j = 0; j < counts[r]; ++j) EXPECT_EQ(got[displs[r] + j], 7 * r);
}

TEST(NcclCommunicatorTest, ReduceScatterOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  std::vector<float> send(2 * n);
  for (int i = 0; i < 2 * n; ++i) send[i] = static_cast<float>(i + me);
  DeviceBuffer ds = ToDevice(gpu, send), dr = gpu.Allocate(2 * sizeof(float));
  w.ReduceScatterSum(ds.data(), dr.data(), 2, DType::kF32);
  const auto got = ToHost<float>(gpu, dr, 2);
  for (int j = 0; j < 2; ++j)
    EXPECT_FLOAT_EQ(got[j], n * static_cast<float>(2 * me + j) + n * (n - 1) / 2.0f);
}

TEST(NcclCommunicatorTest, AllToAllVWithEmptyBlocksOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  // Rank s sends (s + d) % 3 elements valued 100 s + d to rank d: some blocks are empty.
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  for (int d = 0; d < n; ++d) sc[d] = (me + d) % 3;
  for (int s = 0; s < n; ++s) rc[s] = (s + me) % 3;
  std::exclusive_scan(sc.begin(), sc.end(), sd.begin(), size_t{0});
  std::exclusive_scan(rc.begin(), rc.end(), rd.begin(), size_t{0});
  std::vector<int32_t> send(sd.back() + sc.back());
  for (int d = 0; d < n; ++d)
    for (size_t j = 0; j < sc[d]; ++j) send[sd[d] + j] = 100 * me + d;
  const size_t total = rd.back() + rc.back();
  DeviceBuffer ds = ToDevice(gpu, send), dr = ToDevice(gpu, std::vector<int32_t>(total, -1));
  w.AllToAllV(ds.data(), sc, sd, dr.data(), rc, rd, DType::kI32);
  const auto got = ToHost<int32_t>(gpu, dr, total);
  for (int s = 0; s < n; ++s)
    for (size_t j = 0; j < rc[s]; ++j) EXPECT_EQ(got[rd[s] + j], 100 * s + me);
}

TEST(NcclCommunicatorTest, SendRecvRingAndBroadcastOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  DeviceBuffer token = ToDevice(gpu, std::vector<float>{static_cast<float>(me)});
  DeviceBuffer got = ToDevice(gpu, std::vector<float>{-1.0f});
  if (me % 2 == 0) {
    w.Send(token.data(), 1, DType::kF32, (me + 1) % n);
    w.Recv(got.data(), 1, DType::kF32, (me + n - 1) % n);
  } else {
    w.Recv(got.data(), 1, DType::kF32, (me + n - 1) % n);
    w.Send(token.data(), 1, DType::kF32, (me + 1) % n);
  }
  EXPECT_EQ(ToHost<float>(gpu, got, 1)[0], (me + n - 1) % n);
  DeviceBuffer b = ToDevice(gpu, std::vector<int32_t>(3, me == n - 1 ? 42 : 0));
  w.Broadcast(b.data(), 3, DType::kI32, n - 1);
  EXPECT_EQ(ToHost<int32_t>(gpu, b, 3), (std::vector<int32_t>{42, 42, 42}));
}

TEST(NcclCommunicatorTest, SplitMakesIndependentGroups) {
  REQUIRE_GPUS();
  auto group = w.Split(w.rank() % 2, w.rank(), "parity");
  EXPECT_EQ(group->size(), (w.size() + 1 - w.rank() % 2) / 2);
  DeviceBuffer v = ToDevice(gpu, std::vector<float>{1.0f});
  group->AllReduceSum(v.data(), 1, DType::kF32);
  EXPECT_EQ(ToHost<float>(gpu, v, 1)[0], group->size());
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
