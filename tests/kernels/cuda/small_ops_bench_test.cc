// Timings of the small memory-bound ops (norms, SiluMul, Add, row copies, q/k norm + RoPE, the
// KV-cache write and their fused form) at Qwen3-14B's decode and prefill shapes. Skipped unless
// TESSERA_SMALL_BENCH=1: it checks nothing, it prints one table.
//
// Each op is recorded kOpsPerGraph times back to back into a CUDA graph (decode steps replay
// graphs, so the gaps between graph nodes are what the model sees, not host launch overhead);
// the graph is replayed and the median over kRepeats timings of kReplays replays, divided by
// the ops, is the time per op. GB/s counts the fewest bytes the op must move (each input read
// once, each output written once); decode shapes sit in L2, so theirs can exceed DRAM's 4.3 TB/s.
//
// Built against a tree without the fused op (QkNormRopeKvWrite), define
// TESSERA_BENCH_BASELINE to time the rest: that is how the previous kernels were measured.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

constexpr int kOpsPerGraph = 20;
constexpr int kReplays = 10;
constexpr int kRepeats = 5;

// Qwen3-14B per GPU at TP1.
constexpr int64_t kHidden = 5120;
constexpr int64_t kIntermediate = 17408;
constexpr int kQHeads = 40, kKvHeads = 8, kHeadDim = 128;
constexpr int64_t kQkvRow = (kQHeads + 2 * kKvHeads) * kHeadDim;

class SmallOpsBench : public testing::CudaTest {
 protected:
  void SetUp() override {
    const char* on = std::getenv("TESSERA_SMALL_BENCH");
    if (on == nullptr || std::string(on) != "1") GTEST_SKIP() << "set TESSERA_SMALL_BENCH=1";
    testing::CudaTest::SetUp();
  }

  DeviceBuffer Random(size_t count, float mean = 0.0f, float scale = 1.0f) {
    DeviceBuffer b = gpu().Allocate(count * 2);
    gpu().FillRandom(b.data(), DType::kBF16, count, ++seed_, mean, scale);
    return b;
  }

  // Prints and returns microseconds per op.
  double Time(const std::string& op, const std::string& shape, double bytes,
              const std::function<void()>& run) {
    for (int i = 0; i < 3; ++i) run();  // warm-up outside the graph
    gpu().Synchronize();
    gpu().BeginCapture();
    for (int i = 0; i < kOpsPerGraph; ++i) run();
    std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
    EXPECT_NE(graph, nullptr) << op << " could not be captured";
    if (graph == nullptr) return 0;
    graph->Replay();
    gpu().Synchronize();
    std::vector<double> us;
    for (int r = 0; r < kRepeats; ++r) {
      const auto begin = std::chrono::steady_clock::now();
      for (int i = 0; i < kReplays; ++i) graph->Replay();
      gpu().Synchronize();
      const std::chrono::duration<double, std::micro> took =
          std::chrono::steady_clock::now() - begin;
      us.push_back(took.count() / (kReplays * kOpsPerGraph));
    }
    std::sort(us.begin(), us.end());
    const double median = us[us.size() / 2];
    std::printf("[bench] %-22s %-26s %9.2f us %8.1f GB/s\n", op.c_str(), shape.c_str(), median,
                bytes / (median * 1e3));
    return median;
  }

  uint64_t seed_ = 1000;
};

std::string Rows(int64_t rows, int64_t width) {
  return std::to_string(rows) + " x " + std::to_string(width);
}

TEST_F(SmallOpsBench, DecodeAndPrefillShapes) {
  const std::vector<int> row_counts = {1, 64, 4096};
  const int max_rows = row_counts.back();
  DeviceBuffer x = Random(max_rows * kHidden), residual = Random(max_rows * kHidden);
  DeviceBuffer weight = Random(kHidden, 1.0f, 0.5f), out = Random(max_rows * kHidden);
  DeviceBuffer gate_up = Random(max_rows * 2 * kIntermediate, 0.0f, 4.0f);
  DeviceBuffer act = Random(max_rows * kIntermediate);
  constexpr int64_t kVocab = 8192;
  DeviceBuffer table = Random(kVocab * kHidden);
  DeviceBuffer qkv = Random(max_rows * kQkvRow, 0.0f, 2.0f);
  DeviceBuffer q_norm = Random(kHeadDim, 1.0f, 0.5f), k_norm = Random(kHeadDim, 1.0f, 0.5f);
  const int num_slots = 2 * max_rows;
  DeviceBuffer k_cache = Random(static_cast<size_t>(num_slots) * kKvHeads * kHeadDim);
  DeviceBuffer v_cache = Random(static_cast<size_t>(num_slots) * kKvHeads * kHeadDim);
  std::vector<int32_t> ids(max_rows), gather(max_rows), positions(max_rows), slots(max_rows);
  for (int t = 0; t < max_rows; ++t) {
    ids[t] = static_cast<int32_t>((t * 7919) % kVocab);
    gather[t] = (t * 2909) % max_rows;
    positions[t] = 1000 + t;
    slots[t] = 2 * t + 1;
  }
  std::vector<float> inv_freq(kHeadDim / 2);
  for (int i = 0; i < kHeadDim / 2; ++i)
    inv_freq[i] = std::pow(1e6f, -2.0f * static_cast<float>(i) / static_cast<float>(kHeadDim));
  DeviceBuffer d_ids = testing::UploadRaw(gpu(), ids), d_pos = testing::UploadRaw(gpu(), positions);
  DeviceBuffer d_slots = testing::UploadRaw(gpu(), slots);
  DeviceBuffer d_gather = testing::UploadRaw(gpu(), gather);
  DeviceBuffer d_freq = testing::UploadRaw(gpu(), inv_freq);
  const double a = 2;  // bytes per bf16
  auto* qkv_b = qkv.as<uint16_t>();
  const int64_t q_w = kQHeads * kHeadDim, kv_w = kKvHeads * kHeadDim;

  for (int rows : row_counts) {
    const double h = static_cast<double>(rows) * kHidden * a;
    Time("RmsNorm", Rows(rows, kHidden), 2 * h,
         [&] { gpu().RmsNorm(x.data(), weight.data(), rows, kHidden, 1e-6f, out.data()); });
    Time("AddRmsNorm", Rows(rows, kHidden), 4 * h, [&] {
      gpu().AddRmsNorm(residual.data(), x.data(), weight.data(), rows, kHidden, 1e-6f, out.data());
    });
    Time("SiluMul", Rows(rows, kIntermediate), 3.0 * rows * kIntermediate * a,
         [&] { gpu().SiluMul(gate_up.data(), rows, kIntermediate, act.data()); });
    Time("Add", Rows(rows, kHidden), 3 * h,
         [&] { gpu().Add(residual.data(), x.data(), rows * kHidden, residual.data()); });
    Time("Embedding", Rows(rows, kHidden), 2 * h, [&] {
      gpu().Embedding(table.data(), 0, kVocab, kHidden, d_ids.as<int32_t>(), rows, out.data());
    });
    Time("GatherRows", Rows(rows, kHidden), 2 * h,
         [&] { gpu().GatherRows(x.data(), d_gather.as<int32_t>(), rows, kHidden, out.data()); });
    const std::string heads = std::to_string(rows) + " x (40q+8k+8v)x128";
    const double q_bytes = 2.0 * rows * q_w * a, k_bytes = 2.0 * rows * kv_w * a;
    const double cache_bytes = 4.0 * rows * kv_w * a;
    const double unfused =
        Time("HeadNormRope q", heads, q_bytes,
             [&] {
               gpu().HeadNormRope(qkv_b, kQkvRow, rows, kQHeads, kHeadDim, q_norm.data(), 1e-6f,
                                  d_pos.as<int32_t>(), d_freq.as<float>(), 1.0f);
             }) +
        Time("HeadNormRope k", heads, k_bytes,
             [&] {
               gpu().HeadNormRope(qkv_b + q_w, kQkvRow, rows, kKvHeads, kHeadDim, k_norm.data(),
                                  1e-6f, d_pos.as<int32_t>(), d_freq.as<float>(), 1.0f);
             }) +
        Time("WriteKvCache", heads, cache_bytes, [&] {
          gpu().WriteKvCache(qkv_b + q_w, qkv_b + q_w + kv_w, kQkvRow, rows, kKvHeads, kHeadDim,
                             d_slots.as<int32_t>(), k_cache.data(), v_cache.data());
        });
    std::printf("[bench] %-22s %-26s %9.2f us %8.1f GB/s\n", "q+k rope+cache unfused",
                heads.c_str(), unfused, (q_bytes + k_bytes + cache_bytes) / (unfused * 1e3));
#if !defined(TESSERA_BENCH_BASELINE)
    // q and k read and written once, v read once, k and v written to the caches once.
    const double fused_bytes = (2.0 * q_w + 5.0 * kv_w) * rows * a;
    Time("QkNormRopeKvWrite", heads, fused_bytes, [&] {
      gpu().QkNormRopeKvWrite(qkv.data(), kQkvRow, rows, kQHeads, kKvHeads, kHeadDim, q_norm.data(),
                              k_norm.data(), 1e-6f, d_pos.as<int32_t>(), d_freq.as<float>(), 1.0f,
                              d_slots.as<int32_t>(), k_cache.data(), v_cache.data());
    });
#endif
  }
}

}  // namespace
}  // namespace tessera
