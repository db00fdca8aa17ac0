#include "runtime/model/tiny_model.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"
#include "runtime/model/safetensors_writer.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kQwen3TokenizerVocab = 151669;  // ids with a token in Qwen3's tokenizer

}  // namespace

absl::Status WriteTinyModel(const std::string& dir, const TinyModelOptions& o) {
  const int64_t H = 64, heads = 4, kv_heads = 2, D = 16, I = 128, E = 8, top_k = 2, I_moe = 32;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  nlohmann::ordered_json config = {
      {"architectures", {o.moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"}},
      {"model_type", o.moe ? "qwen3_moe" : "qwen3"},
      {"vocab_size", o.vocab_size},
      {"hidden_size", H},
      {"intermediate_size", I},
      {"num_hidden_layers", o.num_layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", D},
      {"hidden_act", "silu"},
      {"max_position_embeddings", 4096},
      {"rms_norm_eps", 1e-6},
      {"rope_theta", 1000000.0},
      {"rope_scaling", nullptr},
      {"tie_word_embeddings", false},
      {"attention_bias", false},
      {"use_sliding_window", false},
      {"bos_token_id", 151643},
      {"eos_token_id", 151645},
      {"torch_dtype", "bfloat16"},
  };
  if (o.moe) {
    config["num_experts"] = E;
    config["num_experts_per_tok"] = top_k;
    config["moe_intermediate_size"] = I_moe;
    config["norm_topk_prob"] = true;
    config["decoder_sparse_step"] = 1;
    config["mlp_only_layers"] = nlohmann::ordered_json::array();
  }
  {
    std::ofstream out(fs::path(dir) / "config.json");
    out << config.dump(2);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  }

  // Qwen3's own generation defaults, so the tiny model behaves like a real Qwen3 directory.
  const nlohmann::ordered_json generation = {
      {"bos_token_id", 151643}, {"do_sample", true},  {"eos_token_id", {151645, 151643}},
      {"pad_token_id", 151643}, {"temperature", 0.6}, {"top_k", 20},
      {"top_p", 0.95}};
  {
    std::ofstream out(fs::path(dir) / "generation_config.json");
    out << generation.dump(2);
    if (!out)
      return absl::InternalError(absl::StrCat("cannot write ", dir, "/generation_config.json"));
  }

  std::mt19937_64 rng(o.seed);
  std::vector<TensorToWrite> tensors;
  // Weights scaled by 1/sqrt(fan_in) (embeddings by 1) keep activations O(1), so greedy output is
  // not dominated by ties.
  auto add = [&](std::string name, std::vector<int64_t> shape, float scale, float mean = 0.0f) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    std::normal_distribution<float> dist(mean, scale);
    TensorToWrite t{std::move(name), DType::kBF16, std::move(shape),
                    std::vector<uint8_t>(count * 2)};
    for (int64_t i = 0; i < count; ++i) {
      const uint16_t bits = FloatToBF16(dist(rng));
      std::memcpy(t.bytes.data() + 2 * i, &bits, 2);
    }
    tensors.push_back(std::move(t));
  };
  auto norm = [&](const std::string& name, int64_t n) { add(name, {n}, 0.1f, 1.0f); };
  add("model.embed_tokens.weight", {o.vocab_size, H}, 1.0f);
  // NOTE: untied: with a random tied embedding the logit of the input token (|e|^2) dominates and
  // the model only copies its input.
  add("lm_head.weight", {o.vocab_size, H}, 1.0f / std::sqrt(H));
  // Qwen3's ids >= 151669 are embedding padding: zero lm_head rows (zero logits), as unused rows
  // are in real checkpoints.
  if (o.vocab_size > kQwen3TokenizerVocab) {
    auto& bytes = tensors.back().bytes;
    std::fill(bytes.begin() + kQwen3TokenizerVocab * H * 2, bytes.end(), 0);
  }
  norm("model.norm.weight", H);
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    norm(p + "input_layernorm.weight", H);
    norm(p + "post_attention_layernorm.weight", H);
    add(p + "self_attn.q_proj.weight", {heads * D, H}, 1.0f / std::sqrt(H));
    add(p + "self_attn.k_proj.weight", {kv_heads * D, H}, 1.0f / std::sqrt(H));
    add(p + "self_attn.v_proj.weight", {kv_heads * D, H}, 1.0f / std::sqrt(H));
    add(p + "self_attn.o_proj.weight", {H, heads * D}, 1.0f / std::sqrt(heads * D));
    norm(p + "self_attn.q_norm.weight", D);
    norm(p + "self_attn.k_norm.weight", D);
    if (o.moe) {
      add(p + "mlp.gate.weight", {E, H}, 1.0f / std::sqrt(H));
      for (int64_t e = 0; e < E; ++e) {
        const std::string q = absl::StrCat(p, "mlp.experts.", e, ".");
        add(q + "gate_proj.weight", {I_moe, H}, 1.0f / std::sqrt(H));
        add(q + "up_proj.weight", {I_moe, H}, 1.0f / std::sqrt(H));
        add(q + "down_proj.weight", {H, I_moe}, 1.0f / std::sqrt(I_moe));
      }
    } else {
      add(p + "mlp.gate_proj.weight", {I, H}, 1.0f / std::sqrt(H));
      add(p + "mlp.up_proj.weight", {I, H}, 1.0f / std::sqrt(H));
      add(p + "mlp.down_proj.weight", {H, I}, 1.0f / std::sqrt(I));
    }
  }
  return WriteSafetensors((fs::path(dir) / "model.safetensors").string(), tensors);
}

absl::StatusOr<std::string> EmbeddedDefaultModelDir(const std::string& tokenizer_dir) {
  std::string base;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    base = xdg;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    base = absl::StrCat(home, "/.cache");
  } else {
    base = "/tmp";
  }
  // The version suffix changes whenever WriteTinyModel's output does.
  const std::string name = tokenizer_dir.empty() ? "tiny-qwen3-v3" : "tiny-qwen3-v3-tok";
  const fs::path dir = fs::path(base) / "tessera" / name;
  if (fs::exists(dir / "model.safetensors")) return dir.string();
  const fs::path staging = fs::path(base) / "tessera" / absl::StrCat(".", name, ".", getpid());
  RETURN_IF_ERROR(WriteTinyModel(staging.string(), TinyModelOptions{}));
  std::error_code ec;
  if (!tokenizer_dir.empty()) {
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      fs::copy_file(fs::path(tokenizer_dir) / file, staging / file, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot copy ", tokenizer_dir, "/", file, ": ", ec.message()));
      }
    }
  }
  fs::rename(staging, dir, ec);  // another process may have won the race: then use its copy
  if (ec) fs::remove_all(staging, ec);
  if (!fs::exists(dir / "model.safetensors")) {
    return absl::InternalError(
        absl::StrCat("could not create the embedded model in ", dir.string()));
  }
  return dir.string();
}

}  // namespace tessera
