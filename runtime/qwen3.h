// Qwen3 and Qwen3-MoE: one definition for both (config -> tensor table -> forward).
//
// Dense and MoE differ only in the MLP of each layer (ModelConfig::IsMoeLayer). The forward runs
// one engine step over a flattened batch of tokens from any number of sequences (prefill chunks
// and decode tokens mixed), reading and writing the paged KV cache.
#pragma once

#include <cstdint>
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

  const ModelConfig& config() const { return config_; }
  int64_t vocab_size() const { return config_.vocab_size; }
  // Per-rank KV heads (replicated when tp > num_key_value_heads).
  int kv_heads_local() const { return static_cast<int>(kv_heads_local_); }

  bool first_stage() const { return shard_.pp_prev < 0; }
  bool last_stage() const { return shard_.pp_next < 0; }
  int64_t num_local_layers() const { return static_cast<int64_t>(layers_.size()); }

  // Runs this stage's layers over the batch (one micro-batch). A stage after the first receives
  // the hidden states from the previous stage; a stage before the last sends them on. On the last
  // stage, writes the full-vocabulary logits [batch.logit_tokens.size(), vocab_size] (float32) to
  // `logits` on the host (gathered across TP ranks); elsewhere leaves `logits` empty. An empty
  // batch (no tokens) still takes part in the collectives its peers make (expert all-to-alls).
  void Forward(const StepBatch& batch, KvCache& kv_cache, std::vector<float>* logits);

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
  absl::Status LoadWeights(const Checkpoint& checkpoint);
  void EnsureWorkspace(int num_tokens, int num_logits, int num_seqs, int max_blocks);
  void TpAllReduce(void* buf, int64_t count);
  // MoE layer with experts spread over the stage (ep_size > 1): route this rank's share of the
  // tokens, dispatch rows to expert owners by all-to-all(v), compute, combine back, and gather the
  // TP group's shares. hidden_ -> proj_.
  void ExpertParallelMoe(const Layer& layer, int n);

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

  // Step workspace, grown on demand (capacities in tokens / rows).
  int token_capacity_ = 0;
  int logit_capacity_ = 0;
  int table_capacity_ = 0;
  DeviceBuffer ids_, positions_, token_seq_, slots_, tables_, logit_rows_;
  DeviceBuffer residual_, hidden_, qkv_buf_, attn_, proj_, gate_up_buf_, act_;
  DeviceBuffer router_logits_, topk_ids_, topk_weights_, selected_, logits_buf_;
  std::vector<float> host_logits_;
  // Expert-parallel staging: rows received for this rank's experts and their results.
  int64_t ep_capacity_ = 0;
  DeviceBuffer ep_x_, ep_y_, ep_ids_, ep_weights_;
};

}  // namespace tessera
