// A CPU backend that rounds like the CUDA backend: every tensor it stores is a bf16 value (kept
// in float32), and every op's output is rounded to bf16 where the CUDA backend writes bf16, with
// fp32 arithmetic in between. Run on the golden fixtures, it shows what error against
// transformers' fp32 logits a correct bf16 implementation has, on a machine without a GPU: the
// end-to-end CUDA tolerance is derived from it (bf16_emulation_test.cc, cuda_golden_test.cc).
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/cpu/reference.h"
#include "kernels/ops.h"

namespace tessera::testing {

class Bf16EmulationBackend final : public Backend {
 public:
  Bf16EmulationBackend() : cpu_(MakeCpuBackend()) {}

  DeviceKind kind() const override { return DeviceKind::kCpu; }
  DType activation_dtype() const override { return DType::kF32; }
  DType weight_dtype() const override { return DType::kF32; }

  DeviceBuffer Allocate(size_t bytes) override { return cpu_->Allocate(bytes); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    cpu_->CopyToDevice(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    cpu_->CopyToHost(dst, src, bytes);
  }
  void UploadFloat(void* dst, DType dtype, const float* src, size_t count) override {
    cpu_->UploadFloat(dst, dtype, src, count);
    Round(dst, count);
  }
  void DownloadFloat(float* dst, const void* src, DType dtype, size_t count) override {
    cpu_->DownloadFloat(dst, src, dtype, count);
  }
  void Synchronize() override {}
  void CopyToHostAsync(void* dst, const void* src, size_t bytes) override {
    cpu_->CopyToHostAsync(dst, src, bytes);
  }
  std::unique_ptr<DeviceTimer> CreateTimer() override { return cpu_->CreateTimer(); }

  void Embedding(const void* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                 const int32_t* ids, int n, void* out) override {
    cpu_->Embedding(table, vocab_start, vocab_end, hidden, ids, n, out);
  }
  void RmsNorm(const void* x, const void* weight, int64_t rows, int64_t dim, float eps,
               void* out) override {
    cpu_->RmsNorm(x, weight, rows, dim, eps, out);
    Round(out, rows * dim);
  }
  void AddRmsNorm(void* residual, const void* x, const void* weight, int64_t rows, int64_t dim,
                  float eps, void* out) override {
    // As the CUDA kernel: the residual is stored rounded, then normalised.
    cpu_->Add(residual, x, rows * dim, residual);
    Round(residual, rows * dim);
    cpu_->RmsNorm(residual, weight, rows, dim, eps, out);
    Round(out, rows * dim);
  }
  void Linear(const void* x, const void* w, int64_t m, int64_t n, int64_t k, void* y) override {
    cpu_->Linear(x, w, m, n, k, y);
    Round(y, m * n);
  }
  void HeadNormRope(void* x, int64_t row_stride, int n, int heads, int head_dim,
                    const void* norm_weight, float eps, const int32_t* positions,
                    const float* inv_freq, float attention_scaling) override {
    cpu_->HeadNormRope(x, row_stride, n, heads, head_dim, norm_weight, eps, positions, inv_freq,
                       attention_scaling);
    for (int t = 0; t < n; ++t)
      Round(static_cast<float*>(x) + t * row_stride, static_cast<int64_t>(heads) * head_dim);
  }
  void WriteKvCache(const void* k, const void* v, int64_t row_stride, int n, int kv_heads,
                    int head_dim, const int32_t* slot_mapping, void* k_cache,
                    void* v_cache) override {
    cpu_->WriteKvCache(k, v, row_stride, n, kv_heads, head_dim, slot_mapping, k_cache, v_cache);
  }
  // The CUDA kernel rounds q and k once, after norm + RoPE, as the unfused ops do.
  void QkNormRopeKvWrite(void* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                         int head_dim, const void* q_norm, const void* k_norm, float eps,
                         const int32_t* positions, const float* inv_freq, float attention_scaling,
                         const int32_t* slot_mapping, void* k_cache, void* v_cache) override {
    float* q = static_cast<float*>(qkv);
    float* k = q + static_cast<int64_t>(q_heads) * head_dim;
    HeadNormRope(q, row_stride, n, q_heads, head_dim, q_norm, eps, positions, inv_freq,
                 attention_scaling);
    HeadNormRope(k, row_stride, n, kv_heads, head_dim, k_norm, eps, positions, inv_freq,
                 attention_scaling);
    WriteKvCache(k, k + static_cast<int64_t>(kv_heads) * head_dim, row_stride, n, kv_heads,
                 head_dim, slot_mapping, k_cache, v_cache);
  }
  void Attention(const void* q, int64_t q_row_stride, const void* k_cache, const void* v_cache,
                 const AttentionBatch& batch, int q_heads, int kv_heads, int head_dim, float scale,
                 void* out) override {
    cpu_->Attention(q, q_row_stride, k_cache, v_cache, batch, q_heads, kv_heads, head_dim, scale,
                    out);
    Round(out, static_cast<int64_t>(batch.num_tokens) * q_heads * head_dim);
  }
  void SiluMul(const void* gate_up, int64_t m, int64_t intermediate, void* out) override {
    cpu_->SiluMul(gate_up, m, intermediate, out);
    Round(out, m * intermediate);
  }
  void GatherRows(const void* x, const int32_t* rows, int r, int64_t dim, void* out) override {
    cpu_->GatherRows(x, rows, r, dim, out);
  }
  void Add(const void* a, const void* b, int64_t n, void* out) override {
    cpu_->Add(a, b, n, out);
    Round(out, n);
  }
  void RouterTopK(const void* logits, int n, int num_experts, int top_k, bool normalize,
                  int32_t* ids, float* weights) override {
    cpu_->RouterTopK(logits, n, num_experts, top_k, normalize, ids, weights);
  }
  // As the CUDA backend: each expert's gate|up, activation and output rounded; the token's
  // outputs summed in fp32 in increasing expert id, then rounded.
  // Logits already hold bf16 values here: the CPU rule picks what the GPU would.
  void SampleTokens(const void* logits, int rows, int64_t vocab, int shards,
                    const SamplingRowParams* params, const SamplingPenalties* penalties,
                    int32_t* tokens) override {
    cpu_->SampleTokens(logits, rows, vocab, shards, params, penalties, tokens);
  }
  void TakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                      int32_t* ids) override {
    cpu_->TakeSampledIds(sampled, num_sampled, from, n, ids);
  }
  // FP8 experts: the CPU reference's fp32 result, rounded once (MoeExperts' per-expert roundings
  // are not emulated). The model loads FP8 weights only where fp8_mode() is not kNone, and this
  // backend's is kNone, so it does not reach here; forwarded so the wrapper hides no op.
  bool MoeExpertsFp8Supported(const ExpertWeightsFp8& e) const override {
    return cpu_->MoeExpertsFp8Supported(e);
  }
  void MoeExpertsFp8(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                     const ExpertWeightsFp8& e, void* out) override {
    cpu_->MoeExpertsFp8(x, n, ids, weights, top_k, e, out);
    Round(out, static_cast<int64_t>(n) * e.hidden);
  }
  void MoeExperts(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                  const ExpertWeights& e, void* out) override {
    const int64_t H = e.hidden, I = e.intermediate;
    const auto* xf = static_cast<const float*>(x);
    const auto* gate_up = static_cast<const float*>(e.gate_up);
    const auto* down = static_cast<const float*>(e.down);
    auto* o = static_cast<float*>(out);
    std::vector<float> gu(2 * I), act(I), y(H);
    for (int t = 0; t < n; ++t) {
      std::vector<std::pair<int, float>> mine;
      for (int k = 0; k < top_k; ++k) {
        const int local = ids[t * top_k + k] - e.first_expert;
        if (local >= 0 && local < e.num_local_experts)
          mine.push_back({local, weights[t * top_k + k]});
      }
      std::sort(mine.begin(), mine.end());
      std::vector<float> sum(H, 0.0f);
      for (const auto& [local, w] : mine) {
        cpu::Linear(xf + t * H, gate_up + local * 2 * I * H, 1, 2 * I, H, gu.data());
        Round(gu.data(), 2 * I);
        cpu::SiluMul(gu.data(), 1, I, act.data());
        Round(act.data(), I);
        cpu::Linear(act.data(), down + local * H * I, 1, H, I, y.data());
        Round(y.data(), H);
        for (int64_t h = 0; h < H; ++h) sum[h] += w * y[h];
      }
      std::copy(sum.begin(), sum.end(), o + t * H);
      Round(o + t * H, H);
    }
  }
  void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                         int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                         int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                         int64_t* load) override {
    cpu_->MoeDispatchLayout(ids, n, top_k, num_ranks, experts_per_rank, rank_counts, expert_counts,
                            send_tokens, token_slots, block_capacity, valid_rows, load);
  }
  void MoeDispatchPack(const void* x, const int32_t* ids, const float* weights,
                       const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                       void* send_x, int32_t* send_ids, float* send_weights) override {
    cpu_->MoeDispatchPack(x, ids, weights, send_tokens, rows, hidden, top_k, send_x, send_ids,
                          send_weights);
  }
  // As the CUDA backend: the ranks' partial sums added in fp32, then rounded once.
  void MoeCombineRanks(const void* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                       void* out) override {
    cpu_->MoeCombineRanks(y, token_slots, n, top_k, hidden, out);
    Round(out, n * hidden);
  }

 private:
  static void Round(void* p, int64_t count) {
    auto* f = static_cast<float*>(p);
    for (int64_t i = 0; i < count; ++i) f[i] = BF16ToFloat(FloatToBF16(f[i]));
  }

  std::unique_ptr<Backend> cpu_;
};

}  // namespace tessera::testing
