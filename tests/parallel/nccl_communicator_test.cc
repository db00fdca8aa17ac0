// NcclCommunicator under mpirun, one rank per GPU: every collective on device buffers (bf16, f32,
// int32) against values each rank can compute alone, host buffers through the same communicator
// (they go over MPI), and sub-communicators from Split. Collectives only enqueue: several run back
// to back with one host wait at the end, and an all-reduce is captured in a CUDA graph and
// replayed. Skips itself without enough GPUs.
//
// PeerAllReduceTest runs the one-shot peer-memory all-reduce (parallel/peer_allreduce.h) over the
// MPI communicator, without NCCL, so it also runs with several ranks on ONE GPU (CUDA IPC works
// between processes on one device; the kernels then take turns, so sizes and repeats stay small):
//   mpirun -np 2 nccl_communicator_test --gtest_filter='PeerAllReduce*'
// Its results must equal, bit for bit, the fp32 sum in rank order rounded once, on every rank.
//
// DISABLED_HungPeerEndsTheJob is run only by nccl_fault_test.py (it ends the process on purpose);
// DISABLED_PeerAllReduceGivesUpOnAHungPeer is run alone the same way (it leaves the process's
// peer error flag set).
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "kernels/base/dtype.h"
#include "kernels/cuda/peer_allreduce.h"
#include "kernels/ops.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/peer_allreduce.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

struct Rank {
  std::unique_ptr<Communicator> mpi;
  std::unique_ptr<Backend> gpu;         // null without a GPU
  std::unique_ptr<Communicator> nccl;   // null when this machine has fewer GPUs than ranks
  std::unique_ptr<PeerAllReduce> peer;  // over `mpi`; null when unavailable or turned off
};

// Made once, collectively (the same answers on every rank of one node).
Rank* Get() {
  static Rank* rank = [] {
    auto r = new Rank;
    r->mpi = MakeMpiCommunicator(MPI_COMM_WORLD, "mpi");
    const int gpus = CudaDeviceCount();
    if (gpus == 0) return r;
    r->gpu = MakeCudaBackend(r->mpi->rank() % gpus);
    if (gpus >= r->mpi->size()) r->nccl = MakeNcclCommunicator(*r->mpi, *r->gpu, "world");
    r->peer = PeerAllReduce::Make(*r->mpi, "peer", PeerAllReduceMaxBytesFromEnv());
    return r;
  }();
  return rank;
}

#define REQUIRE_GPUS()                                                                 \
  Rank* rank = Get();                                                                  \
  if (rank->nccl == nullptr) GTEST_SKIP() << "fewer CUDA devices than ranks: no NCCL"; \
  Communicator& w = *rank->nccl;                                                       \
  Backend& gpu = *rank->gpu

TEST(NcclCommunicatorTest, AllReduceSumsBf16AndF32OnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  std::vector<uint16_t> h(5);
  for (int i = 0; i < 5; ++i) h[i] = FloatToBF16(static_cast<float>(me + i));  // small ints: exact
  DeviceBuffer d = testing::UploadRaw(gpu, h);
  w.AllReduceSum(d.data(), 5, DType::kBF16);
  const auto got = testing::DownloadRaw<uint16_t>(gpu, d, 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(BF16ToFloat(got[i]), n * i + n * (n - 1) / 2.0f) << i;
  std::vector<float> f = {1.5f * me, -2.0f};
  DeviceBuffer df = testing::UploadRaw(gpu, f);
  w.AllReduceSum(df.data(), 2, DType::kF32);
  const auto gf = testing::DownloadRaw<float>(gpu, df, 2);
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
  DeviceBuffer send = testing::UploadRaw(gpu, std::vector<float>{1.0f * me, 10.0f * me});
  DeviceBuffer recv = gpu.Allocate(2 * n * sizeof(float));
  w.AllGather(send.data(), recv.data(), 2, DType::kF32);
  const auto all = testing::DownloadRaw<float>(gpu, recv, 2 * n);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(all[2 * r], r);
    EXPECT_EQ(all[2 * r + 1], 10 * r);
  }
  // Rank r contributes r elements (rank 0 none).
  std::vector<size_t> counts(n), displs(n);
  for (int r = 0; r < n; ++r) counts[r] = r;
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), size_t{0});
  const size_t total = displs.back() + counts.back();
  DeviceBuffer vsend = testing::UploadRaw(gpu, std::vector<int32_t>(me, 7 * me));
  DeviceBuffer vrecv = testing::UploadRaw(gpu, std::vector<int32_t>(total, -1));
  w.AllGatherV(vsend.data(), me, vrecv.data(), counts, displs, DType::kI32);
  const auto got = testing::DownloadRaw<int32_t>(gpu, vrecv, total);
  for (int r = 0; r < n; ++r)
    for (size_t j = 0; j < counts[r]; ++j) EXPECT_EQ(got[displs[r] + j], 7 * r);
}

TEST(NcclCommunicatorTest, ReduceScatterOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  std::vector<float> send(2 * n);
  for (int i = 0; i < 2 * n; ++i) send[i] = static_cast<float>(i + me);
  DeviceBuffer ds = testing::UploadRaw(gpu, send), dr = gpu.Allocate(2 * sizeof(float));
  w.ReduceScatterSum(ds.data(), dr.data(), 2, DType::kF32);
  const auto got = testing::DownloadRaw<float>(gpu, dr, 2);
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
  DeviceBuffer ds = testing::UploadRaw(gpu, send),
               dr = testing::UploadRaw(gpu, std::vector<int32_t>(total, -1));
  w.AllToAllV(ds.data(), sc, sd, dr.data(), rc, rd, DType::kI32);
  const auto got = testing::DownloadRaw<int32_t>(gpu, dr, total);
  for (int s = 0; s < n; ++s)
    for (size_t j = 0; j < rc[s]; ++j) EXPECT_EQ(got[rd[s] + j], 100 * s + me);
}

TEST(NcclCommunicatorTest, SendRecvRingAndBroadcastOnTheDevice) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  DeviceBuffer token = testing::UploadRaw(gpu, std::vector<float>{static_cast<float>(me)});
  DeviceBuffer got = testing::UploadRaw(gpu, std::vector<float>{-1.0f});
  if (me % 2 == 0) {
    w.Send(token.data(), 1, DType::kF32, (me + 1) % n);
    w.Recv(got.data(), 1, DType::kF32, (me + n - 1) % n);
  } else {
    w.Recv(got.data(), 1, DType::kF32, (me + n - 1) % n);
    w.Send(token.data(), 1, DType::kF32, (me + 1) % n);
  }
  EXPECT_EQ(testing::DownloadRaw<float>(gpu, got, 1)[0], (me + n - 1) % n);
  DeviceBuffer b = testing::UploadRaw(gpu, std::vector<int32_t>(3, me == n - 1 ? 42 : 0));
  w.Broadcast(b.data(), 3, DType::kI32, n - 1);
  EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu, b, 3), (std::vector<int32_t>{42, 42, 42}));
}

TEST(NcclCommunicatorTest, SplitMakesIndependentGroups) {
  REQUIRE_GPUS();
  auto group = w.Split(w.rank() % 2, w.rank(), "parity");
  EXPECT_EQ(group->size(), (w.size() + 1 - w.rank() % 2) / 2);
  DeviceBuffer v = testing::UploadRaw(gpu, std::vector<float>{1.0f});
  group->AllReduceSum(v.data(), 1, DType::kF32);
  EXPECT_EQ(testing::DownloadRaw<float>(gpu, v, 1)[0], group->size());
  EXPECT_EQ(group->name(), "parity");
}

TEST(NcclCommunicatorTest, BackToBackCollectivesNeedOneHostWait) {
  REQUIRE_GPUS();
  const int n = w.size(), me = w.rank();
  const size_t block = 1031;  // odd: not a multiple of any NCCL chunk
  // a[i] = me + i % 7 on rank `me`; after the all-reduce a[i] = n * (i % 7) + n(n-1)/2.
  std::vector<float> a(block * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(me + i % 7);
  DeviceBuffer da = testing::UploadRaw(gpu, a);
  DeviceBuffer db = gpu.Allocate(block * sizeof(float)),
               dc = gpu.Allocate(block * n * sizeof(float));
  DeviceBuffer dd = gpu.Allocate(block * n * sizeof(float));
  // Each reads the previous one's output: only the stream's order makes the results right.
  w.AllReduceSum(da.data(), a.size(), DType::kF32);              // a = sum
  w.ReduceScatterSum(da.data(), db.data(), block, DType::kF32);  // b = n * a[me block]
  w.AllGather(db.data(), dc.data(), block, DType::kF32);         // c = n * a
  std::vector<size_t> counts(n, block), displs(n);
  for (int r = 0; r < n; ++r) displs[r] = r * block;
  // d[r block + j] = rank r's c[me block + j]; then summed over ranks.
  w.AllToAllV(dc.data(), counts, displs, dd.data(), counts, displs, DType::kF32);
  w.AllReduceSum(dd.data(), block * n, DType::kF32);
  gpu.Synchronize();  // the one host wait
  const auto ga = testing::DownloadRaw<float>(gpu, da, a.size());
  const auto gc = testing::DownloadRaw<float>(gpu, dc, block * n);
  const auto gd = testing::DownloadRaw<float>(gpu, dd, block * n);
  // Small integers throughout: every sum is exact in fp32.
  auto sum = [&](size_t i) { return static_cast<float>(n * (i % 7)) + n * (n - 1) / 2.0f; };
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(ga[i], sum(i)) << i;
    ASSERT_EQ(gc[i], n * sum(i)) << i;
  }
  for (size_t j = 0; j < block; ++j) {
    float want = 0;
    for (int q = 0; q < n; ++q) want += n * sum(q * block + j);
    for (int r = 0; r < n; ++r) ASSERT_EQ(gd[r * block + j], want) << r << " " << j;
  }
}

TEST(NcclCommunicatorTest, AllReduceCapturedInACudaGraphReplays) {
  REQUIRE_GPUS();
  const int n = w.size();
  const size_t count = 4099;
  // Every rank starts from the same v[i] = 1 + i % 100, so each replay multiplies by n:
  // after 3 replays v = n^3 (1 + i % 100), exact in fp32 for any small n.
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = static_cast<float>(1 + i % 100);
  DeviceBuffer d = testing::UploadRaw(gpu, v);
  // bf16 too, scaled by 1/n when n is a power of two so each replay keeps the values: exact.
  std::vector<uint16_t> h(count);
  for (size_t i = 0; i < count; ++i) h[i] = FloatToBF16(static_cast<float>(1 + i % 100));
  DeviceBuffer dh = testing::UploadRaw(gpu, h);
  gpu.Synchronize();
  cudaStream_t stream = static_cast<cudaStream_t>(gpu.stream());
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  w.AllReduceSum(d.data(), count, DType::kF32);
  w.AllReduceSum(dh.data(), count, DType::kBF16);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  // Capturing ran nothing.
  EXPECT_EQ(testing::DownloadRaw<float>(gpu, d, count), v);
  for (int replay = 0; replay < 3; ++replay) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  const auto got = testing::DownloadRaw<float>(gpu, d, count);  // the host wait after the replays
  const auto goth = testing::DownloadRaw<uint16_t>(gpu, dh, count);
  const float n3 = static_cast<float>(n) * n * n;
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(got[i], n3 * v[i]) << i;
    // bf16: 1 + i % 100 needs 7 significant bits; times n^3 stays exact when n is a power of two.
    if ((n & (n - 1)) == 0) {
      ASSERT_EQ(BF16ToFloat(goth[i]), n3 * v[i]) << i;
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// The peer all-reduce's tests: every rank draws every rank's message from (seed, rank), so each
// can compute the one right answer, the fp32 sum in rank order rounded once, and compare bytes.
constexpr size_t kGuard = 8;  // elements after the message that must stay untouched

std::vector<float> Message(uint32_t seed, int rank, size_t count, DType dtype) {
  std::mt19937 rng(seed * 1000003u + static_cast<uint32_t>(rank));
  if (dtype == DType::kBF16) return testing::RandomBf16(count, rng);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint8_t> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> bytes(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kBF16) {
      const uint16_t b = FloatToBF16(v[i]);
      std::memcpy(&bytes[2 * i], &b, 2);
    } else {
      std::memcpy(&bytes[4 * i], &v[i], 4);
    }
  }
  return bytes;
}

// What every rank must hold after the all-reduce, as bytes.
std::vector<uint8_t> RankOrderSum(uint32_t seed, int ranks, size_t count, DType dtype) {
  std::vector<float> acc = Message(seed, 0, count, dtype);
  for (int r = 1; r < ranks; ++r) {
    const std::vector<float> m = Message(seed, r, count, dtype);
    for (size_t i = 0; i < count; ++i) acc[i] += m[i];
  }
  return Encode(acc, dtype);
}

// Rank `rank`'s message at element `offset`, between guards of 0xff bytes (NaN in both dtypes).
std::vector<uint8_t> Placed(uint32_t seed, int rank, size_t count, DType dtype, size_t offset) {
  const size_t es = DTypeSize(dtype);
  std::vector<uint8_t> bytes((offset + count + kGuard) * es, 0xff);
  const std::vector<uint8_t> m = Encode(Message(seed, rank, count, dtype), dtype);
  std::copy(m.begin(), m.end(), bytes.begin() + offset * es);
  return bytes;
}

uint64_t Fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Downloads `buf` and checks it: the guards untouched, the message equal to RankOrderSum byte for
// byte, and (over `comm`) the same bytes on every rank.
void ExpectRankOrderSum(Backend& gpu, Communicator& comm, const DeviceBuffer& buf, uint32_t seed,
                        size_t count, DType dtype, size_t offset, const std::string& what) {
  const size_t es = DTypeSize(dtype);
  const auto got = testing::DownloadRaw<uint8_t>(gpu, buf, (offset + count + kGuard) * es);
  const std::vector<uint8_t> want = RankOrderSum(seed, comm.size(), count, dtype);
  size_t wrong = 0, first = count;
  for (size_t i = 0; i < count * es; ++i) {
    if (got[offset * es + i] != want[i]) {
      ++wrong;
      first = std::min(first, i / es);
    }
  }
  EXPECT_EQ(wrong, 0u) << what << ": " << wrong << " bytes differ from the rank-order sum, "
                       << "first at element " << first;
  size_t guards = 0;
  for (size_t i = 0; i < offset * es; ++i) guards += got[i] != 0xff;
  for (size_t i = (offset + count) * es; i < got.size(); ++i) guards += got[i] != 0xff;
  EXPECT_EQ(guards, 0u) << what << ": bytes outside the message were written";
  const int64_t mine = static_cast<int64_t>(Fnv1a(got.data() + offset * es, count * es));
  std::vector<int64_t> all(comm.size());
  comm.AllGather(&mine, all.data(), 1, DType::kI64);  // host buffers: over MPI
  for (int r = 1; r < comm.size(); ++r) EXPECT_EQ(all[r], all[0]) << what << ": rank " << r;
}

#define REQUIRE_PEER()                                                                 \
  Rank* rank = Get();                                                                  \
  if (rank->gpu == nullptr) GTEST_SKIP() << "no CUDA device";                          \
  if (rank->peer == nullptr)                                                           \
    GTEST_SKIP() << "no peer all-reduce here (see the log line), or it is turned off"; \
  Communicator& comm = *rank->mpi;                                                     \
  Backend& gpu = *rank->gpu;                                                           \
  PeerAllReduce& peer = *rank->peer;                                                   \
  cudaStream_t stream = static_cast<cudaStream_t>(gpu.stream())

TEST(PeerAllReduceTest, SumsInRankOrderBitIdenticalOnEveryRank) {
  REQUIRE_PEER();
  const int me = comm.rank();
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    const size_t es = DTypeSize(dtype), max_count = peer.max_bytes() / es;
    // Odd sizes, sizes under one vector and one block range, and the largest it takes.
    for (size_t count : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{33}, size_t{1031},
                         size_t{5120}, size_t{40003}, max_count - 1, max_count}) {
      if (count > max_count) continue;  // a small TESSERA_CUSTOM_ALLREDUCE_MAX_KB
      ASSERT_TRUE(peer.Covers(count, dtype));
      const uint32_t seed = static_cast<uint32_t>(count * 2 + (dtype == DType::kF32));
      // NOTE: the offset differs between ranks: one rank's alignment must not matter to another.
      const size_t offset = (me + count) % 3;
      DeviceBuffer d = testing::UploadRaw(gpu, Placed(seed, me, count, dtype, offset));
      peer.AllReduceSum(static_cast<char*>(d.data()) + offset * es, count, dtype, stream);
      ExpectRankOrderSum(gpu, comm, d, seed, count, dtype, offset,
                         std::string(DTypeName(dtype)) + " x " + std::to_string(count));
    }
    EXPECT_FALSE(peer.Covers(max_count + 1, dtype));
  }
  EXPECT_FALSE(PeerAllReduceFailed());
}

TEST(PeerAllReduceTest, ReplaysFromACudaGraphWithFreshInputs) {
  REQUIRE_PEER();
  const int me = comm.rank();
  struct Case {
    size_t count;
    DType dtype;
    size_t offset;
  };
  const std::vector<Case> cases = {{1031, DType::kBF16, 0},
                                   {777, DType::kF32, 1},
                                   {5120, DType::kBF16, static_cast<size_t>(me % 2)},
                                   {3, DType::kBF16, 0}};
  std::vector<DeviceBuffer> bufs;
  for (const Case& c : cases) bufs.push_back(gpu.Allocate((c.offset + c.count + kGuard) * 8));
  gpu.Synchronize();
  gpu.BeginCapture();
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    peer.AllReduceSum(static_cast<char*>(bufs[k].data()) + c.offset * DTypeSize(c.dtype), c.count,
                      c.dtype, stream);
  }
  const std::unique_ptr<DeviceGraph> graph = gpu.EndCapture();
  ASSERT_NE(graph, nullptr);
  // 4 calls a replay: both halves of the slot, many times over.
  for (int replay = 0; replay < 25; ++replay) {
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const std::vector<uint8_t> bytes =
          Placed(static_cast<uint32_t>(100 * replay + k), me, c.count, c.dtype, c.offset);
      gpu.CopyToDevice(bufs[k].data(), bytes.data(), bytes.size());  // stream-ordered
    }
    graph->Replay();
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      ExpectRankOrderSum(gpu, comm, bufs[k], static_cast<uint32_t>(100 * replay + k), c.count,
                         c.dtype, c.offset,
                         "replay " + std::to_string(replay) + " case " + std::to_string(k));
    }
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_FALSE(PeerAllReduceFailed());
}

// Run alone (it leaves the process's error flag set and the ranks' epochs apart):
//   mpirun -np 2 nccl_communicator_test --gtest_also_run_disabled_tests
//       --gtest_filter='*GivesUpOnAHungPeer'
// The last rank stays away from the second all-reduce: the others' kernels must give up after the
// collective timeout and raise the flag the NCCL communicator's stream wait checks.
TEST(PeerAllReduceTest, DISABLED_GivesUpOnAHungPeer) {
  REQUIRE_PEER();
  CollectiveTimeoutSeconds() = 2;
  DeviceBuffer d = testing::UploadRaw(gpu, std::vector<float>(64, 1.0f));
  peer.AllReduceSum(d.data(), 64, DType::kF32, stream);
  gpu.Synchronize();
  EXPECT_FALSE(PeerAllReduceFailed());
  comm.Barrier();
  if (comm.rank() == comm.size() - 1) {
    // Back before the others' barrier times out.
    std::this_thread::sleep_for(std::chrono::seconds(3));
  } else {
    const auto start = std::chrono::steady_clock::now();
    peer.AllReduceSum(d.data(), 64, DType::kF32, stream);
    gpu.Synchronize();
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(PeerAllReduceFailed());
    EXPECT_GE(waited, 1.5);
    EXPECT_LT(waited, 3.0);
  }
  comm.Barrier();
}

// Not a check: the kernel's own cost, with two "ranks" in this one process on one GPU, each on its
// own stream (their kernels run side by side; slots in local memory, so no NVLink), captured in a
// graph of 32 back-to-back calls per rank. Run with -np 1:
//   nccl_communicator_test --gtest_also_run_disabled_tests --gtest_filter='*KernelTimeOnOneGpu'
TEST(PeerAllReduceTest, DISABLED_KernelTimeOnOneGpu) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  constexpr int kCalls = 32;
  const size_t max_bytes = size_t{1} << 20, slot = cuda::PeerSlotBytes(max_bytes);
  cuda::PeerAllReduceArgs args[2] = {};
  void* slots[2];
  void* data[2];
  void* error_bytes = nullptr;
  ASSERT_EQ(cudaMalloc(&error_bytes, sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMemset(error_bytes, 0, sizeof(int)), cudaSuccess);
  int* error = static_cast<int*>(error_bytes);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(cudaMalloc(&slots[r], slot), cudaSuccess);
    ASSERT_EQ(cudaMemset(slots[r], 0, slot), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&data[r], max_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(data[r], 0, max_bytes), cudaSuccess);
  }
  for (int r = 0; r < 2; ++r) {
    args[r].ranks = 2;
    args[r].rank = r;
    args[r].half_bytes = (slot - cuda::kPeerDataOffset) / 2;
    args[r].error = error;
    args[r].timeout_ns = 2000000000ull;
    for (int q = 0; q < 2; ++q) args[r].slots[q] = static_cast<char*>(slots[q]);
  }
  cudaStream_t s[2];
  cudaEvent_t fork, join, start, stop;
  for (auto& x : s) ASSERT_EQ(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking), cudaSuccess);
  for (cudaEvent_t* e : {&fork, &join, &start, &stop}) ASSERT_EQ(cudaEventCreate(e), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::printf("%10s %14s\n", "bytes", "us per call");
  for (size_t kb : {10, 32, 80, 256, 512, 1024}) {
    const size_t count = (kb << 10) / 2;
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(s[0], cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(fork, s[0]), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(s[1], fork, 0), cudaSuccess);
    for (int i = 0; i < kCalls; ++i) {
      for (int r = 0; r < 2; ++r) {
        cuda::LaunchPeerAllReduceSum(args[r], data[r], count, DType::kBF16, s[r]);
      }
    }
    ASSERT_EQ(cudaEventRecord(join, s[1]), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(s[0], join, 0), cudaSuccess);
    ASSERT_EQ(cudaStreamEndCapture(s[0], &graph), cudaSuccess);
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    std::vector<double> times;
    for (int rep = 0; rep < 23; ++rep) {
      ASSERT_EQ(cudaEventRecord(start, s[0]), cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(exec, s[0]), cudaSuccess);
      ASSERT_EQ(cudaEventRecord(stop, s[0]), cudaSuccess);
      ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
      float ms = 0;
      ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
      if (rep >= 3) times.push_back(ms * 1e3 / kCalls);
    }
    std::sort(times.begin(), times.end());
    std::printf("%10zu %14.2f\n", count * 2, times[times.size() / 2]);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  int failed = 0;
  ASSERT_EQ(cudaMemcpy(&failed, error, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(failed, 0) << "a kernel gave up waiting: the two streams did not run side by side";
}

// Through the NCCL communicator (one GPU per rank): messages up to the threshold take the peer
// path (bit-exact rank-order sums), the next size up goes to NCCL (bf16 roundings along its ring).
TEST(NcclCommunicatorTest, AllReducesUpToTheThresholdTakeThePeerPath) {
  REQUIRE_GPUS();
  const size_t max_bytes = CustomAllReduceMaxBytes(w);
  if (max_bytes == 0) GTEST_SKIP() << "the peer path is off or unavailable here";
  const int n = w.size(), me = w.rank();
  const size_t max_count = max_bytes / 2;
  for (size_t count : {size_t{5120}, size_t{5121}, max_count - 1, max_count, max_count + 1}) {
    const uint32_t seed = static_cast<uint32_t>(count);
    DeviceBuffer d = testing::UploadRaw(gpu, Placed(seed, me, count, DType::kBF16, 0));
    w.AllReduceSum(d.data(), count, DType::kBF16);
    const std::string what = "bf16 x " + std::to_string(count);
    if (count <= max_count) {
      ExpectRankOrderSum(gpu, *rank->mpi, d, seed, count, DType::kBF16, 0, what);
    } else {
      std::vector<float> want(count, 0.0f);
      for (int r = 0; r < n; ++r) {
        const std::vector<float> m = Message(seed, r, count, DType::kBF16);
        for (size_t i = 0; i < count; ++i) want[i] += m[i];
      }
      testing::ExpectRelativeL2(what.c_str(), testing::DownloadBf16(gpu, d, count), want,
                                (n - 1) * testing::kBf16Unit);
    }
  }
}

// Run alone by nccl_fault_test.py with a short TESSERA_COLLECTIVE_TIMEOUT: after one good
// all-reduce (connections up), the last rank hangs and the others enqueue another and wait for
// it. They must end the job (exit 3, "watchdog: rank R in stream wait after all_reduce"), not hang.
TEST(NcclCommunicatorTest, DISABLED_HungPeerEndsTheJob) {
  REQUIRE_GPUS();
  DeviceBuffer d = testing::UploadRaw(gpu, std::vector<float>(64, 1.0f));
  w.AllReduceSum(d.data(), 64, DType::kF32);
  gpu.Synchronize();
  if (w.rank() == w.size() - 1) {
    std::this_thread::sleep_for(std::chrono::hours(1));  // hung: never joins the next one
  }
  w.AllReduceSum(d.data(), 64, DType::kF32);  // returns at once: it only enqueues
  gpu.Synchronize();                          // never returns: the watchdog ends the job
  ADD_FAILURE() << "a hung peer did not end the job";
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
