// config.json -> ModelConfig. Both spellings (the Hub's and transformers v5's) are read; every
// value is checked for type and range so that the model code downstream can trust it.
#include "runtime/model/model_config.h"

#include <sys/stat.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/string_view.h"
#include "runtime/model/json_text.h"

namespace tessera {
namespace {

using json = nlohmann::json;

// Sizes, counts and token ids are capped at 2^31 - 1 so that products of two of them (e.g.
// vocab_size * hidden_size) cannot overflow int64 downstream. Real Qwen3 values are far below.
constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
// The FP8 weight block the kernels take (kernels/ops.h kFp8Block; runtime/model does not depend on
// the op table here, the model checks the two agree).
constexpr int64_t kFp8BlockSize = 128;

// The value of `key` in `object`, or nullptr when the key is absent.
const json* Find(const json& object, absl::string_view key) {
  auto it = object.find(std::string(key));
  return it == object.end() ? nullptr : &*it;
}
// Like Find, but a JSON null also counts as absent.
const json* FindNonNull(const json& object, absl::string_view key) {
  const json* value = Find(object, key);
  return value == nullptr || value->is_null() ? nullptr : value;
}

// Reads typed, range-checked fields of one JSON object. Errors read
//   <source>: "<prefix><key>" must be <requirement>, got <value>
class FieldReader {
 public:
  FieldReader(const json& object, absl::string_view source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  const json& object() const { return object_; }
  // A reader for the object `value` found under `key`.
  FieldReader Nested(const json& value, absl::string_view key) const {
    return FieldReader(value, source_, absl::StrCat(prefix_, key, "."));
  }
  std::string Path(absl::string_view key) const { return absl::StrCat(prefix_, key); }

  absl::Status Invalid(absl::string_view key, absl::string_view requirement,
                       const json& got) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", Path(key), "\" must be ",
                                                   requirement, ", got ", DescribeJson(got)));
  }
  absl::Status Missing(absl::string_view key, absl::string_view requirement) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": \"", Path(key), "\" is missing (must be ", requirement, ")"));
  }
  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
  }

  // An integer in [min, kMaxInt]. Absent or null leaves *out unchanged unless `required`, in
  // which case absent is "missing" and null is a wrong value. The same holds for the others.
  absl::Status Int(absl::string_view key, bool required, int64_t min, int64_t* out) const {
    const json* value = Find(object_, key);
    if (value == nullptr || value->is_null()) {
      if (!required) return absl::OkStatus();
      return value == nullptr ? Missing(key, IntRequirement(min))
                              : Invalid(key, IntRequirement(min), *value);
    }
    return IntValue(*value, key, min, out);
  }

  absl::Status IntValue(const json& value, absl::string_view key, int64_t min, int64_t* out) const {
    if (!value.is_number_integer()) return Invalid(key, IntRequirement(min), value);
    if (value.is_number_unsigned()) {
      const uint64_t u = value.get<uint64_t>();
      if (u > static_cast<uint64_t>(kMaxInt)) {
        return Invalid(key, absl::StrCat("at most ", kMaxInt), value);
      }
      *out = static_cast<int64_t>(u);
    } else {
      *out = value.get<int64_t>();
      if (*out > kMaxInt) return Invalid(key, absl::StrCat("at most ", kMaxInt), value);
    }
    if (*out < min) return Invalid(key, IntRequirement(min), value);
    return absl::OkStatus();
  }

  // A finite number (integer or float) passing `ok`, described by `requirement`.
  template <typename Predicate>
  absl::Status Number(absl::string_view key, bool required, absl::string_view requirement,
                      Predicate ok, double* out) const {
    const json* value = Find(object_, key);
    if (value == nullptr || value->is_null()) {
      if (!required) return absl::OkStatus();
      return value == nullptr ? Missing(key, requirement) : Invalid(key, requirement, *value);
    }
    if (!value->is_number()) return Invalid(key, requirement, *value);
    const double d = value->get<double>();
    if (!std::isfinite(d) || !ok(d)) return Invalid(key, requirement, *value);
    *out = d;
    return absl::OkStatus();
  }

  absl::Status Bool(absl::string_view key, bool* out) const {
    const json* value = FindNonNull(object_, key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_boolean()) return Invalid(key, "true or false", *value);
    *out = value->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(absl::string_view key, bool required, std::string* out) const {
    const json* value = Find(object_, key);
    if (value == nullptr || value->is_null()) {
      if (!required) return absl::OkStatus();
      return value == nullptr ? Missing(key, "a string") : Invalid(key, "a string", *value);
    }
    if (!value->is_string()) return Invalid(key, "a string", *value);
    *out = value->get<std::string>();
    return absl::OkStatus();
  }

 private:
  static std::string IntRequirement(int64_t min) {
    if (min == 1) return "a positive integer";
    if (min == 0) return "a non-negative integer";
    return absl::StrCat("an integer >= ", min);
  }

  const json& object_;
  absl::string_view source_;
  std::string prefix_;
};

// Chooses the RoPE dict as transformers does and fills config->rope (see RopeConfig). Needs
// max_position_embeddings already parsed.
absl::Status ParseRope(const FieldReader& top, ModelConfig* config) {
  RopeConfig& rope = config->rope;
  rope = RopeConfig();
  const json* dict = nullptr;
  std::string dict_name;
  for (const char* name : {"rope_scaling", "rope_parameters"}) {
    const json* value = FindNonNull(top.object(), name);
    if (value == nullptr) continue;
    if (!value->is_object()) return top.Invalid(name, "an object or null", *value);
    // transformers: rope_parameters = rope_scaling or rope_parameters (an empty dict is falsy).
    if (value->empty() && std::string_view(name) == "rope_scaling") continue;
    dict = value;
    dict_name = name;
    break;
  }
  const FieldReader r = dict != nullptr ? top.Nested(*dict, dict_name) : top;
  if (dict != nullptr) {
    // Parameters nested per layer type ({"full_attention": {...}}) are something Qwen3's rotary
    // embedding in transformers cannot read either.
    for (const char* layer_type : {"full_attention", "sliding_attention"}) {
      if (const json* nested = Find(*dict, layer_type); nested != nullptr) {
        return r.Invalid(layer_type, "absent (Qwen3 has one set of RoPE parameters for all layers)",
                         *nested);
      }
    }
  }

  // theta: the dict's "rope_theta", else the top-level one, else transformers' default_theta.
  auto positive = [](double d) { return d > 0; };
  if (dict != nullptr && Find(*dict, "rope_theta") != nullptr) {
    RETURN_IF_ERROR(r.Number("rope_theta", true, "a number > 0", positive, &rope.theta));
  } else if (Find(top.object(), "rope_theta") != nullptr) {
    RETURN_IF_ERROR(top.Number("rope_theta", true, "a number > 0", positive, &rope.theta));
  }
  if (dict == nullptr) return absl::OkStatus();

  // The type: "rope_type", else the Hub's older "type", else "default".
  std::string type = "default";
  const char* type_key = Find(*dict, "rope_type") != nullptr ? "rope_type"
                         : Find(*dict, "type") != nullptr    ? "type"
                                                             : nullptr;
  if (type_key != nullptr) {
    const json& value = *Find(*dict, type_key);
    if (!value.is_string() || (value != "default" && value != "yarn")) {
      return r.Invalid(type_key, "\"default\" or \"yarn\"", value);
    }
    type = value.get<std::string>();
  }
  if (type == "default") return absl::OkStatus();
  rope.type = RopeType::kYarn;

  // YaRN rotates the whole head; a partial rotary factor would change `dim` in the formulas.
  for (const FieldReader* reader : {&r, &top}) {
    const json* partial = FindNonNull(reader->object(), "partial_rotary_factor");
    if (partial != nullptr && !(partial->is_number() && partial->get<double>() == 1.0)) {
      return reader->Invalid("partial_rotary_factor", "1 (Qwen3 rotates the whole head)", *partial);
    }
  }

  rope.original_max_position_embeddings = config->max_position_embeddings;
  if (Find(*dict, "original_max_position_embeddings") != nullptr) {
    RETURN_IF_ERROR(
        r.Int("original_max_position_embeddings", true, 1, &rope.original_max_position_embeddings));
  }
  const json* factor = Find(*dict, "factor");
  if (factor == nullptr) return r.Missing("factor", "a number >= 1, or null");
  if (factor->is_null()) {
    rope.factor = static_cast<double>(config->max_position_embeddings) /
                  static_cast<double>(rope.original_max_position_embeddings);
    if (rope.factor < 1.0) {
      return r.Error(absl::StrCat(
          "\"", r.Path("factor"), "\" is null, so it is max_position_embeddings / ",
          r.Path("original_max_position_embeddings"), " = ", config->max_position_embeddings, " / ",
          rope.original_max_position_embeddings, ", which must be >= 1"));
    }
  } else {
    RETURN_IF_ERROR(r.Number(
        "factor", true, "a number >= 1, or null", [](double d) { return d >= 1.0; }, &rope.factor));
  }

  auto any = [](double) { return true; };
  RETURN_IF_ERROR(r.Number("mscale", false, "a number", any, &rope.mscale));
  RETURN_IF_ERROR(r.Number("mscale_all_dim", false, "a number", any, &rope.mscale_all_dim));
  // transformers: `beta_fast or 32`, `beta_slow or 1`, so 0 and null take the defaults.
  RETURN_IF_ERROR(r.Number("beta_fast", false, "a number", any, &rope.beta_fast));
  RETURN_IF_ERROR(r.Number("beta_slow", false, "a number", any, &rope.beta_slow));
  if (rope.beta_fast == 0) rope.beta_fast = 32.0;
  if (rope.beta_slow == 0) rope.beta_slow = 1.0;
  if (const json* truncate = Find(*dict, "truncate"); truncate != nullptr) {
    if (!truncate->is_boolean()) return r.Invalid("truncate", "true or false", *truncate);
    rope.truncate = truncate->get<bool>();
  }

  if (FindNonNull(*dict, "attention_factor") != nullptr) {
    RETURN_IF_ERROR(
        r.Number("attention_factor", true, "a number > 0", positive, &rope.attention_factor));
  } else {
    auto get_mscale = [](double scale, double m) {
      return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
    };
    if (rope.mscale != 0 && rope.mscale_all_dim != 0) {
      rope.attention_factor =
          get_mscale(rope.factor, rope.mscale) / get_mscale(rope.factor, rope.mscale_all_dim);
    } else {
      rope.attention_factor = get_mscale(rope.factor, 1.0);
    }
    if (!std::isfinite(rope.attention_factor) || rope.attention_factor <= 0) {
      return r.Error(absl::StrCat("the YaRN attention factor derived from \"", r.Path("mscale"),
                                  "\" and \"", r.Path("mscale_all_dim"), "\" is ",
                                  rope.attention_factor, "; it must be > 0"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseMoe(const FieldReader& r, ModelConfig* config) {
  // "num_experts" (the Hub's) or "num_local_experts" (transformers v5); both must agree.
  int64_t experts = 0, local_experts = 0;
  RETURN_IF_ERROR(r.Int("num_experts", false, 1, &experts));
  RETURN_IF_ERROR(r.Int("num_local_experts", false, 1, &local_experts));
  if (experts == 0 && local_experts == 0) {
    return r.Missing("num_experts",
                     "a positive integer; transformers v5 spells it "
                     "\"num_local_experts\"");
  }
  if (experts != 0 && local_experts != 0 && experts != local_experts) {
    return r.Error(absl::StrCat("\"num_experts\" (", experts, ") and \"num_local_experts\" (",
                                local_experts, ") disagree"));
  }
  config->num_experts = experts != 0 ? experts : local_experts;

  RETURN_IF_ERROR(r.Int("num_experts_per_tok", true, 1, &config->num_experts_per_tok));
  if (config->num_experts_per_tok > config->num_experts) {
    return r.Error(absl::StrCat("\"num_experts_per_tok\" (", config->num_experts_per_tok,
                                ") must be in [1, num_experts = ", config->num_experts, "]"));
  }
  RETURN_IF_ERROR(r.Int("moe_intermediate_size", true, 1, &config->moe_intermediate_size));
  RETURN_IF_ERROR(r.Bool("norm_topk_prob", &config->norm_topk_prob));
  RETURN_IF_ERROR(r.Int("decoder_sparse_step", false, 1, &config->decoder_sparse_step));

  if (const json* layers = FindNonNull(r.object(), "mlp_only_layers"); layers != nullptr) {
    const std::string requirement =
        absl::StrCat("a list of layer indices in [0, ", config->num_hidden_layers, ")");
    if (!layers->is_array()) return r.Invalid("mlp_only_layers", requirement, *layers);
    for (size_t i = 0; i < layers->size(); ++i) {
      const json& entry = (*layers)[i];
      const std::string key = absl::StrCat("mlp_only_layers[", i, "]");
      int64_t layer = 0;
      if (!entry.is_number_integer()) return r.Invalid(key, requirement, entry);
      RETURN_IF_ERROR(r.IntValue(entry, key, 0, &layer));
      if (layer >= config->num_hidden_layers) return r.Invalid(key, requirement, entry);
      config->mlp_only_layers.push_back(layer);
    }
  }
  return absl::OkStatus();
}

// quantization_config: only what the FP8 kernels run (kernels/ops.h, Fp8Weight) is accepted.
absl::Status ParseQuantization(const FieldReader& root, ModelConfig* c) {
  const json* value = FindNonNull(root.object(), "quantization_config");
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_object()) return root.Invalid("quantization_config", "an object", *value);
  const FieldReader r = root.Nested(*value, "quantization_config");
  QuantizationConfig& q = c->quantization;
  RETURN_IF_ERROR(r.String("quant_method", true, &q.quant_method));
  if (q.quant_method != "fp8") {
    return r.Invalid("quant_method", "\"fp8\" (the only quantization tessera reads)",
                     json(q.quant_method));
  }
  q.fmt = "e4m3";  // transformers' default
  RETURN_IF_ERROR(r.String("fmt", false, &q.fmt));
  if (q.fmt != "e4m3") {
    return r.Invalid("fmt", "\"e4m3\" (float8_e4m3fn weights)", json(q.fmt));
  }
  q.activation_scheme = "dynamic";
  RETURN_IF_ERROR(r.String("activation_scheme", false, &q.activation_scheme));
  if (q.activation_scheme != "dynamic") {
    return r.Invalid("activation_scheme",
                     "\"dynamic\" (per-token 1x128 activation scales computed per step)",
                     json(q.activation_scheme));
  }
  q.block_n = q.block_k = kFp8BlockSize;
  if (const json* block = FindNonNull(*value, "weight_block_size"); block != nullptr) {
    if (!block->is_array() || block->size() != 2 || !(*block)[0].is_number_integer() ||
        !(*block)[1].is_number_integer() || (*block)[0].get<int64_t>() != kFp8BlockSize ||
        (*block)[1].get<int64_t>() != kFp8BlockSize) {
      return r.Invalid("weight_block_size",
                       "[128, 128] (the block size the FP8 kernels take; per-tensor or "
                       "per-channel FP8 checkpoints are not supported)",
                       *block);
    }
  } else {
    return r.Missing("weight_block_size", "[128, 128]");
  }
  if (const json* skip = FindNonNull(*value, "modules_to_not_convert"); skip != nullptr) {
    if (!skip->is_array()) return r.Invalid("modules_to_not_convert", "a list of names", *skip);
    for (size_t i = 0; i < skip->size(); ++i) {
      const json& name = (*skip)[i];
      if (!name.is_string()) {
        return r.Invalid(absl::StrCat("modules_to_not_convert[", i, "]"), "a string", name);
      }
      q.modules_to_not_convert.push_back(name.get<std::string>());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseObject(const json& root, std::string_view source) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        AbslView(source), ": the top level must be a JSON object, got ", DescribeJson(root)));
  }
  const FieldReader r(root, AbslView(source));
  ModelConfig c;

  RETURN_IF_ERROR(r.String("model_type", true, &c.model_type));
  if (c.model_type != "qwen3" && c.model_type != "qwen3_moe") {
    return r.Invalid("model_type", "\"qwen3\" or \"qwen3_moe\"", json(c.model_type));
  }

  RETURN_IF_ERROR(r.Int("vocab_size", true, 1, &c.vocab_size));
  RETURN_IF_ERROR(r.Int("hidden_size", true, 1, &c.hidden_size));
  RETURN_IF_ERROR(r.Int("intermediate_size", true, 1, &c.intermediate_size));
  RETURN_IF_ERROR(r.Int("num_hidden_layers", true, 1, &c.num_hidden_layers));
  RETURN_IF_ERROR(r.Int("num_attention_heads", true, 1, &c.num_attention_heads));
  // transformers: an explicit null means "as many KV heads as attention heads". An absent key
  // would silently be the class default (32), so it is required.
  if (const json* kv = Find(root, "num_key_value_heads"); kv != nullptr && kv->is_null()) {
    c.num_key_value_heads = c.num_attention_heads;
  } else {
    RETURN_IF_ERROR(r.Int("num_key_value_heads", true, 1, &c.num_key_value_heads));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error(absl::StrCat("\"num_attention_heads\" (", c.num_attention_heads,
                                ") must be a multiple of \"num_key_value_heads\" (",
                                c.num_key_value_heads, ")"));
  }
  if (FindNonNull(root, "head_dim") != nullptr) {
    RETURN_IF_ERROR(r.Int("head_dim", true, 1, &c.head_dim));
  } else {
    c.head_dim = c.hidden_size / c.num_attention_heads;  // transformers' floor division
    if (c.head_dim == 0) {
      return r.Error(absl::StrCat("\"head_dim\" is absent and hidden_size / num_attention_heads = ",
                                  c.hidden_size, " / ", c.num_attention_heads, " is 0"));
    }
  }
  if (c.head_dim % 2 != 0) {
    return r.Error(absl::StrCat(
        "\"head_dim\" (", c.head_dim,
        (FindNonNull(root, "head_dim") != nullptr ? ""
                                                  : ", from hidden_size / num_attention_heads"),
        ") must be even: RoPE rotates pairs of dimensions"));
  }
  RETURN_IF_ERROR(r.Int("max_position_embeddings", true, 1, &c.max_position_embeddings));
  RETURN_IF_ERROR(r.Number(
      "rms_norm_eps", false, "a number > 0", [](double d) { return d > 0; }, &c.rms_norm_eps));
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));

  RETURN_IF_ERROR(r.Bool("attention_bias", &c.attention_bias));
  if (c.attention_bias) {
    return r.Invalid("attention_bias", "false (Qwen3 has no attention biases)", json(true));
  }
  RETURN_IF_ERROR(r.String("hidden_act", false, &c.hidden_act));
  if (c.hidden_act != "silu") return r.Invalid("hidden_act", "\"silu\"", json(c.hidden_act));
  bool sliding = false;
  RETURN_IF_ERROR(r.Bool("use_sliding_window", &sliding));
  if (sliding) {
    return r.Invalid("use_sliding_window", "false (sliding-window attention is not supported)",
                     json(true));
  }
  // transformers v5 writes "dtype"; older versions "torch_dtype".
  RETURN_IF_ERROR(r.String("torch_dtype", false, &c.torch_dtype));
  RETURN_IF_ERROR(r.String("dtype", false, &c.torch_dtype));

  RETURN_IF_ERROR(ParseRope(r, &c));
  if (c.model_type == "qwen3_moe") RETURN_IF_ERROR(ParseMoe(r, &c));
  RETURN_IF_ERROR(ParseQuantization(r, &c));

  if (const json* eos = FindNonNull(root, "eos_token_id"); eos != nullptr) {
    constexpr absl::string_view kRequirement = "a token id or a list of token ids";
    if (eos->is_array()) {
      for (size_t i = 0; i < eos->size(); ++i) {
        int64_t id = 0;
        const json& entry = (*eos)[i];
        const std::string key = absl::StrCat("eos_token_id[", i, "]");
        if (!entry.is_number_integer()) return r.Invalid(key, "a token id", entry);
        RETURN_IF_ERROR(r.IntValue(entry, key, 0, &id));
        c.eos_token_ids.push_back(id);
      }
    } else {
      int64_t id = 0;
      if (!eos->is_number_integer()) return r.Invalid("eos_token_id", kRequirement, *eos);
      RETURN_IF_ERROR(r.IntValue(*eos, "eos_token_id", 0, &id));
      c.eos_token_ids.push_back(id);
    }
  }
  RETURN_IF_ERROR(r.Int("bos_token_id", false, 0, &c.bos_token_id));
  return c;
}

}  // namespace

void RequestFp8Quantization(ModelConfig* config) {
  QuantizationConfig& q = config->quantization;
  if (q.fp8()) return;
  q.quant_method = "fp8";
  q.fmt = "e4m3";
  q.activation_scheme = "dynamic";
  q.block_n = q.block_k = kFp8BlockSize;
  q.quantize_at_load = true;
}

bool ModelConfig::IsMoeLayer(int64_t layer) const {
  if (num_experts <= 0 || decoder_sparse_step <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return (layer + 1) % decoder_sparse_step == 0;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  // NOTE: nothing below throws by design (checked types before every get<>); the catch is a last
  // line of defence so that no exception can cross the module boundary.
  try {
    ASSIGN_OR_RETURN(const json root,
                     ParseJsonText(json_text, source, absl::StatusCode::kInvalidArgument));
    return ParseObject(root, source);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat(AbslView(source), ": unexpected error while parsing: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat(path, ": no such file (is ", model_dir, " a Hugging Face model directory?)"));
  }
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be opened"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ParseModelConfig(text.str(), path);
}

}  // namespace tessera
