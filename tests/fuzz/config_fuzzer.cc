// libFuzzer target: config.json text through ParseModelConfig.
//
// Beyond "no crash, no sanitizer report", it checks what acceptance promises the model code
// (the invariants listed in model_config.h); a rejection must name the file.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/model/model_config.h"

namespace {

constexpr char kFileName[] = "config.json";

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto config = tessera::ParseModelConfig(text, kFileName);
  if (!config.ok()) {
    Require(config.status().message().substr(0, sizeof(kFileName) + 1) == "config.json: ");
    return 0;
  }
  const tessera::ModelConfig& c = *config;
  constexpr int64_t kMax = INT32_MAX;
  for (int64_t v :
       {c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
        c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings}) {
    Require(v >= 1 && v <= kMax);
  }
  Require(c.model_type == "qwen3" || c.model_type == "qwen3_moe");
  Require(c.num_attention_heads % c.num_key_value_heads == 0);
  Require(c.head_dim % 2 == 0);
  Require(c.rms_norm_eps > 0 && std::isfinite(c.rms_norm_eps));
  Require(c.hidden_act == "silu" && !c.attention_bias);
  Require(c.rope.theta > 0 && std::isfinite(c.rope.theta));
  Require(c.rope.attention_factor > 0 && std::isfinite(c.rope.attention_factor));
  if (c.rope.type == tessera::RopeType::kYarn) {
    Require(c.rope.factor >= 1 && std::isfinite(c.rope.factor));
    Require(c.rope.original_max_position_embeddings >= 1);
    Require(c.rope.beta_fast != 0 && c.rope.beta_slow != 0);
  }
  Require(c.is_moe() == (c.model_type == "qwen3_moe"));
  if (c.is_moe()) {
    Require(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.num_experts);
    Require(c.moe_intermediate_size >= 1 && c.decoder_sparse_step >= 1);
  }
  for (int64_t layer : c.mlp_only_layers) Require(layer >= 0 && layer < c.num_hidden_layers);
  for (int64_t id : c.eos_token_ids) Require(id >= 0);
  int64_t moe_layers = 0;
  for (int64_t layer = 0; layer < std::min<int64_t>(c.num_hidden_layers, 4096); ++layer) {
    moe_layers += c.IsMoeLayer(layer) ? 1 : 0;
  }
  Require(c.is_moe() || moe_layers == 0);
  return 0;
}
