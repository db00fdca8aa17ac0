// Timings of MoeExperts at Qwen3-235B-A22B's and Qwen3-30B-A3B's expert shapes (128 experts,
// top-8), from decode's 1 token to prefill's 4096. Skipped unless TESSERA_MOE_BENCH=1: it checks
// nothing, it prints one table.
//
// At decode the layer is a read of the routed experts' weights: GB/s counts the weights of the
// distinct experts the tokens hit (gate|up and down, bf16) over the median time, to compare with
// the ~4.3 TB/s copy ceiling. TFLOP/s counts 2 * 3 * H * I per (token, expert) pair. "direct"
// times back-to-back calls (host clock around a Synchronize), "graph" the same call recorded in
// a CUDA graph and replayed. Routing is uniform random, fixed per size.
//
// Built against a tree whose MoeExperts reads the routing on the host (it cannot be recorded),
// define TESSERA_BENCH_BASELINE to time only the direct calls: that is how the previous
// implementation was measured.
//
// The *_Fp8 cases time the FP8 experts' paths against bf16 at decode sizes (RunFp8).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cuda/moe.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace tessera {
namespace {

constexpr int kCalls = 5;
constexpr int kRepeats = 7;

class MoeBench : public testing::CudaTest {
 protected:
  void SetUp() override {
    const char* on = std::getenv("TESSERA_MOE_BENCH");
    if (on == nullptr || std::string(on) != "1") GTEST_SKIP() << "set TESSERA_MOE_BENCH=1";
    testing::CudaTest::SetUp();
  }

  // Median milliseconds per call of `run`, kCalls back to back per timing.
  double Median(const std::function<void()>& run) {
    run();
    run();
    gpu().Synchronize();
    std::vector<double> ms;
    for (int r = 0; r < kRepeats; ++r) {
      const auto begin = std::chrono::steady_clock::now();
      for (int i = 0; i < kCalls; ++i) run();
      gpu().Synchronize();
      const std::chrono::duration<double, std::milli> took =
          std::chrono::steady_clock::now() - begin;
      ms.push_back(took.count() / kCalls);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

  void Run(const char* model, int64_t hidden, int64_t inter) {
    constexpr int kExperts = 128, kTopK = 8;
    const std::vector<int> token_counts = {1, 32, 128, 4096};
    const int max_n = token_counts.back();
    const size_t gu_count = static_cast<size_t>(kExperts) * 2 * inter * hidden;
    const size_t down_count = static_cast<size_t>(kExperts) * hidden * inter;
    DeviceBuffer gate_up = gpu().Allocate(gu_count * 2), down = gpu().Allocate(down_count * 2);
    gpu().FillRandom(gate_up.data(), DType::kBF16, gu_count, 1, 0.0f, 0.03f);
    gpu().FillRandom(down.data(), DType::kBF16, down_count, 2, 0.0f, 0.05f);
    DeviceBuffer x = gpu().Allocate(static_cast<size_t>(max_n) * hidden * 2);
    gpu().FillRandom(x.data(), DType::kBF16, static_cast<size_t>(max_n) * hidden, 3, 0.0f, 1.0f);
    DeviceBuffer out = gpu().Allocate(static_cast<size_t>(max_n) * hidden * 2);
    ExpertWeights experts;
    experts.num_local_experts = kExperts;
    experts.hidden = hidden;
    experts.intermediate = inter;
    experts.gate_up = gate_up.data();
    experts.down = down.data();
    const double expert_bytes = 3.0 * hidden * inter * 2;
    std::mt19937 rng(5);
    std::vector<int32_t> all(kExperts);
    std::iota(all.begin(), all.end(), 0);
    for (int n : token_counts) {
      std::vector<int32_t> ids(static_cast<size_t>(n) * kTopK);
      std::set<int32_t> hit;
      for (int t = 0; t < n; ++t) {
        std::shuffle(all.begin(), all.end(), rng);
        for (int k = 0; k < kTopK; ++k) {
          ids[static_cast<size_t>(t) * kTopK + k] = all[k];
          hit.insert(all[k]);
        }
      }
      DeviceBuffer d_ids = testing::UploadRaw(gpu(), ids);
      DeviceBuffer d_w = testing::UploadRaw(gpu(), std::vector<float>(ids.size(), 1.0f / kTopK));
      auto call = [&] {
        gpu().MoeExperts(x.data(), n, d_ids.as<int32_t>(), d_w.as<float>(), kTopK, experts,
                         out.data());
      };
      const double bytes = expert_bytes * static_cast<double>(hit.size());
      const double flops = 2.0 * 3 * hidden * inter * n * kTopK;
      auto print = [&](const char* how, double ms) {
        std::printf(
            "[moe-bench] %-5s H %5ld I %5ld  n %5d  %-6s %9.3f ms  %3zu experts  "
            "%7.1f GB/s  %6.1f TFLOP/s\n",
            model, static_cast<long>(hidden), static_cast<long>(inter), n, how, ms, hit.size(),
            bytes / (ms * 1e6), flops / (ms * 1e9));
      };
      print("direct", Median(call));
#ifndef TESSERA_BENCH_BASELINE
      gpu().BeginCapture();
      call();
      std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
      EXPECT_NE(graph, nullptr) << "MoeExperts could not be recorded";
      if (graph != nullptr) print("graph", Median([&] { graph->Replay(); }));
#endif
    }
  }

  // FP8 experts (128x128 block scales, quantized from random bf16 weights) at decode sizes,
  // four ways side by side: the bf16 experts (MoeExperts), the grouped FP8 GEMMs
  // (MoeExpertsFp8, its default widening; fp8-bits: the same widening e4m3 by bit moves) and the
  // dequantize-into-scratch fallback (MarkExperts + DequantizeFp8Weight of the routed experts +
  // MoeExperts), each recorded in a graph. GB/s counts each path's expert weight bytes (bf16: 2 per
  // element; FP8: 1) of the distinct experts hit.
  void RunFp8(const char* model, int64_t hidden, int64_t inter) {
    constexpr int kExperts = 128, kTopK = 8;
    const std::vector<int> token_counts = {1, 8, 32, 64, 128, 256};
    const int max_n = token_counts.back();
    const int64_t gu_rows = int64_t{kExperts} * 2 * inter, dn_rows = int64_t{kExperts} * hidden;
    DeviceBuffer gate_up = gpu().Allocate(gu_rows * hidden * 2);
    DeviceBuffer down = gpu().Allocate(dn_rows * inter * 2);
    gpu().FillRandom(gate_up.data(), DType::kBF16, gu_rows * hidden, 1, 0.0f, 0.03f);
    gpu().FillRandom(down.data(), DType::kBF16, dn_rows * inter, 2, 0.0f, 0.05f);
    // FP8 copies: every expert's blocks start on a 128-row boundary (2I and H are multiples of
    // 128 at Qwen3's shapes), so one quantization of the stacked experts is each expert's.
    const int64_t gu_stride = Fp8WeightScaleStride(hidden), dn_stride = Fp8WeightScaleStride(inter);
    DeviceBuffer gu8 = gpu().Allocate(gu_rows * hidden), dn8 = gpu().Allocate(dn_rows * inter);
    DeviceBuffer gu_scale = gpu().Allocate(Fp8Blocks(gu_rows) * gu_stride * 4);
    DeviceBuffer dn_scale = gpu().Allocate(Fp8Blocks(dn_rows) * dn_stride * 4);
    ExpertWeightsFp8 fp8;
    fp8.num_local_experts = kExperts;
    fp8.hidden = hidden;
    fp8.intermediate = inter;
    fp8.gate_up = {gu8.data(), gu_scale.as<float>(), gu_stride};
    fp8.gate_up_scale_batch_stride = Fp8Blocks(2 * inter) * gu_stride;
    fp8.down = {dn8.data(), dn_scale.as<float>(), dn_stride};
    fp8.down_scale_batch_stride = Fp8Blocks(hidden) * dn_stride;
    gpu().QuantizeFp8Weight(gate_up.data(), gu_rows, hidden, fp8.gate_up);
    gpu().QuantizeFp8Weight(down.data(), dn_rows, inter, fp8.down);
    ASSERT_TRUE(gpu().MoeExpertsFp8Supported(fp8));
    DeviceBuffer scratch_gu = gpu().Allocate(gu_rows * hidden * 2);
    DeviceBuffer scratch_dn = gpu().Allocate(dn_rows * inter * 2);
    DeviceBuffer used = gpu().Allocate(kExperts * sizeof(int32_t));
    ExpertWeights bf16{0, kExperts, hidden, inter, gate_up.data(), down.data()};
    ExpertWeights scratch{0, kExperts, hidden, inter, scratch_gu.data(), scratch_dn.data()};
    DeviceBuffer x = gpu().Allocate(static_cast<size_t>(max_n) * hidden * 2);
    gpu().FillRandom(x.data(), DType::kBF16, static_cast<size_t>(max_n) * hidden, 3, 0.0f, 1.0f);
    DeviceBuffer out = gpu().Allocate(static_cast<size_t>(max_n) * hidden * 2);
    std::mt19937 rng(5);
    std::vector<int32_t> all(kExperts);
    std::iota(all.begin(), all.end(), 0);
    for (int n : token_counts) {
      std::vector<int32_t> ids(static_cast<size_t>(n) * kTopK);
      std::set<int32_t> hit;
      for (int t = 0; t < n; ++t) {
        std::shuffle(all.begin(), all.end(), rng);
        for (int k = 0; k < kTopK; ++k) {
          ids[static_cast<size_t>(t) * kTopK + k] = all[k];
          hit.insert(all[k]);
        }
      }
      DeviceBuffer d_ids = testing::UploadRaw(gpu(), ids);
      DeviceBuffer d_w = testing::UploadRaw(gpu(), std::vector<float>(ids.size(), 1.0f / kTopK));
      const int32_t* id = d_ids.as<int32_t>();
      const float* w = d_w.as<float>();
      const std::pair<const char*, std::function<void()>> paths[] = {
          {"bf16", [&] { gpu().MoeExperts(x.data(), n, id, w, kTopK, bf16, out.data()); }},
          {"fp8", [&] { gpu().MoeExpertsFp8(x.data(), n, id, w, kTopK, fp8, out.data()); }},
          // The same kernels widening e4m3 by bit moves (fp8: the default, conversion
          // instructions until a GPU run has checked the bit moves).
          {"fp8-bits",
           [&] {
             cuda::SetMoeFp8Widen(cuda::MoeFp8Widen::kBits);
             gpu().MoeExpertsFp8(x.data(), n, id, w, kTopK, fp8, out.data());
             cuda::SetMoeFp8Widen(cuda::MoeFp8Widen::kDefault);
           }},
          {"fp8-deq",
           [&] {
             gpu().MarkExperts(id, int64_t{n} * kTopK, 0, kExperts, used.as<int32_t>());
             gpu().DequantizeFp8Weight(fp8.gate_up, 2 * inter, hidden, kExperts,
                                       fp8.gate_up_scale_batch_stride, scratch_gu.data(),
                                       used.as<int32_t>());
             gpu().DequantizeFp8Weight(fp8.down, hidden, inter, kExperts,
                                       fp8.down_scale_batch_stride, scratch_dn.data(),
                                       used.as<int32_t>());
             gpu().MoeExperts(x.data(), n, id, w, kTopK, scratch, out.data());
           }},
      };
      for (const auto& [how, call] : paths) {
        gpu().BeginCapture();
        call();
        std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
        ASSERT_NE(graph, nullptr) << how << " could not be recorded";
        const double ms = Median([&] { graph->Replay(); });
        const double bytes = 3.0 * hidden * inter * (std::string(how) == "bf16" ? 2 : 1) *
                             static_cast<double>(hit.size());
        std::printf(
            "[moe-fp8-bench] %-4s H %5ld I %5ld  n %4d  %-7s graph %8.3f ms  %3zu experts  "
            "%7.1f GB/s\n",
            model, static_cast<long>(hidden), static_cast<long>(inter), n, how, ms, hit.size(),
            bytes / (ms * 1e6));
      }
    }
  }
};

TEST_F(MoeBench, Qwen3_235B_A22B) { Run("235B", 4096, 1536); }
TEST_F(MoeBench, Qwen3_30B_A3B) { Run("30B", 2048, 768); }
TEST_F(MoeBench, Qwen3_30B_A3B_Fp8) { RunFp8("30B", 2048, 768); }
TEST_F(MoeBench, Qwen3_235B_A22B_Fp8) { RunFp8("235B", 4096, 1536); }

}  // namespace
}  // namespace tessera
