// The FP8 kernels (kernels/cuda/fp8_*.h) against the CPU reference (kernels/cpu/fp8.cc), on seeded
// random inputs at odd sizes (m not a multiple of 4, n and k not multiples of 128):
//   - QuantizeFp8: bytes and scales identical to the reference (vector and scalar paths); the
//     fused SiluMulQuantizeFp8 within exp's last-bit differences;
//   - the W8A16 GEMV (decode; both variants, every m it takes) and mma.sync GEMM, the W8A8
//     mma.sync GEMM and cuBLASLt's block-scaled GEMM on the padded rows (Hopper; skipped with a
//     message where cuBLASLt offers no algorithm): relative L2 within one bf16 rounding of the
//     reference fed the same quantized values; both GEMVs exact on every finite e4m3 code;
//   - the ops table (Backend::QuantizeFp8 / LinearFp8 / LinearFp8WeightOnly / Fp8WeightOnly),
//     LinearFp8 leaving y's rows past Fp8PaddedRows(m) alone, and the TESSERA_FP8_W8A16=1 switch;
//   - DequantizeFp8Weight (offsets, parts, batches) and QuantizeFp8Weight: bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <utility>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/cpu/reference.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/fp8_mma.h"
#include "kernels/cuda/fp8_quant.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/fp8_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

struct Shape {
  int64_t m, n, k;
};

class CudaFp8Test : public testing::CudaParamTest<Shape> {
 protected:
  cudaStream_t stream() { return static_cast<cudaStream_t>(gpu().stream()); }

  // x (bf16 values) quantized on the GPU; returns the device buffers and the host copies.
  struct Quantized {
    DeviceBuffer data, scale;
    std::vector<uint8_t> host_data;
    std::vector<float> host_scale;
    int64_t stride;
  };
  Quantized QuantizeOnGpu(const DeviceBuffer& dx, int64_t m, int64_t k) {
    Quantized q;
    q.stride = Fp8ActivationScaleStride(m);
    q.data = gpu().Allocate(Fp8PaddedRows(m) * k);  // LinearFp8 reads the padded rows
    q.scale = gpu().Allocate(Fp8Blocks(k) * q.stride * sizeof(float));
    gpu().QuantizeFp8(dx.data(), m, k, {q.data.data(), q.scale.as<float>(), q.stride});
    q.host_data = testing::DownloadRaw<uint8_t>(gpu(), q.data, m * k);
    q.host_scale = testing::DownloadRaw<float>(gpu(), q.scale, Fp8Blocks(k) * q.stride);
    return q;
  }
};

TEST_P(CudaFp8Test, QuantizeMatchesReferenceExactly) {
  const auto [m, n, k] = GetParam();
  (void)n;
  std::mt19937 rng(m * 131 + k);
  auto x = testing::RandomBf16(m * k + 1, rng, -4.0f, 4.0f);
  if (k >= 256) {
    for (int64_t j = 128; j < 256; ++j) x[j] = 0.0f;  // row 0's second group: scale 1
  }
  const int64_t stride = Fp8ActivationScaleStride(m);
  std::vector<uint8_t> ref_data(m * k);
  std::vector<float> ref_scale(Fp8Blocks(k) * stride, 0.0f);
  for (int offset : {0, 1}) {  // offset 1: unaligned rows, the scalar path
    cpu::QuantizeFp8(x.data() + offset, m, k, ref_data.data(), ref_scale.data(), stride);
    DeviceBuffer dx = testing::UploadBf16(gpu(), x);
    DeviceBuffer data = gpu().Allocate(m * k + 1), scale = gpu().Allocate(ref_scale.size() * 4);
    cuda::LaunchQuantizeFp8(dx.as<__nv_bfloat16>() + offset, m, k, data.as<uint8_t>() + offset,
                            scale.as<float>(), stride, stream());
    auto got = testing::DownloadRaw<uint8_t>(gpu(), data, m * k + 1);
    got.erase(got.begin(), got.begin() + offset);
    got.resize(m * k);
    auto got_scale = testing::DownloadRaw<float>(gpu(), scale, ref_scale.size());
    for (int64_t g = 0; g < Fp8Blocks(k); ++g)
      for (int64_t t = 0; t < m; ++t)
        ASSERT_EQ(got_scale[g * stride + t], ref_scale[g * stride + t])
            << "scale of token " << t << " group " << g << " offset " << offset;
    ASSERT_EQ(got, ref_data) << "offset " << offset;
  }
}

TEST_P(CudaFp8Test, SiluMulQuantizeMatchesReference) {
  // exp differs between the host's libm and the device's expf by an ulp at times: bytes may differ
  // where a value sits on a rounding boundary, so they are compared by count and by dequantized
  // relative L2 (e4m3's half-step is 2^-4 relative: one differing byte is far below 1e-3).
  const auto [m, n, k] = GetParam();
  (void)n;
  std::mt19937 rng(m * 17 + k);
  const auto gate_up = testing::RandomBf16(m * 2 * k, rng, -6.0f, 6.0f);
  std::vector<float> act(m * k);
  cpu::SiluMul(gate_up.data(), m, k, act.data());
  const int64_t stride = Fp8ActivationScaleStride(m);
  std::vector<uint8_t> ref_data(m * k);
  std::vector<float> ref_scale(Fp8Blocks(k) * stride, 0.0f), ref(m * k), got(m * k);
  cpu::QuantizeFp8(act.data(), m, k, ref_data.data(), ref_scale.data(), stride);
  cpu::DequantizeFp8Activations(ref_data.data(), ref_scale.data(), stride, m, k, ref.data());
  DeviceBuffer dg = testing::UploadBf16(gpu(), gate_up);
  DeviceBuffer data = gpu().Allocate(m * k), scale = gpu().Allocate(ref_scale.size() * 4);
  gpu().SiluMulQuantizeFp8(dg.data(), m, k, {data.data(), scale.as<float>(), stride});
  const auto got_data = testing::DownloadRaw<uint8_t>(gpu(), data, m * k);
  const auto got_scale = testing::DownloadRaw<float>(gpu(), scale, ref_scale.size());
  cpu::DequantizeFp8Activations(got_data.data(), got_scale.data(), stride, m, k, got.data());
  int64_t differing = 0;
  for (int64_t i = 0; i < m * k; ++i) differing += got_data[i] != ref_data[i];
  EXPECT_LE(differing, std::max<int64_t>(2, m * k / 1000)) << differing << " bytes differ";
  char what[96];
  std::snprintf(what, sizeof(what), "SiluMulQuantizeFp8 m=%ld k=%ld", long(m), long(k));
  testing::ExpectRelativeL2(what, got, ref, 1e-3);
}

TEST_P(CudaFp8Test, WeightOnlyMatchesReference) {
  const auto [m, n, k] = GetParam();
  std::mt19937 rng(m * 7 + n * 13 + k);
  const auto w = testing::RandomFp8Weight(n, k, rng);
  const auto x = testing::RandomBf16(m * k, rng);
  std::vector<float> ref(m * n);
  cpu::LinearFp8WeightOnly(x.data(), w.data.data(), w.scale.data(), w.stride, m, n, k, ref.data());
  const auto dw = testing::UploadFp8Weight(gpu(), w);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x);
  char what[96];
  if (m <= cuda::kFp8GemvMaxRows) {
    // v1 with 2 and 4 rows per block, v2 with 1, 2 and 4 groups in flight.
    for (const auto& [variant, param] :
         {std::pair{cuda::Fp8GemvVariant::kV1, 2}, std::pair{cuda::Fp8GemvVariant::kV1, 4},
          std::pair{cuda::Fp8GemvVariant::kV2, 1}, std::pair{cuda::Fp8GemvVariant::kV2, 2},
          std::pair{cuda::Fp8GemvVariant::kV2, 4}}) {
      const bool v2 = variant == cuda::Fp8GemvVariant::kV2;
      DeviceBuffer dy = testing::PoisonedBf16(gpu(), m * n);
      cuda::LaunchFp8Gemv(dx.as<__nv_bfloat16>(), dw.data.as<uint8_t>(), dw.scale.as<float>(),
                          w.stride, m, n, k, dy.as<__nv_bfloat16>(), stream(), variant,
                          v2 ? 0 : param, v2 ? param : 0);
      std::snprintf(what, sizeof(what), "FP8 GEMV v%d m=%ld n=%ld k=%ld param=%d", v2 ? 2 : 1,
                    long(m), long(n), long(k), param);
      testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, m * n), ref, kOneRounding);
    }
  }
  DeviceBuffer dy = testing::PoisonedBf16(gpu(), m * n);
  cuda::LaunchFp8MmaW8A16(dx.as<__nv_bfloat16>(), dw.data.as<uint8_t>(), dw.scale.as<float>(),
                          w.stride, m, n, k, dy.as<__nv_bfloat16>(), stream());
  std::snprintf(what, sizeof(what), "FP8 mma W8A16 m=%ld n=%ld k=%ld", long(m), long(n), long(k));
  testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, m * n), ref, kOneRounding);

  dy = testing::PoisonedBf16(gpu(), m * n);
  gpu().LinearFp8WeightOnly(dx.data(), dw.view(w.stride), m, n, k, dy.data());
  std::snprintf(what, sizeof(what), "LinearFp8WeightOnly m=%ld n=%ld k=%ld", long(m), long(n),
                long(k));
  testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, m * n), ref, kOneRounding);
}

TEST_P(CudaFp8Test, W8A8MatchesReference) {
  const auto [m, n, k] = GetParam();
  std::mt19937 rng(m * 5 + n * 11 + k * 3);
  const auto w = testing::RandomFp8Weight(n, k, rng);
  const auto x = testing::RandomBf16(m * k, rng);
  const auto dw = testing::UploadFp8Weight(gpu(), w);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x);
  Quantized q = QuantizeOnGpu(dx, m, k);
  // The reference on the GPU's own quantized activations (QuantizeMatchesReferenceExactly shows
  // they are the reference's).
  std::vector<float> ref(m * n);
  cpu::LinearFp8(q.host_data.data(), q.host_scale.data(), q.stride, w.data.data(), w.scale.data(),
                 w.stride, m, n, k, ref.data());
  char what[96];

  DeviceBuffer dy = testing::PoisonedBf16(gpu(), m * n);
  cuda::LaunchFp8MmaW8A8(q.data.as<uint8_t>(), q.scale.as<float>(), q.stride, dw.data.as<uint8_t>(),
                         dw.scale.as<float>(), w.stride, m, n, k, dy.as<__nv_bfloat16>(), stream());
  std::snprintf(what, sizeof(what), "FP8 mma W8A8 m=%ld n=%ld k=%ld", long(m), long(n), long(k));
  testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, m * n), ref, kOneRounding);

  // cuBLASLt on the padded rows (as LinearFp8 runs it); the rows past m are whatever the
  // padding of x held.
  const int64_t rows = Fp8PaddedRows(m);
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu().Allocate(kWorkspace);
  cuda::LtFp8Gemm lt(workspace.data(), kWorkspace);
  dy = testing::PoisonedBf16(gpu(), rows * n);
  if (lt.Supported(q.data.as<uint8_t>(), dw.data.as<uint8_t>(), dy.as<__nv_bfloat16>(), rows, n, k,
                   w.stride, q.stride)) {
    lt.Linear(q.data.as<uint8_t>(), q.scale.as<float>(), dw.data.as<uint8_t>(),
              dw.scale.as<float>(), rows, n, k, dy.as<__nv_bfloat16>(), stream());
    std::snprintf(what, sizeof(what), "cuBLASLt FP8 m=%ld (rows %ld) n=%ld k=%ld", long(m),
                  long(rows), long(n), long(k));
    testing::ExpectRelativeL2(what, testing::DownloadBf16(gpu(), dy, m * n), ref, kOneRounding);
  } else {
    std::printf("[cuda] cuBLASLt FP8 m=%ld (rows %ld) n=%ld k=%ld: not supported here\n", long(m),
                long(rows), long(n), long(k));
  }

  // The backend's op: y spans the padded rows, and nothing past them is written.
  dy = testing::PoisonedBf16(gpu(), (rows + 1) * n);
  gpu().LinearFp8({q.data.data(), q.scale.as<float>(), q.stride}, dw.view(w.stride), m, n, k,
                  dy.data());
  const std::vector<float> got = testing::DownloadBf16(gpu(), dy, (rows + 1) * n);
  std::snprintf(what, sizeof(what), "LinearFp8 m=%ld n=%ld k=%ld", long(m), long(n), long(k));
  testing::ExpectRelativeL2(what, std::vector<float>(got.begin(), got.begin() + m * n), ref,
                            kOneRounding);
  EXPECT_EQ(testing::CountNaN(std::vector<float>(got.begin() + rows * n, got.end())),
            static_cast<size_t>(n))
      << "LinearFp8 wrote past its Fp8PaddedRows(m) rows";
}

// The two GEMVs (every m they take) against the reference at odd n and k (k not a multiple of
// 64: the last 64-k step is partial).
TEST(CudaFp8GemvTest, VariantsMatchReferenceForEveryM) {
  TESSERA_REQUIRE_CUDA();
  auto gpu = MakeCudaBackend(0);
  const auto stream = static_cast<cudaStream_t>(gpu->stream());
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{61, 304}, {300, 1168}, {1031, 5136}}) {
    std::mt19937 rng(static_cast<unsigned>(n + k));
    const auto w = testing::RandomFp8Weight(n, k, rng);
    const auto dw = testing::UploadFp8Weight(*gpu, w);
    for (int64_t m = 1; m <= cuda::kFp8GemvMaxRows; ++m) {
      const auto x = testing::RandomBf16(m * k, rng);
      std::vector<float> ref(m * n);
      cpu::LinearFp8WeightOnly(x.data(), w.data.data(), w.scale.data(), w.stride, m, n, k,
                               ref.data());
      DeviceBuffer dx = testing::UploadBf16(*gpu, x);
      for (const auto variant : {cuda::Fp8GemvVariant::kV1, cuda::Fp8GemvVariant::kV2}) {
        DeviceBuffer dy = testing::PoisonedBf16(*gpu, m * n);
        cuda::LaunchFp8Gemv(dx.as<__nv_bfloat16>(), dw.data.as<uint8_t>(), dw.scale.as<float>(),
                            w.stride, m, n, k, dy.as<__nv_bfloat16>(), stream, variant);
        char what[96];
        std::snprintf(what, sizeof(what), "FP8 GEMV v%d m=%ld n=%ld k=%ld",
                      variant == cuda::Fp8GemvVariant::kV2 ? 2 : 1, long(m), long(n), long(k));
        testing::ExpectRelativeL2(what, testing::DownloadBf16(*gpu, dy, m * n), ref, kOneRounding);
      }
    }
  }
}

// Every finite e4m3 code, in every position of a 16-byte vector and of a 128-k group, through
// both GEMVs exactly: x's rows are one-hot (row t picks column cols[t]), the scales 1, so
// y[t, i] = w[i, cols[t]], which bf16 holds exactly. (v2 widens e4m3 by bit moves: signs,
// subnormals and the largest exponent are where such code goes wrong.)
TEST(CudaFp8GemvTest, EveryE4m3CodeExact) {
  TESSERA_REQUIRE_CUDA();
  auto gpu = MakeCudaBackend(0);
  const int64_t n = 256, k = 256, m = 8;
  const int64_t cols[m] = {0, 1, 2, 3, 17, 64, 130, 255};
  std::vector<uint8_t> wq(n * k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const uint8_t code = static_cast<uint8_t>((i + j) & 0xff);
      wq[i * k + j] = (code & 0x7f) == 0x7f ? 0 : code;  // NaN codes: 0
    }
  const int64_t stride = Fp8WeightScaleStride(k);
  std::vector<float> scale(Fp8Blocks(n) * stride, 1.0f);
  std::vector<float> x(m * k, 0.0f);
  for (int64_t t = 0; t < m; ++t) x[t * k + cols[t]] = 1.0f;
  DeviceBuffer dw = testing::UploadRaw(*gpu, wq), ds = testing::UploadRaw(*gpu, scale);
  DeviceBuffer dx = testing::UploadBf16(*gpu, x);
  for (const auto variant : {cuda::Fp8GemvVariant::kV1, cuda::Fp8GemvVariant::kV2}) {
    DeviceBuffer dy = testing::PoisonedBf16(*gpu, m * n);
    cuda::LaunchFp8Gemv(dx.as<__nv_bfloat16>(), dw.as<uint8_t>(), ds.as<float>(), stride, m, n, k,
                        dy.as<__nv_bfloat16>(), static_cast<cudaStream_t>(gpu->stream()), variant);
    const std::vector<float> y = testing::DownloadBf16(*gpu, dy, m * n);
    int wrong = 0;
    for (int64_t t = 0; t < m; ++t)
      for (int64_t i = 0; i < n; ++i) {
        const uint8_t code = wq[i * k + cols[t]];
        if (y[t * n + i] != F8E4M3ToFloat(code) && wrong++ < 8) {
          ADD_FAILURE() << "v" << (variant == cuda::Fp8GemvVariant::kV2 ? 2 : 1) << " code 0x"
                        << std::hex << int(code) << std::dec << " at column " << cols[t] << ": got "
                        << y[t * n + i] << ", expected " << F8E4M3ToFloat(code);
        }
      }
    EXPECT_EQ(wrong, 0);
  }
}

// DequantizeFp8Weight (the MoE experts' per-step path, shards split inside a block): bf16
// values identical to the reference's float32 product rounded once, for an aligned weight and for
// a batch of two with row / column offsets and gate|up parts.
TEST_P(CudaFp8Test, DequantizeWeightMatchesReference) {
  const auto [m, n, k] = GetParam();
  (void)m;
  std::mt19937 rng(static_cast<unsigned>(n * 31 + k));
  for (const bool split : {false, true}) {
    Fp8Weight layout;
    const int64_t batch = split ? 2 : 1;
    if (split && n >= 2) {
      layout.row_offset = 64;
      layout.col_offset = 32;
      layout.part_rows = n / 2;
      layout.part_scale_rows = Fp8Blocks(n / 2 + 64);
    }
    const int64_t rows = layout.part_rows > 0 ? (n + layout.part_rows - 1) / layout.part_rows *
                                                    layout.part_scale_rows
                                              : Fp8Blocks(n + layout.row_offset);
    layout.scale_stride = Fp8Blocks(k + layout.col_offset);
    const int64_t per = rows * layout.scale_stride;
    testing::HostFp8Weight w = testing::RandomFp8Weight(batch * n, k, rng);
    std::vector<float> scale(batch * per);
    std::uniform_real_distribution<float> s(0.5e-2f, 2e-2f);
    for (float& v : scale) v = s(rng);
    std::vector<float> ref(batch * n * k);
    layout.scale = scale.data();
    cpu::DequantizeFp8Blocks(w.data.data(), layout, n, k, batch, per, ref.data());
    for (float& v : ref) v = testing::RoundBf16(v);
    DeviceBuffer dd = testing::UploadRaw(gpu(), w.data), ds = testing::UploadRaw(gpu(), scale);
    DeviceBuffer out = testing::PoisonedBf16(gpu(), batch * n * k);
    layout.data = dd.data();
    layout.scale = ds.as<float>();
    // The split batch skips its second weight (MarkExperts: expert 1 of [7, 9) unused).
    DeviceBuffer used = gpu().Allocate(2 * sizeof(int32_t));
    DeviceBuffer ids = testing::UploadRaw(gpu(), std::vector<int32_t>{3, 7, -1, 7, 12});
    gpu().MarkExperts(ids.as<int32_t>(), 5, 7, 2, used.as<int32_t>());
    EXPECT_EQ(testing::DownloadRaw<int32_t>(gpu(), used, 2), (std::vector<int32_t>{1, 0}));
    gpu().DequantizeFp8Weight(layout, n, k, batch, per, out.data(),
                              split ? used.as<int32_t>() : nullptr);
    const std::vector<float> got = testing::DownloadBf16(gpu(), out, batch * n * k);
    for (int64_t i = 0; i < n * k; ++i)
      ASSERT_EQ(got[i], ref[i]) << "split " << split << " element " << i;
    if (split) {
      EXPECT_EQ(testing::CountNaN(got), static_cast<size_t>(n * k)) << "skipped weight";
    }
  }
}

// QuantizeFp8Weight (--quantization fp8): bytes and scales identical to the reference's.
TEST_P(CudaFp8Test, QuantizeWeightMatchesReference) {
  const auto [m, n, k] = GetParam();
  (void)m;
  std::mt19937 rng(static_cast<unsigned>(n * 7 + k));
  const std::vector<float> w = testing::RandomBf16(n * k, rng, -0.1f, 0.1f);
  const int64_t stride = Fp8WeightScaleStride(k);
  std::vector<uint8_t> ref_data(n * k);
  std::vector<float> ref_scale(Fp8Blocks(n) * stride, 0.0f);
  cpu::QuantizeFp8Weight(w.data(), n, k, ref_data.data(), ref_scale.data(), stride);
  DeviceBuffer dw = testing::UploadBf16(gpu(), w);
  DeviceBuffer data = gpu().Allocate(n * k);
  DeviceBuffer scale = testing::UploadRaw(gpu(), std::vector<float>(ref_scale.size(), 0.0f));
  gpu().QuantizeFp8Weight(dw.data(), n, k, {data.data(), scale.as<float>(), stride});
  EXPECT_EQ(testing::DownloadRaw<uint8_t>(gpu(), data, n * k), ref_data);
  EXPECT_EQ(testing::DownloadRaw<float>(gpu(), scale, ref_scale.size()), ref_scale);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaFp8Test,
                         ::testing::Values(Shape{1, 1, 16}, Shape{1, 130, 720}, Shape{3, 257, 1040},
                                           Shape{8, 384, 4096}, Shape{17, 61, 304},
                                           Shape{64, 128, 256}, Shape{100, 300, 1024},
                                           Shape{256, 1024, 2048}, Shape{333, 520, 1168}));

// y [m, n] from e4m3 bytes with the scales given by functions (for the layout probe below).
std::vector<float> ScaledProduct(const std::vector<uint8_t>& xq, const std::vector<uint8_t>& wq,
                                 int64_t m, int64_t n, int64_t k,
                                 const std::function<float(int64_t, int64_t)>& xs,
                                 const std::function<float(int64_t, int64_t)>& ws) {
  std::vector<float> y(m * n);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int64_t j = 0; j < k; ++j)
        acc += double(F8E4M3ToFloat(xq[t * k + j])) * F8E4M3ToFloat(wq[i * k + j]) *
               xs(t, j / 128) * ws(i, j / 128);
      y[t * n + i] = static_cast<float>(acc);
    }
  return y;
}

// Which scale layouts cuBLASLt reads (the documented ones, fp8_gemm.h, or their transposes):
// non-uniform scales on one side at a time, the error against each interpretation printed, the
// documented one asserted. Informative where the W8A8 test fails.
TEST(CudaFp8LayoutProbe, CublasLtScaleLayouts) {
  TESSERA_REQUIRE_CUDA();
  auto gpu = MakeCudaBackend(0);
  const int64_t m = 256, n = 384, k = 512, groups = k / 128, nblocks = n / 128;
  std::mt19937 rng(5);
  const auto w = testing::RandomFp8Weight(n, k, rng);
  std::vector<uint8_t> xq(m * k);
  for (auto& b : xq) b = static_cast<uint8_t>(rng() & 0xc7);  // |x| < 1, finite
  const int64_t xs_stride = Fp8ActivationScaleStride(m), ws_stride = w.stride;
  std::uniform_real_distribution<float> dist(0.25f, 4.0f);
  std::vector<float> xs_buf(groups * xs_stride), ws_buf(nblocks * ws_stride);
  constexpr size_t kWorkspace = 32u << 20;
  DeviceBuffer workspace = gpu->Allocate(kWorkspace);
  cuda::LtFp8Gemm lt(workspace.data(), kWorkspace);
  DeviceBuffer dx = testing::UploadRaw(*gpu, xq), dw = testing::UploadRaw(*gpu, w.data);
  DeviceBuffer dy = gpu->Allocate(m * n * 2);
  if (!lt.Supported(dx.as<uint8_t>(), dw.as<uint8_t>(), dy.as<__nv_bfloat16>(), m, n, k, ws_stride,
                    xs_stride)) {
    GTEST_SKIP() << "no block-scaled FP8 in cuBLASLt on this device";
  }
  for (int side = 0; side < 2; ++side) {  // 0: activation scales vary, 1: weight scales vary
    for (auto& v : xs_buf) v = side == 0 ? dist(rng) : 1.0f;
    for (auto& v : ws_buf) v = side == 1 ? dist(rng) : 1.0f;
    DeviceBuffer dxs = testing::UploadRaw(*gpu, xs_buf), dws = testing::UploadRaw(*gpu, ws_buf);
    lt.Linear(dx.as<uint8_t>(), dxs.as<float>(), dw.as<uint8_t>(), dws.as<float>(), m, n, k,
              dy.as<__nv_bfloat16>(), static_cast<cudaStream_t>(gpu->stream()));
    const auto y = testing::DownloadBf16(*gpu, dy, m * n);
    const auto documented = ScaledProduct(
        xq, w.data, m, n, k, [&](int64_t t, int64_t g) { return xs_buf[g * xs_stride + t]; },
        [&](int64_t i, int64_t g) { return ws_buf[(i / 128) * ws_stride + g]; });
    const auto transposed = ScaledProduct(
        xq, w.data, m, n, k, [&](int64_t t, int64_t g) { return xs_buf[t * groups + g]; },
        [&](int64_t i, int64_t g) { return ws_buf[g * nblocks + i / 128]; });
    const double e_doc = testing::RelativeL2(y, documented);
    const double e_tr = testing::RelativeL2(y, transposed);
    std::printf(
        "[cuda] cuBLASLt scale layout probe, %s scales vary: documented layout %.3e, "
        "transposed %.3e\n",
        side == 0 ? "activation" : "weight", e_doc, e_tr);
    EXPECT_LE(e_doc, kOneRounding);
  }
}

TEST(CudaFp8ModeTest, PicksByArchitectureAndFlag) {
  TESSERA_REQUIRE_CUDA();
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  const Fp8Mode expected = major >= 9 ? Fp8Mode::kW8A8 : Fp8Mode::kW8A16;
  auto gpu = MakeCudaBackend(0);
  EXPECT_EQ(gpu->fp8_mode(), expected);
  // Decode sizes run weight-only on either path; W8A8 above them.
  for (int64_t m : {1, 8, 9, 17, 4096}) {
    EXPECT_EQ(gpu->Fp8WeightOnly(m), expected != Fp8Mode::kW8A8 || m <= kFp8WeightOnlyMaxRows)
        << "m=" << m;
  }
  setenv("TESSERA_FP8_W8A16", "1", 1);
  EXPECT_EQ(MakeCudaBackend(0)->fp8_mode(), Fp8Mode::kW8A16);
  EXPECT_TRUE(MakeCudaBackend(0)->Fp8WeightOnly(4096));
  unsetenv("TESSERA_FP8_W8A16");
}

}  // namespace
}  // namespace tessera
