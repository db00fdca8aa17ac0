// Qwen3 / Qwen3-MoE hyper-parameters read from a Hugging Face config.json.
//
// Two spellings exist and both are accepted:
//   - the Hub's:                 "rope_theta", "rope_scaling": {...}, "num_experts"
//   - recent transformers (v5):  "rope_parameters": {"rope_type", "rope_theta", ...},
//                                "num_local_experts"
// Every value is validated; an error (InvalidArgument; NotFound for a missing config.json) names
// the file and the field, e.g.
//   config.json: "num_attention_heads" must be a positive integer, got "abc"
// Rules: model_type is "qwen3" or "qwen3_moe"; vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads, num_key_value_heads (null = num_attention_heads) and
// max_position_embeddings are required JSON integers in [1, 2^31 - 1] (floats such as 128.0 are
// rejected); num_attention_heads % num_key_value_heads == 0; head_dim is even; rms_norm_eps > 0;
// hidden_act is "silu"; attention_bias and use_sliding_window are false if present. MoE
// (qwen3_moe): num_experts >= 1, num_experts_per_tok in [1, num_experts],
// moe_intermediate_size >= 1, decoder_sparse_step >= 1, mlp_only_layers within
// [0, num_hidden_layers). Optional fields may be absent or null; unknown fields are ignored.
// quantization_config (FP8 checkpoints, QuantizationConfig below): quant_method "fp8", fmt
// "e4m3", activation_scheme "dynamic", weight_block_size [128, 128]; anything else is an error,
// so an unsupported checkpoint fails before any weight is read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

enum class RopeType { kDefault, kYarn };

// Rotary embedding parameters, resolved exactly as transformers 5.23 resolves them
// (PreTrainedConfig.standardize_rope_params and modeling_rope_utils._compute_yarn_parameters).
//
// Which dict: "rope_scaling" when it is a non-empty object, else "rope_parameters" when present,
// else none (default RoPE). Type: its "rope_type", else its "type", else "default"; any type other
// than "default" and "yarn" is an error. theta: the dict's "rope_theta", else the top-level
// "rope_theta", else 10000.
//
// YaRN (every value below is already resolved by the parser; nothing is left "absent"):
//   dim = head_dim (the whole head rotates: "partial_rotary_factor", if given, must be 1)
//   original_max_position_embeddings: the dict's value, else max_position_embeddings
//   factor: the dict's "factor" (the key is required); null means
//           max_position_embeddings / original_max_position_embeddings. Must be >= 1.
//   attention_factor: the dict's value; else, when "mscale" and "mscale_all_dim" are both
//           non-zero, m(factor, mscale) / m(factor, mscale_all_dim); else m(factor, 1), where
//           m(s, k) = s <= 1 ? 1 : 0.1 * k * ln(s) + 1. It multiplies cos and sin.
//   beta_fast / beta_slow: the dict's values; null or 0 means 32 / 1.
//   truncate: the dict's value, else true.
//   inv_freq[i] (i < dim / 2), with pos = theta^(2i / dim):
//     low  = (dim * ln(orig / (beta_fast * 2 * pi))) / (2 * ln(theta)), floored if truncate
//     high = (dim * ln(orig / (beta_slow * 2 * pi))) / (2 * ln(theta)), ceiled if truncate
//     low = max(low, 0); high = min(high, dim - 1); if low == high, high += 0.001
//     ramp = clamp((i - low) / (high - low), 0, 1); extrapolation weight w = 1 - ramp
//     inv_freq[i] = (1 / (factor * pos)) * (1 - w) + (1 / pos) * w
// Default RoPE: inv_freq[i] = 1 / theta^(2i / dim), attention factor 1.
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;  // "rope_theta", > 0
  // YaRN only; left at these values for default RoPE, except attention_factor.
  double factor = 1.0;                           // "factor", >= 1
  int64_t original_max_position_embeddings = 0;  // > 0 for YaRN
  double attention_factor = 1.0;  // multiplies cos and sin: 1 for default RoPE, > 0 for YaRN
  double beta_fast = 32.0;        // "beta_fast"
  double beta_slow = 1.0;         // "beta_slow"
  double mscale = 0.0;            // "mscale"; 0 = absent (already folded in above)
  double mscale_all_dim = 0.0;    // "mscale_all_dim"; 0 = absent (likewise)
  bool truncate = true;           // "truncate"
};

// "quantization_config" of an FP8 checkpoint, as transformers' FineGrainedFP8 integration writes
// it: {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
// "weight_block_size": [128, 128], "modules_to_not_convert": [...]}. Each quantized linear then
// has `<name>.weight` float8_e4m3fn [out, in] and `<name>.weight_scale_inv` float32
// [ceil(out / 128), ceil(in / 128)]; the loader follows the files (a linear with a scale tensor is
// FP8, any other tensor keeps its dtype), so modules_to_not_convert is only cross-checked.
struct QuantizationConfig {
  std::string quant_method;          // "" = none (a bf16/fp16/fp32 checkpoint), else "fp8"
  std::string fmt;                   // "e4m3" (the only format the kernels take)
  std::string activation_scheme;     // "dynamic": per-token 1x128 groups, scaled per step
  int64_t block_n = 0, block_k = 0;  // weight_block_size: 128 x 128
  // Module names (without ".weight") that must stay unquantized; a scale tensor for one of them
  // is a load error.
  std::vector<std::string> modules_to_not_convert;
  // Not from config.json: "--quantization fp8" on a checkpoint without FP8 weights; the model
  // block-quantizes its linear layers at load (Qwen3Model::Load).
  bool quantize_at_load = false;
  bool fp8() const { return quant_method == "fp8"; }
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
  bool attention_bias = false;      // must be false for Qwen3 (rejected otherwise)
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

  QuantizationConfig quantization;  // "quantization_config"; quant_method "" when absent

  std::vector<int64_t> eos_token_ids;  // "eos_token_id": int or list; may be empty
  int64_t bos_token_id = -1;           // -1 = absent

  bool is_moe() const { return num_experts > 0; }
  // As transformers' Qwen3MoeDecoderLayer decides: not in mlp_only_layers, num_experts > 0 and
  // (layer + 1) % decoder_sparse_step == 0.
  bool IsMoeLayer(int64_t layer) const;
};

// "--quantization fp8": FP8 linears for a bf16/fp16/fp32 checkpoint, quantized at load in the
// checkpoints' format (a config that is already FP8 is left as it is).
void RequestFp8Quantization(ModelConfig* config);

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);
// Reads and parses DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace tessera
