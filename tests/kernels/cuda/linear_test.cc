// Linear (cuBLASLt bf16, fp32 compute) against the fp32 reference on the same bf16 inputs: odd
// sizes, the decode shape, and operands at unaligned offsets (as MoE expert slices are); every
// algorithm the autotuner may pick (kernels/cuda/gemm.h), a tuning bucket's winner reused for
// other m, and a first call inside a graph capture. With TESSERA_GEMM_BENCH=1, also a benchmark
// of Qwen3-14B's projections: cuBLASLt's heuristic top-1 against the tuned choice.
// The decode GEMV (kernels/cuda/gemv.h, Linear's path where GemvPreferred, with aligned operands
// and k % 8 == 0; it computes any m <= 8): every rows-per-block variant against the reference, odd
// n, k not a multiple of 8 and unaligned offsets (which fall back to cuBLASLt), bit-identical
// repeats and graph replay with new inputs; with TESSERA_GEMM_BENCH=1 a benchmark against cuBLASLt
// at m = 1, 2, 4, 8.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "kernels/cpu/reference.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

// m, n, k, and an element offset applied to x, w and y (0 = allocation-aligned).
// Benchmark helpers. Enough copies of an n x k bf16 weight to exceed the L2 cache (calls rotate
// through them, so every call reads its weight from memory).
std::vector<DeviceBuffer> RotatingWeights(Backend& gpu, int n, int k) {
  const size_t w_bytes = size_t{2} * n * k;
  const int copies = static_cast<int>(std::clamp<size_t>((256u << 20) / w_bytes + 1, 1, 8));
  std::vector<DeviceBuffer> ws;
  for (int c = 0; c < copies; ++c) {
    ws.push_back(gpu.Allocate(w_bytes));
    gpu.FillRandom(ws.back().data(), DType::kBF16, size_t{1} * n * k, 100 + c, 0, 0.05f);
  }
  return ws;
}

// Microseconds per call(c) (c counts the calls): one timed call sizes runs of about `run_ms`,
// then the median of 5 timed runs.
float MedianMicrosPerCall(cudaStream_t stream, cudaEvent_t start, cudaEvent_t stop,
                          const std::function<void(int)>& call, float run_ms) {
  cudaEventRecord(start, stream);
  call(1);
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float one = 0;
  cudaEventElapsedTime(&one, start, stop);
  const int calls = std::clamp(static_cast<int>(run_ms / std::max(one, 1e-3f)), 4, 2000);
  std::vector<float> runs;
  for (int r = 0; r < 5; ++r) {
    cudaEventRecord(start, stream);
    for (int c = 0; c < calls; ++c) call(c);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    runs.push_back(ms * 1000.0f / calls);
  }
  std::sort(runs.begin(), runs.end());
  return runs[2];
}

class CudaLinearTest : public testing::CudaParamTest<std::tuple<int, int, int, int>> {};

TEST_P(CudaLinearTest, MatchesReference) {
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(m * 1000003 + n * 1009 + k + offset);
  auto x = testing::RandomBf16(offset + m * k, rng);
  auto w = testing::RandomBf16(offset + n * k, rng);
  std::vector<float> ref(m * n);
  cpu::Linear(x.data() + offset, w.data() + offset, m, n, k, ref.data());

  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), offset + m * n);
  gpu().Linear(dx.as<uint16_t>() + offset, dw.as<uint16_t>() + offset, m, n, k,
               dy.as<uint16_t>() + offset);
  auto y = testing::DownloadBf16(gpu(), dy, offset + m * n);
  y.erase(y.begin(), y.begin() + offset);
  char what[64];
  std::snprintf(what, sizeof(what), "Linear m=%d n=%d k=%d offset=%d", m, n, k, offset);
  testing::ExpectRelativeL2(what, y, ref, kOneRounding);
}

TEST_P(CudaLinearTest, RepeatsBitForBit) {
  // The cached plan gives the same bits on a second call (no nondeterministic split-K).
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(7 * m + n + k);
  auto x = testing::RandomBf16(m * k, rng), w = testing::RandomBf16(n * k, rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer y1 = gpu().Allocate(m * n * 2), y2 = gpu().Allocate(m * n * 2);
  gpu().Linear(dx.data(), dw.data(), m, n, k, y1.data());
  gpu().Linear(dx.data(), dw.data(), m, n, k, y2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), y1, m * n),
            testing::DownloadRaw<uint16_t>(gpu(), y2, m * n));
}

TEST_P(CudaLinearTest, EveryCandidateMatchesReference) {
  // Tuning may cache any algorithm the heuristic lists (split-K ones included): each must be right.
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(m * 31 + n * 7 + k * 3 + offset);
  auto x = testing::RandomBf16(offset + m * k, rng);
  auto w = testing::RandomBf16(offset + n * k, rng);
  std::vector<float> ref(m * n);
  cpu::Linear(x.data() + offset, w.data() + offset, m, n, k, ref.data());
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu().Allocate(kWorkspace);
  cuda::LtGemm gemm(workspace.data(), kWorkspace);
  const auto* xp = dx.as<__nv_bfloat16>() + offset;
  const auto* wp = dw.as<__nv_bfloat16>() + offset;
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), offset + m * n);
  const int count = gemm.CandidateCount(xp, wp, m, n, k, dy.as<__nv_bfloat16>() + offset);
  ASSERT_GT(count, 0);
  for (int i = 0; i < count; ++i) {
    dy = testing::PoisonedBf16(gpu(), offset + m * n);
    gemm.LinearWithCandidate(i, xp, wp, m, n, k, dy.as<__nv_bfloat16>() + offset,
                             static_cast<cudaStream_t>(gpu().stream()));
    auto y = testing::DownloadBf16(gpu(), dy, offset + m * n);
    y.erase(y.begin(), y.begin() + offset);
    char what[96];
    std::snprintf(what, sizeof(what), "Linear m=%d n=%d k=%d offset=%d candidate %d/%d", m, n, k,
                  offset, i, count);
    testing::ExpectRelativeL2(what, y, ref, kOneRounding);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaLinearTest,
    ::testing::Values(std::make_tuple(1, 1, 1, 0), std::make_tuple(3, 5, 7, 0),
                      std::make_tuple(17, 65, 33, 0), std::make_tuple(1, 1000, 64, 0),
                      std::make_tuple(1, 2048, 1024, 0), std::make_tuple(37, 257, 130, 0),
                      std::make_tuple(256, 384, 512, 0), std::make_tuple(300, 1536, 1024, 0),
                      std::make_tuple(5, 96, 64, 1), std::make_tuple(9, 33, 17, 3),
                      std::make_tuple(64, 128, 256, 8)));

// The backend with tuning on (TESSERA_GEMM_TUNE=1 while it is made).
class CudaLinearTuningTest : public testing::CudaTest {
 protected:
  void SetUp() override {
    const char* before = std::getenv("TESSERA_GEMM_TUNE");
    const std::string saved = before ? before : "";
    setenv("TESSERA_GEMM_TUNE", "1", 1);
    testing::CudaTest::SetUp();
    if (before) {
      setenv("TESSERA_GEMM_TUNE", saved.c_str(), 1);
    } else {
      unsetenv("TESSERA_GEMM_TUNE");
    }
  }
};

// y = x @ w^T on the backend for m rows, against the reference.
void CheckLinear(Backend& gpu, int m, int n, int k, uint32_t seed) {
  std::mt19937 rng(seed);
  auto x = testing::RandomBf16(m * k, rng), w = testing::RandomBf16(n * k, rng);
  std::vector<float> ref(m * n);
  cpu::Linear(x.data(), w.data(), m, n, k, ref.data());
  DeviceBuffer dx = testing::UploadBf16(gpu, x), dw = testing::UploadBf16(gpu, w);
  DeviceBuffer dy = testing::PoisonedBf16(gpu, m * n);
  gpu.Linear(dx.data(), dw.data(), m, n, k, dy.data());
  char what[64];
  std::snprintf(what, sizeof(what), "Linear m=%d n=%d k=%d", m, n, k);
  testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu, dy, m * n), ref, kOneRounding);
}

TEST_F(CudaLinearTuningTest, BucketWinnerServesOtherRows) {
  // m = 200 is tuned for its bucket (256); 129 and 256 reuse the winner (or, where cuBLASLt
  // rejects it for their shape, their heuristic choice).
  for (const int m : {200, 129, 256, 131}) CheckLinear(gpu(), m, 320, 192, 11 * m);
  EXPECT_EQ(cuda::TuneBucket(1), 1);
  EXPECT_EQ(cuda::TuneBucket(16), 16);
  EXPECT_EQ(cuda::TuneBucket(17), 24);
  EXPECT_EQ(cuda::TuneBucket(100), 128);
  EXPECT_EQ(cuda::TuneBucket(129), 256);
  EXPECT_EQ(cuda::TuneBucket(4096), 4096);
  EXPECT_EQ(cuda::TuneBucket(4097), 8192);
}

TEST_F(CudaLinearTuningTest, RepeatsBitForBit) {
  // The first call tunes (and computes y again with the winner); the second reuses the winner.
  const int m = 5, n = 700, k = 320;
  std::mt19937 rng(17);
  auto x = testing::RandomBf16(m * k, rng), w = testing::RandomBf16(n * k, rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer y1 = gpu().Allocate(m * n * 2), y2 = gpu().Allocate(m * n * 2);
  gpu().Linear(dx.data(), dw.data(), m, n, k, y1.data());
  gpu().Linear(dx.data(), dw.data(), m, n, k, y2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), y1, m * n),
            testing::DownloadRaw<uint16_t>(gpu(), y2, m * n));
}

TEST_F(CudaLinearTuningTest, FirstCallInsideCaptureIsRightThenTuned) {
  // Inside a capture nothing is timed (the heuristic's choice is recorded); the next direct call
  // tunes. Both results are right.
  if (!gpu().CanCaptureGraphs()) GTEST_SKIP() << "no graph capture";
  const int m = 7, n = 1000, k = 384;
  std::mt19937 rng(5);
  auto x = testing::RandomBf16(m * k, rng), w = testing::RandomBf16(n * k, rng);
  std::vector<float> ref(m * n);
  cpu::Linear(x.data(), w.data(), m, n, k, ref.data());
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), m * n);
  gpu().BeginCapture();
  gpu().Linear(dx.data(), dw.data(), m, n, k, dy.data());
  auto graph = gpu().EndCapture();
  ASSERT_NE(graph, nullptr);
  graph->Replay();
  testing::ExpectRelativeL2("captured Linear", testing::DownloadBf16(gpu(), dy, m * n), ref,
                            kOneRounding);
  dy = testing::PoisonedBf16(gpu(), m * n);
  gpu().Linear(dx.data(), dw.data(), m, n, k, dy.data());
  testing::ExpectRelativeL2("tuned Linear", testing::DownloadBf16(gpu(), dy, m * n), ref,
                            kOneRounding);
}

// TESSERA_GEMM_BENCH=1: Qwen3-14B's projections (unsharded) at decode and prefill row counts,
// cuBLASLt's heuristic top-1 (the default: tuning off) against the tuned choice (the heuristic
// list, then with the split-K candidates too, TESSERA_GEMM_TUNE=1's choice). NOTE:
// weights rotate through enough copies to exceed the 50 MB L2, as in a model step where every
// layer's weights stream from memory; times are medians of 5 runs of ~20 ms each, after the first
// call (which tunes) and a warm-up.
TEST_F(CudaLinearTuningTest, Qwen3Benchmark) {
  const char* env = std::getenv("TESSERA_GEMM_BENCH");
  if (env == nullptr || std::strcmp(env, "1") != 0) GTEST_SKIP() << "TESSERA_GEMM_BENCH=1 runs it";
  const auto stream = static_cast<cudaStream_t>(gpu().stream());
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu().Allocate(kWorkspace);
  cudaEvent_t start, stop;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  struct Shape {
    const char* name;
    int n, k;
  };
  const Shape shapes[] = {{"qkv", 7168, 5120},
                          {"o_proj", 5120, 5120},
                          {"gate_up", 34816, 5120},
                          {"down", 5120, 17408},
                          {"lm_head", 151936, 5120}};
  std::printf("%-8s %5s %6s %5s | %22s | %22s | %22s | %6s %8s\n", "shape", "m", "n", "k",
              "heuristic us TF/s TB/s", "tuned us TF/s TB/s", "+splitK us TF/s TB/s", "gain",
              "tune ms");
  for (const Shape& s : shapes) {
    const std::vector<DeviceBuffer> ws = RotatingWeights(gpu(), s.n, s.k);
    const int copies = static_cast<int>(ws.size());
    for (const int m : {1, 16, 64, 4096}) {
      DeviceBuffer x = gpu().Allocate(size_t{2} * m * s.k);
      gpu().FillRandom(x.data(), DType::kBF16, size_t{1} * m * s.k, 7, 0, 1.0f);
      DeviceBuffer y = gpu().Allocate(size_t{2} * m * s.n);
      const auto* xp = x.as<__nv_bfloat16>();
      auto* yp = y.as<__nv_bfloat16>();
      const double flops = 2.0 * m * s.n * s.k;
      const double bytes = 2.0 * (double(m) * s.k + double(s.n) * s.k + double(m) * s.n);
      double us[3], tune_ms[3];
      std::vector<float> first_rows[3];
      const int check_rows = std::min(m, 16);
      for (int variant = 0; variant < 3; ++variant) {
        cuda::LtGemm gemm(workspace.data(), kWorkspace);
        gemm.set_tuning(variant > 0);
        gemm.set_split_k_candidates(variant == 2);
        auto call = [&](int c) {
          gemm.Linear(xp, ws[c % copies].as<__nv_bfloat16>(), m, s.n, s.k, yp, stream);
        };
        gpu().Synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        call(0);
        gpu().Synchronize();
        tune_ms[variant] =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        first_rows[variant] = testing::DownloadBf16(gpu(), y, size_t{1} * check_rows * s.n);
        for (int c = 0; c < 3; ++c) call(c);
        us[variant] = MedianMicrosPerCall(stream, start, stop, call, 20.0f);
      }
      // Different algorithms round differently. With fp32 sums each is within u of the exact
      // product, so the tuned ones within 2u of each other; the old heuristic may sum split-K
      // partials in bf16 (a rounding more): 3u.
      char what[96];
      std::snprintf(what, sizeof(what), "%s m=%d: tuned vs tuned without split-K (%d rows)", s.name,
                    m, check_rows);
      testing::ExpectRelativeL2(what, first_rows[2], first_rows[1], 2 * kOneRounding);
      std::snprintf(what, sizeof(what), "%s m=%d: tuned vs heuristic (%d rows)", s.name, m,
                    check_rows);
      testing::ExpectRelativeL2(what, first_rows[2], first_rows[0], 3 * kOneRounding);
      char cols[3][32];
      for (int v = 0; v < 3; ++v) {
        std::snprintf(cols[v], sizeof(cols[v]), "%8.1f %6.1f %5.2f", us[v], flops / us[v] * 1e-6,
                      bytes / us[v] * 1e-6);
      }
      std::printf("%-8s %5d %6d %5d | %22s | %22s | %22s | %5.2fx %8.1f\n", s.name, m, s.n, s.k,
                  cols[0], cols[1], cols[2], us[0] / us[2], tune_ms[2]);
      std::fflush(stdout);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

using CudaGemvGraphTest = testing::CudaTest;

// m, n, k, element offset of x, w and y: shapes in the GEMV's range (m <= 8).
class CudaGemvTest : public testing::CudaParamTest<std::tuple<int, int, int, int>> {};

TEST_P(CudaGemvTest, MatchesReference) {
  // Through the backend (the GEMV where GemvPreferred; cuBLASLt for other m, k % 8 != 0 or
  // unaligned operands), then the GEMV launched directly with each rows-per-block variant.
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(m * 7919 + n * 31 + k * 3 + offset);
  auto x = testing::RandomBf16(offset + m * k, rng);
  auto w = testing::RandomBf16(offset + size_t{1} * n * k, rng);
  std::vector<float> ref(size_t{1} * m * n);
  cpu::Linear(x.data() + offset, w.data() + offset, m, n, k, ref.data());
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  const auto* xp = dx.as<__nv_bfloat16>() + offset;
  const auto* wp = dw.as<__nv_bfloat16>() + offset;
  const bool gemv = cuda::GemvSupported(xp, wp, m, k);
  EXPECT_EQ(gemv, m <= 8 && k % 8 == 0 && offset % 8 == 0);
  for (const int rows : {-1, 0, 1, 2, 4}) {  // -1: through the backend
    if (rows >= 0 && !gemv) break;
    DeviceBuffer dy = testing::PoisonedBf16(gpu(), offset + size_t{1} * m * n);
    auto* yp = dy.as<__nv_bfloat16>() + offset;
    if (rows < 0) {
      gpu().Linear(xp, wp, m, n, k, yp);
    } else {
      cuda::LaunchGemv(xp, wp, m, n, k, yp, static_cast<cudaStream_t>(gpu().stream()), rows);
    }
    auto y = testing::DownloadBf16(gpu(), dy, offset + size_t{1} * m * n);
    y.erase(y.begin(), y.begin() + offset);
    char what[96];
    std::snprintf(what, sizeof(what), "%s m=%d n=%d k=%d offset=%d rows/block=%d",
                  rows < 0 ? "Linear" : "GEMV", m, n, k, offset, rows);
    testing::ExpectRelativeL2(what, y, ref, kOneRounding);
  }
}

TEST_P(CudaGemvTest, RepeatsBitForBit) {
  const auto [m, n, k, offset] = GetParam();
  std::mt19937 rng(3 * m + n + k + offset);
  auto x = testing::RandomBf16(size_t{1} * m * k, rng);
  auto w = testing::RandomBf16(size_t{1} * n * k, rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x), dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer y1 = gpu().Allocate(size_t{2} * m * n), y2 = gpu().Allocate(size_t{2} * m * n);
  gpu().Linear(dx.data(), dw.data(), m, n, k, y1.data());
  gpu().Linear(dx.data(), dw.data(), m, n, k, y2.data());
  EXPECT_EQ(testing::DownloadRaw<uint16_t>(gpu(), y1, size_t{1} * m * n),
            testing::DownloadRaw<uint16_t>(gpu(), y2, size_t{1} * m * n));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaGemvTest,
    ::testing::Values(std::make_tuple(1, 1, 8, 0), std::make_tuple(1, 7, 2056, 0),
                      std::make_tuple(2, 1001, 1288, 0), std::make_tuple(3, 513, 520, 0),
                      std::make_tuple(4, 3, 4104, 0), std::make_tuple(5, 999, 264, 0),
                      std::make_tuple(6, 131, 5120, 0), std::make_tuple(7, 257, 776, 0),
                      std::make_tuple(8, 1791, 1280, 0), std::make_tuple(8, 33, 17400, 0),
                      std::make_tuple(1, 4097, 136, 0), std::make_tuple(3, 65, 130, 0),
                      std::make_tuple(1, 100, 1000, 8), std::make_tuple(2, 77, 64, 1),
                      std::make_tuple(8, 129, 256, 3), std::make_tuple(9, 101, 256, 0)));

// The GEMV captured in a graph (as decode steps are), replayed after x changes in place.
TEST_F(CudaGemvGraphTest, ReplaysWithNewInputs) {
  if (!gpu().CanCaptureGraphs()) GTEST_SKIP() << "no graph capture";
  const int m = 2, n = 1001, k = 2056;
  std::mt19937 rng(29);
  auto w = testing::RandomBf16(size_t{1} * n * k, rng);
  DeviceBuffer dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer dx = gpu().Allocate(size_t{2} * m * k);
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), size_t{1} * m * n);
  ASSERT_TRUE(cuda::GemvPreferred(m, n, k) &&
              cuda::GemvSupported(dx.as<__nv_bfloat16>(), dw.as<__nv_bfloat16>(), m, k));
  gpu().BeginCapture();
  gpu().Linear(dx.data(), dw.data(), m, n, k, dy.data());
  auto graph = gpu().EndCapture();
  ASSERT_NE(graph, nullptr);
  for (int step = 0; step < 2; ++step) {
    auto x = testing::RandomBf16(size_t{1} * m * k, rng);
    gpu().UploadFloat(dx.data(), DType::kBF16, x.data(), x.size());
    std::vector<float> ref(size_t{1} * m * n);
    cpu::Linear(x.data(), w.data(), m, n, k, ref.data());
    graph->Replay();
    char what[48];
    std::snprintf(what, sizeof(what), "captured GEMV, replay %d", step);
    testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, size_t{1} * m * n), ref,
                              kOneRounding);
  }
}

// TESSERA_GEMM_BENCH=1: the GEMV (its own pick of rows per block, and each variant) against
// cuBLASLt's heuristic top-1 on Qwen3-14B's projections, unsharded and as TP4 shards, at
// m = 1, 2, 4, 8. Weights rotate through copies larger than L2 together; medians of 5 runs of
// ~10 ms of back-to-back calls. TB/s counts w, x and y once.
TEST_F(CudaGemvGraphTest, Benchmark) {
  const char* env = std::getenv("TESSERA_GEMM_BENCH");
  if (env == nullptr || std::strcmp(env, "1") != 0) GTEST_SKIP() << "TESSERA_GEMM_BENCH=1 runs it";
  const auto stream = static_cast<cudaStream_t>(gpu().stream());
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu().Allocate(kWorkspace);
  cuda::LtGemm gemm(workspace.data(), kWorkspace);
  cudaEvent_t start, stop;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  struct Shape {
    const char* name;
    int n, k;
  };
  const Shape shapes[] = {
      {"qkv", 7168, 5120},      {"o_proj", 5120, 5120},    {"gate_up", 34816, 5120},
      {"down", 5120, 17408},    {"lm_head", 151936, 5120}, {"qkv/4", 1792, 5120},
      {"o_proj/4", 5120, 1280}, {"gate_up/4", 8704, 5120}, {"down/4", 5120, 4352}};
  std::printf("%-9s %2s %6s %5s | %13s | %13s %4s | %13s | %13s | %13s\n", "shape", "m", "n", "k",
              "cuBLASLt us TB/s", "GEMV us TB/s", "rows", "rows=1", "rows=2", "rows=4");
  for (const Shape& s : shapes) {
    const std::vector<DeviceBuffer> ws = RotatingWeights(gpu(), s.n, s.k);
    const int copies = static_cast<int>(ws.size());
    for (const int m : {1, 2, 4, 8}) {
      DeviceBuffer x = gpu().Allocate(size_t{2} * m * s.k);
      gpu().FillRandom(x.data(), DType::kBF16, size_t{1} * m * s.k, 7, 0, 1.0f);
      DeviceBuffer y = gpu().Allocate(size_t{2} * m * s.n);
      const auto* xp = x.as<__nv_bfloat16>();
      auto* yp = y.as<__nv_bfloat16>();
      const double bytes = 2.0 * (double(m) * s.k + double(s.n) * s.k + double(m) * s.n);
      // variant 0: cuBLASLt; 1: the GEMV's own pick; 2, 3, 4: rows per block 1, 2, 4.
      double us[5];
      std::vector<float> out[2];
      for (int variant = 0; variant < 5; ++variant) {
        auto call = [&](int c) {
          const auto* wp = ws[c % copies].as<__nv_bfloat16>();
          if (variant == 0) {
            gemm.Linear(xp, wp, m, s.n, s.k, yp, stream);
          } else {
            cuda::LaunchGemv(xp, wp, m, s.n, s.k, yp, stream,
                             variant == 1 ? 0 : 1 << (variant - 2));
          }
        };
        call(0);
        if (variant < 2) out[variant] = testing::DownloadBf16(gpu(), y, size_t{1} * m * s.n);
        for (int c = 0; c < copies; ++c) call(c);
        us[variant] = MedianMicrosPerCall(stream, start, stop, call, 10.0f);
      }
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      char what[64];
      std::snprintf(what, sizeof(what), "%s m=%d: GEMV vs cuBLASLt", s.name, m);
      testing::ExpectRelativeL2(what, out[1], out[0], 2 * kOneRounding);
      char cols[5][24];
      for (int v = 0; v < 5; ++v)
        std::snprintf(cols[v], sizeof(cols[v]), "%7.1f %5.2f", us[v], bytes / us[v] * 1e-6);
      std::printf("%-9s %2d %6d %5d | %13s | %13s %4d | %13s | %13s | %13s\n", s.name, m, s.n, s.k,
                  cols[0], cols[1], cuda::GemvRowsPerBlock(m, s.n, s.k), cols[2], cols[3], cols[4]);
      std::fflush(stdout);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

}  // namespace
}  // namespace tessera
