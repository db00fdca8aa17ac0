#include "kernels/profiling_backend.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"

#if defined(TESSERA_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace tessera {
namespace {

class Profiler final : public ProfilingBackend {
 public:
  explicit Profiler(Backend& inner) : b_(inner) {}
  ~Profiler() override {
#if defined(TESSERA_HAVE_CUDA)
    for (auto& e : events_) cudaEventDestroy(e);
#endif
  }

  std::vector<OpTime> Take() override {
    std::map<std::string, OpTime> by_op;
#if defined(TESSERA_HAVE_CUDA)
    if (b_.stream() != nullptr && !pending_.empty()) {
      TESSERA_CHECK(cudaEventSynchronize(events_[pending_.back().stop]) == cudaSuccess);
      for (const Pending& p : pending_) {
        float ms = 0;
        TESSERA_CHECK(cudaEventElapsedTime(&ms, events_[p.start], events_[p.stop]) == cudaSuccess);
        OpTime& t = by_op[p.op];
        t.op = p.op;
        ++t.calls;
        t.ms += ms;
      }
    }
    pending_.clear();
    next_event_ = 0;
#endif
    for (const auto& [op, t] : host_) by_op[op] = t;
    host_.clear();
    std::vector<OpTime> out;
    for (auto& [op, t] : by_op) out.push_back(t);
    std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
    return out;
  }

  DeviceKind kind() const override { return b_.kind(); }
  DType activation_dtype() const override { return b_.activation_dtype(); }
  DType weight_dtype() const override { return b_.weight_dtype(); }
  bool MemoryInfo(size_t* free_bytes, size_t* total_bytes) override {
    return b_.MemoryInfo(free_bytes, total_bytes);
  }
  DeviceBuffer Allocate(size_t bytes) override { return b_.Allocate(bytes); }
  void CopyToDevice(void* d, const void* s, size_t n) override {
    Time("CopyToDevice", [&] { b_.CopyToDevice(d, s, n); });
  }
  void CopyToHost(void* d, const void* s, size_t n) override {
    Time("CopyToHost", [&] { b_.CopyToHost(d, s, n); });
  }
  void UploadFloat(void* d, DType t, const float* s, size_t n) override {
    b_.UploadFloat(d, t, s, n);
  }
  void DownloadFloat(float* d, const void* s, DType t, size_t n) override {
    Time("DownloadFloat", [&] { b_.DownloadFloat(d, s, t, n); });
  }
  void Synchronize() override { b_.Synchronize(); }
  DeviceBuffer AllocateStaging(size_t bytes) override { return b_.AllocateStaging(bytes); }
  void UploadStaged(void* d, DType dt, const void* s, DType st, size_t n, void* scratch) override {
    b_.UploadStaged(d, dt, s, st, n, scratch);
  }
  bool UploadNeedsScratch(DType st, DType dt) const override {
    return b_.UploadNeedsScratch(st, dt);
  }
  std::unique_ptr<DeviceEvent> CreateEvent() override { return b_.CreateEvent(); }
  std::unique_ptr<DeviceTimer> CreateTimer() override { return b_.CreateTimer(); }
  void SetStreamWait(std::function<void()> wait) override { b_.SetStreamWait(std::move(wait)); }
  void CopyToHostAsync(void* d, const void* s, size_t n) override {
    Time("CopyToHostAsync", [&] { b_.CopyToHostAsync(d, s, n); });
  }
  void FillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean,
                  float scale) override {
    b_.FillRandom(dst, dtype, count, seed, mean, scale);
  }
  void* stream() const override { return b_.stream(); }

  void Embedding(const void* table, int64_t start, int64_t end, int64_t hidden, const int32_t* ids,
                 int n, void* out) override {
    Time("Embedding", [&] { b_.Embedding(table, start, end, hidden, ids, n, out); });
  }
  void RmsNorm(const void* x, const void* w, int64_t rows, int64_t dim, float eps,
               void* out) override {
    Time("RmsNorm", [&] { b_.RmsNorm(x, w, rows, dim, eps, out); });
  }
  void AddRmsNorm(void* residual, const void* x, const void* w, int64_t rows, int64_t dim,
                  float eps, void* out) override {
    Time("AddRmsNorm", [&] { b_.AddRmsNorm(residual, x, w, rows, dim, eps, out); });
  }
  void Linear(const void* x, const void* w, int64_t m, int64_t n, int64_t k, void* y) override {
    Time(absl::StrCat("Linear n=", n, " k=", k), [&] { b_.Linear(x, w, m, n, k, y); });
  }
  void HeadNormRope(void* x, int64_t stride, int n, int heads, int head_dim, const void* w,
                    float eps, const int32_t* positions, const float* inv_freq,
                    float scaling) override {
    Time("HeadNormRope", [&] {
      b_.HeadNormRope(x, stride, n, heads, head_dim, w, eps, positions, inv_freq, scaling);
    });
  }
  void WriteKvCache(const void* k, const void* v, int64_t stride, int n, int kv_heads, int head_dim,
                    const int32_t* slots, void* k_cache, void* v_cache) override {
    Time("WriteKvCache",
         [&] { b_.WriteKvCache(k, v, stride, n, kv_heads, head_dim, slots, k_cache, v_cache); });
  }
  void QkNormRopeKvWrite(void* qkv, int64_t stride, int n, int q_heads, int kv_heads, int head_dim,
                         const void* q_norm, const void* k_norm, float eps,
                         const int32_t* positions, const float* inv_freq, float scaling,
                         const int32_t* slots, void* k_cache, void* v_cache) override {
    Time("QkNormRopeKvWrite", [&] {
      b_.QkNormRopeKvWrite(qkv, stride, n, q_heads, kv_heads, head_dim, q_norm, k_norm, eps,
                           positions, inv_freq, scaling, slots, k_cache, v_cache);
    });
  }
  void Attention(const void* q, int64_t stride, const void* k_cache, const void* v_cache,
                 const AttentionBatch& batch, int q_heads, int kv_heads, int head_dim, float scale,
                 void* out) override {
    Time(batch.num_tokens == batch.num_seqs ? "Attention decode" : "Attention prefill", [&] {
      b_.Attention(q, stride, k_cache, v_cache, batch, q_heads, kv_heads, head_dim, scale, out);
    });
  }
  Fp8Mode fp8_mode() const override { return b_.fp8_mode(); }
  bool Fp8WeightOnly(int64_t m) const override { return b_.Fp8WeightOnly(m); }
  void QuantizeFp8(const void* x, int64_t m, int64_t k, const Fp8Activations& out) override {
    Time("QuantizeFp8", [&] { b_.QuantizeFp8(x, m, k, out); });
  }
  void DequantizeFp8(const Fp8Activations& x, int64_t m, int64_t k, void* out) override {
    Time("DequantizeFp8", [&] { b_.DequantizeFp8(x, m, k, out); });
  }
  void SiluMulQuantizeFp8(const void* gate_up, int64_t m, int64_t inter,
                          const Fp8Activations& out) override {
    Time("SiluMulQuantizeFp8", [&] { b_.SiluMulQuantizeFp8(gate_up, m, inter, out); });
  }
  void LinearFp8(const Fp8Activations& x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                 void* y) override {
    Time(absl::StrCat("LinearFp8 n=", n, " k=", k), [&] { b_.LinearFp8(x, w, m, n, k, y); });
  }
  void LinearFp8WeightOnly(const void* x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                           void* y) override {
    Time(absl::StrCat("LinearFp8WeightOnly n=", n, " k=", k),
         [&] { b_.LinearFp8WeightOnly(x, w, m, n, k, y); });
  }
  void DequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                           int64_t scale_batch_stride, void* out, const int32_t* only) override {
    Time(absl::StrCat("DequantizeFp8Weight n=", n, " k=", k),
         [&] { b_.DequantizeFp8Weight(w, n, k, batch, scale_batch_stride, out, only); });
  }
  void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used) override {
    Time("MarkExperts", [&] { b_.MarkExperts(ids, count, first, num, used); });
  }
  void QuantizeFp8Weight(const void* w, int64_t n, int64_t k, const Fp8Weight& out) override {
    b_.QuantizeFp8Weight(w, n, k, out);
  }
  void SiluMul(const void* gate_up, int64_t m, int64_t inter, void* out) override {
    Time("SiluMul", [&] { b_.SiluMul(gate_up, m, inter, out); });
  }
  void GatherRows(const void* x, const int32_t* rows, int r, int64_t dim, void* out) override {
    Time("GatherRows", [&] { b_.GatherRows(x, rows, r, dim, out); });
  }
  void Add(const void* a, const void* b, int64_t n, void* out) override {
    Time("Add", [&] { b_.Add(a, b, n, out); });
  }
  void RouterTopK(const void* logits, int n, int num_experts, int top_k, bool normalize,
                  int32_t* ids, float* weights) override {
    Time("RouterTopK",
         [&] { b_.RouterTopK(logits, n, num_experts, top_k, normalize, ids, weights); });
  }
  void MoeExperts(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                  const ExpertWeights& experts, void* out) override {
    Time("MoeExperts", [&] { b_.MoeExperts(x, n, ids, weights, top_k, experts, out); });
  }
  bool MoeExpertsFp8Supported(const ExpertWeightsFp8& experts) const override {
    return b_.MoeExpertsFp8Supported(experts);
  }
  void MoeExpertsFp8(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                     const ExpertWeightsFp8& experts, void* out) override {
    Time("MoeExpertsFp8", [&] { b_.MoeExpertsFp8(x, n, ids, weights, top_k, experts, out); });
  }
  void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                         int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                         int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                         int64_t* load) override {
    Time("MoeDispatchLayout", [&] {
      b_.MoeDispatchLayout(ids, n, top_k, num_ranks, experts_per_rank, rank_counts, expert_counts,
                           send_tokens, token_slots, block_capacity, valid_rows, load);
    });
  }
  void MoeDispatchPack(const void* x, const int32_t* ids, const float* weights,
                       const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                       void* send_x, int32_t* send_ids, float* send_weights) override {
    Time("MoeDispatchPack", [&] {
      b_.MoeDispatchPack(x, ids, weights, send_tokens, rows, hidden, top_k, send_x, send_ids,
                         send_weights);
    });
  }
  void MoeCombineRanks(const void* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                       void* out) override {
    Time("MoeCombineRanks", [&] { b_.MoeCombineRanks(y, token_slots, n, top_k, hidden, out); });
  }
  void SampleTokens(const void* logits, int rows, int64_t vocab, int shards,
                    const SamplingRowParams* params, const SamplingPenalties* penalties,
                    int32_t* tokens) override {
    Time("SampleTokens",
         [&] { b_.SampleTokens(logits, rows, vocab, shards, params, penalties, tokens); });
  }
  void TakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                      int32_t* ids) override {
    Time("TakeSampledIds", [&] { b_.TakeSampledIds(sampled, num_sampled, from, n, ids); });
  }

 private:
  struct Pending {
    std::string op;
    size_t start, stop;  // indices into events_
  };

  template <typename F>
  void Time(const std::string& op, F&& run) {
#if defined(TESSERA_HAVE_CUDA)
    if (b_.stream() != nullptr) {
      auto* stream = static_cast<cudaStream_t>(b_.stream());
      const size_t start = NextEvent(), stop = NextEvent();
      TESSERA_CHECK(cudaEventRecord(events_[start], stream) == cudaSuccess);
      run();
      TESSERA_CHECK(cudaEventRecord(events_[stop], stream) == cudaSuccess);
      pending_.push_back({op, start, stop});
      return;
    }
#endif
    const auto begin = std::chrono::steady_clock::now();
    run();
    const std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - begin;
    OpTime& t = host_[op];
    t.op = op;
    ++t.calls;
    t.ms += ms.count();
  }

#if defined(TESSERA_HAVE_CUDA)
  // Events are reused after each Take(), so a long run holds as many as one window's ops.
  size_t NextEvent() {
    if (next_event_ == events_.size()) {
      cudaEvent_t e;
      TESSERA_CHECK(cudaEventCreate(&e) == cudaSuccess);
      events_.push_back(e);
    }
    return next_event_++;
  }
  std::vector<cudaEvent_t> events_;
  size_t next_event_ = 0;
  std::vector<Pending> pending_;
#endif

  Backend& b_;
  std::map<std::string, OpTime> host_;
};

}  // namespace

std::unique_ptr<ProfilingBackend> MakeProfilingBackend(Backend& inner) {
  return std::make_unique<Profiler>(inner);
}

}  // namespace tessera
