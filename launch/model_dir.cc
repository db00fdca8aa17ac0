#include "launch/model_dir.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"
#include "runtime/model/tiny_model.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

void ReadGenerationConfig(const std::string& dir, ModelDirectory* m) {
  std::ifstream in(dir + "/generation_config.json");
  if (!in) {
    m->default_sampling.temperature = 0.0f;  // no defaults given: greedy
    return;
  }
  m->has_generation_config = true;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object()) return;
  SamplingParams& p = m->default_sampling;
  if (j.value("do_sample", false)) {
    if (j.contains("temperature") && j["temperature"].is_number()) p.temperature = j["temperature"];
    if (j.contains("top_k") && j["top_k"].is_number_integer()) p.top_k = j["top_k"];
    if (j.contains("top_p") && j["top_p"].is_number()) p.top_p = j["top_p"];
    if (j.contains("min_p") && j["min_p"].is_number()) p.min_p = j["min_p"];
  } else {
    p.temperature = 0.0f;
  }
  if (j.contains("repetition_penalty") && j["repetition_penalty"].is_number()) {
    p.repetition_penalty = j["repetition_penalty"];
  }
  if (j.contains("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) m->eos_token_ids.push_back(e.get<int32_t>());
    if (e.is_array()) {
      for (const auto& v : e) {
        if (v.is_number_integer()) m->eos_token_ids.push_back(v.get<int32_t>());
      }
    }
  }
}

}  // namespace

std::string DataDirectory() {
  if (const char* env = std::getenv("TESSERA_DATA_DIR"); env && *env) return env;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return "";
  exe[n] = '\0';
  const fs::path bin = fs::path(exe).parent_path();
  for (const fs::path& candidate :
       {bin / "share" / "tessera", bin.parent_path() / "share" / "tessera"}) {
    if (fs::exists(candidate / "qwen3-tokenizer" / "tokenizer.json")) return candidate.string();
  }
  return "";
}

absl::StatusOr<ModelDirectory> ResolveModelDirectory(const std::optional<std::string>& model_flag) {
  ModelDirectory m;
  if (model_flag) {
    m.dir = *model_flag;
  } else {
    const std::string data = DataDirectory();
    ASSIGN_OR_RETURN(m.dir, EmbeddedDefaultModelDir(data.empty() ? "" : data + "/qwen3-tokenizer"));
  }
  ASSIGN_OR_RETURN(m.config, LoadModelConfig(m.dir));
  for (int64_t id : m.config.eos_token_ids) m.eos_token_ids.push_back(static_cast<int32_t>(id));
  ReadGenerationConfig(m.dir, &m);
  const bool has_tokenizer =
      fs::exists(m.dir + "/tokenizer.json") || fs::exists(m.dir + "/vocab.json");
  if (has_tokenizer) {
    ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::Load(m.dir));
    const bool has_template =
        fs::exists(m.dir + "/chat_template.jinja") || fs::exists(m.dir + "/tokenizer_config.json");
    if (has_template) {
      absl::StatusOr<ChatTemplate> chat = ChatTemplate::Load(m.dir);
      if (chat.ok()) {
        m.chat_template = std::move(*chat);
      } else if (!absl::IsNotFound(chat.status())) {
        return chat.status();  // a template that exists but does not parse
      }
    }
  }
  m.sampleable_vocab = m.config.vocab_size;
  if (m.tokenizer && m.tokenizer->vocab_size() < m.config.vocab_size) {
    m.sampleable_vocab = m.tokenizer->vocab_size();  // e.g. Qwen3's padding ids 151669..151935
  }
  return m;
}

}  // namespace tessera
