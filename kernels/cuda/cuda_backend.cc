// The CUDA backend: bf16 activations and weights on one GPU, fp32 accumulation, one stream.
//
// Every op is enqueued on the backend's stream and returns at once; the host waits only where it
// reads results (CopyToHost, DownloadFloat, a GEMM shape's one-time tuning:
// gemm.h) or calls Synchronize() (or waits on a weight-loading event, CreateEvent), and every
// other wait goes through Synchronize() (so through
// SetStreamWait's function when the NCCL communicator has installed one). Device memory is taken
// only in Allocate() and, once, in the constructor for the cuBLASLt workspace, the MoE scratch and
// the attention workspace; ops never allocate. fp32 <-> bf16 conversions for UploadFloat and
// DownloadFloat run on the host (round to nearest even, as torch); the weight loader's
// UploadStaged converts on the device (convert.cu), from pinned staging buffers.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "kernels/base/check.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/fp8_mma.h"
#include "kernels/cuda/fp8_quant.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_dispatch.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/random.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "kernels/ops.h"

namespace tessera {
namespace {

using bf16 = __nv_bfloat16;

inline const bf16* B(const void* p) { return static_cast<const bf16*>(p); }
inline bf16* B(void* p) { return static_cast<bf16*>(p); }

constexpr size_t kGemmWorkspaceBytes = 32u << 20;  // cuBLAS's advice for Hopper
// MoeExperts' per-chunk tables and activations (~90 KB per token at Qwen3-235B's shapes).
// NOTE: every chunk reads all routed experts' weights again: at 235B's n = 4096 prefill, 64 MiB
// (6 chunks) took 7.98 ms, 256 MiB (2 chunks) 6.46 ms (docs/perf/2026-11-22-moe-h200.md).
constexpr size_t kMoeScratchBytes = 256u << 20;
// Split-KV decode partials (decode_attention.h): fp32 (m, l, o) per token, query head and split;
// 32 MiB holds e.g. 256 splits of 64 heads x 256 dims for one token. Launches that would need
// more use fewer splits.
constexpr size_t kAttentionWorkspaceBytes = 32u << 20;
// Host-side conversions go through a bounded buffer: at most this many elements at a time.
constexpr size_t kConvertChunk = size_t{4} << 20;
constexpr size_t kAlign = 256;

size_t AlignUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

void FreeDevice(void* p) { cudaFree(p); }  // NOTE: unchecked: may run after the context is gone
void FreePinned(void* p) { cudaFreeHost(p); }

class CudaEvent final : public DeviceEvent {
 public:
  explicit CudaEvent(cudaStream_t stream) : stream_(stream) {
    CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
  }
  ~CudaEvent() override { cudaEventDestroy(event_); }
  void Record() override { CUDA_CHECK(cudaEventRecord(event_, stream_)); }
  bool Query() override {
    const cudaError_t result = cudaEventQuery(event_);
    if (result == cudaErrorNotReady) return false;
    CUDA_CHECK(result);
    return true;
  }
  void Wait() override { CUDA_CHECK(cudaEventSynchronize(event_)); }

 private:
  cudaStream_t stream_;
  cudaEvent_t event_ = nullptr;
};

// Two timing events (the others are created without timing, which makes them cheaper).
class CudaTimer final : public DeviceTimer {
 public:
  explicit CudaTimer(cudaStream_t stream) : stream_(stream) {
    CUDA_CHECK(cudaEventCreate(&begin_));
    CUDA_CHECK(cudaEventCreate(&end_));
  }
  ~CudaTimer() override {
    cudaEventDestroy(begin_);
    cudaEventDestroy(end_);
  }
  void Begin() override { CUDA_CHECK(cudaEventRecord(begin_, stream_)); }
  void End() override { CUDA_CHECK(cudaEventRecord(end_, stream_)); }
  bool Query() override {
    const cudaError_t result = cudaEventQuery(end_);
    if (result == cudaErrorNotReady) return false;
    CUDA_CHECK(result);
    return true;
  }
  double Seconds() override {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, begin_, end_));
    return ms / 1e3;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t begin_ = nullptr, end_ = nullptr;
};

// TESSERA_MIXED_DECODE_SPLIT=1 (read once): mixed steps' leading one-token rows take the split-KV
// decode attention (attention.h, PagedAttentionArgs::num_single); default off (see Attention).
bool MixedDecodeSplit() {
  static const bool on = [] {
    const char* env = std::getenv("TESSERA_MIXED_DECODE_SPLIT");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }();
  return on;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_workspace_ = Allocate(kGemmWorkspaceBytes);
    moe_scratch_ = Allocate(kMoeScratchBytes);
    attention_workspace_ = Allocate(kAttentionWorkspaceBytes);
    // The GEMM's one-time tuning waits for the stream the way every other host wait does.
    gemm_ = std::make_unique<cuda::LtGemm>(gemm_workspace_.data(), kGemmWorkspaceBytes,
                                           [this] { Synchronize(); });
    fp8_gemm_ = std::make_unique<cuda::LtFp8Gemm>(gemm_workspace_.data(), kGemmWorkspaceBytes);
    fp8_mode_ = Fp8ModeFor(device);
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    gemm_.reset();
    fp8_gemm_.reset();
    cudaStreamDestroy(stream_);
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  DType activation_dtype() const override { return DType::kBF16; }
  DType weight_dtype() const override { return DType::kBF16; }

  bool MemoryInfo(size_t* free_bytes, size_t* total_bytes) override {
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return true;
  }

  DeviceBuffer Allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t result = cudaMalloc(&p, AlignUp(std::max<size_t>(bytes, 1)));
    if (result != cudaSuccess) {
      size_t free_bytes = 0, total_bytes = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_bytes, &total_bytes);
      TESSERA_CHECK(false) << "cudaMalloc of " << bytes << " bytes on GPU " << device_ << ": "
                           << cudaGetErrorString(result) << " (" << free_bytes << " of "
                           << total_bytes << " bytes free)";
    }
    return DeviceBuffer(p, bytes, FreeDevice);
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    // NOTE: from pageable memory the driver stages `src` before returning, so callers may reuse it.
    if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    Synchronize();
  }
  void CopyToHostAsync(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  void UploadFloat(void* dst, DType dtype, const float* src, size_t count) override {
    if (dtype == DType::kF32) {
      CopyToDevice(dst, src, count * sizeof(float));
      Synchronize();
      return;
    }
    TESSERA_CHECK(dtype == DType::kBF16)
        << "the CUDA backend stores bf16 or f32, not " << DTypeName(dtype);
    std::vector<uint16_t> staged(std::min(count, kConvertChunk));
    for (size_t begin = 0; begin < count; begin += kConvertChunk) {
      const size_t len = std::min(kConvertChunk, count - begin);
      for (size_t i = 0; i < len; ++i) staged[i] = FloatToBF16(src[begin + i]);
      CopyToDevice(static_cast<uint16_t*>(dst) + begin, staged.data(), len * sizeof(uint16_t));
      Synchronize();  // `staged` is refilled next
    }
  }
  void DownloadFloat(float* dst, const void* src, DType dtype, size_t count) override {
    if (dtype == DType::kF32) {
      CopyToHost(dst, src, count * sizeof(float));
      return;
    }
    TESSERA_CHECK(dtype == DType::kBF16)
        << "the CUDA backend stores bf16 or f32, not " << DTypeName(dtype);
    std::vector<uint16_t> staged(std::min(count, kConvertChunk));
    for (size_t begin = 0; begin < count; begin += kConvertChunk) {
      const size_t len = std::min(kConvertChunk, count - begin);
      CopyToHost(staged.data(), static_cast<const uint16_t*>(src) + begin, len * sizeof(uint16_t));
      for (size_t i = 0; i < len; ++i) dst[begin + i] = BF16ToFloat(staged[i]);
    }
  }
  void Synchronize() override {
    if (stream_wait_) {
      stream_wait_();
    } else {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
  }
  void SetStreamWait(std::function<void()> wait) override { stream_wait_ = std::move(wait); }

  DeviceBuffer AllocateStaging(size_t bytes) override {
    void* p = nullptr;
    CUDA_CHECK(cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault));
    return DeviceBuffer(p, bytes, FreePinned);
  }
  // NOTE: weights stored in the backend's dtype go straight from the pinned buffer to their
  // place; others land in `scratch` and are converted there (convert.cu), so the host never
  // converts and never holds more than the staged bytes.
  void UploadStaged(void* dst, DType dst_dtype, const void* staging, DType src_dtype, size_t count,
                    void* scratch) override {
    if (count == 0) return;
    if (src_dtype == dst_dtype) {
      CopyToDevice(dst, staging, count * DTypeSize(src_dtype));
      return;
    }
    TESSERA_CHECK(scratch != nullptr) << "UploadStaged: " << DTypeName(src_dtype) << " -> "
                                      << DTypeName(dst_dtype) << " converts through scratch";
    CopyToDevice(scratch, staging, count * DTypeSize(src_dtype));
    cuda::LaunchConvert(dst, dst_dtype, scratch, src_dtype, count, stream_);
  }
  bool UploadNeedsScratch(DType src_dtype, DType dst_dtype) const override {
    return src_dtype != dst_dtype;
  }
  std::unique_ptr<DeviceEvent> CreateEvent() override;
  std::unique_ptr<DeviceTimer> CreateTimer() override {
    return std::make_unique<CudaTimer>(stream_);
  }
  // On the device, bit for bit the host default's values (random.cu), enqueued like any op.
  void FillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean,
                  float scale) override {
    cuda::LaunchFillRandom(dst, dtype, count, seed, mean, scale, stream_);
  }
  void* stream() const override { return stream_; }

  bool CanCaptureGraphs() const override { return true; }
  void BeginCapture() override {
    // Thread-local: the server's other threads (gRPC, watchdog) may call CUDA meanwhile.
    CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  }
  std::unique_ptr<DeviceGraph> EndCapture() override;

  void Embedding(const void* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                 const int32_t* ids, int n, void* out) override {
    cuda::LaunchEmbedding(B(table), vocab_start, vocab_end, hidden, ids, n, B(out), stream_);
  }
  void RmsNorm(const void* x, const void* weight, int64_t rows, int64_t dim, float eps,
               void* out) override {
    cuda::LaunchRmsNorm(B(x), B(weight), rows, dim, eps, B(out), stream_);
  }
  void AddRmsNorm(void* residual, const void* x, const void* weight, int64_t rows, int64_t dim,
                  float eps, void* out) override {
    cuda::LaunchAddRmsNorm(B(residual), B(x), B(weight), rows, dim, eps, B(out), stream_);
  }
  void Linear(const void* x, const void* w, int64_t m, int64_t n, int64_t k, void* y) override {
    // NOTE: at decode's m = 1 (2 for long rows) the GEMV streams w closer to copy bandwidth than
    // cuBLASLt's tiles (gemv.h has the measurements). Other shapes, misaligned operands: cuBLASLt.
    if (n > 0 && cuda::GemvPreferred(m, n, k) && cuda::GemvSupported(B(x), B(w), m, k)) {
      cuda::LaunchGemv(B(x), B(w), m, n, k, B(y), stream_);
      return;
    }
    gemm_->Linear(B(x), B(w), m, n, k, B(y), stream_);
  }

  // FP8: W8A8 on Hopper (cuBLASLt's block-scaled GEMM on Fp8PaddedRows(m) rows, the mma.sync
  // kernel where cuBLASLt has no algorithm), weight-only at decode sizes (m <=
  // kFp8WeightOnlyMaxRows: the GEMV), W8A16 elsewhere (sm_80+) and wherever TESSERA_FP8_W8A16=1
  // forces it. The first call of each (path, n, k) is logged, with its m.
  static_assert(kFp8WeightOnlyMaxRows <= cuda::kFp8GemvMaxRows, "the GEMV covers them");
  Fp8Mode fp8_mode() const override { return fp8_mode_; }
  void QuantizeFp8(const void* x, int64_t m, int64_t k, const Fp8Activations& out) override {
    cuda::LaunchQuantizeFp8(B(x), m, k, static_cast<uint8_t*>(out.data), out.scale,
                            out.scale_stride, stream_);
  }
  void DequantizeFp8(const Fp8Activations& x, int64_t m, int64_t k, void* out) override {
    cuda::LaunchDequantizeFp8(static_cast<const uint8_t*>(x.data), x.scale, x.scale_stride, m, k,
                              B(out), stream_);
  }
  void SiluMulQuantizeFp8(const void* gate_up, int64_t m, int64_t intermediate,
                          const Fp8Activations& out) override {
    cuda::LaunchSiluMulQuantizeFp8(B(gate_up), m, intermediate, static_cast<uint8_t*>(out.data),
                                   out.scale, out.scale_stride, stream_);
  }
  void LinearFp8(const Fp8Activations& x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                 void* y) override {
    if (m == 0 || n == 0) return;
    TESSERA_CHECK(Fp8Aligned(w)) << "LinearFp8: aligned weights only (DequantizeFp8Weight)";
    const auto* xq = static_cast<const uint8_t*>(x.data);
    const auto* wq = static_cast<const uint8_t*>(w.data);
    // NOTE: cuBLASLt lists no block-scaled algorithm for most m off a multiple of 8; it runs on
    // the padded rows (x and y span them: kernels/ops.h), whose outputs nobody reads.
    const int64_t rows = Fp8PaddedRows(m);
    if (fp8_gemm_->Supported(xq, wq, B(y), rows, n, k, w.scale_stride, x.scale_stride)) {
      LogFp8Path(rows == m ? "W8A8 cuBLASLt" : "W8A8 cuBLASLt, m padded to a multiple of 16", m, n,
                 k);
      fp8_gemm_->Linear(xq, x.scale, wq, w.scale, rows, n, k, B(y), stream_);
      return;
    }
    LogFp8Path("W8A8 mma.sync (cuBLASLt has no algorithm)", m, n, k);
    cuda::LaunchFp8MmaW8A8(xq, x.scale, x.scale_stride, wq, w.scale, w.scale_stride, m, n, k, B(y),
                           stream_);
  }
  void LinearFp8WeightOnly(const void* x, const Fp8Weight& w, int64_t m, int64_t n, int64_t k,
                           void* y) override {
    if (m == 0 || n == 0) return;
    TESSERA_CHECK(Fp8Aligned(w)) << "LinearFp8WeightOnly: aligned weights only";
    const auto* wq = static_cast<const uint8_t*>(w.data);
    // NOTE: decode batches stream w once: the GEMV; larger m: the mma.sync kernel.
    if (cuda::Fp8GemvSupported(B(x), wq, m, k)) {
      LogFp8Path(cuda::Fp8GemvDefaultVariant() == cuda::Fp8GemvVariant::kV2 ? "W8A16 GEMV v2"
                                                                            : "W8A16 GEMV v1",
                 m, n, k);
      cuda::LaunchFp8Gemv(B(x), wq, w.scale, w.scale_stride, m, n, k, B(y), stream_);
      return;
    }
    LogFp8Path("W8A16 mma.sync", m, n, k);
    cuda::LaunchFp8MmaW8A16(B(x), wq, w.scale, w.scale_stride, m, n, k, B(y), stream_);
  }
  void DequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                           int64_t scale_batch_stride, void* out, const int32_t* only) override {
    cuda::LaunchDequantizeFp8Weight(w, n, k, batch, scale_batch_stride, B(out), only, stream_);
  }
  void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used) override {
    cuda::LaunchMarkExperts(ids, count, first, num, used, stream_);
  }
  void QuantizeFp8Weight(const void* w, int64_t n, int64_t k, const Fp8Weight& out) override {
    TESSERA_CHECK(Fp8Aligned(out)) << "QuantizeFp8Weight: an aligned output";
    cuda::LaunchQuantizeFp8Weight(B(w), n, k, static_cast<uint8_t*>(const_cast<void*>(out.data)),
                                  const_cast<float*>(out.scale), out.scale_stride, stream_);
  }

  void HeadNormRope(void* x, int64_t row_stride, int n, int heads, int head_dim,
                    const void* norm_weight, float eps, const int32_t* positions,
                    const float* inv_freq, float attention_scaling) override {
    cuda::LaunchHeadNormRope(B(x), row_stride, n, heads, head_dim, B(norm_weight), eps, positions,
                             inv_freq, attention_scaling, stream_);
  }
  void WriteKvCache(const void* k, const void* v, int64_t row_stride, int n, int kv_heads,
                    int head_dim, const int32_t* slot_mapping, void* k_cache,
                    void* v_cache) override {
    cuda::LaunchWriteKvCache(B(k), B(v), row_stride, n, kv_heads, head_dim, slot_mapping,
                             B(k_cache), B(v_cache), stream_);
  }
  void QkNormRopeKvWrite(void* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                         int head_dim, const void* q_norm, const void* k_norm, float eps,
                         const int32_t* positions, const float* inv_freq, float attention_scaling,
                         const int32_t* slot_mapping, void* k_cache, void* v_cache) override {
    cuda::LaunchQkNormRopeKvWrite(B(qkv), row_stride, n, q_heads, kv_heads, head_dim, B(q_norm),
                                  B(k_norm), eps, positions, inv_freq, attention_scaling,
                                  slot_mapping, B(k_cache), B(v_cache), stream_);
  }
  void Attention(const void* q, int64_t q_row_stride, const void* k_cache, const void* v_cache,
                 const AttentionBatch& batch, int q_heads, int kv_heads, int head_dim, float scale,
                 void* out) override {
    cuda::PagedAttentionArgs a;
    a.q = B(q);
    a.q_row_stride = q_row_stride;
    a.k_cache = B(k_cache);
    a.v_cache = B(v_cache);
    a.positions = batch.positions;
    a.token_seq = batch.token_seq;
    a.block_tables = batch.block_tables;
    a.num_tokens = batch.num_tokens;
    a.num_seqs = batch.num_seqs;
    // NOTE: off by default until a GPU run of cuda_attention_test's mixed_single cases and the
    // burst passes (none could be made the session this was written); TESSERA_MIXED_DECODE_SPLIT=1
    // sends a mixed step's leading one-token rows to the split-KV decode kernel.
    a.num_single = MixedDecodeSplit() ? batch.num_single : 0;
    a.max_blocks_per_seq = batch.max_blocks_per_seq;
    a.block_size = batch.block_size;
    a.q_heads = q_heads;
    a.kv_heads = kv_heads;
    a.head_dim = head_dim;
    a.scale = scale;
    a.out = B(out);
    a.workspace = attention_workspace_.data();
    a.workspace_bytes = kAttentionWorkspaceBytes;
    cuda::LaunchPagedAttention(a, stream_);
  }
  void SiluMul(const void* gate_up, int64_t m, int64_t intermediate, void* out) override {
    cuda::LaunchSiluMul(B(gate_up), m, intermediate, B(out), stream_);
  }
  void GatherRows(const void* x, const int32_t* rows, int r, int64_t dim, void* out) override {
    cuda::LaunchGatherRows(B(x), rows, r, dim, B(out), stream_);
  }
  void Add(const void* a, const void* b, int64_t n, void* out) override {
    cuda::LaunchAdd(B(a), B(b), n, B(out), stream_);
  }
  void RouterTopK(const void* logits, int n, int num_experts, int top_k, bool normalize,
                  int32_t* ids, float* weights) override {
    cuda::LaunchRouterTopK(B(logits), n, num_experts, top_k, normalize, ids, weights, stream_);
  }
  void MoeExperts(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                  const ExpertWeights& experts, void* out) override {
    RunMoe(x, n, ids, weights, top_k, &experts, nullptr, out);
  }
  bool MoeExpertsFp8Supported(const ExpertWeightsFp8& experts) const override {
    return cuda::MoeFp8Supported(experts.gate_up, experts.hidden) &&
           cuda::MoeFp8Supported(experts.down, experts.intermediate);
  }
  void MoeExpertsFp8(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                     const ExpertWeightsFp8& experts, void* out) override {
    RunMoe(x, n, ids, weights, top_k, nullptr, &experts, out);
  }
  void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks, int experts_per_rank,
                         int32_t* rank_counts, int32_t* expert_counts, int32_t* send_tokens,
                         int32_t* token_slots, int block_capacity, const int32_t* valid_rows,
                         int64_t* load) override {
    cuda::LaunchMoeDispatchLayout(ids, n, top_k, num_ranks, experts_per_rank, rank_counts,
                                  expert_counts, send_tokens, token_slots, block_capacity,
                                  valid_rows, load, stream_);
  }
  void MoeDispatchPack(const void* x, const int32_t* ids, const float* weights,
                       const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                       void* send_x, int32_t* send_ids, float* send_weights) override {
    cuda::LaunchMoeDispatchPack(B(x), ids, weights, send_tokens, rows, hidden, top_k, B(send_x),
                                send_ids, send_weights, stream_);
  }
  void MoeCombineRanks(const void* y, const int32_t* token_slots, int n, int top_k, int64_t hidden,
                       void* out) override {
    cuda::LaunchMoeCombineRanks(B(y), token_slots, n, top_k, hidden, B(out), stream_);
  }
  void SampleTokens(const void* logits, int rows, int64_t vocab, int shards,
                    const SamplingRowParams* params, const SamplingPenalties* penalties,
                    int32_t* tokens) override {
    TESSERA_CHECK(shards >= 1 && vocab % shards == 0) << "vocab " << vocab << ", shards " << shards;
    cuda::LaunchSampleTokens(B(logits), rows, vocab, shards, params, penalties, tokens, stream_);
  }
  void TakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                      int32_t* ids) override {
    cuda::LaunchTakeSampledIds(sampled, num_sampled, from, n, ids, stream_);
  }

 private:
  // MoeExperts (bf16_experts) or MoeExpertsFp8 (fp8_experts): grouping, the grouped GEMMs and
  // the combine, in chunks of tokens that fit the MoE scratch.
  void RunMoe(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
              const ExpertWeights* bf16_experts, const ExpertWeightsFp8* fp8_experts, void* out);

  int device_;
  cudaStream_t stream_ = nullptr;
  std::function<void()> stream_wait_;  // SetStreamWait; empty: cudaStreamSynchronize
  DeviceBuffer gemm_workspace_;
  DeviceBuffer moe_scratch_;
  DeviceBuffer attention_workspace_;  // split-KV decode partials, kAttentionWorkspaceBytes
  std::unique_ptr<cuda::LtGemm> gemm_;
  std::unique_ptr<cuda::LtFp8Gemm> fp8_gemm_;
  Fp8Mode fp8_mode_ = Fp8Mode::kNone;
  // (path literal, n, k) already logged. NOTE: keyed by the literal's address: a hit allocates
  // nothing (every prefill step passes here).
  std::set<std::tuple<const char*, int64_t, int64_t>> fp8_paths_logged_;

  void LogFp8Path(const char* path, int64_t m, int64_t n, int64_t k) {
    const auto key = std::make_tuple(path, n, k);
    if (fp8_paths_logged_.count(key) > 0) return;
    fp8_paths_logged_.insert(key);
    std::fprintf(stderr, "tessera: FP8 linear n=%lld k=%lld: %s (first at m=%lld)\n",
                 static_cast<long long>(n), static_cast<long long>(k), path,
                 static_cast<long long>(m));
  }

  static Fp8Mode Fp8ModeFor(int device) {
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    const char* force = std::getenv("TESSERA_FP8_W8A16");
    if (major >= 9 && !(force != nullptr && std::strcmp(force, "1") == 0)) return Fp8Mode::kW8A8;
    return major >= 8 ? Fp8Mode::kW8A16 : Fp8Mode::kNone;
  }
};

class CudaGraph final : public DeviceGraph {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void Replay() override { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

std::unique_ptr<DeviceEvent> CudaBackend::CreateEvent() {
  return std::make_unique<CudaEvent>(stream_);
}

std::unique_ptr<DeviceGraph> CudaBackend::EndCapture() {
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  if (ended != cudaSuccess || graph == nullptr) {
    cudaGetLastError();  // an invalidated capture: the caller runs the ops directly instead
    if (graph != nullptr) cudaGraphDestroy(graph);
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (instantiated != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return std::make_unique<CudaGraph>(exec, stream_);
}

// The MoE layer on the device, with no host read: per chunk of tokens, the routing is grouped by
// local expert on the GPU (moe.h's layout), the grouped gate|up GEMM writes silu(gate) * up, the
// grouped down GEMM each pair's expert output, and the combine sums each token's outputs in
// increasing expert id (deterministic, fp32). Every size is bounded by the chunk's n * top_k
// pairs, so the launches are fixed by n alone and the layer records into a CUDA graph. Chunks
// bound the scratch to kMoeScratchBytes; they reuse it in stream order.
void CudaBackend::RunMoe(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                         const ExpertWeights* bf16_experts, const ExpertWeightsFp8* fp8_experts,
                         void* out) {
  if (n == 0) return;
  constexpr int kMaxTopK = 64;
  TESSERA_CHECK(top_k >= 1 && top_k <= kMaxTopK) << "top_k " << top_k;
  const int64_t H = bf16_experts ? bf16_experts->hidden : fp8_experts->hidden;
  const int64_t I = bf16_experts ? bf16_experts->intermediate : fp8_experts->intermediate;
  const int E = bf16_experts ? bf16_experts->num_local_experts : fp8_experts->num_local_experts;
  const int first = bf16_experts ? bf16_experts->first_expert : fp8_experts->first_expert;
  // Scratch per token: top_k pairs of (gather entry, pair_row entry, activation, expert output).
  const size_t token_bytes = static_cast<size_t>(top_k) *
                             (2 * sizeof(int32_t) + static_cast<size_t>(I + H) * sizeof(bf16));
  const size_t fixed = AlignUp((E + 1) * sizeof(int32_t)) + 4 * kAlign;  // offsets, padding
  TESSERA_CHECK(kMoeScratchBytes > fixed + token_bytes)
      << "MoE scratch too small for one token (hidden " << H << ", intermediate " << I << ")";
  const int chunk = static_cast<int>(std::min<size_t>(n, (kMoeScratchBytes - fixed) / token_bytes));

  char* base = moe_scratch_.as<char>();
  size_t offset = 0;
  auto region = [&](size_t bytes) {
    char* p = base + offset;
    offset += AlignUp(bytes);
    return p;
  };
  const size_t pairs = static_cast<size_t>(chunk) * top_k;
  auto* offsets = reinterpret_cast<int32_t*>(region((E + 1) * sizeof(int32_t)));
  auto* gather = reinterpret_cast<int32_t*>(region(pairs * sizeof(int32_t)));
  auto* pair_row = reinterpret_cast<int32_t*>(region(pairs * sizeof(int32_t)));
  auto* act = reinterpret_cast<bf16*>(region(pairs * I * sizeof(bf16)));
  auto* y = reinterpret_cast<bf16*>(region(pairs * H * sizeof(bf16)));
  TESSERA_CHECK_LE(offset, kMoeScratchBytes);

  for (int t0 = 0; t0 < n; t0 += chunk) {
    const int c = std::min(chunk, n - t0);
    const int max_rows = c * top_k;
    const int32_t* chunk_ids = ids + static_cast<int64_t>(t0) * top_k;
    cuda::LaunchMoeGroup(chunk_ids, c, top_k, first, E, offsets, gather, pair_row, stream_);
    const bf16* chunk_x = B(x) + static_cast<int64_t>(t0) * H;
    if (bf16_experts != nullptr) {
      cuda::LaunchMoeGateUp(chunk_x, gather, offsets, E, max_rows, B(bf16_experts->gate_up), H, I,
                            act, stream_);
      cuda::LaunchMoeDown(act, offsets, E, max_rows, B(bf16_experts->down), H, I, y, stream_);
    } else {
      cuda::LaunchMoeGateUpFp8(chunk_x, gather, offsets, E, max_rows, fp8_experts->gate_up,
                               fp8_experts->gate_up_scale_batch_stride, H, I, act, stream_);
      cuda::LaunchMoeDownFp8(act, offsets, E, max_rows, fp8_experts->down,
                             fp8_experts->down_scale_batch_stride, H, I, y, stream_);
    }
    cuda::LaunchMoeCombine(y, chunk_ids, pair_row, weights + static_cast<int64_t>(t0) * top_k, c,
                           top_k, H, B(out) + static_cast<int64_t>(t0) * H, stream_);
  }
}

}  // namespace

std::unique_ptr<Backend> MakeCudaBackend(int device) {
  return std::make_unique<CudaBackend>(device);
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
}

}  // namespace tessera
