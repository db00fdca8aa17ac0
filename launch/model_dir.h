// What `run` and `serve` read from a model directory besides the weights: config.json, the
// tokenizer and chat template when present, and generation_config.json's defaults.
//
// Without --model, the embedded default: a tiny random-weight Qwen3 written on first use, with
// Qwen3's real tokenizer and chat template when tessera's data files are installed
// ($TESSERA_DATA_DIR, or share/tessera next to or above the executable).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/sampler.h"
#include "runtime/model/model_config.h"
#include "runtime/text/chat/chat_template.h"
#include "runtime/text/tokenizer/tokenizer.h"

namespace tessera {

struct ModelDirectory {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;       // null when the directory has none
  std::optional<ChatTemplate> chat_template;  // absent when the directory has none
  SamplingParams default_sampling;            // generation_config.json (do_sample), else greedy
  bool has_generation_config = false;
  std::vector<int32_t> eos_token_ids;  // config.json and generation_config.json
  int64_t sampleable_vocab = 0;        // the tokenizer's size, else vocab_size
};

// Errors name the file. A tokenizer or template that exists but is malformed is an error.
absl::StatusOr<ModelDirectory> ResolveModelDirectory(const std::optional<std::string>& model_flag);

// Where tessera's data files live ("" if not found).
std::string DataDirectory();

}  // namespace tessera
