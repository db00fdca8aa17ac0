// Qwen3 and Qwen3-MoE: one definition for both (config -> tensor table -> forward).
//
// Dense and MoE differ only in the MLP of each layer (ModelConfig::IsMoeLayer). The forward runs
// one engine step over a flattened batch of tokens from any number of sequences (prefill chunks
// and decode tokens mixed), reading and writing the paged KV cache.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "parallel/communicator.h"
#include "runtime/kv_cache.h"
#include "runtime/model_config.h"
#include "runtime/rope.h"
#include "runtime/safetensors.h"

namespace tessera {

// How a weight is split across tensor-parallel ranks (DESIGN.md, "Sharding rules").
enum class ShardRule {
  kReplicated,  // every rank holds all of it
  kColumn,      // split along dim 0 (output features): q/k/v by heads, gate/up
  kRow,         // split along dim 1 (input features): o_proj, down_proj
  kVocab,       // split along dim 0 by vocabulary: embed_tokens, lm_head
  kExpert,      // per-expert tensor: held by the expert's EP owner (or TP-split with EP = 1)
};

struct TensorSpec {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // full (unsharded) shape
  ShardRule rule;
};

// Which part of the model this rank holds, and the communicators its forward uses. The default
// is the whole model on one rank (no communicators).
struct ShardSpec {
  int tp_rank = 0;
  int tp_size = 1;
  int ep_rank = 0;  // experts [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size)
  int ep_size = 1;
  int64_t first_layer = 0;     // this pipeline stage's layers [first_layer, last_layer)
  int64_t last_layer = -1;     // -1 = through the last layer
  Communicator* tp = nullptr;  // this rank's TP group (size tp_size); null when tp_size == 1
  Communicator* ep = nullptr;  // the ranks of this stage (size ep_size); null when ep_size == 1
  Communicator* pp = nullptr;  // any communicator holding both neighbouring stages' ranks
  int pp_prev = -1;            // rank in `pp` of the previous stage's counterpart; -1 = first stage
  int pp_next = -1;            // rank in `pp` of the next stage's counterpart; -1 = last stage
};

// What the last stage does with one logit row: sample it on the device (only its id travels to
// rank 0), or return its logits (rows that need logprobs or prompt logits).
struct LogitRowSampling {
  bool on_device = false;
  SamplingRowParams params;  // when on_device
  // When on_device with penalties: their values (begin/end unused here) and the (id, count)
  // pairs of runtime/sampler.h's PenaltyEntries; empty = none.
  SamplingPenaltyRow penalty;
  std::vector<int32_t> penalty_entries;
};

// One engine step, on the host. Tokens of a sequence are contiguous and in position order.
struct StepBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> token_seq;     // [num_tokens] sequence index in [0, num_seqs)
  std::vector<int32_t> slot_mapping;  // [num_tokens] KV-cache slot of each token
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  std::vector<int32_t> logit_tokens;  // token indices whose logits are wanted, e.g. each seq's last
  // [logit_tokens.size()], or empty: every row returns logits.
  std::vector<LogitRowSampling> logit_sampling;
};

// The largest step a model's workspace is planned for, per micro-batch (Qwen3Model::PlanWorkspace):
// every buffer a step uses is sized from these once, before the first step, so steps and ops never
// allocate. A step beyond them is the caller's error; the engine's budgets keep within them.
struct StepLimits {
  int max_tokens = 1;          // tokens of one step (the chunked-prefill budget)
  int max_logit_rows = 1;      // rows whose logits one step computes (<= max_tokens)
  int max_seqs = 1;            // sequences of one step
  int max_blocks_per_seq = 1;  // width of the step's block table
  int max_seq_len = 1;         // positions of the longest sequence (bounds penalty entries)
};

// The logit rows of `batch` whose logits come back to the host (the others come back as ids).
int NumLogitRowsReturned(const StepBatch& batch);

// Where weights come from: checkpoint slices, or random values for benchmarks.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Writes `count` elements, the slice [start, start + length) of tensor `name` along `dim`
  // (length < 0: to the end), to `device_dst` in the backend's weight dtype.
  virtual absl::Status Read(const std::string& name, int dim, int64_t start, int64_t length,
                            size_t count, void* device_dst) const = 0;
};

class Qwen3Model {
 public:
  // Every tensor a checkpoint of `config` holds, with full shapes.
  static std::vector<TensorSpec> TensorTable(const ModelConfig& config);

  // Checks the checkpoint against the tensor table (missing, extra and mis-shaped tensors are
  // errors naming the file and tensor), then reads this rank's slices onto the backend.
  static absl::StatusOr<std::unique_ptr<Qwen3Model>> Load(const ModelConfig& config,
                                                          const Checkpoint& checkpoint,
                                                          Backend& backend, const ShardSpec& shard);

  // Random weights at the config's real shapes, generated by the backend (no checkpoint).
  static absl::StatusOr<std::unique_ptr<Qwen3Model>> LoadDummy(const ModelConfig& config,
                                                               Backend& backend,
                                                               const ShardSpec& shard,
                                                               uint64_t seed);

  const ModelConfig& config() const { return config_; }
  int64_t vocab_size() const { return config_.vocab_size; }
  // Per-rank KV heads (replicated when tp > num_key_value_heads).
  int kv_heads_local() const { return static_cast<int>(kv_heads_local_); }

  // Decode graphs recorded so far (tests).
  int num_decode_graphs() const { return static_cast<int>(graphs_.size()); }

  bool first_stage() const { return shard_.pp_prev < 0; }
  bool last_stage() const { return shard_.pp_next < 0; }
  int64_t num_local_layers() const { return static_cast<int64_t>(layers_.size()); }

  // Runs this stage's layers over the batch (one micro-batch). A stage after the first receives
  // the hidden states from the previous stage; a stage before the last sends them on. On the last
  // stage, for each logit row: rows sampled on the device get their id in `tokens`
  // [logit_tokens.size()] (the vocabulary shards gathered on the device, Backend::SampleTokens);
  // the other rows get -1 there and their full-vocabulary logits (float32, gathered across TP
  // ranks) in `logits` [NumLogitRowsReturned(batch), vocab_size], in row order. Only TP rank 0
  // fills them (it alone reports to the coordinator); elsewhere both stay empty. An empty batch (no
  // tokens) still takes part in the collectives its peers make (the expert exchange).
  // `replica_tokens`: with expert parallelism, the token count of this micro-batch in each
  // attention-DP replica of the stage (the plan's, so every rank sizes the exchange alike); may
  // be empty when the stage is one replica.
  void Forward(const StepBatch& batch, KvCache& kv_cache, std::vector<float>* logits,
               std::vector<int32_t>* tokens, const std::vector<int>& replica_tokens = {});

  // Sizes the step workspace for steps within `limits` (and for the decode graphs such steps
  // replay) and allocates it, replacing any earlier plan. Forward needs a plan.
  void PlanWorkspace(const StepLimits& limits);
  const StepLimits& step_limits() const { return limits_; }
  // Bytes of device memory the current plan holds.
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  struct Layer {
    DeviceBuffer input_norm;  // W [H]
    DeviceBuffer qkv;         // W [(q_heads_local + 2 * kv_heads_local) * D, H]
    DeviceBuffer q_norm;      // W [D]
    DeviceBuffer k_norm;      // W [D]
    DeviceBuffer o_proj;      // W [H, q_heads_local * D]
    DeviceBuffer post_norm;   // W [H]
    bool moe = false;
    DeviceBuffer gate_up;  // dense: W [2 * I_local, H]; MoE: W [E_local, 2 * I_moe_local, H]
    DeviceBuffer down;     // dense: W [H, I_local];     MoE: W [E_local, H, I_moe_local]
    DeviceBuffer router;   // MoE: W [E, H] (replicated)
  };

  Qwen3Model(const ModelConfig& config, Backend& backend, const ShardSpec& shard);
  absl::Status LoadWeights(const WeightSource& source);
  // Checks that a step fits the planned workspace (a failed check names the limit).
  void CheckWithinPlan(int num_tokens, int num_logits, int num_seqs, int max_blocks) const;
  // The step's body, split so a decode step can be recorded as a graph: RunStage runs embedding
  // (or the previous stage's hand-off), the layers and the hand-off to the next stage over the
  // uploaded metadata; RunHead the final norm and lm_head for the rows in logit_rows_.
  void RunStage(int n, const AttentionBatch& attn_batch, KvCache& kv);
  void RunHead(int r);
  bool DecodeGraphEligible(const StepBatch& batch) const;
  void RunDecodeGraph(const StepBatch& batch, KvCache& kv);
  void TpAllReduce(void* buf, int64_t count);
  // The experts of `layer` this rank holds, as MoeExperts takes them.
  ExpertWeights LocalExperts(const Layer& layer) const;
  // Forward's tail on the last stage: the vocabulary shards of logits_buf_ gathered on the
  // device; on TP rank 0, ids of the rows sampled on the device and the logits of the others.
  void SampleOrDownload(const StepBatch& batch, std::vector<float>* logits,
                        std::vector<int32_t>* tokens);
  // Per step with expert parallelism: this rank's token slice, the padded slice size M of the EP
  // group (from every replica's token count), and ids -1 for the padding rows of topk_ids_.
  void PrepareExpertParallel(int n, const std::vector<int>& replica_tokens);
  // MoE layer with experts spread over the stage (ep_size > 1), all on the device: route this
  // rank's slice of the tokens, all-gather every rank's M rows (hidden, ids, weights) over the
  // stage, run this rank's experts over all of them, reduce-scatter the partial sums back to
  // their slices, and gather the TP group's slices. hidden_ -> proj_, for the micro-batch
  // PrepareExpertParallel set up.
  void ExpertParallelMoe(const Layer& layer);

  ModelConfig config_;
  Backend& backend_;
  ShardSpec shard_;
  RopeTables rope_;
  int64_t q_heads_local_ = 0;
  int64_t kv_heads_local_ = 0;
  int64_t intermediate_local_ = 0;
  int64_t moe_intermediate_local_ = 0;
  int64_t first_expert_ = 0;
  int64_t num_local_experts_ = 0;
  int64_t vocab_start_ = 0;
  int64_t vocab_end_ = 0;

  DeviceBuffer embed_;       // W [vocab_local, H]
  DeviceBuffer final_norm_;  // W [H]
  DeviceBuffer lm_head_;     // W [vocab_local, H]; empty when tied to embed_
  DeviceBuffer inv_freq_;    // fp32 [D / 2]
  std::vector<Layer> layers_;

  // Step workspace, planned once (PlanWorkspace; capacities in tokens / rows / table entries).
  StepLimits limits_;
  size_t workspace_bytes_ = 0;
  int token_capacity_ = 0;
  int logit_capacity_ = 0;
  int table_capacity_ = 0;
  DeviceBuffer ids_, positions_, token_seq_, slots_, tables_, logit_rows_;
  DeviceBuffer residual_, hidden_, qkv_buf_, attn_, proj_, gate_up_buf_, act_;
  DeviceBuffer router_logits_, topk_ids_, topk_weights_, selected_, logits_buf_;
  std::vector<float> host_logits_;
  // Decode graphs by (padded batch, block-table capacity), recorded against the planned
  // workspace (a new plan drops them). TESSERA_CUDA_GRAPHS=0 turns them off.
  bool graphs_enabled_ = true;
  std::map<std::pair<int, int>, std::unique_ptr<DeviceGraph>> graphs_;
  std::vector<int32_t> staged_;
  DeviceBuffer gathered_logits_;  // A [tp, logit rows, vocab_local] when tp > 1
  DeviceBuffer sample_params_;    // SamplingRowParams [logit rows]
  DeviceBuffer sampled_ids_;      // int32 [logit rows]
  std::vector<SamplingRowParams> host_params_;
  // Penalties of the device-sampled rows (TP rank 0 of the last stage only), packed: rows
  // [logit rows], (id, count) entries (at most min(vocab, max_seq_len) per row), and the float32
  // [logit rows, vocab] rows they are applied to.
  DeviceBuffer penalty_rows_, penalty_entries_, penalty_scratch_;
  int64_t penalty_entries_capacity_ = 0;
  std::vector<SamplingPenaltyRow> host_penalty_rows_;
  std::vector<int32_t> host_penalty_entries_;
  // Expert-parallel exchange, [ep_size, M] rows gathered from the stage's slices (M <=
  // ceil(tokens / tp_size): ep_capacity_ = ep_size such slices):
  int64_t ep_capacity_ = 0;
  DeviceBuffer ep_x_;                // A [ep_capacity, H]: every rank's slice of hidden_
  DeviceBuffer ep_ids_;              // int32 [ep_capacity, k]: their top-k ids, -1 on padding rows
  DeviceBuffer ep_weights_;          // fp32 [ep_capacity, k]
  DeviceBuffer ep_y_;                // A [ep_capacity, H]: this rank's experts' partial sums
  DeviceBuffer ep_out_;              // A [ceil(tokens / tp), H]: this slice's sums, when tp > 1
  std::vector<int32_t> ep_pad_ids_;  // [ceil(tokens / tp) * k] of -1, uploaded per step
  // This step's exchange (PrepareExpertParallel): M, and this rank's slice [begin, begin + count).
  int ep_rows_ = 0;
  int ep_begin_ = 0;
  int ep_count_ = 0;
  // When tp > 1: where each TP rank's slice of the micro-batch lands in the gather that ends the
  // layer (elements of proj_), fixed per micro-batch.
  std::vector<size_t> ep_tp_counts_, ep_tp_displs_;
};

}  // namespace tessera
