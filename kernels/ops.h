// The op table: every op the Qwen3 forward needs, implemented once per backend.
//
// The CPU backend (kernels/cpu/) computes in float32 and is the reference every other backend is
// tested against. The CUDA backend (kernels/cuda/) computes in bf16 with fp32 accumulation.
// The model (runtime/model/qwen3.cc) is written once against this interface.
//
// Conventions:
//   - Tensors are dense, row-major, on the backend's device. Activations ("A") are in
//     activation_dtype(), weights ("W") in weight_dtype(); index arrays are int32.
//   - Shapes are written [rows, cols]; per-shard shapes say so.
//   - Ops never allocate device memory: callers pass every output and workspace buffer.
//   - Ops are asynchronous with respect to the host on devices that can be; Synchronize() waits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/base/dtype.h"

namespace tessera {

enum class DeviceKind { kCpu, kCuda };

// Owning device allocation. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(void* data, size_t bytes, void (*free_fn)(void*))
      : data_(data), bytes_(bytes), free_(free_fn) {}
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = other.data_;
      bytes_ = other.bytes_;
      free_ = other.free_;
      other.data_ = nullptr;
      other.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  void Reset() {
    if (data_ && free_) free_(data_);
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  void (*free_)(void*) = nullptr;
};

// Where each token of a step sits: which sequence, which position, which KV-cache slot.
// All arrays are on the device. The KV cache is paged: slot = block * block_size + offset.
struct AttentionBatch {
  int num_tokens = 0;
  int num_seqs = 0;
  const int32_t* positions = nullptr;     // [num_tokens] position of each token in its sequence
  const int32_t* token_seq = nullptr;     // [num_tokens] index of each token's sequence
  const int32_t* slot_mapping = nullptr;  // [num_tokens] cache slot written for each token
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] physical block ids
  int max_blocks_per_seq = 0;
  int block_size = 0;
  // Leading sequences with exactly one token each (tokens [0, num_single) are sequences
  // [0, num_single)); the rest may have any count. 0 = unknown. Lets a backend send those rows to
  // its decode kernel when the batch also holds prefill chunks (StepBatch::single_token_seqs).
  int num_single = 0;
};

// Which experts of a MoE layer this rank holds, and their weights.
struct ExpertWeights {
  int first_expert = 0;  // global id of local expert 0
  int num_local_experts = 0;
  int64_t hidden = 0;             // H
  int64_t intermediate = 0;       // I (per shard when experts are TP-split)
  const void* gate_up = nullptr;  // W [num_local_experts, 2*I, H]: gate rows then up rows
  const void* down = nullptr;     // W [num_local_experts, H, I]
};

// A point in the backend's stream (a CUDA event): recorded after some enqueued ops, it has passed
// once they have all run. Host-synchronous backends' events have always passed.
class DeviceEvent {
 public:
  virtual ~DeviceEvent() = default;
  // Marks the ops enqueued so far; the event passes when they are done.
  virtual void Record() = 0;
  // Whether the ops before the last Record() are done (true if never recorded). Does not block.
  virtual bool Query() = 0;
  // Blocks until they are.
  virtual void Wait() = 0;
};

// Times a span of the backend's stream (a step's device time: tessera:engine_step_device_seconds,
// runtime/engine/ENGINE.md). Begin() and End() mark two points between enqueued ops; Seconds() is
// the device's time from the first to the second: the span's ops and any idle gap inside it (the
// device waiting for the host to enqueue the span's next op), not the time before Begin() while
// earlier work still ran. On CUDA the marks are timing events on the stream, so timing adds no
// host wait; on host-synchronous backends (the default) the host's clock between the two calls,
// which there is the ops' own time.
class DeviceTimer {
 public:
  virtual ~DeviceTimer() = default;
  virtual void Begin() = 0;
  virtual void End() = 0;
  // Whether the ops before End() are done (true if never begun). Does not block.
  virtual bool Query() = 0;
  // Seconds from Begin() to End(); only once Query() is true (a checked error before).
  virtual double Seconds() = 0;
};

// FP8 (OCP E4M3, "e4m3fn") with fp32 block scales, as Qwen3's FP8 checkpoints store linear
// weights (quantization_config: fmt e4m3, weight_block_size [128, 128], activation_scheme
// dynamic): value = e4m3 element * the scale of its block. Weights have one scale per 128 x 128
// block (`*.weight_scale_inv`); activations one per 1 x 128 group of a row (computed per step by
// QuantizeFp8). Partial blocks at the ends of n, k and m are blocks too.
constexpr int64_t kFp8Block = 128;
constexpr float kFp8Max = 448.0f;  // the largest finite e4m3 value
inline int64_t Fp8Blocks(int64_t elements) { return (elements + kFp8Block - 1) / kFp8Block; }
// The row stride (in floats) of a weight's scale table: ceil(k / 128) rounded up to 4.
// NOTE: cuBLASLt's 128x128 block-scale layout (16-byte rows); the loader pads the checkpoint's
// [ceil(n/128), ceil(k/128)] table to it (a no-op for Qwen3's k, all multiples of 512).
inline int64_t Fp8WeightScaleStride(int64_t k) { return (Fp8Blocks(k) + 3) / 4 * 4; }
// The rows an FP8 linear's activations and output span for m tokens (LinearFp8): m rounded up
// to 16. NOTE: cuBLASLt's block-scaled FP8 GEMM lists no algorithm for most m that are not a
// multiple of 8 (H100: none for m = 1, 3, 17, 100, 333); the CUDA backend runs it on the padded
// rows instead, so callers size x and y for them. Each output row depends only on its own input
// row: what the padded rows hold never reaches the first m.
inline int64_t Fp8PaddedRows(int64_t m) { return (m + 15) / 16 * 16; }
// The row stride of an activation scale table: Fp8PaddedRows(m) (cuBLASLt's 1x128 layout for the
// padded rows: tokens fastest, a multiple of 4).
inline int64_t Fp8ActivationScaleStride(int64_t m) { return Fp8PaddedRows(m); }
// A W8A8 backend runs linears of up to this many rows weight-only (Backend::Fp8WeightOnly): at
// decode batch sizes one pass over the weight bounds the time, and the W8A16 GEMV skips the
// activations' quantization (and is numerically at least as close to bf16).
constexpr int64_t kFp8WeightOnlyMaxRows = 8;

// A block-scaled FP8 weight W[n, k] = data[i, j] * scale[i / 128][j / 128].
//
// A tensor-parallel shard of a checkpoint's weight need not start on a block boundary (Qwen3-235B's
// expert intermediate 1536 at TP8: 192 rows a rank, rank 1 from row 192 = 64 rows into block 1).
// It keeps the checkpoint's scales for its part: its scale table holds the blocks it overlaps, and
// row_offset / col_offset say how far into its first block row / column it starts. A fused weight
// of `part_rows`-row parts (gate | up of one expert) restarts the block grid at each part, whose
// scale rows start at p * part_scale_rows. Fp8ScaleIndex says where element (i, j)'s scale is.
// The GEMMs (LinearFp8, LinearFp8WeightOnly) take aligned weights only (Fp8Aligned: no offsets,
// one part); DequantizeFp8Weight takes any.
struct Fp8Weight {
  const void* data = nullptr;    // e4m3 [n, k], row-major
  const float* scale = nullptr;  // fp32 [scale rows, scale_stride]
  // Fp8WeightScaleStride(k) for cuBLASLt; the other kernels take any stride >= ceil(k / 128).
  int64_t scale_stride = 0;
  int64_t row_offset = 0;       // in [0, 128): rows of the first block before row 0
  int64_t col_offset = 0;       // in [0, 128): columns of the first block before column 0
  int64_t part_rows = 0;        // rows of each part; 0 = one part
  int64_t part_scale_rows = 0;  // scale rows of each part (when part_rows > 0)
};
inline bool Fp8Aligned(const Fp8Weight& w) {
  return w.row_offset == 0 && w.col_offset == 0 && w.part_rows == 0;
}
inline int64_t Fp8ScaleIndex(const Fp8Weight& w, int64_t i, int64_t j) {
  const int64_t part = w.part_rows > 0 ? i / w.part_rows : 0;
  const int64_t row = w.part_rows > 0 ? i % w.part_rows : i;
  return (part * w.part_scale_rows + (row + w.row_offset) / kFp8Block) * w.scale_stride +
         (j + w.col_offset) / kFp8Block;
}

// FP8 activations x[m, k] = data[t, j] * scale[j / 128][t], written by QuantizeFp8.
// NOTE: the scales are stored transposed (tokens fastest), cuBLASLt's layout for 1x128 groups.
struct Fp8Activations {
  void* data = nullptr;      // e4m3 [m, k], row-major
  float* scale = nullptr;    // fp32 [ceil(k / 128), scale_stride]
  int64_t scale_stride = 0;  // >= m; LinearFp8 takes Fp8ActivationScaleStride(m) exactly
};

// Which FP8 linear a backend runs: none, weights only (W8A16: bf16 activations, FP8 weights
// dequantized inside the GEMM; Ampere) or weights and activations (W8A8: FP8 tensor cores; Hopper).
enum class Fp8Mode { kNone, kW8A16, kW8A8 };

// A MoE layer's local experts as block-scaled FP8 weights (Backend::MoeExpertsFp8): ExpertWeights'
// shapes in e4m3, expert e's weight at data + e * rows * cols bytes and its scale table at
// scale + e * *_scale_batch_stride. Any offsets and parts (a TP slice inside a block; gate and up
// as two parts of gate_up).
struct ExpertWeightsFp8 {
  int first_expert = 0;  // global id of local expert 0
  int num_local_experts = 0;
  int64_t hidden = 0;        // H
  int64_t intermediate = 0;  // I (per shard when experts are TP-split)
  Fp8Weight gate_up;         // e4m3 [num_local_experts, 2*I, H]: gate rows then up rows
  int64_t gate_up_scale_batch_stride = 0;
  Fp8Weight down;  // e4m3 [num_local_experts, H, I]
  int64_t down_scale_batch_stride = 0;
};

// A recorded sequence of ops (a CUDA graph), replayed with the device pointers and launch sizes it
// was recorded with; whatever varies per replay is read from device memory.
class DeviceGraph {
 public:
  virtual ~DeviceGraph() = default;
  // Enqueues the recorded ops on the backend's stream, asynchronously.
  virtual void Replay() = 0;
};

// Per-row parameters of Backend::SampleTokens, one per row in device memory (40 bytes, no
// pointers: rows travel in the StepPlan as raw bytes). The rule is kernels/base/sampling_rule.h.
struct SamplingRowParams {
  float temperature = 0.0f;      // 0 = greedy (argmax, ties to the lowest id)
  int32_t top_k = 0;             // <= 0 or >= the sampleable vocabulary: off
  float top_p = 1.0f;            // (0, 1]; 1 = off
  float min_p = 0.0f;            // [0, 1]; 0 = off
  int32_t sampleable_vocab = 0;  // ids >= this are never sampled; <= 0 = the whole row
  uint32_t reserved = 0;
  uint64_t seed = 0;  // the request's random stream
  uint64_t step = 0;  // which draw of the stream: the number of tokens generated before this one
};
static_assert(sizeof(SamplingRowParams) == 40, "serialised as raw bytes: no padding may vary");

// Per-row penalties of Backend::SampleTokens (20 bytes, no pointers: serialised as raw bytes),
// applied to the row's logits before the rule, as Hugging Face / vLLM do (and runtime/Sampler):
// for each entry (id, count) of the row, with x = the logit of id:
//   x = x > 0 ? x / repetition : x * repetition      (every entry: ids of prompt or output)
//   x = x - (frequency * count + presence)             (entries with count > 0: output ids)
// The arithmetic is kernels/base/sampling_rule.h's Penalise, the same bits on host and device.
struct SamplingPenaltyRow {
  float repetition = 1.0f;  // > 0; 1 = off
  float presence = 0.0f;    // 0 = off
  float frequency = 0.0f;   // 0 = off
  int32_t begin = 0;        // the row's entries [begin, end) of SamplingPenalties::entries;
  int32_t end = 0;          // begin == end: no penalties (the row is sampled as it stands)
};
static_assert(sizeof(SamplingPenaltyRow) == 20, "serialised as raw bytes: no padding may vary");

// Penalties for Backend::SampleTokens, all in device memory.
struct SamplingPenalties {
  const SamplingPenaltyRow* rows = nullptr;  // [rows]
  // int32 pairs (id, count): per row the distinct ids of prompt and output, count = the id's
  // occurrences in the output; ids outside the sampleable vocabulary are ignored.
  const int32_t* entries = nullptr;
  // float32 [rows, vocab] workspace (not needed by the CPU backend): row r's penalised logits
  // are written to row r, so the logits passed in stay untouched.
  float* scratch = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind kind() const = 0;
  virtual DType activation_dtype() const = 0;
  virtual DType weight_dtype() const = 0;

  // Memory.
  virtual DeviceBuffer Allocate(size_t bytes) = 0;
  // The device's free and total memory in bytes; false where memory is not a device's (CPU).
  virtual bool MemoryInfo(size_t* /*free_bytes*/, size_t* /*total_bytes*/) { return false; }
  virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  // Enqueues the copy of `bytes` from `src` to `host_dst` (AllocateStaging memory) and returns:
  // it has landed once an event recorded after this call has passed. The default copies now.
  virtual void CopyToHostAsync(void* host_dst, const void* src, size_t bytes) {
    CopyToHost(host_dst, src, bytes);
  }
  // Uploads float32 host values as `dtype` (weight_dtype() or activation_dtype()).
  virtual void UploadFloat(void* dst, DType dtype, const float* host_src, size_t count) = 0;
  // Downloads `count` values of `dtype` as float32.
  virtual void DownloadFloat(float* host_dst, const void* src, DType dtype, size_t count) = 0;
  // Waits for every op enqueued so far (CopyToHost, DownloadFloat and UploadFloat wait through it).
  virtual void Synchronize() = 0;

  // Streaming uploads (the weight loader, runtime/model/weight_loader.h). The loader fills staging
  // buffers on its reader threads and makes every call below from one thread.
  //
  // Host memory the device copies from asynchronously (pinned on CUDA). The default: plain
  // host memory, for backends whose uploads are synchronous.
  virtual DeviceBuffer AllocateStaging(size_t bytes);
  // Enqueues the upload of `count` values of `src_dtype` from `staging` (AllocateStaging memory)
  // to `dst` as `dst_dtype`, converted on the device as ConvertDType (kernels/base/dtype.h)
  // converts them, bit for bit. `staging` and `scratch` must stay untouched until an event
  // recorded after this call has passed. `scratch`: device memory of count * DTypeSize(src_dtype)
  // bytes where UploadNeedsScratch(src_dtype, dst_dtype) says so (else ignored, may be null).
  // The default converts on the host (ConvertToFloat) and calls UploadFloat, synchronously.
  virtual void UploadStaged(void* dst, DType dst_dtype, const void* staging, DType src_dtype,
                            size_t count, void* scratch);
  virtual bool UploadNeedsScratch(DType /*src_dtype*/, DType /*dst_dtype*/) const { return false; }
  // An event on this backend's stream. The default has always passed.
  virtual std::unique_ptr<DeviceEvent> CreateEvent();
  // A timer on this backend's stream. The default: the host's clock (host-synchronous backends).
  virtual std::unique_ptr<DeviceTimer> CreateTimer();
  // Waits until `passed()` holds (a DeviceEvent's or DeviceTimer's Query(), for work enqueued
  // before later steps' work): polls, yielding the core between polls, for up to kPollWait, then
  // waits in Synchronize() (for the whole stream, later work included) and returns. A device
  // error surfaces in the polls (CUDA's Query checks it: a fatal error at once); a device that
  // never finishes is bounded where Synchronize is (SetStreamWait: launch installs a watched wait
  // on every GPU, which ends the job after --collective-timeout).
  // NOTE: polling, not a blocking wait, so a step's results are read the moment they land (the
  // lowest latency; one core busy while the device runs), and not Synchronize at once, which
  // would also wait for the step enqueued behind this one (async scheduling).
  static constexpr double kPollWait = 1.0;  // seconds
  void WaitUntil(const std::function<bool()>& passed);
  // Replaces how the host waits for the stream in Synchronize() (the default: block until it
  // drains). The NCCL communicator installs a bounded wait that watches its collectives for a
  // dead or hung peer (parallel/nccl_communicator.h), since its collectives are only enqueued and
  // the host's next wait is where a failed peer shows. A function, so that kernels/ need not
  // know about ranks. Null restores the default; backends without a stream ignore it.
  virtual void SetStreamWait(std::function<void()> /*wait*/) {}
  // Fills `count` values of `dtype` with mean + scale * u, u uniform in [-1, 1) from a
  // counter-based generator seeded by `seed` (benchmarks' dummy weights). The default generates on
  // the host in pieces and uploads them; a device backend may override it with a kernel.
  virtual void FillRandom(void* dst, DType dtype, size_t count, uint64_t seed, float mean,
                          float scale);
  // The CUDA stream (a cudaStream_t) every op is ordered on, for communicators that enqueue their
  // transfers on it (parallel/nccl_communicator.h); null for backends without one.
  virtual void* stream() const { return nullptr; }

  // Op recording (CUDA graphs). Between BeginCapture() and EndCapture() ops (and communicators'
  // collectives enqueued on stream()) are recorded instead of run; EndCapture() returns the graph,
  // or null when the backend cannot record or the recording failed (the caller then runs the ops
  // directly). Nothing recorded may synchronise with the host or copy from pageable memory.
  virtual bool CanCaptureGraphs() const { return false; }
  virtual void BeginCapture() {}
  virtual std::unique_ptr<DeviceGraph> EndCapture() { return nullptr; }

  // out A[n, H] = table W[vocab_end - vocab_start, H][ids[t] - vocab_start], or 0 when the id is
  // outside [vocab_start, vocab_end) (vocab-parallel embedding: the shards are then summed).
  virtual void Embedding(const void* table, int64_t vocab_start, int64_t vocab_end, int64_t hidden,
                         const int32_t* ids, int n, void* out) = 0;

  // out A[rows, dim] = x / sqrt(mean(x^2) + eps) * weight W[dim], in fp32.
  virtual void RmsNorm(const void* x, const void* weight, int64_t rows, int64_t dim, float eps,
                       void* out) = 0;

  // residual A[rows, dim] += x; out = RmsNorm(residual).
  virtual void AddRmsNorm(void* residual, const void* x, const void* weight, int64_t rows,
                          int64_t dim, float eps, void* out) = 0;

  // y A[m, n] = x A[m, k] @ w W[n, k]^T (PyTorch's F.linear without bias).
  virtual void Linear(const void* x, const void* w, int64_t m, int64_t n, int64_t k, void* y) = 0;

  // In place on x A[n, heads, head_dim] (rows may be strided by `row_stride` elements):
  // per-head RMSNorm with weight W[head_dim] (Qwen3's q_norm / k_norm), then NeoX rotate-half
  // RoPE with angle positions[t] * inv_freq[i] (inv_freq: fp32 [head_dim/2], on the device) and
  // cos/sin multiplied by attention_scaling.
  virtual void HeadNormRope(void* x, int64_t row_stride, int n, int heads, int head_dim,
                            const void* norm_weight, float eps, const int32_t* positions,
                            const float* inv_freq, float attention_scaling) = 0;

  // Writes k and v A[n, kv_heads, head_dim] (rows strided by row_stride) into the paged caches
  // A[num_slots, kv_heads, head_dim] at slot_mapping; tokens with a negative slot are skipped.
  virtual void WriteKvCache(const void* k, const void* v, int64_t row_stride, int n, int kv_heads,
                            int head_dim, const int32_t* slot_mapping, void* k_cache,
                            void* v_cache) = 0;

  // The fused step between the qkv projection and attention, on the fused rows
  // qkv A[n, q_heads | kv_heads | kv_heads, head_dim] (strided by row_stride): equal to
  //   HeadNormRope(q, q_norm); HeadNormRope(k, k_norm); WriteKvCache(k, v)
  // with the same arguments (q and k end normed and rotated in place; negative slots skipped).
  virtual void QkNormRopeKvWrite(void* qkv, int64_t row_stride, int n, int q_heads, int kv_heads,
                                 int head_dim, const void* q_norm, const void* k_norm, float eps,
                                 const int32_t* positions, const float* inv_freq,
                                 float attention_scaling, const int32_t* slot_mapping,
                                 void* k_cache, void* v_cache) = 0;

  // Causal GQA attention over the paged cache: token t (sequence token_seq[t], position p)
  // attends to its sequence's cached positions 0..p. q A[n, q_heads, head_dim] strided by
  // q_row_stride; out A[n, q_heads, head_dim] dense. Softmax in fp32.
  virtual void Attention(const void* q, int64_t q_row_stride, const void* k_cache,
                         const void* v_cache, const AttentionBatch& batch, int q_heads,
                         int kv_heads, int head_dim, float scale, void* out) = 0;

  // FP8 linear layers. fp8_mode() says which path the backend prefers (kNone: none of the three
  // ops below is implemented); both paths are implemented wherever one is.
  virtual Fp8Mode fp8_mode() const { return Fp8Mode::kNone; }
  // Per-token dynamic quantization of x A[m, k] in 1 x 128 groups: for each row t and group g,
  // amax = max |x| over the group, scale = amax / 448 (fp32 division; 1 where amax is 0) and
  // data = e4m3(x / scale) (round to nearest even, saturating). out.scale_stride >= m.
  virtual void QuantizeFp8(const void* x, int64_t m, int64_t k, const Fp8Activations& out);
  // QuantizeFp8 of silu(gate_up[:, :I]) * gate_up[:, I:] (SiluMul fused in front, computed in
  // fp32 and not rounded to the activation dtype first); out is [m, I].
  virtual void SiluMulQuantizeFp8(const void* gate_up, int64_t m, int64_t intermediate,
                                  const Fp8Activations& out);
  // W8A8: y A[m, n] = X @ W^T with X and W dequantized, products summed in fp32 and scaled per
  // 128-k group. x as QuantizeFp8 leaves it (the same m and k) with scale_stride
  // Fp8ActivationScaleStride(m); x.data and y span Fp8PaddedRows(m) rows: the rows past m may
  // hold anything, and the backend may overwrite y's (their values are unspecified).
  virtual void LinearFp8(const Fp8Activations& x, const Fp8Weight& w, int64_t m, int64_t n,
                         int64_t k, void* y);
  // Whether an FP8 linear of m rows should run weight-only (LinearFp8WeightOnly on the unquantized
  // activations) rather than QuantizeFp8 + LinearFp8: wherever fp8_mode() is not kW8A8, and at
  // decode sizes (m <= kFp8WeightOnlyMaxRows) on a W8A8 backend too.
  virtual bool Fp8WeightOnly(int64_t m) const {
    return fp8_mode() != Fp8Mode::kW8A8 || m <= kFp8WeightOnlyMaxRows;
  }
  // W8A16: y A[m, n] = x A[m, k] @ W^T, x unquantized, W dequantized.
  virtual void LinearFp8WeightOnly(const void* x, const Fp8Weight& w, int64_t m, int64_t n,
                                   int64_t k, void* y);
  // out A[m, k] = x.data[t, j] * x.scale[j / 128][t] in fp32, rounded once to the activation
  // dtype (QuantizeFp8's output back as activations: the FP8 expert-exchange payload).
  virtual void DequantizeFp8(const Fp8Activations& x, int64_t m, int64_t k, void* out);
  // out W[batch, n, k] (weight_dtype()) = the `batch` weights w[b] (data + b * n * k bytes, scale
  // + b * scale_batch_stride) dequantized: e4m3 value * its block's scale (Fp8ScaleIndex), the
  // product in fp32, rounded once to the weight dtype. Any offsets and parts. Where the FP8 GEMMs
  // do not reach (MoE experts, shards that split a block), the model runs on this. `only`: null,
  // or int32 [batch] on the device: weights b with only[b] == 0 are skipped (out left as it was).
  virtual void DequantizeFp8Weight(const Fp8Weight& w, int64_t n, int64_t k, int64_t batch,
                                   int64_t scale_batch_stride, void* out, const int32_t* only);
  // used int32 [num] = 1 where expert first + e appears among ids int32 [count], else 0 (which of
  // a MoE layer's local experts a step routes to: the others need no dequantization).
  virtual void MarkExperts(const int32_t* ids, int64_t count, int first, int num, int32_t* used);
  // Block-quantizes w W[n, k] (weight_dtype()) into out (aligned: no offsets, one part) as
  // transformers' FineGrainedFP8 quantizer does: per 128 x 128 block, amax = max |w| (fp32),
  // s = 448 / amax (1 where amax is 0), data = e4m3(w * s) (nearest even, saturating) and
  // scale = 1 / s (what checkpoints store as weight_scale_inv). out.scale_stride >= ceil(k / 128).
  virtual void QuantizeFp8Weight(const void* w, int64_t n, int64_t k, const Fp8Weight& out);

  // out A[m, I] = silu(gate_up[:, :I]) * gate_up[:, I:], gate_up A[m, 2I].
  virtual void SiluMul(const void* gate_up, int64_t m, int64_t intermediate, void* out) = 0;

  // out A[r, dim] = x A[n, dim][rows[i]] (rows: int32 [r] on the device).
  virtual void GatherRows(const void* x, const int32_t* rows, int r, int64_t dim, void* out) = 0;

  // out A[n] = a + b (out may alias a).
  virtual void Add(const void* a, const void* b, int64_t n, void* out) = 0;

  // Router: probs = softmax(logits A[n, E]) in fp32; the top_k largest per row (ties to the lower
  // expert id) into ids int32[n, top_k] and weights fp32[n, top_k], renormalised to sum 1 when
  // `normalize`.
  virtual void RouterTopK(const void* logits, int n, int num_experts, int top_k, bool normalize,
                          int32_t* ids, float* weights) = 0;

  // out A[n, H] = sum over k of weights[t, k] * Expert_{ids[t, k]}(x[t]) for the experts this
  // rank holds (others contribute 0), Expert(x) = down @ (silu(gate @ x) * (up @ x)).
  virtual void MoeExperts(const void* x, int n, const int32_t* ids, const float* weights, int top_k,
                          const ExpertWeights& experts, void* out) = 0;
  // MoeExperts with FP8 experts (W8A16): each expert weight is dequantized inside the grouped
  // GEMMs (e4m3 value * its block's scale in fp32, rounded once to weight_dtype(), as
  // DequantizeFp8Weight rounds it) and multiplied with the unquantized activations, so the result
  // equals DequantizeFp8Weight of the routed experts followed by MoeExperts, with no weight
  // scratch and no host read of the routing (graph-capturable). MoeExpertsFp8Supported says
  // whether the backend takes this layout (else the caller dequantizes and calls MoeExperts).
  virtual bool MoeExpertsFp8Supported(const ExpertWeightsFp8& /*experts*/) const { return false; }
  virtual void MoeExpertsFp8(const void* x, int n, const int32_t* ids, const float* weights,
                             int top_k, const ExpertWeightsFp8& experts, void* out);

  // Expert-parallel dispatch over all-to-all (parallel/expert_exchange.h), in three ops. S ranks
  // each hold `experts_per_rank` consecutive experts (rank r: [r * experts_per_rank, ...)).
  //
  // Layout, from ids int32 [n, top_k] (global expert ids, distinct within a row; < 0: padding):
  //   rank_counts   int32 [S]               send rows for rank r: tokens with an expert on r
  //   expert_counts int32 [S * experts_per_rank]  (tokens, slot) pairs per expert; may be null
  //   send_tokens   int32 [n * min(top_k, S)]     token of each send row, grouped by rank in
  //                                               increasing order, tokens ascending within a
  //                                               rank (entries past the total untouched)
  //   token_slots   int32 [n, top_k]              send rows of token t in increasing rank, then -1
  // Each token is sent once to every rank owning one of its experts (never once per expert). The
  // order depends on the ids alone (no atomics).
  // block_capacity C > 0 (the low-latency exchange's fixed blocks): rank r's rows start at r * C
  // instead of after rank r - 1's, send_tokens is int32 [S * C] with each block's unused rows -1,
  // and token_slots name those rows; every rank_counts[r] must be <= C (n <= C guarantees it).
  // valid_rows (int32 [1] on the device; null: n): tokens t >= *valid_rows are padding, as if
  // their ids were all -1 (a decode graph's padded batch: the count is read on the device, so a
  // recorded graph serves any batch within its bucket). load (int64 [S + S * experts_per_rank] on
  // the device; may be null) += this call's rank_counts | per-expert pairs: the low-latency
  // exchange's expert-load counters, kept on the device so that no host read is needed.
  virtual void MoeDispatchLayout(const int32_t* ids, int n, int top_k, int num_ranks,
                                 int experts_per_rank, int32_t* rank_counts, int32_t* expert_counts,
                                 int32_t* send_tokens, int32_t* token_slots, int block_capacity,
                                 const int32_t* valid_rows, int64_t* load) = 0;
  // The `rows` send rows in layout order: send_x A[rows, H] = x A[n, H][send_tokens[i]], and the
  // token's ids int32 [rows, top_k] and weights fp32 [rows, top_k]; a row whose send_tokens entry
  // is < 0 gets zeros, ids -1 and weights 0 (routed nowhere).
  virtual void MoeDispatchPack(const void* x, const int32_t* ids, const float* weights,
                               const int32_t* send_tokens, int rows, int64_t hidden, int top_k,
                               void* send_x, int32_t* send_ids, float* send_weights) = 0;
  // Combine on the tokens' home rank: out A[n, H] = sum over token t's send rows, in increasing
  // destination rank (token_slots' order), of y A[*, H] (each rank's partial sum over its experts,
  // returned to the send row it came from), in fp32 and rounded once; 0 for a token with no row.
  virtual void MoeCombineRanks(const void* y, const int32_t* token_slots, int n, int top_k,
                               int64_t hidden, void* out) = 0;

  // tokens int32[rows] = one id per row drawn from logits A by the rule of
  // kernels/base/sampling_rule.h (temperature -> top-k -> top-p -> min-p -> draw), with
  // params[rows] (device memory). The logits are `shards` vocabulary shards as a TP all-gather
  // leaves them, A[shards, rows, vocab / shards]; shards == 1 is plain [rows, vocab]. Every id
  // is < min(vocab, params.sampleable_vocab). `penalties` (null: none) applies each row's
  // penalties first, into penalties->scratch (the logits are not written). One block per row on
  // the GPU.
  virtual void SampleTokens(const void* logits, int rows, int64_t vocab, int shards,
                            const SamplingRowParams* params, const SamplingPenalties* penalties,
                            int32_t* tokens) = 0;
  // ids[t] = sampled[from[t]] for every t < n with from[t] >= 0 (others untouched); all int32 on
  // the device, `sampled` [num_sampled] as SampleTokens wrote it. A step planned before the host
  // read the previous step's ids takes its decode inputs from them this way (async scheduling,
  // runtime/engine/ENGINE.md). The default reads `from` and `sampled` back and uploads the ids
  // (synchronous; the CPU backend's reference).
  virtual void TakeSampledIds(const int32_t* sampled, int num_sampled, const int32_t* from, int n,
                              int32_t* ids);
};

std::unique_ptr<Backend> MakeCpuBackend();

// The CUDA backend (kernels/cuda/) on GPU `device`: bf16 activations and weights, fp32
// accumulation, one stream. Defined only in builds with the CUDA toolkit, where the kernels
// library defines TESSERA_HAVE_CUDA for code that must know.
std::unique_ptr<Backend> MakeCudaBackend(int device);
// GPUs this process can use; 0 without a driver or device (and in builds without CUDA).
int CudaDeviceCount();

}  // namespace tessera
