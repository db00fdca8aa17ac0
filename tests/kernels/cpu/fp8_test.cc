// The FP8 CPU reference (kernels/cpu/fp8.cc): E4M3 rounding against a brute-force nearest-value
// search and known bit patterns, per-token 1x128 quantization (scales, layout, error bound, zero
// groups), and the W8A8 / W8A16 products against dequantize-then-fp32-GEMM, at odd sizes (k and n
// not multiples of 128, m not a multiple of 4); the CPU backend's FP8 ops (LinearFp8's padded
// rows, Fp8WeightOnly's choice at decode sizes, as the CUDA backend's on Hopper); and MoeExpertsFp8
// against a naive dequantize + fp32 expert MLP, TP slices inside a block included.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/cpu/reference.h"
#include "kernels/ops.h"
#include "tests/kernels/cpu/test_util.h"

namespace tessera {
namespace {

// The nearest finite E4M3 value by exhaustive search, ties to the even encoding, saturating.
uint8_t NearestE4M3(float f) {
  if (std::isnan(f)) return std::signbit(f) ? 0xff : 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 448.0) return sign | 0x7e;
  uint8_t best = 0;
  double best_d = INFINITY;
  for (int b = 0; b <= 0x7e; ++b) {
    const double d = std::fabs(F8E4M3ToFloat(static_cast<uint8_t>(b)) - a);
    if (d < best_d || (d == best_d && (b & 1) == 0)) {
      best = static_cast<uint8_t>(b);
      best_d = d;
    }
  }
  return sign | best;
}

TEST(Fp8Test, KnownValues) {
  EXPECT_EQ(FloatToF8E4M3(0.0f), 0x00);
  EXPECT_EQ(FloatToF8E4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToF8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToF8E4M3(-2.0f), 0xc0);
  EXPECT_EQ(FloatToF8E4M3(448.0f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(460.0f), 0x7e);  // past the largest finite value: saturates
  EXPECT_EQ(FloatToF8E4M3(1e9f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(-INFINITY), 0xfe);
  EXPECT_EQ(FloatToF8E4M3(INFINITY), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(NAN) & 0x7f, 0x7f);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -9)), 0x01);       // smallest subnormal
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -10)), 0x00);      // half of it: tie to even (0)
  EXPECT_EQ(FloatToF8E4M3(3 * std::ldexp(1.0f, -10)), 0x02);  // 1.5 steps: tie to even (2)
  EXPECT_EQ(FloatToF8E4M3(1.0625f), 0x38);                    // halfway 1 and 1.125: to even (1)
  EXPECT_EQ(FloatToF8E4M3(1.1875f), 0x3a);                 // halfway 1.125 and 1.25: to even (1.25)
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(15.0f, -10)), 0x08);  // rounds up to the smallest normal
}

TEST(Fp8Test, EveryEncodingRoundTrips) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(FloatToF8E4M3(F8E4M3ToFloat(static_cast<uint8_t>(b))), b) << "bits " << b;
  }
}

TEST(Fp8Test, RoundingMatchesNearestValue) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-13, 9);
  for (int i = 0; i < 200000; ++i) {
    float f = std::ldexp(mantissa(rng), exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
    if (i % 3 == 0) {  // exact midpoints between neighbouring encodings
      const uint8_t b = static_cast<uint8_t>(rng() % 0x7e);
      f = 0.5f * (F8E4M3ToFloat(b) + F8E4M3ToFloat(b + 1));
    }
    ASSERT_EQ(FloatToF8E4M3(f), NearestE4M3(f)) << "f = " << f;
  }
}

TEST(Fp8Test, QuantizeActivations) {
  const int64_t m = 5, k = 300;  // a partial last group (300 = 2 * 128 + 44); m not a multiple of 4
  std::mt19937 rng(11);
  auto x = testing::RandomVector(m * k, rng, -3.0f, 3.0f);
  for (int64_t j = 128; j < 256; ++j) x[2 * k + j] = 0.0f;  // an all-zero group: scale 1
  const int64_t stride = Fp8ActivationScaleStride(m);
  ASSERT_EQ(stride, 16);  // Fp8PaddedRows(5): the rows cuBLASLt runs on
  std::vector<uint8_t> q(m * k);
  std::vector<float> s(Fp8Blocks(k) * stride, NAN);
  cpu::QuantizeFp8(x.data(), m, k, q.data(), s.data(), stride);
  std::vector<float> back(m * k);
  cpu::DequantizeFp8Activations(q.data(), s.data(), stride, m, k, back.data());
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t g = 0; g < Fp8Blocks(k); ++g) {
      const int64_t j0 = g * 128, j1 = std::min<int64_t>(k, j0 + 128);
      float amax = 0;
      for (int64_t j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(x[t * k + j]));
      const float scale = s[g * stride + t];
      EXPECT_EQ(scale, amax > 0 ? amax / 448.0f : 1.0f) << t << "," << g;
      for (int64_t j = j0; j < j1; ++j) {
        // 3 mantissa bits: within 2^-4 relative for normals, half a subnormal step below.
        EXPECT_LE(std::fabs(back[t * k + j] - x[t * k + j]),
                  std::fabs(x[t * k + j]) / 16 + scale * std::ldexp(1.0f, -10))
            << t << "," << j;
        EXPECT_LE(std::fabs(F8E4M3ToFloat(q[t * k + j])), 448.0f);
      }
    }
  }
  for (int64_t j = 128; j < 256; ++j) EXPECT_EQ(q[2 * k + j], 0);
}

struct Shape {
  int64_t m, n, k;
};

// Random e4m3 weights (bytes of finite values) and block scales around `scale_mean`.
void RandomWeight(int64_t n, int64_t k, std::mt19937& rng, std::vector<uint8_t>* data,
                  std::vector<float>* scale, int64_t stride) {
  data->resize(n * k);
  for (auto& b : *data) {
    b = static_cast<uint8_t>(rng() & 0xff);
    if ((b & 0x7f) == 0x7f || (b & 0x78) >= 0x50) b &= 0xc7;  // keep |w| < 2^4 and finite
  }
  std::uniform_real_distribution<float> s(0.5e-2f, 2e-2f);
  scale->assign(Fp8Blocks(n) * stride, NAN);  // padding columns must never be read
  for (int64_t i = 0; i < Fp8Blocks(n); ++i)
    for (int64_t g = 0; g < Fp8Blocks(k); ++g) (*scale)[i * stride + g] = s(rng);
}

class Fp8LinearTest : public ::testing::TestWithParam<Shape> {};

TEST_P(Fp8LinearTest, MatchesDequantizedGemm) {
  const auto [m, n, k] = GetParam();
  std::mt19937 rng(m * 7919 + n * 31 + k);
  const int64_t ws = Fp8WeightScaleStride(k), xs = Fp8ActivationScaleStride(m);
  std::vector<uint8_t> wq;
  std::vector<float> wscale;
  RandomWeight(n, k, rng, &wq, &wscale, ws);
  auto x = testing::RandomVector(m * k, rng, -2.0f, 2.0f);
  std::vector<uint8_t> xq(m * k);
  std::vector<float> xscale(Fp8Blocks(k) * xs, NAN);
  cpu::QuantizeFp8(x.data(), m, k, xq.data(), xscale.data(), xs);

  std::vector<float> wf(n * k), xf(m * k), ref(m * n), y(m * n);
  cpu::DequantizeFp8Weight(wq.data(), wscale.data(), ws, n, k, wf.data());
  cpu::DequantizeFp8Activations(xq.data(), xscale.data(), xs, m, k, xf.data());
  cpu::Linear(xf.data(), wf.data(), m, n, k, ref.data());
  cpu::LinearFp8(xq.data(), xscale.data(), xs, wq.data(), wscale.data(), ws, m, n, k, y.data());
  std::vector<double> ref_d(ref.begin(), ref.end());
  testing::ExpectClose(y, ref_d, 1e-5, 1e-4);

  // W8A16: x unquantized.
  cpu::Linear(x.data(), wf.data(), m, n, k, ref.data());
  cpu::LinearFp8WeightOnly(x.data(), wq.data(), wscale.data(), ws, m, n, k, y.data());
  ref_d.assign(ref.begin(), ref.end());
  testing::ExpectClose(y, ref_d, 1e-6, 1e-6);

  // And the W8A8 product is the W8A16 one up to the activations' quantization error.
  std::vector<float> y8(m * n);
  cpu::LinearFp8(xq.data(), xscale.data(), xs, wq.data(), wscale.data(), ws, m, n, k, y8.data());
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    diff += (y8[i] - ref[i]) * (y8[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 0.05);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8LinearTest,
                         ::testing::Values(Shape{1, 128, 128}, Shape{3, 200, 300},
                                           Shape{17, 129, 720}, Shape{4, 384, 1040},
                                           Shape{33, 61, 77}));

// Block quantization (transformers' formula): every element within half an e4m3 step of the
// original, the block's largest magnitude at +-448, scales 1 / (448 / amax); odd sizes.
TEST(Fp8WeightQuantizeTest, MatchesTransformersFormula) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  for (auto [n, k] : {std::pair<int64_t, int64_t>{200, 300}, {128, 128}, {5, 129}}) {
    std::vector<float> w(n * k);
    for (float& v : w) v = dist(rng);
    const int64_t stride = Fp8WeightScaleStride(k);
    std::vector<uint8_t> data(n * k);
    std::vector<float> scale(Fp8Blocks(n) * stride, NAN);
    cpu::QuantizeFp8Weight(w.data(), n, k, data.data(), scale.data(), stride);
    for (int64_t bi = 0; bi < Fp8Blocks(n); ++bi) {
      for (int64_t bj = 0; bj < Fp8Blocks(k); ++bj) {
        float amax = 0.0f;
        for (int64_t i = bi * 128; i < std::min(n, bi * 128 + 128); ++i)
          for (int64_t j = bj * 128; j < std::min(k, bj * 128 + 128); ++j)
            amax = std::max(amax, std::fabs(w[i * k + j]));
        const float s = 448.0f / amax;
        ASSERT_EQ(scale[bi * stride + bj], 1.0f / s) << bi << "," << bj;
        for (int64_t i = bi * 128; i < std::min(n, bi * 128 + 128); ++i)
          for (int64_t j = bj * 128; j < std::min(k, bj * 128 + 128); ++j)
            ASSERT_EQ(data[i * k + j], NearestE4M3(w[i * k + j] * s)) << i << "," << j;
      }
    }
  }
}

TEST(Fp8WeightQuantizeTest, MarkExpertsAndSkip) {
  std::vector<int32_t> used(3, 7);
  const std::vector<int32_t> ids = {4, 9, -1, 6, 4};
  cpu::MarkExperts(ids.data(), static_cast<int64_t>(ids.size()), 4, 3, used.data());
  EXPECT_EQ(used, (std::vector<int32_t>{1, 0, 1}));
  std::vector<uint8_t> data(3 * 2 * 2, 0x38);  // e4m3 1.0
  const std::vector<float> scale = {2.0f, 3.0f, 4.0f};
  Fp8Weight layout;
  layout.scale = scale.data();
  layout.scale_stride = 1;
  std::vector<float> out(12, -1.0f);
  cpu::DequantizeFp8Blocks(data.data(), layout, 2, 2, 3, 1, out.data(), used.data());
  EXPECT_EQ(out, (std::vector<float>{2, 2, 2, 2, -1, -1, -1, -1, 4, 4, 4, 4}));
}

// A TP slice that starts inside a block keeps the checkpoint's scales for its part: dequantizing
// the slice with row/col offsets (and gate|up parts) gives exactly the slice of the whole
// tensor's dequantization.
TEST(Fp8WeightQuantizeTest, OffsetSlicesDequantizeAsTheWholeTensor) {
  std::mt19937 rng(3);
  const int64_t n = 384, k = 384;  // 3 x 3 blocks, as a 235B expert (1536) at a smaller scale
  std::vector<uint8_t> gate, up;
  std::vector<float> gate_scale, up_scale;
  RandomWeight(n, k, rng, &gate, &gate_scale, 3);
  RandomWeight(n, k, rng, &up, &up_scale, 3);
  std::vector<float> gate_full(n * k), up_full(n * k);
  cpu::DequantizeFp8Weight(gate.data(), gate_scale.data(), 3, n, k, gate_full.data());
  cpu::DequantizeFp8Weight(up.data(), up_scale.data(), 3, n, k, up_full.data());
  for (int64_t start : {int64_t{0}, int64_t{96}, int64_t{192}, int64_t{288}}) {
    const int64_t len = 96;  // TP4: rank r holds rows [96 r, 96 r + 96)
    const int64_t first = start / 128, nb = (start + len - 1) / 128 - first + 1;
    // Column-parallel gate|up: [gate rows | up rows] [2 len, k], scale rows [gate nb | up nb].
    std::vector<uint8_t> fused(2 * len * k);
    std::copy_n(gate.begin() + start * k, len * k, fused.begin());
    std::copy_n(up.begin() + start * k, len * k, fused.begin() + len * k);
    std::vector<float> fused_scale(2 * nb * 3);
    std::copy_n(gate_scale.begin() + first * 3, nb * 3, fused_scale.begin());
    std::copy_n(up_scale.begin() + first * 3, nb * 3, fused_scale.begin() + nb * 3);
    Fp8Weight layout;
    layout.scale = fused_scale.data();
    layout.scale_stride = 3;
    layout.row_offset = start % 128;
    layout.part_rows = len;
    layout.part_scale_rows = nb;
    std::vector<float> got(2 * len * k);
    cpu::DequantizeFp8Blocks(fused.data(), layout, 2 * len, k, 1, 0, got.data());
    for (int64_t i = 0; i < len * k; ++i) {
      ASSERT_EQ(got[i], gate_full[start * k + i]) << start << " gate " << i;
      ASSERT_EQ(got[len * k + i], up_full[start * k + i]) << start << " up " << i;
    }
    // Row-parallel down [n, len]: the columns [start, start + len), scale columns overlapped.
    std::vector<uint8_t> cols(n * len);
    std::vector<float> col_scale(3 * nb);
    for (int64_t i = 0; i < n; ++i) std::copy_n(gate.begin() + i * k + start, len, &cols[i * len]);
    for (int64_t b = 0; b < 3; ++b)
      std::copy_n(gate_scale.begin() + b * 3 + first, nb, &col_scale[b * nb]);
    Fp8Weight down;
    down.scale = col_scale.data();
    down.scale_stride = nb;
    down.col_offset = start % 128;
    std::vector<float> got_down(n * len);
    cpu::DequantizeFp8Blocks(cols.data(), down, n, len, 1, 0, got_down.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < len; ++j)
        ASSERT_EQ(got_down[i * len + j], gate_full[i * k + start + j]) << start << " down";
  }
}

TEST(Fp8BackendTest, CpuOpsMatchReference) {
  auto cpu_backend = MakeCpuBackend();
  ASSERT_EQ(cpu_backend->fp8_mode(), Fp8Mode::kW8A8);
  const int64_t m = 6, n = 130, k = 260;
  std::mt19937 rng(3);
  const int64_t ws = Fp8WeightScaleStride(k), xs = Fp8ActivationScaleStride(m);
  std::vector<uint8_t> wq;
  std::vector<float> wscale;
  RandomWeight(n, k, rng, &wq, &wscale, ws);
  auto x = testing::RandomVector(m * k, rng);
  std::vector<uint8_t> xq(m * k);
  std::vector<float> xscale(Fp8Blocks(k) * xs);
  const Fp8Activations act{xq.data(), xscale.data(), xs};
  cpu_backend->QuantizeFp8(x.data(), m, k, act);
  const Fp8Weight w{wq.data(), wscale.data(), ws};
  // LinearFp8's y spans Fp8PaddedRows(m) rows: the padded ones NaN here (so a caller reading them
  // fails), one row past them untouched.
  const int64_t rows = Fp8PaddedRows(m);
  ASSERT_EQ(rows, 16);
  std::vector<float> y((rows + 1) * n, 7.0f), ref(m * n);
  cpu_backend->LinearFp8(act, w, m, n, k, y.data());
  for (int64_t i = m * n; i < rows * n; ++i)
    ASSERT_TRUE(std::isnan(y[i])) << "padded element " << i;
  for (int64_t i = rows * n; i < (rows + 1) * n; ++i) ASSERT_EQ(y[i], 7.0f) << "past the padding";
  y.resize(m * n);
  std::vector<uint8_t> xq_ref(m * k);
  std::vector<float> xscale_ref(Fp8Blocks(k) * xs);
  cpu::QuantizeFp8(x.data(), m, k, xq_ref.data(), xscale_ref.data(), xs);
  EXPECT_EQ(xq, xq_ref);
  cpu::LinearFp8(xq_ref.data(), xscale_ref.data(), xs, wq.data(), wscale.data(), ws, m, n, k,
                 ref.data());
  EXPECT_EQ(y, ref);
  cpu_backend->LinearFp8WeightOnly(x.data(), w, m, n, k, y.data());
  cpu::LinearFp8WeightOnly(x.data(), wq.data(), wscale.data(), ws, m, n, k, ref.data());
  EXPECT_EQ(y, ref);
}

// The dispatch the CUDA backend makes on Hopper, mirrored: W8A8 runs decode sizes (m <=
// kFp8WeightOnlyMaxRows) weight-only; TESSERA_FP8_W8A16=1 runs everything weight-only.
TEST(Fp8BackendTest, WeightOnlyAtDecodeSizes) {
  auto w8a8 = MakeCpuBackend();
  ASSERT_EQ(w8a8->fp8_mode(), Fp8Mode::kW8A8);
  for (int64_t m = 1; m <= kFp8WeightOnlyMaxRows; ++m) EXPECT_TRUE(w8a8->Fp8WeightOnly(m)) << m;
  for (int64_t m : {kFp8WeightOnlyMaxRows + 1, int64_t{17}, int64_t{4096}}) {
    EXPECT_FALSE(w8a8->Fp8WeightOnly(m)) << m;
  }
  setenv("TESSERA_FP8_W8A16", "1", 1);
  auto w8a16 = MakeCpuBackend();
  unsetenv("TESSERA_FP8_W8A16");
  ASSERT_EQ(w8a16->fp8_mode(), Fp8Mode::kW8A16);
  EXPECT_TRUE(w8a16->Fp8WeightOnly(4096));
  EXPECT_EQ(Fp8PaddedRows(1), 16);
  EXPECT_EQ(Fp8PaddedRows(16), 16);
  EXPECT_EQ(Fp8PaddedRows(4095), 4096);
}

// One MoE layer's FP8 experts as a rank holds them: `num` local experts of intermediate slice
// [start, start + len) of I_full, in ExpertWeightsFp8's layout, and each expert's whole weights
// dequantized naively (element * scale[i / 128][j / 128]) for the reference.
struct Fp8Experts {
  std::vector<uint8_t> gate_up, down;             // [E, 2 len, H], [E, H, len]
  std::vector<float> gate_up_scale, down_scale;   // E tables [2 nb, hb], [hb, nb]
  std::vector<std::vector<double>> gate, up, dn;  // per expert: [I_full, H] x2, [H, I_full]
  ExpertWeightsFp8 view;
};

Fp8Experts MakeFp8Experts(int first, int num, int64_t H, int64_t I_full, int64_t start, int64_t len,
                          std::mt19937& rng) {
  Fp8Experts x;
  const int64_t hb = Fp8Blocks(H), ib = Fp8Blocks(I_full);
  const int64_t first_block = start / kFp8Block;
  const int64_t nb = (start + len - 1) / kFp8Block - first_block + 1;
  x.gate_up.resize(num * 2 * len * H);
  x.down.resize(num * H * len);
  x.gate_up_scale.resize(num * 2 * nb * hb);
  x.down_scale.resize(num * hb * nb);
  auto dequantize = [](const std::vector<uint8_t>& d, const std::vector<float>& s, int64_t n,
                       int64_t k, int64_t stride) {
    std::vector<double> w(n * k);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < k; ++j)
        w[i * k + j] = static_cast<double>(F8E4M3ToFloat(d[i * k + j])) *
                       s[(i / kFp8Block) * stride + j / kFp8Block];
    return w;
  };
  for (int e = 0; e < num; ++e) {
    std::vector<uint8_t> g, u, d;
    std::vector<float> gs, us, ds;
    RandomWeight(I_full, H, rng, &g, &gs, hb);
    RandomWeight(I_full, H, rng, &u, &us, hb);
    RandomWeight(H, I_full, rng, &d, &ds, ib);
    x.gate.push_back(dequantize(g, gs, I_full, H, hb));
    x.up.push_back(dequantize(u, us, I_full, H, hb));
    x.dn.push_back(dequantize(d, ds, H, I_full, ib));
    uint8_t* gu = x.gate_up.data() + e * 2 * len * H;
    std::copy_n(g.begin() + start * H, len * H, gu);
    std::copy_n(u.begin() + start * H, len * H, gu + len * H);
    float* gus = x.gate_up_scale.data() + e * 2 * nb * hb;
    std::copy_n(gs.begin() + first_block * hb, nb * hb, gus);
    std::copy_n(us.begin() + first_block * hb, nb * hb, gus + nb * hb);
    for (int64_t i = 0; i < H; ++i) {
      std::copy_n(d.begin() + i * I_full + start, len, x.down.begin() + (e * H + i) * len);
    }
    for (int64_t b = 0; b < hb; ++b) {
      std::copy_n(ds.begin() + b * ib + first_block, nb,
                  x.down_scale.begin() + e * hb * nb + b * nb);
    }
  }
  ExpertWeightsFp8& v = x.view;
  v.first_expert = first;
  v.num_local_experts = num;
  v.hidden = H;
  v.intermediate = len;
  v.gate_up = {x.gate_up.data(), x.gate_up_scale.data(), hb, start % kFp8Block, 0, len, nb};
  v.gate_up_scale_batch_stride = 2 * nb * hb;
  v.down = {x.down.data(), x.down_scale.data(), nb, 0, start % kFp8Block, 0, 0};
  v.down_scale_batch_stride = hb * nb;
  return x;
}

// (I_full, start, len): the whole intermediate, and TP slices that start inside a block.
class MoeExpertsFp8Test : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(MoeExpertsFp8Test, MatchesNaiveDequantizedExperts) {
  const auto [I_full, start, len] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(I_full + start * 7 + len));
  const int64_t H = 200;                            // partial last block of the hidden dimension
  const int first = 1, num = 4, top_k = 2, n = 11;  // 6 global experts
  Fp8Experts experts = MakeFp8Experts(first, num, H, I_full, start, len, rng);
  // Local expert 1 (global 2) gets no token, local 2 (global 3) exactly one (token 0), the
  // others many; global 0 and 5 belong to other ranks (the last token's only experts).
  std::vector<int32_t> ids(n * top_k);
  for (int t = 0; t < n; ++t) {
    ids[t * top_k] = t == 0 ? 3 : (t % 3 == 0 ? 0 : 1);
    ids[t * top_k + 1] = t % 2 == 0 ? 4 : 5;
  }
  ids[(n - 1) * top_k] = 0;  // the last token: other ranks' experts only
  ids[(n - 1) * top_k + 1] = 5;
  std::vector<float> weights = testing::RandomVector(n * top_k, rng, 0.1f, 1.0f);
  std::vector<float> x = testing::RandomVector(n * H, rng);
  auto backend = MakeCpuBackend();
  ASSERT_TRUE(backend->MoeExpertsFp8Supported(experts.view));
  std::vector<float> got(n * H, NAN);
  backend->MoeExpertsFp8(x.data(), n, ids.data(), weights.data(), top_k, experts.view, got.data());

  std::vector<double> ref(n * H, 0.0);
  for (int t = 0; t < n; ++t) {
    for (int s = 0; s < top_k; ++s) {
      const int e = ids[t * top_k + s] - first;
      if (e < 0 || e >= num) continue;
      std::vector<double> act(len);
      for (int64_t i = 0; i < len; ++i) {
        double g = 0.0, u = 0.0;
        for (int64_t j = 0; j < H; ++j) {
          g += experts.gate[e][(start + i) * H + j] * x[t * H + j];
          u += experts.up[e][(start + i) * H + j] * x[t * H + j];
        }
        act[i] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t o = 0; o < H; ++o) {
        double y = 0.0;
        for (int64_t i = 0; i < len; ++i) y += experts.dn[e][o * I_full + start + i] * act[i];
        ref[t * H + o] += weights[t * top_k + s] * y;
      }
    }
  }
  testing::ExpectClose(got, ref, 1e-5, 1e-4);
  for (int64_t o = 0; o < H; ++o) EXPECT_EQ(got[(n - 1) * H + o], 0.0f) << "token of other ranks";

  // The model's fallback (routed experts dequantized, then MoeExperts) gives the same bits.
  std::vector<float> gu(num * 2 * len * H), dn(num * H * len);
  backend->DequantizeFp8Weight(experts.view.gate_up, 2 * len, H, num,
                               experts.view.gate_up_scale_batch_stride, gu.data(), nullptr);
  backend->DequantizeFp8Weight(experts.view.down, H, len, num, experts.view.down_scale_batch_stride,
                               dn.data(), nullptr);
  ExpertWeights bf{first, num, H, len, gu.data(), dn.data()};
  std::vector<float> fallback(n * H, NAN);
  backend->MoeExperts(x.data(), n, ids.data(), weights.data(), top_k, bf, fallback.data());
  EXPECT_EQ(got, fallback);
}

INSTANTIATE_TEST_SUITE_P(Slices, MoeExpertsFp8Test,
                         ::testing::Values(std::make_tuple(int64_t{256}, int64_t{0}, int64_t{256}),
                                           std::make_tuple(int64_t{200}, int64_t{0}, int64_t{200}),
                                           std::make_tuple(int64_t{384}, int64_t{96}, int64_t{96}),
                                           std::make_tuple(int64_t{384}, int64_t{192},
                                                           int64_t{192})));

}  // namespace
}  // namespace tessera
