// Qwen3 / Qwen3-MoE hyper-parameters read from a Hugging Face config.json.
//
// Two spellings exist and both are accepted:
//   - the Hub's:                 "rope_theta", "rope_scaling": {...}, "num_experts"
//   - recent transformers (v5):  "rope_parameters": {"rope_type", "rope_theta", ...},
//                                "num_local_experts"
// Every value is validated; an error names the file and the field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

enum class RopeType { kDefault, kYarn };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;  // "rope_theta"
  // YaRN only (rope_type "yarn"); unset optionals are < 0 / absent as noted.
  double factor = 1.0;                        // "factor"
  int64_t original_max_position_embeddings = 0;  // 0 = absent (falls back to max_position_embeddings)
  double attention_factor = -1.0;             // "attention_factor"; < 0 = absent
  double beta_fast = 32.0;                    // "beta_fast"
  double beta_slow = 1.0;                     // "beta_slow"
  double mscale = 0.0;                        // "mscale"; 0 = absent
  double mscale_all_dim = 0.0;                // "mscale_all_dim"; 0 = absent
  bool truncate = true;                       // "truncate"
};

struct ModelConfig {
  std::string model_type;  // "qwen3" or "qwen3_moe"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // its own field; defaults to hidden_size / num_attention_heads if absent
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // must be false for Qwen3 (rejected otherwise)
  std::string hidden_act = "silu";  // only "silu" is accepted
  std::string torch_dtype;          // "bfloat16", ... ("dtype" in transformers v5); informational
  RopeConfig rope;
  // Sliding-window attention is not used by Qwen3 checkpoints; use_sliding_window must be false.

  // MoE (model_type "qwen3_moe"); num_experts == 0 means a dense model.
  int64_t num_experts = 0;          // "num_experts" or "num_local_experts"
  int64_t num_experts_per_tok = 0;  // top-k
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;

  std::vector<int64_t> eos_token_ids;  // "eos_token_id": int or list; may be empty
  int64_t bos_token_id = -1;           // -1 = absent

  bool is_moe() const { return num_experts > 0; }
  // As transformers' Qwen3MoeDecoderLayer decides: not in mlp_only_layers, num_experts > 0 and
  // (layer + 1) % decoder_sparse_step == 0.
  bool IsMoeLayer(int64_t layer) const;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);
// Reads and parses DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace tessera
