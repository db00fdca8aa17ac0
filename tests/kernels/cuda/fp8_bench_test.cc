// Timings of the FP8 GEMM paths against cuBLASLt bf16; skipped unless TESSERA_FP8_BENCH=1.
//
// Prefill: y [4096, 5120] = x [4096, 17408] @ W^T (Qwen3-14B's down projection at 4096 tokens)
// in bf16 (Backend::Linear), W8A8 through cuBLASLt's block-scaled GEMM (with and without the
// activation quantization), and the mma.sync kernels (W8A8 and W8A16). Decode: Qwen3-14B's four
// projections (qkv 7168x5120, o 5120x5120, gate_up 34816x5120, down 5120x17408) at m = 1, 8, 16,
// 64 with every path that runs the shape (at m <= 8 both GEMV variants, v2 with 2 and 4 groups in
// flight), and per m the sum over the model's 40 layers (the linear layers' share of a decode
// step). Padding: m off a multiple of 16 (17, 100, 333, 1000 at 5120x5120; 4095 at the prefill
// shape), where cuBLASLt runs on Fp8PaddedRows(m) rows, against the mma.sync kernel it replaced.
// "W8A8 LinearFp8" is the backend's op (whichever path it picks; the stderr log says which).
// Weights rotate through copies larger than L2, so every call reads them from memory. One line
// per measurement, "FP8BENCH ..." (grep-able), median of 5 runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/fp8_mma.h"
#include "kernels/cuda/fp8_quant.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/fp8_test_util.h"

namespace tessera {
namespace {

float MedianMicros(cudaStream_t stream, const std::function<void(int)>& call, float run_ms) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int c = 0; c < 2; ++c) call(c);  // warm-up (plans, clocks)
  cudaEventRecord(start, stream);
  call(0);
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float one = 0;
  cudaEventElapsedTime(&one, start, stop);
  const int calls = std::clamp(static_cast<int>(run_ms / std::max(one, 1e-3f)), 3, 2000);
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
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::sort(runs.begin(), runs.end());
  return runs[2];
}

struct Weights {  // copies of one shape, bf16 and FP8, together past the L2 cache
  std::vector<DeviceBuffer> bf16;
  std::vector<testing::DeviceFp8Weight> fp8;
  int64_t stride;
};

Weights MakeWeights(Backend& gpu, int64_t n, int64_t k, bool with_bf16) {
  Weights w;
  const int copies = static_cast<int>(std::clamp<int64_t>((256 << 20) / (n * k) + 1, 1, 8));
  std::mt19937 rng(n * 3 + k);
  const auto host = testing::RandomFp8Weight(n, k, rng);
  w.stride = host.stride;
  for (int c = 0; c < copies; ++c) {
    w.fp8.push_back(testing::UploadFp8Weight(gpu, host));
    if (with_bf16) {
      w.bf16.push_back(gpu.Allocate(n * k * 2));
      gpu.FillRandom(w.bf16.back().data(), DType::kBF16, n * k, 100 + c, 0, 0.05f);
    }
  }
  return w;
}

void Report(const char* path, int64_t m, int64_t n, int64_t k, double weight_bytes, float us) {
  const double tflops = 2.0 * m * n * k / (us * 1e-6) / 1e12;
  const double tbps = weight_bytes / (us * 1e-6) / 1e12;
  std::printf("FP8BENCH %-22s m=%-5ld n=%-6ld k=%-6ld %9.2f us %8.1f TFLOP/s %6.2f TB/s(weights)\n",
              path, long(m), long(n), long(k), us, tflops, tbps);
}

class CudaFp8Bench : public testing::CudaTest {
 protected:
  void SetUp() override {
    const char* env = std::getenv("TESSERA_FP8_BENCH");
    if (env == nullptr || std::strcmp(env, "1") != 0) GTEST_SKIP() << "TESSERA_FP8_BENCH=1 runs it";
    testing::CudaTest::SetUp();
  }
  cudaStream_t stream() { return static_cast<cudaStream_t>(gpu().stream()); }

  // Times every path for one shape; returns path -> microseconds.
  std::map<std::string, float> TimeShape(int64_t m, int64_t n, int64_t k, float run_ms) {
    std::map<std::string, float> us;
    const Weights w = MakeWeights(gpu(), n, k, true);
    const int copies = static_cast<int>(w.fp8.size());
    const int64_t rows = Fp8PaddedRows(m);  // x's and y's rows for cuBLASLt
    DeviceBuffer x = gpu().Allocate(m * k * 2), y = gpu().Allocate(rows * n * 2);
    gpu().FillRandom(x.data(), DType::kBF16, m * k, 7, 0, 1.0f);
    const int64_t xs_stride = Fp8ActivationScaleStride(m);
    DeviceBuffer xq = gpu().Allocate(rows * k), xs = gpu().Allocate(Fp8Blocks(k) * xs_stride * 4);
    const Fp8Activations act{xq.data(), xs.as<float>(), xs_stride};
    gpu().QuantizeFp8(x.data(), m, k, act);
    auto* yb = y.as<__nv_bfloat16>();
    const auto* xb = x.as<__nv_bfloat16>();
    const double fp8_bytes = double(n) * k, bf16_bytes = 2.0 * n * k;

    us["bf16 cuBLASLt"] = MedianMicros(
        stream(),
        [&](int c) { gpu().Linear(x.data(), w.bf16[c % copies].data(), m, n, k, y.data()); },
        run_ms);
    Report("bf16 Linear", m, n, k, bf16_bytes, us["bf16 cuBLASLt"]);

    us["quantize"] = MedianMicros(
        stream(), [&](int) { gpu().QuantizeFp8(x.data(), m, k, act); }, run_ms);
    Report("quantize x", m, 0, k, 0, us["quantize"]);

    constexpr size_t kWorkspace = 32u << 20;
    DeviceBuffer workspace = gpu().Allocate(kWorkspace);
    cuda::LtFp8Gemm lt(workspace.data(), kWorkspace);
    const std::string lt_name = rows == m ? "W8A8 cuBLASLt" : "W8A8 cuBLASLt padded";
    if (lt.Supported(xq.as<uint8_t>(), w.fp8[0].data.as<uint8_t>(), yb, rows, n, k, w.stride,
                     xs_stride)) {
      us[lt_name] = MedianMicros(
          stream(),
          [&](int c) {
            lt.Linear(xq.as<uint8_t>(), xs.as<float>(), w.fp8[c % copies].data.as<uint8_t>(),
                      w.fp8[c % copies].scale.as<float>(), rows, n, k, yb, stream());
          },
          run_ms);
      Report(lt_name.c_str(), m, n, k, fp8_bytes, us[lt_name]);
    } else {
      std::printf("FP8BENCH %s m=%ld (rows %ld) n=%ld k=%ld: not supported\n", lt_name.c_str(),
                  long(m), long(rows), long(n), long(k));
    }
    us["W8A8 LinearFp8"] = MedianMicros(
        stream(),
        [&](int c) { gpu().LinearFp8(act, w.fp8[c % copies].view(w.stride), m, n, k, y.data()); },
        run_ms);
    Report("W8A8 LinearFp8", m, n, k, fp8_bytes, us["W8A8 LinearFp8"]);
    us["W8A8 mma"] = MedianMicros(
        stream(),
        [&](int c) {
          cuda::LaunchFp8MmaW8A8(
              xq.as<uint8_t>(), xs.as<float>(), xs_stride, w.fp8[c % copies].data.as<uint8_t>(),
              w.fp8[c % copies].scale.as<float>(), w.stride, m, n, k, yb, stream());
        },
        run_ms);
    Report("W8A8 mma.sync", m, n, k, fp8_bytes, us["W8A8 mma"]);
    us["W8A16 mma"] = MedianMicros(
        stream(),
        [&](int c) {
          cuda::LaunchFp8MmaW8A16(xb, w.fp8[c % copies].data.as<uint8_t>(),
                                  w.fp8[c % copies].scale.as<float>(), w.stride, m, n, k, yb,
                                  stream());
        },
        run_ms);
    Report("W8A16 mma.sync", m, n, k, fp8_bytes, us["W8A16 mma"]);
    if (m <= cuda::kFp8GemvMaxRows) {
      struct Gemv {
        const char* name;
        cuda::Fp8GemvVariant variant;
        int in_flight;
      };
      for (const Gemv& g : {Gemv{"W8A16 GEMV v1", cuda::Fp8GemvVariant::kV1, 0},
                            Gemv{"W8A16 GEMV v2", cuda::Fp8GemvVariant::kV2, 2},
                            Gemv{"W8A16 GEMV v2 x4", cuda::Fp8GemvVariant::kV2, 4}}) {
        us[g.name] = MedianMicros(
            stream(),
            [&](int c) {
              cuda::LaunchFp8Gemv(xb, w.fp8[c % copies].data.as<uint8_t>(),
                                  w.fp8[c % copies].scale.as<float>(), w.stride, m, n, k, yb,
                                  stream(), g.variant, 0, g.in_flight);
            },
            run_ms);
        Report(g.name, m, n, k, fp8_bytes, us[g.name]);
      }
    }
    return us;
  }
};

TEST_F(CudaFp8Bench, Prefill) {
  TimeShape(4096, 5120, 17408, 200.0f);
  // Every algorithm cuBLASLt's heuristic lists for the prefill shape.
  constexpr int64_t m = 4096, n = 5120, k = 17408;
  const Weights w = MakeWeights(gpu(), n, k, false);
  const int copies = static_cast<int>(w.fp8.size());
  DeviceBuffer x = gpu().Allocate(m * k * 2), y = gpu().Allocate(m * n * 2);
  gpu().FillRandom(x.data(), DType::kBF16, m * k, 7, 0, 1.0f);
  static_assert(m % 16 == 0, "no padded rows");
  const int64_t xs_stride = Fp8ActivationScaleStride(m);
  DeviceBuffer xq = gpu().Allocate(m * k), xs = gpu().Allocate(Fp8Blocks(k) * xs_stride * 4);
  gpu().QuantizeFp8(x.data(), m, k, {xq.data(), xs.as<float>(), xs_stride});
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu().Allocate(kWorkspace);
  cuda::LtFp8Gemm lt(workspace.data(), kWorkspace);
  auto* yb = y.as<__nv_bfloat16>();
  if (!lt.Supported(xq.as<uint8_t>(), w.fp8[0].data.as<uint8_t>(), yb, m, n, k, w.stride,
                    xs_stride)) {
    return;
  }
  const int count = lt.CandidateCount(xq.as<uint8_t>(), w.fp8[0].data.as<uint8_t>(), yb, m, n, k);
  for (int i = 0; i < count; ++i) {
    const float us = MedianMicros(
        stream(),
        [&](int c) {
          lt.LinearWithCandidate(i, xq.as<uint8_t>(), xs.as<float>(),
                                 w.fp8[c % copies].data.as<uint8_t>(),
                                 w.fp8[c % copies].scale.as<float>(), m, n, k, yb, stream());
        },
        100.0f);
    const std::string name = "W8A8 cuBLASLt #" + std::to_string(i);
    Report(name.c_str(), m, n, k, double(n) * k, us);
  }
}

TEST_F(CudaFp8Bench, Decode14B) {
  struct Proj {
    const char* name;
    int64_t n, k;
  };
  const Proj projs[] = {
      {"qkv", 7168, 5120}, {"o", 5120, 5120}, {"gate_up", 34816, 5120}, {"down", 5120, 17408}};
  for (int64_t m : {1, 8, 16, 64}) {
    std::map<std::string, float> total;
    for (const Proj& p : projs) {
      std::printf("FP8BENCH -- %s\n", p.name);
      for (const auto& [path, us] : TimeShape(m, p.n, p.k, 20.0f)) total[path] += us;
    }
    for (const auto& [path, us] : total) {
      std::printf("FP8BENCH 14B m=%ld: %-14s 40 layers of linears %.3f ms\n", long(m), path.c_str(),
                  40 * us / 1000.0f);
    }
  }
}

// m off a multiple of 16: cuBLASLt on the padded rows against the mma.sync kernel.
TEST_F(CudaFp8Bench, PaddedRows) {
  for (int64_t m : {17, 100, 333, 1000}) TimeShape(m, 5120, 5120, 50.0f);
  TimeShape(4095, 5120, 17408, 200.0f);
}

}  // namespace
}  // namespace tessera
