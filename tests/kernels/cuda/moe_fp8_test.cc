// MoeExpertsFp8 (the grouped FP8 expert GEMMs, W8A16) on the GPU: bit for bit the dequantize-then-
// MoeExperts path on the same device (DequantizeFp8Weight of every expert, then the bf16 grouped
// GEMMs), and close to the CPU reference (exact dequantization, fp32) on random inputs: experts
// with 0, 1 and many rows, other ranks' experts, each tile shape (decode, medium, prefill), odd
// hidden / intermediate sizes (multiples of 16), TP slices starting inside a 128-block (row
// offset with gate|up parts, column offset), a token count spanning two chunks of the MoE
// scratch, and a call recorded into a CUDA graph and replayed with new routing.
#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "kernels/cpu/reference.h"
#include "kernels/cuda/moe.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/fp8_test_util.h"

namespace tessera {
namespace {

using testing::kOneRounding;

// Distinct experts per token over [0, global_experts), in random order.
std::vector<int32_t> RandomRouting(int n, int global_experts, int top_k, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n) * top_k), all(global_experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), top_k, ids.begin() + static_cast<size_t>(t) * top_k);
  }
  return ids;
}

// Random FP8 experts in ExpertWeightsFp8's layout on the host: `local` experts of intermediate
// slice length `len` starting `offset` rows into a 128-block (gate|up: two parts; down: column
// offset), and the same bytes and scales on the device.
struct Fp8ExpertsCase {
  std::vector<uint8_t> gate_up, down;
  std::vector<float> gate_up_scale, down_scale;
  DeviceBuffer d_gate_up, d_down, d_gate_up_scale, d_down_scale;
  ExpertWeightsFp8 host, device;
};

Fp8ExpertsCase MakeExperts(Backend& gpu, int first, int local, int64_t H, int64_t len,
                           int64_t offset, std::mt19937& rng) {
  Fp8ExpertsCase c;
  const int64_t hb = Fp8Blocks(H), nb = Fp8Blocks(offset + len);
  const testing::HostFp8Weight gu = testing::RandomFp8Weight(local * 2 * len, H, rng);
  const testing::HostFp8Weight dn = testing::RandomFp8Weight(local * H, len, rng);
  c.gate_up = gu.data;
  c.down = dn.data;
  std::uniform_real_distribution<float> s(0.5e-2f, 2e-2f);
  c.gate_up_scale.resize(local * 2 * nb * hb);
  c.down_scale.resize(local * hb * nb);
  for (float& v : c.gate_up_scale) v = s(rng);
  for (float& v : c.down_scale) v = s(rng);
  auto upload = [&](const auto& host) {
    DeviceBuffer b = gpu.Allocate(host.size() * sizeof(host[0]));
    gpu.CopyToDevice(b.data(), host.data(), host.size() * sizeof(host[0]));
    return b;
  };
  c.d_gate_up = upload(c.gate_up);
  c.d_down = upload(c.down);
  c.d_gate_up_scale = upload(c.gate_up_scale);
  c.d_down_scale = upload(c.down_scale);
  ExpertWeightsFp8& h = c.host;
  h.first_expert = first;
  h.num_local_experts = local;
  h.hidden = H;
  h.intermediate = len;
  h.gate_up = {c.gate_up.data(), c.gate_up_scale.data(), hb, offset, 0, len, nb};
  h.gate_up_scale_batch_stride = 2 * nb * hb;
  h.down = {c.down.data(), c.down_scale.data(), nb, 0, offset, 0, 0};
  h.down_scale_batch_stride = hb * nb;
  c.device = h;
  c.device.gate_up.data = c.d_gate_up.data();
  c.device.gate_up.scale = c.d_gate_up_scale.as<float>();
  c.device.down.data = c.d_down.data();
  c.device.down.scale = c.d_down_scale.as<float>();
  return c;
}

// The dequantize-then-MoeExperts path on the GPU (the model's fallback).
std::vector<float> Fallback(Backend& gpu, const ExpertWeightsFp8& e, const DeviceBuffer& x, int n,
                            const DeviceBuffer& ids, const DeviceBuffer& w, int top_k) {
  const int64_t H = e.hidden, I = e.intermediate, E = e.num_local_experts;
  DeviceBuffer gu = gpu.Allocate(E * 2 * I * H * 2), dn = gpu.Allocate(E * H * I * 2);
  gpu.DequantizeFp8Weight(e.gate_up, 2 * I, H, E, e.gate_up_scale_batch_stride, gu.data(), nullptr);
  gpu.DequantizeFp8Weight(e.down, H, I, E, e.down_scale_batch_stride, dn.data(), nullptr);
  ExpertWeights bf{e.first_expert, e.num_local_experts, H, I, gu.data(), dn.data()};
  DeviceBuffer out = testing::PoisonedBf16(gpu, static_cast<size_t>(n) * H);
  gpu.MoeExperts(x.data(), n, ids.as<int32_t>(), w.as<float>(), top_k, bf, out.data());
  return testing::DownloadBf16(gpu, out, static_cast<size_t>(n) * H);
}

struct Fp8MoeCase {
  const char* name;
  int n, global_experts, first, local, top_k;
  int64_t hidden, inter, offset;
  bool skewed;      // route: local expert 0 none, local expert 1 one token, the rest random
  int check_every;  // compare every this-many-th token with the CPU reference (large cases)
};

class CudaMoeFp8Test : public testing::CudaParamTest<Fp8MoeCase> {};

TEST_P(CudaMoeFp8Test, MatchesDequantizedPathAndReference) {
  const Fp8MoeCase& c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.n + c.hidden * 3 + c.inter + c.first + c.offset));
  Fp8ExpertsCase experts = MakeExperts(gpu(), c.first, c.local, c.hidden, c.inter, c.offset, rng);
  ASSERT_TRUE(gpu().MoeExpertsFp8Supported(experts.device));
  auto x = testing::RandomBf16(static_cast<size_t>(c.n) * c.hidden, rng);
  std::vector<int32_t> ids = RandomRouting(c.n, c.global_experts, c.top_k, rng);
  if (c.skewed) {
    // Local expert 0 gets no row, local expert 1 exactly one (token 0's first slot).
    const int none = c.first, one = c.first + 1;
    for (int t = 0; t < c.n; ++t) {
      for (int s = 0; s < c.top_k; ++s) {
        int32_t& id = ids[t * c.top_k + s];
        if (id == none || (id == one && !(t == 0 && s == 0))) id = -1;
      }
    }
    ids[0] = one;
    for (int s = 1; s < c.top_k; ++s) ASSERT_NE(ids[s], one);
  }
  std::vector<float> w(static_cast<size_t>(c.n) * c.top_k);
  std::uniform_real_distribution<float> wd(0.05f, 1.0f);
  for (float& v : w) v = wd(rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x);
  DeviceBuffer dids = testing::UploadRaw(gpu(), ids), dw = testing::UploadRaw(gpu(), w);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), static_cast<size_t>(c.n) * c.hidden);
  gpu().MoeExpertsFp8(dx.data(), c.n, dids.as<int32_t>(), dw.as<float>(), c.top_k, experts.device,
                      out.data());
  const auto got = testing::DownloadBf16(gpu(), out, static_cast<size_t>(c.n) * c.hidden);
  EXPECT_EQ(testing::CountNaN(got), 0u) << "unwritten output rows";

  // Bit for bit the dequantize-then-bf16 path (the same widened weights, the same GEMMs).
  const auto fallback = Fallback(gpu(), experts.device, dx, c.n, dids, dw, c.top_k);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], fallback[i]) << c.name << " at " << i;
  // Both widenings (bit moves, the default; conversion instructions, kept for A/B runs) give
  // the same bits.
  for (cuda::MoeFp8Widen how : {cuda::MoeFp8Widen::kCvt, cuda::MoeFp8Widen::kBits}) {
    DeviceBuffer other = testing::PoisonedBf16(gpu(), got.size());
    cuda::SetMoeFp8Widen(how);
    gpu().MoeExpertsFp8(dx.data(), c.n, dids.as<int32_t>(), dw.as<float>(), c.top_k, experts.device,
                        other.data());
    cuda::SetMoeFp8Widen(cuda::MoeFp8Widen::kDefault);
    EXPECT_EQ(testing::DownloadBf16(gpu(), other, got.size()), got)
        << c.name << " widening " << static_cast<int>(how);
  }

  // Close to the CPU reference (exact dequantization, fp32 throughout).
  auto cpu_backend = MakeCpuBackend();
  std::vector<float> sub_got, sub_ref, row(c.hidden);
  for (int t = 0; t < c.n; t += c.check_every) {
    cpu_backend->MoeExpertsFp8(x.data() + static_cast<size_t>(t) * c.hidden, 1,
                               ids.data() + t * c.top_k, w.data() + t * c.top_k, c.top_k,
                               experts.host, row.data());
    sub_ref.insert(sub_ref.end(), row.begin(), row.end());
    sub_got.insert(sub_got.end(), got.begin() + static_cast<size_t>(t) * c.hidden,
                   got.begin() + static_cast<size_t>(t + 1) * c.hidden);
  }
  // The weights (rounded to bf16 once dequantized), gate|up, the activation, each expert's
  // output and the combined output are each rounded.
  testing::ExpectRelativeL2(c.name, sub_got, sub_ref, 5 * kOneRounding);

  // Deterministic.
  DeviceBuffer again = testing::PoisonedBf16(gpu(), got.size());
  gpu().MoeExpertsFp8(dx.data(), c.n, dids.as<int32_t>(), dw.as<float>(), c.top_k, experts.device,
                      again.data());
  EXPECT_EQ(testing::DownloadBf16(gpu(), again, got.size()), got);
}

std::string CaseName(const ::testing::TestParamInfo<Fp8MoeCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMoeFp8Test,
    ::testing::Values(Fp8MoeCase{"all_local", 37, 6, 0, 6, 2, 128, 128, 0, false, 1},
                      Fp8MoeCase{"odd_sizes_skewed", 29, 8, 0, 8, 3, 208, 80, 0, true, 1},
                      Fp8MoeCase{"expert_parallel_slice", 41, 10, 4, 3, 4, 64, 48, 0, true, 1},
                      Fp8MoeCase{"tp_slice_in_block", 33, 8, 0, 8, 2, 256, 96, 32, true, 1},
                      Fp8MoeCase{"tp8_235b_like", 9, 16, 0, 16, 8, 384, 192, 64, false, 1},
                      Fp8MoeCase{"decode_1_token_top8", 1, 128, 0, 128, 8, 512, 192, 0, false, 1},
                      Fp8MoeCase{"decode_128_tokens", 128, 128, 0, 128, 8, 256, 128, 0, false, 3},
                      // 300 pairs over 4 experts: 128-row tiles, partial row, column and k tiles.
                      Fp8MoeCase{"prefill_tiles", 300, 4, 0, 4, 2, 208, 80, 0, false, 1},
                      Fp8MoeCase{"medium_tiles_slice", 40, 16, 4, 5, 8, 144, 96, 0, false, 1},
                      // 48 KB of scratch per token: 5454 tokens per 256 MiB chunk, so two.
                      Fp8MoeCase{"two_chunks", 5600, 8, 0, 8, 8, 2048, 1024, 0, false, 200}),
    CaseName);

TEST(CudaMoeFp8SupportTest, ColumnOffsetsOff16AreNotTaken) {
  TESSERA_REQUIRE_CUDA();
  auto gpu = MakeCudaBackend(0);
  DeviceBuffer data = gpu->Allocate(1 << 16), scale = gpu->Allocate(1 << 12);
  ExpertWeightsFp8 e;
  e.num_local_experts = 1;
  e.hidden = 64;
  e.intermediate = 48;
  e.gate_up = {data.data(), scale.as<float>(), 1, 8, 0, 48, 1};  // a row offset: fine
  e.down = {data.data(), scale.as<float>(), 1, 0, 16, 0, 0};
  EXPECT_TRUE(gpu->MoeExpertsFp8Supported(e));
  e.down.col_offset = 8;  // 16-column chunks would straddle a block
  EXPECT_FALSE(gpu->MoeExpertsFp8Supported(e));
  e.down.col_offset = 0;
  e.intermediate = 40;  // k % 16 != 0
  EXPECT_FALSE(gpu->MoeExpertsFp8Supported(e));
}

// The routing is read on the device only, so MoeExpertsFp8 records into a CUDA graph; a replay
// after new ids and weights equals a direct call on them.
class CudaMoeFp8GraphTest : public testing::CudaTest {};

TEST_F(CudaMoeFp8GraphTest, ReplaysFromGraph) {
  ASSERT_TRUE(gpu().CanCaptureGraphs());
  const int n = 24, global = 32, top_k = 8;
  const int64_t hidden = 256, inter = 96;
  std::mt19937 rng(11);
  Fp8ExpertsCase experts = MakeExperts(gpu(), 0, global, hidden, inter, 0, rng);
  auto x = testing::RandomBf16(static_cast<size_t>(n) * hidden, rng);
  DeviceBuffer dx = testing::UploadBf16(gpu(), x);
  std::uniform_real_distribution<float> wd(0.05f, 1.0f);
  auto routing = [&] {
    std::vector<float> w(static_cast<size_t>(n) * top_k);
    for (float& v : w) v = wd(rng);
    return std::make_pair(RandomRouting(n, global, top_k, rng), w);
  };
  auto [ids0, w0] = routing();
  DeviceBuffer dids = testing::UploadRaw(gpu(), ids0), dw = testing::UploadRaw(gpu(), w0);
  DeviceBuffer out = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * hidden);
  gpu().BeginCapture();
  gpu().MoeExpertsFp8(dx.data(), n, dids.as<int32_t>(), dw.as<float>(), top_k, experts.device,
                      out.data());
  std::unique_ptr<DeviceGraph> graph = gpu().EndCapture();
  ASSERT_NE(graph, nullptr) << "MoeExpertsFp8 could not be recorded";
  for (int replay = 0; replay < 3; ++replay) {
    auto [ids, w] = routing();
    gpu().CopyToDevice(dids.data(), ids.data(), ids.size() * sizeof(int32_t));
    gpu().CopyToDevice(dw.data(), w.data(), w.size() * sizeof(float));
    graph->Replay();
    const auto got = testing::DownloadBf16(gpu(), out, static_cast<size_t>(n) * hidden);
    DeviceBuffer direct = testing::PoisonedBf16(gpu(), static_cast<size_t>(n) * hidden);
    gpu().MoeExpertsFp8(dx.data(), n, dids.as<int32_t>(), dw.as<float>(), top_k, experts.device,
                        direct.data());
    EXPECT_EQ(got, testing::DownloadBf16(gpu(), direct, got.size())) << "replay " << replay;
  }
}

}  // namespace
}  // namespace tessera
