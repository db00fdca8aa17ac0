// config.json parsing: the Hub's real Qwen3 configs, the transformers v5 spelling, YaRN resolved
// exactly as transformers 5.23 does (checked against values it computed), and one test per
// validation rule asserting the status code and that the message names the file and the field.
#include "runtime/model/model_config.h"

#include <sys/stat.h>
#include <unistd.h>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace tessera {
namespace {

std::string Msg(const absl::Status& status) { return std::string(status.message()); }

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kData = std::string(TESSERA_SOURCE_DIR) + "/tests/data/configs/";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

ModelConfig LoadOrDie(const std::string& file) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(ReadFile(kData + file), file);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig();
}

std::vector<int64_t> MoeLayers(const ModelConfig& c) {
  std::vector<int64_t> layers;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.IsMoeLayer(i)) layers.push_back(i);
  }
  return layers;
}

// ---- real configs -------------------------------------------------------------------------------

TEST(ModelConfigTest, HubDenseConfigs) {
  struct Expect {
    const char* file;
    int64_t hidden, intermediate, layers, heads, kv_heads;
    bool tied;
  };
  for (const Expect& e : {
           Expect{"Qwen3-0.6B.config.json", 1024, 3072, 28, 16, 8, true},
           Expect{"Qwen3-8B.config.json", 4096, 12288, 36, 32, 8, false},
           Expect{"Qwen3-14B.config.EXTRACTED-from-markdown.json", 5120, 17408, 40, 40, 8, false},
           Expect{"Qwen3-32B-FP8.config.json", 5120, 25600, 64, 64, 8, false},
       }) {
    SCOPED_TRACE(e.file);
    const ModelConfig c = LoadOrDie(e.file);
    EXPECT_EQ(c.model_type, "qwen3");
    EXPECT_EQ(c.vocab_size, 151936);
    EXPECT_EQ(c.hidden_size, e.hidden);
    EXPECT_EQ(c.intermediate_size, e.intermediate);
    EXPECT_EQ(c.num_hidden_layers, e.layers);
    EXPECT_EQ(c.num_attention_heads, e.heads);
    EXPECT_EQ(c.num_key_value_heads, e.kv_heads);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.tie_word_embeddings, e.tied);
    EXPECT_EQ(c.max_position_embeddings, 40960);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_EQ(c.rope.type, RopeType::kDefault);
    EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
    EXPECT_EQ(c.rope.attention_factor, 1.0);
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151645});
    EXPECT_EQ(c.bos_token_id, 151643);
    EXPECT_FALSE(c.is_moe());
    EXPECT_TRUE(MoeLayers(c).empty());
  }
}

TEST(ModelConfigTest, HubMoeConfigs) {
  struct Expect {
    const char* file;
    int64_t hidden, layers, heads, moe_intermediate;
  };
  for (const Expect& e : {
           Expect{"Qwen3-30B-A3B.config.json", 2048, 48, 32, 768},
           Expect{"Qwen3-235B-A22B.config.json", 4096, 94, 64, 1536},
           Expect{"Qwen3-235B-A22B-FP8.config.json", 4096, 94, 64, 1536},
       }) {
    SCOPED_TRACE(e.file);
    const ModelConfig c = LoadOrDie(e.file);
    EXPECT_EQ(c.model_type, "qwen3_moe");
    EXPECT_EQ(c.hidden_size, e.hidden);
    EXPECT_EQ(c.num_hidden_layers, e.layers);
    EXPECT_EQ(c.num_attention_heads, e.heads);
    EXPECT_EQ(c.num_key_value_heads, 4);
    EXPECT_EQ(c.head_dim, 128);  // 64 x 128 = 8192 != hidden 4096 for 235B: its own field
    EXPECT_TRUE(c.is_moe());
    EXPECT_EQ(c.num_experts, 128);
    EXPECT_EQ(c.num_experts_per_tok, 8);
    EXPECT_EQ(c.moe_intermediate_size, e.moe_intermediate);
    EXPECT_TRUE(c.norm_topk_prob);
    EXPECT_EQ(c.decoder_sparse_step, 1);
    EXPECT_TRUE(c.mlp_only_layers.empty());
    EXPECT_EQ(static_cast<int64_t>(MoeLayers(c).size()), e.layers);  // every layer is MoE
    EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  }
}

TEST(ModelConfigTest, TransformersV5Spelling) {
  // Written by Qwen3Config(...).save_pretrained in transformers 5.23 (make_input_fixtures.py).
  const ModelConfig dense = LoadOrDie("v5/qwen3.json");
  EXPECT_EQ(dense.model_type, "qwen3");
  EXPECT_EQ(dense.vocab_size, 1000);
  EXPECT_EQ(dense.hidden_size, 64);
  EXPECT_EQ(dense.intermediate_size, 96);
  EXPECT_EQ(dense.num_hidden_layers, 4);
  EXPECT_EQ(dense.num_attention_heads, 4);
  EXPECT_EQ(dense.num_key_value_heads, 2);
  EXPECT_EQ(dense.head_dim, 32);
  EXPECT_EQ(dense.max_position_embeddings, 4096);
  EXPECT_TRUE(dense.tie_word_embeddings);
  EXPECT_EQ(dense.torch_dtype, "bfloat16");  // "dtype" in v5
  EXPECT_EQ(dense.eos_token_ids, (std::vector<int64_t>{7, 9}));
  EXPECT_EQ(dense.bos_token_id, 5);
  EXPECT_EQ(dense.rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(dense.rope.theta, 10000.0);  // rope_parameters.rope_theta
  EXPECT_FALSE(dense.is_moe());

  const ModelConfig moe = LoadOrDie("v5/qwen3_moe.json");
  EXPECT_EQ(moe.num_experts, 8);  // "num_local_experts" in v5
  EXPECT_EQ(moe.num_experts_per_tok, 2);
  EXPECT_EQ(moe.moe_intermediate_size, 48);
  EXPECT_TRUE(moe.norm_topk_prob);
  EXPECT_EQ(moe.decoder_sparse_step, 2);
  EXPECT_EQ(moe.mlp_only_layers, std::vector<int64_t>{1});
  // Qwen3MoeDecoderLayer: not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
  EXPECT_EQ(MoeLayers(moe), std::vector<int64_t>{3});

  for (const char* file : {"v5/qwen3-yarn.json", "v5/qwen3_moe-yarn.json"}) {
    SCOPED_TRACE(file);
    const ModelConfig c = LoadOrDie(file);
    EXPECT_EQ(c.rope.type, RopeType::kYarn);
    EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
    EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 1024);
    EXPECT_DOUBLE_EQ(c.rope.attention_factor, 0.1 * std::log(4.0) + 1.0);
    EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
    EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
    EXPECT_TRUE(c.rope.truncate);
  }
}

TEST(ModelConfigTest, BothSpellingsGiveTheSameConfig) {
  json hub = json::parse(ReadFile(kData + "Qwen3-30B-A3B.config.json"));
  hub["rope_scaling"] = {
      {"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  json v5 = hub;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5.erase("num_experts");
  v5.erase("torch_dtype");
  v5["rope_parameters"] = {{"rope_type", "yarn"},
                           {"factor", 4.0},
                           {"rope_theta", 1e6},
                           {"original_max_position_embeddings", 32768}};
  v5["num_local_experts"] = 128;
  v5["dtype"] = "bfloat16";
  const auto a = ParseModelConfig(hub.dump(), "hub.json");
  const auto b = ParseModelConfig(v5.dump(), "v5.json");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->num_experts, b->num_experts);
  EXPECT_EQ(a->torch_dtype, b->torch_dtype);
  EXPECT_EQ(a->rope.type, b->rope.type);
  EXPECT_EQ(a->rope.theta, b->rope.theta);
  EXPECT_EQ(a->rope.factor, b->rope.factor);
  EXPECT_EQ(a->rope.original_max_position_embeddings, b->rope.original_max_position_embeddings);
  EXPECT_EQ(a->rope.attention_factor, b->rope.attention_factor);
}

// ---- YaRN against transformers ----------------------------------------------------------------

// The inverse frequencies exactly as model_config.h documents them.
std::vector<double> YarnInvFreq(const RopeConfig& rope, int64_t head_dim) {
  const double dim = static_cast<double>(head_dim);
  const double pi = std::acos(-1.0);
  auto correction_dim = [&](double rotations) {
    return dim * std::log(rope.original_max_position_embeddings / (rotations * 2 * pi)) /
           (2 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1);
  if (low == high) high += 0.001;
  std::vector<double> inv_freq;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double pos = std::pow(rope.theta, 2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double w = 1 - ramp;
    inv_freq.push_back(1 / (rope.factor * pos) * (1 - w) + 1 / pos * w);
  }
  return inv_freq;
}

TEST(ModelConfigTest, YarnMatchesTransformers) {
  const json expected = json::parse(ReadFile(kData + "yarn_expected.json"));
  ASSERT_EQ(expected.size(), 3u);
  for (const auto& [file, values] : expected.items()) {
    SCOPED_TRACE(file);
    const ModelConfig c = LoadOrDie("yarn/" + file);
    ASSERT_EQ(c.rope.type, RopeType::kYarn);
    EXPECT_NEAR(c.rope.attention_factor, values["attention_factor"].get<double>(), 1e-12);
    const std::vector<double> inv_freq = YarnInvFreq(c.rope, c.head_dim);
    const auto want = values["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(inv_freq.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      // transformers computes in float32.
      EXPECT_NEAR(inv_freq[i], want[i], 2e-6 * want[i]) << "i = " << i;
    }
  }
}

TEST(ModelConfigTest, YarnCornerCasesResolved) {
  // "type" instead of "rope_type"; factor null = max_position_embeddings / original (40960 /
  // 10240); beta_fast 0 = 32; mscale and mscale_all_dim both set.
  const ModelConfig c = LoadOrDie("yarn/hub-corner-cases.json");
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 10240);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 2.0);
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor,
                   (0.1 * 0.707 * std::log(4.0) + 1) / (0.1 * 1.0 * std::log(4.0) + 1));
  // The dict's rope_theta wins over the top-level one; an explicit attention factor is kept.
  const ModelConfig v5 = LoadOrDie("yarn/v5-rope_parameters.json");
  EXPECT_DOUBLE_EQ(v5.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(v5.rope.attention_factor, 0.9);
  EXPECT_DOUBLE_EQ(v5.rope.factor, 2.0);
}

// ---- defaults and leniency ----------------------------------------------------------------------

json BaseConfig() { return json::parse(ReadFile(kData + "Qwen3-30B-A3B.config.json")); }

absl::StatusOr<ModelConfig> ParsePatched(const char* patch) {
  return ParseModelConfig(BaseConfig().patch(json::parse(patch)).dump(), "config.json");
}

TEST(ModelConfigTest, DefaultsAndOptionalFields) {
  // head_dim absent: hidden_size / num_attention_heads. num_key_value_heads null: = heads.
  // eos_token_id and bos_token_id null; rope_scaling {} falls back to rope_parameters.
  auto c = ParsePatched(R"([
    {"op": "remove", "path": "/head_dim"},
    {"op": "replace", "path": "/num_key_value_heads", "value": null},
    {"op": "replace", "path": "/eos_token_id", "value": null},
    {"op": "replace", "path": "/bos_token_id", "value": null},
    {"op": "replace", "path": "/rope_scaling", "value": {}},
    {"op": "add", "path": "/rope_parameters", "value": {"rope_theta": 5000}},
    {"op": "add", "path": "/some_future_field", "value": {"deep": [[[[1]]]]}},
    {"op": "remove", "path": "/rms_norm_eps"},
    {"op": "remove", "path": "/norm_topk_prob"},
    {"op": "remove", "path": "/decoder_sparse_step"},
    {"op": "remove", "path": "/mlp_only_layers"}])");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 2048 / 32);
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(c->rope.theta, 5000.0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_FALSE(c->norm_topk_prob);  // transformers' default
  EXPECT_EQ(c->decoder_sparse_step, 1);

  // No RoPE information at all: transformers' default_theta.
  c = ParsePatched(R"([{"op": "remove", "path": "/rope_theta"},
                       {"op": "remove", "path": "/rope_scaling"}])");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);

  // A rope_scaling dict wins over rope_parameters (transformers: rope_scaling or rope_parameters).
  c = ParsePatched(R"([
    {"op": "replace", "path": "/rope_scaling", "value": {"rope_type": "yarn", "factor": 2}},
    {"op": "add", "path": "/rope_parameters", "value": {"rope_type": "default", "rope_theta": 7}}])");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c->rope.theta, 1e6);                        // not in the dict: the top-level one
  EXPECT_EQ(c->rope.original_max_position_embeddings, 40960);  // absent: max_position_embeddings
  EXPECT_DOUBLE_EQ(c->rope.factor, 2.0);

  // "mlp_only_layers" and "decoder_sparse_step" together.
  c = ParsePatched(R"([{"op": "replace", "path": "/decoder_sparse_step", "value": 3},
                       {"op": "replace", "path": "/mlp_only_layers", "value": [5, 0, 47]}])");
  ASSERT_TRUE(c.ok()) << c.status();
  for (int64_t layer = 0; layer < 48; ++layer) {
    const bool want = (layer + 1) % 3 == 0 && layer != 5 && layer != 47;
    EXPECT_EQ(c->IsMoeLayer(layer), want) << "layer " << layer;
  }
}

// ---- every validation rule ------------------------------------------------------------------

struct BadCase {
  const char* patch;      // RFC 6902 patch applied to Qwen3-30B-A3B's config.json
  absl::StatusCode code;  //
  const char* field;      // the field the message must name, with its quotes
  const char* detail;     // another substring the message must contain
};

void PrintTo(const BadCase& bad, std::ostream* os) { *os << bad.patch; }

// Test names from the field, e.g. "rope_scaling_factor_57" (ctest shows these, not the patch).
std::string CaseName(const ::testing::TestParamInfo<BadCase>& info) {
  std::string name;
  for (const char* p = info.param.field; *p != '\0' && name.size() < 40; ++p) {
    if (std::isalnum(static_cast<unsigned char>(*p))) {
      name += *p;
    } else if (!name.empty() && name.back() != '_') {
      name += '_';
    }
  }
  if (!name.empty() && name.back() != '_') name += '_';
  return name + std::to_string(info.index);
}

class BadConfigTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfigTest, RejectedWithAPreciseError) {
  const BadCase& bad = GetParam();
  const auto c = ParsePatched(bad.patch);
  ASSERT_FALSE(c.ok()) << bad.patch;
  EXPECT_EQ(c.status().code(), bad.code) << c.status();
  const std::string message(c.status().message());
  EXPECT_THAT(message, StartsWith("config.json: "));
  EXPECT_THAT(message, HasSubstr(bad.field));
  EXPECT_THAT(message, HasSubstr(bad.detail));
}

#define REPLACE(path, value) "[{\"op\": \"replace\", \"path\": \"" path "\", \"value\": " value "}]"
#define ADD(path, value) "[{\"op\": \"add\", \"path\": \"" path "\", \"value\": " value "}]"
#define REMOVE(path) "[{\"op\": \"remove\", \"path\": \"" path "\"}]"
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr char kPositive[] = "must be a positive integer, got ";
constexpr char kTooBig[] = "must be at most 2147483647";
// A YaRN rope_scaling with one more field.
#define YARN_WITH(field)                                                                        \
  R"([{"op": "replace", "path": "/rope_scaling", "value": {"rope_type": "yarn", "factor": 4, )" \
  R"("original_max_position_embeddings": 32768, )" field "}}]"

INSTANTIATE_TEST_SUITE_P(
    Fields, BadConfigTest,
    ::testing::Values(
        // Required fields: missing, wrong type, out of range.
        BadCase{REMOVE("/model_type"), kInvalid, "\"model_type\"", "is missing"},
        BadCase{REPLACE("/model_type", "\"llama\""), kInvalid, "\"model_type\"",
                "must be \"qwen3\" or \"qwen3_moe\", got \"llama\""},
        BadCase{REPLACE("/model_type", "3"), kInvalid, "\"model_type\"", "a string, got 3"},
        BadCase{REMOVE("/vocab_size"), kInvalid, "\"vocab_size\"", "is missing"},
        BadCase{REMOVE("/hidden_size"), kInvalid, "\"hidden_size\"", "is missing"},
        BadCase{REMOVE("/intermediate_size"), kInvalid, "\"intermediate_size\"", "is missing"},
        BadCase{REMOVE("/num_hidden_layers"), kInvalid, "\"num_hidden_layers\"", "is missing"},
        BadCase{REMOVE("/num_attention_heads"), kInvalid, "\"num_attention_heads\"", "is missing"},
        BadCase{REMOVE("/num_key_value_heads"), kInvalid, "\"num_key_value_heads\"", "is missing"},
        BadCase{REMOVE("/max_position_embeddings"), kInvalid, "\"max_position_embeddings\"",
                "is missing"},
        BadCase{REPLACE("/num_attention_heads", "\"abc\""), kInvalid, "\"num_attention_heads\"",
                "must be a positive integer, got \"abc\""},
        BadCase{REPLACE("/num_attention_heads", "0"), kInvalid, "\"num_attention_heads\"",
                "must be a positive integer, got 0"},
        BadCase{REPLACE("/hidden_size", "-2048"), kInvalid, "\"hidden_size\"", "got -2048"},
        BadCase{REPLACE("/hidden_size", "2048.0"), kInvalid, "\"hidden_size\"", "got 2048.0"},
        BadCase{REPLACE("/vocab_size", "1e30"), kInvalid, "\"vocab_size\"", kPositive},
        BadCase{REPLACE("/vocab_size", "4294967296"), kInvalid, "\"vocab_size\"", kTooBig},
        BadCase{REPLACE("/vocab_size", "18446744073709551615"), kInvalid, "\"vocab_size\"",
                kTooBig},
        BadCase{REPLACE("/vocab_size", "-9223372036854775808"), kInvalid, "\"vocab_size\"",
                kPositive},
        BadCase{REPLACE("/num_hidden_layers", "[48]"), kInvalid, "\"num_hidden_layers\"",
                "got [48]"},
        BadCase{REPLACE("/num_hidden_layers", "{\"n\": 48}"), kInvalid, "\"num_hidden_layers\"",
                "got an object"},
        BadCase{REPLACE("/num_hidden_layers", "true"), kInvalid, "\"num_hidden_layers\"",
                "got true"},
        BadCase{REPLACE("/intermediate_size", "null"), kInvalid, "\"intermediate_size\"",
                "got null"},
        // Shapes that do not fit together.
        BadCase{REPLACE("/num_key_value_heads", "5"), kInvalid, "\"num_key_value_heads\" (5)",
                "\"num_attention_heads\" (32) must be a multiple of"},
        BadCase{REPLACE("/head_dim", "127"), kInvalid, "\"head_dim\" (127)", "must be even"},
        BadCase{REPLACE("/head_dim", "0"), kInvalid, "\"head_dim\"", kPositive},
        BadCase{R"([{"op": "remove", "path": "/head_dim"},
                    {"op": "replace", "path": "/hidden_size", "value": 96}])",
                kInvalid, "\"head_dim\" (3, from hidden_size / num_attention_heads)",
                "must be even"},
        BadCase{R"([{"op": "remove", "path": "/head_dim"},
                    {"op": "replace", "path": "/hidden_size", "value": 16}])",
                kInvalid, "\"head_dim\" is absent", "16 / 32 is 0"},
        // Scalars with constraints.
        BadCase{REPLACE("/rms_norm_eps", "0"), kInvalid, "\"rms_norm_eps\"",
                "must be a number > 0, got 0"},
        BadCase{REPLACE("/rms_norm_eps", "-1e-06"), kInvalid, "\"rms_norm_eps\"", "got -1e-06"},
        BadCase{REPLACE("/rms_norm_eps", "\"1e-6\""), kInvalid, "\"rms_norm_eps\"", "got \"1e-6\""},
        BadCase{REPLACE("/hidden_act", "\"gelu\""), kInvalid, "\"hidden_act\"",
                "must be \"silu\", got \"gelu\""},
        BadCase{REPLACE("/attention_bias", "true"), kInvalid, "\"attention_bias\"",
                "must be false"},
        BadCase{REPLACE("/attention_bias", "\"no\""), kInvalid, "\"attention_bias\"",
                "must be true or false, got \"no\""},
        BadCase{REPLACE("/use_sliding_window", "true"), kInvalid, "\"use_sliding_window\"",
                "must be false"},
        BadCase{REPLACE("/tie_word_embeddings", "1"), kInvalid, "\"tie_word_embeddings\"",
                "true or false, got 1"},
        BadCase{REPLACE("/torch_dtype", "5"), kInvalid, "\"torch_dtype\"", "a string, got 5"},
        BadCase{ADD("/dtype", "[\"bfloat16\"]"), kInvalid, "\"dtype\"", "a string"},
        BadCase{REPLACE("/eos_token_id", "\"<|im_end|>\""), kInvalid, "\"eos_token_id\"",
                "a token id or a list of token ids, got \"<|im_end|>\""},
        BadCase{REPLACE("/eos_token_id", "[151645, \"x\"]"), kInvalid, "\"eos_token_id[1]\"",
                "got \"x\""},
        BadCase{REPLACE("/eos_token_id", "-1"), kInvalid, "\"eos_token_id\"",
                "a non-negative integer, got -1"},
        BadCase{REPLACE("/eos_token_id", "1.5"), kInvalid, "\"eos_token_id\"", "got 1.5"},
        BadCase{REPLACE("/bos_token_id", "-5"), kInvalid, "\"bos_token_id\"", "got -5"},
        // RoPE.
        BadCase{REPLACE("/rope_theta", "0"), kInvalid, "\"rope_theta\"",
                "must be a number > 0, got 0"},
        BadCase{REPLACE("/rope_theta", "\"1e6\""), kInvalid, "\"rope_theta\"", "got \"1e6\""},
        BadCase{REPLACE("/rope_theta", "null"), kInvalid, "\"rope_theta\"", "got null"},
        BadCase{REPLACE("/rope_scaling", "4"), kInvalid, "\"rope_scaling\"",
                "must be an object or null, got 4"},
        BadCase{ADD("/rope_parameters", "\"yarn\""), kInvalid, "\"rope_parameters\"",
                "got \"yarn\""},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "linear", "factor": 2})"), kInvalid,
                "\"rope_scaling.rope_type\"", "must be \"default\" or \"yarn\", got \"linear\""},
        BadCase{REPLACE("/rope_scaling", R"({"type": "dynamic", "factor": 2})"), kInvalid,
                "\"rope_scaling.type\"", "got \"dynamic\""},
        BadCase{ADD("/rope_parameters", R"({"rope_type": 5})"), kInvalid,
                "\"rope_parameters.rope_type\"", "got 5"},
        BadCase{ADD("/rope_parameters", R"({"rope_type": "default", "rope_theta": -1})"), kInvalid,
                "\"rope_parameters.rope_theta\"", "must be a number > 0, got -1"},
        BadCase{ADD("/rope_parameters", R"({"full_attention": {"rope_type": "yarn"}})"), kInvalid,
                "\"rope_parameters.full_attention\"", "must be absent"},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn"})"), kInvalid,
                "\"rope_scaling.factor\"", "is missing"},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn", "factor": 0.5})"), kInvalid,
                "\"rope_scaling.factor\"", "must be a number >= 1, or null, got 0.5"},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn", "factor": "4"})"), kInvalid,
                "\"rope_scaling.factor\"", "got \"4\""},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn", "factor": null,
                                             "original_max_position_embeddings": 81920})"),
                kInvalid, "\"rope_scaling.factor\" is null", "40960 / 81920, which must be >= 1"},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn", "factor": 4,
                                             "original_max_position_embeddings": 0})"),
                kInvalid, "\"rope_scaling.original_max_position_embeddings\"", kPositive},
        BadCase{REPLACE("/rope_scaling", R"({"rope_type": "yarn", "factor": 4,
                                             "original_max_position_embeddings": null})"),
                kInvalid, "\"rope_scaling.original_max_position_embeddings\"", "got null"},
        BadCase{YARN_WITH("\"attention_factor\": 0"), kInvalid, "\"rope_scaling.attention_factor\"",
                "must be a number > 0, got 0"},
        BadCase{YARN_WITH("\"attention_factor\": -1.5"), kInvalid,
                "\"rope_scaling.attention_factor\"", "got -1.5"},
        BadCase{YARN_WITH("\"beta_fast\": \"32\""), kInvalid, "\"rope_scaling.beta_fast\"",
                "must be a number, got \"32\""},
        BadCase{YARN_WITH("\"beta_slow\": [1]"), kInvalid, "\"rope_scaling.beta_slow\"", "got [1]"},
        BadCase{YARN_WITH("\"mscale\": true"), kInvalid, "\"rope_scaling.mscale\"", "got true"},
        BadCase{YARN_WITH("\"mscale_all_dim\": {}"), kInvalid, "\"rope_scaling.mscale_all_dim\"",
                "got an object"},
        BadCase{YARN_WITH("\"mscale\": -100, \"mscale_all_dim\": 1"), kInvalid,
                "\"rope_scaling.mscale\"", "must be > 0"},
        BadCase{YARN_WITH("\"truncate\": \"yes\""), kInvalid, "\"rope_scaling.truncate\"",
                "true or false, got \"yes\""},
        BadCase{YARN_WITH("\"truncate\": null"), kInvalid, "\"rope_scaling.truncate\"", "got null"},
        BadCase{YARN_WITH("\"partial_rotary_factor\": 0.5"), kInvalid,
                "\"rope_scaling.partial_rotary_factor\"", "must be 1"},
        // MoE.
        BadCase{REMOVE("/num_experts"), kInvalid, "\"num_experts\"", "is missing"},
        BadCase{REPLACE("/num_experts", "0"), kInvalid, "\"num_experts\"", kPositive},
        BadCase{ADD("/num_local_experts", "64"), kInvalid,
                "\"num_experts\" (128) and \"num_local_experts\" (64)", "disagree"},
        BadCase{REPLACE("/num_experts_per_tok", "0"), kInvalid, "\"num_experts_per_tok\"",
                kPositive},
        BadCase{REPLACE("/num_experts_per_tok", "129"), kInvalid, "\"num_experts_per_tok\" (129)",
                "must be in [1, num_experts = 128]"},
        BadCase{REMOVE("/num_experts_per_tok"), kInvalid, "\"num_experts_per_tok\"", "is missing"},
        BadCase{REMOVE("/moe_intermediate_size"), kInvalid, "\"moe_intermediate_size\"",
                "is missing"},
        BadCase{REPLACE("/moe_intermediate_size", "0"), kInvalid, "\"moe_intermediate_size\"",
                kPositive},
        BadCase{REPLACE("/decoder_sparse_step", "0"), kInvalid, "\"decoder_sparse_step\"",
                kPositive},
        BadCase{REPLACE("/norm_topk_prob", "\"true\""), kInvalid, "\"norm_topk_prob\"",
                "true or false"},
        BadCase{REPLACE("/mlp_only_layers", "[48]"), kInvalid, "\"mlp_only_layers[0]\"",
                "a list of layer indices in [0, 48), got 48"},
        BadCase{REPLACE("/mlp_only_layers", "[0, -1]"), kInvalid, "\"mlp_only_layers[1]\"",
                "got -1"},
        BadCase{REPLACE("/mlp_only_layers", "[1.5]"), kInvalid, "\"mlp_only_layers[0]\"",
                "got 1.5"},
        BadCase{REPLACE("/mlp_only_layers", "\"0,1\""), kInvalid, "\"mlp_only_layers\"",
                "got \"0,1\""}),
    CaseName);

TEST(ModelConfigTest, ExactMessage) {
  const auto c = ParsePatched(REPLACE("/num_attention_heads", "\"abc\""));
  EXPECT_EQ(Msg(c.status()),
            "config.json: \"num_attention_heads\" must be a positive integer, got \"abc\"");
}

TEST(ModelConfigTest, NotJsonOrNotAnObject) {
  for (const char* text :
       {"", "{", "{\"model_type\": \"qwen3\",}", "nul", "\xff\xfe{}", "{\"a\": NaN}", "{} {}"}) {
    const auto c = ParseModelConfig(text, "config.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), kInvalid);
    EXPECT_THAT(Msg(c.status()), StartsWith("config.json: invalid JSON: "));
  }
  const auto nul = ParseModelConfig(std::string("{\"model_type\": \"qwen3\"}\0junk", 28), "c.json");
  EXPECT_EQ(Msg(nul.status()), "c.json: invalid JSON: NUL byte at offset 23");
  for (const char* text : {"[]", "\"qwen3\"", "null", "42"}) {
    const auto c = ParseModelConfig(text, "config.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), kInvalid);
    EXPECT_THAT(Msg(c.status()),
                StartsWith("config.json: the top level must be a JSON object, got "));
  }
  // Nested arrays are reported without echoing them; deep nesting is refused before parsing.
  const std::string deep = std::string(127, '[') + std::string(127, ']');
  auto c = ParseModelConfig("{\"model_type\": " + deep + "}", "config.json");
  EXPECT_EQ(Msg(c.status()), "config.json: \"model_type\" must be a string, got an array");
  const std::string deeper = std::string(1000000, '[') + std::string(1000000, ']');
  c = ParseModelConfig("{\"model_type\": " + deeper + "}", "config.json");
  EXPECT_EQ(Msg(c.status()), "config.json: invalid JSON: nested deeper than 128 levels");
  // Brackets inside strings do not count.
  c = ParseModelConfig("{\"model_type\": \"" + std::string(1000, '[') + "\\\"\"}", "config.json");
  EXPECT_THAT(Msg(c.status()), HasSubstr("\"model_type\" must be \"qwen3\" or \"qwen3_moe\""));
  // Long strings are cut in messages.
  c = ParseModelConfig("{\"model_type\": \"" + std::string(1000, 'x') + "\"}", "config.json");
  EXPECT_LT(c.status().message().size(), 200u);
}

TEST(ModelConfigTest, LoadModelConfig) {
  const auto missing = LoadModelConfig("/nonexistent/model");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(missing.status()), HasSubstr("/nonexistent/model/config.json"));

  const std::string dir = ::testing::TempDir() + "/load_model_config." + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/config.json") << ReadFile(kData + "Qwen3-8B.config.json");
  const auto ok = LoadModelConfig(dir);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->num_hidden_layers, 36);

  std::ofstream(dir + "/config.json") << "{\"model_type\": \"qwen3\"}";
  const auto bad = LoadModelConfig(dir);
  EXPECT_EQ(bad.status().code(), kInvalid);
  EXPECT_THAT(Msg(bad.status()), StartsWith(dir + "/config.json: \"vocab_size\""));

  const std::string nested = dir + "/dir_named_config";
  ::mkdir(nested.c_str(), 0755);
  ::mkdir((nested + "/config.json").c_str(), 0755);
  EXPECT_EQ(LoadModelConfig(nested).status().code(), kInvalid);
  std::filesystem::remove_all(dir);
}

// ---- quantization_config ------------------------------------------------------------------------

TEST(ModelConfigTest, Fp8QuantizationConfigs) {
  const ModelConfig dense = LoadOrDie("Qwen3-32B-FP8.config.json");
  EXPECT_TRUE(dense.quantization.fp8());
  EXPECT_EQ(dense.quantization.fmt, "e4m3");
  EXPECT_EQ(dense.quantization.activation_scheme, "dynamic");
  EXPECT_EQ(dense.quantization.block_n, 128);
  EXPECT_EQ(dense.quantization.block_k, 128);
  EXPECT_TRUE(dense.quantization.modules_to_not_convert.empty());
  const ModelConfig moe = LoadOrDie("Qwen3-235B-A22B-FP8.config.json");
  EXPECT_TRUE(moe.quantization.fp8());
  ASSERT_FALSE(moe.quantization.modules_to_not_convert.empty());
  EXPECT_EQ(moe.quantization.modules_to_not_convert[0], "lm_head");
  EXPECT_FALSE(LoadOrDie("Qwen3-8B.config.json").quantization.fp8());
}

TEST(ModelConfigTest, UnsupportedQuantizationIsRefused) {
  const json base = json::parse(ReadFile(kData + "Qwen3-32B-FP8.config.json"));
  struct Case {
    const char* key;
    json value;
    const char* message;
  };
  for (const Case& c : {
           Case{"quant_method", "awq", "\"quantization_config.quant_method\" must be \"fp8\""},
           Case{"fmt", "e5m2", "\"quantization_config.fmt\" must be \"e4m3\""},
           Case{"activation_scheme", "static",
                "\"quantization_config.activation_scheme\" must be \"dynamic\""},
           Case{"weight_block_size", json::array({64, 64}),
                "\"quantization_config.weight_block_size\" must be [128, 128]"},
           Case{"weight_block_size", nullptr,
                "\"quantization_config.weight_block_size\" is missing"},
           Case{"modules_to_not_convert", json::array({1}),
                "\"quantization_config.modules_to_not_convert[0]\" must be a string"},
       }) {
    json config = base;
    if (c.value.is_null()) {
      config["quantization_config"].erase(c.key);
    } else {
      config["quantization_config"][c.key] = c.value;
    }
    const auto parsed = ParseModelConfig(config.dump(), "cfg.json");
    EXPECT_EQ(parsed.status().code(), kInvalid) << c.key;
    EXPECT_THAT(Msg(parsed.status()), HasSubstr(c.message)) << c.key;
  }
  json config = base;
  config["quantization_config"] = "fp8";
  EXPECT_EQ(ParseModelConfig(config.dump(), "cfg.json").status().code(), kInvalid);
}

TEST(ModelConfigTest, IsMoeLayerOnDenseConfig) {
  ModelConfig dense;
  dense.num_hidden_layers = 4;
  EXPECT_TRUE(MoeLayers(dense).empty());
}

}  // namespace
}  // namespace tessera
