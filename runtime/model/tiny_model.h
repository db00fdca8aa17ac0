// A tiny random-weight Qwen3 checkpoint, written in the real Hugging Face layout (config.json in
// the Hub's spelling + model.safetensors in bf16). It is tessera's embedded default model: the
// README's first command, the server's default and many tests run on it without downloads.
//
// The vocabulary is Qwen3's real one (151936 ids, 151669 with tokens), so the real tokenizer and
// chat template work with it; everything else is small enough for a CPU.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {

struct TinyModelOptions {
  bool moe = false;  // qwen3_moe: 8 experts, top-2, norm_topk_prob
  uint64_t seed = 0;
  int64_t vocab_size = 151936;
  int64_t num_layers = 2;
};

// Writes DIR/config.json, DIR/generation_config.json and DIR/model.safetensors (DIR is created).
absl::Status WriteTinyModel(const std::string& dir, const TinyModelOptions& options);

// The embedded default: a tiny dense model under $XDG_CACHE_HOME/tessera (or ~/.cache/tessera),
// written on first use (atomically: concurrent ranks may call this) and reused afterwards. When
// `tokenizer_dir` is given, its tokenizer.json and tokenizer_config.json (Qwen3's real tokenizer
// and chat template) are copied in, so text and chat requests work.
absl::StatusOr<std::string> EmbeddedDefaultModelDir(const std::string& tokenizer_dir);

}  // namespace tessera
