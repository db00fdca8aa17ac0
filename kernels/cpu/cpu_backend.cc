// The CPU backend: float32 activations and weights in host memory, ops from reference.h.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "kernels/base/check.h"
#include "kernels/cpu/reference.h"
#include "kernels/ops.h"

namespace tessera {
namespace {

void FreeAligned(void* p) { std::free(p); }

inline const float* F(const void* p) { return static_cast<const float*>(p); }
inline float* F(void* p) { return static_cast<float*>(p); }

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  DType activation_dtype() const override { return DType::kF32; }
  DType weight_dtype() const override { return DType::kF32; }

  DeviceBuffer Allocate(size_t bytes) override {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    TESSERA_CHECK(p != nullptr) << "out of host memory allocating " << bytes << " bytes";
    return DeviceBuffer(p, bytes, FreeAligned);
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void UploadFloat(void* dst, DType dtype, const float* src, size_t count) override {
    TESSERA_CHECK(dtype == DType::kF32) << "the CPU backend stores float32 only";
    std::memcpy(dst, src, count * sizeof(float));
  }
  void DownloadFloat(float* dst, const void* src, DType dtype, size_t count) override {
    TESSERA_CHECK(dtype == DType::kF32) << "the CPU backend stores float32 only";
    std::memcpy(dst, src, count * sizeof(float));
  }
  void Synchronize() override {}
  // NOTE: converts straight from the staging buffer: no float32 copy of the slice.
  void UploadStaged(void* dst, DType dst_dtype, const void* staging, DType src_dtype, size_t count,
                    void* /*scratch*/) override {
    // FP8 weights stay e4m3 bytes (src_dtype == dst_dtype: copied), like on the GPU.
    TESSERA_CHECK(dst_dtype == DType::kF32 || dst_dtype == src_dtype)
        << "the CPU backend stores float32 (and e4m3 weights as they are) only";
    ConvertDType(src_dtype, staging, count, dst_dtype, dst);
  }

  void Embedding(const void* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                 const int32_t* ids, int n, void* out) override {
    cpu::Embedding(F(table), vocab_start, vocab_end, hidden, ids, n, F(out));
  }
  void RmsNorm(const void* x, const void* weight, int64_t rows, int64_t dim, float eps,
               void* out) override {
    cpu::RmsNorm(F(x), F(weight), rows, dim, eps, F(out));
  }
  void AddRmsNorm(void* residual, const void* x, const void* weight, int64_t rows, int64_t dim,
                  float eps, void* out) override {
    cpu::AddRmsNorm(F(residual), F(x), F(weight), rows, dim, eps, F(out));
  }
  void Linear(const void* x, const void* w, int64_t m, int64_t n, int64_t k, void* y) override {
    cpu::Linear(F(x), F(w), m, n, k, F(y));
  }
  void HeadNormRope(void* x, int64_t row_stride, int n, int heads, int head_dim,
                    const void* norm_weight, float eps, const int32_t* positions,
                    const float* inv_freq, float attention_scaling) override {
    cpu::HeadNormRope(F(x), row_stride, n, heads, head_dim, F(norm_weight), eps, positions,
                      inv_freq, attention_scaling);
  }
  void WriteKvCache(const void* k, const void* v, int64_t row_stride, int n, int kv_heads,
                    int head_dim, const int32_t* slot_mapping, void* k_cache,
                    void* v_cache) override {
    cpu::WriteKvCache(F(k), F(v), row_stride, n, kv_heads, head_dim, slot_mapping, F(k_cache),
                      F(v_cache));
  }
  void QkNormRopeKvWrite(void* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                         int head_dim, const void* q_norm, const void* k_norm, float eps,
                         const int32_t* positions, const float* inv_freq, float attention_scaling,
                         const int32_t* slot_mapping, void* k_cache, void* v_cache) override {
    cpu::QkNormRopeKvWrite(F(qkv), row_stride, n, q_heads, kv_heads, head_dim, F(q_norm), F(k_norm),
                           eps, positions, inv_freq, attention_scaling, slot_mapping, F(k_cache),
                           F(v_cache));
  }
  void Attention(const void* q, int64_t q_row_stride, const void* k_cache, const void* v_cache,
                 const AttentionBatch& batch, int q_heads, int kv_heads, int head_dim, float scale,
                 void* out) override {
    cpu::Attention(F(q), q_row_stride, F(k_cache), F(v_cache), batch.num_tokens, batch.positions,
                   batch.token_seq, batch.block_tables, batch.max_blocks_per_seq, batch.block_size,
                   q_heads, kv_heads, head_dim, scale, F(out));
  }
  void SiluMul(const void* gate_up, int64_t m, int64_t intermediate, void* out) override {
    cpu::SiluMul(F(gate_up), m, intermediate, F(out));
  }
  void GatherRows(const void* x, const int32_t* rows, int r, int64_t dim, void* out) override {
    cpu::GatherRows(F(x), rows, r, dim, F(out));
  }
  void Add(const void* a, const void* b, int64_t n, void* out) override {
    cpu::Add(F(a), F(b), n, F(out));
  }
  void RouterTopK(const void* logits, int n, int num_experts, int top_k, bool normalize,
                  int32_t* ids, float* weights) override {
    cpu::RouterTopK(F(logits), n, num_experts, top_k, normalize, ids, weights);
  }
  void MoeExperts(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                  const ExpertWeights& experts, void* out) override {
    cpu::MoeExperts(F(x), n, ids, weights, top_k, experts.first_expert, experts.num_local_experts,
                    experts.hidden, experts.intermediate, F(experts.gate_up), F(experts.down),
                    F(out));
  }
  bool MoeExpertsFp8Supported(const ExpertWeightsFp8& /*experts*/) const override { return true; }
  void MoeExpertsFp8(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                     const ExpertWeightsFp8& experts, void* out) override {
    cpu::MoeExpertsFp8(F(x), n, ids, weights, top_k, experts, F(out));
  }
  void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                         int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                         int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                         int64_t* load) override {
    cpu::MoeDispatchLayout(ids, n, top_k, num_ranks, experts_per_rank, rank_counts, expert_counts,
                           send_tokens, token_slots, block_capacity, valid_rows, load);
  }
  void MoeDispatchPack(const void* x, const int32_t* ids, const float* weights,
                       const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                       void* send_x, int32_t* send_ids, float* send_weights) override {
    cpu::MoeDispatchPack(F(x), ids, weights, send_tokens, rows, hidden, top_k, F(send_x), send_ids,
                         send_weights);
  }
  void MoeCombineRanks(const void* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                       void* out) override {
    cpu::MoeCombineRanks(F(y), token_slots, n, top_k, hidden, F(out));
  }
  // FP8: activations are float32 here; weights are e4m3 bytes with fp32 scales, as on the GPU.
  // W8A8 as on Hopper, with the CUDA backend's choices: weight-only at decode sizes (m <=
  // kFp8WeightOnlyMaxRows), LinearFp8's y padded to Fp8PaddedRows(m) rows (filled with NaN here,
  // so a caller that reads them fails its tests); TESSERA_FP8_W8A16=1 forces the weight-only path.
  Fp8Mode fp8_mode() const override { return fp8_mode_; }
  void QuantizeFp8(const void* x, int64_t m, int64_t k, const Fp8Activations& out) override {
    TESSERA_CHECK(out.scale_stride >= m) << "activation scale stride " << out.scale_stride;
    cpu::QuantizeFp8(F(x), m, k, static_cast<uint8_t*>(out.data), out.scale, out.scale_stride);
  }
  void SiluMulQuantizeFp8(const void* gate_up, int64_t m, int64_t intermediate,
                          const Fp8Activations& out) override {
    TESSERA_CHECK(out.scale_stride >= m) << "activation scale stride " << out.scale_stride;
    std::vector<float> act(m * intermediate);
    cpu::SiluMul(F(gate_up), m, intermediate, act.data());
    cpu::QuantizeFp8(act.data(), m, intermediate, static_cast<uint8_t*>(out.data), out.scale,
                     out.scale_stride);
  }
  void LinearFp8(const Fp8Activations& x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                 void* y) override {
    TESSERA_CHECK(w.scale_stride >= Fp8Blocks(k) && Fp8Aligned(w))
        << "weight scale stride " << w.scale_stride << " (aligned weights only)";
    TESSERA_CHECK(x.scale_stride == Fp8ActivationScaleStride(m))
        << "LinearFp8: activation scale stride " << x.scale_stride << " for m=" << m;
    cpu::LinearFp8(static_cast<const uint8_t*>(x.data), x.scale, x.scale_stride,
                   static_cast<const uint8_t*>(w.data), w.scale, w.scale_stride, m, n, k, F(y));
    std::fill(F(y) + m * n, F(y) + Fp8PaddedRows(m) * n, std::numeric_limits<float>::quiet_NaN());
  }
  void LinearFp8WeightOnly(const void* x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                           void* y) override {
    TESSERA_CHECK(w.scale_stride >= Fp8Blocks(k) && Fp8Aligned(w))
        << "weight scale stride " << w.scale_stride << " (aligned weights only)";
    cpu::LinearFp8WeightOnly(F(x), static_cast<const uint8_t*>(w.data), w.scale, w.scale_stride, m,
                             n, k, F(y));
  }
  void DequantizeFp8(const Fp8Activations& x, int64_t m, int64_t k, void* out) override {
    TESSERA_CHECK(x.scale_stride >= m) << "activation scale stride " << x.scale_stride;
    cpu::DequantizeFp8Activations(static_cast<const uint8_t*>(x.data), x.scale, x.scale_stride, m,
                                  k, F(out));
  }
  void DequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                           int64_t scale_batch_stride, void* out, const int32_t* only) override {
    cpu::DequantizeFp8Blocks(static_cast<const uint8_t*>(w.data), w, n, k, batch,
                             scale_batch_stride, F(out), only);
  }
  void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used) override {
    cpu::MarkExperts(ids, count, first, num, used);
  }
  void QuantizeFp8Weight(const void* w, int64_t n, int64_t k, const Fp8Weight& out) override {
    TESSERA_CHECK(Fp8Aligned(out) && out.scale_stride >= Fp8Blocks(k))
        << "QuantizeFp8Weight: an aligned output with scale stride >= ceil(k / 128)";
    cpu::QuantizeFp8Weight(F(w), n, k, static_cast<uint8_t*>(const_cast<void*>(out.data)),
                           const_cast<float*>(out.scale), out.scale_stride);
  }
  static Fp8Mode Fp8ModeFromEnv() {
    const char* force = std::getenv("TESSERA_FP8_W8A16");
    return force != nullptr && std::string(force) == "1" ? Fp8Mode::kW8A16 : Fp8Mode::kW8A8;
  }
  const Fp8Mode fp8_mode_ = Fp8ModeFromEnv();

 public:
  void SampleTokens(const void* logits, int rows, int64_t vocab, int shards,
                    const SamplingRowParams* params, const SamplingPenalties* penalties,
                    int32_t* tokens) override {
    TESSERA_CHECK(shards >= 1 && vocab % shards == 0) << "vocab " << vocab << ", shards " << shards;
    cpu::SampleTokens(F(logits), rows, vocab, shards, params, penalties, tokens);
  }
};

}  // namespace

void Backend::FillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean,
                         float scale) {
  constexpr size_t kPiece = size_t{1} << 20;
  std::vector<float> host(std::min(count, kPiece));
  const size_t element = DTypeSize(dtype);
  for (size_t begin = 0; begin < count; begin += kPiece) {
    const size_t n = std::min(kPiece, count - begin);
    for (size_t i = 0; i < n; ++i) {
      // splitmix64 of (seed, index): the same values whatever the piece size.
      uint64_t z = seed * 0x9e3779b97f4a7c15ull + (begin + i) + 1;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      const float u = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
      host[i] = mean + scale * u;
    }
    UploadFloat(static_cast<char*>(dst) + begin * element, dtype, host.data(), n);
  }
}

DeviceBuffer Backend::AllocateStaging(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  TESSERA_CHECK(p != nullptr) << "out of host memory allocating " << bytes << " staging bytes";
  return DeviceBuffer(p, bytes, FreeAligned);
}

void Backend::UploadStaged(void* dst, DType dst_dtype, const void* staging, DType src_dtype,
                           size_t count, void* /*scratch*/) {
  constexpr size_t kPiece = size_t{1} << 20;
  std::vector<float> host(std::min(count, kPiece));
  const size_t src_size = DTypeSize(src_dtype), dst_size = DTypeSize(dst_dtype);
  for (size_t begin = 0; begin < count; begin += kPiece) {
    const size_t n = std::min(kPiece, count - begin);
    ConvertToFloat(src_dtype, static_cast<const char*>(staging) + begin * src_size, n, host.data());
    UploadFloat(static_cast<char*>(dst) + begin * dst_size, dst_dtype, host.data(), n);
  }
}

namespace {
class PassedEvent final : public DeviceEvent {
 public:
  void Record() override {}
  bool Query() override { return true; }
  void Wait() override {}
};
}  // namespace

std::unique_ptr<DeviceEvent> Backend::CreateEvent() { return std::make_unique<PassedEvent>(); }

namespace {
// The host's clock between Begin() and End(): the ops' own time where they run to completion.
class HostTimer final : public DeviceTimer {
 public:
  void Begin() override { begin_ = end_ = Clock::now(); }
  void End() override { end_ = Clock::now(); }
  bool Query() override { return true; }
  double Seconds() override { return std::chrono::duration<double>(end_ - begin_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point begin_, end_;
};
}  // namespace

std::unique_ptr<DeviceTimer> Backend::CreateTimer() { return std::make_unique<HostTimer>(); }

void Backend::WaitUntil(const std::function<bool()>& passed) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(kPollWait);
  while (!passed()) {
    if (std::chrono::steady_clock::now() > give_up) {
      Synchronize();
      return;
    }
    std::this_thread::yield();
  }
}

void Backend::TakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                             int32_t* ids) {
  if (n == 0) return;
  std::vector<int32_t> host_sampled(num_sampled), host_from(n), host_ids(n);
  CopyToHost(host_from.data(), from, n * sizeof(int32_t));
  CopyToHost(host_ids.data(), ids, n * sizeof(int32_t));
  if (num_sampled > 0) CopyToHost(host_sampled.data(), sampled, num_sampled * sizeof(int32_t));
  for (int t = 0; t < n; ++t) {
    if (host_from[t] < 0) continue;
    TESSERA_CHECK_LT(host_from[t], num_sampled) << "token " << t << " takes a sampled id";
    host_ids[t] = host_sampled[host_from[t]];
  }
  CopyToDevice(ids, host_ids.data(), n * sizeof(int32_t));
}

void Backend::QuantizeFp8(const void*, int64_t, int64_t, const Fp8Activations&) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::SiluMulQuantizeFp8(const void*, int64_t, int64_t, const Fp8Activations&) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::LinearFp8(const Fp8Activations&, const Fp8Weight&, int64_t, int64_t, int64_t, void*) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::LinearFp8WeightOnly(const void*, const Fp8Weight&, int64_t, int64_t, int64_t, void*) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::DequantizeFp8(const Fp8Activations&, int64_t, int64_t, void*) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::DequantizeFp8Weight(const Fp8Weight&, int64_t, int64_t, int64_t, int64_t, void*,
                                  const int32_t*) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::MarkExperts(const int32_t*, int64_t, int, int, int32_t*) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::QuantizeFp8Weight(const void*, int64_t, int64_t, const Fp8Weight&) {
  TESSERA_CHECK(false) << "this backend has no FP8 ops (fp8_mode() is kNone)";
}
void Backend::MoeExpertsFp8(const void*, int, const int32_t*, const float*, int,
                            const ExpertWeightsFp8&, void*) {
  TESSERA_CHECK(false) << "this backend has no FP8 expert GEMMs (MoeExpertsFp8Supported)";
}

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

#if !defined(TESSERA_HAVE_CUDA)
int CudaDeviceCount() { return 0; }
#endif

}  // namespace tessera
